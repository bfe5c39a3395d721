//! [`ApiKey`]: a client's API key, hashed.

use http::HeaderName;
use http::header::AUTHORIZATION;
use http::request::Parts;

use super::{KeyExtractor, hash_key};

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The API key in `Authorization: Bearer <token>` or, failing that, the `X-API-Key` header.
///
/// The token is hashed with SHA-256 ([`hash_key`]) before it becomes a key, so no secret reaches
/// the store, metrics or logs. SHA-256 rather than a fast non-cryptographic hash: nobody can work
/// back from a key in Redis to the token, nor craft a token that collides with another client's
/// budget, and the digest is the same on every instance and every release.
///
/// ```
/// use tower_ratelimit::key::{ApiKey, KeyExtractor, hash_key};
///
/// let req = http::Request::get("/").header("authorization", "Bearer s3cr3t").body(()).unwrap();
/// let (parts, ()) = req.into_parts();
/// assert_eq!(ApiKey::new().extract(&parts), Some(hash_key(b"s3cr3t")));
/// ```
#[derive(Debug, Clone)]
pub struct ApiKey {
    header: HeaderName,
}

impl ApiKey {
    /// Reads `Authorization: Bearer`, then `X-API-Key`.
    pub fn new() -> Self {
        Self { header: X_API_KEY }
    }

    /// Reads `header` instead of `X-API-Key` (after `Authorization: Bearer`).
    #[must_use]
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    /// The raw token of this request, if any: for tier lookups that need the token itself.
    pub fn token<'a>(&self, parts: &'a Parts) -> Option<&'a [u8]> {
        let bearer = parts
            .headers
            .get_all(AUTHORIZATION)
            .iter()
            .find_map(|v| bearer_token(v.as_bytes()));
        bearer.or_else(|| {
            let v = parts.headers.get(&self.header)?.as_bytes().trim_ascii();
            (!v.is_empty()).then_some(v)
        })
    }
}

impl Default for ApiKey {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyExtractor for ApiKey {
    fn extract(&self, parts: &Parts) -> Option<String> {
        self.token(parts).map(hash_key)
    }
}

fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.trim_ascii().split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &[u8])]) -> Parts {
        let mut req = http::Request::new(());
        for (name, value) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        req.into_parts().0
    }

    #[test]
    fn bearer_wins_over_x_api_key() {
        let p = parts(&[("authorization", b"bearer  abc "), ("x-api-key", b"other")]);
        let key = ApiKey::new().extract(&p).unwrap();
        assert_eq!(key, hash_key(b"abc"));
        assert!(!key.contains("abc"));
    }

    #[test]
    fn falls_back_to_x_api_key_and_ignores_basic_auth() {
        let p = parts(&[
            ("authorization", b"Basic dXNlcjpwdw=="),
            ("x-api-key", b"k1"),
        ]);
        assert_eq!(ApiKey::new().extract(&p), Some(hash_key(b"k1")));
    }

    #[test]
    fn no_token_is_no_key() {
        assert_eq!(
            ApiKey::new().extract(&parts(&[("authorization", b"Bearer ")])),
            None
        );
        assert_eq!(ApiKey::new().extract(&parts(&[("x-api-key", b"  ")])), None);
        assert_eq!(ApiKey::new().extract(&parts(&[])), None);
    }

    #[test]
    fn custom_header_and_binary_tokens() {
        let key = ApiKey::new().header(HeaderName::from_static("x-token"));
        let p = parts(&[("x-token", b"\xff\x80")]);
        assert_eq!(key.extract(&p), Some(hash_key(b"\xff\x80")));
    }
}

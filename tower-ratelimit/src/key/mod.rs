//! Key extractors: who a request is charged to.
//!
//! A [`KeyExtractor`] turns the request head into a key; every request with the same key shares
//! one budget. Closures `Fn(&Parts) -> Option<String>` are extractors too. `None` means no key
//! could be found, and the layer's [`MissingKey`](crate::MissingKey) setting decides what happens.
//!
//! Keys are kept compact and safe for any backend: a key longer than [`MAX_KEY_LEN`], or with
//! bytes outside visible ASCII, is replaced by `#` and 32 hex digits of its SHA-256 digest.

use http::HeaderName;
use http::request::Parts;
use rate_limit_core::ConfigError;
use sha2::{Digest, Sha256};

mod api_key;
mod forwarded;
mod ip;

pub use api_key::ApiKey;
pub use forwarded::ForwardedIp;
pub use ip::{Cidr, PeerIp};

/// The longest key kept as it is; longer keys are hashed.
pub const MAX_KEY_LEN: usize = 128;

/// Finds the key a request is charged to.
///
/// Implemented for closures, so `|parts: &Parts| Some(String::from("k"))` is an extractor.
///
/// ```
/// use http::request::Parts;
/// use tower_ratelimit::key::KeyExtractor;
///
/// let by_path = |parts: &Parts| Some(parts.uri.path().to_owned());
/// let (parts, ()) = http::Request::get("/a/b").body(()).unwrap().into_parts();
/// assert_eq!(by_path.extract(&parts).as_deref(), Some("/a/b"));
/// ```
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key for this request, or `None` when it has none.
    ///
    /// The layer compacts the result (see the [module docs](self)); an empty key counts as none.
    fn extract(&self, parts: &Parts) -> Option<String>;
}

impl<F> KeyExtractor for F
where
    F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
{
    fn extract(&self, parts: &Parts) -> Option<String> {
        self(parts)
    }
}

/// One key for every request: a single budget shared by all clients.
#[derive(Debug, Clone, Copy, Default)]
pub struct Global;

impl KeyExtractor for Global {
    fn extract(&self, _parts: &Parts) -> Option<String> {
        Some(String::from("global"))
    }
}

/// The value of a request header, e.g. `x-client-id`.
///
/// The first value of the header is used; a missing or empty header is no key. Values that are
/// long or not visible ASCII are hashed, so any bytes work.
#[derive(Debug, Clone)]
pub struct Header {
    name: HeaderName,
}

impl Header {
    /// Keys by the header `name` (any case).
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name. This is a setting fixed in the program; use
    /// [`try_new`](Self::try_new) for names read at run time.
    pub fn new(name: &str) -> Self {
        match Self::try_new(name) {
            Ok(header) => header,
            Err(err) => panic!("{err}"),
        }
    }

    /// Keys by the header `name` (any case).
    ///
    /// # Errors
    ///
    /// `name` is not a valid header name.
    pub fn try_new(name: &str) -> Result<Self, ConfigError> {
        HeaderName::from_bytes(name.as_bytes())
            .map(Self::from_name)
            .map_err(|_| ConfigError::new("key header", name, "not a valid header name"))
    }

    /// Keys by the header `name`.
    pub fn from_name(name: HeaderName) -> Self {
        Self { name }
    }
}

impl KeyExtractor for Header {
    fn extract(&self, parts: &Parts) -> Option<String> {
        let value = parts.headers.get(&self.name)?.as_bytes();
        (!value.is_empty()).then(|| compact_bytes(value))
    }
}

/// `bytes` as a key: kept as it is when short visible ASCII, otherwise hashed with [`hash_key`].
pub fn compact_bytes(bytes: &[u8]) -> String {
    if is_plain(bytes) {
        bytes.iter().copied().map(char::from).collect()
    } else {
        hash_key(bytes)
    }
}

/// `#` and the first 128 bits of the SHA-256 digest of `bytes`, in hex (33 characters).
///
/// This is the form every hashed key takes: [`ApiKey`] hashes every token this way, so a tier
/// table can be keyed by `hash_key(token)` without keeping tokens.
///
/// ```
/// let k = tower_ratelimit::key::hash_key(b"secret");
/// assert_eq!(k.len(), 33);
/// assert!(k.starts_with("#2bb80d537b1da3e3"));
/// ```
pub fn hash_key(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(33);
    out.push('#');
    for b in &digest[..16] {
        out.push(hex_digit(b >> 4));
        out.push(hex_digit(b & 0xf));
    }
    out
}

fn hex_digit(n: u8) -> char {
    char::from(if n < 10 { b'0' + n } else { b'a' + n - 10 })
}

/// Compacts a key returned by any extractor. An empty key is no key; a key already in the
/// hashed form (as [`hash_key`] makes it) is kept, so hashed keys stay comparable.
pub(crate) fn compact(key: String) -> Option<String> {
    if key.is_empty() {
        return None;
    }
    if is_plain(key.as_bytes()) || is_hashed(&key) {
        Some(key)
    } else {
        Some(hash_key(key.as_bytes()))
    }
}

/// Kept as it is: 1 to [`MAX_KEY_LEN`] visible ASCII bytes, not starting with `#` (which marks
/// hashed keys).
fn is_plain(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len() <= MAX_KEY_LEN
        && bytes[0] != b'#'
        && bytes.iter().all(|b| (0x21..=0x7e).contains(b))
}

fn is_hashed(key: &str) -> bool {
    key.len() == 33
        && key.starts_with('#')
        && key[1..]
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(name: &str, value: &[u8]) -> Parts {
        let mut req = http::Request::new(());
        req.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_bytes(value).unwrap(),
        );
        req.into_parts().0
    }

    #[test]
    fn short_ascii_keys_are_kept() {
        assert_eq!(compact_bytes(b"client-1"), "client-1");
        assert_eq!(compact(String::from("abc")).as_deref(), Some("abc"));
    }

    #[test]
    fn long_or_binary_keys_are_hashed() {
        let long = vec![b'a'; MAX_KEY_LEN + 1];
        assert!(is_hashed(&compact_bytes(&long)));
        assert!(is_hashed(&compact_bytes(&[0xff, 0xfe, b'x'])));
        assert!(is_hashed(&compact_bytes(b"has space")));
        // A key that looks hashed but came from a client is hashed again, so it cannot collide.
        assert_ne!(compact_bytes(b"#abc"), "#abc");
    }

    #[test]
    fn empty_key_is_no_key() {
        assert_eq!(compact(String::new()), None);
        assert_eq!(Header::new("x-id").extract(&parts("x-id", b"")), None);
    }

    #[test]
    fn header_reads_non_utf8_values() {
        let k = Header::new("X-Id")
            .extract(&parts("x-id", b"\xff\xfeok"))
            .unwrap();
        assert!(is_hashed(&k));
        assert_eq!(k, hash_key(b"\xff\xfeok"));
    }

    #[test]
    fn header_rejects_bad_names() {
        let err = Header::try_new("bad name").unwrap_err();
        assert_eq!(err.setting(), "key header");
    }
}

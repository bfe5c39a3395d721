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
pub(crate) use ip::{NO_PEER_ADDRESS, peer_ip};

/// The longest key kept as it is; longer keys are hashed.
pub const MAX_KEY_LEN: usize = 128;

/// Finds the key a request is charged to.
///
/// Implemented for closures, so `|parts: &Parts| Some(String::from("k"))` is an extractor. Such a
/// closure needs its parameter's type written out, because Rust infers a closure's signature
/// only from a direct `Fn` bound; [`RateLimitLayer::key_fn`](crate::RateLimitLayer::key_fn) is
/// that bound, so `.key_fn(|parts| ..)` needs none.
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

    /// Appends this request's key to `out` and returns `true`, or returns `false` when it has
    /// none (`out` may then hold anything after its original length; the caller truncates it).
    ///
    /// The layer calls this with the policy's prefix already in `out`, so that the store key
    /// costs one allocation. The default calls [`extract`](Self::extract); extractors that can
    /// write their key in place override it. The result is compacted as `extract`'s is.
    ///
    /// ```
    /// use tower_ratelimit::key::{Header, KeyExtractor};
    ///
    /// let (parts, ()) = http::Request::get("/").header("x-id", "c1").body(()).unwrap().into_parts();
    /// let mut out = String::from("api:");
    /// assert!(Header::new("x-id").extract_into(&parts, &mut out));
    /// assert_eq!(out, "api:c1");
    /// ```
    fn extract_into(&self, parts: &Parts, out: &mut String) -> bool {
        match self.extract(parts) {
            Some(key) => {
                out.push_str(&key);
                true
            }
            None => false,
        }
    }

    /// Whether this extractor reads the connection's peer address, which the server must put
    /// into the request extensions (see [`PeerIp`]). When it finds no key in a request that
    /// has no peer address, the layer logs once, at WARN, how to give it one: the server is
    /// set up wrong, and every request will be rejected. Default `false`; [`PeerIp`] and
    /// [`ForwardedIp`] say `true`, and so should an extractor that falls back on them.
    fn reads_peer_addr(&self) -> bool {
        false
    }
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

    fn extract_into(&self, _parts: &Parts, out: &mut String) -> bool {
        out.push_str("global");
        true
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
    #[track_caller]
    pub fn new(name: &str) -> Self {
        match Self::try_new(name) {
            Ok(header) => header,
            Err(err) => panic!("{err}"),
        }
    }

    /// Keys by the header `name` (any case), read at run time (also `Header::try_from(name)`).
    ///
    /// ```
    /// use tower_ratelimit::key::Header;
    ///
    /// let err = Header::try_new("bad name").unwrap_err();
    /// assert_eq!((err.setting(), err.value()), ("key header", "bad name"));
    /// assert!(Header::try_from("x-client-id").is_ok());
    /// ```
    ///
    /// # Errors
    ///
    /// `name` is not a valid header name.
    pub fn try_new(name: &str) -> Result<Self, ConfigError> {
        HeaderName::from_bytes(name.as_bytes())
            .map(Self::from_name)
            .map_err(|_| ConfigError::new("key header", name, "not a valid header name"))
    }

    /// Keys by the header `name`, already validated (also `Header::from(name)`).
    pub fn from_name(name: HeaderName) -> Self {
        Self { name }
    }
}

impl From<HeaderName> for Header {
    fn from(name: HeaderName) -> Self {
        Self::from_name(name)
    }
}

impl TryFrom<&str> for Header {
    type Error = ConfigError;

    /// As [`Header::try_new`].
    fn try_from(name: &str) -> Result<Self, ConfigError> {
        Self::try_new(name)
    }
}

impl KeyExtractor for Header {
    fn extract(&self, parts: &Parts) -> Option<String> {
        let mut key = String::new();
        self.extract_into(parts, &mut key).then_some(key)
    }

    fn extract_into(&self, parts: &Parts, out: &mut String) -> bool {
        match parts.headers.get(&self.name) {
            Some(value) if !value.is_empty() => {
                // As `push_compact`: a plain key is visible ASCII, which `to_str` finds
                // without a UTF-8 decoder.
                match value.to_str() {
                    Ok(plain) if is_plain(plain.as_bytes()) => out.push_str(plain),
                    _ => push_hash(out, value.as_bytes()),
                }
                true
            }
            _ => false,
        }
    }
}

/// `bytes` as a key: kept as it is when short visible ASCII, otherwise hashed with [`hash_key`].
pub fn compact_bytes(bytes: &[u8]) -> String {
    let mut out = String::new();
    push_compact(&mut out, bytes);
    out
}

/// Appends `bytes` as [`compact_bytes`] writes them.
fn push_compact(out: &mut String, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(plain) if is_plain(bytes) => out.push_str(plain),
        _ => push_hash(out, bytes),
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
    let mut out = String::with_capacity(33);
    push_hash(&mut out, bytes);
    out
}

/// Appends [`hash_key`]`(bytes)` to `out`.
fn push_hash(out: &mut String, bytes: &[u8]) {
    let digest = Sha256::digest(bytes);
    out.reserve(33);
    out.push('#');
    for b in &digest[..16] {
        out.push(hex_digit(b >> 4));
        out.push(hex_digit(b & 0xf));
    }
}

fn hex_digit(n: u8) -> char {
    char::from(if n < 10 { b'0' + n } else { b'a' + n - 10 })
}

/// Compacts, in place, the key that an extractor appended to `out` after its first `start`
/// bytes. An empty key is no key (`false`); a key already in the hashed form (as [`hash_key`]
/// makes it) is kept, so hashed keys stay comparable; other keys that are not plain are hashed.
pub(crate) fn compact_tail(out: &mut String, start: usize) -> bool {
    let Some(key) = out.get(start..) else {
        return false;
    };
    if key.is_empty() {
        return false;
    }
    if !is_plain(key.as_bytes()) && !is_hashed(key) {
        let hashed = hash_key(key.as_bytes());
        out.truncate(start);
        out.push_str(&hashed);
    }
    true
}

/// Whether `extractor` is one of this module's extractors that write every key compact
/// already ([`Header`] compacts what it reads, [`Global`] writes a plain constant), so that the
/// layer need not look at the key again.
pub(crate) fn writes_compact<K: KeyExtractor>(extractor: &K) -> bool {
    let any: &dyn std::any::Any = extractor;
    any.is::<Header>() || any.is::<Global>()
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
        let mut out = String::from("p:abc");
        assert!(compact_tail(&mut out, 2));
        assert_eq!(out, "p:abc");
    }

    #[test]
    fn long_or_binary_keys_are_hashed() {
        let long = vec![b'a'; MAX_KEY_LEN + 1];
        assert!(is_hashed(&compact_bytes(&long)));
        assert!(is_hashed(&compact_bytes(&[0xff, 0xfe, b'x'])));
        assert!(is_hashed(&compact_bytes(b"has space")));
        // A key that looks hashed but came from a client is hashed again, so it cannot collide.
        assert_ne!(compact_bytes(b"#abc"), "#abc");
        // An extractor's key with a space is hashed in place; a hashed key is kept.
        let mut out = String::from("p:a b");
        assert!(compact_tail(&mut out, 2));
        assert_eq!(out, format!("p:{}", hash_key(b"a b")));
        let hashed = hash_key(b"x");
        let mut out = format!("p:{hashed}");
        assert!(compact_tail(&mut out, 2));
        assert_eq!(out, format!("p:{hashed}"));
    }

    #[test]
    fn empty_key_is_no_key() {
        let mut out = String::from("p:");
        assert!(!compact_tail(&mut out, 2));
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

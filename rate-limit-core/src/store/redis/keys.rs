//! The key layout: `{prefix}:{<escaped client key>}:<limit id in hex>`.
//!
//! Every key of one request shares the hash tag `{<escaped client key>}`, so they live in one
//! Redis Cluster slot and one script may touch them all. The client key is escaped so that no
//! text can leave its braces: `%`, `{`, `}`, and control characters (`\n`, `\0`, ...) become
//! `%XX` (their byte in hex). Any other text, non-ASCII included, is kept as it is. The empty key
//! becomes a lone `%`, which no escaped key contains, because Redis Cluster hashes a key with an
//! empty tag `{}` whole.

use std::fmt::Write as _;

use crate::error::ConfigError;

/// The default key prefix.
pub(crate) const DEFAULT_PREFIX: &str = "rl";

/// Checks a prefix: non-empty, no braces (they would move the hash tag), no control characters.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() {
        return Err(ConfigError::new("prefix", prefix, "must not be empty"));
    }
    if prefix.contains(['{', '}']) || prefix.chars().any(char::is_control) {
        return Err(ConfigError::new(
            "prefix",
            prefix.escape_debug(),
            "must not contain `{`, `}` or control characters",
        ));
    }
    Ok(())
}

/// Whether `c` is escaped in a tag.
fn escaped(c: char) -> bool {
    matches!(c, '%' | '{' | '}') || c.is_ascii_control()
}

/// The hash-tagged part of every key of `key`, braces included: `{<escaped key>}`.
#[cfg(test)]
pub(crate) fn tag(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 2);
    push_tag(&mut out, key);
    out
}

/// Appends the tag of `key` (`{<escaped key>}`) to `out`.
fn push_tag(out: &mut String, key: &str) {
    out.push('{');
    if key.is_empty() {
        out.push('%');
    }
    if key.contains(escaped) {
        for c in key.chars() {
            if escaped(c) {
                // `c` is ASCII here, so its code is its one UTF-8 byte.
                let _ = write!(out, "%{:02X}", u32::from(c));
            } else {
                out.push(c);
            }
        }
    } else {
        out.push_str(key);
    }
    out.push('}');
}

/// `{prefix}:{tag}:` of the client key `key`, with room for a limit id after it.
fn base(prefix: &str, key: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + key.len() + 4 + 16);
    out.push_str(prefix);
    out.push(':');
    push_tag(&mut out, key);
    out.push(':');
    out
}

/// The state key of the client key `key` for one limit: `{prefix}:{tag}:{id:016x}`, the tag
/// escaped in place (one string).
pub(crate) fn state_key(prefix: &str, key: &str, limit_id: u64) -> String {
    let mut out = base(prefix, key);
    push_hex16(&mut out, limit_id);
    out
}

/// The state keys of the client key `key`, one per limit id, as [`state_key`] writes them; the
/// tag is escaped once, and one limit costs one string.
pub(crate) fn state_keys(
    prefix: &str,
    key: &str,
    ids: impl ExactSizeIterator<Item = u64>,
) -> Vec<String> {
    let n = ids.len();
    let mut base = base(prefix, key);
    let mut keys = Vec::with_capacity(n);
    for (i, id) in ids.enumerate() {
        let mut k = if i + 1 == n {
            std::mem::take(&mut base)
        } else {
            let mut k = String::with_capacity(base.len() + 16);
            k.push_str(&base);
            k
        };
        push_hex16(&mut k, id);
        keys.push(k);
    }
    keys
}

/// Appends `n` as 16 lowercase hex digits, written in one piece (a `char` at a time cost a
/// check about 160 client instructions).
fn push_hex16(out: &mut String, n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = DIGITS[((n >> ((15 - i) * 4)) & 0xf) as usize];
    }
    // Hex digits are ASCII.
    out.push_str(std::str::from_utf8(&digits).unwrap_or_default());
}

/// Whether `state_key` is a state key of the client key `key` under `prefix` (for any limit
/// id: the caller compares ids), found without building it. `false` for a key that needs
/// escaping (whose tag is not its text), and for the empty key.
pub(crate) fn is_state_key_of(state_key: &str, prefix: &str, key: &str) -> bool {
    let Some(rest) = state_key.as_bytes().strip_prefix(prefix.as_bytes()) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(b":{") else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(key.as_bytes()) else {
        return false;
    };
    // A tag holds no brace and no control character, so a key equal to one needs no escaping
    // unless it holds a `%`: then `key` is its own tag, and the key whose tag it is, is `key`.
    rest.len() == 2 + 16
        && rest.starts_with(b"}:")
        && !key.is_empty()
        && !key.as_bytes().contains(&b'%')
}

/// The Redis Cluster slot of `key`, by Redis's rule: CRC16 (XMODEM), modulo 16384, of the text
/// between the first `{` and the first `}` after it if that text is not empty, else of the whole
/// key. Every state key of one client key shares the slot of its [`tag`].
pub(crate) fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    crc16(hashed) % 16_384
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as Redis Cluster hashes keys.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 == 0 {
                crc << 1
            } else {
                (crc << 1) ^ 0x1021
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_keys_stay_readable() {
        assert_eq!(tag("client-1"), "{client-1}");
        assert_eq!(state_key("rl", "a:b", 0xab), "rl:{a:b}:00000000000000ab");
        assert_eq!(tag("zoë 東京"), "{zoë 東京}");
    }

    #[test]
    fn state_keys_are_the_state_key_of_each_limit() {
        for key in ["client-1", "", "}x{", "50%", "a\nb", "東京"] {
            let ids = [0, 0xab, u64::MAX, 0x0123_4567_89ab_cdef];
            let keys = state_keys("rl", key, ids.into_iter());
            let want: Vec<String> = ids
                .iter()
                .map(|&id| format!("rl:{}:{id:016x}", tag(key)))
                .collect();
            assert_eq!(keys, want);
            let one = state_keys("app:rl", key, [7].into_iter());
            assert_eq!(one, [state_key("app:rl", key, 7)]);
            assert_eq!(one, [format!("app:rl:{}:0000000000000007", tag(key))]);
        }
        assert_eq!(state_key("rl", "k", u64::MAX), "rl:{k}:ffffffffffffffff");
        assert!(state_keys("rl", "k", std::iter::empty()).is_empty());
    }

    #[test]
    fn a_state_key_is_recognised_as_its_client_keys() {
        let ids = [0, 0xab, u64::MAX, 0x0123_4567_89ab_cdef];
        let keys = [
            "client-1", "", "}x{", "50%", "a\nb", "東京", "a:b", "%7B", "%",
        ];
        for key in keys {
            for id in ids {
                let built = state_key("rl", key, id);
                assert_eq!(built, format!("rl:{}:{id:016x}", tag(key)));
                // Recognised exactly when the key needs no escaping (and is not empty).
                let plain = !key.is_empty() && !key.contains(escaped);
                assert_eq!(is_state_key_of(&built, "rl", key), plain, "{key:?}");
                // No other key is recognised in it: "%7B" is the tag of "{", not its own.
                for other in keys.iter().filter(|&&o| o != key) {
                    assert!(
                        !is_state_key_of(&built, "rl", other),
                        "{other:?} in {built}"
                    );
                }
                assert!(!is_state_key_of(&built, "rl2", key));
                assert!(!is_state_key_of(&built, "r", key));
                assert!(!is_state_key_of(&built, "rl", "client-"));
                assert!(!is_state_key_of(&built, "rl", "client-12"));
            }
        }
        assert!(!is_state_key_of("rl:{k}:00000000000000a", "rl", "k"));
        assert!(!is_state_key_of("rl:{k}:000000000000000a0", "rl", "k"));
        assert!(!is_state_key_of("rl:{k}x000000000000000a", "rl", "k"));
        assert!(is_state_key_of("rl:{k}:000000000000000a", "rl", "k"));
    }

    #[test]
    fn braces_percent_and_controls_are_escaped() {
        assert_eq!(tag("}x{"), "{%7Dx%7B}");
        assert_eq!(tag("50%"), "{50%25}");
        assert_eq!(tag("a\nb\0"), "{a%0Ab%00}");
        assert_eq!(tag("\u{7f}"), "{%7F}");
    }

    #[test]
    fn escaping_is_injective_on_tricky_pairs() {
        let keys = [
            "", "%", "%25", "{", "%7B", "}", "\0", "%00", "a}:{b", "a", "a ",
        ];
        let tags: std::collections::HashSet<String> = keys.iter().map(|k| tag(k)).collect();
        assert_eq!(tags.len(), keys.len());
    }

    #[test]
    fn the_tag_is_the_first_braced_part_and_never_empty() {
        for key in ["", "}", "{}", "x}{y", "{{", "}}"] {
            let full = state_key("rl", key, 1);
            let open = full.find('{').unwrap();
            let close = open + full[open..].find('}').unwrap();
            assert_eq!(&full[open..=close], tag(key));
            assert!(close > open + 1, "empty tag for {key:?}");
            assert_eq!(full.matches('{').count(), 1);
        }
    }

    #[test]
    fn slots_are_those_redis_cluster_computes() {
        // CRC16/XMODEM check value, and `CLUSTER KEYSLOT` answers for these keys.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot("foo"), 12_182);
        // From the `CLUSTER KEYSLOT` documentation.
        assert_eq!(slot("somekey"), 11_058);
        assert_eq!(slot("foo{hash_tag}"), 2_515);
        // An empty tag hashes the whole key; only the first braces count.
        assert_eq!(slot("a{}b"), crc16(b"a{}b") % 16_384);
        assert_eq!(slot("x{hash_tag}{other}"), 2_515);
        let state = state_key("rl", "東京", 7);
        assert_eq!(slot(&state), slot(&tag("東京")));
    }

    #[test]
    fn prefixes_with_braces_are_rejected() {
        assert!(validate_prefix("rl").is_ok());
        assert!(validate_prefix("app:rl").is_ok());
        assert_eq!(validate_prefix("").unwrap_err().setting(), "prefix");
        assert!(validate_prefix("a{b").is_err());
        assert!(validate_prefix("a\nb").is_err());
    }
}

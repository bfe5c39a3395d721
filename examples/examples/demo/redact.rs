//! Secrets out of everything the demo prints.
//!
//! A Redis URL may carry a password (`redis://user:password@host`, `rediss://:password@host`).
//! Every log line (through [`RedactedStderr`]), every error and every answer that may quote a URL
//! goes through [`redact`], which replaces the password of each URL in a text with `***`, and
//! also every password the configuration held (registered with [`remember_secret`]), wherever
//! it appears.

use std::io::{self, Write};
use std::sync::RwLock;

/// What replaces a password.
const MASK: &str = "***";

/// Passwords read from the configuration, as written and percent-decoded.
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Ends a URL in running text.
fn ends_url(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | '"' | '\'' | '`' | '<' | '>' | '(' | ')')
}

/// `text` with the password of every URL in it masked, and every remembered password too.
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after.find(ends_url).unwrap_or(after.len());
        let (url, tail) = after.split_at(end);
        // The userinfo ends at the last `@` (a password may hold an unescaped one) and its
        // password starts after the first `:`.
        match url
            .rfind('@')
            .and_then(|a| url[..a].find(':').map(|c| (c, a)))
        {
            Some((colon, at)) => {
                out.push_str(&url[..=colon]);
                out.push_str(MASK);
                out.push_str(&url[at..]);
            }
            None => out.push_str(url),
        }
        rest = tail;
    }
    out.push_str(rest);
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), MASK);
        }
    }
    out
}

/// Remembers the password of `url`, if it has one, so that [`redact`] masks it wherever it
/// appears, URL or not. Passwords shorter than 4 characters are masked in URLs only (masking
/// every `a` of every line would make the log unreadable, and a password that short is no
/// secret anyway).
pub(crate) fn remember_secret(url: &str) {
    let Some((_, after)) = url.split_once("://") else {
        return;
    };
    let authority = &after[..after.find(ends_url).unwrap_or(after.len())];
    let Some(at) = authority.rfind('@') else {
        return;
    };
    let Some((_, password)) = authority[..at].split_once(':') else {
        return;
    };
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for form in [password.to_owned(), percent_decode(password)] {
        if form.chars().count() >= 4 && !secrets.contains(&form) {
            secrets.push(form);
        }
    }
}

/// `%XX` escapes decoded (as the Redis client decodes a URL's password); anything malformed is
/// kept as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                let v = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Standard error, through [`redact`]: the writer of the demo's log.
///
/// The log formatter hands each event to one `write` call, so a URL is never split between two.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RedactedStderr;

impl Write for RedactedStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = redact(&String::from_utf8_lossy(buf));
        io::stderr().lock().write_all(text.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_the_password_of_every_url_in_a_text() {
        for (text, want) in [
            (
                "redis://user:pw@host:6379/0",
                "redis://user:***@host:6379/0",
            ),
            ("rediss://:pw@host", "rediss://:***@host"),
            ("redis://host:6379", "redis://host:6379"),
            ("redis://user@host", "redis://user@host"),
            ("redis://:p@ss/w@host:1", "redis://:***@host:1"),
            (
                "invalid REDIS_CLUSTER_NODES `redis://:a1@h:1,http://:b2@h:2`: no",
                "invalid REDIS_CLUSTER_NODES `redis://:***@h:1,http://:***@h:2`: no",
            ),
            ("no url here: a:b@c", "no url here: a:b@c"),
        ] {
            assert_eq!(redact(text), want, "{text}");
        }
    }

    #[test]
    fn masks_a_remembered_password_anywhere() {
        remember_secret("redis://:hunter%212x@127.0.0.1:1");
        assert_eq!(
            redact("AUTH hunter!2x failed; hunter%212x"),
            "AUTH *** failed; ***"
        );
        // Too short to mask outside a URL.
        remember_secret("redis://:ab@h");
        assert_eq!(redact("ab"), "ab");
    }
}

//! A RESP2 reply parser for [`RedisConnection`](super::RedisConnection): simple strings,
//! errors, integers, bulk strings and arrays (nil and nested included), read into
//! `redis::Value`s as the `redis` crate reads them.
//!
//! Replies arrive in pieces: [`parse`] answers [`Parsed::Incomplete`] with the least number of
//! bytes the buffer must hold before another attempt can succeed, so that a large bulk string
//! is parsed once, when all of it has arrived, rather than once per read.

use redis::{ErrorKind, RedisError, Value};

/// Arrays nested deeper than this are refused: a reply of the store never nests beyond two.
const MAX_DEPTH: usize = 256;

/// The largest bulk string Redis sends (its `proto-max-bulk-len` cannot exceed 512 MB).
const MAX_BULK: i64 = 512 * 1024 * 1024;

/// What [`parse`] found at the start of a buffer.
#[derive(Debug, PartialEq)]
pub(crate) enum Parsed {
    /// A whole reply, and the number of bytes it took.
    Frame(Value, usize),
    /// Not yet a whole reply: another attempt needs at least this many bytes in the buffer.
    Incomplete(usize),
}

/// Parses the reply at the start of `buf`.
///
/// # Errors
///
/// Bytes that are not RESP2: the connection can no longer tell where replies start.
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, RedisError> {
    Ok(match value(buf, 0, 0)? {
        Step::Done(v, end) => Parsed::Frame(v, end),
        Step::Need(n) => Parsed::Incomplete(n),
    })
}

enum Step {
    Done(Value, usize),
    Need(usize),
}

fn value(buf: &[u8], at: usize, depth: usize) -> Result<Step, RedisError> {
    let Some(eol) = line_end(buf, at)? else {
        return Ok(Step::Need(buf.len() + 1));
    };
    let line = &buf[at + 1..eol];
    let next = eol + 2;
    let v = match buf[at] {
        b'+' if line == b"OK" => Value::Okay,
        b'+' => match std::str::from_utf8(line) {
            Ok(s) => Value::SimpleString(s.to_owned()),
            Err(_) => return Err(invalid("a simple string that is not UTF-8")),
        },
        // Rare: the `redis` crate reads the error, so that its kind and detail are its own.
        b'-' => redis::parse_redis_value(&buf[at..next])?,
        b':' => Value::Int(integer(line)?),
        b'$' => {
            let len = integer(line)?;
            if len == -1 {
                return Ok(Step::Done(Value::Nil, next));
            }
            if !(0..=MAX_BULK).contains(&len) {
                return Err(invalid("a bulk string length out of range"));
            }
            let end = next + len as usize;
            if buf.len() < end + 2 {
                return Ok(Step::Need(end + 2));
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(invalid("a bulk string not followed by CRLF"));
            }
            return Ok(Step::Done(
                Value::BulkString(buf[next..end].to_vec()),
                end + 2,
            ));
        }
        b'*' => {
            let n = integer(line)?;
            if n == -1 {
                return Ok(Step::Done(Value::Nil, next));
            }
            if n < 0 || depth >= MAX_DEPTH {
                return Err(invalid("an array length out of range or nested too deep"));
            }
            // Each element takes at least 3 bytes: no more room is reserved than can arrive.
            let n = n as usize;
            let mut items = Vec::with_capacity(n.min((buf.len() - next) / 3 + 1));
            let mut at = next;
            for _ in 0..n {
                match value(buf, at, depth + 1)? {
                    Step::Done(v, end) => {
                        items.push(v);
                        at = end;
                    }
                    need @ Step::Need(_) => return Ok(need),
                }
            }
            return Ok(Step::Done(Value::Array(items), at));
        }
        _ => return Err(invalid("a reply type that RESP2 does not have")),
    };
    Ok(Step::Done(v, next))
}

/// The index of the `\r` ending the line that starts at `at`, once `\r\n` has arrived.
fn line_end(buf: &[u8], at: usize) -> Result<Option<usize>, RedisError> {
    let from = at + 1;
    let Some(rel) = buf
        .get(from..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
    else {
        return Ok(None);
    };
    let lf = from + rel;
    if lf > from && buf[lf - 1] == b'\r' {
        Ok(Some(lf - 1))
    } else {
        Err(invalid("a line not ended by CRLF"))
    }
}

fn integer(digits: &[u8]) -> Result<i64, RedisError> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 19 {
        return Err(invalid("an integer out of range"));
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(invalid("an integer with a non-digit"));
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(i64::from(d - b'0')))
            .ok_or_else(|| invalid("an integer out of range"))?;
    }
    Ok(if negative { -n } else { n })
}

fn invalid(what: &'static str) -> RedisError {
    RedisError::from((
        ErrorKind::Parse,
        "invalid reply from redis",
        what.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::ServerErrorKind;

    fn whole(bytes: &[u8]) -> Value {
        match parse(bytes).unwrap() {
            Parsed::Frame(v, n) => {
                assert_eq!(n, bytes.len(), "took {n} of {} bytes", bytes.len());
                v
            }
            Parsed::Incomplete(n) => panic!("incomplete, needs {n}"),
        }
    }

    /// Every prefix of `bytes` is incomplete, with a need beyond its length, and the whole is
    /// one frame; with a second frame after it, the first frame takes exactly its bytes.
    fn split_everywhere(bytes: &[u8]) -> Value {
        for cut in 0..bytes.len() {
            match parse(&bytes[..cut]).unwrap() {
                Parsed::Incomplete(need) => assert!(need > cut && need <= bytes.len(), "{cut}"),
                Parsed::Frame(v, _) => panic!("a frame from {cut} of {} bytes: {v:?}", bytes.len()),
            }
        }
        let mut two = bytes.to_vec();
        two.extend_from_slice(b":1\r\n");
        assert!(matches!(parse(&two).unwrap(), Parsed::Frame(_, n) if n == bytes.len()));
        whole(bytes)
    }

    #[test]
    fn simple_strings_and_ok() {
        assert_eq!(split_everywhere(b"+OK\r\n"), Value::Okay);
        assert_eq!(
            split_everywhere(b"+PONG\r\n"),
            Value::SimpleString("PONG".into())
        );
        assert_eq!(whole(b"+\r\n"), Value::SimpleString(String::new()));
    }

    #[test]
    fn integers() {
        assert_eq!(split_everywhere(b":0\r\n"), Value::Int(0));
        assert_eq!(split_everywhere(b":-42\r\n"), Value::Int(-42));
        assert_eq!(whole(b":9223372036854775807\r\n"), Value::Int(i64::MAX));
        assert!(parse(b":99999999999999999999\r\n").is_err());
        assert!(parse(b":1x\r\n").is_err());
        assert!(parse(b":\r\n").is_err());
    }

    #[test]
    fn bulk_strings_and_nil() {
        assert_eq!(
            split_everywhere(b"$5\r\nhe\r\no\r\n"),
            Value::BulkString(b"he\r\no".to_vec())
        );
        assert_eq!(split_everywhere(b"$0\r\n\r\n"), Value::BulkString(vec![]));
        assert_eq!(split_everywhere(b"$-1\r\n"), Value::Nil);
        assert!(parse(b"$3\r\nabcXY").is_err());
        assert!(parse(b"$-2\r\n").is_err());
    }

    #[test]
    fn arrays_nested_and_nil() {
        let bytes = b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n*-1\r\n$-1\r\n";
        assert_eq!(
            split_everywhere(bytes),
            Value::Array(vec![
                Value::Int(1),
                Value::Array(vec![Value::BulkString(b"a".to_vec()), Value::Nil]),
                Value::Nil,
            ])
        );
        assert_eq!(split_everywhere(b"*0\r\n"), Value::Array(vec![]));
        assert_eq!(split_everywhere(b"*-1\r\n"), Value::Nil);
        let deep = format!("{}:1\r\n", "*1\r\n".repeat(MAX_DEPTH + 1));
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn errors_are_the_redis_crates() {
        let Value::ServerError(e) = split_everywhere(b"-ERR Function not found\r\n") else {
            panic!("not an error")
        };
        let e = RedisError::from(e);
        assert_eq!(e.kind(), ErrorKind::Server(ServerErrorKind::ResponseError));
        assert_eq!(e.detail(), Some("Function not found"));
        for frame in [
            &b"-NOSCRIPT No matching script\r\n"[..],
            b"-BUSY Redis is busy running a script\r\n",
            b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
            b"-LOADING Redis is loading the dataset in memory\r\n",
        ] {
            let Value::ServerError(e) = whole(frame) else {
                panic!("not an error")
            };
            let ours = RedisError::from(e);
            let Ok(Value::ServerError(theirs)) = redis::parse_redis_value(frame) else {
                panic!("the crate reads no error")
            };
            let theirs = RedisError::from(theirs);
            assert_eq!(ours.kind(), theirs.kind());
            assert_eq!(ours.code(), theirs.code());
            assert_eq!(ours.detail(), theirs.detail());
        }
        let Value::ServerError(e) = whole(b"-NOSCRIPT No matching script\r\n") else {
            panic!("not an error")
        };
        assert_eq!(
            RedisError::from(e).kind(),
            ErrorKind::Server(ServerErrorKind::NoScript)
        );
        // An error inside an array (an `EXEC` reply) is an element.
        let v = split_everywhere(b"*2\r\n+OK\r\n-ERR no\r\n");
        assert!(matches!(&v, Value::Array(items) if matches!(items[1], Value::ServerError(_))));
    }

    #[test]
    fn a_megabyte_frame_waits_for_all_of_it() {
        let body = vec![b'x'; 1 << 20];
        let mut bytes = format!("*2\r\n:7\r\n${}\r\n", body.len()).into_bytes();
        let header = bytes.len();
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(b"\r\n");
        // A part of it asks for the whole, so the reader does not parse it again before.
        assert_eq!(
            parse(&bytes[..header + 10]).unwrap(),
            Parsed::Incomplete(bytes.len())
        );
        assert_eq!(
            whole(&bytes),
            Value::Array(vec![Value::Int(7), Value::BulkString(body)])
        );
    }

    #[test]
    fn other_bytes_are_refused() {
        assert!(parse(b"%1\r\n").is_err());
        assert!(parse(b"hello\r\n").is_err());
        assert!(parse(b"+a\nb\r\n").is_err());
    }
}

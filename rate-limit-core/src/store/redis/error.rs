//! Redis errors as [`StoreError`]s, sorted so that a circuit breaker counts the right ones.

use redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::error::{StoreError, StoreErrorKind};

/// The kind of store failure a Redis error is.
///
/// - an I/O timeout (the connection's response or connect timeout, or the store's response
///   timeout) is `Timeout`;
/// - any other I/O error (refused, reset, dropped, closed), a failed authentication and a
///   cluster node that cannot be reached are `Connection`;
/// - a bad client configuration (a URL that cannot work) is `InvalidInput`;
/// - what the server answers (a script error, `CLUSTERDOWN`, `MASTERDOWN`, `TRYAGAIN`,
///   `LOADING`, `READONLY`, `CROSSSLOT`, ...) and replies that cannot be read are `Backend`.
pub(crate) fn kind_of(e: &RedisError) -> StoreErrorKind {
    if e.is_timeout() {
        return StoreErrorKind::Timeout;
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        return StoreErrorKind::Connection;
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed | ErrorKind::ClusterConnectionNotFound => {
            StoreErrorKind::Connection
        }
        ErrorKind::InvalidClientConfig => StoreErrorKind::InvalidInput,
        _ => StoreErrorKind::Backend,
    }
}

/// Wraps a Redis error, keeping it as the source.
pub(crate) fn from_redis(e: RedisError) -> StoreError {
    let kind = kind_of(&e);
    let what = match e.kind() {
        ErrorKind::Server(ServerErrorKind::ClusterDown) => "redis cluster is down",
        ErrorKind::Server(ServerErrorKind::CrossSlot) => "redis: keys in different slots",
        ErrorKind::Server(ServerErrorKind::ResponseError) => "redis script failed",
        _ => "redis",
    };
    StoreError::new(kind, what).with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn server(code: &str, detail: &str) -> RedisError {
        // A server error as the parser builds it from `-CODE detail`.
        let text = format!("-{code} {detail}\r\n");
        match redis::parse_redis_value(text.as_bytes()) {
            Ok(redis::Value::ServerError(e)) => e.into(),
            other => panic!("not a server error: {other:?}"),
        }
    }

    #[test]
    fn io_errors_are_timeouts_or_connection_failures() {
        let t: RedisError = io::Error::from(io::ErrorKind::TimedOut).into();
        assert_eq!(kind_of(&t), StoreErrorKind::Timeout);
        for k in [
            io::ErrorKind::ConnectionRefused,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::UnexpectedEof,
        ] {
            let e: RedisError = io::Error::from(k).into();
            assert_eq!(kind_of(&e), StoreErrorKind::Connection, "{k:?}");
        }
    }

    #[test]
    fn server_answers_are_backend_errors() {
        for (code, detail) in [
            ("CLUSTERDOWN", "The cluster is down"),
            (
                "ERR",
                "user_script:1: Script attempted to access nonexistent global",
            ),
            ("LOADING", "Redis is loading the dataset in memory"),
            ("CROSSSLOT", "Keys in request don't hash to the same slot"),
        ] {
            let e = from_redis(server(code, detail));
            assert_eq!(e.kind(), StoreErrorKind::Backend, "{code}");
            assert!(e.is_infrastructure());
        }
        assert_eq!(
            from_redis(server("CLUSTERDOWN", "down")).to_string(),
            "backend error: redis cluster is down"
        );
    }
}

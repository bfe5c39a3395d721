//! `RedisConnection`, the connection `RedisStore::connect` builds, against a live
//! `redis-server`: pipelined replies reach their own callers (a caller that gave up included),
//! `AUTH` and `SELECT` from the URL, Unix sockets, and a server killed and restarted.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use integration_tests::{RedisServer, redis_available};
use rate_limit_core::{
    Algorithm, Limit, Quota, RedisConnection, RedisStore, Store, StoreError, StoreErrorKind,
};
use redis::{RedisResult, Value};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn limit() -> [Limit; 1] {
    [Limit::new(Quota::per_hour(nz(100)), Algorithm::TokenBucket)]
}

async fn query<T: redis::FromRedisValue>(conn: &RedisConnection, args: &[&str]) -> RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut conn.clone()).await
}

/// Waits until the server has `n` clients blocked in a command.
async fn wait_blocked(server: &RedisServer, n: u32) {
    let want = format!("blocked_clients:{n}");
    for _ in 0..200 {
        if server
            .cli(&["INFO", "clients"])
            .lines()
            .any(|l| l.trim() == want)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the server never had {n} blocked clients");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_each_get_their_own_reply() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let conn = RedisConnection::connect(server.url()).await.unwrap();
    let tasks: Vec<_> = (0..200_i64)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let key = format!("k{i}");
                let mut got = Vec::new();
                for _ in 0..3 {
                    got.push(
                        query::<i64>(&conn, &["INCRBY", &key, &i.to_string()])
                            .await
                            .unwrap(),
                    );
                }
                let read: String = query(&conn, &["GET", &key]).await.unwrap();
                (i, got, read)
            })
        })
        .collect();
    for task in tasks {
        let (i, got, read) = task.await.unwrap();
        assert_eq!(got, [i, 2 * i, 3 * i], "k{i}");
        assert_eq!(read, (3 * i).to_string(), "k{i}");
    }
    // A pipeline through the connection: its replies, in order.
    let (a, b): (i64, String) = redis::pipe()
        .cmd("INCR")
        .arg("p")
        .cmd("ECHO")
        .arg("x")
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    assert_eq!((a, b.as_str()), (1, "x"));
}

/// Commands and replies larger than the socket's buffers: the part a caller could not write is
/// written by the reader task, a reply is read across many reads, and small commands queued
/// behind them keep their places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_commands_and_replies_cross_the_socket_in_parts() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let conn = RedisConnection::connect(server.url()).await.unwrap();
    let tasks: Vec<_> = (0..4_u8)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let big = vec![b'a' + i; 3 << 20];
                let key = format!("big{i}");
                let mut set = redis::cmd("SET");
                set.arg(&key).arg(&big[..]);
                let small = format!("small{i}");
                let (mut writer, args) = (conn.clone(), ["INCR", small.as_str()]);
                let (stored, counted) = tokio::join!(
                    set.query_async::<()>(&mut writer),
                    query::<i64>(&conn, &args),
                );
                stored.unwrap();
                assert_eq!(counted.unwrap(), 1);
                let got: Vec<u8> = query(&conn, &["GET", &key]).await.unwrap();
                assert!(got == big, "{key}: {} bytes back", got.len());
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_does_not_shift_later_replies() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let conn = RedisConnection::connect(server.url()).await.unwrap();
    // Blocks the connection for 300 ms on the server, then answers nil: its caller has gone by
    // then.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        query::<Value>(&conn, &["BLPOP", "empty", "0.3"]),
    )
    .await;
    assert!(gave_up.is_err(), "BLPOP answered within 50 ms");
    // Queued behind the abandoned reply: each gets its own.
    let after = [
        query::<i64>(&conn, &["INCR", "n"]),
        query::<i64>(&conn, &["INCR", "n"]),
    ];
    let [one, two] = after;
    assert_eq!(one.await.unwrap(), 1);
    assert_eq!(two.await.unwrap(), 2);
    let pong: String = query(&conn, &["PING"]).await.unwrap();
    assert_eq!(pong, "PONG");
}

#[tokio::test]
async fn auth_from_the_url_and_no_password_in_errors() {
    if !redis_available() {
        return;
    }
    // Set once started: the helper waits for an unauthenticated `PING`.
    let server = RedisServer::start();
    assert_eq!(
        server.cli(&["CONFIG", "SET", "requirepass", "right-pass-7f3"]),
        "OK"
    );
    let port = server.port();
    let good = format!("redis://:right-pass-7f3@127.0.0.1:{port}");
    let conn = RedisConnection::connect(good.as_str()).await.unwrap();
    assert_eq!(query::<String>(&conn, &["PING"]).await.unwrap(), "PONG");
    assert!(!format!("{conn:?}").contains("right-pass-7f3"));
    let store = RedisStore::connect(&good).await.unwrap();
    assert!(
        store
            .check("a", &limit(), nz(1))
            .await
            .unwrap()
            .is_allowed()
    );
    // No password: the server refuses the commands.
    let none = RedisConnection::connect(server.url()).await.unwrap();
    assert!(query::<String>(&none, &["PING"]).await.is_err());

    let bad = format!("redis://:wrong-pass-9c1@127.0.0.1:{port}");
    let err = RedisConnection::connect(bad.as_str()).await.unwrap_err();
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains("wrong-pass-9c1"), "{text}");
    }
    let err = RedisStore::connect(&bad).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Connection, "{err}");
    let chain = format!("{err} {err:?} {:?}", std::error::Error::source(&err));
    assert!(!chain.contains("wrong-pass-9c1"), "{chain}");
    // A user and its password (ACL).
    server.cli(&[
        "-a",
        "right-pass-7f3",
        "ACL",
        "SETUSER",
        "limiter",
        "on",
        ">user-pass-2b8",
        "~*",
        "+@all",
    ]);
    let user = format!("redis://limiter:user-pass-2b8@127.0.0.1:{port}");
    let conn = RedisConnection::connect(user.as_str()).await.unwrap();
    assert_eq!(
        query::<String>(&conn, &["ACL", "WHOAMI"]).await.unwrap(),
        "limiter"
    );
}

#[tokio::test]
async fn the_database_of_the_url_is_selected() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let url = format!("{}/3", server.url());
    let conn = RedisConnection::connect(url.as_str()).await.unwrap();
    let () = query(&conn, &["SET", "only-in-3", "v"]).await.unwrap();
    use redis::aio::ConnectionLike;
    assert_eq!(conn.get_db(), 3);
    assert_eq!(server.cli(&["-n", "3", "GET", "only-in-3"]), "v");
    assert_eq!(server.cli(&["-n", "0", "EXISTS", "only-in-3"]), "0");
    // The store's keys land there too.
    let store = RedisStore::connect(&url).await.unwrap();
    store.check("c", &limit(), nz(1)).await.unwrap();
    let key = store.state_key("c", &limit()[0]);
    assert_eq!(server.cli(&["-n", "3", "EXISTS", &key]), "1");
    assert_eq!(server.cli(&["-n", "0", "EXISTS", &key]), "0");
}

#[tokio::test]
async fn unix_sockets_work() {
    if !redis_available() {
        return;
    }
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "rl-conn-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let path_text = path.to_string_lossy().into_owned();
    let server = RedisServer::start_with(&["--unixsocket", &path_text, "--unixsocketperm", "700"]);
    for url in [
        format!("unix://{path_text}"),
        format!("redis+unix://{path_text}?db=2"),
    ] {
        let conn = RedisConnection::connect(url.as_str()).await.unwrap();
        assert_eq!(
            query::<i64>(&conn, &["INCR", "u"]).await.unwrap(),
            1,
            "{url}"
        );
        let store = RedisStore::connect(&url).await.unwrap();
        assert!(
            store
                .check("u", &limit(), nz(1))
                .await
                .unwrap()
                .is_allowed()
        );
    }
    assert_eq!(server.cli(&["-n", "2", "GET", "u"]), "1");
    drop(server);
    let _ = std::fs::remove_file(&path);
}

/// Killing the server fails the call in flight and the next one with a `Connection` error;
/// once it is back on its port (empty: no library), the store works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_fails_calls_and_a_restarted_one_serves_again() {
    if !redis_available() {
        return;
    }
    let mut server = RedisServer::start();
    let store = Arc::new(RedisStore::connect(&server.url()).await.unwrap());
    assert!(
        store
            .check("k", &limit(), nz(1))
            .await
            .unwrap()
            .is_allowed()
    );

    let conn = store.connection().clone();
    let pending =
        tokio::spawn(async move { query::<Value>(&conn, &["BLPOP", "never", "10"]).await });
    wait_blocked(&server, 1).await;
    server.kill9();
    let err = pending.await.unwrap().unwrap_err();
    assert!(err.is_io_error() || err.is_connection_dropped(), "{err:?}");
    let err: StoreError = store.check("k", &limit(), nz(1)).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Connection, "{err}");

    server.restart();
    // The first call after the restart may still meet the failed attempt's 100 ms back-off.
    let mut answered = None;
    for _ in 0..20 {
        match store.check("k", &limit(), nz(1)).await {
            Ok(d) => {
                answered = Some(d);
                break;
            }
            Err(e) => {
                assert_eq!(e.kind(), StoreErrorKind::Connection, "{e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let d = answered.expect("no answer after the restart");
    // A new, empty server: a full budget again, the library loaded by the store.
    assert_eq!(d.remaining(), 99);
    assert_eq!(server.calls("function|load"), 1);
}

#[tokio::test]
async fn a_check_after_function_flush_loads_the_library_again() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    assert!(
        store
            .check("f", &limit(), nz(1))
            .await
            .unwrap()
            .is_allowed()
    );
    assert_eq!(server.cli(&["FUNCTION", "FLUSH"]), "OK");
    let d = store.check("f", &limit(), nz(1)).await.unwrap();
    assert_eq!(d.remaining(), 98);
    assert_eq!(server.calls("function|load"), 2);
}

/// With nothing listening, every call fails with a `Connection` error (the first on its
/// attempt, those right after it on that attempt's error), and so does `connect`.
#[tokio::test]
async fn an_unreachable_server_fails_every_call_with_a_connection_error() {
    let store = RedisStore::connect_lazy("redis://127.0.0.1:1").unwrap();
    for _ in 0..5 {
        let err = store.check("k", &limit(), nz(1)).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Connection, "{err}");
    }
    assert!(RedisStore::connect("redis://127.0.0.1:1").await.is_err());
}

//! Brute-force protection through one Redis: three instances of a login app, each a real HTTP
//! server with its own connection, limit failed logins per account and per client address
//! (`count_if`); successful logins are given back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use integration_tests::{RedisServer, redis_available};
use rate_limit_core::{Algorithm, Decision, ManualClock, Quota, RedisStore, Store};
use redis::aio::MultiplexedConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_ratelimit::{FailureMode, RateLimitLayer, key};

const WINDOW: Duration = Duration::from_secs(15 * 60);

/// Failures allowed per account and per address in a window.
const PER_ACCOUNT: u32 = 5;
const PER_ADDRESS: u32 = 20;

async fn redis_store(
    server: &RedisServer,
    clock: &ManualClock,
) -> RedisStore<MultiplexedConnection> {
    let client = redis::Client::open(server.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    // The test's clock, so that the window frees a failure when the test says so.
    RedisStore::builder(conn)
        .clock(clock.clone())
        .build()
        .unwrap()
}

/// A layer counting failed logins (401) only, keyed by the header `key_header`.
fn failures(
    store: RedisStore<MultiplexedConnection>,
    clock: &ManualClock,
    name: &str,
    per_window: u32,
    key_header: &'static str,
) -> RateLimitLayer {
    let quota = Quota::with_period(per_window, WINDOW).unwrap();
    RateLimitLayer::new(store, quota)
        .name(name)
        .algorithm(Algorithm::SlidingWindowLog)
        .key(key::Header::new(key_header))
        .clock(clock.clone())
        .on_store_error(FailureMode::Closed)
        .count_if(|status| status == StatusCode::UNAUTHORIZED)
}

/// One instance: its own connections, both layers, the handler counting the attempts it sees.
async fn instance(
    server: &RedisServer,
    clock: &ManualClock,
    seen: &Arc<AtomicUsize>,
) -> SocketAddr {
    let per_account = failures(
        redis_store(server, clock).await,
        clock,
        "login-account",
        PER_ACCOUNT,
        "x-account",
    );
    let per_address = failures(
        redis_store(server, clock).await,
        clock,
        "login-ip",
        PER_ADDRESS,
        "x-client-ip",
    );
    let seen = Arc::clone(seen);
    let login = post(move |password: String| async move {
        seen.fetch_add(1, Ordering::SeqCst);
        if password == "right" {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        }
    });
    // The address layer outermost: an attempt the account layer refuses is a 429, which does
    // not count there either.
    let app = Router::new()
        .route("/login", login)
        .layer(per_account)
        .layer(per_address);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

struct Answer {
    status: u16,
    remaining: Option<u32>,
}

/// One login attempt over HTTP/1.1.
async fn attempt(addr: SocketAddr, account: &str, password: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST /login HTTP/1.1\r\nhost: x\r\nx-account: {account}\r\nx-client-ip: 192.0.2.9\r\n\
         content-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{password}",
        password.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // The account layer is inside: its legacy headers are the ones kept.
    let remaining = text
        .lines()
        .find_map(|l| l.strip_prefix("x-ratelimit-remaining: "))
        .and_then(|v| v.trim().parse().ok());
    Answer { status, remaining }
}

struct Cluster {
    server: RedisServer,
    clock: ManualClock,
    addrs: Vec<SocketAddr>,
    seen: Arc<AtomicUsize>,
}

impl Cluster {
    async fn start() -> Self {
        let server = RedisServer::start();
        let clock = ManualClock::new(Duration::from_secs(1_800_000_000));
        let seen = Arc::new(AtomicUsize::new(0));
        let mut addrs = Vec::new();
        for _ in 0..3 {
            addrs.push(instance(&server, &clock, &seen).await);
        }
        Self {
            server,
            clock,
            addrs,
            seen,
        }
    }

    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }

    /// What Redis holds for `client` under `policy` now.
    async fn budget(&self, policy: &str, per_window: u32, client: &str) -> Decision {
        let layer = failures(
            redis_store(&self.server, &self.clock).await,
            &self.clock,
            policy,
            per_window,
            "x",
        );
        let policy = layer.default_policy();
        let store = redis_store(&self.server, &self.clock).await;
        store
            .peek(&policy.store_key(client), policy.limits(), NonZeroU32::MIN)
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_parallel_wrong_passwords_on_three_instances_reach_the_handler_five_times() {
    if !redis_available() {
        return;
    }
    let cluster = Cluster::start().await;
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let addr = cluster.addrs[i % 3];
            tokio::spawn(async move { attempt(addr, "ann", "wrong").await.status })
        })
        .collect();
    let mut statuses = HashMap::new();
    for task in tasks {
        *statuses.entry(task.await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(statuses.get(&401), Some(&5), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&59), "{statuses:?}");
    assert_eq!(cluster.seen(), 5);
    // Charged: the five failures, on both budgets. Every 429 was given back to the address.
    let account = cluster.budget("login-account", PER_ACCOUNT, "ann").await;
    assert_eq!((account.is_allowed(), account.remaining()), (false, 0));
    let address = cluster.budget("login-ip", PER_ADDRESS, "192.0.2.9").await;
    assert_eq!(address.remaining(), PER_ADDRESS - 5);
    // The right password is refused as well, on every instance.
    for addr in &cluster.addrs {
        assert_eq!(attempt(*addr, "ann", "right").await.status, 429);
    }
    assert_eq!(cluster.seen(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successes_interleaved_with_failures_on_three_instances_are_never_counted() {
    if !redis_available() {
        return;
    }
    let cluster = Cluster::start().await;
    let addr = |i: usize| cluster.addrs[i % 3];
    for i in 0..5 {
        let ok = attempt(addr(i), "bea", "right").await;
        assert_eq!(
            (ok.status, ok.remaining),
            (200, Some(PER_ACCOUNT - i as u32)),
            "success {i}"
        );
        let failed = attempt(addr(i + 1), "bea", "wrong").await;
        assert_eq!(
            (failed.status, failed.remaining),
            (401, Some(PER_ACCOUNT - 1 - i as u32)),
            "failure {i}"
        );
    }
    assert_eq!(cluster.seen(), 10);
    for i in 0..3 {
        assert_eq!(attempt(addr(i), "bea", "right").await.status, 429);
    }

    // In parallel: successes hold a share only while in flight, so fewer failures than the
    // quota may get through, never more, and what stays charged is the failures alone.
    let before = cluster.seen();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let addr = addr(i);
            let password = if i % 2 == 0 { "right" } else { "wrong" };
            tokio::spawn(async move { (password, attempt(addr, "cy", password).await.status) })
        })
        .collect();
    let mut counted = 0;
    for task in tasks {
        match task.await.unwrap() {
            ("wrong", 401) => counted += 1,
            ("right", 200) | (_, 429) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(counted <= PER_ACCOUNT, "{counted} failures got through");
    assert!(cluster.seen() > before);
    let account = cluster.budget("login-account", PER_ACCOUNT, "cy").await;
    assert_eq!(account.remaining(), PER_ACCOUNT - counted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_failures_deny_every_attempt_until_the_window_frees_one() {
    if !redis_available() {
        return;
    }
    let cluster = Cluster::start().await;
    for i in 0..5 {
        assert_eq!(
            attempt(cluster.addrs[i % 3], "dan", "wrong").await.status,
            401
        );
        cluster.clock.advance(Duration::from_secs(60));
    }
    for addr in &cluster.addrs {
        assert_eq!(attempt(*addr, "dan", "right").await.status, 429);
    }
    // The first failure leaves the window 15 minutes after it was counted.
    cluster
        .clock
        .advance(Duration::from_secs(10 * 60) - Duration::from_millis(1));
    assert_eq!(attempt(cluster.addrs[0], "dan", "right").await.status, 429);
    cluster.clock.advance(Duration::from_millis(1));
    // One attempt again: a success, given back, and then a failure, which spends it.
    let ok = attempt(cluster.addrs[1], "dan", "right").await;
    assert_eq!((ok.status, ok.remaining), (200, Some(1)));
    assert_eq!(attempt(cluster.addrs[2], "dan", "wrong").await.status, 401);
    assert_eq!(attempt(cluster.addrs[1], "dan", "wrong").await.status, 429);
    assert_eq!(cluster.seen(), 7);
}

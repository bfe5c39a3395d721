//! `RedisStore` when the network or a node misbehaves: a reply lost after the script ran (through
//! a [`FaultProxy`]), on each connection kind; one Redis Cluster master hung (`SIGSTOP`) while
//! the others serve.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use integration_tests::{Fault, FaultProxy, RedisCluster, RedisServer, redis_available};
use rate_limit_core::resilience::Timeout;
use rate_limit_core::{Algorithm, Limit, Quota, RedisStore, Store, StoreError, StoreErrorKind};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use tokio::time::Instant;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn limit() -> [Limit; 1] {
    [Limit::new(Quota::per_hour(nz(100)), Algorithm::TokenBucket)]
}

async fn mux(url: &str) -> MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// Checks `key` once (the script loaded, the connection open), then once more while `proxy`
/// withholds the reply of the script call and closes the connection. Returns that second
/// check's result, how many script calls the proxy forwarded for it, and how much of the
/// budget of 100 Redis holds as spent, read through `direct`, a connection that bypasses the
/// proxy.
async fn lose_one_reply<C>(
    store: &RedisStore<C>,
    proxy: &FaultProxy,
    direct: &RedisStore<MultiplexedConnection>,
    key: &str,
) -> (Result<bool, StoreError>, usize, u32)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    assert!(
        store
            .check(key, &limit(), nz(1))
            .await
            .unwrap()
            .is_allowed()
    );
    let before = proxy.forwarded("FCALL");
    proxy.inject("FCALL", Fault::DropReply);
    let got = store
        .check(key, &limit(), nz(1))
        .await
        .map(|d| d.is_allowed());
    assert!(
        proxy.wait_fired(1, Duration::from_secs(5)),
        "no reply withheld"
    );
    let sent = proxy.forwarded("FCALL") - before;
    let left = direct.peek(key, &limit(), nz(1)).await.unwrap().remaining();
    (got, sent, 100 - left)
}

/// After a lost reply, the store answers again (the connection reconnects in the background).
async fn answers_again<C>(store: &RedisStore<C>, key: &str)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    for _ in 0..50 {
        if store.check(key, &limit(), nz(1)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the store did not answer again after the lost reply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_on_a_cluster_connection_is_not_sent_again() {
    if !redis_available() {
        return;
    }
    let cluster = RedisCluster::start();
    let proxy = FaultProxy::start(cluster.nodes()[0].port());
    cluster.announce_port(0, proxy.port());
    let store = cluster.connect_store().await;
    let key = (0..)
        .map(|i| format!("lost-{i}"))
        .find(|k| cluster.node_of(&store.state_key(k, &limit()[0])) == 0)
        .unwrap();
    let direct = RedisStore::builder(mux(&cluster.nodes()[0].url()).await)
        .build()
        .unwrap();

    let (got, sent, spent) = lose_one_reply(&store, &proxy, &direct, &key).await;
    // The first check spent 1; the one whose reply was lost spent 1 more, once.
    assert_eq!(
        (sent, spent),
        (1, 2),
        "the script call was sent {sent} times; spent {spent} (got {got:?})"
    );
    let err = got.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Connection, "{err}");
    answers_again(&store, &key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_on_a_connection_manager_is_not_sent_again() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let store = RedisStore::connect(&format!("redis://127.0.0.1:{}", proxy.port()))
        .await
        .unwrap();
    let direct = RedisStore::builder(mux(&server.url()).await)
        .build()
        .unwrap();

    let (got, sent, spent) = lose_one_reply(&store, &proxy, &direct, "k").await;
    assert_eq!((sent, spent), (1, 2), "sent {sent} times; spent {spent}");
    let err = got.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Connection, "{err}");
    // The manager reconnects: a second connection through the proxy.
    answers_again(&store, "k").await;
    assert_eq!(proxy.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_on_a_multiplexed_connection_is_not_sent_again() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let conn = mux(&format!("redis://127.0.0.1:{}", proxy.port())).await;
    let store = RedisStore::builder(conn).build().unwrap();
    let direct = RedisStore::builder(mux(&server.url()).await)
        .build()
        .unwrap();

    let (got, sent, spent) = lose_one_reply(&store, &proxy, &direct, "k").await;
    assert_eq!((sent, spent), (1, 2), "sent {sent} times; spent {spent}");
    let err = got.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Connection, "{err}");
}

/// The callers' time budget in the hung-master test.
const BUDGET: Duration = Duration::from_millis(200);

/// What the checks of the keys on some masters met.
#[derive(Debug, Default)]
struct Outcome {
    answered: usize,
    failed: usize,
    slowest: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hung_master_does_not_stop_the_others() {
    if !redis_available() {
        return;
    }
    // A node timeout far beyond the pause: the others never mark the paused master failing,
    // so the cluster stays up (and, without replicas, nothing fails over).
    let cluster = RedisCluster::start_with_node_timeout(Duration::from_secs(60));
    let store = Arc::new(Timeout::new(cluster.connect_store().await, BUDGET));
    let limit = [Limit::new(Quota::per_hour(nz(1_000_000)), Algorithm::Gcra)];
    // Eight keys on each master.
    let mut keys: [Vec<String>; 3] = Default::default();
    for i in 0.. {
        let key = format!("hung-{i}");
        let node = cluster.node_of(&store.get_ref().state_key(&key, &limit[0]));
        if keys[node].len() < 8 {
            keys[node].push(key);
        }
        if keys.iter().all(|k| k.len() == 8) {
            break;
        }
    }
    // Every master has the script and a connection.
    for key in keys.iter().flatten() {
        assert!(store.check(key, &limit, nz(1)).await.unwrap().is_allowed());
    }

    const HUNG: usize = 1;
    cluster.nodes()[HUNG].pause();
    // Ten rounds; in each, every key is checked once, all at once, and the round ends when
    // every check has answered or failed: the healthy masters' checks share the queue with the
    // hung master's, round after round.
    let (mut healthy, mut hung) = (Outcome::default(), Outcome::default());
    for _ in 0..10 {
        let mut round = Vec::new();
        for (node, node_keys) in keys.iter().enumerate() {
            for key in node_keys {
                let (store, key) = (Arc::clone(&store), key.clone());
                round.push((
                    node,
                    tokio::spawn(async move {
                        let start = Instant::now();
                        let got = store.check(&key, &limit, nz(1)).await;
                        (got, start.elapsed())
                    }),
                ));
            }
        }
        for (node, task) in round {
            let (got, took) = task.await.unwrap();
            let total = if node == HUNG {
                &mut hung
            } else {
                &mut healthy
            };
            total.slowest = total.slowest.max(took);
            match got {
                Ok(d) => {
                    assert!(d.is_allowed());
                    total.answered += 1;
                }
                Err(e) => {
                    assert_eq!(e.kind(), StoreErrorKind::Timeout, "{e}");
                    total.failed += 1;
                }
            }
        }
    }
    eprintln!(
        "one master hung, budget {BUDGET:?}: healthy masters {healthy:?}; hung master {hung:?}"
    );
    assert_eq!(
        (healthy.answered, healthy.failed),
        (160, 0),
        "checks on the healthy masters: {healthy:?}"
    );
    assert_eq!((hung.answered, hung.failed), (0, 80), "{hung:?}");
    // On a loaded machine, twice the budget at most.
    assert!(hung.slowest <= 2 * BUDGET, "{hung:?}");

    // A caller's timeout leaves nothing behind: a burst of checks of the hung master's keys,
    // all of which time out, is dropped from the queue once the calls in flight to that master
    // reach the store's response timeout, while the master is still hung.
    let burst: Vec<_> = (0..2000)
        .map(|i| {
            let (store, key) = (Arc::clone(&store), keys[HUNG][i % 8].clone());
            tokio::spawn(async move { store.check(&key, &limit, nz(1)).await })
        })
        .collect();
    for check in burst {
        let err = check.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Timeout, "{err}");
    }
    let after_burst = store.get_ref().queue_len();
    let start = Instant::now();
    while store.get_ref().queue_len() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{} checks still queued",
            store.get_ref().queue_len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "after a burst of 2000 timed-out checks: {after_burst} queued, none after {:?}",
        start.elapsed()
    );

    cluster.nodes()[HUNG].resume();
    for key in keys.iter().flatten() {
        let mut ok = false;
        for _ in 0..20 {
            if store.check(key, &limit, nz(1)).await.is_ok() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "{key} does not answer after the master resumed");
    }
    assert_eq!(store.get_ref().queue_len(), 0);
}

/// Replies withheld (a stalled link): every call in flight, a lone one and a batch, fails with
/// the store's timeout error once its response timeout has passed, not before, and the store
/// answers again once replies flow. Through `connect`'s `RedisConnection` (whose only bound
/// is the store's timeout) and through a `MultiplexedConnection` whose own timeout (500 ms by
/// default) is longer than the store's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_calls_fail_at_the_response_timeout() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let url = format!("redis://127.0.0.1:{}", proxy.port());
    let managed = Arc::new(RedisStore::connect(&url).await.unwrap());
    stalled_calls_time_out(&managed, &proxy, "m").await;
    let short = Duration::from_millis(150);
    let muxed = RedisStore::builder(mux(&url).await).response_timeout(short);
    stalled_calls_time_out(&Arc::new(muxed.build().unwrap()), &proxy, "x").await;
}

async fn stalled_calls_time_out<C>(store: &Arc<RedisStore<C>>, proxy: &FaultProxy, key: &str)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    answers_again(store, key).await;
    let timeout = store.response_timeout();
    proxy.stall(true);
    let start = Instant::now();
    let checks: Vec<_> = (0..8)
        .map(|i| {
            let store = Arc::clone(store);
            let key = format!("{key}{}", i % 2);
            tokio::spawn(async move { store.check(&key, &limit(), nz(1)).await })
        })
        .collect();
    for check in checks {
        let err = check.await.unwrap().unwrap_err();
        let waited = start.elapsed();
        assert_eq!(err.kind(), StoreErrorKind::Timeout, "{err}");
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        let cause = cause.unwrap_or_default();
        assert!(cause.contains("store's response timeout"), "{err}: {cause}");
        assert!(
            waited >= timeout,
            "failed after {waited:?}, before {timeout:?}"
        );
        // Far above the timeout on a loaded machine, far below a hang.
        assert!(waited < timeout * 3, "failed after {waited:?}");
    }
    proxy.stall(false);
    answers_again(store, key).await;
}

//! `RedisStore` when the network or a node misbehaves: a reply lost after the script ran (through
//! a [`FaultProxy`]), on each connection kind.

use std::num::NonZeroU32;
use std::time::Duration;

use integration_tests::{Fault, FaultProxy, RedisCluster, RedisServer, redis_available};
use rate_limit_core::{Algorithm, Limit, Quota, RedisStore, Store, StoreError, StoreErrorKind};
use redis::aio::{ConnectionLike, MultiplexedConnection};

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
    assert!(store.check(key, &limit(), nz(1)).await.unwrap().allowed());
    let before = proxy.forwarded("EVALSHA");
    proxy.inject("EVALSHA", Fault::DropReply);
    let got = store.check(key, &limit(), nz(1)).await.map(|d| d.allowed());
    assert!(
        proxy.wait_fired(1, Duration::from_secs(5)),
        "no reply withheld"
    );
    let sent = proxy.forwarded("EVALSHA") - before;
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

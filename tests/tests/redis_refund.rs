//! `RedisStore::refund` against real Redis: refunds racing checks across two stores, the deny
//! cache after a refund, server time, and refunds on Redis Cluster. What each algorithm gives
//! back is checked by the conformance table (`redis_conformance.rs`) and against the in-memory
//! store by the differential test (`redis_twins.rs`).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use integration_tests::{RedisCluster, RedisServer, redis_available};
use rate_limit_core::{Algorithm, Charge, Limit, ManualClock, Quota, RedisStore, Store};
use redis::aio::MultiplexedConnection;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

async fn mux(server: &RedisServer) -> MultiplexedConnection {
    let client = redis::Client::open(server.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// Two stores on one server and one clock that stands still, so that nothing refills: every
/// admission is paid for by the quota or by a refund applied before it. Tasks on both stores
/// check one key, and give back every third admission at once. The invariant:
/// `admitted <= quota + refunds made`; and since each refund gives back exactly its charge (the
/// charge is in the state, and the clock has not moved), the state at the end holds
/// `admitted - refunded` units spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_racing_checks_on_two_stores_never_admit_more_than_quota_plus_refunds() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let clock = ManualClock::new(Duration::from_secs(1_800_000_000));
    let mut stores = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::builder(mux(&server).await)
            .clock(clock.clone())
            .build()
            .unwrap();
        stores.push(Arc::new(store));
    }
    for alg in Algorithm::ALL {
        let limits = [Limit::new(Quota::per_minute(nz(20)), alg)];
        let admitted = Arc::new(AtomicU32::new(0));
        let refunded = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for (t, store) in (0..8).zip(stores.iter().cycle()) {
            let (store, admitted, refunded) = (
                Arc::clone(store),
                Arc::clone(&admitted),
                Arc::clone(&refunded),
            );
            tasks.push(tokio::spawn(async move {
                for i in 0..40u32 {
                    let d = store.check("hot", &limits, nz(1)).await.unwrap();
                    if d.is_allowed() {
                        admitted.fetch_add(1, Ordering::SeqCst);
                        if (t + i).is_multiple_of(3) {
                            store
                                .refund("hot", &limits, Charge::new(nz(1)))
                                .await
                                .unwrap();
                            refunded.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let (a, r) = (
            admitted.load(Ordering::SeqCst),
            refunded.load(Ordering::SeqCst),
        );
        assert!(r > 0, "{alg}: no refund was made");
        assert!(a <= 20 + r, "{alg}: {a} admitted with 20 + {r} refunded");
        let left = stores[0].peek("hot", &limits, nz(1)).await.unwrap();
        assert_eq!(
            20 - left.remaining(),
            a - r,
            "{alg}: {a} admitted, {r} refunded"
        );
        // The next algorithm starts from a fresh key.
        redis::cmd("DEL")
            .arg(stores[0].state_key("hot", &limits[0]))
            .query_async::<()>(&mut mux(&server).await)
            .await
            .unwrap();
    }
}

/// A denial kept in the deny cache is dropped by a refund of its key made through the store,
/// whatever set of limits it was for: the budget given back is not denied from the cache.
#[tokio::test]
async fn a_refund_drops_the_keys_cached_denials() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let clock = ManualClock::new(Duration::from_secs(1_800_000_000));
    let store = RedisStore::builder(mux(&server).await)
        .clock(clock.clone())
        .build()
        .unwrap();
    let minute = Limit::new(Quota::per_minute(nz(2)), Algorithm::FixedWindow);
    let both = [minute, Limit::new(Quota::per_hour(nz(50)), Algorithm::Gcra)];
    let one = [minute];
    for _ in 0..2 {
        assert!(store.check("k", &one, nz(1)).await.unwrap().is_allowed());
    }
    for limits in [&one[..], &both[..]] {
        assert!(!store.check("k", limits, nz(1)).await.unwrap().is_allowed());
        let cached = store.try_check_now("k", limits, nz(1)).unwrap().unwrap();
        assert!(cached.is_cached() && !cached.is_allowed());
    }
    let after = store.refund("k", &one, Charge::new(nz(1))).await.unwrap();
    assert_eq!((after.is_allowed(), after.remaining()), (true, 1));
    for limits in [&one[..], &both[..]] {
        assert!(store.try_check_now("k", limits, nz(1)).is_none());
    }
    let d = store.check("k", &both, nz(1)).await.unwrap();
    assert!(d.is_allowed() && !d.is_cached());
}

/// On the server's `TIME`: a refund right after its check gives the charge back, for every
/// algorithm, and a charge given back twice never takes a limit above its capacity.
#[tokio::test]
async fn on_server_time_a_prompt_refund_gives_the_charge_back() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let store = RedisStore::builder(mux(&server).await).build().unwrap();
    for alg in Algorithm::ALL {
        let limits = [Limit::new(Quota::per_hour(nz(3)), alg)];
        let key = format!("server-{alg}");
        let d = store.check(&key, &limits, nz(3)).await.unwrap();
        assert_eq!(d.remaining(), 0, "{alg}");
        // Measured from before the check was sent, as the layer does: generous here.
        let charge = Charge::new(nz(2)).elapsed(Duration::from_secs(1));
        let after = store.refund(&key, &limits, charge).await.unwrap();
        assert_eq!(after.remaining(), 2, "{alg}");
        let after = store.refund(&key, &limits, charge).await.unwrap();
        assert_eq!(after.remaining(), 3, "{alg}");
        assert!(
            store
                .check(&key, &limits, nz(3))
                .await
                .unwrap()
                .is_allowed()
        );
    }
}

/// On Redis Cluster a refund goes to its key's slot, as a check does: keys on every master get
/// their charges back, with several limits in one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_reach_every_master_of_a_cluster() {
    if !redis_available() {
        return;
    }
    let cluster = RedisCluster::start();
    let store = cluster.connect_store().await;
    let limits = [
        Limit::new(Quota::per_hour(nz(4)), Algorithm::Gcra),
        Limit::new(Quota::per_hour(nz(5)), Algorithm::SlidingWindowLog),
    ];
    let mut masters = std::collections::HashSet::new();
    for i in 0..30 {
        let key = format!("client-{i}");
        masters.insert(cluster.node_of(&store.state_key(&key, &limits[0])));
        assert!(
            store
                .check(&key, &limits, nz(4))
                .await
                .unwrap()
                .is_allowed()
        );
        assert!(
            !store
                .check(&key, &limits, nz(1))
                .await
                .unwrap()
                .is_allowed()
        );
        let charge = Charge::new(nz(3)).elapsed(Duration::from_secs(1));
        let after = store.refund(&key, &limits, charge).await.unwrap();
        let left: Vec<u32> = after.snapshots().iter().map(|s| s.remaining()).collect();
        assert_eq!(left, [3, 4], "{key}");
    }
    assert!(masters.len() > 1, "every key on one master");
}

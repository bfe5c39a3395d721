//! What `RedisStore` answers must not depend on how it got there: a denial for good ("never")
//! is the same with and without the deny cache.

use std::num::NonZeroU32;
use std::time::Duration;

use integration_tests::{RedisServer, redis_available};
use rate_limit_core::{Algorithm, Decision, Limit, ManualClock, Quota, RedisStore, Store};
use redis::aio::MultiplexedConnection;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

async fn store(
    server: &RedisServer,
    prefix: &str,
    clock: &ManualClock,
    deny_cache: usize,
) -> RedisStore<MultiplexedConnection> {
    let client = redis::Client::open(server.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    RedisStore::builder(conn)
        .prefix(prefix)
        .clock(clock.clone())
        .deny_cache(deny_cache)
        .build()
        .unwrap()
}

/// A check as the tower layer makes it: the deny cache first, then Redis.
async fn check(
    store: &RedisStore<MultiplexedConnection>,
    key: &str,
    limits: &[Limit],
    cost: u32,
) -> Decision {
    match store.try_check_now(key, limits, nz(cost)) {
        Some(answer) => answer.unwrap(),
        None => store.check(key, limits, nz(cost)).await.unwrap(),
    }
}

#[tokio::test]
async fn a_cost_above_capacity_is_never_with_or_without_the_deny_cache() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let clock = ManualClock::new(Duration::from_secs(1_800_000_000));
    let cached = store(&server, "cached", &clock, 4096).await;
    let uncached = store(&server, "uncached", &clock, 0).await;
    for alg in Algorithm::ALL {
        // Capacity 4 for every algorithm.
        let limits = [Limit::new(Quota::per_second(nz(4)), alg)];
        let key = alg.name();
        let mut answers = Vec::new();
        for store in [&cached, &uncached] {
            assert!(check(store, key, &limits, 4).await.allowed(), "{alg}");
            // Denied with a wait: the cached store keeps this denial.
            let denied = check(store, key, &limits, 1).await;
            assert!(denied.retry_after().is_some(), "{alg}: {denied:?}");
            // A cost no wait lets through.
            answers.push(check(store, key, &limits, 9).await);
        }
        assert!(
            cached.try_check_now(key, &limits, nz(1)).is_some(),
            "{alg}: the denial is kept"
        );
        for never in &answers {
            assert!(never.is_never(), "{alg}: {never:?}");
        }
        assert_eq!(answers[0], answers[1], "{alg}: cached vs uncached");
    }
}

//! What `RedisStore` answers must not depend on how it got there: a denial for good ("never")
//! is the same with and without the deny cache, and a quota is counted as memory counts it,
//! whatever its rate.

use std::num::NonZeroU32;
use std::time::Duration;

use integration_tests::replay::snapshot_micros;
use integration_tests::{RedisServer, Relay, redis_available};
use rate_limit_core::{
    Algorithm, Clock, Decision, Limit, MAX_SPAN, ManualClock, MemoryStore, Quota, RedisStore, Store,
};
use redis::aio::MultiplexedConnection;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

async fn store(
    server: &RedisServer,
    prefix: &str,
    clock: &ManualClock,
    deny_cache: usize,
) -> RedisStore<Relay<MultiplexedConnection>> {
    let client = redis::Client::open(server.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    // Expiry runs on the server's real time, not on the manual clock: every state is kept.
    RedisStore::builder(Relay::persisting(conn))
        .prefix(prefix)
        .clock(clock.clone())
        .deny_cache(std::num::NonZeroUsize::new(deny_cache))
        .build()
        .unwrap()
}

/// A check as the tower layer makes it: the deny cache first, then Redis.
async fn check(
    store: &RedisStore<Relay<MultiplexedConnection>>,
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
            assert!(check(store, key, &limits, 4).await.is_allowed(), "{alg}");
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

/// Memory and Redis at the edges of what a quota holds: rates far above a unit per microsecond,
/// and full buckets of about a century. The script counts bucket spans in nanoseconds, as memory
/// does, so every decision is the same and every wait the same once rounded up to the
/// microsecond (Redis's tick).
#[tokio::test]
async fn memory_and_redis_agree_at_the_edges_of_a_quota() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let start = Duration::from_secs(1_800_000_000);
    let clock = ManualClock::new(start);
    let redis = store(&server, "edges", &clock, 0).await;
    let memory = MemoryStore::builder().clock(clock.clone()).build();
    let quotas = [
        Quota::per_second(nz(u32::MAX)),
        Quota::per_second(nz(999_999)).burst(nz(7)).unwrap(),
        Quota::per_second(nz(3)).burst(nz(u32::MAX)).unwrap(),
        Quota::per_hour(nz(1)).burst(nz(876_000)).unwrap(),
        Quota::with_period(nz(1), MAX_SPAN).unwrap(),
        Quota::with_period(nz(u32::MAX), MAX_SPAN).unwrap(),
    ];
    for (n, q) in quotas.into_iter().enumerate() {
        for alg in [
            Algorithm::TokenBucket,
            Algorithm::LeakyBucket,
            Algorithm::Gcra,
        ] {
            let limits = [Limit::new(q, alg)];
            let key = format!("edge-{n}-{alg}");
            let burst = q.burst_size().get();
            clock.set(start);
            // Spend all, then ask for one, part of the way to its wait, at it, and past it.
            let mut steps = vec![
                (Duration::ZERO, burst),
                (Duration::ZERO, 1),
                (Duration::ZERO, burst),
            ];
            let wait = q.emission_interval();
            steps.push((wait / 3, 1));
            steps.push((wait - wait / 3 - Duration::from_nanos(1), 1));
            steps.push((Duration::from_micros(1), 1));
            steps.push((wait * 2, 2));
            for (i, (advance, cost)) in steps.into_iter().enumerate() {
                // Arrivals on whole microseconds, as Redis's clock has them.
                let at = clock.now() + advance;
                clock.set(Duration::from_micros(
                    u64::try_from(at.as_micros()).unwrap(),
                ));
                let m = memory.check(&key, &limits, nz(cost)).await.unwrap();
                let r = redis.check(&key, &limits, nz(cost)).await.unwrap();
                assert_eq!(
                    (m.is_allowed(), snapshot_micros(&m)),
                    (r.is_allowed(), snapshot_micros(&r)),
                    "{q} {alg}, step {i}: memory vs redis"
                );
            }
        }
    }
}

//! `RedisStore` behind slow, stalled and partitioned links: a [`FaultProxy`] between the store
//! and its own `redis-server` adds latency to every reply, or stops relaying replies; a
//! [`PartitionedRedis`] in a network namespace of the test's own loses its link.
#![allow(clippy::disallowed_methods)] // wall-clock latency of each call is what is measured

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::{FaultProxy, PartitionedRedis, RedisServer, redis_available};
use rate_limit_core::resilience::{CircuitBreaker, CircuitState, DecidedBy, Fallback, Timeout};
use rate_limit_core::{Algorithm, Limit, MemoryStore, Quota, RedisStore, Store};

const BUDGET: Duration = Duration::from_millis(100);
const QUOTA: u32 = 50;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn limits() -> [Limit; 1] {
    [Limit::new(
        Quota::per_hour(nz(QUOTA)),
        Algorithm::TokenBucket,
    )]
}

/// p50, p99 and max of `latencies`.
fn percentiles(latencies: &mut [Duration]) -> (Duration, Duration, Duration) {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), at(1.0))
}

/// With 20 ms added to every reply, checks from four tasks are all answered within a 200 ms
/// budget, and exactly the quota is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_through_20ms_of_latency_stay_exact_and_within_the_budget() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let url = format!("redis://127.0.0.1:{}", proxy.port());
    // Four tasks share at most two calls in flight: a check may wait two or three round trips.
    let budget = 2 * BUDGET;
    let store = Arc::new(Timeout::new(
        RedisStore::connect(&url).await.unwrap(),
        budget,
    ));
    // The script loaded and the connection open before the link slows down.
    assert!(
        store
            .check("warm", &limits(), nz(1))
            .await
            .unwrap()
            .is_allowed()
    );
    proxy.set_latency(Duration::from_millis(20));
    let mut handles = Vec::new();
    for _ in 0..4 {
        let store = Arc::clone(&store);
        handles.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..20 {
                let t = Instant::now();
                let got = store.check("slow", &limits(), nz(1)).await;
                out.push((t.elapsed(), got.map(|d| d.is_allowed())));
            }
            out
        }));
    }
    let mut results = Vec::new();
    for h in handles {
        results.extend(h.await.unwrap());
    }
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    let admitted = results
        .iter()
        .filter(|(_, r)| matches!(r, Ok(true)))
        .count();
    let mut latencies: Vec<Duration> = results.iter().map(|(l, _)| *l).collect();
    let (p50, p99, max) = percentiles(&mut latencies);
    println!(
        "20 ms latency: {} checks, {failed} failed, {admitted} admitted of {QUOTA}; \
         p50 {p50:?}, p99 {p99:?}, max {max:?}",
        results.len()
    );
    assert_eq!(failed, 0);
    assert_eq!(admitted, QUOTA as usize, "not exact through a slow link");
    assert!(
        p50 >= Duration::from_millis(20),
        "the latency was not added: {p50:?}"
    );
    assert!(max <= 2 * budget, "a check took {max:?}, budget {budget:?}");
}

/// Replies stalled past the budget: the breaker opens and the fallback decides every check
/// within the budget; once replies flow again, the breaker closes and Redis decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_replies_open_the_breaker_and_the_fallback_decides() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let url = format!("redis://127.0.0.1:{}", proxy.port());
    let breaker = CircuitBreaker::new(Timeout::new(
        RedisStore::connect(&url).await.unwrap(),
        BUDGET,
    ))
    .failure_threshold(nz(3))
    .cool_down(Duration::from_millis(200))
    .max_cool_down(Duration::from_millis(400));
    let stack = Fallback::new(breaker, MemoryStore::new(), nz(2));
    let (_, by) = stack.check_traced("stall", &limits(), nz(1)).await.unwrap();
    assert_eq!(by, DecidedBy::Primary);

    proxy.stall(true);
    let mut latencies = Vec::new();
    let mut local = 0;
    for _ in 0..40 {
        let t = Instant::now();
        let (_, by) = stack.check_traced("stall", &limits(), nz(1)).await.unwrap();
        latencies.push(t.elapsed());
        local += usize::from(by == DecidedBy::Local);
    }
    let opened = stack.primary().state();
    let (p50, p99, max) = percentiles(&mut latencies);
    println!(
        "stalled replies: 40 checks, 0 failed, {local} decided locally, breaker {opened:?}; \
         p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    assert_eq!(local, 40, "a check was decided by a stalled Redis");
    assert_ne!(opened, CircuitState::Closed, "the breaker did not open");
    assert!(max <= 2 * BUDGET, "a check took {max:?}, budget {BUDGET:?}");

    proxy.stall(false);
    let healed = Instant::now();
    loop {
        let (_, by) = stack.check_traced("stall", &limits(), nz(1)).await.unwrap();
        if by == DecidedBy::Primary {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(10),
            "Redis never decided again after the stall"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "stall healed: Redis decides again after {:?}, breaker {:?}",
        healed.elapsed(),
        stack.primary().state()
    );
    assert_eq!(stack.primary().state(), CircuitState::Closed);
}

/// A real partition: Redis in a network namespace, the veth link to it taken down. The
/// fallback decides within the budget meanwhile; once the link is up, the breaker closes and
/// Redis decides again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_partition_heals_the_breaker_closes_and_redis_decides() {
    if !redis_available() {
        return;
    }
    let Some(redis) = PartitionedRedis::start() else {
        return;
    };
    let cool_down = Duration::from_millis(200);
    let max_cool_down = Duration::from_millis(400);
    let breaker = CircuitBreaker::new(Timeout::new(
        RedisStore::connect(&redis.url()).await.unwrap(),
        BUDGET,
    ))
    .failure_threshold(nz(3))
    .cool_down(cool_down)
    .max_cool_down(max_cool_down);
    let stack = Fallback::new(breaker, MemoryStore::new(), nz(2));
    let (_, by) = stack.check_traced("part", &limits(), nz(1)).await.unwrap();
    assert_eq!(by, DecidedBy::Primary);

    redis.partition();
    let (mut latencies, mut local, mut n) = (Vec::new(), 0, 0);
    let cut = Instant::now();
    while cut.elapsed() < Duration::from_millis(1500) {
        let t = Instant::now();
        let (_, by) = stack.check_traced("part", &limits(), nz(1)).await.unwrap();
        latencies.push(t.elapsed());
        local += usize::from(by == DecidedBy::Local);
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await; // a steady trickle of requests
    }
    let state = stack.primary().state();
    let (p50, p99, max) = percentiles(&mut latencies);
    println!(
        "partition: {n} checks, 0 failed, {local} decided locally, breaker {state:?}; \
         p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    assert_eq!(
        local, n,
        "a check was decided by Redis across the partition"
    );
    assert_ne!(state, CircuitState::Closed, "the breaker did not open");
    assert!(max <= 2 * BUDGET, "a check took {max:?}, budget {BUDGET:?}");

    redis.heal();
    let healed = Instant::now();
    loop {
        let (_, by) = stack.check_traced("part", &limits(), nz(1)).await.unwrap();
        if by == DecidedBy::Primary {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(10),
            "Redis never decided again after the partition healed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let back = healed.elapsed();
    // The probe comes at the end of a cool-down; a connection left stale by the partition can
    // fail it, and cost one more.
    assert!(
        back <= Duration::from_secs(3),
        "Redis decided again only after {back:?}"
    );
    println!(
        "partition healed: Redis decides again after {back:?} (cool-down {cool_down:?} to \
         {max_cool_down:?}), breaker {:?}",
        stack.primary().state()
    );
    assert_eq!(stack.primary().state(), CircuitState::Closed);
}

//! `RedisStore` behind slow, stalled, reset, lossy and partitioned links: a [`FaultProxy`]
//! between the store and its own `redis-server` adds latency to every reply, stops relaying
//! replies, resets every connection, or drops the reply of a script call (closing the
//! connection); a [`PartitionedRedis`] in a network namespace of the test's own loses its link.
#![allow(clippy::disallowed_methods)] // wall-clock latency of each call is what is measured

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use integration_tests::{Fault, FaultProxy, PartitionedRedis, RedisServer, redis_available};
use rate_limit_core::resilience::{CircuitBreaker, CircuitState, DecidedBy, Fallback, Timeout};
use rate_limit_core::{Algorithm, Limit, MemoryStore, Quota, RedisStore, Store, StoreErrorKind};
use redis::aio::MultiplexedConnection;

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

/// The stack the link tests put over a store behind the proxy: a 100 ms budget, a breaker that
/// opens after 3 failures and probes after 200 to 400 ms, and a local fallback on half of
/// each quota.
type Stack = Fallback<CircuitBreaker<Timeout<RedisStore>>, MemoryStore>;

async fn stack(url: &str) -> Stack {
    let breaker = CircuitBreaker::new(Timeout::new(
        RedisStore::connect(url).await.unwrap(),
        BUDGET,
    ))
    .failure_threshold(nz(3))
    .cool_down(Duration::from_millis(200))
    .max_cool_down(Duration::from_millis(400));
    Fallback::new(breaker, MemoryStore::new(), nz(2))
}

/// A quota no test reaches, in a log: Redis keeps one entry per charge of the last hour, so
/// what it holds counts the charges exactly (a bucket would refill meanwhile), and no denial is
/// cached.
fn roomy() -> [Limit; 1] {
    [Limit::new(
        Quota::per_hour(nz(1_000_000)),
        Algorithm::SlidingWindowLog,
    )]
}

/// Charges Redis holds for `key` under [`roomy`], read around the proxy.
async fn held(direct: &RedisStore<MultiplexedConnection>, key: &str) -> u32 {
    1_000_000 - direct.peek(key, &roomy(), nz(1)).await.unwrap().remaining()
}

async fn direct(server: &RedisServer) -> RedisStore<MultiplexedConnection> {
    let client = redis::Client::open(server.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    RedisStore::builder(conn).build().unwrap()
}

/// One check of the reset test.
struct Rec {
    key: usize,
    started: Duration,
    latency: Duration,
    outcome: Option<(DecidedBy, bool)>,
}

/// Every connection reset for 700 ms in the middle of a load from four tasks: no check fails
/// (the fallback decides the ones Redis cannot, within the budget), the breaker opens, and once
/// connections are relayed again the breaker closes and Redis decides. What Redis holds for
/// each key is never more than its Redis admissions plus the checks decided locally (a call
/// whose reply a reset lost may have run, once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_reset_under_load_fall_back_then_redis_decides_again() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let stack = Arc::new(stack(&format!("redis://127.0.0.1:{}", proxy.port())).await);
    let (_, by) = stack.check_traced("warm", &roomy(), nz(1)).await.unwrap();
    assert_eq!(by, DecidedBy::Primary);

    const TASKS: usize = 4;
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for key in 0..TASKS {
        let (stack, stop) = (Arc::clone(&stack), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut recs = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = t0.elapsed();
                let got = stack
                    .check_traced(&format!("reset-{key}"), &roomy(), nz(1))
                    .await;
                recs.push(Rec {
                    key,
                    started,
                    latency: t0.elapsed() - started,
                    outcome: got.ok().map(|(d, by)| (by, d.is_allowed())),
                });
                tokio::time::sleep(Duration::from_millis(2)).await; // a steady load
            }
            recs
        }));
    }
    // The breaker's states, sampled while the load runs.
    let sampler = {
        let (stack, stop) = (Arc::clone(&stack), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let state = stack.primary().state();
                if seen.last() != Some(&state) {
                    seen.push(state);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.reset_connections(true);
    let cut = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(700)).await;
    proxy.reset_connections(false);
    let healed = t0.elapsed();
    // Until every task has had a Redis decision started after the heal (at most 10 s).
    let back = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = t0.elapsed();
        if t - healed > Duration::from_secs(10) || stack.primary().state() == CircuitState::Closed {
            // Let each task make a few more checks on a closed breaker.
            tokio::time::sleep(Duration::from_millis(100)).await;
            break t - healed;
        }
    };
    stop.store(true, Ordering::Relaxed);
    let mut recs = Vec::new();
    for task in tasks {
        recs.extend(task.await.unwrap());
    }
    let states = sampler.await.unwrap();

    let failed = recs.iter().filter(|r| r.outcome.is_none()).count();
    let local = recs
        .iter()
        .filter(|r| matches!(r.outcome, Some((DecidedBy::Local, _))))
        .count();
    let redis_after_heal = (0..TASKS)
        .filter(|&k| {
            recs.iter().any(|r| {
                r.key == k
                    && r.started > healed
                    && matches!(r.outcome, Some((DecidedBy::Primary, _)))
            })
        })
        .count();
    let first_redis_after_heal = recs
        .iter()
        .filter(|r| r.started > healed && matches!(r.outcome, Some((DecidedBy::Primary, _))))
        .map(|r| r.started + r.latency - healed)
        .min();
    let mut latencies: Vec<Duration> = recs.iter().map(|r| r.latency).collect();
    let (p50, p99, max) = percentiles(&mut latencies);
    eprintln!(
        "connections reset for 700 ms (from {cut:?}): {} checks, {failed} failed, {local} decided \
         locally, {} connections reset, breaker {states:?}; p50 {p50:?}, p99 {p99:?}, max \
         {max:?}; Redis decides again {first_redis_after_heal:?} after the resets end (breaker \
         closed after {back:?})",
        recs.len(),
        proxy.resets(),
    );
    assert_eq!(failed, 0, "checks failed despite the fallback");
    assert!(proxy.resets() > 0, "no connection was reset");
    assert!(
        local > 0,
        "no check was decided locally while connections were reset"
    );
    assert!(
        states.contains(&CircuitState::Open),
        "the breaker never opened: {states:?}"
    );
    assert!(max <= 2 * BUDGET, "a check took {max:?}, budget {BUDGET:?}");
    assert_eq!(
        stack.primary().state(),
        CircuitState::Closed,
        "the breaker did not close once connections were relayed again"
    );
    assert_eq!(
        redis_after_heal, TASKS,
        "Redis did not decide again for every task"
    );

    let direct = direct(&server).await;
    for k in 0..TASKS {
        let key = format!("reset-{k}");
        let mine = || recs.iter().filter(move |r| r.key == k);
        let admitted = mine()
            .filter(|r| matches!(r.outcome, Some((DecidedBy::Primary, true))))
            .count() as u32;
        let lost = mine()
            .filter(|r| matches!(r.outcome, Some((DecidedBy::Local, _))))
            .count() as u32;
        let held = held(&direct, &key).await;
        assert!(
            (admitted..=admitted + lost).contains(&held),
            "{key}: Redis holds {held} charges for {admitted} Redis admissions and {lost} \
             checks decided locally"
        );
    }
}

/// The reply of a script call dropped (the proxy forwards the call, then closes the connection
/// instead of relaying the reply), once every ten checks: the caller gets a `Connection` error
/// within its budget, the fallback decides that check, and the call is never sent again: every
/// script call the proxy forwarded is charged once, and they are exactly the ones Redis answered
/// plus the ones whose reply was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_replies_are_charged_once_and_the_fallback_decides() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let proxy = FaultProxy::start(server.port());
    let stack = stack(&format!("redis://127.0.0.1:{}", proxy.port())).await;
    let direct = direct(&server).await;
    let key = "dropped";
    let (_, by) = stack.check_traced(key, &roomy(), nz(1)).await.unwrap();
    assert_eq!(by, DecidedBy::Primary);
    let (before_calls, before_held) = (proxy.forwarded("FCALL"), held(&direct, key).await);

    // The caller under the fallback sees the error, within its budget.
    proxy.inject("FCALL", Fault::DropReply);
    let t = Instant::now();
    let err = stack
        .primary()
        .check(key, &roomy(), nz(1))
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert!(proxy.wait_fired(1, Duration::from_secs(5)));
    assert_eq!(err.kind(), StoreErrorKind::Connection, "{err}");
    assert!(
        took <= BUDGET,
        "the error came after {took:?}, budget {BUDGET:?}"
    );

    // Then through the whole stack, a reply dropped every ten checks.
    let (mut latencies, mut redis, mut local, mut failed) = (Vec::new(), 0, 0, 0);
    let mut drops = 1;
    for i in 0..100 {
        let drop = i % 10 == 5;
        if drop {
            proxy.inject("FCALL", Fault::DropReply);
        }
        let t = Instant::now();
        let got = stack.check_traced(key, &roomy(), nz(1)).await;
        latencies.push(t.elapsed());
        match got {
            Ok((_, DecidedBy::Primary)) => redis += 1,
            Ok((_, _)) => local += 1,
            Err(_) => failed += 1,
        }
        if drop {
            drops += 1;
            assert!(
                proxy.wait_fired(drops, Duration::from_secs(5)),
                "check {i}: no reply dropped"
            );
        }
    }
    let forwarded = proxy.forwarded("FCALL") - before_calls;
    let charged = held(&direct, key).await - before_held;
    let (p50, p99, max) = percentiles(&mut latencies);
    eprintln!(
        "dropped replies: 100 checks, {failed} failed, {} replies dropped, {local} decided \
         locally, {redis} by Redis; {forwarded} script calls forwarded, {charged} charged; p50 \
         {p50:?}, p99 {p99:?}, max {max:?}; breaker {:?}",
        drops - 1,
        stack.primary().state(),
    );
    assert_eq!(failed, 0);
    assert!(
        local >= drops - 1,
        "a dropped reply was not decided locally"
    );
    assert_eq!(
        forwarded,
        redis + drops,
        "a call was sent again: {forwarded} forwarded for {redis} answered and {drops} dropped"
    );
    assert_eq!(
        charged as usize, forwarded,
        "a forwarded call was not charged once"
    );
    assert!(max <= 2 * BUDGET, "a check took {max:?}, budget {BUDGET:?}");
}

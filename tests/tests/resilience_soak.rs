//! Soak: 55 s of steady load on mixed keys through `Fallback<CircuitBreaker<Timeout<Redis>>,
//! MemoryStore>`, with one Redis kill and restart in the middle. No decision may fail, no call
//! may exceed the budget plus the margin, and resident memory must stay flat.
//!
//! Its own test binary, so that the memory it reads is its own.
#![allow(clippy::disallowed_methods)] // wall-clock latency of each call is what is measured

mod resilience_support;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use integration_tests::{RedisServer, redis_available};
use rate_limit_core::resilience::{CircuitState, DecidedBy};
use rate_limit_core::{Algorithm, Limit, Quota};
use resilience_support::*;

/// Growth of resident memory allowed between 10 s and the end.
const RSS_GROWTH_BOUND_KIB: u64 = 20 * 1024;
const DURATION: Duration = Duration::from_secs(55);
const KILL_AT: Duration = Duration::from_secs(25);
const DOWN_FOR: Duration = Duration::from_secs(3);
/// The last stretch of the run, in which Redis alone must decide.
const TAIL: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    errors: AtomicU64,
    local: AtomicU64,
    over: AtomicU64,
    slowest: AtomicU64,
    tail_local: AtomicU64,
    tail_redis: AtomicU64,
}

#[test]
fn soak_with_a_redis_restart_decides_every_call_and_keeps_memory_flat() {
    let _one_at_a_time = serial();
    if !redis_available() {
        return;
    }
    let mut server = RedisServer::start();
    run(async {
        let store = local_mode(&server, "redis-soak").await;
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tail = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let tasks: Vec<_> = (0..TASKS as u64)
            .map(|t| {
                let (store, counts) = (Arc::clone(&store), Arc::clone(&counts));
                let (stop, tail) = (Arc::clone(&stop), Arc::clone(&tail));
                tokio::spawn(async move {
                    let limit_sets = limit_sets();
                    // A small LCG: 20,000 keys, a few of them hot, three policies.
                    let mut x = 0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(t + 1);
                    while !stop.load(Ordering::Relaxed) {
                        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        let r = x >> 33;
                        let key = if r.is_multiple_of(4) {
                            format!("hot-{}", r % 8)
                        } else {
                            format!("user-{}", r % 20_000)
                        };
                        let limits = &limit_sets[(r % 3) as usize];
                        let in_tail = tail.load(Ordering::Relaxed);
                        let start = Instant::now();
                        let result = store.check_traced(&key, limits, NonZeroU32::MIN).await;
                        let took = start.elapsed();
                        counts.record(took, result.map(|(_, by)| by).ok(), in_tail);
                        tokio::time::sleep(PACE).await;
                    }
                })
            })
            .collect();

        tokio::time::sleep(Duration::from_secs(10)).await;
        let rss_at_10s = rss_kib();
        tokio::time::sleep(KILL_AT.saturating_sub(started.elapsed())).await;
        server.kill9();
        tokio::time::sleep(DOWN_FOR).await;
        server.restart();
        tokio::time::sleep((DURATION - TAIL).saturating_sub(started.elapsed())).await;
        assert_eq!(store.primary().state(), CircuitState::Closed);
        tail.store(true, Ordering::Relaxed);
        tokio::time::sleep(DURATION.saturating_sub(started.elapsed())).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let rss_end = rss_kib();

        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let growth = rss_end.saturating_sub(rss_at_10s);
        println!(
            "soak {:?}: {} checks, {} failed, {} local; slowest {:?} ({} over {:?}); \
             last {TAIL:?}: {} by Redis, {} local; RSS {rss_at_10s} KiB at 10 s, {rss_end} KiB \
             at the end (+{growth} KiB); breaker: {}",
            started.elapsed(),
            c(&counts.calls),
            c(&counts.errors),
            c(&counts.local),
            Duration::from_nanos(c(&counts.slowest)),
            c(&counts.over),
            BUDGET + MARGIN,
            c(&counts.tail_redis),
            c(&counts.tail_local),
            transitions("redis-soak").join(" -> "),
        );
        assert!(
            c(&counts.calls) > 10_000,
            "only {} checks",
            c(&counts.calls)
        );
        assert_eq!(c(&counts.errors), 0, "failed decisions");
        assert_eq!(c(&counts.over), 0, "calls over the budget plus the margin");
        assert!(c(&counts.local) > 0, "the restart was never noticed");
        assert!(c(&counts.tail_redis) > 0 && c(&counts.tail_local) == 0);
        assert!(
            growth < RSS_GROWTH_BOUND_KIB,
            "RSS grew by {growth} KiB from 10 s to the end"
        );
    });
}

/// Three policies: one limit, two limits, two limits of other algorithms.
fn limit_sets() -> [Vec<Limit>; 3] {
    let nz = |n| NonZeroU32::new(n).unwrap();
    [
        vec![Limit::new(
            Quota::per_second(nz(50)),
            Algorithm::TokenBucket,
        )],
        limits().to_vec(),
        vec![
            Limit::new(Quota::per_minute(nz(600)), Algorithm::FixedWindow),
            Limit::new(Quota::per_hour(nz(10_000)), Algorithm::SlidingWindowLog),
        ],
    ]
}

impl Counts {
    fn record(&self, took: Duration, by: Option<DecidedBy>, in_tail: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.slowest.fetch_max(nanos, Ordering::Relaxed);
        if took > BUDGET + MARGIN {
            self.over.fetch_add(1, Ordering::Relaxed);
        }
        match by {
            None => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
            Some(DecidedBy::Local) => {
                self.local.fetch_add(1, Ordering::Relaxed);
                if in_tail {
                    self.tail_local.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(_) => {
                if in_tail {
                    self.tail_redis.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

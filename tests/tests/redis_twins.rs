//! Differential test: random arrivals (checks, peeks and refunds) against `MemoryStore` and
//! `RedisStore` (client clock) must give identical decisions, for every algorithm alone and for
//! mixed sets of limits.
//!
//! Arrivals fall on whole microseconds (Redis's clock counts microseconds), and the script
//! computes its spans in nanoseconds as memory does: every decision must be the same, and every
//! wait the same once rounded up to the microsecond, so memory and Redis never disagree by a
//! tick. Quotas include emission intervals that are whole microseconds and some that are not
//! (3/s, 7/s with burst 11, 999,999/s, 10^7/s, 10^9/s). The clock moves by small steps, long
//! pauses and, now and then, a step back.
//!
//! The same arrivals run a second time through `RedisStore`'s deny cache, which must allow and
//! deny exactly as the transitions do.

use std::num::NonZeroU32;
use std::time::Duration;

use integration_tests::replay::{Rng, SnapshotMicros, snapshot_micros};
use integration_tests::{RedisServer, Relay, redis_available};
use rate_limit_core::{
    Algorithm, Charge, Clock, Decision, Limit, ManualClock, MemoryStore, Quota, RedisStore, Store,
};

fn quota(limit: u32, period_ms: u64, burst: u32) -> Quota {
    Quota::with_period(
        NonZeroU32::new(limit).unwrap(),
        Duration::from_millis(period_ms),
    )
    .unwrap()
    .burst(NonZeroU32::new(burst).unwrap())
    .unwrap()
}

/// Limit sets: each algorithm alone over a few quotas, then mixes.
fn limit_sets() -> Vec<Vec<Limit>> {
    // (limit, period ms, burst): intervals 250 ms, 125 ms, 40 ms, 1 ms, 7.5 ms; then intervals
    // that are not whole microseconds: 333,333.334 µs, 142,857.143 µs, 1.001 µs, 100 ns, 1 ns.
    let quotas = [
        quota(4, 1000, 4),
        quota(8, 1000, 3),
        quota(5, 200, 9),
        quota(1000, 1000, 1000),
        quota(8, 60, 2),
        quota(3, 1000, 3),
        quota(7, 1000, 11),
        quota(999_999, 1000, 999_999),
        quota(10_000_000, 1000, 10_000_000),
        quota(1_000_000_000, 1000, 1_000_000_000),
    ];
    let mut sets = Vec::new();
    for alg in Algorithm::ALL {
        for q in quotas {
            sets.push(vec![Limit::new(q, alg)]);
        }
    }
    let all = Algorithm::ALL;
    for i in 0..all.len() {
        sets.push(vec![
            Limit::new(quotas[0], all[i]),
            Limit::new(quotas[2], all[(i + 1) % all.len()]),
            Limit::new(quotas[4], all[(i + 3) % all.len()]),
        ]);
    }
    sets
}

/// A decision with its durations in whole microseconds (see [`snapshot_micros`]).
fn micros(d: &Decision) -> (bool, usize, Vec<SnapshotMicros>) {
    (d.is_allowed(), d.binding_index(), snapshot_micros(d))
}

#[tokio::test]
async fn lua_twins_decide_exactly_as_the_rust_transitions() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    // Every step compared whole, so every step must reach the script: no deny cache, whose
    // answers keep the waits of the denial they remember (see the next test).
    let (steps, cached) = twins(&server, 0, Compare::Whole).await;
    assert!(steps > 7000);
    assert_eq!(cached, 0);
}

#[tokio::test]
async fn the_deny_cache_denies_exactly_what_the_transitions_deny() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    // The same arrivals (but for the clock's steps back) through the deny cache, asked first
    // as the tower layer asks it: each step must be allowed or denied exactly as the in-memory
    // transitions decide.
    let (steps, cached) = twins(&server, 4096, Compare::Allowed).await;
    assert!(steps > 7000);
    assert!(
        cached > 200,
        "only {cached} answers came from the deny cache"
    );
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Compare {
    /// Every field of every snapshot, in microseconds.
    Whole,
    /// Whether the check is allowed.
    Allowed,
}

/// Runs the random arrivals against `MemoryStore` and `RedisStore` (with a deny cache of
/// `deny_cache` slots) and compares each pair of decisions. Returns the steps run and how many
/// answers the deny cache gave.
async fn twins(server: &RedisServer, deny_cache: usize, compare: Compare) -> (usize, usize) {
    let client = redis::Client::open(server.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let start = Duration::from_secs(1_800_000_000);
    let clock = ManualClock::new(start);
    let redis = RedisStore::builder(Relay::persisting(conn))
        .prefix(format!("twins{deny_cache}"))
        .clock(clock.clone())
        .deny_cache(std::num::NonZeroUsize::new(deny_cache))
        .build()
        .unwrap();
    let memory = MemoryStore::builder().clock(clock.clone()).build();
    // `TWIN_SEED=<n>` replays or explores another sequence.
    let seed = std::env::var("TWIN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15_u64);
    let mut rng = Rng(seed | 1);
    let mut steps = 0;
    let mut cached = 0;
    for (n, limits) in limit_sets().into_iter().enumerate() {
        let key = format!("twin-{n}");
        let max_cost = limits
            .iter()
            .map(|l| l.quota().burst_size().get().max(l.quota().limit().get()))
            .max()
            .unwrap();
        let period = limits[0].quota().period();
        let period_us = u64::try_from(period.as_micros()).unwrap();
        clock.set(start);
        for _ in 0..120 {
            // Mostly small steps (contention), sometimes a long pause, rarely a step back.
            let advance = match rng.below(10) {
                0 => 2 * period_us + rng.below(period_us),
                1 if steps % 7 == 0 => 0,
                _ => rng.below(period_us / 4 + 1),
            };
            clock.advance(Duration::from_micros(advance));
            if rng.below(40) == 0 {
                let back = Duration::from_micros(rng.below(period_us / 2));
                // The deny cache's promise holds for clocks that never go back: a transition
                // that tidies a state on a denial moves the state's clock forward, which a
                // check from the past then finds more lenient than a state left untouched.
                if compare == Compare::Whole {
                    clock.set(clock.now().saturating_sub(back));
                }
            }
            let cost =
                NonZeroU32::new(1 + u32::try_from(rng.below(u64::from(max_cost) + 1)).unwrap())
                    .unwrap();
            let op = rng.below(6);
            let peek = op == 0;
            // A refund of a charge made up to one and a half periods before, in whole
            // microseconds (so that memory's charge time and Redis's are the same tick).
            let refund = (op == 1).then(|| {
                let since = Duration::from_micros(rng.below(period_us + period_us / 2));
                Charge::new(cost).elapsed(since)
            });
            let (m, r) = if let Some(charge) = refund {
                (
                    memory.refund(&key, &limits, charge).await,
                    redis.refund(&key, &limits, charge).await,
                )
            } else if peek {
                (
                    memory.peek(&key, &limits, cost).await,
                    redis.peek(&key, &limits, cost).await,
                )
            } else {
                let r = match redis.try_check_now(&key, &limits, cost) {
                    Some(r) => {
                        cached += 1;
                        r
                    }
                    None => redis.check(&key, &limits, cost).await,
                };
                (memory.check(&key, &limits, cost).await, r)
            };
            let (m, r) = (m.unwrap(), r.unwrap());
            let context = || {
                format!(
                    "{limits:?} at {:?} cost {cost} peek {peek} refund {refund:?}: memory vs redis",
                    clock.now() - start
                )
            };
            match compare {
                Compare::Whole => assert_eq!(micros(&m), micros(&r), "{}", context()),
                Compare::Allowed => {
                    assert_eq!(
                        m.is_allowed(),
                        r.is_allowed(),
                        "{}: {m:?} vs {r:?}",
                        context()
                    );
                }
            }
            steps += 1;
        }
    }
    (steps, cached)
}

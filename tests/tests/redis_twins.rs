//! Differential test: random arrivals against `MemoryStore` and `RedisStore` (client clock)
//! must give identical decisions, for every algorithm alone and for mixed sets of limits.
//!
//! Quotas are chosen so that every emission interval is a whole number of microseconds, and
//! arrivals fall on whole microseconds: then nanosecond ticks (memory) and microsecond ticks
//! (Redis) describe the same arithmetic, and any difference is a bug in a Lua twin. The clock
//! moves by small steps, long pauses and, now and then, a step back.

use std::num::NonZeroU32;
use std::time::Duration;

use integration_tests::{RedisServer, redis_available};
use rate_limit_core::{
    Algorithm, Clock, Decision, Limit, ManualClock, MemoryStore, Quota, RedisStore, Store,
};

/// xorshift64*: a fixed, seeded sequence so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

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
    // (limit, period ms, burst): intervals 250 ms, 125 ms, 40 ms, 1 ms, 7.5 ms.
    let quotas = [
        quota(4, 1000, 4),
        quota(8, 1000, 3),
        quota(5, 200, 9),
        quota(1000, 1000, 1000),
        quota(8, 60, 2),
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

/// allowed, limit, remaining, reset after (µs), retry after (µs).
type SnapshotMicros = (bool, u32, u32, u128, Option<u128>);

/// A decision with its durations in whole microseconds, rounded up: the sliding window counter
/// finds the exact instant a weighted count fits, which in nanosecond ticks may fall inside a
/// microsecond; Redis, counting in microseconds, answers the end of that microsecond.
fn micros(d: &Decision) -> (bool, usize, Vec<SnapshotMicros>) {
    let us = |d: Duration| d.as_nanos().div_ceil(1000);
    let snaps = d
        .snapshots()
        .iter()
        .map(|s| {
            (
                s.allowed(),
                s.limit(),
                s.remaining(),
                us(s.reset_after()),
                s.retry_after().map(us),
            )
        })
        .collect();
    (d.allowed(), d.binding_index(), snaps)
}

#[tokio::test]
async fn lua_twins_decide_exactly_as_the_rust_transitions() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let start = Duration::from_secs(1_800_000_000);
    let clock = ManualClock::new(start);
    let mut persist_conn = conn.clone();
    let redis = RedisStore::builder(conn)
        .clock(clock.clone())
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
                clock.set(
                    clock
                        .now()
                        .saturating_sub(Duration::from_micros(rng.below(period_us / 2))),
                );
            }
            let cost =
                NonZeroU32::new(1 + u32::try_from(rng.below(u64::from(max_cost) + 1)).unwrap())
                    .unwrap();
            let peek = rng.below(6) == 0;
            let (m, r) = if peek {
                (
                    memory.peek(&key, &limits, cost).await,
                    redis.peek(&key, &limits, cost).await,
                )
            } else {
                (
                    memory.check(&key, &limits, cost).await,
                    redis.check(&key, &limits, cost).await,
                )
            };
            let (m, r) = (m.unwrap(), r.unwrap());
            assert_eq!(
                micros(&m),
                micros(&r),
                "{limits:?} at {:?} cost {cost} peek {peek}: memory vs redis",
                clock.now() - start
            );
            // Expiry runs on the server's real time, not on this manual clock: keep every key
            // so that only the transitions are compared (expiry has tests of its own).
            let mut pipe = redis::pipe();
            for l in &limits {
                pipe.cmd("PERSIST").arg(redis.state_key(&key, l)).ignore();
            }
            pipe.query_async::<()>(&mut persist_conn).await.unwrap();
            steps += 1;
        }
    }
    assert!(steps > 4000);
}

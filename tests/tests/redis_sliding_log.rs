//! The sliding window log on Redis with long logs: what a check costs Redis, and that the
//! script's searches decide exactly as the Rust transition, clocks stepping back included.
//!
//! Cost: a denial, a peek and an admission that drops many expired entries must cost about
//! what an admission costs, not time in proportion to the log (200,000 entries here). Redis's
//! own accounting is the measure: `INFO commandstats` gives, per command, the calls and the
//! microseconds spent in them (`FCALL` includes the whole script), and the calls the script
//! made (`GETRANGE`, `SETRANGE`, ...). The bounds are generous ratios between phases of one run on
//! one server, a regression guard against work that grows with the log, not a timing.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::Duration;

use integration_tests::replay::{Rng, snapshot_micros};
use integration_tests::{RedisServer, redis_available};
use rate_limit_core::{
    Algorithm, Clock, Limit, ManualClock, MemoryStore, Quota, RedisStore, Store,
};
use redis::aio::MultiplexedConnection;

const LIMIT: u32 = 200_000;
/// Entries of the prepared logs are this far apart: 200,000 of them span 30 minutes.
const SPACING_US: u64 = 9_000;
const START: Duration = Duration::from_secs(1_800_000_000);
/// Calls per measured phase.
const CALLS: u64 = 200;

fn limit() -> [Limit; 1] {
    [Limit::new(
        Quota::per_hour(NonZeroU32::new(LIMIT).unwrap()),
        Algorithm::SlidingWindowLog,
    )]
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap()
}

/// Writes a log of `n` entries of cost 1, one every [`SPACING_US`] from [`START`], in the
/// script's layout (12-byte entries, a tick as a little-endian double and the running total as a
/// u32, then the trailer: entries, head, head's tick, total before it, head's total, expiry), as
/// `n` admissions would have left.
async fn fill(conn: &mut MultiplexedConnection, key: &str, n: u64) {
    let base = micros(START);
    let mut bytes = Vec::with_capacity(usize::try_from(n).unwrap() * 12 + 28);
    for i in 0..n {
        #[allow(clippy::cast_precision_loss)]
        bytes.extend_from_slice(&((base + i * SPACING_US) as f64).to_le_bytes());
        bytes.extend_from_slice(&u32::try_from(i + 1).unwrap().to_le_bytes());
    }
    bytes.extend_from_slice(&u32::try_from(n).unwrap().to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    #[allow(clippy::cast_precision_loss)]
    bytes.extend_from_slice(&(base as f64).to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(bytes)
        .query_async(conn)
        .await
        .unwrap();
}

/// The entries of the log at `key` from its head on, and all it holds (from its trailer).
async fn entries(conn: &mut MultiplexedConnection, key: &str) -> (u64, u64) {
    let t: Vec<u8> = redis::cmd("GETRANGE")
        .arg(key)
        .arg(-28)
        .arg(-1)
        .query_async(conn)
        .await
        .unwrap();
    if t.is_empty() {
        return (0, 0);
    }
    let m = u64::from(u32::from_le_bytes(t[0..4].try_into().unwrap()));
    let h = u64::from(u32::from_le_bytes(t[4..8].try_into().unwrap()));
    (m - h, m)
}

/// Per command name (`fcall`, `getrange`, ...): calls and microseconds since the last reset.
async fn command_stats(conn: &mut MultiplexedConnection) -> BTreeMap<String, (u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    let mut stats = BTreeMap::new();
    for line in info.lines() {
        let Some((name, fields)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let field = |f: &str| {
            fields
                .split(',')
                .find_map(|kv| kv.strip_prefix(f)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        stats.insert(name.to_owned(), (field("calls"), field("usec")));
    }
    stats
}

async fn reset_stats(conn: &mut MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .unwrap();
}

/// What one phase cost Redis.
#[derive(Debug)]
struct Cost {
    calls: u64,
    /// Microseconds in `FCALL` per call.
    usec_per_call: f64,
    /// Commands the script issued per call (every command but `FCALL` itself).
    commands_per_call: f64,
    /// `GETRANGE` calls in the phase.
    getranges: u64,
}

impl Cost {
    async fn of(conn: &mut MultiplexedConnection) -> Cost {
        let stats = command_stats(conn).await;
        let (calls, usec) = stats.get("fcall").copied().unwrap_or_default();
        let inner: u64 = stats
            .iter()
            .filter(|(name, _)| !matches!(name.as_str(), "fcall" | "info" | "config|resetstat"))
            .map(|(_, (c, _))| c)
            .sum();
        #[allow(clippy::cast_precision_loss)]
        Cost {
            calls,
            usec_per_call: usec as f64 / calls.max(1) as f64,
            commands_per_call: inner as f64 / calls.max(1) as f64,
            getranges: stats.get("getrange").map_or(0, |s| s.0),
        }
    }
}

#[tokio::test]
async fn a_long_log_costs_redis_about_what_an_admission_costs() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // A slow script must be measured, not cut off (the machine may be loaded).
    conn.set_response_timeout(Duration::from_secs(60));
    let clock = ManualClock::new(START);
    // No deny cache: every denial must reach Redis.
    let store = RedisStore::builder(conn.clone())
        .clock(clock.clone())
        .deny_cache(None)
        .build()
        .unwrap();
    let l = limit();
    let one = NonZeroU32::MIN;
    let last = START + Duration::from_micros(u64::from(LIMIT - 1) * SPACING_US);

    // A full log, and one with 1,000 left.
    fill(&mut conn, &store.state_key("full", &l[0]), u64::from(LIMIT)).await;
    fill(
        &mut conn,
        &store.state_key("room", &l[0]),
        u64::from(LIMIT - 1_000),
    )
    .await;
    clock.set(last + Duration::from_secs(1));
    // The script reads the prepared logs as the admissions they stand for: the full one
    // denies until its oldest entry leaves the window. (This also loads the script.)
    let d = store.peek("full", &l, one).await.unwrap();
    assert!(!d.is_allowed());
    assert_eq!(d.remaining(), 0);
    assert_eq!(
        d.retry_after(),
        Some(START + Duration::from_secs(3600) - clock.now())
    );
    let d = store.peek("room", &l, one).await.unwrap();
    assert_eq!((d.is_allowed(), d.remaining()), (true, 1_000));

    reset_stats(&mut conn).await;
    for _ in 0..CALLS {
        clock.advance(Duration::from_millis(1));
        assert!(store.check("room", &l, one).await.unwrap().is_allowed());
    }
    let admitted = Cost::of(&mut conn).await;

    // Denials and peeks of costs spread over 1..=LIMIT: the wait of each is found at a
    // position spread over the whole log.
    let cost = |i: u64| NonZeroU32::new(1 + u32::try_from(i * 7_919 % u64::from(LIMIT)).unwrap());
    reset_stats(&mut conn).await;
    for i in 0..CALLS {
        clock.advance(Duration::from_millis(1));
        let c = cost(i).unwrap();
        let d = store.check("full", &l, c).await.unwrap();
        // The c-th oldest entry must leave the window first.
        let frees = START + Duration::from_micros(u64::from(c.get() - 1) * SPACING_US);
        assert_eq!(
            d.retry_after(),
            Some(frees + Duration::from_secs(3600) - clock.now())
        );
    }
    let denied = Cost::of(&mut conn).await;

    reset_stats(&mut conn).await;
    for i in 0..CALLS {
        let d = store
            .peek("full", &l, cost(i + CALLS).unwrap())
            .await
            .unwrap();
        assert!(!d.is_allowed());
    }
    let peeked = Cost::of(&mut conn).await;

    // Admissions that each drop half a full log: 100,001 entries have left the window.
    let keys: Vec<String> = (0..5).map(|i| format!("old{i}")).collect();
    for k in &keys {
        fill(&mut conn, &store.state_key(k, &l[0]), u64::from(LIMIT)).await;
    }
    clock.set(START + Duration::from_secs(3600 + 900));
    reset_stats(&mut conn).await;
    for k in &keys {
        let d = store.check(k, &l, one).await.unwrap();
        assert_eq!((d.is_allowed(), d.remaining()), (true, 100_000));
    }
    let trimmed = Cost::of(&mut conn).await;
    // 99,999 live entries and the new one; the dead room, larger than them, was dropped.
    let (live, all) = entries(&mut conn, &store.state_key(&keys[0], &l[0])).await;
    assert_eq!((live, all), (99_999 + 1, 99_999 + 1));

    let bytes: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(store.state_key("full", &l[0]))
        .query_async(&mut conn)
        .await
        .unwrap();
    println!(
        "a full log of {LIMIT} entries: {bytes} bytes in Redis ({} per entry)",
        bytes / u64::from(LIMIT)
    );
    for (phase, cost) in [
        ("admitted", &admitted),
        ("denied", &denied),
        ("peeked", &peeked),
        ("admitted, dropping 100,001 expired", &trimmed),
    ] {
        println!(
            "{phase}: {} calls, {:.1} µs each in FCALL, {:.1} commands each, {} GETRANGE",
            cost.calls, cost.usec_per_call, cost.commands_per_call, cost.getranges
        );
    }
    assert_eq!(admitted.calls, CALLS);
    assert_eq!(denied.calls, CALLS);
    assert_eq!(peeked.calls, CALLS);
    assert_eq!(trimmed.calls, 5);
    let mut over = Vec::new();
    // Time in Redis: a generous ratio, on one server in one run. Dropping expired entries is a
    // search, but the room they leave is reclaimed by moving the live part (here 100,000
    // entries, 1.2 MB, which Redis reads into Lua at some nanoseconds a byte) to the start of
    // the string: one copy of the log, the work of the 100,001 admissions that left paid once,
    // a looser bound there (and five calls average out little of a loaded machine's noise).
    for (phase, cost, ratio) in [
        ("denied", &denied, 20.0),
        ("peeked", &peeked, 20.0),
        ("trimmed", &trimmed, 1000.0),
    ] {
        if cost.usec_per_call > ratio * admitted.usec_per_call {
            over.push(format!(
                "a {phase} check cost Redis {:.0} µs, an admission {:.1} µs",
                cost.usec_per_call, admitted.usec_per_call
            ));
        }
        // Work in reads: a handful per check, a few more per doubling of the log.
        if cost.commands_per_call > 60.0 {
            over.push(format!(
                "a {phase} check issued {:.0} commands",
                cost.commands_per_call
            ));
        }
    }
    assert!(over.is_empty(), "{}", over.join("; "));
}

/// Long logs with costs of every size, long pauses and steps back: the script (its searches
/// for the first live entry and for the entry whose expiry frees enough) must decide exactly
/// as the Rust transition, and never hold more than `limit` entries.
#[tokio::test]
async fn long_logs_decide_exactly_as_the_rust_transition() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let clock = ManualClock::new(START);
    let redis = RedisStore::builder(conn.clone())
        .clock(clock.clone())
        .deny_cache(None)
        .build()
        .unwrap();
    let memory = MemoryStore::builder().clock(clock.clone()).build();
    // 2,000 per hour: a log of up to 2,000 entries. (An hour, so that Redis, which expires keys
    // on its own clock, never expires one during the test.)
    let limit = 2_000;
    let l = [Limit::new(
        Quota::per_hour(NonZeroU32::new(limit).unwrap()),
        Algorithm::SlidingWindowLog,
    )];
    let period_us = 3_600_000_000;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut allowed, mut denied, mut back) = (0, 0, 0);
    for step in 0..6_000 {
        // Mostly small steps (a log of many entries), sometimes most of a period (many expire
        // at once), now and then a step back.
        let step_us = match rng.below(100) {
            0..=1 => period_us * 3 / 10 + rng.below(period_us * 7 / 10),
            2 => {
                back += 1;
                clock.set(clock.now() - Duration::from_micros(rng.below(period_us / 20)));
                0
            }
            _ => rng.below(period_us / 2_500),
        };
        clock.advance(Duration::from_micros(step_us));
        // Mostly cost 1, sometimes any cost up to the limit and a little beyond.
        let cost = if rng.below(8) == 0 {
            1 + rng.below(u64::from(limit) + 10)
        } else {
            1
        };
        let cost = NonZeroU32::new(u32::try_from(cost).unwrap()).unwrap();
        let peek = rng.below(10) == 0;
        let (m, r) = if peek {
            (
                memory.peek("k", &l, cost).await,
                redis.peek("k", &l, cost).await,
            )
        } else {
            (
                memory.check("k", &l, cost).await,
                redis.check("k", &l, cost).await,
            )
        };
        let (m, r) = (m.unwrap(), r.unwrap());
        assert_eq!(
            snapshot_micros(&m),
            snapshot_micros(&r),
            "step {step} at {:?}, cost {cost}, peek {peek}: memory vs redis",
            clock.now() - START
        );
        if m.is_allowed() {
            allowed += 1;
        } else {
            denied += 1;
        }
        let (live, all) = entries(&mut conn, &redis.state_key("k", &l[0])).await;
        assert!(live <= u64::from(limit), "step {step}: {live} entries");
        // No log (`entries` reads none): nothing charged is in the window.
        assert!(
            all > 0 || m.remaining() >= limit,
            "step {step}: no log where {} remain",
            m.remaining()
        );
        // Dead room is dropped when an admission finds it larger than the live part.
        assert!(
            all <= 2 * u64::from(limit) + 8,
            "step {step}: {all} entries, {live} live"
        );
    }
    // The sequence reached every path: full logs, denials, steps back.
    assert!(
        allowed > 1_000 && denied > 1_000 && back > 20,
        "{allowed} {denied} {back}"
    );
}

/// A client clock behind the newest entry (two instances 50 ms apart) is counted as at the
/// newest entry: a client with budget left is admitted, on Redis as in memory.
#[tokio::test]
async fn a_clock_step_back_does_not_lock_out_a_client_with_budget_left() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let clock = ManualClock::new(START);
    let redis = RedisStore::builder(conn)
        .clock(clock.clone())
        .deny_cache(None)
        .build()
        .unwrap();
    let memory = MemoryStore::builder().clock(clock.clone()).build();
    let l = [Limit::new(
        Quota::per_minute(NonZeroU32::new(3).unwrap()),
        Algorithm::SlidingWindowLog,
    )];
    let one = NonZeroU32::MIN;
    let ahead = START + Duration::from_millis(50);
    for store in [&redis as &dyn Store, &memory] {
        let backend = store.backend();
        clock.set(ahead);
        assert!(store.check("k", &l, one).await.unwrap().is_allowed());
        clock.set(START);
        for left in [1, 0] {
            let d = store.check("k", &l, one).await.unwrap();
            assert_eq!((d.is_allowed(), d.remaining()), (true, left), "{backend}");
            // Counted as at the newest entry: the log is full again a minute after it.
            assert_eq!(d.reset_after(), Duration::from_secs(60), "{backend}");
        }
        let d = store.check("k", &l, one).await.unwrap();
        assert!(!d.is_allowed(), "{backend}");
        assert_eq!(d.retry_after(), Some(Duration::from_secs(60)), "{backend}");
    }
}

/// Entries leave the window exactly one period after they came, including those found by the
/// script's search (any but the oldest) and the one a denial waits for.
#[tokio::test]
async fn entries_leave_the_window_exactly_one_period_after_they_came() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let clock = ManualClock::new(START);
    let redis = RedisStore::builder(conn)
        .clock(clock.clone())
        .deny_cache(None)
        .build()
        .unwrap();
    let memory = MemoryStore::builder().clock(clock.clone()).build();
    // An hour: Redis expires keys on its own clock, which must not get there during the test.
    let l = [Limit::new(
        Quota::per_hour(NonZeroU32::new(4).unwrap()),
        Algorithm::SlidingWindowLog,
    )];
    let us = Duration::from_micros;
    let period = 3_600_000_000;
    let nz = |n| NonZeroU32::new(n).unwrap();
    for store in [&redis as &dyn Store, &memory] {
        let backend = store.backend();
        for at in [0, 1, 2, 3] {
            clock.set(START + us(at));
            assert!(store.check("k", &l, nz(1)).await.unwrap().is_allowed());
        }
        // At one period and one µs, the entries of 0 and 1 have left, that of 2 has not.
        clock.set(START + us(period + 1));
        let d = store.peek("k", &l, nz(1)).await.unwrap();
        assert_eq!(d.remaining(), 2, "{backend}");
        // Cost 4 waits for the entries of 2 and 3: one period after 3.
        let d = store.check("k", &l, nz(4)).await.unwrap();
        assert_eq!(d.retry_after(), Some(us(2)), "{backend}");
        clock.set(START + us(period + 3));
        assert!(
            store.check("k", &l, nz(4)).await.unwrap().is_allowed(),
            "{backend}"
        );
    }
}

//! The sliding window log's Redis layout: one string of 12-byte entries (a tick as a
//! little-endian double, the running total modulo 2^32 as a u32), then a 28-byte trailer (the
//! number of entries, the head's index, the head's tick, the total before the head, the head's
//! total, the expiry second). Its edges, against the in-memory transition: the window rolling,
//! costs above 1, refunds (which rewrite entries in place), a full log, the key's expiry, the
//! conversion of an earlier version's list, and the bound on a key's size under checks and
//! refunds that a hostile client could drive.

use std::num::NonZeroU32;
use std::time::Duration;

use integration_tests::replay::{Rng, snapshot_micros};
use integration_tests::{RedisServer, redis_available};
use rate_limit_core::{
    Algorithm, Charge, Clock, Limit, ManualClock, MemoryStore, Quota, RedisStore, Store,
};
use redis::aio::MultiplexedConnection;

const START: Duration = Duration::from_secs(1_800_000_000);

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn log_limit(limit: u32, period: Duration) -> [Limit; 1] {
    [Limit::new(
        Quota::with_period(nz(limit), period).unwrap(),
        Algorithm::SlidingWindowLog,
    )]
}

/// A log's string, decoded.
#[derive(Debug)]
struct Layout {
    /// (tick, running total) of every entry, dead ones included.
    entries: Vec<(u64, u32)>,
    head: usize,
    head_tick: u64,
    base: u32,
    head_total: u32,
    expiry: u32,
}

impl Layout {
    /// The live part: (tick, cost) from the head on.
    fn live(&self) -> Vec<(u64, u32)> {
        let mut before = self.base;
        self.entries[self.head..]
            .iter()
            .map(|&(t, total)| {
                let c = total.wrapping_sub(before);
                before = total;
                (t, c)
            })
            .collect()
    }
}

fn f64_at(b: &[u8], at: usize) -> u64 {
    let v = f64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    assert!(v >= 0.0 && v.fract() == 0.0, "{v}");
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let v = v as u64;
    v
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Reads the log at `key` (None if there is no key), checking the trailer against the entries.
async fn layout(conn: &mut MultiplexedConnection, key: &str) -> Option<Layout> {
    let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(conn).await.unwrap();
    let b = bytes?;
    assert!(
        b.len() >= 40 && (b.len() - 28) % 12 == 0,
        "{} bytes",
        b.len()
    );
    let n = (b.len() - 28) / 12;
    let entries: Vec<(u64, u32)> = (0..n)
        .map(|i| (f64_at(&b, 12 * i), u32_at(&b, 12 * i + 8)))
        .collect();
    let t = 12 * n;
    let layout = Layout {
        head: usize::try_from(u32_at(&b, t + 4)).unwrap(),
        head_tick: f64_at(&b, t + 8),
        base: u32_at(&b, t + 16),
        head_total: u32_at(&b, t + 20),
        expiry: u32_at(&b, t + 24),
        entries,
    };
    assert_eq!(usize::try_from(u32_at(&b, t)).unwrap(), n);
    assert!(layout.head < n);
    assert_eq!(
        layout.entries[layout.head],
        (layout.head_tick, layout.head_total)
    );
    // Ticks never go down; running totals never go down from the base.
    let live = layout.live();
    for w in live.windows(2) {
        assert!(w[0].0 <= w[1].0, "{layout:?}");
    }
    let used: u64 = live.iter().map(|&(_, c)| u64::from(c)).sum();
    assert!(used < 1 << 32, "{layout:?}");
    Some(layout)
}

fn store(conn: MultiplexedConnection, clock: &ManualClock) -> RedisStore<MultiplexedConnection> {
    RedisStore::builder(conn)
        .clock(clock.clone())
        .deny_cache(None)
        .build()
        .unwrap()
}

async fn connect(server: &RedisServer) -> MultiplexedConnection {
    let client = redis::Client::open(server.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// Random checks, peeks and refunds on one log, on Redis and in memory: every decision the
/// same, and the string always well formed, its live part within twice the limit (refunds leave
/// zero-cost copies until an admission compacts them) and its dead room bounded.
#[tokio::test]
async fn random_checks_peeks_and_refunds_decide_as_memory() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let mut conn = connect(&server).await;
    let clock = ManualClock::new(START);
    let redis = store(conn.clone(), &clock);
    let memory = MemoryStore::builder().clock(clock.clone()).build();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut history = Vec::new();
    for (limit, period_ms) in [(8, 60), (20, 1000), (3, 50), (100, 1000)] {
        let l = log_limit(limit, Duration::from_millis(period_ms));
        let key = format!("k{limit}");
        let period_us = period_ms * 1000;
        for step in 0..1500 {
            let advance = match rng.below(12) {
                0 => period_us + rng.below(period_us),
                1 | 2 => 0,
                _ => rng.below(period_us / 8 + 1),
            };
            clock.advance(Duration::from_micros(advance));
            if rng.below(40) == 0 {
                clock.set(clock.now() - Duration::from_micros(rng.below(period_us / 3)));
            }
            let cost = nz(1 + u32::try_from(rng.below(u64::from(limit) + 1) / 2).unwrap());
            let op = rng.below(5);
            let (m, r) = match op {
                0 => (
                    memory.peek(&key, &l, cost).await,
                    redis.peek(&key, &l, cost).await,
                ),
                1 | 2 => {
                    let since = Duration::from_micros(rng.below(period_us + period_us / 4));
                    let charge = Charge::new(cost).elapsed(since);
                    (
                        memory.refund(&key, &l, charge).await,
                        redis.refund(&key, &l, charge).await,
                    )
                }
                _ => (
                    memory.check(&key, &l, cost).await,
                    redis.check(&key, &l, cost).await,
                ),
            };
            let (m, r) = (m.unwrap(), r.unwrap());
            history.push(format!(
                "{step}: at {:?} op {op} cost {cost}: {:?}",
                clock.now() - START,
                snapshot_micros(&m)
            ));
            let layout = layout(&mut conn, &redis.state_key(&key, &l[0])).await;
            assert_eq!(
                snapshot_micros(&m),
                snapshot_micros(&r),
                "limit {limit} step {step}: memory vs redis; {layout:?}\n{}",
                history[history.len().saturating_sub(12)..].join("\n")
            );
            match layout {
                Some(layout) => {
                    let n = layout.entries.len();
                    let live = n - layout.head;
                    let cap = 2 * limit as usize + 1;
                    assert!(live <= cap, "step {step}: {live} live entries: {layout:?}");
                    assert!(n <= 2 * cap + 8, "step {step}: {n} entries: {layout:?}");
                }
                // No log: nothing charged is in the window.
                None => assert!(
                    m.remaining() >= limit,
                    "step {step}: no log where {} remain of {limit}",
                    m.remaining()
                ),
            }
        }
    }
}

/// Costs above 1 on a full log: a denial waits for the oldest entries that together free
/// enough, and the window rolls entry by entry, exactly one period after each came.
#[tokio::test]
async fn costs_above_one_wait_for_enough_to_leave_and_the_window_rolls() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let clock = ManualClock::new(START);
    let redis = store(connect(&server).await, &clock);
    let memory = MemoryStore::builder().clock(clock.clone()).build();
    let l = log_limit(10, Duration::from_secs(3600));
    let us = Duration::from_micros;
    let hour = Duration::from_secs(3600);
    for store in [&redis as &dyn Store, &memory] {
        let backend = store.backend();
        for (at, cost) in [(0, 3), (10, 2), (20, 5)] {
            clock.set(START + us(at));
            assert!(
                store.check("k", &l, nz(cost)).await.unwrap().is_allowed(),
                "{backend}"
            );
        }
        // Full: cost 4 waits for the entries of 0 and 10 (3 + 2), cost 6 for that of 20 too.
        clock.set(START + us(30));
        let d = store.check("k", &l, nz(4)).await.unwrap();
        assert_eq!(d.retry_after(), Some(hour + us(10) - us(30)), "{backend}");
        assert_eq!(d.reset_after(), hour + us(20) - us(30), "{backend}");
        let d = store.check("k", &l, nz(6)).await.unwrap();
        assert_eq!(d.retry_after(), Some(hour + us(20) - us(30)), "{backend}");
        // Above the capacity: never.
        let d = store.check("k", &l, nz(11)).await.unwrap();
        assert_eq!(d.retry_after(), None, "{backend}");
        // The window rolls: at one period after 0, its 3 have left; after 10, 2 more.
        for (at, remaining) in [
            (3_600_000_000 - 1, 0),
            (3_600_000_000, 3),
            (3_600_000_010, 5),
        ] {
            clock.set(START + us(at));
            let d = store.peek("k", &l, nz(1)).await.unwrap();
            assert_eq!(d.remaining(), remaining, "{backend} at {at}");
        }
        // Everything has left one period after the newest: the key is gone.
        clock.set(START + us(3_600_000_020));
        let d = store.peek("k", &l, nz(1)).await.unwrap();
        assert_eq!(
            (d.remaining(), d.reset_after()),
            (10, Duration::ZERO),
            "{backend}"
        );
    }
    assert_eq!(server.cli(&["EXISTS", &redis.state_key("k", &l[0])]), "0");
}

/// On the server's clock the key expires when its newest entry leaves the window, rounded up to
/// the second; an admission within that second sets no new expiry. On a client's clock, the
/// key lives one period from each admission.
#[tokio::test]
async fn the_log_key_expires_when_its_newest_entry_leaves() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let conn = connect(&server).await;
    let on_server = RedisStore::builder(conn.clone())
        .deny_cache(None)
        .build()
        .unwrap();
    let l = log_limit(100, Duration::from_millis(300));
    let key = on_server.state_key("s", &l[0]);
    assert!(on_server.check("s", &l, nz(1)).await.unwrap().is_allowed());
    let pttl: i64 = server.cli(&["PTTL", &key]).parse().unwrap();
    assert!((300..=1300).contains(&pttl), "{pttl}");
    // The trailer records the expiry second it set.
    let layout = layout(&mut conn.clone(), &key).await.unwrap();
    let expires_at: u64 = server.cli(&["EXPIRETIME", &key]).parse().unwrap();
    assert_eq!(u64::from(layout.expiry), expires_at);
    // An expiry is set by `EXPIREAT`, or by a `SET` that rewrites the log.
    let expiries = || server.calls("expireat") + server.calls("set");
    let expires = expiries();
    for _ in 0..3 {
        assert!(on_server.check("s", &l, nz(1)).await.unwrap().is_allowed());
    }
    // At most one more expiry: the second may have turned.
    assert!(expiries() <= expires + 1);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(server.cli(&["EXISTS", &key]), "0");

    let clock = ManualClock::new(START);
    let on_client = store(conn, &clock);
    let l = log_limit(100, Duration::from_secs(60));
    let key = on_client.state_key("c", &l[0]);
    assert!(on_client.check("c", &l, nz(1)).await.unwrap().is_allowed());
    let pttl: i64 = server.cli(&["PTTL", &key]).parse().unwrap();
    assert!((59_000..=60_000).contains(&pttl), "{pttl}");
}

/// A log an earlier version left (a list of `tick:cost:total`) is read as the admissions it
/// holds, then kept in the new layout with its expiry.
#[tokio::test]
async fn an_earlier_versions_list_is_converted() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let mut conn = connect(&server).await;
    let clock = ManualClock::new(START);
    let redis = store(conn.clone(), &clock);
    let memory = MemoryStore::builder().clock(clock.clone()).build();
    let l = log_limit(10, Duration::from_secs(60));
    let key = redis.state_key("k", &l[0]);
    let base = u64::try_from(START.as_micros()).unwrap();
    // Running totals modulo 2^32, wrapping here: 3 at 0, 2 at 100, 4 at 200.
    let entries = [
        format!("{base}:3:4294967295"),
        format!("{}:2:1", base + 100),
        format!("{}:4:5", base + 200),
    ];
    server.cli(&["RPUSH", &key, &entries[0], &entries[1], &entries[2]]);
    server.cli(&["PEXPIRE", &key, "50000"]);
    for (at, cost) in [(0, 3), (100, 2), (200, 4)] {
        clock.set(START + Duration::from_micros(at));
        assert!(memory.check("k", &l, nz(cost)).await.unwrap().is_allowed());
    }
    clock.set(START + Duration::from_micros(300));
    for cost in [1, 2] {
        let (m, r) = (
            memory.check("k", &l, nz(cost)).await.unwrap(),
            redis.check("k", &l, nz(cost)).await.unwrap(),
        );
        assert_eq!(snapshot_micros(&m), snapshot_micros(&r));
    }
    assert_eq!(server.cli(&["TYPE", &key]), "string");
    let pttl: i64 = server.cli(&["PTTL", &key]).parse().unwrap();
    assert!(pttl > 40_000, "{pttl}");
    let layout = layout(&mut conn, &key).await.unwrap();
    assert_eq!(
        layout.live(),
        [(base, 3), (base + 100, 2), (base + 200, 4), (base + 300, 1)]
    );
}

/// A client admitted and refunded over and over inside one window (each refund leaves a
/// zero-cost copy where its entry was) never grows the key beyond a few times its limit, and
/// is decided as memory decides.
#[tokio::test]
async fn admissions_and_refunds_in_a_loop_keep_the_key_bounded() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let mut conn = connect(&server).await;
    let clock = ManualClock::new(START);
    let redis = store(conn.clone(), &clock);
    let memory = MemoryStore::builder().clock(clock.clone()).build();
    let limit = 6;
    let l = log_limit(limit, Duration::from_secs(3600));
    let key = redis.state_key("k", &l[0]);
    // Two entries stay, so that the refunds' copies land after them.
    for store in [&redis as &dyn Store, &memory] {
        assert!(store.check("k", &l, nz(2)).await.unwrap().is_allowed());
    }
    clock.advance(Duration::from_micros(1));
    for store in [&redis as &dyn Store, &memory] {
        assert!(store.check("k", &l, nz(1)).await.unwrap().is_allowed());
    }
    let mut most = 0;
    for i in 0..2_000 {
        clock.advance(Duration::from_micros(7));
        let cost = nz(1 + i % 3);
        let since = Duration::from_micros(u64::from(i % 4) * 7);
        for store in [&redis as &dyn Store, &memory] {
            store.check("k", &l, cost).await.unwrap();
        }
        let (m, r) = (
            memory
                .refund("k", &l, Charge::new(cost).elapsed(since))
                .await,
            redis
                .refund("k", &l, Charge::new(cost).elapsed(since))
                .await,
        );
        assert_eq!(
            snapshot_micros(&m.unwrap()),
            snapshot_micros(&r.unwrap()),
            "step {i}"
        );
        let layout = layout(&mut conn, &key).await.unwrap();
        most = most.max(layout.entries.len());
    }
    let bound = 4 * limit as usize + 9;
    assert!(most <= bound, "{most} entries, more than {bound}");
}

/// Each refund of the newest admission, behind an entry that stays, leaves a zero-cost copy in
/// its place: once the live part holds more than twice the limit, the next admission rewrites
/// it without them, so the key stays within a few times its limit however long this goes on.
#[tokio::test]
async fn zero_cost_copies_are_dropped_once_they_pass_twice_the_limit() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let mut conn = connect(&server).await;
    let clock = ManualClock::new(START);
    let redis = store(conn.clone(), &clock);
    let memory = MemoryStore::builder().clock(clock.clone()).build();
    let limit = 3;
    let l = log_limit(limit, Duration::from_secs(3600));
    let key = redis.state_key("k", &l[0]);
    for store in [&redis as &dyn Store, &memory] {
        assert!(store.check("k", &l, nz(1)).await.unwrap().is_allowed());
    }
    let mut most = 0;
    for i in 0..40 {
        clock.advance(Duration::from_micros(1));
        for store in [&redis as &dyn Store, &memory] {
            assert!(store.check("k", &l, nz(1)).await.unwrap().is_allowed());
        }
        let (m, r) = (
            memory.refund("k", &l, Charge::new(nz(1))).await.unwrap(),
            redis.refund("k", &l, Charge::new(nz(1))).await.unwrap(),
        );
        assert_eq!(snapshot_micros(&m), snapshot_micros(&r), "step {i}");
        assert_eq!(r.remaining(), 2, "step {i}");
        let layout = layout(&mut conn, &key).await.unwrap();
        // The entry of 0, then copies of it.
        assert!(layout.live().iter().all(|&(t, _)| t == layout.head_tick));
        most = most.max(layout.entries.len());
    }
    // Without the rewrite, 41 entries.
    assert!(most <= 2 * limit as usize + 1, "{most} entries");
}

/// A refund of a charge made long before, with hundreds of entries logged since (more than one
/// read of the last entries holds), finds the charge time by a search and rewrites them all.
#[tokio::test]
async fn a_refund_behind_hundreds_of_entries_rewrites_them_all() {
    if !redis_available() {
        return;
    }
    let server = RedisServer::start();
    let mut conn = connect(&server).await;
    let clock = ManualClock::new(START);
    let redis = store(conn.clone(), &clock);
    let memory = MemoryStore::builder().clock(clock.clone()).build();
    let l = log_limit(2_000, Duration::from_secs(3600));
    for i in 0..700u32 {
        clock.set(START + Duration::from_micros(u64::from(i) * 10));
        for store in [&redis as &dyn Store, &memory] {
            let cost = nz(1 + i % 2);
            assert!(store.check("k", &l, cost).await.unwrap().is_allowed());
        }
    }
    // Charges made at 95 µs (between entries), 2,000 µs and 0: 900 units from each time on.
    for (since, cost) in [(6_995 - 95, 900), (6_990 - 2_000, 900), (6_990, 50)] {
        let charge = Charge::new(nz(cost)).elapsed(Duration::from_micros(since));
        let (m, r) = (
            memory.refund("k", &l, charge).await.unwrap(),
            redis.refund("k", &l, charge).await.unwrap(),
        );
        assert_eq!(snapshot_micros(&m), snapshot_micros(&r), "since {since}");
        // (The last refund empties the log: its key goes.)
        let layout = layout(&mut conn, &redis.state_key("k", &l[0])).await;
        let used: u32 = layout.map_or(0, |l| l.live().iter().map(|&(_, c)| c).sum());
        assert_eq!(2_000 - used, m.remaining(), "since {since}");
    }
}

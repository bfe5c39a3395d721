//! `RedisStore` over Redis Sentinel, failed over under load: a master, its replica and three
//! sentinels started by the test; two limiter instances (timeout, breaker, local fallback)
//! check keys through a [`SentinelConnection`] while the test kills the master (`SIGKILL`).
#![allow(clippy::disallowed_methods)] // wall-clock latency of each call is what is measured

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::failover::{Rec, check_until_stopped, nz};
use integration_tests::{MASTER_NAME, RedisSentinels, redis_available};
use rate_limit_core::resilience::{CircuitBreaker, DecidedBy, Fallback, Timeout};
use rate_limit_core::{
    Algorithm, Limit, MemoryStore, Quota, RedisStore, SentinelConnection, Store,
};
use redis::sentinel::SentinelNodeConnectionInfo;

type Stack = Fallback<CircuitBreaker<Timeout<RedisStore<SentinelConnection>>>, MemoryStore>;

const KEYS: usize = 8;
const QUOTA: u32 = 40;
const INSTANCES: u32 = 2;
const TASKS: usize = 4;
/// Each call's budget (the `Timeout`).
const BUDGET: Duration = Duration::from_millis(100);

fn limits() -> [Limit; 1] {
    [Limit::new(
        Quota::per_hour(nz(QUOTA)),
        Algorithm::TokenBucket,
    )]
}

fn sentinel_store(set: &RedisSentinels) -> RedisStore<SentinelConnection> {
    let urls = set.sentinel_urls();
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let conn = SentinelConnection::open(&urls, MASTER_NAME, SentinelNodeConnectionInfo::default())
        .unwrap();
    // No deny cache: every check goes to Redis, so the failover is seen by every check.
    RedisStore::builder(conn)
        .backend("sentinel")
        .deny_cache(None)
        .build()
        .unwrap()
}

fn stack(set: &RedisSentinels) -> Stack {
    let breaker = CircuitBreaker::new(Timeout::new(sentinel_store(set), BUDGET))
        .failure_threshold(nz(3))
        .cool_down(Duration::from_millis(100))
        .max_cool_down(Duration::from_millis(400));
    Fallback::new(breaker, MemoryStore::new(), nz(INSTANCES))
}

#[derive(Default)]
struct Progress {
    /// Keys Redis has denied at least once.
    denied: Mutex<[bool; KEYS]>,
    /// Redis decisions per instance after the kill.
    after_kill: [AtomicU64; 2],
    stop: AtomicBool,
    killed_at: Mutex<Option<Duration>>,
}

async fn load(
    stack: Arc<Stack>,
    instance: usize,
    task: usize,
    t0: Instant,
    progress: Arc<Progress>,
) -> Vec<Rec> {
    let keys: Vec<String> = (0..KEYS).map(|k| format!("sentinel-{k}")).collect();
    let mut i = task;
    let next = || {
        i += 1;
        (i - 1) % KEYS
    };
    let seen = |r: &Rec| {
        if let Some((DecidedBy::Primary, allowed)) = r.outcome {
            if !allowed {
                progress.denied.lock().unwrap()[r.key] = true;
            }
            let killed = *progress.killed_at.lock().unwrap();
            if killed.is_some_and(|k| r.started > k) {
                progress.after_kill[instance].fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    check_until_stopped(
        &stack,
        instance,
        &keys,
        &limits(),
        t0,
        &progress.stop,
        next,
        seen,
    )
    .await
}

fn replication_offset(info: &str, field: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two instances keep checking while the master is killed: every check is decided (locally
/// during the failover), decisions come back to Redis on the promoted replica, and the
/// admissions above the quota stay within the local shares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_under_load_decides_every_check() {
    if !redis_available() {
        return;
    }
    let mut set = RedisSentinels::start();
    let stacks: Vec<Arc<Stack>> = (0..INSTANCES).map(|_| Arc::new(stack(&set))).collect();
    let progress = Arc::new(Progress::default());
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for (instance, s) in stacks.iter().enumerate() {
        for task in 0..TASKS {
            let (s, p) = (Arc::clone(s), Arc::clone(&progress));
            handles.push(tokio::spawn(load(s, instance, task, t0, p)));
        }
    }

    // Spend every key's budget on Redis, and let the replica catch up with those charges, so
    // that what follows the kill is the failover's doing alone (not writes it lost).
    wait_for("Redis to deny every key", Duration::from_secs(10), || {
        progress.denied.lock().unwrap().iter().all(|d| *d)
    })
    .await;
    let master_offset = replication_offset(
        &set.server(0).cli(&["INFO", "replication"]),
        "master_repl_offset",
    )
    .unwrap();
    wait_for("the replica to catch up", Duration::from_secs(5), || {
        let info = set.server(1).cli(&["INFO", "replication"]);
        replication_offset(&info, "slave_repl_offset").is_some_and(|o| o >= master_offset)
    })
    .await;

    set.server_mut(0).kill9();
    let killed_at = t0.elapsed();
    *progress.killed_at.lock().unwrap() = Some(killed_at);

    wait_for(
        "both instances to decide on Redis again",
        Duration::from_secs(20),
        || {
            progress
                .after_kill
                .iter()
                .all(|n| n.load(Ordering::Relaxed) >= 20)
        },
    )
    .await;
    progress.stop.store(true, Ordering::Relaxed);
    let mut recs = Vec::new();
    for h in handles {
        recs.extend(h.await.unwrap());
    }
    let ended = t0.elapsed();
    assert!(
        set.wait_for_master(1, Duration::from_secs(5)),
        "the sentinels did not promote the replica"
    );

    // The figures.
    let failed = recs.iter().filter(|r| r.outcome.is_none()).count();
    let slowest = recs.iter().map(|r| r.latency).max().unwrap();
    let back_on_redis: Vec<Duration> = (0..INSTANCES as usize)
        .map(|i| {
            let last_local = recs
                .iter()
                .filter(|r| r.instance == i)
                .filter(|r| matches!(r.outcome, Some((DecidedBy::Local, _))))
                .map(|r| r.started + r.latency)
                .max()
                .unwrap_or(killed_at);
            last_local.saturating_sub(killed_at)
        })
        .collect();
    let local = recs
        .iter()
        .filter(|r| matches!(r.outcome, Some((DecidedBy::Local, _))))
        .count();
    let mut admitted: HashMap<usize, u32> = HashMap::new();
    let mut local_admitted: HashMap<(usize, usize), u32> = HashMap::new();
    for r in &recs {
        if let Some((by, true)) = r.outcome {
            *admitted.entry(r.key).or_default() += 1;
            if by == DecidedBy::Local {
                *local_admitted.entry((r.instance, r.key)).or_default() += 1;
            }
        }
    }
    let above = admitted
        .values()
        .map(|&n| n.saturating_sub(QUOTA))
        .max()
        .unwrap();
    // A token bucket of `QUOTA` per hour refills `QUOTA × d / 1 h` during the `d` the test
    // ran: on Redis, and in each instance's share of it.
    let refill = (f64::from(QUOTA) * ended.as_secs_f64() / 3600.0).ceil() as u32;
    let share = QUOTA / INSTANCES;
    let bound = INSTANCES * share + 2 * refill;
    println!(
        "sentinel failover: {} checks, {failed} failed, {local} decided locally; back on Redis \
         {:?} after the kill (per instance, to the last local decision); slowest check {:?}; \
         admissions above the quota of {QUOTA} per key: at most {above} (bound: {INSTANCES} \
         shares of {share}, plus {refill} refill twice = {bound}); {:?} connections made per \
         instance",
        recs.len(),
        back_on_redis,
        slowest,
        stacks
            .iter()
            .map(|s| s
                .primary()
                .get_ref()
                .get_ref()
                .connection()
                .connections_made())
            .collect::<Vec<_>>(),
    );

    assert_eq!(failed, 0, "checks failed in local mode");
    assert!(
        local > 0,
        "no check was decided locally: the failover went unseen"
    );
    for (&(instance, key), &n) in &local_admitted {
        assert!(
            n <= share + refill,
            "instance {instance} admitted {n} of key {key} locally, above its share {share}"
        );
    }
    assert!(
        above <= bound,
        "a key got {above} above its quota, more than the local shares allow ({bound})"
    );
    assert!(
        slowest <= 2 * BUDGET + Duration::from_millis(400),
        "a check took {slowest:?}, beyond its budget of {BUDGET:?}"
    );
    for s in &stacks {
        let conn = s.primary().get_ref().get_ref().connection();
        assert!(
            conn.connections_made() >= 2,
            "the instance never connected to the promoted replica"
        );
    }
    // The promoted replica holds the keys' state: decisions after the failover were its own.
    let promoted = set.server(1);
    let key = RedisStore::key_layout("rl", "sentinel-0", &limits()[0]);
    assert_eq!(promoted.cli(&["EXISTS", &key]), "1");
}

/// A failover with the old master alive (`SENTINEL FAILOVER`): the old master is demoted to a
/// replica, and the store moves to the new master rather than keep sending to the replica
/// (whose answer would be `READONLY`, every check failing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_manual_failover_moves_the_store_off_the_demoted_master() {
    if !redis_available() {
        return;
    }
    let set = RedisSentinels::start();
    let store = sentinel_store(&set);
    let key = "moved";
    let state = RedisStore::key_layout("rl", key, &limits()[0]);
    assert!(
        store
            .check(key, &limits(), nz(1))
            .await
            .unwrap()
            .is_allowed()
    );
    assert_eq!(set.server(0).cli(&["EXISTS", &state]), "1");

    let answer = set.sentinel_cli(0, &["SENTINEL", "FAILOVER", MASTER_NAME]);
    assert_eq!(answer, "OK");
    assert!(
        set.wait_for_master(1, Duration::from_secs(15)),
        "the sentinels did not promote the replica"
    );
    // The old master is demoted once the sentinels reconfigure it.
    wait_for(
        "the old master to become a replica",
        Duration::from_secs(15),
        || set.server(0).cli(&["ROLE"]).lines().next().map(str::trim) == Some("slave"),
    )
    .await;

    // Calls in flight at the switch may fail; the store then reaches the new master.
    let mut failed = 0;
    let remaining = loop {
        match store.check(key, &limits(), nz(1)).await {
            Ok(d) => break d.remaining(),
            Err(e) => {
                failed += 1;
                assert!(failed <= 5, "the store did not move to the new master: {e}");
            }
        }
    };
    println!("manual failover: {failed} checks failed before the store moved");
    // Both charges are on the new master (the first one replicated to it).
    assert_eq!(remaining, QUOTA - 2);
    assert!(store.connection().connections_made() >= 2);
}

//! Redis Cluster with replicas, one master hung (`SIGSTOP`) under load: its replica is
//! promoted, and the store must find it, without holding up the other masters' keys; then the
//! hung master resumes (`SIGCONT`) and rejoins as a replica.
//!
//! A hung master is not a dead one: its sockets stay open and nothing answers, so a call to it
//! fails by timing out, and a timeout tells the `redis` crate's cluster connection nothing (it
//! refreshes its slot map on `MOVED` or a lost connection, not on a timeout).
#![allow(clippy::disallowed_methods)] // wall-clock latency of each call is what is measured

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use integration_tests::{RedisCluster, redis_available};
use rate_limit_core::resilience::{DecidedBy, Fallback, Timeout};
use rate_limit_core::{
    Algorithm, Limit, MemoryStore, Quota, RebuildingClusterConnection, RedisStore, Store,
};

/// No breaker: one breaker for the whole cluster would send the keys of every master to the
/// fallback when one master hangs (see `redis_cluster_failover.rs`).
type Stack = Fallback<Timeout<RedisStore<RebuildingClusterConnection>>, MemoryStore>;

const QUOTA: u32 = 100_000;
const BUDGET: Duration = Duration::from_millis(100);
const TASKS: usize = 4;

/// How soon after the promotion is visible (a healthy master's `CLUSTER NODES` names the
/// replica a master) the hung master's keys must be decided by Redis again. The store
/// (`RebuildingClusterConnection`) builds a new cluster connection, beside the one in use, when
/// the hung master's slot fails a probe; one such rebuild may have read the slot map just
/// before the promotion, and fails within 1.5 s (500 ms for the hung seed node's handshake to
/// time out, 500 ms for a connection to the hung master its map still names, then a probe,
/// answered `MOVED` at once by the replica); the next starts when it ends (at least 1 s after
/// it started, and a check of the slot gives up every 100 ms) and succeeds in about 0.6 s (the
/// hung seed's handshake, then the slot map naming the promoted replica), and 200 ms later the
/// calls still stuck on the hung node fail and free its slots' lanes: about 2.4 s at worst,
/// with 1.6 s of slack for a loaded 2-core host and a node that learns of the promotion late.
const RECOVERY_BOUND: Duration = Duration::from_secs(4);

/// The longest the healthy masters' keys may go without a Redis decision: nothing on their
/// path waits on the hung node (its calls wait in its own slots' lanes, and a new connection
/// is built beside the one in use).
const HEALTHY_GAP: Duration = Duration::from_millis(500);

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// A log: Redis holds one entry per admission, so what it charged is counted exactly.
fn limits() -> [Limit; 1] {
    [Limit::new(
        Quota::per_hour(nz(QUOTA)),
        Algorithm::SlidingWindowLog,
    )]
}

#[derive(Clone, Copy)]
struct Rec {
    instance: usize,
    key: usize,
    started: Duration,
    latency: Duration,
    outcome: Option<(DecidedBy, bool)>,
}

struct Progress {
    stop: AtomicBool,
    /// Milliseconds from the start to the promotion (0 before it).
    promoted_at_ms: AtomicU64,
    /// Redis decisions of keys on the hung master, of checks started after the promotion.
    back: AtomicU64,
}

async fn load(
    stack: Arc<Stack>,
    instance: usize,
    task: usize,
    keys: Arc<Vec<(String, bool)>>,
    t0: Instant,
    progress: Arc<Progress>,
) -> Vec<Rec> {
    let mut recs = Vec::new();
    // Even tasks check the hung master's keys, odd ones the others': a check of the hung
    // master's keys waits out its 100 ms budget, and a task doing both would space the
    // others' checks by that much.
    let mine: Vec<usize> = (0..keys.len())
        .filter(|&k| keys[k].1 == task.is_multiple_of(2))
        .collect();
    let mut i = task / 2;
    while !progress.stop.load(Ordering::Relaxed) {
        let key = mine[i % mine.len()];
        i += 1;
        let started = t0.elapsed();
        let got = stack.check_traced(&keys[key].0, &limits(), nz(1)).await;
        let latency = t0.elapsed() - started;
        let outcome = got.ok().map(|(d, by)| (by, d.is_allowed()));
        let promoted = progress.promoted_at_ms.load(Ordering::Relaxed);
        if keys[key].1
            && promoted > 0
            && started.as_millis() as u64 > promoted
            && matches!(outcome, Some((DecidedBy::Primary, _)))
        {
            progress.back.fetch_add(1, Ordering::Relaxed);
        }
        recs.push(Rec {
            instance,
            key,
            started,
            latency,
            outcome,
        });
        tokio::task::yield_now().await;
    }
    recs
}

/// The longest stretch, per instance, with no Redis decision of the keys `on_hung` selects,
/// from `from` on: its length and when it began.
fn longest_gap(
    recs: &[Rec],
    keys: &[(String, bool)],
    on_hung: bool,
    from: Duration,
) -> (Duration, Duration) {
    let mut longest = (Duration::ZERO, Duration::ZERO);
    for i in 0..2 {
        let mut ends: Vec<Duration> = recs
            .iter()
            .filter(|r| r.instance == i && keys[r.key].1 == on_hung && r.started >= from)
            .filter(|r| matches!(r.outcome, Some((DecidedBy::Primary, _))))
            .map(|r| r.started + r.latency)
            .collect();
        ends.sort();
        for w in ends.windows(2) {
            longest = longest.max((w[1] - w[0], w[0]));
        }
    }
    longest
}

fn percentile(recs: &[Rec], p: f64) -> Duration {
    let mut l: Vec<Duration> = recs.iter().map(|r| r.latency).collect();
    l.sort();
    l[((l.len() - 1) as f64 * p) as usize]
}

/// Whether node `by` names node `id` a master in its `CLUSTER NODES`.
fn names_master(cluster: &RedisCluster, by: usize, id: &str) -> bool {
    cluster.nodes()[by]
        .cli(&["CLUSTER", "NODES"])
        .lines()
        .filter(|l| l.starts_with(id))
        .any(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|flags| flags.split(',').any(|f| f == "master"))
        })
}

/// Hangs one master under load: its replica is promoted, and its keys come back to Redis
/// within [`RECOVERY_BOUND`] of the promotion while the other masters' keys never go
/// [`HEALTHY_GAP`] without a Redis decision; then it resumes, rejoins as a replica, and
/// nothing breaks. No check fails (the fallback decides) and none is charged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_master_is_replaced_by_its_replica_under_load() {
    if !redis_available() {
        return;
    }
    let mut cluster = RedisCluster::start_with_replicas(Duration::from_millis(1000));
    // Only the hung master's slots go down while it has no replacement.
    cluster.config_set("cluster-require-full-coverage", "no");
    let masters = cluster.masters();
    let victim = *masters.iter().find(|&&m| m != 0).unwrap();
    let witness = *masters.iter().find(|&&m| m != victim).unwrap();
    let replica = (0..cluster.nodes().len())
        .find(|&i| cluster.master_of(i) == Some(victim))
        .unwrap();
    let replica_id = cluster.nodes()[replica].cli(&["CLUSTER", "MYID"]);
    // Four keys on the victim, four on the other masters.
    let state = |k: &str| RedisStore::key_layout("rl", k, &limits()[0]);
    let (mut on_victim, mut elsewhere) = (Vec::new(), Vec::new());
    for i in 0.. {
        let k = format!("ch-{i}");
        let target = if cluster.node_of(&state(&k)) == victim {
            &mut on_victim
        } else {
            &mut elsewhere
        };
        if target.len() < 4 {
            target.push(k);
        }
        if on_victim.len() == 4 && elsewhere.len() == 4 {
            break;
        }
    }
    let keys: Arc<Vec<(String, bool)>> = Arc::new(
        on_victim
            .iter()
            .map(|k| (k.clone(), true))
            .chain(elsewhere.iter().map(|k| (k.clone(), false)))
            .collect(),
    );

    let (mut stacks, mut conns) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let store = cluster.connect_store().await;
        conns.push(store.connection().clone());
        stacks.push(Arc::new(Fallback::new(
            Timeout::new(store, BUDGET),
            MemoryStore::new(),
            nz(2),
        )));
    }
    let progress = Arc::new(Progress {
        stop: AtomicBool::new(false),
        promoted_at_ms: AtomicU64::new(0),
        back: AtomicU64::new(0),
    });
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for (instance, s) in stacks.iter().enumerate() {
        for task in 0..TASKS {
            let args = (Arc::clone(s), Arc::clone(&keys), Arc::clone(&progress));
            handles.push(tokio::spawn(load(
                args.0, instance, task, args.1, t0, args.2,
            )));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // load under way before the hang
    cluster.node_mut(victim).pause();
    let paused_at = t0.elapsed();

    let deadline = Instant::now() + Duration::from_secs(20);
    while !names_master(&cluster, witness, &replica_id) {
        assert!(Instant::now() < deadline, "the replica was not promoted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let promoted_at = t0.elapsed();
    progress
        .promoted_at_ms
        .store(promoted_at.as_millis() as u64, Ordering::Relaxed);
    // Redis decides the hung master's keys again (or the bound passes).
    let bound = Instant::now() + RECOVERY_BOUND + Duration::from_secs(6);
    while progress.back.load(Ordering::Relaxed) < 50 && Instant::now() < bound {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back_seen = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The hung master resumes: it learns it was failed over and rejoins as a replica.
    cluster.node_mut(victim).resume();
    let resumed_at = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.master_of(victim) != Some(replica) {
        assert!(
            Instant::now() < deadline,
            "the old master did not rejoin as a replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // load goes on with the old master back
    progress.stop.store(true, Ordering::Relaxed);
    let mut recs = Vec::new();
    for h in handles {
        recs.extend(h.await.unwrap());
    }
    let end = t0.elapsed();

    let failed = recs.iter().filter(|r| r.outcome.is_none()).count();
    // The first Redis decision of the hung master's keys, among checks started after the
    // promotion, on each instance; the later of the two.
    let first_back = (0..2)
        .map(|i| {
            recs.iter()
                .filter(|r| r.instance == i && keys[r.key].1 && r.started > promoted_at)
                .filter(|r| matches!(r.outcome, Some((DecidedBy::Primary, _))))
                .map(|r| r.started + r.latency)
                .min()
        })
        .collect::<Option<Vec<_>>>()
        .and_then(|firsts| firsts.into_iter().max());
    let back_after = first_back.map(|t| t.saturating_sub(promoted_at));
    let local_after = |from: Duration| {
        recs.iter()
            .filter(|r| keys[r.key].1 && r.started >= from)
            .filter(|r| matches!(r.outcome, Some((DecidedBy::Local, _))))
            .count()
    };
    let (healthy_gap, healthy_gap_at) = longest_gap(&recs, &keys, false, Duration::ZERO);
    // Once back, the hung master's keys stay on Redis, the old master's return included.
    let back_gap = first_back.map_or(Duration::MAX, |b| longest_gap(&recs, &keys, true, b).0);
    let slowest = recs.iter().map(|r| r.latency).max().unwrap();

    // Charged at most once: what Redis holds is never more than the checks sent, and for the
    // other masters' keys never less than the admissions Redis answered.
    let direct = cluster.connect_store().await;
    let mut lost = 0;
    for (k, (key, on_v)) in keys.iter().enumerate() {
        let held = QUOTA
            - direct
                .peek(key, &limits(), nz(1))
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}"))
                .remaining();
        let sent = recs.iter().filter(|r| r.key == k).count() as u32;
        let answered = recs
            .iter()
            .filter(|r| r.key == k && matches!(r.outcome, Some((DecidedBy::Primary, true))))
            .count() as u32;
        assert!(
            held <= sent,
            "{key}: Redis holds {held} charges for {sent} checks"
        );
        if *on_v {
            lost += answered.saturating_sub(held);
        } else {
            assert!(held >= answered, "{key}: {answered} admitted, {held} held");
        }
    }
    println!(
        "cluster hung master: {} checks, {failed} failed; paused at {paused_at:?}, promotion \
         visible at {promoted_at:?} (+{:?}), hung master's keys back on Redis (on both instances) \
         {back_after:?} after it (waited until {back_seen:?}), {} of them decided locally after the \
         promotion; longest stretch without a Redis decision: other masters' keys \
         {healthy_gap:?} (from {healthy_gap_at:?}), hung master's keys once back {back_gap:?}; old master resumed at \
         {resumed_at:?}, load until {end:?}; latency p50 {:?} p99 {:?} max {slowest:?}; \
         admissions lost with the master (async replication): {lost}; connections \
         rebuilt: {:?}",
        recs.len(),
        promoted_at - paused_at,
        local_after(promoted_at),
        percentile(&recs, 0.5),
        percentile(&recs, 0.99),
        conns.iter().map(|c| c.rebuilds()).collect::<Vec<_>>(),
    );
    assert_eq!(failed, 0, "checks failed in local mode");
    assert!(
        healthy_gap < HEALTHY_GAP,
        "the healthy masters' keys went {healthy_gap:?} without a Redis decision"
    );
    assert!(
        back_after.is_some_and(|b| b <= RECOVERY_BOUND),
        "the hung master's keys came back to Redis {back_after:?} after the promotion \
         (bound {RECOVERY_BOUND:?})"
    );
    assert!(
        back_gap < HEALTHY_GAP,
        "once back, the hung master's keys went {back_gap:?} without a Redis decision"
    );
    assert!(
        slowest <= 2 * BUDGET + Duration::from_millis(400),
        "a check took {slowest:?}, beyond its budget of {BUDGET:?}"
    );
}

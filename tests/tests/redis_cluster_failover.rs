//! Redis Cluster with replicas, failed over under load: three masters with a replica each;
//! two limiter instances (timeout and local fallback) check keys of every master while the
//! test kills one master (`SIGKILL`) and its replica takes over.
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
/// fallback when one master fails. Without it, only the failed master's keys are local.
type Stack = Fallback<Timeout<RedisStore<RebuildingClusterConnection>>, MemoryStore>;

const QUOTA: u32 = 100_000;
const BUDGET: Duration = Duration::from_millis(100);
const TASKS: usize = 4;

/// `cluster-require-full-coverage` for the test's cluster. With Redis's default, `yes`, a
/// cluster with a slot that no working master serves is down as a whole: once the killed master
/// is flagged `FAIL`, every node answers `CLUSTERDOWN` for every key, those of the healthy
/// masters too, until its replica is promoted (Redis's `clusterUpdateState`, in `cluster.c`),
/// and the replica waits 500 ms plus a random 0 to 500 ms after the flag before it even asks
/// for votes (`clusterHandleSlaveFailover`). With `yes`, this test measured a stretch of about
/// 1 s with no Redis decision for the healthy masters' keys, every check in it failing with
/// `CLUSTERDOWN` and decided by the fallback. With `no`, only the failed master's slots go
/// down, and their checks alone fall back.
const FULL_COVERAGE: &str = "no";

/// The longest the healthy masters' keys may go without a Redis decision: less than the
/// shortest `CLUSTERDOWN` window the default setting opens (500 ms, the replica's least
/// election delay), and far more than the short stalls left (the `redis` crate refreshes its
/// slot map when a call meets the dead master or a `MOVED`, and holds every queued call while
/// it does: `ClusterConnInner::poll_flush` polls the recovery future before it dispatches
/// anything; tens of milliseconds here).
const CLUSTERDOWN_WINDOW: Duration = Duration::from_millis(500);

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
    killed_at_ms: AtomicU64,
    /// Redis decisions, after the kill, of keys on the failed master.
    failed_back: AtomicU64,
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
    let mut i = task;
    while !progress.stop.load(Ordering::Relaxed) {
        let key = i % keys.len();
        i += 1;
        let started = t0.elapsed();
        let got = stack.check_traced(&keys[key].0, &limits(), nz(1)).await;
        let latency = t0.elapsed() - started;
        let outcome = got.ok().map(|(d, by)| (by, d.is_allowed()));
        let killed = progress.killed_at_ms.load(Ordering::Relaxed);
        if keys[key].1
            && killed > 0
            && started.as_millis() as u64 > killed
            && matches!(outcome, Some((DecidedBy::Primary, _)))
        {
            progress.failed_back.fetch_add(1, Ordering::Relaxed);
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

/// Kills one master under load: checks of the other masters' keys go on on Redis, those of
/// the failed master's keys are decided locally until its replica is promoted and then on
/// Redis again (the library present there, replicated or loaded when a call finds it missing), and no check is charged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_by_its_replica_under_load() {
    if !redis_available() {
        return;
    }
    let mut cluster = RedisCluster::start_with_replicas(Duration::from_millis(1000));
    // With Redis's default (`yes`), every node stops serving every key while the failed master
    // has no replacement: see `CLUSTERDOWN_WINDOW`.
    cluster.config_set("cluster-require-full-coverage", FULL_COVERAGE);
    let masters = cluster.masters();
    let victim = *masters.iter().find(|&&m| m != 0).unwrap();
    let replica = (0..cluster.nodes().len())
        .find(|&i| cluster.master_of(i) == Some(victim))
        .unwrap();
    // Four keys on the victim, four on the other masters.
    let state = |k: &str| RedisStore::key_layout("rl", k, &limits()[0]);
    let (mut on_victim, mut elsewhere) = (Vec::new(), Vec::new());
    for i in 0.. {
        let k = format!("cf-{i}");
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

    let mut stacks = Vec::new();
    for _ in 0..2 {
        let store = cluster.connect_store().await;
        stacks.push(Arc::new(Fallback::new(
            Timeout::new(store, BUDGET),
            MemoryStore::new(),
            nz(2),
        )));
    }
    let progress = Arc::new(Progress {
        stop: AtomicBool::new(false),
        killed_at_ms: AtomicU64::new(0),
        failed_back: AtomicU64::new(0),
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
    tokio::time::sleep(Duration::from_millis(500)).await; // load under way before the kill
    cluster.node_mut(victim).kill9();
    let killed_at = t0.elapsed();
    progress
        .killed_at_ms
        .store(killed_at.as_millis() as u64, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(20);
    while progress.failed_back.load(Ordering::Relaxed) < 50 {
        assert!(
            Instant::now() < deadline,
            "the failed master's keys never came back to Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.stop.store(true, Ordering::Relaxed);
    let mut recs = Vec::new();
    for h in handles {
        recs.extend(h.await.unwrap());
    }
    assert_eq!(
        cluster.master_of(replica),
        None,
        "the replica was not promoted"
    );

    let failed = recs.iter().filter(|r| r.outcome.is_none()).count();
    let slowest = recs.iter().map(|r| r.latency).max().unwrap();
    let local = |victim_keys: bool| {
        recs.iter()
            .filter(|r| keys[r.key].1 == victim_keys)
            .filter(|r| matches!(r.outcome, Some((DecidedBy::Local, _))))
            .count()
    };
    let back = recs
        .iter()
        .filter(|r| keys[r.key].1 && matches!(r.outcome, Some((DecidedBy::Local, _))))
        .map(|r| r.started + r.latency)
        .max()
        .map(|t| t.saturating_sub(killed_at));
    // The longest stretch with no Redis decision of the other masters' keys, per instance.
    let mut longest_gap = Duration::ZERO;
    for i in 0..2 {
        let mut ends: Vec<Duration> = recs
            .iter()
            .filter(|r| r.instance == i && !keys[r.key].1)
            .filter(|r| matches!(r.outcome, Some((DecidedBy::Primary, _))))
            .map(|r| r.started + r.latency)
            .collect();
        ends.sort();
        for w in ends.windows(2) {
            longest_gap = longest_gap.max(w[1] - w[0]);
        }
    }
    // Charged at most once: what Redis holds is never more than the checks sent, and for the
    // other masters' keys never less than the admissions Redis answered.
    // Every node that is up agrees that the cluster is whole again before Redis is read.
    let whole = Instant::now();
    while !(0..cluster.nodes().len())
        .filter(|&i| i != victim)
        .all(|i| {
            cluster.nodes()[i]
                .cli(&["CLUSTER", "INFO"])
                .lines()
                .any(|l| l.trim() == "cluster_state:ok")
        })
    {
        assert!(
            whole.elapsed() < Duration::from_secs(10),
            "the cluster stayed down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let fcalls = cluster.nodes()[replica].calls("fcall");
    let library = cluster.nodes()[replica].cli(&["FUNCTION", "LIST"]);
    println!(
        "cluster failover (cluster-require-full-coverage {FULL_COVERAGE}): {} checks, \
         {failed} failed; failed master's keys: {} decided \
         locally, back on Redis {back:?} after the kill; other masters' keys: {} decided \
         locally, longest stretch without a Redis decision {longest_gap:?}; slowest check \
         {slowest:?}; admissions answered but lost with the master (async replication): \
         {lost}; promoted node: {fcalls} FCALL",
        recs.len(),
        local(true),
        local(false),
    );
    // The failed master's keys meet `MOVED` (its replica redirecting to it) and refused
    // connections until the promotion. On loopback they can also meet a malformed reply: the
    // client reconnects to the dead master's port over and over, and when that port lies in
    // the ephemeral range a connect can pick it as its own source port and connect the socket
    // to itself (TCP simultaneous open), so each call "answers" with the call itself. Nothing
    // reached a server: the fallback decides, nothing is charged.
    assert_eq!(failed, 0, "checks failed in local mode");
    assert!(
        longest_gap < CLUSTERDOWN_WINDOW,
        "the healthy masters' keys went {longest_gap:?} without a Redis decision \
         (cluster-require-full-coverage {FULL_COVERAGE})"
    );
    assert!(
        local(true) > 0,
        "the failed master's keys were never decided locally"
    );
    assert!(
        slowest <= 2 * BUDGET + Duration::from_millis(400),
        "a check took {slowest:?}, beyond its budget of {BUDGET:?}"
    );
    assert!(fcalls > 0, "the promoted node never ran the library");
    assert!(
        library.contains("ratelimit_"),
        "the library is not on the promoted node: {library}"
    );
}

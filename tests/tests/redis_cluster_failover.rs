//! Redis Cluster with replicas, failed over under load: three masters with a replica each;
//! two limiter instances (timeout and local fallback) check keys of every master while the
//! test kills one master (`SIGKILL`) and its replica takes over.
#![allow(clippy::disallowed_methods)] // wall-clock latency of each call is what is measured

use std::time::{Duration, Instant};

use integration_tests::failover::{CLUSTER_BUDGET as BUDGET, ClusterUnderLoad, Tasks};
use integration_tests::redis_available;

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

/// Kills one master under load: checks of the other masters' keys go on on Redis, those of
/// the failed master's keys are decided locally until its replica is promoted and then on
/// Redis again (the library present there, replicated or loaded when a call finds it missing), and no check is charged twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_by_its_replica_under_load() {
    if !redis_available() {
        return;
    }
    let mut run = ClusterUnderLoad::start(Duration::from_millis(1000), "cf", Tasks::EveryKey).await;
    // With Redis's default (`yes`), every node stops serving every key while the failed master
    // has no replacement: see `CLUSTERDOWN_WINDOW`.
    run.cluster
        .config_set("cluster-require-full-coverage", FULL_COVERAGE);
    let (victim, replica) = (run.victim, run.replica);
    tokio::time::sleep(Duration::from_millis(500)).await; // load under way before the kill
    run.cluster.node_mut(victim).kill9();
    let killed_at = run.mark();
    let deadline = Instant::now() + Duration::from_secs(20);
    while run.back() < 50 {
        assert!(
            Instant::now() < deadline,
            "the failed master's keys never came back to Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recs = run.stop().await;
    let keys = &run.keys;
    assert_eq!(
        run.cluster.master_of(replica),
        None,
        "the replica was not promoted"
    );

    let failed = recs.iter().filter(|r| r.outcome.is_none()).count();
    let slowest = recs.iter().map(|r| r.latency).max().unwrap();
    let local = |victim_keys: bool| {
        recs.iter()
            .filter(|r| keys[r.key].1 == victim_keys)
            .filter(|r| r.by_fallback())
            .count()
    };
    let back = recs
        .iter()
        .filter(|r| keys[r.key].1 && r.by_fallback())
        .map(|r| r.ended())
        .max()
        .map(|t| t.saturating_sub(killed_at));
    // The longest stretch with no Redis decision of the other masters' keys, per instance.
    let (longest_gap, _) = run.longest_gap(&recs, false, Duration::ZERO);
    // Charged at most once: what Redis holds is never more than the checks sent, and for the
    // other masters' keys never less than the admissions Redis answered.
    // Every node that is up agrees that the cluster is whole again before Redis is read.
    let whole = Instant::now();
    while !(0..run.cluster.nodes().len())
        .filter(|&i| i != victim)
        .all(|i| {
            run.cluster.nodes()[i]
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
    let lost = run.assert_charged_at_most_once(&recs).await;
    let fcalls = run.cluster.nodes()[replica].calls("fcall");
    let library = run.cluster.nodes()[replica].cli(&["FUNCTION", "LIST"]);
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

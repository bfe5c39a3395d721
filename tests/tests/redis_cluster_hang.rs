//! Redis Cluster with replicas, one master hung (`SIGSTOP`) under load: its replica is
//! promoted, and the store must find it, without holding up the other masters' keys; then the
//! hung master resumes (`SIGCONT`) and rejoins as a replica.
//!
//! A hung master is not a dead one: its sockets stay open and nothing answers, so a call to it
//! fails by timing out, and a timeout tells the `redis` crate's cluster connection nothing (it
//! refreshes its slot map on `MOVED` or a lost connection, not on a timeout).
#![allow(clippy::disallowed_methods)] // wall-clock latency of each call is what is measured

use std::time::{Duration, Instant};

use integration_tests::failover::{
    CLUSTER_BUDGET as BUDGET, ClusterUnderLoad, Rec, Tasks, percentile,
};
use integration_tests::{RedisCluster, redis_available};

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
    let mut run =
        ClusterUnderLoad::start(Duration::from_millis(1000), "ch", Tasks::SplitByMaster).await;
    let (victim, replica, t0) = (run.victim, run.replica, run.t0);
    let witness = *run
        .cluster
        .masters()
        .iter()
        .find(|&&m| m != victim)
        .unwrap();
    let replica_id = run.cluster.nodes()[replica].cli(&["CLUSTER", "MYID"]);
    tokio::time::sleep(Duration::from_millis(500)).await; // load under way before the hang
    run.cluster.node_mut(victim).pause();
    let paused_at = t0.elapsed();

    let deadline = Instant::now() + Duration::from_secs(20);
    while !names_master(&run.cluster, witness, &replica_id) {
        assert!(Instant::now() < deadline, "the replica was not promoted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let promoted_at = run.mark();
    // Redis decides the hung master's keys again (or the bound passes).
    let bound = Instant::now() + RECOVERY_BOUND + Duration::from_secs(6);
    while run.back() < 50 && Instant::now() < bound {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back_seen = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The hung master resumes: it learns it was failed over and rejoins as a replica.
    run.cluster.node_mut(victim).resume();
    let resumed_at = t0.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    while run.cluster.master_of(victim) != Some(replica) {
        assert!(
            Instant::now() < deadline,
            "the old master did not rejoin as a replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // load goes on with the old master back
    let recs = run.stop().await;
    let end = t0.elapsed();

    let failed = recs.iter().filter(|r| r.outcome.is_none()).count();
    // The first Redis decision of the hung master's keys, among checks started after the
    // promotion, on each instance; the later of the two.
    let keys = &run.keys;
    let first_back = (0..2)
        .map(|i| {
            recs.iter()
                .filter(|r| r.instance == i && keys[r.key].1 && r.started > promoted_at)
                .filter(|r| r.by_redis())
                .map(Rec::ended)
                .min()
        })
        .collect::<Option<Vec<_>>>()
        .and_then(|firsts| firsts.into_iter().max());
    let back_after = first_back.map(|t| t.saturating_sub(promoted_at));
    let local_after = |from: Duration| {
        recs.iter()
            .filter(|r| keys[r.key].1 && r.started >= from)
            .filter(|r| r.by_fallback())
            .count()
    };
    let (healthy_gap, healthy_gap_at) = run.longest_gap(&recs, false, Duration::ZERO);
    // Once back, the hung master's keys stay on Redis, the old master's return included.
    let back_gap = first_back.map_or(Duration::MAX, |b| run.longest_gap(&recs, true, b).0);
    let slowest = recs.iter().map(|r| r.latency).max().unwrap();

    let lost = run.assert_charged_at_most_once(&recs).await;
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
        run.stacks
            .iter()
            .map(|s| s.primary().get_ref().connection().rebuilds())
            .collect::<Vec<_>>(),
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

//! Load for the failover tests: limiter instances (a Redis store behind a timeout and a local
//! fallback) check keys in tasks while a test fails a Redis node, and each check is recorded
//! with when it started, how long it took and which store decided it.
//!
//! [`ClusterUnderLoad`] is the Redis Cluster setting: three masters with a replica each, one of
//! them the victim, keys on it and keys elsewhere, two instances checking them.
#![allow(clippy::disallowed_methods)] // wall-clock latency of each call is what is measured

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rate_limit_core::resilience::{DecidedBy, Fallback, Timeout};
use rate_limit_core::{
    Algorithm, Limit, MemoryStore, Quota, RebuildingClusterConnection, RedisStore, Store,
};
use tokio::task::JoinHandle;

use crate::RedisCluster;

/// One check of the load.
#[derive(Clone, Copy, Debug)]
pub struct Rec {
    /// Which limiter instance checked.
    pub instance: usize,
    /// The index of the key checked.
    pub key: usize,
    /// When the check started, from the start of the load.
    pub started: Duration,
    /// How long the check took.
    pub latency: Duration,
    /// Which store decided, and whether it admitted; `None`: the check failed.
    pub outcome: Option<(DecidedBy, bool)>,
}

impl Rec {
    /// When the check ended, from the start of the load.
    pub fn ended(&self) -> Duration {
        self.started + self.latency
    }

    /// Whether Redis (the primary store) decided the check.
    pub fn by_redis(&self) -> bool {
        matches!(self.outcome, Some((DecidedBy::Primary, _)))
    }

    /// Whether the local fallback decided the check.
    pub fn by_fallback(&self) -> bool {
        matches!(self.outcome, Some((DecidedBy::Local, _)))
    }
}

/// `n`, which must not be zero.
///
/// # Panics
///
/// `n` is zero.
pub fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("not zero")
}

/// Checks (cost 1) the keys `next` picks by index in `keys`, one after another, until `stop`
/// is set; `seen` is told of each check as it ends. Yields after each check, so that a local
/// decision, which completes without waiting, leaves the runtime's timers and the test's own
/// task running.
#[allow(clippy::too_many_arguments)]
pub async fn check_until_stopped<P: Store>(
    stack: &Fallback<P, MemoryStore>,
    instance: usize,
    keys: &[String],
    limits: &[Limit],
    t0: Instant,
    stop: &AtomicBool,
    mut next: impl FnMut() -> usize,
    mut seen: impl FnMut(&Rec),
) -> Vec<Rec> {
    let mut recs = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let key = next();
        let started = t0.elapsed();
        let got = stack.check_traced(&keys[key], limits, nz(1)).await;
        let latency = t0.elapsed() - started;
        let rec = Rec {
            instance,
            key,
            started,
            latency,
            outcome: got.ok().map(|(d, by)| (by, d.is_allowed())),
        };
        seen(&rec);
        recs.push(rec);
        tokio::task::yield_now().await;
    }
    recs
}

/// The latency at quantile `p` (0 to 1) of `recs`, which must not be empty.
pub fn percentile(recs: &[Rec], p: f64) -> Duration {
    let mut l: Vec<Duration> = recs.iter().map(|r| r.latency).collect();
    l.sort();
    l[((l.len() - 1) as f64 * p) as usize]
}

/// A cluster instance: no breaker, since one breaker for the whole cluster would send the keys
/// of every master to the fallback when one master fails. Without it, only the failed
/// master's keys are local.
pub type ClusterStack = Fallback<Timeout<RedisStore<RebuildingClusterConnection>>, MemoryStore>;

/// Every key's quota (per hour) in [`ClusterUnderLoad`]: far more than the test sends.
pub const CLUSTER_QUOTA: u32 = 100_000;
/// Each call's budget (the `Timeout`) in [`ClusterUnderLoad`].
pub const CLUSTER_BUDGET: Duration = Duration::from_millis(100);
/// Checking tasks per instance in [`ClusterUnderLoad`].
const TASKS: usize = 4;

/// The limits of [`ClusterUnderLoad`]'s keys: a log, Redis holds one entry per admission, so
/// what it charged is counted exactly.
pub fn cluster_limits() -> [Limit; 1] {
    [Limit::new(
        Quota::per_hour(nz(CLUSTER_QUOTA)),
        Algorithm::SlidingWindowLog,
    )]
}

/// How the tasks of [`ClusterUnderLoad`] share the keys out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tasks {
    /// Each task checks every key in turn.
    EveryKey,
    /// Even tasks check the victim's keys, odd ones the others': a check of a hung master's
    /// keys waits out its budget, and a task doing both would space the others' checks by
    /// that much.
    SplitByMaster,
}

#[derive(Debug)]
struct Progress {
    stop: AtomicBool,
    /// Milliseconds from the start to the mark (0 before it).
    mark_ms: AtomicU64,
    /// Redis decisions of keys on the victim, of checks started after the mark.
    back: AtomicU64,
}

/// A Redis Cluster with replicas (`cluster-require-full-coverage no`: only a failed master's
/// slots go down while it has no replacement) under load: two instances ([`ClusterStack`]), four
/// tasks each, check four keys on the victim master and four on the others until
/// [`stop`](Self::stop).
#[derive(Debug)]
pub struct ClusterUnderLoad {
    /// The cluster.
    pub cluster: RedisCluster,
    /// The master the test fails (not node 0).
    pub victim: usize,
    /// The victim's replica.
    pub replica: usize,
    /// The keys, and whether each is on the victim.
    pub keys: Arc<Vec<(String, bool)>>,
    /// The two instances.
    pub stacks: Vec<Arc<ClusterStack>>,
    /// The start of the load.
    pub t0: Instant,
    progress: Arc<Progress>,
    handles: Vec<JoinHandle<Vec<Rec>>>,
}

impl ClusterUnderLoad {
    /// Starts the cluster (`node_timeout` as in [`RedisCluster::start_with_replicas`]) and the
    /// load; key names start with `prefix`.
    ///
    /// # Panics
    ///
    /// The cluster did not start, or has no master besides node 0.
    pub async fn start(node_timeout: Duration, prefix: &str, tasks: Tasks) -> Self {
        let cluster = RedisCluster::start_with_replicas(node_timeout);
        cluster.config_set("cluster-require-full-coverage", "no");
        let masters = cluster.masters();
        let victim = *masters.iter().find(|&&m| m != 0).expect("a second master");
        let replica = (0..cluster.nodes().len())
            .find(|&i| cluster.master_of(i) == Some(victim))
            .expect("the victim's replica");
        let state = |k: &str| RedisStore::key_layout("rl", k, &cluster_limits()[0]);
        let (mut on_victim, mut elsewhere) = (Vec::new(), Vec::new());
        for i in 0.. {
            let k = format!("{prefix}-{i}");
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
                .into_iter()
                .map(|k| (k, true))
                .chain(elsewhere.into_iter().map(|k| (k, false)))
                .collect(),
        );
        let mut stacks = Vec::new();
        for _ in 0..2 {
            stacks.push(Arc::new(Fallback::new(
                Timeout::new(cluster.connect_store().await, CLUSTER_BUDGET),
                MemoryStore::new(),
                nz(2),
            )));
        }
        let progress = Arc::new(Progress {
            stop: AtomicBool::new(false),
            mark_ms: AtomicU64::new(0),
            back: AtomicU64::new(0),
        });
        let t0 = Instant::now();
        let mut handles = Vec::new();
        for (instance, stack) in stacks.iter().enumerate() {
            for task in 0..TASKS {
                let (stack, keys, progress) =
                    (Arc::clone(stack), Arc::clone(&keys), Arc::clone(&progress));
                handles.push(tokio::spawn(async move {
                    let names: Vec<String> = keys.iter().map(|k| k.0.clone()).collect();
                    let (mine, mut i): (Vec<usize>, usize) = match tasks {
                        Tasks::EveryKey => ((0..keys.len()).collect(), task),
                        Tasks::SplitByMaster => (
                            (0..keys.len())
                                .filter(|&k| keys[k].1 == task.is_multiple_of(2))
                                .collect(),
                            task / 2,
                        ),
                    };
                    let next = || {
                        i += 1;
                        mine[(i - 1) % mine.len()]
                    };
                    let seen = |r: &Rec| {
                        let mark = progress.mark_ms.load(Ordering::Relaxed);
                        if keys[r.key].1
                            && mark > 0
                            && r.started.as_millis() as u64 > mark
                            && r.by_redis()
                        {
                            progress.back.fetch_add(1, Ordering::Relaxed);
                        }
                    };
                    let limits = cluster_limits();
                    check_until_stopped(
                        &stack,
                        instance,
                        &names,
                        &limits,
                        t0,
                        &progress.stop,
                        next,
                        seen,
                    )
                    .await
                }));
            }
        }
        Self {
            cluster,
            victim,
            replica,
            keys,
            stacks,
            t0,
            progress,
            handles,
        }
    }

    /// Marks now (from the start of the load) as the time after which
    /// [`back`](Self::back) counts, and returns it.
    pub fn mark(&self) -> Duration {
        let now = self.t0.elapsed();
        self.progress
            .mark_ms
            .store(now.as_millis() as u64, Ordering::Relaxed);
        now
    }

    /// Redis decisions so far of keys on the victim, of checks started after the
    /// [`mark`](Self::mark).
    pub fn back(&self) -> u64 {
        self.progress.back.load(Ordering::Relaxed)
    }

    /// Stops the load and returns every check.
    ///
    /// # Panics
    ///
    /// A checking task panicked.
    pub async fn stop(&mut self) -> Vec<Rec> {
        self.progress.stop.store(true, Ordering::Relaxed);
        let mut recs = Vec::new();
        for h in self.handles.drain(..) {
            recs.extend(h.await.expect("a checking task"));
        }
        recs
    }

    /// The longest stretch, per instance, with no Redis decision of the keys on the victim
    /// (`on_victim`) or elsewhere, among checks started from `from` on: its length and when it
    /// began.
    pub fn longest_gap(
        &self,
        recs: &[Rec],
        on_victim: bool,
        from: Duration,
    ) -> (Duration, Duration) {
        let mut longest = (Duration::ZERO, Duration::ZERO);
        for i in 0..2 {
            let mut ends: Vec<Duration> = recs
                .iter()
                .filter(|r| r.instance == i && self.keys[r.key].1 == on_victim && r.started >= from)
                .filter(|r| r.by_redis())
                .map(Rec::ended)
                .collect();
            ends.sort();
            for w in ends.windows(2) {
                longest = longest.max((w[1] - w[0], w[0]));
            }
        }
        longest
    }

    /// Asserts that no key was charged twice: what Redis holds is never more than the checks
    /// sent, and for the keys off the victim never less than the admissions Redis answered.
    /// Returns the admissions Redis answered for the victim's keys that it no longer holds
    /// (lost with the master: replication is asynchronous).
    ///
    /// # Panics
    ///
    /// A key was charged twice, or lost a charge off the victim, or could not be read.
    pub async fn assert_charged_at_most_once(&self, recs: &[Rec]) -> u32 {
        let direct = self.cluster.connect_store().await;
        let mut lost = 0;
        for (k, (key, on_v)) in self.keys.iter().enumerate() {
            let held = CLUSTER_QUOTA
                - direct
                    .peek(key, &cluster_limits(), nz(1))
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
        lost
    }
}

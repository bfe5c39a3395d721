//! Shared by the resilience tests: the stores under test, a steady load from several tasks, a
//! fault timeline, and the breaker transitions read back from the metrics.
#![allow(dead_code, unreachable_pub)] // each test binary uses part of it

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use integration_tests::RedisServer;
use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use rate_limit_core::resilience::{
    CircuitBreaker, CircuitState, DecidedBy, Fallback, METRIC_CIRCUIT_TRANSITIONS,
    METRIC_FALLBACK_DECISIONS, Timeout,
};
use rate_limit_core::{
    Algorithm, BoxFuture, Charge, Decision, Limit, MemoryStore, Quota, RedisStore, Store,
    StoreError, StoreErrorKind,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The time budget of each Redis call.
pub const BUDGET: Duration = Duration::from_millis(50);
/// What a call may take beyond the budget (scheduling on a busy 2-core machine).
pub const MARGIN: Duration = Duration::from_millis(100);
/// Tasks driving the load, and the pause between two checks of one task: about 300 checks/s.
pub const TASKS: usize = 4;
pub const PACE: Duration = Duration::from_millis(12);

/// One test at a time in this process.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` on a two-worker runtime, with the metrics recorder installed.
pub fn run<F: Future>(f: F) -> F::Output {
    install_recorder();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// 1000 per second by GCRA and 100,000 per minute by sliding window: checks are mostly allowed,
/// and each writes two keys.
pub fn limits() -> [Limit; 2] {
    let nz = |n| NonZeroU32::new(n).unwrap();
    [
        Limit::new(Quota::per_second(nz(1_000)), Algorithm::Gcra),
        Limit::new(Quota::per_minute(nz(100_000)), Algorithm::SlidingWindow),
    ]
}

/// A store under another backend name, so each test reads back only its own metrics.
#[derive(Debug)]
pub struct Named<S>(pub S, pub &'static str);

impl<S: Store> Store for Named<S> {
    fn check<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.0.check(key, limits, cost)
    }

    fn peek<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.0.peek(key, limits, cost)
    }

    fn refund<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        charge: Charge,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.0.refund(key, limits, charge)
    }

    fn backend(&self) -> &'static str {
        self.1
    }
}

pub type Redis = Named<RedisStore<ConnectionManager>>;
/// Timeout and breaker around Redis: errors go to the caller (the layer's open or closed mode).
pub type Guarded = CircuitBreaker<Timeout<Redis>>;
/// The same with a local fallback for 2 instances: the local failure mode.
pub type Local = Fallback<Guarded, MemoryStore>;

/// A `RedisStore` on server time through a `ConnectionManager` that retries connecting every
/// 200 ms at most (its default backoff grows to seconds).
pub async fn redis(server: &RedisServer, name: &'static str) -> Redis {
    let client = redis::Client::open(server.url()).unwrap();
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(200)))
        .set_max_delay(Duration::from_millis(200));
    let conn = ConnectionManager::new_with_config(client, config)
        .await
        .unwrap();
    let store = RedisStore::builder(conn).build().unwrap();
    assert!(!store.uses_client_clock());
    Named(store, name)
}

pub fn guard(redis: Redis) -> Guarded {
    CircuitBreaker::new(Timeout::new(redis, BUDGET))
        .cool_down(Duration::from_millis(250))
        .max_cool_down(Duration::from_secs(2))
}

pub async fn open_mode(server: &RedisServer, name: &'static str) -> Arc<Guarded> {
    Arc::new(guard(redis(server, name).await))
}

pub async fn local_mode(server: &RedisServer, name: &'static str) -> Arc<Local> {
    let guarded = guard(redis(server, name).await);
    Arc::new(Fallback::new(
        guarded,
        MemoryStore::new(),
        NonZeroU32::new(2).unwrap(),
    ))
}

/// What the load calls.
#[derive(Clone)]
pub enum Target<'a> {
    Open(&'a Arc<Guarded>),
    Local(&'a Arc<Local>),
}

#[derive(Clone)]
enum Owned {
    Open(Arc<Guarded>),
    Local(Arc<Local>),
}

impl Owned {
    async fn call(&self, key: &str, limits: &[Limit]) -> Result<DecidedBy, StoreError> {
        match self {
            Self::Open(s) => s
                .check(key, limits, NonZeroU32::MIN)
                .await
                .map(|_| DecidedBy::Primary),
            Self::Local(s) => s
                .check_traced(key, limits, NonZeroU32::MIN)
                .await
                .map(|(_, by)| by),
        }
    }

    fn state(&self) -> CircuitState {
        match self {
            Self::Open(s) => s.state(),
            Self::Local(s) => s.primary().state(),
        }
    }
}

/// Something done to the server, and undone.
pub struct Fault<'a> {
    server: &'a mut RedisServer,
    begin: fn(&mut RedisServer),
    end: fn(&mut RedisServer),
}

impl<'a> Fault<'a> {
    pub fn new(
        server: &'a mut RedisServer,
        begin: fn(&mut RedisServer),
        end: fn(&mut RedisServer),
    ) -> Self {
        Self { server, begin, end }
    }
}

/// Phases of a run.
const WARM: u8 = 0;
const FAULT: u8 = 1;
const RECOVERING: u8 = 2;
const RECOVERED: u8 = 3;

#[derive(Default)]
struct Tally {
    calls: AtomicU64,
    errors: AtomicU64,
    local: AtomicU64,
    slowest_nanos: AtomicU64,
    over_budget: AtomicU64,
    kinds: Mutex<HashMap<StoreErrorKind, u64>>,
    /// Per phase: decisions by Redis, local decisions, errors.
    by_phase: [[AtomicU64; 3]; 4],
}

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    pub calls: u64,
    pub errors: u64,
    pub local: u64,
    pub slowest: Duration,
    pub over_budget: u64,
    pub error_kinds: HashMap<StoreErrorKind, u64>,
    /// `[redis, local, errors]` in each phase: warm, fault, recovering, recovered.
    pub by_phase: [[u64; 3]; 4],
    /// From the end of the fault to the breaker closed with Redis answering again.
    pub recovery: Duration,
    /// The breaker's transitions, in order, from `ratelimit_circuit_transitions_total`.
    pub transitions: Vec<&'static str>,
    /// `ratelimit_fallback_decisions_total`: `(allowed, denied)` increments.
    pub fallback_counted: (u64, u64),
}

/// Steady load: warm 1 s, fault 3 s, then until Redis decides again (at most 20 s), then 1 s.
pub async fn drive(target: Target<'_>, fault: Fault<'_>) -> Report {
    let (target, name) = match target {
        Target::Open(s) => (Owned::Open(Arc::clone(s)), s.backend()),
        Target::Local(s) => (Owned::Local(Arc::clone(s)), s.backend()),
    };
    let tally = Arc::new(Tally::default());
    let phase = Arc::new(AtomicU8::new(WARM));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (target, tally, phase, stop) = (
                target.clone(),
                Arc::clone(&tally),
                Arc::clone(&phase),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                let limits = limits();
                let mut n = t;
                while !stop.load(Ordering::Relaxed) {
                    let p = phase.load(Ordering::Relaxed);
                    // Keys name their phase, so keys written after the fault are new keys.
                    let key = format!("p{p}-{}", n % 32);
                    n += TASKS;
                    let start = Instant::now();
                    let result = target.call(&key, &limits).await;
                    let took = start.elapsed();
                    // A call in flight when the phase moved belongs to the fault or the
                    // recovery, never to the clean phases around them.
                    let end = phase.load(Ordering::Relaxed);
                    let p = if p == WARM && end != WARM { FAULT } else { p };
                    tally.record(p, took, result);
                    tokio::time::sleep(PACE).await;
                }
            })
        })
        .collect();
    let Fault { server, begin, end } = fault;
    tokio::time::sleep(Duration::from_secs(1)).await;
    phase.store(FAULT, Ordering::Relaxed);
    begin(server);
    tokio::time::sleep(Duration::from_secs(3)).await;
    end(server);
    phase.store(RECOVERING, Ordering::Relaxed);
    let ended = Instant::now();
    while ended.elapsed() < Duration::from_secs(20) {
        let redis = tally.by_phase[usize::from(RECOVERING)][0].load(Ordering::Relaxed);
        if target.state() == CircuitState::Closed && redis >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recovery = ended.elapsed();
    phase.store(RECOVERED, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    tally.report(recovery, transitions(name), fallback_decisions(name))
}

impl Tally {
    fn record(&self, phase: u8, took: Duration, result: Result<DecidedBy, StoreError>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.slowest_nanos.fetch_max(nanos, Ordering::Relaxed);
        if took > BUDGET + MARGIN {
            self.over_budget.fetch_add(1, Ordering::Relaxed);
        }
        let column = match result {
            Ok(DecidedBy::Local) => {
                self.local.fetch_add(1, Ordering::Relaxed);
                1
            }
            Ok(_) => 0,
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                *self.kinds.lock().unwrap().entry(e.kind()).or_default() += 1;
                2
            }
        };
        self.by_phase[usize::from(phase)][column].fetch_add(1, Ordering::Relaxed);
    }

    fn report(
        &self,
        recovery: Duration,
        transitions: Vec<&'static str>,
        fallback_counted: (u64, u64),
    ) -> Report {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Report {
            calls: load(&self.calls),
            errors: load(&self.errors),
            local: load(&self.local),
            slowest: Duration::from_nanos(load(&self.slowest_nanos)),
            over_budget: load(&self.over_budget),
            error_kinds: self.kinds.lock().unwrap().clone(),
            by_phase: self.by_phase.each_ref().map(|p| p.each_ref().map(load)),
            recovery,
            transitions,
            fallback_counted,
        }
    }
}

impl Report {
    pub fn print(&self, what: &str) {
        println!(
            "{what}: {} checks, {} errors {:?}, {} local; slowest {:?} ({} over {:?}); \
             [redis, local, errors] by phase (warm, fault, recovering, recovered) {:?}; \
             Redis deciding again {:?} after the fault ended; breaker: {}",
            self.calls,
            self.errors,
            self.error_kinds,
            self.local,
            self.slowest,
            self.over_budget,
            BUDGET + MARGIN,
            self.by_phase,
            self.recovery,
            self.transitions.join(" -> "),
        );
    }

    /// No call took longer than the budget plus the margin.
    pub fn assert_bounded_latency(&self) {
        assert!(self.calls > 1_000, "only {} checks", self.calls);
        assert_eq!(
            self.over_budget,
            0,
            "{} calls over {:?}; slowest {:?}",
            self.over_budget,
            BUDGET + MARGIN,
            self.slowest
        );
    }

    /// Every local decision the load saw was counted once in
    /// `ratelimit_fallback_decisions_total`, under its outcome.
    pub fn assert_local_decisions_counted(&self, name: &str) {
        let (allowed, denied) = self.fallback_counted;
        assert_eq!(
            allowed + denied,
            self.local,
            "{name}: {allowed} allowed + {denied} denied counted, {} local decisions seen",
            self.local
        );
        assert!(allowed > 0, "{name}: no local admission counted");
    }

    /// The breaker went closed → open → half-open → ... → closed.
    pub fn assert_breaker_cycled(&self, name: &str) {
        let t = &self.transitions;
        assert_eq!(t.first(), Some(&"open"), "{name}: {t:?}");
        assert_eq!(t.last(), Some(&"closed"), "{name}: {t:?}");
        assert!(t.contains(&"half_open"), "{name}: {t:?}");
        // Every transition is a legal one.
        for pair in t.windows(2) {
            let ok = matches!(
                (pair[0], pair[1]),
                ("closed", "open") | ("open", "half_open") | ("half_open", "open" | "closed")
            );
            assert!(ok, "{name}: illegal {pair:?} in {t:?}");
        }
    }

    /// Decisions went back to Redis: the warm phase and the last second were decided by Redis
    /// alone, with no error, and keys first used after the fault are in the server.
    pub fn assert_back_on_redis(&self, server: &RedisServer) {
        let [warm, _, _, recovered] = self.by_phase;
        assert!(
            warm[0] > 0 && warm[1] == 0 && warm[2] == 0,
            "{:?}",
            self.by_phase
        );
        assert!(
            recovered[0] > 0 && recovered[1] == 0 && recovered[2] == 0,
            "{:?}",
            self.by_phase
        );
        assert!(
            self.recovery < Duration::from_secs(20),
            "Redis never took over again"
        );
        for p in ["2", "3"] {
            let keys = server.cli(&["KEYS", &format!("rl:{{p{p}-*")]);
            assert!(!keys.is_empty(), "no key of phase {p} in Redis");
        }
    }
}

/// Breaker transitions of the store named `backend`, in order.
pub fn transitions(backend: &str) -> Vec<&'static str> {
    events()
        .lock()
        .unwrap()
        .iter()
        .filter(|(b, _)| b == backend)
        .map(|(_, to)| *to)
        .collect()
}

/// Increments of the fallback counter of the store named `backend`: `(allowed, denied)`.
pub fn fallback_decisions(backend: &str) -> (u64, u64) {
    let counts = fallbacks().lock().unwrap();
    let get = |outcome| {
        counts
            .get(&(backend.to_owned(), outcome))
            .copied()
            .unwrap_or(0)
    };
    (get("allowed"), get("denied"))
}

fn events() -> &'static Mutex<Vec<(String, &'static str)>> {
    static EVENTS: OnceLock<Mutex<Vec<(String, &'static str)>>> = OnceLock::new();
    EVENTS.get_or_init(Mutex::default)
}

type FallbackCounts = HashMap<(String, &'static str), u64>;

fn fallbacks() -> &'static Mutex<FallbackCounts> {
    static COUNTS: OnceLock<Mutex<FallbackCounts>> = OnceLock::new();
    COUNTS.get_or_init(Mutex::default)
}

/// Records each increment of the transitions counter as `(backend, to)`, and sums the fallback
/// counter per `(backend, outcome)`.
struct Transitions;

struct Transition(String, &'static str);

impl CounterFn for Transition {
    fn increment(&self, _: u64) {
        events().lock().unwrap().push((self.0.clone(), self.1));
    }

    fn absolute(&self, _: u64) {}
}

struct FallbackDecision(String, &'static str);

impl CounterFn for FallbackDecision {
    fn increment(&self, n: u64) {
        *fallbacks()
            .lock()
            .unwrap()
            .entry((self.0.clone(), self.1))
            .or_default() += n;
    }

    fn absolute(&self, _: u64) {}
}

impl Recorder for Transitions {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let label = |name: &str| {
            key.labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
        };
        if key.name() == METRIC_FALLBACK_DECISIONS {
            let outcome = match label("outcome").as_deref() {
                Some("allowed") => "allowed",
                Some("denied") => "denied",
                _ => "unknown",
            };
            return Counter::from_arc(Arc::new(FallbackDecision(
                label("backend").unwrap_or_default(),
                outcome,
            )));
        }
        if key.name() != METRIC_CIRCUIT_TRANSITIONS {
            return Counter::noop();
        }
        let to = match label("to").as_deref() {
            Some("open") => "open",
            Some("half_open") => "half_open",
            Some("closed") => "closed",
            _ => "unknown",
        };
        Counter::from_arc(Arc::new(Transition(
            label("backend").unwrap_or_default(),
            to,
        )))
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn install_recorder() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        metrics::set_global_recorder(Transitions).unwrap();
    });
}

/// Resident memory of this process, from `/proc/self/status`, in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

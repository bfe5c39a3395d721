//! [`CircuitBreaker`]: stops calling a store that keeps failing, and probes it back.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::decision::Decision;
use crate::error::{StoreError, StoreErrorKind};
use crate::limit::Limit;
use crate::store::{BoxFuture, Charge, Store};

use super::log::Failure;
use super::state::CircuitState;
use crate::logging::Throttle;

/// Counts consecutive infrastructure failures of the store inside and, past a threshold, stops
/// calling it for a cool-down.
///
/// - **Closed**: calls go through. After [`failure_threshold`](Self::failure_threshold)
///   consecutive infrastructure failures ([`StoreError::is_infrastructure`]: timeout, connection,
///   backend) it opens. Denials are answers, not failures: an answer resets the count.
/// - **Open**: every call fails at once with [`StoreErrorKind::CircuitOpen`]; nothing reaches
///   the store, so nothing piles up against it. After the cool-down, the next call becomes the
///   probe.
/// - **Half-open**: one call at a time goes through as the probe; concurrent calls fail with
///   `CircuitOpen`. If the backend answers the probe, the breaker closes and the cool-down is
///   reset; if the probe fails, the breaker opens again for twice the last cool-down, up to
///   [`max_cool_down`](Self::max_cool_down).
///
/// # Only the backend closes it
///
/// A call counts as an answer only when the backend itself decided it now
/// ([`Decision::is_backend_answer`]). A decision the store made without the backend (a
/// [`RedisStore`](crate::RedisStore) deny-cache hit, [marked cached](Decision::is_cached)), an
/// [`InvalidInput`](StoreErrorKind::InvalidInput) refusal made before anything was sent, or a
/// `CircuitOpen` from a breaker further in says nothing of the backend's health: while closed,
/// such a call neither counts as a failure nor resets the count; as the probe, it gives its
/// turn back, and so does a probe dropped before it finished (its caller gave up). The breaker
/// stays half-open and the next call is the probe: it neither closes while the backend is
/// dead nor opens for a new cool-down.
///
/// Time is read only through a [`Clock`], and only while open and at transitions. In the
/// closed state a call costs two atomic loads; the mutex is taken only on failures,
/// transitions and half-open admissions. Results of calls let through before a transition are
/// ignored after it.
///
/// Every transition sets the gauge `ratelimit_circuit_state` (0 closed, 1 open, 2 half-open)
/// and increments the counter `ratelimit_circuit_transitions_total` (label `to`), both labelled
/// `backend` with the inner store's name, and is logged as the [module docs](super#logs)
/// describe (opening at WARN, with the failure's cause chain).
///
/// [`backend`](Store::backend) is the inner store's name.
pub struct CircuitBreaker<S, C = SystemClock> {
    inner: S,
    clock: C,
    threshold: u32,
    base: u64,
    max: u64,
    /// `(transitions << 2) | state`: one load gives the state and the generation it belongs to.
    phase: AtomicU64,
    /// Nanoseconds since the epoch before which an open breaker refuses every call.
    open_until: AtomicU64,
    /// Whether `Tally::failures` may be non-zero, so that a success in the closed state takes
    /// the lock only after failures.
    dirty: AtomicBool,
    /// Half-open: whether a probe is in flight. Written under the lock.
    probing: AtomicBool,
    tally: Mutex<Tally>,
    /// Half-open events of probes, which repeat while the store stays down.
    probe_log: Throttle,
}

#[derive(Debug)]
struct Tally {
    failures: u32,
    cool_down: u64,
    /// When the breaker last opened from closed (clock nanoseconds), and the failure that
    /// opened it: named again when it half-opens and closes.
    opened_at: u64,
    opened_by: Failure,
    /// Probes failed since it opened.
    failed_probes: u32,
    /// Whether this probe's half-open event was logged, so that its failure is too.
    log_probe: bool,
}

/// What a call was let through as.
#[derive(Clone, Copy)]
enum Admit {
    Closed(u64),
    Probe(u64),
}

impl<S: Store> CircuitBreaker<S, SystemClock> {
    /// Wraps `inner`: opens after 3 consecutive infrastructure failures, for 1 s at first,
    /// doubling up to 10 s while probes fail.
    ///
    /// Describes its metrics to the recorder installed now, and creates their series for the
    /// inner store's backend: the state gauge at 0 (closed) and each transition counter at 0.
    pub fn new(inner: S) -> Self {
        super::register_breaker_series(inner.backend());
        let base = nanos(Duration::from_secs(1));
        Self {
            inner,
            clock: SystemClock::new(),
            threshold: 3,
            base,
            max: nanos(Duration::from_secs(10)),
            phase: AtomicU64::new(CircuitState::Closed.bits()),
            open_until: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            tally: Mutex::new(Tally {
                failures: 0,
                cool_down: base,
                opened_at: 0,
                opened_by: Failure::default(),
                failed_probes: 0,
                log_probe: false,
            }),
            probe_log: Throttle::new(super::LOG_INTERVAL),
        }
    }
}

impl<S, C: Clock> CircuitBreaker<S, C> {
    /// Consecutive infrastructure failures that open the breaker, a plain `u32` or a
    /// `NonZeroU32`. Default 3.
    ///
    /// # Panics
    ///
    /// If `failures` is a plain `0`.
    #[must_use]
    #[track_caller]
    pub fn failure_threshold(mut self, failures: impl crate::Count) -> Self {
        self.threshold = crate::quota::nonzero_or_panic("failure_threshold", failures).get();
        self
    }

    /// The first cool-down after the breaker opens. Default 1 s.
    #[must_use]
    pub fn cool_down(mut self, cool_down: Duration) -> Self {
        self.base = nanos(cool_down);
        self.tally_mut().cool_down = self.base;
        self
    }

    /// The longest cool-down, however many probes fail. Default 10 s: after a long outage,
    /// decisions return to the store at most this long after it is back (plus the time its
    /// client takes to reconnect), for the price of one probe per cool-down while it is away.
    /// Never below [`cool_down`](Self::cool_down).
    #[must_use]
    pub fn max_cool_down(mut self, max: Duration) -> Self {
        self.max = nanos(max);
        self
    }

    /// Reads time from `clock` (a [`ManualClock`](crate::ManualClock) in tests).
    pub fn clock<C2: Clock>(self, clock: C2) -> CircuitBreaker<S, C2> {
        CircuitBreaker {
            inner: self.inner,
            clock,
            threshold: self.threshold,
            base: self.base,
            max: self.max,
            phase: self.phase,
            open_until: self.open_until,
            dirty: self.dirty,
            probing: self.probing,
            tally: self.tally,
            probe_log: self.probe_log,
        }
    }

    /// Where the breaker stands now. An open breaker whose cool-down is over stays `Open` until
    /// a call arrives and becomes the probe.
    pub fn state(&self) -> CircuitState {
        CircuitState::from_phase(self.phase.load(Ordering::Acquire))
    }

    /// How many transitions the breaker has made since it was built.
    pub fn transitions(&self) -> u64 {
        self.phase.load(Ordering::Acquire) >> 2
    }

    /// The cool-down the breaker waits (or waited) through the last time it opened.
    pub fn current_cool_down(&self) -> Duration {
        Duration::from_nanos(self.lock().cool_down)
    }

    /// The store inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn lock(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tally_mut(&mut self) -> &mut Tally {
        self.tally.get_mut().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S: Store, C: Clock> CircuitBreaker<S, C> {
    fn admit(&self) -> Option<Admit> {
        let phase = self.phase.load(Ordering::Acquire);
        match CircuitState::from_phase(phase) {
            CircuitState::Closed => Some(Admit::Closed(phase)),
            CircuitState::HalfOpen => {
                if self.probing.load(Ordering::Acquire) {
                    return None;
                }
                let _tally = self.lock();
                // A probe may have started, or settled, since the first loads.
                if self.phase.load(Ordering::Acquire) != phase
                    || self.probing.load(Ordering::Acquire)
                {
                    return None;
                }
                self.probing.store(true, Ordering::Release);
                Some(Admit::Probe(phase))
            }
            CircuitState::Open => {
                let now = self.clock.now_nanos();
                if now < self.open_until.load(Ordering::Acquire) {
                    return None;
                }
                let mut tally = self.lock();
                // Another call may have become the probe since the first load.
                if self.phase.load(Ordering::Acquire) != phase {
                    return None;
                }
                self.probing.store(true, Ordering::Release);
                let probe = self.move_to(phase, CircuitState::HalfOpen);
                let held = self.probe_log.pass(now);
                tally.log_probe = held.is_some();
                let event = held.map(|held| Event::HalfOpen {
                    open_for: now.saturating_sub(tally.opened_at),
                    held,
                    opened_by: tally.opened_by.clone(),
                });
                drop(tally);
                if let Some(event) = event {
                    event.emit(self.inner.backend());
                }
                Some(Admit::Probe(probe))
            }
        }
    }

    /// Sets the state, under the lock, and reports it. Returns the new phase.
    fn move_to(&self, phase: u64, to: CircuitState) -> u64 {
        let next = ((phase >> 2) + 1) << 2 | to.bits();
        self.phase.store(next, Ordering::Release);
        let backend = self.inner.backend();
        metrics::gauge!(super::METRIC_CIRCUIT_STATE, "backend" => backend).set(to.as_gauge());
        metrics::counter!(
            super::METRIC_CIRCUIT_TRANSITIONS, "backend" => backend, "to" => to.as_str()
        )
        .increment(1);
        next
    }

    /// Opens for `cool_down` from now, under the lock. Returns now.
    fn open(&self, phase: u64, cool_down: u64) -> u64 {
        let now = self.clock.now_nanos();
        self.open_until
            .store(now.saturating_add(cool_down), Ordering::Release);
        self.probing.store(false, Ordering::Release);
        self.move_to(phase, CircuitState::Open);
        now
    }

    /// Half-open, and the probe of `phase` ended without an answer: the next call probes.
    fn give_back(&self, phase: u64) {
        let _tally = self.lock();
        if self.phase.load(Ordering::Acquire) == phase {
            self.probing.store(false, Ordering::Release);
        }
    }

    fn settle(&self, admit: Admit, outcome: Outcome<'_>) {
        let event = match (admit, outcome) {
            (Admit::Closed(_), Outcome::Unanswered) => None,
            (Admit::Closed(phase), Outcome::Answered) => {
                if self.dirty.load(Ordering::Acquire) {
                    let mut tally = self.lock();
                    if self.phase.load(Ordering::Acquire) == phase {
                        tally.failures = 0;
                        self.dirty.store(false, Ordering::Release);
                    }
                }
                None
            }
            (Admit::Closed(phase), Outcome::Failed(err)) => {
                let mut tally = self.lock();
                if self.phase.load(Ordering::Acquire) != phase {
                    return;
                }
                tally.failures += 1;
                self.dirty.store(true, Ordering::Release);
                if tally.failures < self.threshold {
                    return;
                }
                tally.cool_down = self.base;
                tally.opened_at = self.open(phase, self.base);
                tally.opened_by = Failure::of(err);
                tally.failed_probes = 0;
                Some(Event::Opened {
                    failures: tally.failures,
                    cool_down: self.base,
                    failure: tally.opened_by.clone(),
                })
            }
            (Admit::Probe(phase), Outcome::Unanswered) => {
                self.give_back(phase);
                None
            }
            (Admit::Probe(phase), Outcome::Failed(err)) => {
                let mut tally = self.lock();
                if self.phase.load(Ordering::Acquire) != phase {
                    return;
                }
                tally.cool_down = tally
                    .cool_down
                    .saturating_mul(2)
                    .min(self.max.max(self.base));
                self.open(phase, tally.cool_down);
                tally.failed_probes += 1;
                tally.log_probe.then(|| Event::ProbeFailed {
                    cool_down: tally.cool_down,
                    failed_probes: tally.failed_probes,
                    failure: Failure::of(err),
                })
            }
            (Admit::Probe(phase), Outcome::Answered) => {
                let mut tally = self.lock();
                if self.phase.load(Ordering::Acquire) != phase {
                    return;
                }
                tally.failures = 0;
                tally.cool_down = self.base;
                self.dirty.store(false, Ordering::Release);
                self.probing.store(false, Ordering::Release);
                self.move_to(phase, CircuitState::Closed);
                let now = self.clock.now_nanos();
                Some(Event::Closed {
                    open_for: now.saturating_sub(tally.opened_at),
                    failed_probes: std::mem::take(&mut tally.failed_probes),
                    opened_by: std::mem::take(&mut tally.opened_by),
                })
            }
        };
        if let Some(event) = event {
            event.emit(self.inner.backend());
        }
    }

    fn guarded<'a>(
        &'a self,
        call: impl FnOnce(&'a S) -> BoxFuture<'a, Result<Decision, StoreError>> + Send + 'a,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async move {
            let Some(admit) = self.admit() else {
                return Err(StoreError::new(StoreErrorKind::CircuitOpen, ""));
            };
            let mut pending = Pending(self, Some(admit));
            let result = call(&self.inner).await;
            pending.1 = None;
            self.settle(admit, Outcome::of(&result));
            result
        })
    }
}

/// What a call's result tells of the backend's health.
#[derive(Clone, Copy)]
enum Outcome<'a> {
    /// The backend decided it.
    Answered,
    /// An infrastructure failure.
    Failed(&'a StoreError),
    /// Nothing: decided or refused without the backend.
    Unanswered,
}

impl<'a> Outcome<'a> {
    fn of(result: &'a Result<Decision, StoreError>) -> Self {
        match result {
            Ok(d) if d.is_backend_answer() => Self::Answered,
            Err(e) if e.is_infrastructure() => Self::Failed(e),
            _ => Self::Unanswered,
        }
    }
}

/// A state change to log, made under the lock and logged after it is released. Times are in
/// nanoseconds.
enum Event {
    Opened {
        failures: u32,
        cool_down: u64,
        failure: Failure,
    },
    HalfOpen {
        open_for: u64,
        held: u64,
        opened_by: Failure,
    },
    ProbeFailed {
        cool_down: u64,
        failed_probes: u32,
        failure: Failure,
    },
    Closed {
        open_for: u64,
        failed_probes: u32,
        opened_by: Failure,
    },
}

impl Event {
    fn emit(self, backend: &'static str) {
        let ms = |nanos: u64| nanos / 1_000_000;
        match self {
            Self::Opened {
                failures,
                cool_down,
                failure,
            } => tracing::warn!(
                backend,
                failures,
                cool_down_ms = ms(cool_down),
                error = %failure.error,
                cause = %failure.cause,
                "rate limit circuit breaker opened: the store is not called"
            ),
            Self::HalfOpen {
                open_for,
                held,
                opened_by,
            } => tracing::info!(
                backend,
                open_for_ms = ms(open_for),
                probes_not_logged = held,
                error = %opened_by.error,
                cause = %opened_by.cause,
                "rate limit circuit breaker half-open: probing the store"
            ),
            Self::ProbeFailed {
                cool_down,
                failed_probes,
                failure,
            } => tracing::warn!(
                backend,
                failed_probes,
                cool_down_ms = ms(cool_down),
                error = %failure.error,
                cause = %failure.cause,
                "rate limit circuit breaker probe failed: open again"
            ),
            Self::Closed {
                open_for,
                failed_probes,
                opened_by,
            } => tracing::info!(
                backend,
                open_for_ms = ms(open_for),
                failed_probes,
                error = %opened_by.error,
                cause = %opened_by.cause,
                "rate limit circuit breaker closed: the store answers again"
            ),
        }
    }
}

/// A call let through and not settled yet: if its future is dropped first, a probe gives its
/// turn back.
struct Pending<'a, S: Store, C: Clock>(&'a CircuitBreaker<S, C>, Option<Admit>);

impl<S: Store, C: Clock> Drop for Pending<'_, S, C> {
    fn drop(&mut self) {
        if let Some(Admit::Probe(phase)) = self.1 {
            self.0.give_back(phase);
        }
    }
}

impl<S: Store, C: Clock> Store for CircuitBreaker<S, C> {
    fn check<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.guarded(move |s| s.check(key, limits, cost))
    }

    fn peek<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.guarded(move |s| s.peek(key, limits, cost))
    }

    /// Guarded as a check is: refused at once with
    /// [`CircuitOpen`](crate::StoreErrorKind::CircuitOpen) while open, one probe while
    /// half-open, and its infrastructure failures count towards opening.
    fn refund<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        charge: Charge,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.guarded(move |s| s.refund(key, limits, charge))
    }

    /// As [`try_check_now`](Store::try_check_now): while closed, what the inner store gives
    /// back without waiting, counting neither as a success nor as a failure.
    fn try_refund_now(
        &self,
        key: &str,
        limits: &[Limit],
        charge: Charge,
    ) -> Option<Result<Decision, StoreError>> {
        let phase = self.phase.load(Ordering::Acquire);
        if CircuitState::from_phase(phase) != CircuitState::Closed {
            return None;
        }
        self.inner
            .try_refund_now(key, limits, charge)
            .filter(Result::is_ok)
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn validate(&self, limit: &Limit) -> Result<(), crate::error::ConfigError> {
        self.inner.validate(limit)
    }

    /// While the circuit is closed, a decision the inner store makes without waiting (a memory
    /// store, a remote store's local cache). It says nothing of the backend's health, so it
    /// counts neither as a success nor as a failure. Otherwise `None`: the async path runs the
    /// breaker.
    fn try_check_now(
        &self,
        key: &str,
        limits: &[Limit],
        cost: NonZeroU32,
    ) -> Option<Result<Decision, StoreError>> {
        let phase = self.phase.load(Ordering::Acquire);
        if CircuitState::from_phase(phase) != CircuitState::Closed {
            return None;
        }
        self.inner
            .try_check_now(key, limits, cost)
            .filter(Result::is_ok)
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field(
                "state",
                &CircuitState::from_phase(self.phase.load(Ordering::Relaxed)),
            )
            .field("failure_threshold", &self.threshold)
            .field("cool_down", &Duration::from_nanos(self.base))
            .field("max_cool_down", &Duration::from_nanos(self.max))
            .finish_non_exhaustive()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::resilience::testing::{Script, Scripted, limits};
    use std::sync::Arc;

    type Breaker = CircuitBreaker<Arc<Scripted>, ManualClock>;

    fn breaker(
        scripts: impl IntoIterator<Item = Script>,
    ) -> (Arc<Breaker>, Arc<Scripted>, ManualClock) {
        let inner = Arc::new(Scripted::new(scripts));
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let b = CircuitBreaker::new(Arc::clone(&inner))
            .cool_down(Duration::from_secs(1))
            .max_cool_down(Duration::from_secs(3))
            .clock(clock.clone());
        (Arc::new(b), inner, clock)
    }

    async fn call(b: &Breaker) -> Result<Decision, StoreError> {
        b.check("k", &limits(10), NonZeroU32::MIN).await
    }

    async fn kind(b: &Breaker) -> Option<StoreErrorKind> {
        call(b).await.err().map(|e| e.kind())
    }

    fn fail(kind: StoreErrorKind) -> Script {
        Script::Fail(kind)
    }

    /// Trips a fresh breaker with three connection failures.
    async fn trip(b: &Breaker) {
        for _ in 0..3 {
            assert_eq!(kind(b).await, Some(StoreErrorKind::Connection));
        }
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[tokio::test]
    async fn opens_after_exactly_the_threshold_of_infrastructure_failures() {
        use StoreErrorKind::{Backend, Connection, Timeout};
        let (b, inner, _) = breaker([fail(Timeout), fail(Connection), fail(Backend)]);
        assert_eq!(kind(&b).await, Some(Timeout));
        assert_eq!(kind(&b).await, Some(Connection));
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(kind(&b).await, Some(Backend));
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.transitions(), 1);
        // Open: refused at once, and the store is not called.
        for _ in 0..5 {
            let err = call(&b).await.unwrap_err();
            assert!(err.is_circuit_open() && !err.is_infrastructure());
            assert_eq!(err.to_string(), "circuit open");
        }
        assert_eq!(inner.calls(), 3);
    }

    #[tokio::test]
    async fn denials_never_count_and_answers_reset_the_count() {
        use StoreErrorKind::Connection;
        let (b, inner, _) = breaker([
            fail(Connection),
            fail(Connection),
            Script::Deny,
            fail(Connection),
            fail(Connection),
            Script::Allow,
            fail(Connection),
            fail(Connection),
            Script::Deny,
            Script::Deny,
            Script::Deny,
        ]);
        for _ in 0..11 {
            let _ = call(&b).await;
        }
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.transitions(), 0);
        assert_eq!(inner.calls(), 11);
        // The count starts again from zero: three more failures are needed.
        inner.push([fail(Connection), fail(Connection)]);
        let _ = call(&b).await;
        let _ = call(&b).await;
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_exactly_one_probe_through_and_closes_on_an_answer() {
        let (b, inner, clock) = breaker(vec![fail(StoreErrorKind::Connection); 3]);
        trip(&b).await;
        clock.advance(Duration::from_millis(999));
        assert_eq!(kind(&b).await, Some(StoreErrorKind::CircuitOpen));
        assert_eq!(inner.calls(), 3);
        clock.advance(Duration::from_millis(1));
        // The probe takes 10 ms to answer; meanwhile every other call is refused.
        inner.push([Script::AllowAfter(Duration::from_millis(10))]);
        let probe = tokio::spawn({
            let b = Arc::clone(&b);
            async move { call(&b).await.map(|d| d.is_allowed()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(b.state(), CircuitState::HalfOpen);
        for _ in 0..10 {
            assert_eq!(kind(&b).await, Some(StoreErrorKind::CircuitOpen));
        }
        assert_eq!(inner.calls(), 4);
        assert!(probe.await.unwrap().unwrap());
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.transitions(), 3); // open, half-open, closed
        assert!(call(&b).await.is_ok());
        assert_eq!(inner.calls(), 5);
    }

    #[tokio::test]
    async fn a_failed_probe_reopens_for_a_doubled_cool_down_up_to_the_cap() {
        let (b, inner, clock) = breaker(vec![fail(StoreErrorKind::Connection); 3]);
        trip(&b).await;
        assert_eq!(b.current_cool_down(), Duration::from_secs(1));
        let mut expected = Vec::new();
        for _ in 0..3 {
            let cool_down = b.current_cool_down();
            clock.advance(cool_down - Duration::from_millis(1));
            assert_eq!(kind(&b).await, Some(StoreErrorKind::CircuitOpen));
            clock.advance(Duration::from_millis(1));
            inner.push([fail(StoreErrorKind::Timeout)]);
            assert_eq!(kind(&b).await, Some(StoreErrorKind::Timeout));
            assert_eq!(b.state(), CircuitState::Open);
            expected.push(b.current_cool_down().as_secs());
        }
        assert_eq!(expected, [2, 3, 3]);
        // An answer closes it and resets the cool-down.
        clock.advance(Duration::from_secs(3));
        assert!(call(&b).await.is_ok());
        assert_eq!(b.state(), CircuitState::Closed);
        inner.push(vec![fail(StoreErrorKind::Connection); 3]);
        trip(&b).await;
        assert_eq!(b.current_cool_down(), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_probe_refused_without_reaching_the_store_neither_closes_nor_reopens() {
        use StoreErrorKind::{Connection, InvalidInput};
        let (b, inner, clock) = breaker(vec![fail(Connection); 3]);
        trip(&b).await;
        clock.advance(Duration::from_secs(1));
        // The probe is refused before it reaches the backend: it says nothing of its health.
        inner.push([fail(InvalidInput)]);
        assert_eq!(kind(&b).await, Some(InvalidInput));
        assert_ne!(b.state(), CircuitState::Closed, "closed without an answer");
        // It gave its turn back: the next call probes at once, and its failure reopens.
        inner.push([fail(Connection)]);
        assert_eq!(kind(&b).await, Some(Connection));
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.current_cool_down(), Duration::from_secs(2));
        assert_eq!(inner.calls(), 5);
    }

    #[tokio::test]
    async fn calls_without_an_answer_neither_count_nor_reset_the_count() {
        use StoreErrorKind::{CircuitOpen, Connection, InvalidInput};
        let (b, inner, _) = breaker([
            fail(Connection),
            fail(Connection),
            fail(InvalidInput),
            fail(CircuitOpen),
            Script::Cached,
            fail(Connection),
        ]);
        for _ in 0..5 {
            let _ = call(&b).await;
        }
        assert_eq!(b.state(), CircuitState::Closed);
        // The third failure in a row, with three calls the backend never saw between: it opens.
        assert_eq!(kind(&b).await, Some(Connection));
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(inner.calls(), 6);
    }

    #[tokio::test]
    async fn a_cached_answer_as_the_probe_gives_its_turn_back() {
        let (b, inner, clock) = breaker(vec![fail(StoreErrorKind::Connection); 3]);
        trip(&b).await;
        clock.advance(Duration::from_secs(1));
        inner.push([Script::Cached, Script::Cached]);
        for _ in 0..2 {
            let d = call(&b).await.unwrap();
            assert!(!d.is_allowed() && d.is_cached());
            assert_eq!(b.state(), CircuitState::HalfOpen);
        }
        // Still half-open, no new cool-down: the next call probes, and a real answer closes it.
        assert!(call(&b).await.unwrap().is_backend_answer());
        assert_eq!(b.state(), CircuitState::Closed);
        assert_eq!(b.transitions(), 3); // open, half-open, closed
        assert_eq!(inner.calls(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_probe_gives_its_turn_back() {
        let (b, inner, clock) = breaker(vec![fail(StoreErrorKind::Connection); 3]);
        trip(&b).await;
        clock.advance(Duration::from_secs(1));
        inner.push([Script::Hang]);
        let gave_up = tokio::time::timeout(Duration::from_millis(5), call(&b)).await;
        assert!(gave_up.is_err());
        assert_eq!(inner.live(), 0);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        // No new cool-down: the next call is the probe.
        assert!(call(&b).await.is_ok());
        assert_eq!(b.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn results_of_calls_let_through_before_a_transition_are_ignored() {
        use StoreErrorKind::Connection;
        // Two slow calls are in flight when three fast failures open the breaker; their late
        // answers must not close it.
        let (b, inner, _) = breaker([
            Script::AllowAfter(Duration::from_millis(10)),
            Script::AllowAfter(Duration::from_millis(10)),
        ]);
        let slow: Vec<_> = (0..2)
            .map(|_| {
                let b = Arc::clone(&b);
                tokio::spawn(async move { call(&b).await.is_ok() })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(inner.calls(), 2);
        inner.push(vec![fail(Connection); 3]);
        trip(&b).await;
        for h in slow {
            assert!(h.await.unwrap());
        }
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.transitions(), 1);
    }

    #[test]
    fn states_have_stable_names_and_gauge_values() {
        let all = [
            CircuitState::Closed,
            CircuitState::Open,
            CircuitState::HalfOpen,
        ];
        let names: Vec<_> = all.iter().map(|s| s.to_string()).collect();
        assert_eq!(names, ["closed", "open", "half_open"]);
        let gauges: Vec<_> = all.iter().map(|s| s.as_gauge()).collect();
        assert_eq!(gauges, [0.0, 1.0, 2.0]);
    }

    #[tokio::test]
    async fn refunds_count_failures_and_fail_fast_while_open() {
        let (b, inner, _clock) = breaker(vec![fail(StoreErrorKind::Connection); 3]);
        let charge = crate::Charge::new(NonZeroU32::MIN);
        for _ in 0..3 {
            let err = b.refund("k", &limits(10), charge).await.unwrap_err();
            assert_eq!(err.kind(), StoreErrorKind::Connection);
        }
        // Three refunds failed: open, and a refund (or a check) never reaches the store.
        assert_eq!(b.state(), CircuitState::Open);
        let err = b.refund("k", &limits(10), charge).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::CircuitOpen);
        assert_eq!(kind(&b).await, Some(StoreErrorKind::CircuitOpen));
        assert_eq!(inner.calls(), 3);
        assert!(b.try_refund_now("k", &limits(10), charge).is_none());
    }
}

//! [`Fallback`]: decide locally, on a per-instance share of the quota, while the primary store
//! cannot.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::clock::{Clock, SystemClock};
use crate::decision::Decision;
use crate::error::{ConfigError, StoreError};
use crate::limit::Limit;
use crate::quota::Quota;
use crate::store::{BoxFuture, Charge, Store};

use super::log::Failure;
use crate::logging::Throttle;

/// Which store made a decision; see [`Fallback::check_traced`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecidedBy {
    /// The primary (shared) store.
    Primary,
    /// The local store, on the local limits, because the primary failed.
    Local,
}

impl DecidedBy {
    /// `primary` or `local`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Local => "local",
        }
    }
}

type MapLimits = dyn Fn(&[Limit]) -> Vec<Limit> + Send + Sync;

/// Asks the primary store first; when it fails with an infrastructure error or a
/// [`CircuitOpen`](crate::StoreErrorKind::CircuitOpen), decides with the local store on the
/// local limits instead. Every call tries the primary again, so decisions go back to it as soon
/// as it answers (with a breaker inside: as soon as the breaker closes).
///
/// # The local quota
///
/// `instances` instances share the quota through the primary; while it is away, each one
/// decides alone, so each admits a share ([`local_share`]): every limit's `limit` and `burst`
/// divided by `instances`, rounded down, over the same period and with the same algorithm.
/// Together the instances then admit at most the quota, never `instances` times it. Replace the
/// rule with [`local_limits`](Self::local_limits).
///
/// A limit below `instances` (or a bucket's burst below it) cannot be split so: its share
/// would be 0, and is 1 instead, so the instances together admit up to `instances` per period
/// (or hold a burst of `instances`) where the limit says less. Call
/// [`validate_limits`](Self::validate_limits) at start-up to refuse such limits with a
/// [`ConfigError`].
///
/// # Across an outage
///
/// Local state and the primary's are separate: what a client spends locally is never charged
/// to the primary, and local stores know nothing of what it spent there. So across an outage a
/// client gets, at most, what the primary admits as if the outage had not happened (what it
/// spent there before, plus what the primary admits after), plus what the local stores admit
/// together during the outage, at most one more quota. For a limit of `q` per period `P` (a
/// burst `b` for buckets), with validated shares:
///
/// - token bucket, leaky bucket, GCRA: in any interval of length `d`, at most `b + q·d/P`
///   from the primary (its bucket refills during the outage as if nothing were spent) plus
///   `b + q·d′/P` from the local stores, `d′ ≤ d` being the part of the interval from the
///   first local decision to the last (their buckets start full);
/// - fixed window, sliding window counter: at most `2q` per window aligned to the epoch (`q`
///   on the primary, `q` across the shares), so up to `4q` in one period straddling a window
///   edge (a sliding window counter: fewer than `4q`);
/// - sliding window log: at most `2q` in any window of one period.
///
/// Outside the periods that overlap local decisions, only the primary decides, and its
/// guarantees hold as they are. Local state is not cleared when the primary returns: a later
/// outage continues from it.
///
/// # Marking local decisions
///
/// A local [`Decision`] carries the limits it was made on ([`Decision::local_limits`]): its
/// snapshots describe this instance's share, and so do the response headers the tower layer
/// writes from it (`X-RateLimit-Limit` and `RateLimit-Policy` alike). A circuit breaker around
/// a `Fallback` does not take it for the backend's answer. [`check_traced`](Self::check_traced)
/// also returns a [`DecidedBy`], [`local_decisions`](Self::local_decisions) counts local checks,
/// and each one increments the counter `ratelimit_fallback_decisions_total` (labels `backend`,
/// the primary's name, and `outcome`, `allowed` or `denied`).
///
/// The first failure of the primary is logged at WARN, with its cause chain, and its next
/// answer from the backend at INFO (a cached answer does not end local decisions); see the
/// [module docs](super#logs).
///
/// Other errors of the primary ([`InvalidInput`](crate::StoreErrorKind::InvalidInput)) are
/// returned as they are: the local store could not serve that call either. Errors of the local
/// store are returned as they are.
///
/// [`backend`](Store::backend) is the primary's name, so that metrics by backend do not split
/// during an outage; count local decisions with the counter above.
pub struct Fallback<P, L, C = SystemClock> {
    primary: P,
    local: L,
    instances: NonZeroU32,
    map: Option<Arc<MapLimits>>,
    local_decisions: AtomicU64,
    clock: C,
    /// Whether the local store decides: from the primary's first failure to its next answer.
    deciding_locally: AtomicBool,
    episode: Mutex<Episode>,
    /// Starts of local episodes, which repeat while the primary flaps.
    episode_log: Throttle,
}

/// A stretch of local decisions, from the primary's failure to its next answer.
#[derive(Default)]
struct Episode {
    /// Clock nanoseconds.
    started_at: u64,
    /// `local_decisions` when it started.
    decisions_before: u64,
    failure: Failure,
    /// Whether its start was logged, so that its end is too.
    logged: bool,
}

impl<P: Store, L> Fallback<P, L> {
    /// Decides with `primary`, or with `local` on `1/instances` of each quota while `primary`
    /// fails.
    ///
    /// Describes its metric to the recorder installed now, and creates its series for the
    /// primary's backend at 0.
    ///
    /// `instances` is a plain `u32` or a `NonZeroU32` (see [`Count`](crate::Count)).
    ///
    /// # Panics
    ///
    /// If `instances` is a plain `0` (a number read from configuration is checked with
    /// `NonZeroU32::new` or `NonZeroU32::try_from` first).
    #[track_caller]
    pub fn new(primary: P, local: L, instances: impl crate::Count) -> Self {
        let instances = crate::quota::nonzero_or_panic("instances", instances);
        super::register_fallback_series(primary.backend());
        Self {
            primary,
            local,
            instances,
            map: None,
            local_decisions: AtomicU64::new(0),
            clock: SystemClock::new(),
            deciding_locally: AtomicBool::new(false),
            episode: Mutex::new(Episode::default()),
            episode_log: Throttle::new(super::LOG_INTERVAL),
        }
    }
}

impl<P, L, C> Fallback<P, L, C> {
    /// Reads time from `clock` (a [`ManualClock`](crate::ManualClock) in tests): only to date
    /// and space out the events it logs.
    pub fn clock<C2: Clock>(self, clock: C2) -> Fallback<P, L, C2> {
        Fallback {
            primary: self.primary,
            local: self.local,
            instances: self.instances,
            map: self.map,
            local_decisions: self.local_decisions,
            clock,
            deciding_locally: self.deciding_locally,
            episode: self.episode,
            episode_log: self.episode_log,
        }
    }

    /// Replaces the rule that turns the limits of a call into the local limits (by default,
    /// each quota divided by `instances`).
    #[must_use]
    pub fn local_limits(
        mut self,
        map: impl Fn(&[Limit]) -> Vec<Limit> + Send + Sync + 'static,
    ) -> Self {
        self.map = Some(Arc::new(map));
        self
    }

    /// Whether the local limits for `limits` keep the fleet within them: call it at start-up
    /// with every limit the application uses. With the default rule, each limit's share must
    /// not round down to 0 (see [`local_share`]); a custom [`local_limits`](Self::local_limits)
    /// rule is the application's own, and is not checked.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use rate_limit_core::{Algorithm, Limit, MemoryStore, Quota};
    /// use rate_limit_core::resilience::Fallback;
    ///
    /// let ten = NonZeroU32::new(10).unwrap();
    /// let store = Fallback::new(MemoryStore::new(), MemoryStore::new(), ten);
    /// let hourly = |n| Limit::new(Quota::per_hour(n), Algorithm::Gcra);
    /// assert!(store.validate_limits(&[hourly(100)]).is_ok());
    /// let err = store.validate_limits(&[hourly(100), hourly(1)]).unwrap_err();
    /// assert_eq!(err.to_string(), "invalid instances `10`: 1 per 3600s (gcra) cannot be split \
    ///     over 10 instances: each would still admit 1 per 3600s, 10 in all");
    /// ```
    ///
    /// # Errors
    ///
    /// The first limit whose share would round down to 0, naming it and the instance count.
    pub fn validate_limits(&self, limits: &[Limit]) -> Result<(), ConfigError> {
        if self.map.is_some() {
            return Ok(());
        }
        limits
            .iter()
            .try_for_each(|l| local_share(l, self.instances).map(drop))
    }

    /// The number of instances the quota is divided by.
    pub fn instances(&self) -> NonZeroU32 {
        self.instances
    }

    /// The local limits for `limits`. With the default rule, a share that would round down to
    /// 0 is 1 (see [`validate_limits`](Self::validate_limits)).
    pub fn local_limits_for(&self, limits: &[Limit]) -> Vec<Limit> {
        match &self.map {
            Some(map) => map(limits),
            None => limits
                .iter()
                .map(|l| Limit::new(share(l.quota(), self.instances), l.algorithm()))
                .collect(),
        }
    }

    /// How many checks the local store has decided since this was built (peeks not included).
    pub fn local_decisions(&self) -> u64 {
        self.local_decisions.load(Ordering::Relaxed)
    }

    /// The primary store.
    pub fn primary(&self) -> &P {
        &self.primary
    }

    /// The local store.
    pub fn local(&self) -> &L {
        &self.local
    }
}

/// This instance's share of `limit` when `instances` instances share it: the limit and the
/// burst divided by `instances`, rounded down, over the same period and with the same
/// algorithm. What [`Fallback`] decides on by default.
///
/// ```
/// use std::num::NonZeroU32;
/// use rate_limit_core::{Algorithm, Limit, Quota};
/// use rate_limit_core::resilience::local_share;
///
/// let nz = |n| NonZeroU32::new(n).unwrap();
/// let hourly = |n| Limit::new(Quota::per_hour(nz(n)), Algorithm::Gcra);
/// assert_eq!(local_share(&hourly(100), nz(4))?.quota().limit().get(), 25);
/// // 1 per hour cannot be split over 10 instances: each would still admit 1.
/// let err = local_share(&hourly(1), nz(10)).unwrap_err();
/// assert_eq!((err.setting(), err.value()), ("instances", "10"));
/// assert!(err.reason().starts_with("1 per 3600s (gcra) cannot be split over 10 instances"));
/// # Ok::<(), rate_limit_core::ConfigError>(())
/// ```
///
/// # Errors
///
/// The limit, or a bucket algorithm's burst, is below `instances`: a share would round down to
/// 0, and the least a limit can admit is 1, so the instances would admit more together than
/// the limit allows. The error names the limit and the number of instances.
pub fn local_share(limit: &Limit, instances: NonZeroU32) -> Result<Limit, ConfigError> {
    let n = instances.get();
    let quota = limit.quota();
    if quota.limit().get() < n {
        return Err(ConfigError::new(
            "instances",
            n,
            format!(
                "{limit} cannot be split over {n} instances: each would still admit 1 per {:?}, \
                 {n} in all",
                quota.period()
            ),
        ));
    }
    if limit.algorithm().is_bucket() && quota.burst_size().get() < n {
        return Err(ConfigError::new(
            "instances",
            n,
            format!(
                "the burst of {limit} cannot be split over {n} instances: each would still \
                 hold a burst of 1, {n} in all"
            ),
        ));
    }
    Ok(Limit::new(share(quota, instances), limit.algorithm()))
}

/// `quota` with its limit and burst divided by `instances` (rounded down, at least 1).
fn share(quota: &Quota, instances: NonZeroU32) -> Quota {
    let part =
        |n: NonZeroU32| NonZeroU32::new(n.get() / instances.get()).unwrap_or(NonZeroU32::MIN);
    // The period comes from a valid quota, so neither call can fail; if one did, the
    // original quota (or its default burst) is the safe answer.
    let Ok(base) = Quota::with_period(part(quota.limit()), quota.period()) else {
        return *quota;
    };
    base.burst(part(quota.burst_size())).unwrap_or(base)
}

impl<P: Store, L: Store, C: Clock> Fallback<P, L, C> {
    /// As [`check`](Store::check), and which store decided.
    ///
    /// # Errors
    ///
    /// The primary failed with an error that is not an infrastructure failure or an open
    /// circuit, or the local store failed.
    pub async fn check_traced(
        &self,
        key: &str,
        limits: &[Limit],
        cost: NonZeroU32,
    ) -> Result<(Decision, DecidedBy), StoreError> {
        self.decide(key, limits, cost, true).await
    }

    async fn decide(
        &self,
        key: &str,
        limits: &[Limit],
        cost: NonZeroU32,
        charge: bool,
    ) -> Result<(Decision, DecidedBy), StoreError> {
        let primary = if charge {
            self.primary.check(key, limits, cost).await
        } else {
            self.primary.peek(key, limits, cost).await
        };
        match primary {
            Ok(d) => {
                if d.is_backend_answer() && self.deciding_locally.load(Ordering::Acquire) {
                    self.stop_episode();
                }
                return Ok((d, DecidedBy::Primary));
            }
            Err(e) if e.is_infrastructure() || e.is_circuit_open() => {
                if !self.deciding_locally.load(Ordering::Acquire) {
                    self.start_episode(&e);
                }
            }
            Err(e) => return Err(e),
        }
        let local = self.local_limits_for(limits);
        let decision = if charge {
            self.local.check(key, &local, cost).await?
        } else {
            self.local.peek(key, &local, cost).await?
        };
        let decision = decision.mark_local(local);
        if charge {
            self.local_decisions.fetch_add(1, Ordering::Relaxed);
            let outcome = if decision.is_allowed() {
                "allowed"
            } else {
                "denied"
            };
            metrics::counter!(
                super::METRIC_FALLBACK_DECISIONS,
                "backend" => self.primary.backend(),
                "outcome" => outcome
            )
            .increment(1);
        }
        Ok((decision, DecidedBy::Local))
    }

    fn lock_episode(&self) -> std::sync::MutexGuard<'_, Episode> {
        self.episode.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The primary failed while it was deciding: local decisions start.
    fn start_episode(&self, err: &StoreError) {
        let mut episode = self.lock_episode();
        if self.deciding_locally.swap(true, Ordering::AcqRel) {
            return;
        }
        let now = self.clock.now_nanos();
        let held = self.episode_log.pass(now);
        *episode = Episode {
            started_at: now,
            decisions_before: self.local_decisions(),
            failure: Failure::of(err),
            logged: held.is_some(),
        };
        let failure = episode.failure.clone();
        drop(episode);
        if let Some(held) = held {
            tracing::warn!(
                backend = self.primary.backend(),
                instances = self.instances.get(),
                episodes_not_logged = held,
                error = %failure.error,
                cause = %failure.cause,
                "rate limit store failed: deciding locally on this instance's share"
            );
        }
    }

    /// The primary answered while the local store was deciding: local decisions stop.
    fn stop_episode(&self) {
        let mut episode = self.lock_episode();
        if !self.deciding_locally.swap(false, Ordering::AcqRel) {
            return;
        }
        let ended = std::mem::take(&mut *episode);
        drop(episode);
        if ended.logged {
            let local_for = self.clock.now_nanos().saturating_sub(ended.started_at);
            tracing::info!(
                backend = self.primary.backend(),
                local_decisions = self.local_decisions() - ended.decisions_before,
                local_for_ms = local_for / 1_000_000,
                error = %ended.failure.error,
                cause = %ended.failure.cause,
                "rate limit store answers again: local decisions stopped"
            );
        }
    }
}

impl<P: Store, L: Store, C: Clock> Store for Fallback<P, L, C> {
    fn check<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async move { Ok(self.decide(key, limits, cost, true).await?.0) })
    }

    fn peek<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async move { Ok(self.decide(key, limits, cost, false).await?.0) })
    }

    /// Gives the charge back to the store that made it: the local store, on the local limits
    /// ([`local_limits_for`](Self::local_limits_for)), when a local decision charged it
    /// ([`Charge::is_local`]), else the primary. A refund the primary cannot make is an error,
    /// never given to the local store instead: that store was not charged.
    fn refund<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        charge: Charge,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        if !charge.is_local() {
            return self.primary.refund(key, limits, charge);
        }
        Box::pin(async move {
            let local = self.local_limits_for(limits);
            let decision = self.local.refund(key, &local, charge).await?;
            Ok(decision.mark_local(local))
        })
    }

    /// Routed as [`refund`](Store::refund) is; the primary's answer only when it makes no
    /// error (as [`try_check_now`](Store::try_check_now)).
    fn try_refund_now(
        &self,
        key: &str,
        limits: &[Limit],
        charge: Charge,
    ) -> Option<Result<Decision, StoreError>> {
        if !charge.is_local() {
            return self
                .primary
                .try_refund_now(key, limits, charge)
                .filter(Result::is_ok);
        }
        let local = self.local_limits_for(limits);
        let answer = self.local.try_refund_now(key, &local, charge)?;
        Some(answer.map(|d| d.mark_local(local)))
    }

    /// The primary's name.
    fn backend(&self) -> &'static str {
        self.primary.backend()
    }

    /// Asks the primary and the local store: either may have to decide `limit`.
    fn validate(&self, limit: &Limit) -> Result<(), crate::error::ConfigError> {
        self.primary.validate(limit)?;
        self.local.validate(limit)
    }

    /// A decision the primary makes without waiting (its local cache); never the local store's,
    /// which speaks only when the primary cannot.
    fn try_check_now(
        &self,
        key: &str,
        limits: &[Limit],
        cost: NonZeroU32,
    ) -> Option<Result<Decision, StoreError>> {
        self.primary
            .try_check_now(key, limits, cost)
            .filter(Result::is_ok)
    }
}

impl<P: fmt::Debug, L: fmt::Debug, C> fmt::Debug for Fallback<P, L, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("primary", &self.primary)
            .field("local", &self.local)
            .field("instances", &self.instances)
            .field("custom_local_limits", &self.map.is_some())
            .field("local_decisions", &self.local_decisions())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::error::StoreErrorKind;
    use crate::resilience::testing::{Script, Scripted, Switch, limits};
    use crate::store::memory::MemoryStore;
    use crate::{Algorithm, Quota};
    use std::time::Duration;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn local() -> MemoryStore<ManualClock> {
        MemoryStore::builder()
            .clock(ManualClock::new(Duration::from_secs(1_000)))
            .build()
    }

    #[tokio::test]
    async fn decides_locally_on_a_share_of_the_quota_while_the_primary_fails() {
        let primary = Scripted::new(vec![Script::Fail(StoreErrorKind::Connection); 5]);
        let store = Fallback::new(primary, local(), nz(4));
        let l = limits(10);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (d, by) = store.check_traced("k", &l, NonZeroU32::MIN).await.unwrap();
            assert_eq!(by, DecidedBy::Local);
            assert_eq!(d.limit(), 2); // 10 / 4, rounded down
            seen.push(d.is_allowed());
        }
        assert_eq!(seen, [true, true, false, false]);
        let (d, _) = store.check_traced("k", &l, NonZeroU32::MIN).await.unwrap();
        assert_eq!(d.local_limits(), Some(&store.local_limits_for(&l)[..]));
        assert!(!d.is_backend_answer());
        // The primary's own answers are used as soon as it gives them.
        let (d, by) = store.check_traced("k", &l, NonZeroU32::MIN).await.unwrap();
        assert_eq!((by, d.limit()), (DecidedBy::Primary, 10));
        assert!(d.local_limits().is_none());
        assert_eq!(store.local_decisions(), 5);
        assert_eq!(store.backend(), "scripted");
    }

    #[tokio::test]
    async fn falls_back_on_infrastructure_errors_and_open_circuits_only() {
        use StoreErrorKind::{Backend, CircuitOpen, InvalidInput, Timeout};
        let primary = Scripted::new([
            Script::Fail(Timeout),
            Script::Fail(Backend),
            Script::Fail(CircuitOpen),
            Script::Fail(InvalidInput),
            Script::Deny,
        ]);
        let store = Fallback::new(primary, local(), nz(1));
        let l = limits(10);
        for _ in 0..3 {
            assert!(
                store
                    .check("k", &l, NonZeroU32::MIN)
                    .await
                    .unwrap()
                    .is_allowed()
            );
        }
        let err = store.check("k", &l, NonZeroU32::MIN).await.unwrap_err();
        assert_eq!(err.kind(), InvalidInput);
        // A denial from the primary is its answer, not a failure.
        assert!(
            !store
                .check("k", &l, NonZeroU32::MIN)
                .await
                .unwrap()
                .is_allowed()
        );
        assert_eq!(store.local_decisions(), 3);
        assert_eq!(store.local().len(), 1);
    }

    #[tokio::test]
    async fn peeks_fall_back_without_charging_or_counting() {
        let primary = Scripted::new(vec![Script::Fail(StoreErrorKind::Timeout); 3]);
        let store = Fallback::new(primary, local(), nz(5));
        let l = limits(5);
        for _ in 0..2 {
            let d = store.peek("k", &l, NonZeroU32::MIN).await.unwrap();
            assert!(d.is_allowed() && d.limit() == 1);
        }
        assert!(
            store
                .check("k", &l, NonZeroU32::MIN)
                .await
                .unwrap()
                .is_allowed()
        );
        assert_eq!(store.local_decisions(), 1);
    }

    #[test]
    fn the_share_rounds_down_to_at_least_one_and_divides_the_burst() {
        let q = Quota::per_minute(nz(100)).burst(nz(30)).unwrap();
        let l = [Limit::new(q, Algorithm::TokenBucket), limits(2)[0]];
        let store = Fallback::new(Scripted::default(), local(), nz(3));
        let shared = store.local_limits_for(&l);
        assert_eq!(shared[0].quota().limit().get(), 33);
        assert_eq!(shared[0].quota().burst_size().get(), 10);
        assert_eq!(shared[0].quota().period(), Duration::from_secs(60));
        assert_eq!(shared[0].algorithm(), Algorithm::TokenBucket);
        assert_eq!(shared[1].quota().limit().get(), 1);
    }

    #[test]
    fn validate_limits_refuses_a_split_that_would_over_admit() {
        let store = Fallback::new(Scripted::default(), local(), nz(10));
        let hourly = |n| Limit::new(Quota::per_hour(nz(n)), Algorithm::FixedWindow);
        assert!(store.validate_limits(&[hourly(10), hourly(1000)]).is_ok());
        let err = store.validate_limits(&[hourly(10), hourly(9)]).unwrap_err();
        assert_eq!((err.setting(), err.value()), ("instances", "10"));
        assert!(err.reason().contains("9 per 3600s (fixed_window)"), "{err}");
        // A bucket's burst is split too; a window algorithm's is not used.
        let burst = Quota::per_hour(nz(100)).burst(nz(5)).unwrap();
        let err = store
            .validate_limits(&[Limit::new(burst, Algorithm::TokenBucket)])
            .unwrap_err();
        assert!(
            err.reason()
                .starts_with("the burst of 100 per 3600s (burst 5)"),
            "{err}"
        );
        assert!(
            store
                .validate_limits(&[Limit::new(burst, Algorithm::SlidingWindowLog)])
                .is_ok()
        );
        // A custom rule is the application's own.
        let custom =
            Fallback::new(Scripted::default(), local(), nz(10)).local_limits(<[_]>::to_vec);
        assert!(custom.validate_limits(&[hourly(1)]).is_ok());
    }

    #[tokio::test]
    async fn an_unvalidated_split_admits_one_per_instance() {
        // 1 per hour over 10 instances, not validated: each instance admits 1, 10 in all.
        let primary = Arc::new(Scripted::new(vec![
            Script::Fail(StoreErrorKind::Connection);
            20
        ]));
        let fleet: Vec<_> = (0..10)
            .map(|_| Fallback::new(Arc::clone(&primary), local(), nz(10)))
            .collect();
        let hourly = [Limit::new(Quota::per_hour(nz(1)), Algorithm::Gcra)];
        assert!(fleet[0].validate_limits(&hourly).is_err());
        let mut admitted = 0;
        for instance in fleet.iter().chain(&fleet) {
            let d = instance.check("k", &hourly, NonZeroU32::MIN).await.unwrap();
            admitted += u32::from(d.is_allowed());
        }
        assert_eq!(admitted, 10);
    }

    /// One client, two instances, a request every 100 ms alternating between them for 60 s;
    /// the primary (a memory store) is down from 25 s to 35 s. The admissions: when, and
    /// whether locally.
    async fn across_an_outage(limit: Limit) -> Vec<(u64, bool)> {
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let memory = || MemoryStore::builder().clock(clock.clone()).build();
        let primary = Arc::new(Switch::new(memory()));
        let fleet = [
            Fallback::new(Arc::clone(&primary), memory(), nz(2)),
            Fallback::new(Arc::clone(&primary), memory(), nz(2)),
        ];
        let mut admitted = Vec::new();
        for tick in 0..600_u64 {
            primary.set_down((250..350).contains(&tick));
            let instance = &fleet[usize::from(tick % 2 == 1)];
            let (d, by) = instance
                .check_traced("k", &[limit], NonZeroU32::MIN)
                .await
                .unwrap();
            if d.is_allowed() {
                admitted.push((tick * 100, by == DecidedBy::Local));
            }
            clock.advance(Duration::from_millis(100));
        }
        admitted
    }

    /// The most admitted in `[start, start + len)` for any start that is a multiple of `step`
    /// (milliseconds).
    fn most_in(admitted: &[(u64, bool)], len: u64, step: u64) -> usize {
        (0..60_000)
            .step_by(usize::try_from(step).unwrap())
            .map(|start| {
                admitted
                    .iter()
                    .filter(|(t, _)| (start..start + len).contains(t))
                    .count()
            })
            .max()
            .unwrap()
    }

    #[tokio::test]
    async fn across_an_outage_a_client_gets_at_most_one_more_quota() {
        // q = 10 per P = 10 s, burst 10; two instances: shares of 5.
        const P: u64 = 10_000;
        for algorithm in Algorithm::ALL {
            let limit = Limit::new(
                Quota::with_period(nz(10), Duration::from_secs(10)).unwrap(),
                algorithm,
            );
            let admitted = across_an_outage(limit).await;
            let local: Vec<_> = admitted
                .iter()
                .filter(|(_, l)| *l)
                .map(|(t, _)| *t)
                .collect();
            let any_period = most_in(&admitted, P, 100);
            let aligned = most_in(&admitted, P, P);
            let what = format!("{algorithm}: {admitted:?}");
            // The outage gives more than the quota in some period: the extra is real.
            assert!(any_period > 10, "{what}");
            if algorithm.is_bucket() {
                // Primary: b + q·d/P = 20 in any period; local: b + q·d′/P.
                let span = local.last().unwrap() - local.first().unwrap();
                let local_bound = 10 + 10 * span / P;
                assert!(local.len() as u64 <= local_bound, "{what}");
                assert!(any_period <= 40, "{what}");
            } else if algorithm == Algorithm::SlidingWindowLog {
                assert!(any_period <= 20, "{what}");
            } else {
                assert!(aligned <= 20, "{what}");
                assert!(any_period <= 40, "{what}");
            }
            // The shares together keep the quota's own guarantee.
            let local_only: Vec<_> = admitted.iter().filter(|(_, l)| *l).copied().collect();
            let (local_any, local_aligned) =
                (most_in(&local_only, P, 100), most_in(&local_only, P, P));
            match algorithm {
                Algorithm::SlidingWindowLog => assert!(local_any <= 10, "{what}"),
                a if a.is_bucket() => assert!(local_any <= 20, "{what}"),
                _ => assert!(local_aligned <= 10, "{what}"),
            }
        }
    }

    #[test]
    fn a_flapping_primary_logs_one_local_episode_per_interval() {
        use crate::resilience::testing::Capture;
        use tracing::Level;
        let clock = ManualClock::new(Duration::from_secs(1_000));
        // Without a breaker, each failure starts local decisions and each answer stops them.
        let flapping = || [Script::Fail(StoreErrorKind::Timeout), Script::Allow];
        let primary = Scripted::new(flapping().into_iter().cycle().take(20));
        let store = Fallback::new(primary, local(), nz(2)).clock(clock.clone());
        let capture = Capture::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let run = |n| {
            capture.during(|| {
                rt.block_on(async {
                    for _ in 0..n {
                        store
                            .check("k", &limits(100), NonZeroU32::MIN)
                            .await
                            .unwrap();
                    }
                });
            });
        };
        run(10);
        clock.advance(Duration::from_secs(59));
        run(4);
        clock.advance(Duration::from_secs(1));
        run(2);
        let lines = capture.lines();
        let start = "rate limit store failed: deciding locally on this instance's share";
        let stop = "rate limit store answers again: local decisions stopped";
        let expected = [
            (Level::WARN, start.to_owned()),
            (Level::INFO, stop.to_owned()),
            (Level::WARN, start.to_owned()),
            (Level::INFO, stop.to_owned()),
        ];
        assert_eq!(lines, expected);
        let events = capture.events();
        // Six episodes in between were not logged, and the next one says so.
        assert_eq!(events[2].field("episodes_not_logged"), Some("6"));
        assert_eq!(events[0].field("error"), Some("timed out: scripted"));
        assert_eq!(events[1].field("local_decisions"), Some("1"));
        assert_eq!(store.local_decisions(), 8);
    }

    #[test]
    fn a_cached_answer_of_the_primary_does_not_end_local_decisions() {
        use crate::resilience::testing::Capture;
        let primary = Scripted::new([
            Script::Fail(StoreErrorKind::Connection),
            Script::Cached,
            Script::Fail(StoreErrorKind::Connection),
            Script::Allow,
        ]);
        let store = Fallback::new(primary, local(), nz(2));
        let capture = Capture::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let by: Vec<_> = capture.during(|| {
            rt.block_on(async {
                let mut by = Vec::new();
                for _ in 0..4 {
                    let (_, b) = store
                        .check_traced("k", &limits(10), NonZeroU32::MIN)
                        .await
                        .unwrap();
                    by.push(b);
                }
                by
            })
        });
        use DecidedBy::{Local, Primary};
        // The cached denial is the primary's answer, but says nothing of its health.
        assert_eq!(by, [Local, Primary, Local, Primary]);
        let lines: Vec<_> = capture.lines().into_iter().map(|(_, m)| m).collect();
        assert_eq!(
            lines,
            [
                "rate limit store failed: deciding locally on this instance's share",
                "rate limit store answers again: local decisions stopped",
            ]
        );
        assert_eq!(capture.events()[1].field("local_decisions"), Some("2"));
    }

    #[tokio::test]
    async fn a_custom_rule_sets_the_local_limits() {
        let primary = Scripted::new([Script::Fail(StoreErrorKind::Connection)]);
        let store = Fallback::new(primary, local(), nz(2)).local_limits(|_| limits(1).to_vec());
        let d = store
            .check("k", &limits(50), NonZeroU32::MIN)
            .await
            .unwrap();
        assert_eq!(d.limit(), 1);
    }

    #[tokio::test]
    async fn refunds_go_back_to_the_store_that_charged() {
        use crate::Charge;
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let shared = MemoryStore::builder().clock(clock.clone()).build();
        let local = MemoryStore::builder().clock(clock.clone()).build();
        let store = Fallback::new(Switch::new(shared), local, nz(2));
        let l = [Limit::new(Quota::per_minute(nz(4)), Algorithm::FixedWindow)];
        let one = NonZeroU32::MIN;
        // The primary charges 2 of 4; then it is down, and the local store 2 of its 2.
        let (d, by) = store.check_traced("k", &l, nz(2)).await.unwrap();
        assert_eq!((by, d.remaining()), (DecidedBy::Primary, 2));
        let primary_charge = Charge::new(nz(2)).decided_by(&d);
        store.primary().set_down(true);
        let (d, by) = store.check_traced("k", &l, nz(2)).await.unwrap();
        assert_eq!((by, d.remaining(), d.limit()), (DecidedBy::Local, 0, 2));
        let local_charge = Charge::new(one).decided_by(&d);
        assert!(local_charge.is_local() && !primary_charge.is_local());
        // A local charge goes back to the local store, on the local limits, even while the
        // primary is down; the answer is marked local.
        let after = store.refund("k", &l, local_charge).await.unwrap();
        assert_eq!((after.remaining(), after.limit()), (1, 2));
        assert_eq!(after.local_limits(), Some(&store.local_limits_for(&l)[..]));
        let now = store
            .try_refund_now("k", &l, local_charge)
            .unwrap()
            .unwrap();
        assert_eq!(now.remaining(), 2);
        // A primary charge is never given to the local store instead: the error comes back.
        let err = store.refund("k", &l, primary_charge).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Connection);
        assert_eq!(
            store
                .local()
                .peek_now("k", &store.local_limits_for(&l), one)
                .unwrap()
                .remaining(),
            2
        );
        // Up again: the primary gets its charge back.
        store.primary().set_down(false);
        let after = store.refund("k", &l, primary_charge).await.unwrap();
        assert_eq!((after.remaining(), after.limit()), (4, 4));
        assert!(after.local_limits().is_none());
        assert!(store.try_refund_now("k", &l, primary_charge).is_none());
    }
}

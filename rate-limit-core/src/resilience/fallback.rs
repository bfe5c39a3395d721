//! [`Fallback`]: decide locally, on a per-instance share of the quota, while the primary store
//! cannot.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::decision::Decision;
use crate::error::StoreError;
use crate::limit::Limit;
use crate::quota::Quota;
use crate::store::{BoxFuture, Store};

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
/// decides alone, so each admits a share: every limit's `limit` and `burst` divided by
/// `instances`, rounded down and at least 1, over the same period and with the same algorithm.
/// The fleet then admits at most about the quota, never `instances` times it. Replace the rule
/// with [`local_limits`](Self::local_limits).
///
/// Local state starts empty when the primary goes away and is not copied back when it returns:
/// each side keeps its own count.
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
/// Other errors of the primary ([`InvalidInput`](crate::StoreErrorKind::InvalidInput)) are
/// returned as they are: the local store could not serve that call either. Errors of the local
/// store are returned as they are.
///
/// [`backend`](Store::backend) is the primary's name, so that metrics by backend do not split
/// during an outage; count local decisions with the counter above.
pub struct Fallback<P, L> {
    primary: P,
    local: L,
    instances: NonZeroU32,
    map: Option<Arc<MapLimits>>,
    local_decisions: AtomicU64,
}

impl<P, L> Fallback<P, L> {
    /// Decides with `primary`, or with `local` on `1/instances` of each quota while `primary`
    /// fails.
    pub fn new(primary: P, local: L, instances: NonZeroU32) -> Self {
        Self {
            primary,
            local,
            instances,
            map: None,
            local_decisions: AtomicU64::new(0),
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

    /// The local limits for `limits`.
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

impl<P: Store, L: Store> Fallback<P, L> {
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
            Ok(d) => return Ok((d, DecidedBy::Primary)),
            Err(e) if e.is_infrastructure() || e.is_circuit_open() => {}
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
            let outcome = if decision.allowed() {
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
}

impl<P: Store, L: Store> Store for Fallback<P, L> {
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

    /// The primary's name.
    fn backend(&self) -> &'static str {
        self.primary.backend()
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

impl<P: fmt::Debug, L: fmt::Debug> fmt::Debug for Fallback<P, L> {
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
    use crate::Algorithm;
    use crate::clock::ManualClock;
    use crate::error::StoreErrorKind;
    use crate::resilience::testing::{Script, Scripted, limits};
    use crate::store::memory::MemoryStore;
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
            seen.push(d.allowed());
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
                    .allowed()
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
                .allowed()
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
            assert!(d.allowed() && d.limit() == 1);
        }
        assert!(
            store
                .check("k", &l, NonZeroU32::MIN)
                .await
                .unwrap()
                .allowed()
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
}

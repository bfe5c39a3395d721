//! [`Timeout`]: a time budget for every call to the store inside.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::decision::Decision;
use crate::error::{StoreError, StoreErrorKind};
use crate::limit::Limit;
use crate::store::{BoxFuture, Charge, Store};

/// Bounds every call to the store inside by a time budget, given to [`new`](Self::new) as
/// tower's `Timeout` takes its duration ([`DEFAULT_BUDGET`](Self::DEFAULT_BUDGET), 50 ms, is a
/// sensible one).
///
/// A call that has not answered within the budget fails with
/// [`StoreErrorKind::Timeout`], an infrastructure error that a
/// [`CircuitBreaker`](super::CircuitBreaker) counts. No caller waits on a hung or unreachable
/// store for longer than the budget.
///
/// # What a timed-out call did
///
/// On timeout the inner future is dropped, and this wrapper keeps nothing of it: no queue, no
/// retry. Whether the store still acts on the call is the store's business. With Redis, a
/// command already written to the socket (a `MultiplexedConnection` or a `ConnectionManager`)
/// may still be executed by the server when it wakes up: **a timed-out check may or may not
/// have been charged.** It is never retried here, since running the script twice could charge
/// twice. Under a breaker, at most the calls in flight when the breaker opens, and one probe per
/// cool-down, can be left behind like this.
///
/// # Panics
///
/// The timer is Tokio's: the returned futures must be polled inside a Tokio runtime whose time
/// driver is enabled (`enable_time` or `enable_all`), or Tokio panics.
///
/// # Example
///
/// ```
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use rate_limit_core::{Algorithm, Limit, MemoryStore, Quota, Store};
/// use rate_limit_core::resilience::Timeout;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = Timeout::new(MemoryStore::new(), Duration::from_millis(20));
/// assert_eq!(store.budget(), Duration::from_millis(20));
/// let limits = [Limit::new(Quota::per_second(5), Algorithm::Gcra)];
/// assert!(store.check("k", &limits, NonZeroU32::MIN).await.unwrap().is_allowed());
/// # }
/// ```
#[derive(Clone)]
pub struct Timeout<S> {
    inner: S,
    budget: Duration,
}

impl<S> Timeout<S> {
    /// A sensible budget: 50 ms, far above a Redis round trip on a local network and far below
    /// what a user notices.
    pub const DEFAULT_BUDGET: Duration = Duration::from_millis(50);

    /// Wraps `inner`, bounding each of its calls by `budget`.
    pub fn new(inner: S, budget: Duration) -> Self {
        Self { inner, budget }
    }

    /// The time budget of each call.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// The store inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the store inside.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Store> Timeout<S> {
    async fn bounded(
        &self,
        call: BoxFuture<'_, Result<Decision, StoreError>>,
    ) -> Result<Decision, StoreError> {
        match tokio::time::timeout(self.budget, call).await {
            Ok(answer) => answer,
            Err(_elapsed) => Err(StoreError::new(
                StoreErrorKind::Timeout,
                format!(
                    "{} gave no answer within {:?}",
                    self.inner.backend(),
                    self.budget
                ),
            )),
        }
    }
}

impl<S: Store> Store for Timeout<S> {
    fn check<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(self.bounded(self.inner.check(key, limits, cost)))
    }

    fn peek<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(self.bounded(self.inner.peek(key, limits, cost)))
    }

    /// Bounded by the same budget. A refund that times out may or may not have been given
    /// back, and is not sent again: giving back twice would admit more than the quota.
    fn refund<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        charge: Charge,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(self.bounded(self.inner.refund(key, limits, charge)))
    }

    /// The inner store's answer without waiting: it cannot run out of time.
    fn try_refund_now(
        &self,
        key: &str,
        limits: &[Limit],
        charge: Charge,
    ) -> Option<Result<Decision, StoreError>> {
        self.inner.try_refund_now(key, limits, charge)
    }

    /// The inner store's name: a timeout does not change where decisions are made.
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn validate(&self, limit: &Limit) -> Result<(), crate::error::ConfigError> {
        self.inner.validate(limit)
    }

    /// The inner store's answer without waiting: it cannot run out of time.
    fn try_check_now(
        &self,
        key: &str,
        limits: &[Limit],
        cost: NonZeroU32,
    ) -> Option<Result<Decision, StoreError>> {
        self.inner.try_check_now(key, limits, cost)
    }
}

impl<S: fmt::Debug> fmt::Debug for Timeout<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("inner", &self.inner)
            .field("budget", &self.budget)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::testing::{Script, Scripted, limits};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_call_that_never_answers_times_out_at_the_budget() {
        let inner = Arc::new(Scripted::new([Script::Hang]));
        let store = Timeout::new(Arc::clone(&inner), Duration::from_millis(40));
        let start = tokio::time::Instant::now();
        let err = store
            .check("k", &limits(10), NonZeroU32::MIN)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Timeout);
        assert!(err.is_infrastructure());
        assert_eq!(start.elapsed(), Duration::from_millis(40));
        assert_eq!(
            err.to_string(),
            "timed out: scripted gave no answer within 40ms"
        );
        // The hung future was dropped, not left running.
        assert_eq!(inner.live(), 0);
        assert_eq!(inner.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_and_errors_inside_the_budget_pass_through() {
        let inner = Scripted::new([
            Script::AllowAfter(Duration::from_millis(49)),
            Script::Fail(StoreErrorKind::Connection),
            Script::Deny,
        ]);
        let store = Timeout::new(inner, Duration::from_millis(50));
        assert_eq!(store.budget(), Duration::from_millis(50));
        let l = limits(10);
        assert!(
            store
                .check("k", &l, NonZeroU32::MIN)
                .await
                .unwrap()
                .is_allowed()
        );
        let err = store.peek("k", &l, NonZeroU32::MIN).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Connection);
        assert!(
            !store
                .check("k", &l, NonZeroU32::MIN)
                .await
                .unwrap()
                .is_allowed()
        );
        assert_eq!(store.backend(), "scripted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refund_that_never_answers_times_out_at_the_budget() {
        let inner = Arc::new(Scripted::new([Script::Hang]));
        let store = Timeout::new(Arc::clone(&inner), Duration::from_millis(40));
        let charge = Charge::new(NonZeroU32::MIN);
        let err = store.refund("k", &limits(10), charge).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Timeout);
        assert_eq!(inner.live(), 0);
        assert!(store.try_refund_now("k", &limits(10), charge).is_none());
    }
}

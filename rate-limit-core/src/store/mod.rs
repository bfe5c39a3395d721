//! [`Store`]: where decisions are made and state is kept.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::decision::Decision;
use crate::error::{ConfigError, StoreError, StoreErrorKind};
use crate::limit::Limit;

pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

/// A boxed, `Send` future: what [`Store`] methods return, so that stores can be used as
/// `Arc<dyn Store>` and wrapped by other stores.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A charge to give back with [`Store::refund`]: what a check charged, how long ago, and which
/// store decided it.
///
/// ```
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use rate_limit_core::Charge;
///
/// let charge = Charge::new(NonZeroU32::MIN).elapsed(Duration::from_millis(30));
/// assert_eq!(charge.cost().get(), 1);
/// assert_eq!(charge.since(), Duration::from_millis(30));
/// assert!(!charge.is_local());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge {
    cost: NonZeroU32,
    since: Duration,
    local: bool,
}

impl Charge {
    /// A charge of `cost`, made just now by the store itself.
    pub const fn new(cost: NonZeroU32) -> Self {
        Self {
            cost,
            since: Duration::ZERO,
            local: false,
        }
    }

    /// How long before the refund the check that charged was sent. Measure it from *before* the
    /// check was sent: a window algorithm gives back to the window the charge time (the
    /// refund's now less this) falls in, and the sliding window log gives back admissions
    /// logged since it, so an estimate that is early can only give back less, never more than
    /// the charge (see [`Algorithm`](crate::Algorithm#refunds)).
    #[must_use]
    pub const fn elapsed(mut self, since: Duration) -> Self {
        self.since = since;
        self
    }

    /// Records which store decided `decision`, the check's answer: a decision made by a
    /// [`Fallback`](crate::resilience::Fallback)'s local store is given back to that store.
    #[must_use]
    pub fn decided_by(mut self, decision: &Decision) -> Self {
        self.local = decision.local_limits().is_some();
        self
    }

    /// The cost to give back.
    pub const fn cost(&self) -> NonZeroU32 {
        self.cost
    }

    /// How long ago the check was sent.
    pub const fn since(&self) -> Duration {
        self.since
    }

    /// Whether a fallback's local store made the decision.
    pub const fn is_local(&self) -> bool {
        self.local
    }
}

/// Keeps rate-limit state and decides on it.
///
/// Implementations must make several limits all-or-nothing: if one denies, none is charged.
/// A limit listed more than once (the same [`id`](Limit::id): the same quota and algorithm, as
/// when two merged policies name one quota) is one limit with one state: it is decided and
/// charged once per check, and each of its places in the decision gets that answer. Listing it
/// twice never charges it twice.
/// A denial is an `Ok` [`Decision`]; `Err` is for a store that could not decide.
///
/// The `conformance` feature of this crate ships a table of cases that any implementation must
/// pass.
pub trait Store: Send + Sync + 'static {
    /// Decides whether `cost` may be spent now by `key` against every limit, and charges it if so.
    ///
    /// # Errors
    ///
    /// The store could not decide (timeout, lost connection, backend error), or `limits` is empty.
    fn check<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>>;

    /// What [`check`](Store::check) would decide, without charging anything.
    ///
    /// # Errors
    ///
    /// As for [`check`](Store::check).
    fn peek<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>>;

    /// Gives back a [`Charge`] that a [`check`](Store::check) of `key` against `limits` made,
    /// atomically for every limit, never above a limit's capacity (a full bucket, an empty
    /// window). Returns what a [`peek`](Store::peek) of the charge's cost would answer right after
    /// the refund, so that headers can show the budget after it.
    ///
    /// What each algorithm gives back is in [the algorithms' docs](crate::Algorithm).
    ///
    /// The default refuses with [`InvalidInput`](StoreErrorKind::InvalidInput): every store of
    /// this crate implements it.
    ///
    /// # Errors
    ///
    /// As for [`check`](Store::check).
    fn refund<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        charge: Charge,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        let _ = (key, limits, charge);
        let backend = self.backend();
        Box::pin(async move {
            Err(StoreError::new(
                StoreErrorKind::InvalidInput,
                format!("the {backend} store cannot give charges back"),
            ))
        })
    }

    /// A short name of the backend for metrics and status (`memory`, `redis`, ...).
    fn backend(&self) -> &'static str;

    /// Whether this store decides `limit` exactly, to be asked once at start-up for every limit
    /// an application uses (the tower layer's `validate` does), so that a limit the store cannot
    /// honour stops the application with a clear error rather than failing each request (which
    /// a check of such a limit still does, with an
    /// [`InvalidInput`](crate::StoreErrorKind::InvalidInput) error, as a last line).
    ///
    /// The default accepts every limit: [`MemoryStore`](crate::MemoryStore) does. A
    /// [`RedisStore`](crate::RedisStore) refuses what its script cannot count exactly (see its
    /// [exactness](crate::RedisStore#exactness) section); the resilience wrappers ask the store
    /// they wrap.
    ///
    /// ```
    /// use rate_limit_core::{Algorithm, Limit, MemoryStore, Quota, Store};
    ///
    /// let limit = Limit::new(Quota::per_second(10), Algorithm::Gcra);
    /// assert!(MemoryStore::new().validate(&limit).is_ok());
    /// ```
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting `limit` and the limit, with the reason.
    fn validate(&self, limit: &Limit) -> Result<(), ConfigError> {
        let _ = limit;
        Ok(())
    }

    /// [`check`](Store::check) without a future, when the store can decide without waiting:
    /// `Some` with what `check` would have returned (and charged), `None` when the answer needs
    /// I/O, and the caller should call `check`.
    ///
    /// Callers on a hot path (the tower layer) try this first, so that an in-memory store, or a
    /// remote store answering from a local cache, costs no boxed future. The default is `None`.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use rate_limit_core::{Algorithm, Limit, MemoryStore, Quota, Store};
    ///
    /// let store = MemoryStore::new();
    /// let limits = [Limit::new(Quota::per_second(1), Algorithm::Gcra)];
    /// let first = store.try_check_now("k", &limits, NonZeroU32::MIN);
    /// assert!(first.unwrap().unwrap().is_allowed());
    /// let second = store.try_check_now("k", &limits, NonZeroU32::MIN);
    /// assert!(!second.unwrap().unwrap().is_allowed());
    /// ```
    fn try_check_now(
        &self,
        key: &str,
        limits: &[Limit],
        cost: NonZeroU32,
    ) -> Option<Result<Decision, StoreError>> {
        let _ = (key, limits, cost);
        None
    }

    /// [`refund`](Store::refund) without a future, when the store can give back without
    /// waiting: `Some` with what `refund` would have returned (and given back), `None` when it
    /// needs I/O, and the caller should call `refund`. The default is `None`.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use rate_limit_core::{Algorithm, Charge, Limit, MemoryStore, Quota, Store};
    ///
    /// let store = MemoryStore::new();
    /// let limits = [Limit::new(Quota::per_second(1), Algorithm::Gcra)];
    /// let one = NonZeroU32::MIN;
    /// assert!(store.try_check_now("k", &limits, one).unwrap().unwrap().is_allowed());
    /// let after = store.try_refund_now("k", &limits, Charge::new(one));
    /// assert_eq!(after.unwrap().unwrap().remaining(), 1);
    /// ```
    fn try_refund_now(
        &self,
        key: &str,
        limits: &[Limit],
        charge: Charge,
    ) -> Option<Result<Decision, StoreError>> {
        let _ = (key, limits, charge);
        None
    }
}

/// `Store` for a smart pointer to a store: every method forwards to the store it points to.
macro_rules! forward_store {
    ($($pointer:ident),+) => {$(
        impl<S: Store + ?Sized> Store for $pointer<S> {
            fn try_check_now(
                &self,
                key: &str,
                limits: &[Limit],
                cost: NonZeroU32,
            ) -> Option<Result<Decision, StoreError>> {
                (**self).try_check_now(key, limits, cost)
            }

            fn check<'a>(
                &'a self,
                key: &'a str,
                limits: &'a [Limit],
                cost: NonZeroU32,
            ) -> BoxFuture<'a, Result<Decision, StoreError>> {
                (**self).check(key, limits, cost)
            }

            fn peek<'a>(
                &'a self,
                key: &'a str,
                limits: &'a [Limit],
                cost: NonZeroU32,
            ) -> BoxFuture<'a, Result<Decision, StoreError>> {
                (**self).peek(key, limits, cost)
            }

            fn refund<'a>(
                &'a self,
                key: &'a str,
                limits: &'a [Limit],
                charge: Charge,
            ) -> BoxFuture<'a, Result<Decision, StoreError>> {
                (**self).refund(key, limits, charge)
            }

            fn try_refund_now(
                &self,
                key: &str,
                limits: &[Limit],
                charge: Charge,
            ) -> Option<Result<Decision, StoreError>> {
                (**self).try_refund_now(key, limits, charge)
            }

            fn backend(&self) -> &'static str {
                (**self).backend()
            }

            fn validate(&self, limit: &Limit) -> Result<(), ConfigError> {
                (**self).validate(limit)
            }
        }
    )+};
}

forward_store!(Arc, Box);

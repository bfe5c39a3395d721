//! Charging by outcome ([`RateLimitLayer::count_if`]): a request is charged when it is checked,
//! as always, and the charge is given back ([`Store::refund`]) when its response does not count.
//!
//! Everything here runs only when `count_if` is set: without it a request pays a branch in
//! [`Shared::charge`], one in [`After::charging`] and one when its response comes back, and
//! no future grows (a charged decision is boxed in [`After::Charged`], and the charge rides in
//! the request's extensions while a remote store decides).
//!
//! [`Store::refund`]: rate_limit_core::Store::refund

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response, StatusCode, response};
use rate_limit_core::logging::{Causes, Throttle};
use rate_limit_core::{BoxFuture, Charge, Decision, StoreError};
use tracing::Instrument as _;

use crate::config::Shared;
use crate::future::After;
use crate::layer::RateLimitLayer;
use crate::observe::{self, FAILURE_LOG_INTERVAL};
use crate::policy::Policy;

type CountFn = dyn Fn(&response::Parts) -> bool + Send + Sync;

/// The layer's `count_if` setting: which responses count, and the throttle of the logs of
/// refunds that failed.
pub(crate) struct CountIf {
    counts: Box<CountFn>,
    failures: Throttle,
}

impl fmt::Debug for CountIf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountIf").finish_non_exhaustive()
    }
}

/// A decision that charged, with what it charged, until the response says whether it counts.
pub(crate) struct Settling {
    decision: Decision,
    policy: Policy,
    shared: Arc<Shared>,
    charged: Box<Charged>,
}

impl Settling {
    /// The decision alone, for the headers.
    pub(crate) fn decided(self) -> After {
        After::Decided {
            decision: self.decision,
            policy: self.policy,
            shared: self.shared,
        }
    }
}

/// What a check charged, kept until the response says whether it counts.
#[derive(Clone)]
pub(crate) struct Charged {
    /// The store key the check charged.
    key: String,
    cost: NonZeroU32,
    /// The layer's clock before the check was sent.
    sent: Duration,
    /// How long the check took, sent to answered.
    latency: Duration,
}

/// Added to a charge's age besides the check's latency: room for a refund that takes longer to
/// reach the store than the check did.
const REFUND_SLACK: Duration = Duration::from_millis(1);

impl Charged {
    /// How long before a refund sent now the check was sent, to tell the store which window
    /// the charge fell in. The store reads its clock when the refund reaches it, later than
    /// `now`: by a function call for a memory store, by a network trip for a remote one. The
    /// check's own latency and [`REFUND_SLACK`] are added to cover that trip, so that the
    /// estimate errs early, the side on which a store can only give back less
    /// ([`Charge::elapsed`]), and a sliding log finds the entry the check made rather than none.
    fn since(&self, now: Duration) -> Duration {
        now.saturating_sub(self.sent)
            .saturating_add(self.latency)
            .saturating_add(REFUND_SLACK)
    }
}

impl<R> RateLimitLayer<R> {
    /// Charges only the requests whose response `counts` (by its status): the others are given
    /// back to the store once the inner service has answered. For brute-force protection, count
    /// the failed logins and let the successful ones through uncounted:
    /// `.count_if(|status| status == StatusCode::UNAUTHORIZED)`.
    ///
    /// - **Exact under concurrency.** Every request is charged up front, when it is checked, as
    ///   without `count_if`; the charge is refunded after a response that does not count. So
    ///   at most the quota of requests is ever in the inner service or counted, however many
    ///   arrive at once on however many instances: 64 parallel attempts against a quota of 5
    ///   get 5 through and 59 answered 429. (Peeking first and charging after the response
    ///   would let every parallel attempt pass the peek.) The price: while a request that will
    ///   not count is in flight it holds its share, so a request arriving then may be refused
    ///   when the budget is nearly spent.
    /// - **Refused requests** (429, and 400 for a missing key), skipped ones, free ones (cost
    ///   0), shadow-denied and failed-open ones were not charged: nothing is given back.
    /// - **The refund is awaited** before the response is returned: a client that has its
    ///   response can count on its budget being back, and the headers show the budget *after*
    ///   the refund (the store's answer to it, which is also the [`Decision`] in the response's
    ///   extensions). A refund that fails is logged at WARN (at most once per
    ///   [`FAILURE_LOG_INTERVAL`] per layer), counted in `ratelimit_refunds_total` with
    ///   `result="failed"`, and the response is returned anyway, with the headers of the check;
    ///   the charge stays.
    /// - **A charge stays** when the request is cancelled (its future dropped: the client went
    ///   away) before the inner service answered, or when the inner service returns an error:
    ///   there is no response to judge, and a client cannot escape counting by hanging up. A
    ///   request cancelled while its refund is on its way to the store may or may not be given
    ///   back (a remote store may already have it).
    /// - **Time.** The refund gives the charge back to the window it fell in, told by how long
    ///   ago the check was sent, measured with the layer's [clock](Self::clock): give the layer
    ///   the store's clock when it is not the system clock (a `ManualClock` in tests). The age
    ///   sent errs long, by the check's latency and 1 ms, as the refund reaches the store some
    ///   time after it is sent: a fixed or sliding window counter may then give back less, or
    ///   nothing, for a request checked in the first moments of a window, which stays counted
    ///   (never the reverse); a sliding log gives back its newest entries.
    ///
    /// The store must implement [`Store::refund`](crate::Store::refund) (every store of this
    /// crate does).
    ///
    /// ```
    /// use http::{Request, Response, StatusCode};
    /// use tower::{ServiceBuilder, ServiceExt, service_fn};
    /// use tower_ratelimit::{Algorithm, MemoryStore, Quota, RateLimitLayer, key};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let layer = RateLimitLayer::new(MemoryStore::new(), Quota::per_minute(2))
    ///     .algorithm(Algorithm::FixedWindow)
    ///     .key(key::Header::new("x-account"))
    ///     .count_if(|status| status == StatusCode::UNAUTHORIZED);
    /// let login = ServiceBuilder::new().layer(layer).service(service_fn(|req: Request<String>| async move {
    ///     let mut res = Response::new(String::new());
    ///     if req.body() != "right" {
    ///         *res.status_mut() = StatusCode::UNAUTHORIZED;
    ///     }
    ///     Ok::<_, std::convert::Infallible>(res)
    /// }));
    /// let attempt = |password: &str| Request::post("/login").header("x-account", "ann").body(password.to_owned());
    ///
    /// // Successes are given back: the headers show the whole budget.
    /// let res = login.clone().oneshot(attempt("right")?).await?;
    /// assert_eq!(res.headers()["x-ratelimit-remaining"], "2");
    /// // Failures count, up to the quota.
    /// for left in ["1", "0"] {
    ///     let res = login.clone().oneshot(attempt("wrong")?).await?;
    ///     assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    ///     assert_eq!(res.headers()["x-ratelimit-remaining"], left);
    /// }
    /// // Then every attempt is refused, the right password too, until the window frees one.
    /// let res = login.oneshot(attempt("right")?).await?;
    /// assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    /// # Ok(())
    /// # }
    /// ```
    pub fn count_if(self, counts: impl Fn(StatusCode) -> bool + Send + Sync + 'static) -> Self {
        self.count_if_response(move |head: &response::Parts| counts(head.status))
    }

    /// As [`count_if`](Self::count_if), judging the whole response head: its status, headers
    /// and extensions. A handler whose outcome is not in its status can say it in an extension:
    ///
    /// ```
    /// use http::{Request, Response};
    /// use tower::{ServiceBuilder, ServiceExt, service_fn};
    /// use tower_ratelimit::{MemoryStore, Quota, RateLimitLayer};
    ///
    /// /// What the handler adds to a response that should count.
    /// #[derive(Clone)]
    /// struct Suspicious;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let layer = RateLimitLayer::new(MemoryStore::new(), Quota::per_minute(10))
    ///     .count_if_response(|head| head.extensions.get::<Suspicious>().is_some());
    /// let svc = ServiceBuilder::new().layer(layer).service(service_fn(|req: Request<String>| async move {
    ///     let mut res = Response::new(String::new());
    ///     if req.body().contains("' OR 1=1") {
    ///         res.extensions_mut().insert(Suspicious);
    ///     }
    ///     Ok::<_, std::convert::Infallible>(res)
    /// }));
    /// let res = svc.clone().oneshot(Request::new(String::from("hello"))).await?;
    /// assert_eq!(res.headers()["x-ratelimit-remaining"], "10");
    /// let res = svc.oneshot(Request::new(String::from("' OR 1=1 --"))).await?;
    /// assert_eq!(res.headers()["x-ratelimit-remaining"], "9");
    /// # Ok(())
    /// # }
    /// ```
    pub fn count_if_response(
        mut self,
        counts: impl Fn(&response::Parts) -> bool + Send + Sync + 'static,
    ) -> Self {
        Arc::make_mut(&mut self.shared).count_if = Some(Arc::new(CountIf {
            counts: Box::new(counts),
            failures: Throttle::new(FAILURE_LOG_INTERVAL),
        }));
        self
    }
}

impl Shared {
    /// What a check of `key` is about to charge, with `count_if` set; `None` otherwise, at the
    /// cost of one branch. Called before the check is sent, as its time is read here.
    #[inline]
    pub(crate) fn charge(&self, key: &str, cost: NonZeroU32) -> Option<Box<Charged>> {
        self.count_if.as_ref()?;
        Some(self.charge_slow(key, cost))
    }

    #[inline(never)]
    fn charge_slow(&self, key: &str, cost: NonZeroU32) -> Box<Charged> {
        Box::new(Charged {
            key: key.to_owned(),
            cost,
            sent: self.clock.now(),
            latency: Duration::ZERO,
        })
    }

    /// The refund call, owned and traced. The key is never logged.
    fn refund(
        &self,
        key: String,
        policy: Policy,
        charge: Charge,
    ) -> BoxFuture<'static, Result<Decision, StoreError>> {
        let store = Arc::clone(&self.store);
        let span = tracing::debug_span!(
            "ratelimit.refund",
            policy = policy.name(),
            backend = self.backend,
            cost = charge.cost().get()
        );
        Box::pin(async move { store.refund(&key, policy.limits(), charge).await }.instrument(span))
    }

    /// Logs a failed refund at WARN, at most once per [`FAILURE_LOG_INTERVAL`] per layer.
    fn log_refund_failure(&self, count_if: &CountIf, policy: &Policy, err: &StoreError) {
        let now = u64::try_from(self.clock.now().as_nanos()).unwrap_or(u64::MAX);
        if let Some(held) = count_if.failures.pass(now) {
            tracing::warn!(
                policy = policy.name(),
                backend = self.backend,
                failures_not_logged = held,
                error = %err,
                cause = %Causes(err),
                "rate limit refund failed: the charge stays"
            );
        }
    }
}

/// A charge carried in the request's extensions while a store that answers through a future
/// decides, rather than in the state the request waits in, which every request would pay
/// for in size.
#[derive(Clone)]
struct Carried(Box<Charged>);

/// Puts `charge`, if any, in `req` while the check is under way.
#[inline]
pub(crate) fn carry<B>(req: &mut Request<B>, charge: Option<Box<Charged>>) {
    if let Some(charge) = charge {
        req.extensions_mut().insert(Carried(charge));
    }
}

impl Shared {
    /// Takes back what [`carry`] put in `req`, before the inner service sees it.
    #[inline]
    pub(crate) fn carried<B>(&self, req: &mut Request<B>) -> Option<Box<Charged>> {
        self.count_if.as_ref()?;
        req.extensions_mut().remove::<Carried>().map(|c| c.0)
    }
}

/// A charged request's response: ready, or waiting for its charge to be given back.
pub(crate) enum Settled<B> {
    Ready(Response<B>),
    Refunding(Box<Refunding<Response<B>>>),
}

impl After {
    /// Keeps `charge` for the response to judge, if the check charged (allowed the request).
    /// Called as soon as the check has answered.
    #[inline]
    pub(crate) fn charging(self, charge: Option<Box<Charged>>) -> Self {
        match (self, charge) {
            (
                After::Decided {
                    decision,
                    policy,
                    shared,
                },
                Some(mut charged),
            ) if decision.is_allowed() => {
                charged.latency = shared.clock.now().saturating_sub(charged.sent);
                After::Charged(Box::new(Settling {
                    decision,
                    policy,
                    shared,
                    charged,
                }))
            }
            (after, _) => after,
        }
    }

    /// Writes `res`'s headers now if it counts, or starts giving its charge back. Only for an
    /// [`After::Charged`].
    pub(crate) fn settle<B>(self, res: Response<B>) -> Settled<B> {
        let mut res = res;
        let After::Charged(settling) = self else {
            self.apply(&mut res);
            return Settled::Ready(res);
        };
        let Settling {
            decision,
            policy,
            shared,
            charged,
        } = *settling;
        let Some(count_if) = shared.count_if.clone() else {
            After::Decided {
                decision,
                policy,
                shared,
            }
            .apply(&mut res);
            return Settled::Ready(res);
        };
        let (head, body) = res.into_parts();
        let counts = (count_if.counts)(&head);
        let mut res = Response::from_parts(head, body);
        let charge = (!counts).then(|| {
            Charge::new(charged.cost)
                .elapsed(charged.since(shared.clock.now()))
                .decided_by(&decision)
        });
        // A store that gives back in place (memory) costs no future.
        let in_place = charge.and_then(|charge| {
            shared
                .store
                .try_refund_now(&charged.key, policy.limits(), charge)
        });
        let refund = match (charge, &in_place) {
            (Some(charge), None) => Some(shared.refund(charged.key, policy.clone(), charge)),
            _ => None,
        };
        let mut after = After::Decided {
            decision,
            policy,
            shared,
        };
        let Some(refund) = refund else {
            if let Some(result) = in_place {
                after.refunded(&count_if, result);
            }
            after.apply(&mut res);
            return Settled::Ready(res);
        };
        Settled::Refunding(Box::new(Refunding {
            refund,
            count_if,
            response: Some(res),
            after: Some(after),
        }))
    }

    /// Takes the refund's answer: the budget after it for the headers, or, if it failed, a
    /// log line and the check's answer.
    fn refunded(&mut self, count_if: &CountIf, result: Result<Decision, StoreError>) {
        let After::Decided {
            decision,
            policy,
            shared,
        } = self
        else {
            return;
        };
        let backend = shared.backend;
        match result {
            Ok(refunded) => {
                observe::refund(policy, backend, true);
                *decision = refunded;
            }
            Err(err) => {
                observe::refund(policy, backend, false);
                shared.log_refund_failure(count_if, policy, &err);
            }
        }
    }
}

/// A response waiting for its request's charge to be given back.
pub(crate) struct Refunding<T> {
    refund: BoxFuture<'static, Result<Decision, StoreError>>,
    count_if: Arc<CountIf>,
    response: Option<T>,
    after: Option<After>,
}

impl<B> Refunding<Response<B>> {
    /// The response, once the refund is done: with the headers of the budget after it, or of
    /// the check if it failed.
    ///
    /// # Panics
    ///
    /// If polled again after it returned the response.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Response<B>> {
        let result = ready!(self.refund.as_mut().poll(cx));
        let (Some(mut res), Some(mut after)) = (self.response.take(), self.after.take()) else {
            panic!("ResponseFuture polled after completion");
        };
        after.refunded(&self.count_if, result);
        after.apply(&mut res);
        Poll::Ready(res)
    }
}

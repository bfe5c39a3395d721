//! [`ResponseFuture`]: waits for the store, then calls the inner service or answers itself.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Extensions, Request, Response};
use pin_project_lite::pin_project;
use rate_limit_core::{BoxFuture, Decision, StoreError};
use tower_service::Service;

use crate::config::{FailureMode, Shared};
use crate::headers::{set_rate_limit_headers, set_retry_after};
use crate::observe::Outcome;
use crate::outcome::{Refunding, Settled, Settling};
use crate::policy::Policy;
use crate::rejection::{RejectResponse, Rejection, StoreFailure};

/// How long a client is told to wait after a 503 from a failed store.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

pin_project! {
    /// Response future of [`RateLimit`](crate::RateLimit).
    ///
    /// Only the store call is boxed; the inner service's future is polled in place.
    ///
    /// # Panics
    ///
    /// If polled again after it completed, as futures may.
    pub struct ResponseFuture<S, ReqBody, R>
    where
        S: Service<Request<ReqBody>>,
    {
        #[pin]
        state: State<S, ReqBody, R>,
        // Beside the state rather than in `Calling`, so that the inner service's future is
        // moved once, into its place, rather than into a variant and then with it.
        after: Option<After>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqBody, R>
    where
        S: Service<Request<ReqBody>>,
    {
        Checking {
            check: BoxFuture<'static, Result<Decision, StoreError>>,
            pending: Option<Pending<S, ReqBody, R>>,
        },
        Calling {
            #[pin]
            future: S::Future,
        },
        Done {
            response: Option<S::Response>,
        },
        // Only with `count_if`: the response waits for its charge to be given back.
        Refunding {
            refunding: Box<Refunding<S::Response>>,
        },
    }
}

/// What the request needs once the store has decided.
pub(crate) struct Pending<S, ReqBody, R> {
    pub(crate) inner: S,
    pub(crate) req: Request<ReqBody>,
    pub(crate) policy: Policy,
    pub(crate) shared: Arc<Shared>,
    pub(crate) rejection: Arc<R>,
}

/// What the response gets once the inner service has answered.
pub(crate) enum After {
    /// The rate-limit headers for the decision (and the decision, if the layer hands it on).
    Decided {
        decision: Decision,
        policy: Policy,
        shared: Arc<Shared>,
    },
    /// The mark of a store failure the request went through despite.
    Failed(StoreFailure),
    /// With `count_if`: a decision that charged, and what it charged, until the response says
    /// whether it counts (boxed, so that only such requests pay for its size).
    Charged(Box<Settling>),
}

impl After {
    pub(crate) fn apply<B>(self, res: &mut Response<B>) {
        match self {
            Self::Decided {
                decision,
                policy,
                shared,
            } => {
                let clock = &shared.clock;
                set_rate_limit_headers(
                    res.headers_mut(),
                    shared.headers,
                    &policy,
                    &decision,
                    || clock.now(),
                );
                if shared.decision_extensions {
                    res.extensions_mut().insert(decision);
                }
            }
            Self::Failed(failure) => {
                res.extensions_mut().insert(failure);
            }
            Self::Charged(settling) => settling.decided().apply(res),
        }
    }
}

impl<S, ReqBody, R> ResponseFuture<S, ReqBody, R>
where
    S: Service<Request<ReqBody>>,
{
    pub(crate) fn checking(
        check: BoxFuture<'static, Result<Decision, StoreError>>,
        pending: Pending<S, ReqBody, R>,
    ) -> Self {
        let pending = Some(pending);
        Self {
            state: State::Checking { check, pending },
            after: None,
        }
    }

    pub(crate) fn calling(future: S::Future, after: Option<After>) -> Self {
        Self {
            state: State::Calling { future },
            after,
        }
    }

    pub(crate) fn respond(response: S::Response) -> Self {
        let response = Some(response);
        Self {
            state: State::Done { response },
            after: None,
        }
    }
}

impl<S, ReqBody, ResBody, R> Future for ResponseFuture<S, ReqBody, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    R: RejectResponse<ResBody>,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut state = this.state;
        loop {
            match state.as_mut().project() {
                StateProj::Checking { check, pending } => {
                    let result = ready!(check.as_mut().poll(cx));
                    let Some(pending) = pending.take() else {
                        panic!("ResponseFuture polled after completion");
                    };
                    let Pending {
                        mut inner,
                        mut req,
                        policy,
                        shared,
                        rejection,
                    } = pending;
                    let charge = shared.carried(&mut req);
                    let next = match resolve(
                        result,
                        req.extensions_mut(),
                        &policy,
                        &shared,
                        &*rejection,
                    ) {
                        Next::Call(after) => {
                            // Before the call: `charging` times the check.
                            *this.after = after.map(|after| after.charging(charge));
                            State::Calling {
                                future: inner.call(req),
                            }
                        }
                        Next::Respond(response) => State::Done {
                            response: Some(response),
                        },
                    };
                    state.set(next);
                }
                StateProj::Calling { future } => {
                    let mut res = ready!(future.poll(cx))?;
                    if let Some(after) = this.after.take() {
                        if let After::Charged(_) = after {
                            match after.settle(res) {
                                Settled::Ready(res) => return Poll::Ready(Ok(res)),
                                Settled::Refunding(refunding) => {
                                    state.set(State::Refunding { refunding });
                                    continue;
                                }
                            }
                        }
                        after.apply(&mut res);
                    }
                    return Poll::Ready(Ok(res));
                }
                StateProj::Refunding { refunding } => {
                    return Poll::Ready(Ok(ready!(refunding.poll(cx))));
                }
                StateProj::Done { response } => {
                    let Some(res) = response.take() else {
                        panic!("ResponseFuture polled after completion");
                    };
                    return Poll::Ready(Ok(res));
                }
            }
        }
    }
}

/// What the store's answer leads to.
#[allow(
    clippy::large_enum_variant,
    reason = "returned and matched at once; boxing the response would cost an allocation"
)]
pub(crate) enum Next<ResBody> {
    /// Call the inner service with the request; `After`, if any, then writes the response's
    /// headers (and extensions).
    Call(Option<After>),
    /// Answer with this response (429 or 503) without calling the inner service.
    Respond(Response<ResBody>),
}

/// Turns the store's answer into a call of the inner service or a response of our own. Only the
/// request's extensions are borrowed: the request is large, and each move of it is a copy. The policy
/// and the settings are borrowed too, and cloned only into what the response needs: a request
/// that writes no header takes no reference to either.
#[inline]
pub(crate) fn resolve<ResBody, R>(
    result: Result<Decision, StoreError>,
    extensions: &mut Extensions,
    policy: &Policy,
    shared: &Arc<Shared>,
    rejection: &R,
) -> Next<ResBody>
where
    R: RejectResponse<ResBody>,
{
    let backend = shared.backend;
    match result {
        Ok(decision) => {
            let outcome = match (decision.is_allowed(), shared.shadow) {
                (true, _) => Outcome::Allowed,
                (false, true) => Outcome::ShadowDenied,
                (false, false) => Outcome::Denied,
            };
            policy.count(backend, outcome);
            if outcome == Outcome::Denied {
                let mut res = rejection.response(&Rejection::Limited(&decision));
                if let Some(wait) = decision.retry_after() {
                    set_retry_after(res.headers_mut(), wait);
                }
                After::Decided {
                    decision,
                    policy: policy.clone(),
                    shared: Arc::clone(shared),
                }
                .apply(&mut res);
                return Next::Respond(res);
            }
            if shared.decision_extensions {
                extensions.insert(decision.clone());
            } else if shared.quiet() {
                // Nothing to write on the response, nothing to give back.
                return Next::Call(None);
            }
            let after = After::Decided {
                decision,
                policy: policy.clone(),
                shared: Arc::clone(shared),
            };
            Next::Call(Some(after))
        }
        Err(err) => {
            shared.log_failure(policy, &err);
            let failure = StoreFailure::new(&err, backend);
            if shared.failure == FailureMode::Closed {
                policy.count(backend, Outcome::FailedClosed);
                let mut res = rejection.response(&Rejection::StoreUnavailable(&err));
                set_retry_after(res.headers_mut(), UNAVAILABLE_RETRY);
                res.extensions_mut().insert(failure);
                return Next::Respond(res);
            }
            policy.count(backend, Outcome::FailedOpen);
            extensions.insert(failure.clone());
            Next::Call(Some(After::Failed(failure)))
        }
    }
}

impl<S, ReqBody, R> fmt::Debug for ResponseFuture<S, ReqBody, R>
where
    S: Service<Request<ReqBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

//! [`RateLimit`]: the middleware service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use rate_limit_core::{Quota, Store};
use tower_service::Service;

use crate::config::{Planned, Shared};
use crate::future::{Next, Pending, ResponseFuture, resolve};
use crate::layer::RateLimitLayer;
use crate::outcome::carry;
use crate::rejection::{DefaultRejection, RejectResponse, Rejection};

/// Rate-limits the requests to `S`. Built by [`RateLimitLayer`].
///
/// `poll_ready` only forwards to the inner service: the limit is decided in `call`, and a spent
/// budget is a 429 response, never a pending `poll_ready`. Clones share the layer's store.
///
/// The inner service must be `Clone`: the store is asked before the inner service is called, so
/// the service that was polled ready moves into the response future and a clone takes its place
/// (the usual tower pattern; axum's routes and `service_fn` are `Clone`).
///
/// Rate-limit headers are added to the inner service's response; with nested layers the inner
/// layer's legacy headers are kept and the IETF fields list every layer's policies.
#[must_use = "a service does nothing until it is called"]
pub struct RateLimit<S, R = DefaultRejection> {
    inner: S,
    shared: Arc<Shared>,
    rejection: Arc<R>,
}

impl<S> RateLimit<S> {
    /// A layer limiting every client to `quota`; the same as [`RateLimitLayer::new`].
    pub fn layer(store: impl Store, quota: Quota) -> RateLimitLayer {
        RateLimitLayer::new(store, quota)
    }
}

impl<S, R> RateLimit<S, R> {
    pub(crate) fn from_layer(inner: S, layer: &RateLimitLayer<R>) -> Self {
        Self {
            inner,
            shared: Arc::clone(&layer.shared),
            rejection: Arc::clone(&layer.rejection),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, R> Clone for RateLimit<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            rejection: Arc::clone(&self.rejection),
        }
    }
}

impl<S: fmt::Debug, R> fmt::Debug for RateLimit<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("config", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<S, R, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    R: RejectResponse<ResBody>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let (picked, cost, charge, key) = match self.shared.plan_and_check(&parts) {
            // A store that can decide in place (memory, a remote store's deny cache) costs no
            // future, and the inner service that was polled ready is called right away.
            Planned::Decided {
                picked,
                charge,
                result,
            } => {
                let mut req = Request::from_parts(parts, body);
                let policy = picked.as_ref().unwrap_or(&self.shared.policy);
                let rejection = &*self.rejection;
                let next = resolve(
                    result,
                    req.extensions_mut(),
                    policy,
                    &self.shared,
                    rejection,
                );
                return match next {
                    Next::Call(after) => {
                        let after = after.map(|after| after.charging(charge));
                        ResponseFuture::calling(self.inner.call(req), after)
                    }
                    Next::Respond(res) => ResponseFuture::respond(res),
                };
            }
            Planned::Ask {
                picked,
                cost,
                charge,
                key,
            } => (picked, cost, charge, key),
            Planned::Pass | Planned::Admitted => {
                let req = Request::from_parts(parts, body);
                return ResponseFuture::calling(self.inner.call(req), None);
            }
            Planned::MissingKey => {
                self.shared.missing_key(&parts);
                return ResponseFuture::respond(self.rejection.response(&Rejection::MissingKey));
            }
        };
        let mut req = Request::from_parts(parts, body);
        // The service that was polled ready goes with this request; a clone stays for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        carry(&mut req, charge);
        let policy = picked.unwrap_or_else(|| self.shared.policy.clone());
        let check = self.shared.check(key, policy.clone(), cost);
        ResponseFuture::checking(
            check,
            Pending {
                inner,
                req,
                policy,
                shared: Arc::clone(&self.shared),
                rejection: Arc::clone(&self.rejection),
            },
        )
    }
}

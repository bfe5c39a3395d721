//! Rejections: the responses the layer answers with instead of calling the inner service.

use std::sync::Arc;

use http::{Response, StatusCode};
use rate_limit_core::{Decision, StoreError, StoreErrorKind};

/// Why a request was not passed to the inner service.
#[derive(Debug)]
#[non_exhaustive]
pub enum Rejection<'a> {
    /// The budget is spent: `429 Too Many Requests`.
    Limited(&'a Decision),
    /// The store failed and the layer fails closed: `503 Service Unavailable`.
    StoreUnavailable(&'a StoreError),
    /// No key could be extracted and the layer rejects such requests: `400 Bad Request`.
    MissingKey,
}

impl Rejection<'_> {
    /// The status the default response uses: 429, 503 or 400.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::MissingKey => StatusCode::BAD_REQUEST,
        }
    }
}

/// Builds the response for a [`Rejection`].
///
/// The layer adds the rate-limit headers and `Retry-After` to whatever this returns, and puts a
/// [`StoreFailure`] in its extensions (the [`Decision`] too, with
/// [`decision_extensions`](crate::RateLimitLayer::decision_extensions)).
///
/// Implemented for closures `Fn(&Rejection<'_>) -> Response<B>`, which is how a response with a
/// body is made (the layer does not change the body type, so it cannot invent a body of its own):
///
/// ```
/// use http::Response;
/// use tower_ratelimit::{Rejection, RejectResponse};
///
/// let json = |r: &Rejection<'_>| {
///     Response::builder()
///         .status(r.status())
///         .header("content-type", "application/json")
///         .body(String::from(r#"{"error":"rate limited"}"#))
///         .unwrap_or_default()
/// };
/// let res = json.response(&Rejection::MissingKey);
/// assert_eq!(res.status(), 400);
/// ```
pub trait RejectResponse<B>: Send + Sync + 'static {
    /// The response for `rejection`.
    fn response(&self, rejection: &Rejection<'_>) -> Response<B>;
}

impl<B, F> RejectResponse<B> for F
where
    F: Fn(&Rejection<'_>) -> Response<B> + Send + Sync + 'static,
{
    fn response(&self, rejection: &Rejection<'_>) -> Response<B> {
        self(rejection)
    }
}

/// A rejection built by a closure that returns what an axum handler would return (anything that
/// is [`IntoResponse`](axum::response::IntoResponse)): made by
/// [`RateLimitLayer::with_axum_rejection`](crate::RateLimitLayer::with_axum_rejection).
#[cfg(feature = "axum")]
#[derive(Clone, Copy)]
pub struct AxumRejection<F>(pub(crate) F);

#[cfg(feature = "axum")]
impl<F> std::fmt::Debug for AxumRejection<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AxumRejection").finish_non_exhaustive()
    }
}

#[cfg(feature = "axum")]
impl<F, T> RejectResponse<axum::body::Body> for AxumRejection<F>
where
    F: Fn(&Rejection<'_>) -> T + Send + Sync + 'static,
    T: axum::response::IntoResponse,
{
    fn response(&self, rejection: &Rejection<'_>) -> Response<axum::body::Body> {
        axum::response::IntoResponse::into_response((self.0)(rejection))
    }
}

/// The default rejection: the [status](Rejection::status) and an empty body (`B::default()`),
/// as tower-http's middleware do.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultRejection;

impl<B: Default> RejectResponse<B> for DefaultRejection {
    fn response(&self, rejection: &Rejection<'_>) -> Response<B> {
        let mut res = Response::new(B::default());
        *res.status_mut() = rejection.status();
        res
    }
}

/// Put in the response extensions when the store could not decide: the request was let through
/// ([`FailureMode::Open`](crate::FailureMode::Open)) or refused with a 503
/// ([`FailureMode::Closed`](crate::FailureMode::Closed)).
#[derive(Debug, Clone)]
pub struct StoreFailure {
    kind: StoreErrorKind,
    backend: &'static str,
    message: Arc<str>,
}

impl StoreFailure {
    pub(crate) fn new(error: &StoreError, backend: &'static str) -> Self {
        Self {
            kind: error.kind(),
            backend,
            message: Arc::from(error.to_string()),
        }
    }

    /// What kind of failure it was.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The store's backend name (`memory`, `redis`, ...).
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The store error, as text.
    pub fn message(&self) -> &str {
        &self.message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rejection_uses_status_and_empty_body() {
        let res: Response<String> = DefaultRejection.response(&Rejection::MissingKey);
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert!(res.body().is_empty());
        let err = StoreError::new(StoreErrorKind::Timeout, "50ms");
        let res: Response<String> = DefaultRejection.response(&Rejection::StoreUnavailable(&err));
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn store_failure_keeps_kind_and_text() {
        let err = StoreError::new(StoreErrorKind::Connection, "refused");
        let f = StoreFailure::new(&err, "redis");
        assert_eq!(f.kind(), StoreErrorKind::Connection);
        assert_eq!(f.backend(), "redis");
        assert_eq!(f.message(), "connection failed: refused");
    }
}

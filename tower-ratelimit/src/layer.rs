//! [`RateLimitLayer`]: the builder and [`Layer`].

use std::fmt;
use std::sync::Arc;

use http::request::Parts;
use rate_limit_core::{Algorithm, Clock, ConfigError, Limit, Quota, Store, SystemClock};
use tower_layer::Layer;

use crate::config::{FailureMode, MissingKey, Shared};
use crate::headers::{HeaderSettings, HeaderStyle, ResetStyle};
use crate::key::{self, Global, KeyExtractor};
use crate::observe;
use crate::policy::Policy;
use crate::rejection::DefaultRejection;
#[cfg(feature = "axum")]
use crate::rejection::{AxumRejection, Rejection};
use crate::service::RateLimit;

/// The policy name used until [`name`](RateLimitLayer::name) sets one.
const DEFAULT_NAME: &str = "default";

/// Applies rate limiting to a service. See the [crate docs](crate) for an overview.
///
/// Cheap to clone: the settings sit behind an `Arc`, and every service built from the layer (and
/// every clone of those services) shares one store, so they share one budget per key.
///
/// Builder methods consume and return the layer; call them before handing it to a router.
///
/// ```
/// use axum::{Router, body::Body, routing::{get, post}};
/// use http::Request;
/// use rate_limit_core::{Algorithm, MemoryStore, Quota};
/// use tower::ServiceExt;
/// use tower_ratelimit::{RateLimitLayer, key::Header};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = std::sync::Arc::new(MemoryStore::new());
/// let per_client = |n| {
///     RateLimitLayer::new(store.clone(), Quota::per_minute(n))
///         .algorithm(Algorithm::Gcra)
///         .key(Header::new("x-client-id"))
/// };
/// let app = Router::new()
///     // Per route: logins are scarce...
///     .route("/login", post(|| async { "welcome" }).route_layer(per_client(1).name("login")))
///     .route("/items", get(|| async { "items" }))
///     // ...and everything shares a wider budget.
///     .layer(per_client(100).name("api"));
///
/// let login = || Request::post("/login").header("x-client-id", "c1").body(Body::empty()).unwrap();
/// assert_eq!(app.clone().oneshot(login()).await.unwrap().status(), 200);
/// let res = app.clone().oneshot(login()).await.unwrap();
/// assert_eq!(res.status(), 429);
/// assert_eq!(res.headers()["retry-after"], "60");
/// // The denying (inner) layer's legacy headers; both policies in the IETF fields.
/// assert_eq!(res.headers()["x-ratelimit-limit"], "1");
/// let policies: Vec<_> = res.headers().get_all("ratelimit-policy").iter().collect();
/// assert_eq!(policies, [r#""login";q=1;w=60"#, r#""api";q=100;w=60"#]);
/// let items = Request::get("/items").header("x-client-id", "c1").body(Body::empty()).unwrap();
/// let res = app.oneshot(items).await.unwrap();
/// assert_eq!(res.status(), 200);
/// assert_eq!(res.headers()["ratelimit-policy"], r#""api";q=100;w=60"#);
/// # }
/// ```
#[must_use = "a layer does nothing until it wraps a service (`.layer(..)`)"]
pub struct RateLimitLayer<R = DefaultRejection> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) rejection: Arc<R>,
}

impl RateLimitLayer {
    /// Limits every client to `quota`, keyed by [`Global`] until [`key`](Self::key) says
    /// otherwise, with the default algorithm ([`Algorithm::TokenBucket`]).
    pub fn new(store: impl Store, quota: Quota) -> Self {
        Self::build(store, vec![Limit::new(quota, Algorithm::default())])
    }

    /// Enforces every one of `limits` at once (all-or-nothing), each with its own algorithm.
    ///
    /// # Errors
    ///
    /// `limits` is empty.
    pub fn with_limits(
        store: impl Store,
        limits: impl IntoIterator<Item = Limit>,
    ) -> Result<Self, ConfigError> {
        let limits: Vec<Limit> = limits.into_iter().collect();
        let policy = Policy::new(DEFAULT_NAME, limits.iter().copied())?;
        let algorithm = limits
            .first()
            .map_or_else(Algorithm::default, Limit::algorithm);
        Ok(Self::from_parts(store, policy, algorithm))
    }

    fn build(store: impl Store, limits: Vec<Limit>) -> Self {
        let algorithm = Algorithm::default();
        match Policy::new(DEFAULT_NAME, limits) {
            Ok(policy) => Self::from_parts(store, policy, algorithm),
            // A constant name and one limit: cannot fail.
            Err(err) => unreachable!("{err}"),
        }
    }

    fn from_parts(store: impl Store, policy: Policy, algorithm: Algorithm) -> Self {
        observe::describe();
        let backend = store.backend();
        Self {
            shared: Arc::new(Shared {
                store: Arc::new(store),
                backend,
                key: Arc::new(Global),
                key_compact: true,
                algorithm,
                policy,
                policy_fn: None,
                cost: None,
                skip: None,
                headers: HeaderSettings {
                    style: HeaderStyle::default(),
                    reset: ResetStyle::default(),
                },
                decision_extensions: false,
                missing: MissingKey::default(),
                shadow: false,
                failure: FailureMode::default(),
                clock: Arc::new(SystemClock::new()),
                duration_key: Arc::new(observe::store_duration_key(backend)),
                log: Arc::new(observe::LayerLog::new()),
                count_if: None,
            }),
            rejection: Arc::new(DefaultRejection),
        }
    }
}

impl<R> RateLimitLayer<R> {
    fn set(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        f(Arc::make_mut(&mut self.shared));
        self
    }

    fn set_policy(self, name: &str, limits: Vec<Limit>) -> Self {
        match Policy::new(name, limits) {
            Ok(policy) => self.set(|s| s.policy = policy),
            Err(err) => panic!("{err}"),
        }
    }

    /// The policy requests are checked against unless a [policy hook](Self::policy) picks
    /// another.
    pub fn default_policy(&self) -> &Policy {
        &self.shared.policy
    }

    /// Asks the store whether it can decide every limit of the [default
    /// policy](Self::default_policy) exactly ([`Store::validate`]): call it at start-up, so that
    /// a limit the store cannot honour (on Redis, for example, a sliding window counter whose
    /// `limit × period` is too wide for its script) stops the application with an error naming
    /// it, rather than failing every request.
    ///
    /// ```
    /// use rate_limit_core::{MemoryStore, Quota};
    /// use tower_ratelimit::RateLimitLayer;
    ///
    /// let layer = RateLimitLayer::new(MemoryStore::new(), Quota::per_second(1));
    /// layer.validate()?;
    /// # Ok::<(), rate_limit_core::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// The store's [`ConfigError`] for the first limit it refuses.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_policy(&self.shared.policy)
    }

    /// As [`validate`](Self::validate), for a policy a [policy hook](Self::policy) may pick:
    /// call it for each of them at start-up.
    ///
    /// # Errors
    ///
    /// The store's [`ConfigError`] for the first limit of `policy` it refuses.
    pub fn validate_policy(&self, policy: &Policy) -> Result<(), ConfigError> {
        policy
            .limits()
            .iter()
            .try_for_each(|limit| self.shared.store.validate(limit))
    }

    /// Enforces every limit with `algorithm`, including limits added later with
    /// [`limit`](Self::limit).
    pub fn algorithm(self, algorithm: Algorithm) -> Self {
        let limits = self
            .shared
            .policy
            .limits()
            .iter()
            .map(|l| Limit::new(*l.quota(), algorithm))
            .collect();
        let name = self.shared.policy.shared_name().clone();
        self.set(|s| s.algorithm = algorithm)
            .set_policy(&name, limits)
    }

    /// Adds another limit, enforced together with the others (all-or-nothing): e.g. 10 per
    /// second *and* 1000 per hour.
    pub fn limit(self, quota: Quota) -> Self {
        let mut limits = self.shared.policy.limits().to_vec();
        limits.push(Limit::new(quota, self.shared.algorithm));
        let name = self.shared.policy.shared_name().clone();
        self.set_policy(&name, limits)
    }

    /// Names the policy: the IETF `RateLimit-Policy` name, the `policy` metrics label, and the
    /// prefix of store keys. Default `default`.
    ///
    /// # Panics
    ///
    /// If `name` is not 1 to 64 ASCII letters, digits, `-`, `_` or `.` (see [`Policy::new`]).
    /// This is a name fixed in the program; use [`try_name`](Self::try_name) for one read from
    /// configuration.
    #[track_caller]
    pub fn name(self, name: &str) -> Self {
        match self.try_name(name) {
            Ok(layer) => layer,
            Err(err) => panic!("{err}"),
        }
    }

    /// As [`name`](Self::name), for a name read at run time.
    ///
    /// ```
    /// use tower_ratelimit::{MemoryStore, Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::new(MemoryStore::new(), Quota::per_second(5));
    /// let err = layer.try_name("bad name").unwrap_err();
    /// assert_eq!((err.setting(), err.value()), ("policy name", "bad name"));
    /// ```
    ///
    /// # Errors
    ///
    /// `name` is not 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
    pub fn try_name(self, name: &str) -> Result<Self, ConfigError> {
        let policy = Policy::new(name, self.shared.policy.limits().iter().copied())?;
        Ok(self.set(|s| s.policy = policy))
    }

    /// Who requests are charged to (default [`Global`]: one budget for everyone): a
    /// [`KeyExtractor`] from the [`key`](crate::key) module, or a closure whose parameter is
    /// annotated (`|parts: &Parts| ..`). For a closure, [`key_fn`](Self::key_fn) needs no
    /// annotation.
    pub fn key(self, key: impl KeyExtractor) -> Self {
        let compact = key::writes_compact(&key);
        self.set(|s| {
            s.key = Arc::new(key);
            s.key_compact = compact;
        })
    }

    /// Charges requests to the key a closure finds in the request head; `None` is no key (see
    /// [`on_missing_key`](Self::on_missing_key)). The closure's types are inferred.
    ///
    /// ```
    /// use tower_ratelimit::{MemoryStore, Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::new(MemoryStore::new(), Quota::per_second(5))
    ///     .key_fn(|parts| Some(parts.uri.path().to_owned()));
    /// # let _ = layer;
    /// ```
    pub fn key_fn(self, key: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        self.key(key)
    }

    /// Lets the requests for which `skip` returns `true` through unlimited, uncounted and
    /// without rate-limit headers: CORS preflights, health checks, internal callers. The
    /// predicate runs first, before the key is extracted.
    ///
    /// ```
    /// use http::Method;
    /// use tower_ratelimit::{MemoryStore, Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::new(MemoryStore::new(), Quota::per_second(5))
    ///     .skip(|parts| parts.method == Method::OPTIONS || parts.uri.path() == "/healthz");
    /// # let _ = layer;
    /// ```
    pub fn skip(self, skip: impl Fn(&Parts) -> bool + Send + Sync + 'static) -> Self {
        self.set(|s| s.skip = Some(Arc::new(skip)))
    }

    /// How much a request costs (default 1). A cost of 0 lets the request through uncounted.
    pub fn cost(self, cost: impl Fn(&Parts) -> u32 + Send + Sync + 'static) -> Self {
        self.set(|s| s.cost = Some(Arc::new(cost)))
    }

    /// Picks the policy per request from its head and its (compacted) key: per-route limits,
    /// or tiers such as premium API keys. `None` uses the [default policy](Self::default_policy).
    pub fn policy(
        self,
        pick: impl Fn(&Parts, &str) -> Option<Policy> + Send + Sync + 'static,
    ) -> Self {
        self.set(|s| s.policy_fn = Some(Arc::new(pick)))
    }

    /// Which rate-limit headers responses carry (default [`HeaderStyle::Both`]).
    pub fn headers(self, style: HeaderStyle) -> Self {
        self.set(|s| s.headers.style = style)
    }

    /// How `X-RateLimit-Reset` is written (default [`ResetStyle::DeltaSeconds`]).
    pub fn reset(self, style: ResetStyle) -> Self {
        self.set(|s| s.headers.reset = style)
    }

    /// Puts each request's [`Decision`](rate_limit_core::Decision) in the request's extensions,
    /// for the inner service (a handler reads how much budget is left), and in the response's,
    /// for the layers outside this one (a 429 carries the denying decision). Default `false`:
    /// a copy in each map costs an allocation or two per request, about as much as the
    /// decision itself. A [rejection](Self::with_rejection) is handed the decision either way
    /// ([`Rejection::Limited`](crate::Rejection::Limited)), and the rate-limit headers are
    /// written either way.
    ///
    /// ```
    /// use axum::{Router, body::Body, routing::get};
    /// use http::Request;
    /// use tower::ServiceExt;
    /// use tower_ratelimit::{Decision, MemoryStore, Quota, RateLimitLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let left = |req: Request<Body>| async move {
    ///     let decision = req.extensions().get::<Decision>();
    ///     format!("{} left", decision.map_or(0, Decision::remaining))
    /// };
    /// let layer = RateLimitLayer::new(MemoryStore::new(), Quota::per_minute(10))
    ///     .decision_extensions(true);
    /// let app = Router::new().route("/", get(left)).layer(layer);
    /// let res = app.oneshot(Request::get("/").body(Body::empty()).unwrap()).await.unwrap();
    /// assert_eq!(res.extensions().get::<Decision>().map(Decision::remaining), Some(9));
    /// let body = axum::body::to_bytes(res.into_body(), 64).await.unwrap();
    /// assert_eq!(body, "9 left");
    /// # }
    /// ```
    pub fn decision_extensions(self, on: bool) -> Self {
        self.set(|s| s.decision_extensions = on)
    }

    /// What to do when no key can be extracted (default [`MissingKey::Reject`]).
    pub fn on_missing_key(self, missing: MissingKey) -> Self {
        self.set(|s| s.missing = missing)
    }

    /// Shadow mode: decide, charge, count and set headers, but never block a request.
    pub fn shadow(self, shadow: bool) -> Self {
        self.set(|s| s.shadow = shadow)
    }

    /// What to do when the store fails (default [`FailureMode::Open`]).
    pub fn on_store_error(self, mode: FailureMode) -> Self {
        self.set(|s| s.failure = mode)
    }

    /// The clock for Unix-time `X-RateLimit-Reset` values and store latency (default
    /// [`SystemClock`]). Decisions use the store's own clock.
    pub fn clock(self, clock: impl Clock) -> Self {
        self.set(|s| s.clock = Arc::new(clock))
    }

    /// Builds rejection responses (429, 503, 400) with `rejection` instead of an empty body:
    /// a closure `Fn(&Rejection<'_>) -> Response<B>` whose `B` is the inner service's body
    /// type, or any [`RejectResponse`](crate::RejectResponse). In axum,
    /// [`with_axum_rejection`](Self::with_axum_rejection) takes what a handler returns.
    ///
    /// The two are separate methods on purpose: a `Response<B>` is itself `IntoResponse`, so one
    /// method taking both kinds of closure could not tell which conversion a closure means, and
    /// it could no longer infer the closure's argument type (`|rejection| ..` would need
    /// `|rejection: &Rejection<'_>| ..`). `with_axum_rejection` checks its closure where it is
    /// called; this method can check a closure's response type only once the inner service's body
    /// type is known, at `.layer(..)`.
    pub fn with_rejection<R2>(self, rejection: R2) -> RateLimitLayer<R2>
    where
        R2: Send + Sync + 'static,
    {
        RateLimitLayer {
            shared: self.shared,
            rejection: Arc::new(rejection),
        }
    }

    /// Builds rejection responses (429, 503, 400) with a closure that returns what an axum
    /// handler would: anything [`IntoResponse`](axum::response::IntoResponse), such as
    /// `(StatusCode, Json(..))` or `(StatusCode, &str)`. The closure's types are inferred, and a
    /// return type that is not `IntoResponse` is an error here rather than at `.layer(..)`.
    /// Rate-limit headers and `Retry-After` are added to what it returns.
    ///
    /// ```
    /// use axum::{Router, body::Body, routing::get};
    /// use http::{Request, StatusCode};
    /// use tower::ServiceExt;
    /// use tower_ratelimit::{MemoryStore, Quota, RateLimitLayer, Rejection};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = RateLimitLayer::new(MemoryStore::new(), Quota::per_minute(1))
    ///     .with_axum_rejection(|rejection| match rejection {
    ///         Rejection::Limited(_) => (StatusCode::TOO_MANY_REQUESTS, "slow down"),
    ///         _ => (rejection.status(), "try again later"),
    ///     });
    /// let app = Router::new().route("/", get(|| async { "ok" })).layer(layer);
    /// let req = || Request::get("/").body(Body::empty()).unwrap();
    /// app.clone().oneshot(req()).await.unwrap();
    /// let res = app.oneshot(req()).await.unwrap();
    /// assert_eq!(res.status(), 429);
    /// assert_eq!(res.headers()["retry-after"], "60");
    /// let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
    /// assert_eq!(body, "slow down");
    /// # }
    /// ```
    ///
    /// A closure whose return is not a response fails to compile at this call:
    ///
    /// ```compile_fail
    /// use tower_ratelimit::{MemoryStore, Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::new(MemoryStore::new(), Quota::per_minute(1))
    ///     .with_axum_rejection(|_| 42_u8);
    /// ```
    #[cfg(feature = "axum")]
    pub fn with_axum_rejection<F, T>(self, rejection: F) -> RateLimitLayer<AxumRejection<F>>
    where
        F: Fn(&Rejection<'_>) -> T + Send + Sync + 'static,
        T: axum::response::IntoResponse,
    {
        self.with_rejection(AxumRejection(rejection))
    }
}

impl<R> Clone for RateLimitLayer<R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            rejection: Arc::clone(&self.rejection),
        }
    }
}

impl<R> fmt::Debug for RateLimitLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("config", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<S, R> Layer<S> for RateLimitLayer<R> {
    type Service = RateLimit<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::from_layer(inner, self)
    }
}

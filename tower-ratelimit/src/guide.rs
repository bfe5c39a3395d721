//! A short guide: the set-ups most applications need. Docs only; every example runs as a test.
//!
//! # Per-IP plus per-API-key limits
//!
//! Anonymous clients are limited by address, clients with an API key by their key (hashed, so
//! no token reaches the store or the logs). Two layers: the API-key layer lets requests without
//! a key through ([`MissingKey::Skip`](crate::MissingKey::Skip)), and the per-IP layer skips
//! requests that carry one, so each request is charged to exactly one budget.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//! use axum::{Router, body::Body, routing::get};
//! use http::Request;
//! use tower::ServiceExt;
//! use tower_ratelimit::key::{ApiKey, KeyExtractor, PeerIp};
//! use tower_ratelimit::{MemoryStore, MissingKey, Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = Arc::new(MemoryStore::new());
//! let has_key = |parts: &http::request::Parts| ApiKey::new().token(parts).is_some();
//! let per_ip = RateLimitLayer::new(store.clone(), Quota::per_minute(1))
//!     .name("ip")
//!     .key(PeerIp::new())
//!     .skip(has_key);
//! let per_key = RateLimitLayer::new(store, Quota::per_minute(1000))
//!     .name("key")
//!     .key(ApiKey::new())
//!     .on_missing_key(MissingKey::Skip);
//! let app = Router::new().route("/", get(|| async { "ok" })).layer(per_key).layer(per_ip);
//!
//! let from = |token: Option<&str>| {
//!     let mut req = Request::get("/");
//!     if let Some(token) = token {
//!         req = req.header("authorization", format!("Bearer {token}"));
//!     }
//!     let mut req = req.body(Body::empty()).unwrap();
//!     req.extensions_mut().insert(SocketAddr::from(([192, 0, 2, 1], 4000)));
//!     req
//! };
//! assert_eq!(app.clone().oneshot(from(None)).await.unwrap().status(), 200);
//! assert_eq!(app.clone().oneshot(from(None)).await.unwrap().status(), 429);
//! // The same address with a key has a budget of its own.
//! let res = app.oneshot(from(Some("t0k3n"))).await.unwrap();
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.headers()["ratelimit-policy"], r#""key";q=1000;w=60"#);
//! # }
//! ```
//!
//! Tiers (premium keys with a larger quota) are a [policy hook](crate::RateLimitLayer::policy)
//! on the API-key layer, picking a [`Policy`](crate::Policy) built once at start-up.
//!
//! # Brute-force protection on a login route
//!
//! Count failed logins, not logins: five failures per account and twenty per client address
//! in any 15 minutes, with successful logins passing uncounted. Each budget is a layer with
//! [`count_if`](crate::RateLimitLayer::count_if), which keeps the responses it counts (401
//! here) and gives the others back to the store. Apply them as the *outermost* layers,
//! restricted to the route with [`skip`](crate::RateLimitLayer::skip), so a refused attempt is
//! not charged to the wider limits inside (see [nested layers](#nested-layers)), and the
//! address layer outside the account layer, so an attempt on a locked account (a 429, which
//! does not count) is given back to the address too.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//! use std::time::Duration;
//! use axum::{Router, body::Body, routing::{get, post}};
//! use http::{Method, Request, StatusCode, request::Parts};
//! use tower::ServiceExt;
//! use tower_ratelimit::key::{Header, PeerIp};
//! use tower_ratelimit::{Algorithm, MemoryStore, Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Arc::new(MemoryStore::new());
//! let failed_logins = |name: &str, n: u32| -> Result<RateLimitLayer, tower_ratelimit::ConfigError> {
//!     let quota = Quota::with_period(n, Duration::from_secs(15 * 60))?;
//!     Ok(RateLimitLayer::new(store.clone(), quota)
//!         .name(name)
//!         .algorithm(Algorithm::SlidingWindowLog) // "in any 15 minutes", exactly
//!         .skip(|parts: &Parts| !(parts.method == Method::POST && parts.uri.path() == "/login"))
//!         .count_if(|status| status == StatusCode::UNAUTHORIZED))
//! };
//! let per_account = failed_logins("login-account", 5)?.key(Header::new("x-account"));
//! let per_address = failed_logins("login-ip", 20)?.key(PeerIp::new());
//! let api = RateLimitLayer::new(store, Quota::per_minute(100)).name("api").key(PeerIp::new());
//! let login = |password: String| async move {
//!     if password == "hunter2" { StatusCode::OK } else { StatusCode::UNAUTHORIZED }
//! };
//! let app = Router::new()
//!     .route("/login", post(login))
//!     .route("/", get(|| async { "home" }))
//!     .layer(api)
//!     .layer(per_account)
//!     .layer(per_address); // the last `.layer` is the outermost
//!
//! let attempt = |password: &str| {
//!     let req = Request::post("/login").header("x-account", "ann");
//!     let mut req = req.body(Body::from(password.to_owned())).unwrap();
//!     req.extensions_mut().insert(SocketAddr::from(([192, 0, 2, 7], 4000)));
//!     req
//! };
//! // The `RateLimit` fields list every layer, innermost first: api, account, address.
//! let account = |res: &http::Response<Body>| res.headers().get_all("ratelimit").iter().nth(1).cloned();
//! for failed in 0..5 {
//!     let res = app.clone().oneshot(attempt("hunter2")).await?;
//!     assert_eq!(res.status(), 200);
//!     // Given back: ann still has what she had.
//!     let t = if failed == 0 { 0 } else { 900 };
//!     assert_eq!(account(&res).unwrap(), format!(r#""login-account";r={};t={t}"#, 5 - failed));
//!     let res = app.clone().oneshot(attempt("guess")).await?;
//!     assert_eq!(res.status(), 401);
//!     assert_eq!(account(&res).unwrap(), format!(r#""login-account";r={};t=900"#, 4 - failed));
//! }
//! // Five failures: every attempt is refused, the right password too, until the oldest
//! // failure leaves the window.
//! let res = app.clone().oneshot(attempt("hunter2")).await?;
//! assert_eq!(res.status(), 429);
//! assert_eq!(res.headers()["retry-after"], "900");
//! # Ok(())
//! # }
//! ```
//!
//! How charging by outcome behaves, and why:
//!
//! - **Charged up front, given back after.** Every attempt is charged when it is checked, as
//!   any request is, and the charge is given back ([`Store::refund`](crate::Store::refund))
//!   once the response is known not to count. That is exact under concurrency: the store
//!   admits at most the quota, so 64 parallel wrong passwords against a budget of 5 get 5
//!   password checks and 59 answers 429, on one instance or spread over many sharing Redis.
//!   The other order, peeking before the attempt and charging after a failure, lets every
//!   parallel attempt pass the peek before any failure is charged: all 64 would be checked.
//!   What up-front charging costs: an attempt that will succeed holds its share while it is
//!   in flight, so an attempt arriving at that moment may be refused when the budget is
//!   nearly spent; the success is never counted.
//! - **The response waits for its refund**, so its headers show the budget after it and a
//!   client that has its response has its budget back. A refund that fails (the store went
//!   away after the check) is logged and counted in `ratelimit_refunds_total`, and the
//!   response is returned with the headers of the check: that attempt stays counted.
//! - **Hanging up does not help.** A request whose client goes away before the handler
//!   answers, or whose handler fails with an error, keeps its charge.
//! - **Refused, skipped and failed-open requests** were never charged and are never refunded.
//! - **On Redis** a successful login costs one more round trip, the refund; a failed one
//!   costs nothing more. The [deny cache](crate::RedisStore#deny-cache) of an instance keeps a
//!   denial it saw until the wait Redis announced, even if another instance gives a charge
//!   back meanwhile (a refund through the same store is seen at once): a client refused while
//!   a success of its own was in flight elsewhere can be refused on that instance until then.
//!   Build the login layers' store with `.deny_cache(None)` if that matters.
//!
//! The `login` example (`cargo run --example login`, with `REDIS_URL` for Redis) serves this
//! with accounts from HTTP Basic credentials.
//!
//! # Sharing one store across layers
//!
//! A store is a value: put it in an `Arc` and hand clones to every layer (a `RedisStore` wrapped
//! in a `Timeout`, `CircuitBreaker` and `Fallback` included, as the README shows). Budgets are
//! kept apart by the [policy name](crate::RateLimitLayer::name): store keys are
//! `{policy name}:{client key}`, so two layers with different names never touch each other's
//! budget, and two layers with the *same* name and key share one. Build the store once; one
//! `RedisStore` batches the checks of every layer into the same script calls.
//!
//! # Prometheus, with histogram buckets
//!
//! Install the recorder before building the layers (they describe their metrics when built).
//! `metrics-exporter-prometheus` renders a histogram as a summary unless it is given buckets;
//! give the store latency [`STORE_DURATION_BUCKETS`](crate::observe::STORE_DURATION_BUCKETS),
//! and `ratelimit_store_duration_seconds` is a histogram whose buckets sum across instances:
//!
//! ```
//! use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
//! use tower_ratelimit::observe::{STORE_DURATION_BUCKETS, STORE_DURATION_SECONDS};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let recorder = PrometheusBuilder::new()
//!     .set_buckets_for_metric(
//!         Matcher::Full(STORE_DURATION_SECONDS.to_owned()),
//!         &STORE_DURATION_BUCKETS, // 50 µs to 1 s
//!     )?
//!     .build_recorder(); // an application calls `.install_recorder()?` instead
//! # let _ = recorder.handle().render();
//! # Ok(())
//! # }
//! ```
//!
//! The metrics and their labels are listed in [`observe`](crate::observe). Keys are never
//! labels.
//!
//! # Choosing an algorithm
//!
//! | You want | Use |
//! |---|---|
//! | a steady rate with some burst (most APIs) | [`TokenBucket`](crate::Algorithm::TokenBucket) (the default) or [`Gcra`](crate::Algorithm::Gcra) (the same decisions, one integer of state) |
//! | requests spaced out evenly (logins, expensive calls) | `Gcra` with a burst of 1 ([`Quota::burst`](crate::Quota::burst)) |
//! | "100 per hour" exactly as users read it, in any hour | [`SlidingWindowLog`](crate::Algorithm::SlidingWindowLog): exact, but one entry per admission; for large limits prefer the counter |
//! | close to exact with two counters of state | [`SlidingWindow`](crate::Algorithm::SlidingWindow) |
//! | the cheapest, with windows every instance agrees on | [`FixedWindow`](crate::Algorithm::FixedWindow) (up to twice the limit around a window edge) |
//!
//! Several limits on one layer ([`limit`](crate::RateLimitLayer::limit), e.g. 10 per second and
//! 1000 per hour) are all-or-nothing: a request one of them denies is charged to none.
//!
//! # Nested layers
//!
//! Each layer decides on its own, outside in. **An outer layer is charged when an inner one
//! denies**: the outer layer admitted (and counted) the request before the inner one refused
//! it. In axum the last `.layer(..)` call is the outermost, and a `.route_layer(..)` sits inside
//! the router's layers. So with a wide per-IP limit on the router and a narrow per-route limit
//! on one route, every refused request to that route still spends the per-IP budget:
//!
//! ```
//! use std::sync::Arc;
//! use axum::{Router, body::Body, routing::post};
//! use http::Request;
//! use tower::ServiceExt;
//! use tower_ratelimit::key::Header;
//! use tower_ratelimit::{MemoryStore, Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = Arc::new(MemoryStore::new());
//! let narrow = RateLimitLayer::new(store.clone(), Quota::per_minute(1)).name("narrow");
//! let wide = RateLimitLayer::new(store, Quota::per_minute(10)).name("wide");
//! let (narrow, wide) = (narrow.key(Header::new("x-id")), wide.key(Header::new("x-id")));
//! let app = Router::new()
//!     .route("/send", post(|| async { "sent" }).route_layer(narrow)) // inner
//!     .layer(wide); // outer
//! let send = || Request::post("/send").header("x-id", "c").body(Body::empty()).unwrap();
//! for _ in 0..3 {
//!     app.clone().oneshot(send()).await.unwrap();
//! }
//! // One request got through, yet the outer budget paid for all four.
//! let res = app.oneshot(send()).await.unwrap();
//! assert_eq!(res.status(), 429);
//! let fields: Vec<_> = res.headers().get_all("ratelimit").iter().collect();
//! assert_eq!(fields[1], r#""wide";r=6;t=24"#);
//! # }
//! ```
//!
//! To avoid it, put the layer most likely to deny outermost: apply the narrow limit on the
//! router, restricted to its route with [`skip`](crate::RateLimitLayer::skip), *after* (outside)
//! the wide one, as the [login layers](#brute-force-protection-on-a-login-route) are. A denial
//! there never reaches the wide layer. Or use one layer with several limits or a
//! [policy hook](crate::RateLimitLayer::policy), which decides once, all-or-nothing.

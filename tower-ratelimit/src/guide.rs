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
//! A few attempts per client address, with an algorithm that spaces them out (GCRA: after the
//! burst, one attempt per `period / limit`). Apply it as the *outermost* layer, restricted to
//! the route with [`skip`](crate::RateLimitLayer::skip), so a refused attempt is not charged to
//! the wider limits inside (see [nested layers](#nested-layers)).
//!
//! ```
//! use std::net::SocketAddr;
//! use std::sync::Arc;
//! use axum::{Router, body::Body, routing::{get, post}};
//! use http::{Method, Request};
//! use tower::ServiceExt;
//! use tower_ratelimit::key::PeerIp;
//! use tower_ratelimit::{Algorithm, MemoryStore, Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = Arc::new(MemoryStore::new());
//! let login = RateLimitLayer::new(store.clone(), Quota::per_hour(5))
//!     .name("login")
//!     .algorithm(Algorithm::Gcra)
//!     .key(PeerIp::new())
//!     .skip(|parts| !(parts.method == Method::POST && parts.uri.path() == "/login"));
//! let api = RateLimitLayer::new(store, Quota::per_minute(100)).name("api").key(PeerIp::new());
//! let app = Router::new()
//!     .route("/login", post(|| async { "welcome" }))
//!     .route("/", get(|| async { "home" }))
//!     .layer(api)
//!     .layer(login); // the last `.layer` is the outermost
//!
//! let req = |method: Method, path: &str| {
//!     let mut req = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
//!     req.extensions_mut().insert(SocketAddr::from(([192, 0, 2, 7], 4000)));
//!     req
//! };
//! for _ in 0..5 {
//!     assert_eq!(app.clone().oneshot(req(Method::POST, "/login")).await.unwrap().status(), 200);
//! }
//! let res = app.clone().oneshot(req(Method::POST, "/login")).await.unwrap();
//! assert_eq!(res.status(), 429);
//! assert_eq!(res.headers()["retry-after"], "720"); // one attempt per 12 minutes
//! // The six attempts cost the `api` budget only the five that got through.
//! let res = app.oneshot(req(Method::GET, "/")).await.unwrap();
//! assert_eq!(res.headers()["x-ratelimit-remaining"], "94");
//! # }
//! ```
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
//! the wide one, as the [login example](#brute-force-protection-on-a-login-route) does. A denial
//! there never reaches the wide layer. Or use one layer with several limits or a
//! [policy hook](crate::RateLimitLayer::policy), which decides once, all-or-nothing.

//! Distributed rate limiting as [Tower](https://docs.rs/tower) middleware.
//!
//! Add a [`RateLimitLayer`] to an axum `Router`, a hyper service or any `tower::Service` over
//! `http::Request`s. Every request is charged to a key (a client id, an IP, an API key) in a
//! [`Store`] shared by every instance of the application (in memory here; Redis in production).
//! A spent budget is answered with `429 Too Many Requests` and `Retry-After`; every response
//! carries the remaining budget in headers.
//!
//! This crate is the only one an application needs: it re-exports the stores
//! ([`MemoryStore`], and `RedisStore` with the `redis` feature), the clocks, the errors and, with
//! the `resilience` feature, the [`resilience`] wrappers. The [`guide`] shows the usual set-ups.
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_ratelimit::{ManualClock, MemoryStore, Quota, RateLimitLayer, key};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
//! let store = MemoryStore::builder().clock(clock.clone()).build();
//! let svc = ServiceBuilder::new()
//!     .layer(
//!         RateLimitLayer::new(store, Quota::per_minute(2))
//!             .name("api")
//!             .key(key::Header::new("x-client-id")),
//!     )
//!     .service(service_fn(|_req: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
//!     }));
//!
//! let req = || Request::get("/").header("x-client-id", "alice").body(String::new());
//! let res = svc.clone().oneshot(req()?).await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! assert_eq!(res.headers()["x-ratelimit-limit"], "2");
//! assert_eq!(res.headers()["x-ratelimit-remaining"], "1");
//! assert_eq!(res.headers()["ratelimit-policy"], r#""api";q=2;w=60"#);
//! assert_eq!(res.headers()["ratelimit"], r#""api";r=1;t=30"#);
//!
//! svc.clone().oneshot(req()?).await?;
//! let res = svc.clone().oneshot(req()?).await?;
//! assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(res.headers()["retry-after"], "30");
//!
//! clock.advance(Duration::from_secs(30));
//! assert_eq!(svc.oneshot(req()?).await?.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```
//!
//! In axum, `Router::new().route(..).layer(layer)` limits the whole router and
//! `.route_layer(layer)` on a method router limits one route.
//!
//! # What a request goes through
//!
//! 1. `poll_ready` forwards to the inner service. A limit is never enforced by a pending
//!    `poll_ready`: the decision is made in `call`, and a spent budget is a response.
//! 2. The [key extractor](key::KeyExtractor) finds the key in the request head
//!    ([`key::Global`] by default). With no key, [`MissingKey`] decides: reject with 400 (the
//!    default), skip, or charge a shared key.
//! 3. The [policy hook](RateLimitLayer::policy) may pick another [`Policy`] (per route, per
//!    tier); the [cost](RateLimitLayer::cost) says how much the request spends (0 is free).
//! 4. The store checks every limit of the policy at once, all-or-nothing.
//! 5. Allowed: the inner service is called, and its response gets the headers. Denied: the
//!    inner service is not called; the response is a 429. In [shadow
//!    mode](RateLimitLayer::shadow) a denied request is let through anyway, counted as
//!    `shadow_denied`. With [`decision_extensions`](RateLimitLayer::decision_extensions), the
//!    [`Decision`] goes in the request's extensions and the response's. With
//!    [`count_if`](RateLimitLayer::count_if) (failed logins only, say), a response that does not
//!    count has its charge given back before it is returned.
//! 6. Store failure: [`FailureMode::Open`] lets the request through with a [`StoreFailure`] in
//!    the response extensions; [`FailureMode::Closed`] answers 503 with `Retry-After: 1`.
//!    (Timeouts, a circuit breaker and a local fallback are stores wrapping stores: the layer only
//!    sees a [`Store`].)
//!
//! # Responses
//!
//! The middleware keeps `Error = S::Error` and the body type of the inner service. Like
//! tower-http's middleware, its own responses (429, 503, 400) are built with
//! `ResBody: Default`, i.e. an empty body; to send a body, pass a closure to
//! [`with_rejection`](RateLimitLayer::with_rejection) (see [`RejectResponse`]). Rate-limit
//! headers and `Retry-After` are added to whatever it returns.
//!
//! | Header | Value |
//! |---|---|
//! | `X-RateLimit-Limit` | capacity of the binding limit (burst for buckets) |
//! | `X-RateLimit-Remaining` | what is left of it |
//! | `X-RateLimit-Reset` | seconds until it is full, rounded up ([`ResetStyle::UnixSeconds`] for a Unix time) |
//! | `RateLimit-Policy` | `"api";q=100;w=60`, one list member per limit |
//! | `RateLimit` | `"api";r=42;t=17`, one list member per limit |
//! | `Retry-After` | on 429 and 503: whole seconds, rounded up, never 0 |
//!
//! The IETF fields follow draft-ietf-httpapi-ratelimit-headers and are structured-field lists.
//! With several limits the legacy headers describe the binding one: the denying limit with the
//! longest wait, or the one with the least remaining. Every field describes the limits that
//! decided: while a local fallback decides on this instance's share of the quota
//! ([`Decision::local_limits`]), `RateLimit-Policy` gives that share, as the other fields do.
//! [`HeaderStyle`] picks which are sent. A request whose cost exceeds a limit's capacity gets a
//! 429 without `Retry-After`, since no wait would help.
//!
//! # Keys
//!
//! [`key::Global`], [`key::Header`], [`key::PeerIp`], [`key::ForwardedIp`] (trusted proxies
//! only), [`key::ApiKey`] (hashed with SHA-256), or any closure `Fn(&Parts) -> Option<String>`.
//! Keys longer than [`key::MAX_KEY_LEN`] or with bytes other than visible ASCII are hashed, so
//! every key stays short and no header value can break a store key. Store keys are
//! `{policy name}:{key}`.
//!
//! # Observability
//!
//! Through the [`metrics`](https://docs.rs/metrics) facade: the counter
//! `ratelimit_decisions_total{policy, outcome, backend}` (outcome `allowed`, `denied`,
//! `shadow_denied`, `failed_open`, `failed_closed`, and `missing_key` for a 400 under
//! [`MissingKey::Reject`], counted under the default policy) and the histogram
//! `ratelimit_store_duration_seconds{backend}` (timed with the layer's [clock](RateLimitLayer::clock),
//! for the store calls that wait: a decision made in place, such as a `MemoryStore` check, is
//! [not timed](observe#store-latency)), and with [`count_if`](RateLimitLayer::count_if) the
//! counter `ratelimit_refunds_total{policy, result, backend}`.
//! Each store call runs in a `ratelimit.check` [`tracing`](https://docs.rs/tracing) span. A
//! store failure is logged at WARN with its cause chain, at most once per
//! [`FAILURE_LOG_INTERVAL`](observe::FAILURE_LOG_INTERVAL) (10 s) per layer, counting the
//! failures held back since the last one (`failures_not_logged`); a circuit breaker and a
//! fallback log their own state changes (see `rate_limit_core::resilience`). Keys are never
//! metric labels and never logged.
//!
//! # Features
//!
//! | Feature | Enables |
//! |---|---|
//! | `axum` | [`key::PeerIp`] and [`key::ForwardedIp`] also read axum's `ConnectInfo<SocketAddr>`; [`with_axum_rejection`](RateLimitLayer::with_axum_rejection) takes what an axum handler returns (`IntoResponse`) |
//! | `redis` | `RedisStore`, `RedisStoreBuilder` and `RedisConnection`: one budget per client shared through Redis; the `redis` crate, re-exported |
//! | `cluster` | `RedisStore` over Redis Cluster, and `RebuildingClusterConnection` (implies `redis`) |
//! | `sentinel` | `RedisStore` over Redis Sentinel, and `SentinelConnection` (implies `redis`) |
//! | `tls` | `rediss://` URLs, with rustls (implies `redis`) |
//! | `resilience` | the [`resilience`] module: `Timeout`, `CircuitBreaker`, `Fallback` |
//!
//! Without `axum`, insert the peer's `SocketAddr` into the request extensions in your hyper
//! `service_fn`. docs.rs shows every feature; items that need one say so.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's examples, compiled (and run, unless they serve) as doctests. They need the
/// features they document: `cargo test --workspace --all-features` builds them.
#[cfg(all(doctest, feature = "axum", feature = "redis", feature = "resilience"))]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

mod config;
mod future;
pub mod guide;
pub mod headers;
pub mod key;
mod layer;
pub mod observe;
mod outcome;
mod policy;
mod rejection;
mod service;

pub use config::{FailureMode, MissingKey};
pub use future::ResponseFuture;
pub use headers::{HeaderStyle, ResetStyle};
pub use layer::RateLimitLayer;
pub use policy::Policy;
#[cfg(feature = "axum")]
pub use rejection::AxumRejection;
pub use rejection::{DefaultRejection, RejectResponse, Rejection, StoreFailure};
pub use service::RateLimit;

// Everything an application needs, so that `tower-ratelimit` is its only dependency.
/// The `http` crate whose types this crate's signatures use (`Parts`, `Response`,
/// `HeaderName`, `HeaderMap`); axum re-exports the same as `axum::http`.
pub use http;
/// The engine under this crate (algorithms, stores, clocks), for what the re-exports above leave
/// out.
pub use rate_limit_core;
#[cfg(feature = "cluster")]
pub use rate_limit_core::RebuildingClusterConnection;
#[cfg(feature = "sentinel")]
pub use rate_limit_core::SentinelConnection;
/// Stores that wrap stores: a [`Timeout`](resilience::Timeout), a
/// [`CircuitBreaker`](resilience::CircuitBreaker) and a local [`Fallback`](resilience::Fallback).
/// Re-exported from `rate_limit_core::resilience`.
#[cfg(feature = "resilience")]
pub use rate_limit_core::resilience;
pub use rate_limit_core::{
    Algorithm, BoxFuture, Charge, Clock, ConfigError, Count, Decision, Limit, MAX_SPAN,
    METRIC_MEMORY_STORE_FULL, ManualClock, MemoryStore, MemoryStoreBuilder, Quota, Snapshot, Store,
    StoreError, StoreErrorKind, SystemClock, WhenFull,
};
#[cfg(feature = "redis")]
pub use rate_limit_core::{RedisConnection, RedisStore, RedisStoreBuilder, redis};

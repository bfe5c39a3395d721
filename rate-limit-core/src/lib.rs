//! Rate-limiting algorithms, quotas, clocks and stores, with no HTTP types.
//!
//! This is the engine under [`tower-ratelimit`](https://docs.rs/tower-ratelimit); use it directly
//! to rate-limit anything that is not an HTTP request.
//!
//! - [`Quota`]: `limit` per `period` with a `burst`, which cannot be built invalid.
//! - [`Algorithm`]: six pure transitions in integer ticks (token bucket, leaky bucket, fixed
//!   window, sliding window log, sliding window counter, GCRA).
//! - [`Limit`]: a quota enforced by an algorithm, the unit a store decides on.
//! - [`Store`]: decides and keeps state. [`MemoryStore`] is sharded and bounded.
//! - [`Decision`]: allowed or not, with remaining, reset and retry times for headers.
//! - [`Clock`]: the only place real time is read; [`ManualClock`] for tests.
//! - `resilience` (feature `resilience`): a timeout, a circuit breaker and a local fallback, as
//!   stores that wrap stores.
//!
//! Counts are plain integers or `NonZeroU32` ([`Count`]): `Quota::per_minute(100)`.
//!
//! # Features
//!
//! | Feature | Enables |
//! |---|---|
//! | `redis` | `RedisStore`, `RedisStoreBuilder` and `RedisConnection`, on a single node or any `redis` crate connection; the `redis` crate, re-exported |
//! | `cluster` | `RedisStore` over Redis Cluster (implies `redis`) |
//! | `tls` | `rediss://` URLs, with rustls (implies `redis`) |
//! | `resilience` | the `resilience` module: `Timeout`, `CircuitBreaker`, `Fallback` |
//! | `conformance` | the `conformance` module: a table of cases every `Store` must pass |
//!
//! None is on by default. docs.rs shows every feature; items that need one say so.
//!
//! # Example
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use rate_limit_core::{Algorithm, Limit, ManualClock, MemoryStore, Quota, Store};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
//! let store = MemoryStore::builder().clock(clock.clone()).build();
//! // 10 per second and 100 per hour, both at once.
//! let limits = [
//!     Limit::new(Quota::per_second(10), Algorithm::Gcra),
//!     Limit::new(Quota::per_hour(100), Algorithm::SlidingWindow),
//! ];
//! let cost = NonZeroU32::new(10).unwrap();
//! let d = store.check("client-1", &limits, cost).await.unwrap();
//! assert!(d.is_allowed());
//! let d = store.check("client-1", &limits, NonZeroU32::MIN).await.unwrap();
//! assert!(!d.is_allowed());
//! assert_eq!(d.retry_after(), Some(Duration::from_millis(100)));
//! clock.advance(Duration::from_millis(100));
//! assert!(store.check("client-1", &limits, NonZeroU32::MIN).await.unwrap().is_allowed());
//! # }
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod algorithm;
mod clock;
#[cfg(feature = "conformance")]
pub mod conformance;
mod decision;
mod error;
mod limit;
pub mod logging;
mod quota;
#[cfg(feature = "resilience")]
pub mod resilience;
mod store;

pub use algorithm::{Algorithm, State};
pub use clock::{Clock, ManualClock, SystemClock};
pub use decision::{Decision, Snapshot};
pub use error::{ConfigError, StoreError, StoreErrorKind};
pub use limit::Limit;
pub use quota::{Count, MAX_SPAN, Quota};
/// The `redis` crate this crate was built with: its `Client`, connections and settings are what
/// [`RedisStore::builder`] and [`RedisStore::connect_with`] take.
#[cfg(feature = "redis")]
pub use redis;
pub use store::memory::{METRIC_MEMORY_STORE_FULL, MemoryStore, MemoryStoreBuilder, WhenFull};
#[cfg(feature = "cluster")]
pub use store::redis::RebuildingClusterConnection;
#[cfg(feature = "sentinel")]
pub use store::redis::SentinelConnection;
#[cfg(feature = "redis")]
pub use store::redis::{RedisConnection, RedisStore, RedisStoreBuilder};
pub use store::{BoxFuture, Charge, Store};

/// The per-algorithm state types held inside [`State`]. Opaque: only transitions read them.
pub mod state {
    pub use crate::algorithm::fixed_window::FixedWindowState;
    pub use crate::algorithm::gcra::GcraState;
    pub use crate::algorithm::leaky_bucket::LeakyBucketState;
    pub use crate::algorithm::sliding_window::SlidingWindowState;
    pub use crate::algorithm::sliding_window_log::LogState;
    pub use crate::algorithm::token_bucket::TokenBucketState;
}

//! Distributed rate limiting as Tower middleware.
//!
//! (docs follow)
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod config;
mod future;
pub mod headers;
pub mod key;
mod layer;
pub mod observe;
mod policy;
mod rejection;
mod service;

pub use config::{FailureMode, MissingKey};
pub use future::ResponseFuture;
pub use headers::{HeaderStyle, ResetStyle};
pub use layer::RateLimitLayer;
pub use policy::Policy;
pub use rejection::{DefaultRejection, RejectResponse, Rejection, StoreFailure};
pub use service::RateLimit;

pub use rate_limit_core::{Algorithm, Decision, Limit, Quota, Store, StoreError};

//! A layer's limits are checked against its store at start-up: what the store cannot decide
//! exactly is a `ConfigError` before the first request.

mod common;

use std::time::Duration;

use common::{Double, nz};
use rate_limit_core::{Algorithm, Limit, MemoryStore, Quota};
use tower_ratelimit::{Policy, RateLimitLayer};

/// A store that cannot count spans shorter than a millisecond, as a store with coarse ticks.
fn coarse() -> Double<MemoryStore> {
    Double::new(MemoryStore::new())
        .tick(Duration::from_millis(1))
        .named("coarse")
}

#[test]
fn validate_asks_the_store_about_every_limit() {
    let layer = RateLimitLayer::new(coarse(), Quota::per_second(nz(10)));
    assert!(layer.validate().is_ok());
    // The second limit is the one the store refuses: it is named.
    let fast = Quota::per_second(nz(5_000));
    let err = layer.clone().limit(fast).validate().unwrap_err();
    assert_eq!(err.setting(), "limit");
    assert_eq!(
        err.value(),
        Limit::new(fast, Algorithm::TokenBucket).to_string()
    );
    // Policies a hook may pick are checked the same way.
    let tier = Policy::new("tier", [Limit::new(fast, Algorithm::Gcra)]).unwrap();
    assert!(layer.validate_policy(&tier).is_err());
    let slow = Policy::new(
        "slow",
        [Limit::new(Quota::per_minute(nz(1)), Algorithm::Gcra)],
    );
    assert!(layer.validate_policy(&slow.unwrap()).is_ok());
}

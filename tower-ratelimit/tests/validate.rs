//! A layer's limits are checked against its store at start-up: what the store cannot decide
//! exactly is a `ConfigError` before the first request.

mod common;

use std::num::NonZeroU32;
use std::time::Duration;

use common::nz;
use rate_limit_core::{
    Algorithm, BoxFuture, ConfigError, Decision, Limit, MemoryStore, Quota, Store, StoreError,
};
use tower_ratelimit::{Policy, RateLimitLayer};

/// A store that cannot count spans shorter than a millisecond, as a store with coarse ticks.
struct Coarse(MemoryStore);

impl Store for Coarse {
    fn check<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.0.check(key, limits, cost)
    }

    fn peek<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        self.0.peek(key, limits, cost)
    }

    fn backend(&self) -> &'static str {
        "coarse"
    }

    fn validate(&self, limit: &Limit) -> Result<(), ConfigError> {
        if limit.quota().emission_interval() < Duration::from_millis(1) {
            return Err(ConfigError::new("limit", limit, "below this store's tick"));
        }
        Ok(())
    }
}

#[test]
fn validate_asks_the_store_about_every_limit() {
    let layer = RateLimitLayer::new(Coarse(MemoryStore::new()), Quota::per_second(nz(10)));
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

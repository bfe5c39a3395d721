//! A limit a store cannot decide exactly is refused when the application starts, through every
//! wrapper a deployment puts around the store, not on each request.
#![cfg(all(feature = "redis", feature = "resilience"))]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use rate_limit_core::resilience::{CircuitBreaker, Fallback, Timeout};
use rate_limit_core::{Algorithm, Limit, MemoryStore, Quota, RedisStore, Store};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// A store that never connects: nothing listens on port 1, and validation sends nothing.
fn redis() -> RedisStore {
    RedisStore::connect_lazy("redis://127.0.0.1:1").unwrap()
}

#[tokio::test]
async fn redis_refuses_what_it_cannot_count_through_every_wrapper() {
    let day = Duration::from_secs(86_400);
    // limit x period in µs beyond 2^53: the sliding window counter cannot be exact in Lua.
    let too_wide = Limit::new(
        Quota::with_period(nz(200_000), day).unwrap(),
        Algorithm::SlidingWindow,
    );
    // A window of 1.5 µs cannot be counted in microseconds.
    let odd_window = Limit::new(
        Quota::with_period(nz(3), Duration::from_nanos(1_500)).unwrap(),
        Algorithm::FixedWindow,
    );
    // A billion per second is exact: buckets count in nanoseconds.
    let fast = Limit::new(Quota::per_second(nz(1_000_000_000)), Algorithm::Gcra);

    let stores: Vec<(&str, Arc<dyn Store>)> = vec![
        ("redis", Arc::new(redis())),
        ("boxed", Arc::new(Box::new(redis()) as Box<dyn Store>)),
        (
            "timeout",
            Arc::new(Timeout::new(redis(), Duration::from_millis(50))),
        ),
        (
            "breaker",
            Arc::new(CircuitBreaker::new(Timeout::new(
                redis(),
                Duration::from_millis(50),
            ))),
        ),
        (
            "fallback",
            Arc::new(Fallback::new(
                CircuitBreaker::new(Timeout::new(redis(), Duration::from_millis(50))),
                MemoryStore::new(),
                nz(4),
            )),
        ),
    ];
    for (name, store) in &stores {
        for bad in [too_wide, odd_window] {
            let err = store.validate(&bad).unwrap_err();
            assert_eq!(err.setting(), "limit", "{name}: {err}");
            assert_eq!(err.value(), bad.to_string(), "{name}: {err}");
        }
        assert!(store.validate(&fast).is_ok(), "{name}");
    }
    // Memory counts in nanoseconds and 128-bit products: it takes them all.
    let memory = MemoryStore::new();
    for limit in [too_wide, odd_window, fast] {
        assert!(memory.validate(&limit).is_ok());
    }
}

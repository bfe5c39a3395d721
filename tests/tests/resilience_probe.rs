//! Only Redis can close the breaker: a half-open probe that a `RedisStore` answers without
//! Redis (a deny-cache hit, a limit refused before it is sent) leaves the breaker open, and the
//! next call probes Redis itself.

use std::num::NonZeroU32;
use std::time::Duration;

use integration_tests::{RedisServer, redis_available};
use rate_limit_core::resilience::{CircuitBreaker, CircuitState, Timeout};
use rate_limit_core::{Algorithm, Limit, ManualClock, Quota, RedisStore, Store, StoreErrorKind};
use redis::aio::MultiplexedConnection;

type Guarded = CircuitBreaker<Timeout<RedisStore<MultiplexedConnection>>, ManualClock>;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A breaker (1 s cool-down, on `clock`) around a 500 ms budget around a `RedisStore` on
/// `clock`, whose deny cache is on.
async fn guarded(server: &RedisServer, clock: &ManualClock) -> Guarded {
    let client = redis::Client::open(server.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let store = RedisStore::builder(conn)
        .clock(clock.clone())
        .build()
        .unwrap();
    assert!(store.deny_cache_capacity().is_some());
    CircuitBreaker::new(Timeout::new(store, Duration::from_millis(500)))
        .cool_down(Duration::from_secs(1))
        .clock(clock.clone())
}

/// Kills Redis and opens the breaker with three failed checks of a key nothing is cached for.
async fn kill_and_trip(server: &mut RedisServer, breaker: &Guarded, limits: &[Limit]) {
    server.kill9();
    for _ in 0..3 {
        let err = breaker.check("other", limits, nz(1)).await.unwrap_err();
        assert!(err.is_infrastructure(), "{err}");
    }
    assert_eq!(breaker.state(), CircuitState::Open);
}

#[test]
fn a_deny_cache_hit_as_the_probe_leaves_the_breaker_open_while_redis_is_dead() {
    if !redis_available() {
        return;
    }
    let mut server = RedisServer::start();
    runtime().block_on(async {
        let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
        let breaker = guarded(&server, &clock).await;
        // One per hour: the second check is denied for an hour, and the denial is cached.
        let hourly = [Limit::new(Quota::per_hour(nz(1)), Algorithm::Gcra)];
        assert!(
            breaker
                .check("spent", &hourly, nz(1))
                .await
                .unwrap()
                .is_allowed()
        );
        assert!(
            !breaker
                .check("spent", &hourly, nz(1))
                .await
                .unwrap()
                .is_allowed()
        );
        assert_eq!(breaker.get_ref().get_ref().deny_cache_len(), 1);

        kill_and_trip(&mut server, &breaker, &hourly).await;
        clock.advance(Duration::from_secs(1));
        // The cool-down is over: this check is the probe, and the deny cache answers it.
        let denied = breaker.check("spent", &hourly, nz(1)).await.unwrap();
        assert!(!denied.is_allowed());
        assert_ne!(
            breaker.state(),
            CircuitState::Closed,
            "a deny-cache hit closed the breaker while Redis is dead"
        );
        // The next call probes Redis, finds it dead, and opens the breaker again.
        let err = breaker.check("other", &hourly, nz(1)).await.unwrap_err();
        assert!(err.is_infrastructure(), "{err}");
        assert_eq!(breaker.state(), CircuitState::Open);
        assert_eq!(breaker.current_cool_down(), Duration::from_secs(2));
        // Open: refused without a call, the cached key too.
        let err = breaker.check("spent", &hourly, nz(1)).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::CircuitOpen);
    });
}

#[test]
fn a_limit_refused_before_it_is_sent_as_the_probe_leaves_the_breaker_open() {
    if !redis_available() {
        return;
    }
    let mut server = RedisServer::start();
    runtime().block_on(async {
        let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
        let breaker = guarded(&server, &clock).await;
        let hourly = [Limit::new(Quota::per_hour(nz(1)), Algorithm::Gcra)];
        // A sliding window counter Redis cannot count exactly: refused before any call.
        let day = Duration::from_secs(86_400);
        let huge = Quota::with_period(nz(1_000_000), day).unwrap();
        let unserved = [Limit::new(huge, Algorithm::SlidingWindow)];
        assert!(RedisStore::validate_limit(&unserved[0]).is_err());

        kill_and_trip(&mut server, &breaker, &hourly).await;
        clock.advance(Duration::from_secs(1));
        let err = breaker.check("k", &unserved, nz(1)).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput);
        assert_ne!(
            breaker.state(),
            CircuitState::Closed,
            "a refusal that never reached Redis closed the breaker"
        );
        let err = breaker.check("other", &hourly, nz(1)).await.unwrap_err();
        assert!(err.is_infrastructure(), "{err}");
        assert_eq!(breaker.state(), CircuitState::Open);
    });
}

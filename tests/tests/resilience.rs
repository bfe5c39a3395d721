//! Resilience against real faults: a `RedisStore` (server time, through a reconnecting
//! `ConnectionManager`) behind `Timeout` and `CircuitBreaker`, with and without a local
//! `Fallback`, under steady load from several tasks while the test kills (`SIGKILL`) or pauses
//! (`SIGSTOP`) its own `redis-server`.
//!
//! Each test takes a lock so that they run one at a time (latency bounds on a shared 2-core
//! machine), and gives its store its own backend name so that the breaker transitions it reads
//! back from the metrics are its own.
#![allow(clippy::disallowed_methods)] // wall-clock latency of each call is what is measured

mod resilience_support;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use integration_tests::{RedisServer, redis_available};
use rate_limit_core::resilience::CircuitState;
use rate_limit_core::{Store, StoreErrorKind};
use resilience_support::*;

/// Kills Redis, keeps the load on for 3 s, restarts it on the same port.
fn kill_for_3s(server: &mut RedisServer) -> Fault<'_> {
    Fault::new(server, |s| s.kill9(), |s| s.restart())
}

/// Pauses Redis (connections stay open, nothing answers) for 3 s, then resumes it.
fn pause_for_3s(server: &mut RedisServer) -> Fault<'_> {
    Fault::new(server, |s| s.pause(), |s| s.resume())
}

/// Starts a server, drives steady load through `fault` in local-fallback or open mode, and prints
/// the report. `None` (with the skip printed) when Redis cannot run here.
fn under_fault(
    local: bool,
    fault: for<'a> fn(&'a mut RedisServer) -> Fault<'a>,
    backend: &'static str,
) -> Option<(Report, RedisServer)> {
    if !redis_available() {
        return None;
    }
    let mut server = RedisServer::start();
    let report = run(async {
        let report = if local {
            let store = local_mode(&server, backend).await;
            drive(Target::Local(&store), fault(&mut server)).await
        } else {
            let store = open_mode(&server, backend).await;
            drive(Target::Open(&store), fault(&mut server)).await
        };
        report.print(backend);
        report
    });
    Some((report, server))
}

/// Local mode: every call decided within the budget, none failed, some locally, the breaker
/// cycled, and Redis deciding again at the end.
fn local_mode_decides_every_call(
    fault: for<'a> fn(&'a mut RedisServer) -> Fault<'a>,
    backend: &'static str,
) {
    let _one_at_a_time = serial();
    let Some((report, server)) = under_fault(true, fault, backend) else {
        return;
    };
    report.assert_bounded_latency();
    assert_eq!(
        report.errors, 0,
        "failed decisions: {:?}",
        report.error_kinds
    );
    assert!(report.local > 0, "no decision was made locally");
    report.assert_local_decisions_counted(backend);
    report.assert_breaker_cycled(backend);
    report.assert_back_on_redis(&server);
}

#[test]
fn kill9_in_local_mode_every_call_is_decided_within_the_budget() {
    local_mode_decides_every_call(kill_for_3s, "redis-kill-local");
}

#[test]
fn sigstop_in_local_mode_every_call_is_decided_within_the_budget() {
    local_mode_decides_every_call(pause_for_3s, "redis-pause-local");
}

#[test]
fn kill9_in_open_mode_errors_are_fast_and_redis_takes_over_again() {
    let _one_at_a_time = serial();
    let Some((report, server)) = under_fault(false, kill_for_3s, "redis-kill-open") else {
        return;
    };
    report.assert_bounded_latency();
    // The middleware would let these through (fail open); at store level they are errors, and
    // most of them are the breaker's immediate refusals.
    assert!(report.errors > 0);
    let open = report
        .error_kinds
        .get(&StoreErrorKind::CircuitOpen)
        .copied();
    assert!(
        open.unwrap_or(0) > report.errors / 2,
        "{:?}",
        report.error_kinds
    );
    report.assert_breaker_cycled("redis-kill-open");
    report.assert_back_on_redis(&server);
}

#[test]
fn sigstop_in_open_mode_errors_are_fast_and_redis_takes_over_again() {
    let _one_at_a_time = serial();
    let Some((report, server)) = under_fault(false, pause_for_3s, "redis-pause-open") else {
        return;
    };
    report.assert_bounded_latency();
    assert!(report.errors > 0);
    // A paused server does not refuse: what reaches it times out.
    assert!(report.error_kinds.contains_key(&StoreErrorKind::Timeout));
    report.assert_breaker_cycled("redis-pause-open");
    report.assert_back_on_redis(&server);
}

#[test]
fn with_redis_down_and_the_breaker_open_calls_fail_at_once() {
    let _one_at_a_time = serial();
    if !redis_available() {
        return;
    }
    let mut server = RedisServer::start();
    run(async {
        let store = open_mode(&server, "redis-down").await;
        let limits = limits();
        assert!(store.check("k", &limits, NonZeroU32::MIN).await.is_ok());
        server.kill9();
        // The failures that open it: each within the budget.
        let mut tripping = Vec::new();
        while store.state() == CircuitState::Closed {
            let start = Instant::now();
            let err = store
                .check("k", &limits, NonZeroU32::MIN)
                .await
                .unwrap_err();
            tripping.push((err.kind(), start.elapsed()));
            assert!(err.is_infrastructure(), "{err}");
            assert!(start.elapsed() < BUDGET + MARGIN, "{tripping:?}");
            assert!(tripping.len() <= 3, "still closed after {tripping:?}");
        }
        assert_eq!(tripping.len(), 3);
        // Open: every call is refused at once, without touching the network.
        let mut slowest = Duration::ZERO;
        for _ in 0..1_000 {
            let start = Instant::now();
            let err = store
                .check("k", &limits, NonZeroU32::MIN)
                .await
                .unwrap_err();
            slowest = slowest.max(start.elapsed());
            assert_eq!(err.kind(), StoreErrorKind::CircuitOpen);
        }
        println!("tripped by {tripping:?}; 1000 refusals, slowest {slowest:?}");
        assert!(slowest < BUDGET / 2, "an open breaker took {slowest:?}");
        assert_eq!(store.state(), CircuitState::Open);
    });
}

#[test]
fn across_an_outage_refunds_go_back_to_the_store_that_charged() {
    let _one_at_a_time = serial();
    if !redis_available() {
        return;
    }
    let mut server = RedisServer::start();
    run(async {
        use rate_limit_core::resilience::DecidedBy;
        use rate_limit_core::{Algorithm, Charge, Limit, Quota};
        let store = local_mode(&server, "redis-refund").await;
        let limits = [Limit::new(
            Quota::per_hour(NonZeroU32::new(10).unwrap()),
            Algorithm::FixedWindow,
        )];
        let four = NonZeroU32::new(4).unwrap();
        let (d, by) = store.check_traced("k", &limits, four).await.unwrap();
        assert_eq!((by, d.remaining()), (DecidedBy::Primary, 6));
        let on_redis = Charge::new(four).decided_by(&d);
        server.kill9();
        // Redis is gone: the local store decides on this instance's share, 5 of 10.
        let (d, by) = store.check_traced("k", &limits, four).await.unwrap();
        assert_eq!((by, d.remaining(), d.limit()), (DecidedBy::Local, 1, 5));
        let local = Charge::new(four).decided_by(&d);
        // The local charge goes back to the local store, Redis or not.
        let after = store.refund("k", &limits, local).await.unwrap();
        assert_eq!((after.remaining(), after.limit()), (5, 5));
        assert!(after.local_limits().is_some());
        // Redis's charge is never given to the local store instead: its error comes back.
        let err = store.refund("k", &limits, on_redis).await.unwrap_err();
        assert!(err.is_infrastructure() || err.is_circuit_open(), "{err}");
        let local_limits = store.local_limits_for(&limits);
        let left = store.local().peek("k", &local_limits, four).await.unwrap();
        assert_eq!(left.remaining(), 5);
    });
}

//! The layer over a `Fallback` whose primary store fails: what responses say while the local
//! store decides.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use rate_limit_core::resilience::{CircuitBreaker, Fallback};
use rate_limit_core::{Algorithm, ManualClock, MemoryStore, Quota, StoreErrorKind};
use tower::ServiceBuilder;
use tower_ratelimit::RateLimitLayer;
use tower_ratelimit::key::Header;
use tracing::Level;

type Failover = Fallback<FailingStore, MemoryStore<ManualClock>>;

/// A fallback for `instances` instances whose primary always fails.
fn failing_over(instances: u32) -> Failover {
    let primary = FailingStore(StoreErrorKind::Connection);
    Fallback::new(primary, store(&clock()), nz(instances))
}

fn per_10s(n: u32) -> Quota {
    Quota::with_period(nz(n), Duration::from_secs(10)).unwrap()
}

/// `(q, w)` of each member of a `RateLimit-Policy` field, and `r` of each member of a
/// `RateLimit` field.
fn quotas(res: &http::Response<String>) -> Vec<(i64, i64)> {
    ietf_list(header(res, "ratelimit-policy").unwrap())
        .into_iter()
        .map(|(_, params)| {
            let get = |k: &str| params.iter().find(|(n, _)| n == k).unwrap().1;
            (get("q"), get("w"))
        })
        .collect()
}

#[tokio::test]
async fn while_the_fallback_decides_every_header_describes_the_local_share() {
    // 20 per 10 s for the fleet, 2 instances: this one admits 10 per 10 s while Redis is away.
    let layer = RateLimitLayer::new(failing_over(2), per_10s(20))
        .algorithm(Algorithm::FixedWindow)
        .name("ip")
        .key(Header::new("x-client"));
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    let mut statuses = Vec::new();
    for i in 0..12 {
        let res = send(&svc, get_with("/", "x-client", b"c1")).await;
        statuses.push(res.status());
        assert_eq!(header(&res, "x-ratelimit-limit"), Some("10"), "{i}");
        assert_eq!(quotas(&res), [(10, 10)], "{i}: {:?}", res.headers());
        let remaining = header(&res, "x-ratelimit-remaining").unwrap().to_owned();
        let ietf = ietf_list(header(&res, "ratelimit").unwrap());
        let r = ietf[0].1.iter().find(|(k, _)| k == "r").unwrap().1;
        assert_eq!(r.to_string(), remaining, "{i}");
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        10
    );
    assert_eq!(statuses[10], StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_local_share_of_bursts_and_several_limits_is_described_whole() {
    // A burst of 30 at 20 per 10 s, and 1000 per hour; 3 instances: 10 at 6 per 10 s (a full
    // bucket in 17 s), and 333 per hour.
    let burst = per_10s(20).burst(nz(30)).unwrap();
    let layer = RateLimitLayer::new(failing_over(3), burst)
        .limit(Quota::per_hour(nz(1000)))
        .name("ip");
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    let res = send(&svc, get("/")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(quotas(&res), [(10, 17), (333, 3600)], "{:?}", res.headers());
    // The binding limit is the burst, with the least remaining.
    assert_eq!(header(&res, "x-ratelimit-limit"), Some("10"));
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("9"));
    let names: Vec<_> = ietf_list(header(&res, "ratelimit-policy").unwrap())
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        names,
        ["ip-15s", "ip-3600s"],
        "members keep the policy's names"
    );
}

#[test]
fn failing_requests_log_each_state_change_once_and_failures_once_per_interval() {
    let clock = clock();
    let breaker =
        CircuitBreaker::new(FailingStore(StoreErrorKind::Connection)).clock(clock.clone());
    let layer = RateLimitLayer::new(breaker, Quota::per_minute(nz(10)))
        .name("api")
        .key(Header::new("x-client"))
        .clock(clock.clone());
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    let capture = Capture::default();
    let rt = runtime();
    let burst = |n| {
        capture.during(|| {
            rt.block_on(async {
                for _ in 0..n {
                    let res = send(&svc, get_with("/", "x-client", b"secret-client-id")).await;
                    assert_eq!(res.status(), StatusCode::OK, "fails open");
                }
            });
        });
    };
    // 20 failures: three reach the store and open the breaker, the rest are refused by it.
    burst(20);
    // 11 s later, past the breaker's cool-down and the layer's interval: the probe fails.
    clock.advance(Duration::from_secs(11));
    burst(20);
    let failed = "rate limit store failed";
    let expected = [
        (Level::WARN, failed),
        (
            Level::WARN,
            "rate limit circuit breaker opened: the store is not called",
        ),
        (
            Level::INFO,
            "rate limit circuit breaker half-open: probing the store",
        ),
        (
            Level::WARN,
            "rate limit circuit breaker probe failed: open again",
        ),
        (Level::WARN, failed),
    ];
    let expected: Vec<_> = expected.iter().map(|(l, m)| (*l, m.to_string())).collect();
    let events = capture.events();
    assert_eq!(capture.lines(), expected, "{events:#?}");
    assert_eq!(
        events[0].field("error"),
        Some("connection failed: injected")
    );
    assert_eq!(events[0].field("cause"), Some("refused by the test"));
    assert_eq!(events[0].field("policy"), Some("api"));
    // The first request after the interval is the probe, and names the store's failure.
    assert_eq!(
        events[4].field("error"),
        Some("connection failed: injected")
    );
    // The 19 failures after the first, in the interval, are counted in the next event.
    assert_eq!(events[4].field("failures_not_logged"), Some("19"));
    for e in &events {
        assert!(!format!("{e:?}").contains("secret-client-id"), "{e:?}");
    }
}

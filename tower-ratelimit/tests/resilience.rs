//! The layer over a `Fallback` whose primary store fails: what responses say while the local
//! store decides.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use rate_limit_core::resilience::Fallback;
use rate_limit_core::{Algorithm, ManualClock, MemoryStore, Quota, StoreErrorKind};
use tower::ServiceBuilder;
use tower_ratelimit::RateLimitLayer;
use tower_ratelimit::key::Header;

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

//! The way in for a new application: everything through `tower_ratelimit` alone, plain numbers,
//! fallible forms of the settings read from configuration, closures without annotations, and
//! requests exempted with `skip`.

mod common;

use std::time::Duration;

use common::{get, header, ok, send};
use http::{Method, Request, StatusCode};
use tower::ServiceBuilder;
// Only this crate: the stores, clocks and errors are re-exported.
use tower_ratelimit::key::Header;
use tower_ratelimit::{
    ConfigError, ManualClock, MemoryStore, Quota, RateLimitLayer, StoreErrorKind, WhenFull,
};

fn memory(clock: &ManualClock) -> MemoryStore<ManualClock> {
    MemoryStore::builder()
        .clock(clock.clone())
        .when_full(WhenFull::Deny)
        .build()
}

#[tokio::test]
async fn plain_integers_build_a_quota_and_a_layer() {
    let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
    let layer =
        RateLimitLayer::new(memory(&clock), Quota::per_minute(2)).limit(Quota::per_hour(100));
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    assert_eq!(send(&svc, get("/")).await.status(), StatusCode::OK);
    assert_eq!(send(&svc, get("/")).await.status(), StatusCode::OK);
    let res = send(&svc, get("/")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "x-ratelimit-limit"), Some("2"));
    let _ = StoreErrorKind::Timeout;
}

#[test]
fn settings_read_at_run_time_are_errors_not_panics() {
    let configured_limit: u32 = 0;
    let err: ConfigError = Quota::try_per_second(configured_limit).unwrap_err();
    assert_eq!((err.setting(), err.value()), ("limit", "0"));

    let err = Header::try_from("bad name").unwrap_err();
    assert_eq!((err.setting(), err.value()), ("key header", "bad name"));
    let typed = Header::from(http::header::AUTHORIZATION);
    let _ = typed;

    let layer = RateLimitLayer::new(MemoryStore::new(), Quota::per_second(1));
    let err = layer.clone().try_name("bad name").unwrap_err();
    assert_eq!((err.setting(), err.value()), ("policy name", "bad name"));
    assert_eq!(
        layer.try_name("api").unwrap().default_policy().name(),
        "api"
    );
}

#[tokio::test]
async fn a_closure_key_needs_no_annotation() {
    let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
    // No `: &Parts` on the closure's parameter.
    let layer = RateLimitLayer::new(memory(&clock), Quota::per_minute(1))
        .key_fn(|parts| Some(parts.uri.path().to_owned()));
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    assert_eq!(send(&svc, get("/a")).await.status(), StatusCode::OK);
    assert_eq!(send(&svc, get("/b")).await.status(), StatusCode::OK);
    let res = send(&svc, get("/a")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn skipped_requests_pass_uncounted_and_without_headers() {
    let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
    let layer = RateLimitLayer::new(memory(&clock), Quota::per_minute(1))
        .skip(|parts| parts.method == Method::OPTIONS || parts.uri.path() == "/healthz");
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    let preflight = || {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/")
            .body(String::new())
            .unwrap()
    };
    for _ in 0..3 {
        let res = send(&svc, preflight()).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "x-ratelimit-limit"), None);
        assert_eq!(send(&svc, get("/healthz")).await.status(), StatusCode::OK);
    }
    // The skipped requests spent nothing: the budget of 1 is still whole.
    let res = send(&svc, get("/")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        send(&svc, get("/")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Still exempt once the budget is spent.
    assert_eq!(send(&svc, preflight()).await.status(), StatusCode::OK);
}

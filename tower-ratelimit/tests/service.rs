//! The layer around a plain `tower::service_fn`, through `ServiceBuilder` and `oneshot`.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::*;
use http::{Request, Response, StatusCode};
use rate_limit_core::{Algorithm, Decision, Quota, StoreErrorKind};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_ratelimit::key::{ApiKey, Header};
use tower_ratelimit::{
    FailureMode, HeaderStyle, MissingKey, Policy, RateLimitLayer, Rejection, ResetStyle,
    StoreFailure,
};

fn fixed(n: u32) -> Quota {
    Quota::per_minute(nz(n))
}

#[tokio::test]
async fn headers_count_down_across_a_window() {
    let clock = clock();
    let layer = RateLimitLayer::new(store(&clock), fixed(3)).algorithm(Algorithm::FixedWindow);
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);

    let res = send(&svc, get("/")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-ratelimit-limit"), Some("3"));
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("2"));
    assert_eq!(header(&res, "x-ratelimit-reset"), Some("60"));
    assert_eq!(header(&res, "ratelimit"), Some("\"default\";r=2;t=60"));
    assert_eq!(
        header(&res, "ratelimit-policy"),
        Some("\"default\";q=3;w=60")
    );
    assert_eq!(header(&res, "retry-after"), None);

    clock.advance(Duration::from_secs(10));
    let res = send(&svc, get("/")).await;
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("1"));
    assert_eq!(header(&res, "x-ratelimit-reset"), Some("50"));

    clock.advance(Duration::from_millis(10_500));
    let res = send(&svc, get("/")).await;
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("0"));
    // 39.5s left in the window: rounded up.
    assert_eq!(header(&res, "x-ratelimit-reset"), Some("40"));

    let res = send(&svc, get("/")).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), Some("40"));
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(header(&res, "ratelimit"), Some("\"default\";r=0;t=40"));
    assert!(res.body().is_empty(), "default rejection has an empty body");

    clock.advance(Duration::from_millis(39_500));
    let res = send(&svc, get("/")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("2"));
}

#[tokio::test]
async fn clones_share_one_budget() {
    let clock = clock();
    let layer = RateLimitLayer::new(store(&clock), fixed(5));
    let svc = ServiceBuilder::new().layer(layer.clone()).service_fn(ok);
    // Services from clones of the layer, and clones of those services.
    let other = ServiceBuilder::new().layer(layer).service_fn(ok);
    let services: Vec<_> = (0..4)
        .map(|i| {
            if i % 2 == 0 {
                svc.clone()
            } else {
                other.clone()
            }
        })
        .collect();
    let mut allowed = 0;
    for i in 0..12 {
        let res = send(&services[i % services.len()], get("/")).await;
        if res.status() == StatusCode::OK {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 5);
}

#[tokio::test]
async fn keys_have_separate_budgets() {
    let clock = clock();
    let layer = RateLimitLayer::new(store(&clock), fixed(1)).key(Header::new("X-Client"));
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    assert_eq!(
        send(&svc, get_with("/", "x-client", b"a")).await.status(),
        200
    );
    assert_eq!(
        send(&svc, get_with("/", "x-client", b"a")).await.status(),
        429
    );
    assert_eq!(
        send(&svc, get_with("/", "x-client", b"b")).await.status(),
        200
    );
}

#[tokio::test]
async fn denied_requests_never_reach_the_inner_service() {
    let clock = clock();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let inner = service_fn(move |_req: Request<String>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(String::new())) }
    });
    let svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new(store(&clock), fixed(2)))
        .service(inner);
    for _ in 0..5 {
        send(&svc, get("/")).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn retry_after_rounds_up_to_whole_seconds() {
    let clock = clock();
    // Two per three seconds: one token every 1.5s.
    let quota = Quota::with_period(nz(2), Duration::from_secs(3)).unwrap();
    let layer = RateLimitLayer::new(store(&clock), quota)
        .algorithm(Algorithm::Gcra)
        .decision_extensions(true);
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    send(&svc, get("/")).await;
    send(&svc, get("/")).await;
    let res = send(&svc, get("/")).await;
    assert_eq!(res.status(), 429);
    let decision = res.extensions().get::<Decision>().unwrap();
    assert_eq!(decision.retry_after(), Some(Duration::from_millis(1500)));
    assert_eq!(header(&res, "retry-after"), Some("2"));
}

#[tokio::test]
async fn retry_after_is_never_zero() {
    let clock = clock();
    let layer = RateLimitLayer::new(store(&clock), Quota::per_second(nz(1000)))
        .algorithm(Algorithm::Gcra)
        .decision_extensions(true);
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    for _ in 0..1000 {
        assert_eq!(send(&svc, get("/")).await.status(), 200);
    }
    let res = send(&svc, get("/")).await;
    assert_eq!(res.status(), 429);
    assert_eq!(
        res.extensions().get::<Decision>().unwrap().retry_after(),
        Some(Duration::from_millis(1))
    );
    assert_eq!(header(&res, "retry-after"), Some("1"));
}

#[tokio::test]
async fn several_limits_list_each_member_and_legacy_shows_the_binding_one() {
    let clock = clock();
    let layer = RateLimitLayer::new(store(&clock), Quota::per_second(nz(2)))
        .limit(fixed(3))
        .algorithm(Algorithm::FixedWindow)
        .name("api");
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);

    let res = send(&svc, get("/")).await;
    assert_eq!(
        header(&res, "ratelimit-policy"),
        Some("\"api-1s\";q=2;w=1, \"api-60s\";q=3;w=60")
    );
    let members = ietf_list(header(&res, "ratelimit").unwrap());
    assert_eq!(members.len(), 2);
    assert_eq!(members[0].0, "api-1s");
    assert_eq!(members[0].1, [("r".to_owned(), 1), ("t".to_owned(), 1)]);
    assert_eq!(members[1].1, [("r".to_owned(), 2), ("t".to_owned(), 60)]);
    // Least remaining binds.
    assert_eq!(header(&res, "x-ratelimit-limit"), Some("2"));

    send(&svc, get("/")).await;
    // The per-second limit is spent: denied by it, and nothing charged to the minute.
    let res = send(&svc, get("/")).await;
    assert_eq!(res.status(), 429);
    assert_eq!(header(&res, "retry-after"), Some("1"));
    clock.advance(Duration::from_secs(1));
    let res = send(&svc, get("/")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-ratelimit-limit"), Some("3"));
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("0"));
    clock.advance(Duration::from_secs(1));
    let res = send(&svc, get("/")).await;
    assert_eq!(res.status(), 429, "the minute limit binds now");
    assert_eq!(header(&res, "retry-after"), Some("58"));
    let members = ietf_list(header(&res, "ratelimit").unwrap());
    assert_eq!(members[1].1[0], ("r".to_owned(), 0));
}

#[tokio::test]
async fn ietf_fields_parse_as_structured_fields() {
    let clock = clock();
    let layer = RateLimitLayer::new(store(&clock), Quota::per_minute(nz(100)))
        .name("api")
        .headers(HeaderStyle::Ietf);
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    let res = send(&svc, get("/")).await;
    let policy = ietf_list(header(&res, "ratelimit-policy").unwrap());
    assert_eq!(
        policy,
        [(
            "api".to_owned(),
            vec![("q".to_owned(), 100), ("w".to_owned(), 60)]
        )]
    );
    let state = ietf_list(header(&res, "ratelimit").unwrap());
    assert_eq!(state[0].0, "api");
    assert_eq!(state[0].1[0], ("r".to_owned(), 99));
    assert_eq!(
        header(&res, "x-ratelimit-limit"),
        None,
        "legacy headers are off"
    );
}

#[tokio::test]
async fn header_styles_select_fields() {
    let clock = clock();
    for (style, legacy, ietf) in [
        (HeaderStyle::Legacy, true, false),
        (HeaderStyle::Both, true, true),
        (HeaderStyle::None, false, false),
    ] {
        let layer = RateLimitLayer::new(store(&clock), fixed(1)).headers(style);
        let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
        let res = send(&svc, get("/")).await;
        assert_eq!(res.headers().contains_key("x-ratelimit-remaining"), legacy);
        assert_eq!(res.headers().contains_key("ratelimit"), ietf);
        let res = send(&svc, get("/")).await;
        assert_eq!(res.status(), 429);
        assert_eq!(header(&res, "retry-after"), Some("60"), "{style:?}");
    }
}

#[tokio::test]
async fn unix_reset_reads_the_layer_clock() {
    let clock = clock();
    let layer = RateLimitLayer::new(store(&clock), fixed(5))
        .algorithm(Algorithm::FixedWindow)
        .reset(ResetStyle::UnixSeconds)
        .clock(clock.clone());
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    clock.advance(Duration::from_millis(500));
    let res = send(&svc, get("/")).await;
    let expected = (T0.as_secs() + 60).to_string();
    assert_eq!(header(&res, "x-ratelimit-reset"), Some(expected.as_str()));
    // The IETF field stays relative.
    assert_eq!(header(&res, "ratelimit"), Some("\"default\";r=4;t=60"));
}

#[tokio::test]
async fn shadow_mode_never_blocks_but_reports() {
    let clock = clock();
    let layer = RateLimitLayer::new(store(&clock), fixed(2))
        .shadow(true)
        .decision_extensions(true);
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    let mut denied_in_shadow = 0;
    for _ in 0..6 {
        let res = send(&svc, get("/")).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.body(), "ok");
        let decision = res.extensions().get::<Decision>().unwrap();
        if !decision.is_allowed() {
            denied_in_shadow += 1;
            assert_eq!(header(&res, "x-ratelimit-remaining"), Some("0"));
            assert_eq!(header(&res, "retry-after"), None);
        }
    }
    assert_eq!(denied_in_shadow, 4);
}

#[tokio::test]
async fn store_error_fails_open_and_marks_the_response() {
    let layer = RateLimitLayer::new(FailingStore(StoreErrorKind::Timeout), fixed(1))
        .decision_extensions(true);
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    for _ in 0..3 {
        let res = send(&svc, get("/")).await;
        assert_eq!(res.status(), StatusCode::OK);
        let failure = res.extensions().get::<StoreFailure>().unwrap();
        assert_eq!(failure.kind(), StoreErrorKind::Timeout);
        assert_eq!(failure.backend(), "failing");
        assert_eq!(failure.message(), "timed out: injected");
        assert!(res.extensions().get::<Decision>().is_none());
        assert_eq!(header(&res, "x-ratelimit-remaining"), None);
    }
}

#[tokio::test]
async fn store_error_fails_closed_with_503_and_retry_after() {
    let layer = RateLimitLayer::new(FailingStore(StoreErrorKind::Connection), fixed(100))
        .on_store_error(FailureMode::Closed);
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    let res = send(&svc, get("/")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&res, "retry-after"), Some("1"));
    assert!(res.extensions().get::<StoreFailure>().is_some());
}

#[tokio::test]
async fn missing_key_rejects_skips_or_shares() {
    let clock = clock();
    let base = RateLimitLayer::new(store(&clock), fixed(1)).key(Header::new("x-client"));

    let svc = ServiceBuilder::new().layer(base.clone()).service_fn(ok);
    assert_eq!(send(&svc, get("/")).await.status(), StatusCode::BAD_REQUEST);

    let skip = base.clone().on_missing_key(MissingKey::Skip);
    let svc = ServiceBuilder::new().layer(skip).service_fn(ok);
    for _ in 0..3 {
        let res = send(&svc, get("/")).await;
        assert_eq!(res.status(), 200);
        assert_eq!(header(&res, "x-ratelimit-limit"), None);
    }

    let shared = base.on_missing_key(MissingKey::Shared(String::from("anonymous")));
    let svc = ServiceBuilder::new().layer(shared).service_fn(ok);
    assert_eq!(send(&svc, get("/")).await.status(), 200);
    assert_eq!(send(&svc, get("/")).await.status(), 429);
    // A client with a key has its own budget.
    assert_eq!(
        send(&svc, get_with("/", "x-client", b"c")).await.status(),
        200
    );
}

#[tokio::test]
async fn custom_rejection_builds_the_body_and_keeps_headers() {
    let clock = clock();
    let layer = RateLimitLayer::new(store(&clock), fixed(1)).with_rejection(|r: &Rejection<'_>| {
        let mut res = Response::new(format!("slow down ({})", r.status().as_u16()));
        *res.status_mut() = r.status();
        res
    });
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    send(&svc, get("/")).await;
    let res = send(&svc, get("/")).await;
    assert_eq!(res.status(), 429);
    assert_eq!(res.body(), "slow down (429)");
    assert_eq!(header(&res, "retry-after"), Some("60"));
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("0"));
}

#[tokio::test]
async fn cost_charges_a_weight_and_zero_is_free() {
    let clock = clock();
    let layer =
        RateLimitLayer::new(store(&clock), fixed(10)).cost(|parts| match parts.uri.path() {
            "/health" => 0,
            "/export" => 4,
            _ => 1,
        });
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    let res = send(&svc, get("/export")).await;
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("6"));
    for _ in 0..20 {
        let res = send(&svc, get("/health")).await;
        assert_eq!(res.status(), 200);
        assert_eq!(header(&res, "x-ratelimit-remaining"), None);
    }
    let res = send(&svc, get("/")).await;
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("5"));
    send(&svc, get("/export")).await;
    // One left; an export needs four.
    assert_eq!(send(&svc, get("/export")).await.status(), 429);
    assert_eq!(send(&svc, get("/")).await.status(), 200);
}

#[tokio::test]
async fn policy_hook_gives_premium_keys_more() {
    let clock = clock();
    let premium = Policy::new(
        "premium",
        [rate_limit_core::Limit::new(
            fixed(5),
            Algorithm::FixedWindow,
        )],
    )
    .unwrap();
    let premium_key = tower_ratelimit::key::hash_key(b"gold");
    let layer = RateLimitLayer::new(store(&clock), fixed(1))
        .name("free")
        .key(ApiKey::new())
        .policy(move |_parts, key| (key == premium_key).then(|| premium.clone()));
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);

    let gold = || get_with("/", "x-api-key", b"gold");
    let tin = || get_with("/", "x-api-key", b"tin");
    for _ in 0..5 {
        let res = send(&svc, gold()).await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            header(&res, "ratelimit-policy"),
            Some("\"premium\";q=5;w=60")
        );
    }
    assert_eq!(send(&svc, gold()).await.status(), 429);
    let res = send(&svc, tin()).await;
    assert_eq!(header(&res, "ratelimit-policy"), Some("\"free\";q=1;w=60"));
    assert_eq!(send(&svc, tin()).await.status(), 429);
}

#[tokio::test]
async fn decision_reaches_the_handler() {
    let clock = clock();
    let inner = service_fn(|req: Request<String>| async move {
        let remaining = req.extensions().get::<Decision>().map(Decision::remaining);
        Ok::<_, Infallible>(Response::new(format!("{remaining:?}")))
    });
    let svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new(store(&clock), fixed(3)).decision_extensions(true))
        .service(inner);
    assert_eq!(send(&svc, get("/")).await.body(), "Some(2)");
}

#[tokio::test]
async fn decision_stays_out_of_the_extensions_by_default() {
    let clock = clock();
    let inner = service_fn(|req: Request<String>| async move {
        let seen = req.extensions().get::<Decision>().is_some();
        Ok::<_, Infallible>(Response::new(format!("{seen}")))
    });
    let svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new(store(&clock), fixed(1)))
        .service(inner);
    let res = send(&svc, get("/")).await;
    assert_eq!(res.body(), "false");
    assert!(res.extensions().get::<Decision>().is_none());
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("0"));
    let res = send(&svc, get("/")).await;
    assert_eq!(res.status(), 429);
    assert!(res.extensions().get::<Decision>().is_none());
    assert_eq!(header(&res, "retry-after"), Some("60"));
}

/// An inner service that is not ready until told.
#[derive(Clone)]
struct Gate(Arc<AtomicUsize>);

impl Service<Request<String>> for Gate {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if self.0.load(Ordering::SeqCst) > 0 {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn call(&mut self, _req: Request<String>) -> Self::Future {
        std::future::ready(Ok(Response::new(String::new())))
    }
}

#[tokio::test]
async fn poll_ready_follows_the_inner_service_only() {
    let clock = clock();
    let open = Arc::new(AtomicUsize::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(RateLimitLayer::new(store(&clock), fixed(1)))
        .service(Gate(Arc::clone(&open)));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_pending());
    open.store(1, Ordering::SeqCst);
    assert!(svc.poll_ready(&mut cx).is_ready());
    assert_eq!(svc.call(get("/")).await.unwrap().status(), 200);
    // The budget is spent, yet the service stays ready: the limit shows as a 429.
    assert!(svc.poll_ready(&mut cx).is_ready());
    assert_eq!(svc.call(get("/")).await.unwrap().status(), 429);
    assert!(svc.ready().await.is_ok());
}

#[tokio::test]
async fn with_limits_takes_an_algorithm_per_limit() {
    use rate_limit_core::Limit;
    let clock = clock();
    let limits = [
        Limit::new(Quota::per_second(nz(2)), Algorithm::Gcra),
        Limit::new(fixed(3), Algorithm::FixedWindow),
    ];
    let layer = RateLimitLayer::with_limits(store(&clock), limits).unwrap();
    assert_eq!(layer.default_policy().limits(), limits);
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    let res = send(&svc, get("/")).await;
    assert_eq!(
        header(&res, "ratelimit-policy"),
        Some("\"default-1s\";q=2;w=1, \"default-60s\";q=3;w=60")
    );
    let err = RateLimitLayer::with_limits(store(&clock), []).unwrap_err();
    assert_eq!(err.setting(), "limits");
}

#[tokio::test]
async fn cost_above_capacity_is_denied_without_retry_after() {
    let clock = clock();
    let layer = RateLimitLayer::new(store(&clock), fixed(3))
        .cost(|_| 5)
        .decision_extensions(true);
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    let res = send(&svc, get("/")).await;
    assert_eq!(res.status(), 429);
    assert!(res.extensions().get::<Decision>().unwrap().is_never());
    assert_eq!(header(&res, "retry-after"), None, "no wait would help");
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("3"));
}

/// The layer decides in place when the store can (`try_check_now`) and waits otherwise; both
/// paths must answer alike: status, every header, the extensions, for allowed and denied
/// requests alike.
#[tokio::test]
async fn deciding_in_place_and_waiting_answer_alike() {
    let (clock_a, clock_b) = (clock(), clock());
    let in_place = RateLimitLayer::new(store(&clock_a), fixed(3))
        .algorithm(Algorithm::SlidingWindow)
        .key(Header::new("x-client"))
        .clock(clock_a.clone())
        .decision_extensions(true);
    let waiting = RateLimitLayer::new(Double::new(store(&clock_b)).waiting(), fixed(3))
        .algorithm(Algorithm::SlidingWindow)
        .key(Header::new("x-client"))
        .clock(clock_b.clone())
        .decision_extensions(true);
    let a = ServiceBuilder::new().layer(in_place).service_fn(ok);
    let b = ServiceBuilder::new().layer(waiting).service_fn(ok);
    let mut denied = 0;
    for step in 0..12u64 {
        let client: &[u8] = if step % 3 == 0 { b"other" } else { b"c1" };
        let ra = send(&a, get_with("/", "x-client", client)).await;
        let rb = send(&b, get_with("/", "x-client", client)).await;
        assert_eq!(ra.status(), rb.status(), "step {step}");
        assert_eq!(ra.headers(), rb.headers(), "step {step}");
        assert_eq!(
            ra.extensions().get::<Decision>(),
            rb.extensions().get::<Decision>(),
            "step {step}"
        );
        denied += usize::from(ra.status() == StatusCode::TOO_MANY_REQUESTS);
        clock_a.advance(Duration::from_secs(7));
        clock_b.advance(Duration::from_secs(7));
    }
    assert!(denied > 0, "the sequence must reach a denial");
}

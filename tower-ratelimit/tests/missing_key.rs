//! A request with no key under `MissingKey::Reject`: a 400, counted, and, when the server gives
//! no peer address to an extractor that needs one, one WARN naming the fix.

mod common;

use common::*;
use http::StatusCode;
use rate_limit_core::Quota;
use tower::ServiceBuilder;
use tower_ratelimit::RateLimitLayer;
use tower_ratelimit::key::{ForwardedIp, Header, PeerIp};
use tracing::Level;

#[test]
fn a_missing_peer_address_is_logged_once_at_warn_naming_the_fix() {
    for (name, layer) in [
        (
            "peer",
            RateLimitLayer::new(store(&clock()), Quota::per_minute(nz(10))).key(PeerIp::new()),
        ),
        (
            "forwarded",
            RateLimitLayer::new(store(&clock()), Quota::per_minute(nz(10)))
                .key(ForwardedIp::new().trust("10.0.0.0/8".parse().unwrap())),
        ),
    ] {
        let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
        let capture = Capture::default();
        capture.during(|| {
            runtime().block_on(async {
                for _ in 0..5 {
                    let res = send(&svc, get_with("/", "x-forwarded-for", b"203.0.113.9")).await;
                    assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{name}");
                    assert!(res.body().is_empty());
                }
                // A request with its peer address is served.
                let res = send(&svc, from_peer(get("/"), [192, 0, 2, 1])).await;
                assert_eq!(res.status(), StatusCode::OK, "{name}");
            });
        });
        let events = capture.events();
        assert_eq!(events.len(), 1, "{name}: {events:#?}");
        let warn = &events[0];
        assert_eq!(warn.level, Level::WARN);
        assert!(
            warn.message
                .starts_with("rate limit key missing: no peer address"),
            "{warn:?}"
        );
        assert!(
            warn.message
                .contains("into_make_service_with_connect_info::<SocketAddr>()"),
            "{warn:?}"
        );
        assert_eq!(
            warn.message.contains("`axum` feature"),
            !cfg!(feature = "axum"),
            "{warn:?}"
        );
        assert!(!warn.message.contains("203.0.113.9"), "{warn:?}");
    }
}

#[test]
fn a_missing_header_is_no_warning() {
    let layer = RateLimitLayer::new(store(&clock()), Quota::per_minute(nz(10)))
        .key(Header::new("x-client"));
    let svc = ServiceBuilder::new().layer(layer).service_fn(ok);
    let capture = Capture::default();
    capture.during(|| {
        runtime().block_on(async {
            for _ in 0..3 {
                assert_eq!(send(&svc, get("/")).await.status(), StatusCode::BAD_REQUEST);
            }
        });
    });
    assert!(capture.events().is_empty(), "{:#?}", capture.events());
}

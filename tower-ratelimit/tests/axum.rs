//! The layer in an axum `Router`: on the whole router and per route.

mod common;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use rate_limit_core::{Algorithm, Quota};
use tower::ServiceExt;
use tower_ratelimit::key::Header;
use tower_ratelimit::{RateLimitLayer, Rejection};

fn req(path: &str, client: &str) -> Request<Body> {
    Request::get(path)
        .header("x-client", client)
        .body(Body::empty())
        .unwrap()
}

async fn status(app: &Router, path: &str, client: &str) -> StatusCode {
    app.clone()
        .oneshot(req(path, client))
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn router_layer_limits_every_route_with_one_budget() {
    let clock = clock();
    let app = Router::new()
        .route("/a", get(|| async { "a" }))
        .route("/b", get(|| async { "b" }))
        .layer(
            RateLimitLayer::new(store(&clock), Quota::per_minute(nz(3)))
                .key(Header::new("x-client")),
        );

    assert_eq!(status(&app, "/a", "1").await, StatusCode::OK);
    assert_eq!(status(&app, "/b", "1").await, StatusCode::OK);
    let res = app.clone().oneshot(req("/a", "1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "a");

    let res = app.clone().oneshot(req("/b", "1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), Some("20"));
    assert!(
        res.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    // Unmatched paths are limited too: the layer wraps the fallback.
    assert_eq!(
        status(&app, "/nope", "1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(status(&app, "/a", "2").await, StatusCode::OK);

    clock.advance(Duration::from_secs(20));
    assert_eq!(status(&app, "/a", "1").await, StatusCode::OK);
}

#[tokio::test]
async fn route_layer_limits_per_route() {
    let clock = clock();
    let store = std::sync::Arc::new(store(&clock));
    let strict = RateLimitLayer::new(store.clone(), Quota::per_minute(nz(1)))
        .name("login")
        .algorithm(Algorithm::FixedWindow)
        .key(Header::new("x-client"));
    let loose = RateLimitLayer::new(store, Quota::per_minute(nz(100)))
        .name("search")
        .key(Header::new("x-client"));
    let app = Router::new()
        .route("/login", get(|| async { "in" }).route_layer(strict))
        .route("/search", get(|| async { "found" }).route_layer(loose))
        .route("/free", get(|| async { "free" }));

    assert_eq!(status(&app, "/login", "1").await, StatusCode::OK);
    assert_eq!(
        status(&app, "/login", "1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let res = app.clone().oneshot(req("/search", "1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "ratelimit"), Some("\"search\";r=99;t=1"));
    for _ in 0..5 {
        let res = app.clone().oneshot(req("/free", "1")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(header(&res, "ratelimit"), None);
    }
    // Unknown paths are 404, not limited (route_layer wraps matched routes only).
    assert_eq!(status(&app, "/nope", "1").await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn custom_rejection_with_an_axum_body() {
    let clock = clock();
    let layer = RateLimitLayer::new(store(&clock), Quota::per_minute(nz(1))).with_rejection(
        |r: &Rejection<'_>| {
            let mut res = axum::response::Response::new(Body::from("too many"));
            *res.status_mut() = r.status();
            res
        },
    );
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);
    app.clone().oneshot(req("/", "x")).await.unwrap();
    let res = app.oneshot(req("/", "x")).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "too many"
    );
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn peer_ip_reads_axum_connect_info() {
    use axum::extract::ConnectInfo;
    use std::net::SocketAddr;
    use tower_ratelimit::key::PeerIp;

    let clock = clock();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RateLimitLayer::new(store(&clock), Quota::per_minute(nz(1))).key(PeerIp::new()));
    let from = |ip: [u8; 4]| {
        let mut r = Request::get("/").body(Body::empty()).unwrap();
        r.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((ip, 5000))));
        r
    };
    let mut statuses = Vec::new();
    for ip in [[192, 0, 2, 1], [192, 0, 2, 1], [192, 0, 2, 2]] {
        statuses.push(app.clone().oneshot(from(ip)).await.unwrap().status());
    }
    assert_eq!(statuses, [200, 429, 200]);
    // No address at all: rejected by default, not waved through.
    let res = app
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn nested_layers_keep_the_inner_legacy_headers_and_list_both_policies() {
    let clock = clock();
    let store = std::sync::Arc::new(store(&clock));
    let app = Router::new()
        .route(
            "/login",
            get(|| async { "in" }).route_layer(
                RateLimitLayer::new(store.clone(), Quota::per_minute(nz(1)))
                    .name("login")
                    .key(Header::new("x-client")),
            ),
        )
        .layer(
            RateLimitLayer::new(store, Quota::per_minute(nz(10)))
                .name("api")
                .key(Header::new("x-client")),
        );
    app.clone().oneshot(req("/login", "1")).await.unwrap();
    let res = app.oneshot(req("/login", "1")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "x-ratelimit-limit"), Some("1"));
    assert_eq!(header(&res, "x-ratelimit-remaining"), Some("0"));
    // Field lines of a list combine with commas (RFC 9110), and still parse.
    let lines: Vec<&str> = res
        .headers()
        .get_all("ratelimit")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let members = ietf_list(&lines.join(", "));
    let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(names, ["login", "api"]);
    assert_eq!(members[1].1[0], ("r".to_owned(), 8));
}

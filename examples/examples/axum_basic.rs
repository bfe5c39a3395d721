//! The smallest useful setup: an axum app limited per client IP, in memory.
//!
//! ```text
//! cargo run --example axum_basic
//! curl -i http://127.0.0.1:3000/      # 5 times: 200, 200, 200, 429 ...
//! ```
//!
//! Every client IP gets 3 requests per 10 seconds. The peer address comes from axum's
//! `ConnectInfo`, so the app is served with `into_make_service_with_connect_info`.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tower_ratelimit::{MemoryStore, Quota, RateLimitLayer, key};

/// The app: one route, 3 requests per 10 s per client IP.
fn app() -> Router {
    let quota = match Quota::with_period(3, Duration::from_secs(10)) {
        Ok(quota) => quota,
        Err(err) => panic!("{err}"),
    };
    Router::new()
        .route("/", get(|| async { "hello\n" }))
        .layer(RateLimitLayer::new(MemoryStore::new(), quota).key(key::PeerIp::new()))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app().into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    fn from(ip: [u8; 4]) -> Request<Body> {
        let mut req = Request::get("/").body(Body::empty()).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((ip, 40000))));
        req
    }

    #[tokio::test]
    async fn three_per_ip_then_429() {
        let app = app();
        for remaining in ["2", "1", "0"] {
            let res = app.clone().oneshot(from([192, 0, 2, 1])).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(res.headers()["x-ratelimit-remaining"], remaining);
        }
        let res = app.clone().oneshot(from([192, 0, 2, 1])).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(res.headers().contains_key("retry-after"));
        // Another address has its own budget.
        let res = app.oneshot(from([192, 0, 2, 2])).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
}

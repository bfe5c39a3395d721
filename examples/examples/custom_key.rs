//! A key of your own (a closure over the request head) and a 429 with a body of your own.
//!
//! ```text
//! cargo run --example custom_key
//! curl -i http://127.0.0.1:3000/tenants/acme/orders      # 2 per 10 s per tenant
//! ```
//!
//! The key is the tenant in the path (`/tenants/{tenant}/...`); requests outside a tenant are
//! not limited ([`MissingKey::Skip`]). A spent budget is answered with a JSON problem document
//! instead of the default empty 429; the layer still adds `Retry-After` and the rate-limit
//! headers to it.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::request::Parts;
use http::{Response, header};
use tower_ratelimit::{MemoryStore, MissingKey, Quota, RateLimitLayer, Rejection};

/// `acme` for `/tenants/acme/...`.
fn tenant(parts: &Parts) -> Option<String> {
    let rest = parts.uri.path().strip_prefix("/tenants/")?;
    let tenant = rest.split('/').next()?;
    (!tenant.is_empty()).then(|| format!("tenant:{tenant}"))
}

/// A JSON problem document (RFC 9457) for every rejection.
fn problem(rejection: &Rejection<'_>) -> Response<Body> {
    let detail = match rejection {
        Rejection::Limited(d) => match d.retry_after() {
            Some(wait) => format!("tenant quota spent; retry in {} ms", wait.as_millis()),
            None => String::from("this request costs more than the tenant quota"),
        },
        _ => String::from("rate limiter unavailable"),
    };
    let body = serde_json::json!({
        "type": "https://example.com/problems/rate-limited",
        "title": "Too Many Requests",
        "status": rejection.status().as_u16(),
        "detail": detail,
    });
    Response::builder()
        .status(rejection.status())
        .header(header::CONTENT_TYPE, "application/problem+json")
        .body(Body::from(body.to_string()))
        .unwrap_or_default()
}

fn app() -> Router {
    let quota = match Quota::with_period(2, Duration::from_secs(10)) {
        Ok(quota) => quota,
        Err(err) => panic!("{err}"),
    };
    let layer = RateLimitLayer::new(MemoryStore::new(), quota)
        .name("tenant")
        .key(tenant)
        .on_missing_key(MissingKey::Skip)
        .with_rejection(problem);
    Router::new()
        .route("/tenants/{tenant}/orders", get(|| async { "orders\n" }))
        .route("/", get(|| async { "home\n" }))
        .layer(layer)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn tenants_are_limited_apart_with_a_json_429() {
        let app = app();
        for _ in 0..2 {
            let res = app
                .clone()
                .oneshot(get("/tenants/acme/orders"))
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
        let res = app
            .clone()
            .oneshot(get("/tenants/acme/orders"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert_eq!(res.headers()["retry-after"], "5");
        assert_eq!(res.headers()["ratelimit-policy"], r#""tenant";q=2;w=10"#);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["status"], 429);
        assert!(
            json["detail"]
                .as_str()
                .unwrap()
                .starts_with("tenant quota spent")
        );

        let res = app
            .clone()
            .oneshot(get("/tenants/globex/orders"))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        for _ in 0..5 {
            let res = app.clone().oneshot(get("/")).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK, "no tenant: not limited");
            assert!(!res.headers().contains_key("x-ratelimit-limit"));
        }
    }
}

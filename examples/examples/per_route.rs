//! Different limits per route with `route_layer`, and tiers by API key with a policy hook.
//!
//! ```text
//! cargo run --example per_route
//! curl -i http://127.0.0.1:3000/search -H 'x-api-key: free-key'     # 5 per minute
//! curl -i http://127.0.0.1:3000/search -H 'x-api-key: gold-key'     # 100 per minute
//! curl -i -X POST http://127.0.0.1:3000/upload -H 'x-api-key: free-key'  # 1 per minute
//! ```
//!
//! - `/search` and `/upload` each get their own layer (`route_layer` on the method router), so
//!   their budgets are separate and named (`search`, `upload`) in the `RateLimit-Policy` header.
//! - Clients are keyed by API key ([`key::ApiKey`]: `Authorization: Bearer` or `X-API-Key`,
//!   hashed). On `/search`, the policy hook gives keys of the `gold` tier a larger policy; the
//!   tier table holds hashes, never tokens.
//! - `/health` is not limited.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use http::request::Parts;
use tower_ratelimit::{
    Algorithm, ConfigError, Limit, MemoryStore, Policy, Quota, RateLimitLayer, Store, key,
};

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(n)
}

/// The app, with one store shared by both routes' layers.
fn app() -> Result<Router, ConfigError> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());

    // Tiers: hashed API key -> policy. Built once, at start-up.
    let gold = Policy::new(
        "search-gold",
        [Limit::new(per_minute(100), Algorithm::Gcra)],
    )?;
    let tiers: HashMap<String, Policy> = HashMap::from([(key::hash_key(b"gold-key"), gold)]);

    let search = RateLimitLayer::new(Arc::clone(&store), per_minute(5))
        .name("search")
        .algorithm(Algorithm::Gcra)
        .key(key::ApiKey::new())
        .policy(move |_parts: &Parts, key: &str| tiers.get(key).cloned());
    let upload = RateLimitLayer::new(store, per_minute(1))
        .name("upload")
        .key(key::ApiKey::new());

    Ok(Router::new()
        .route("/search", get(|| async { "results\n" }).route_layer(search))
        .route("/upload", post(|| async { "stored\n" }).route_layer(upload))
        .route("/health", get(|| async { "ok\n" })))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app()?).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::{Request, StatusCode};
    use tower::ServiceExt;

    fn req(method: &str, path: &str, api_key: Option<&str>) -> Request<Body> {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(k) = api_key {
            b = b.header("x-api-key", k);
        }
        b.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn routes_have_separate_budgets_and_gold_gets_more() {
        let app = app().unwrap();
        let call = |m, p, k| app.clone().oneshot(req(m, p, k));

        let res = call("POST", "/upload", Some("free-key")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["ratelimit-policy"], r#""upload";q=1;w=60"#);
        let res = call("POST", "/upload", Some("free-key")).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);

        // Upload's budget is spent; search's is not.
        for _ in 0..5 {
            let res = call("GET", "/search", Some("free-key")).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
        }
        let res = call("GET", "/search", Some("free-key")).await.unwrap();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);

        let res = call("GET", "/search", Some("gold-key")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-ratelimit-limit"], "100");
        assert_eq!(
            res.headers()["ratelimit-policy"],
            r#""search-gold";q=100;w=60"#
        );

        // No API key: 400 from the layer; /health is not limited.
        let res = call("GET", "/search", None).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let res = call("GET", "/health", None).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
}

//! Brute-force protection on a login route: 5 failed logins per account and 20 per client
//! address in any 15 minutes; successful logins pass uncounted.
//!
//! ```text
//! cargo run --example login                                   # in memory
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example login  # shared by every instance
//! curl -i -X POST http://127.0.0.1:3000/login -u ann:guess    # 401, 4 left for ann
//! curl -i -X POST http://127.0.0.1:3000/login -u ann:hunter2  # 200, uncounted: still 4
//! ```
//!
//! - Credentials come as HTTP Basic authentication, so the account is in the request head,
//!   where a key extractor reads it (the password is never part of a key).
//! - Two layers with [`count_if`](tower_ratelimit::RateLimitLayer::count_if): a request is
//!   charged when it is checked and given back when the handler answers anything but 401, so
//!   however many attempts arrive at once, on however many instances, no more than 5 failures
//!   per account reach the password check. Once they are spent, every attempt is refused, the
//!   right password too, until the oldest failure leaves the window.
//! - The address layer is outermost: an attempt the account layer refuses (429) is given back
//!   there too, so one locked account does not spend the address's budget.
//! - `PORT` sets the port (3000; 0 picks a free one).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::request::Parts;
use tower_ratelimit::{
    Algorithm, MemoryStore, MissingKey, Quota, RateLimitLayer, RedisStore, Store, key,
};

/// Failed logins allowed in any [`WINDOW`], per account and per client address.
const PER_ACCOUNT: u32 = 5;
const PER_ADDRESS: u32 = 20;
const WINDOW: Duration = Duration::from_secs(15 * 60);

/// The user name and password of an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The account a login attempt is for: the Basic user name (hashed by the layer if long or
/// unusual), or none.
fn account(parts: &Parts) -> Option<String> {
    basic_credentials(&parts.headers).map(|(user, _)| user)
}

/// A layer that counts failed logins (401) only, with an exact sliding window.
fn failed_logins(store: Arc<dyn Store>, name: &str, per_window: u32) -> RateLimitLayer {
    let quota = match Quota::with_period(per_window, WINDOW) {
        Ok(quota) => quota,
        Err(err) => panic!("{err}"),
    };
    RateLimitLayer::new(store, quota)
        .name(name)
        .algorithm(Algorithm::SlidingWindowLog)
        .count_if(|status| status == StatusCode::UNAUTHORIZED)
}

/// The password check: one account, `ann`, whose password is `hunter2`.
async fn login(headers: HeaderMap) -> (StatusCode, HeaderMap, &'static str) {
    let mut out = HeaderMap::new();
    match basic_credentials(&headers) {
        Some((user, password)) if user == "ann" && password == "hunter2" => {
            (StatusCode::OK, out, "welcome\n")
        }
        _ => {
            out.insert(
                header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"login\""),
            );
            (
                StatusCode::UNAUTHORIZED,
                out,
                "wrong user name or password\n",
            )
        }
    }
}

/// The app over `store`: both budgets live there, under the policy names `login-account` and
/// `login-ip`.
fn app(store: Arc<dyn Store>) -> Router {
    let per_account = failed_logins(Arc::clone(&store), "login-account", PER_ACCOUNT)
        .key_fn(account)
        // No credentials: the handler answers 401, counted per address only.
        .on_missing_key(MissingKey::Skip);
    let per_address = failed_logins(store, "login-ip", PER_ADDRESS).key(key::PeerIp::new());
    Router::new()
        .route("/login", post(login))
        .layer(per_account)
        .layer(per_address) // the last `.layer` is the outermost
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store: Arc<dyn Store> = match std::env::var("REDIS_URL") {
        Ok(url) => Arc::new(RedisStore::connect(&url).await?),
        Err(_) => Arc::new(MemoryStore::new()),
    };
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".to_owned());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!(
        "listening on http://{} ({} store)",
        listener.local_addr()?,
        store.backend()
    );
    let app = app(store).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::ConnectInfo;
    use http::{Request, Response};
    use tower::ServiceExt;

    /// A login attempt of `user` with `password` from `ip`, sent to `app`.
    async fn attempt(app: &Router, user: &str, password: &str, ip: [u8; 4]) -> Response<Body> {
        let credentials = STANDARD.encode(format!("{user}:{password}"));
        let mut req = Request::post("/login")
            .header(header::AUTHORIZATION, format!("Basic {credentials}"))
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((ip, 40000))));
        app.clone().oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn five_failures_per_account_lock_it_and_successes_are_never_counted() {
        let app = app(Arc::new(MemoryStore::new()));
        let ip = [192, 0, 2, 1];
        for left in (0..PER_ACCOUNT).rev() {
            let res = attempt(&app, "ann", "hunter2", ip).await;
            assert_eq!(res.status(), StatusCode::OK);
            assert_eq!(
                res.headers()["x-ratelimit-remaining"],
                (left + 1).to_string()
            );
            let res = attempt(&app, "ann", "guess", ip).await;
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(res.headers()["x-ratelimit-remaining"], left.to_string());
        }
        // Locked: the right password is refused too, for the rest of the window.
        let res = attempt(&app, "ann", "hunter2", ip).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()["retry-after"], "900");
        // Another account from the same address has its own budget; the address has spent 5
        // of its 20 (the 429 was given back).
        let res = attempt(&app, "bob", "guess", ip).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let fields: Vec<_> = res.headers().get_all("ratelimit").iter().collect();
        assert_eq!(fields[0], r#""login-account";r=4;t=900"#);
        assert_eq!(fields[1], r#""login-ip";r=14;t=900"#);
    }

    #[tokio::test]
    async fn one_address_guessing_many_accounts_is_stopped_at_twenty_failures() {
        let app = app(Arc::new(MemoryStore::new()));
        let ip = [198, 51, 100, 7];
        for n in 0..PER_ADDRESS {
            let res = attempt(&app, &format!("user{n}"), "guess", ip).await;
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        }
        let res = attempt(&app, "ann", "hunter2", ip).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        // ann herself, from elsewhere, is not locked out.
        let res = attempt(&app, "ann", "hunter2", [192, 0, 2, 2]).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
}

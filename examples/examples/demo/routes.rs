//! The demo's endpoints.
//!
//! | Endpoint | What it does |
//! |---|---|
//! | `GET /ratelimit` | charges 1 to the client: 200 or 429, JSON and rate-limit headers |
//! | `POST /acquire` | charges `cost` from an optional JSON body `{"cost": n}` (default 1) |
//! | `GET /status?key=K`, `?ip=A` | the client's state without charging, the backend and the circuit |
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz` | 200 |
//!
//! `/ratelimit` and `/acquire` sit behind the [`RateLimitLayer`]: it decides, writes every
//! header and answers 429 itself (with the JSON built by [`reject`]); the handlers only turn the
//! [`Decision`] the layer put in the request extensions (`decision_extensions`) into JSON. `/acquire` reads its cost in a
//! small middleware outside the layer, which buffers the body and puts a [`Cost`] into the
//! extensions, where the layer's cost hook finds it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use rate_limit_core::Decision;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower_ratelimit::key::KeyExtractor;
use tower_ratelimit::{HeaderStyle, RateLimitLayer, Rejection, StoreFailure, headers};

use super::client::{ClientKey, Policies};
use super::store::DemoStore;
use crate::redact::redact;

/// The largest `/acquire` body read.
const MAX_BODY: usize = 64 * 1024;

/// What the routes share.
#[derive(Clone, Debug)]
pub(crate) struct AppState {
    store: DemoStore,
    policies: Arc<Policies>,
    key: Arc<ClientKey>,
    metrics: PrometheusHandle,
}

impl AppState {
    /// The state for [`router`].
    pub(crate) fn new(
        store: DemoStore,
        policies: Policies,
        key: ClientKey,
        metrics: PrometheusHandle,
    ) -> Self {
        Self {
            store,
            policies: Arc::new(policies),
            key: Arc::new(key),
            metrics,
        }
    }
}

/// The cost of an `/acquire` request, read from its body before the layer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cost(pub(crate) NonZeroU32);

/// The JSON of a decision: `/ratelimit`, `/acquire`, their 429s, and `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DecisionBody {
    /// Whether the request was (or, for `/status`, would be) admitted.
    pub(crate) allowed: bool,
    /// Capacity of the binding limit.
    pub(crate) limit: u32,
    /// What is left of it.
    pub(crate) remaining: u32,
    /// Milliseconds until it is full again, rounded up.
    pub(crate) reset_after_ms: u64,
    /// Milliseconds to wait before retrying, rounded up: 0 when allowed, `null` when no wait
    /// would help (the cost exceeds the capacity).
    pub(crate) retry_after_ms: Option<u64>,
}

impl From<&Decision> for DecisionBody {
    fn from(d: &Decision) -> Self {
        let ms = |t: std::time::Duration| {
            let ms = t.as_nanos().div_ceil(1_000_000);
            u64::try_from(ms).unwrap_or(u64::MAX)
        };
        Self {
            allowed: d.is_allowed(),
            limit: d.limit(),
            remaining: d.remaining(),
            reset_after_ms: ms(d.reset_after()),
            retry_after_ms: if d.is_allowed() {
                Some(0)
            } else {
                d.retry_after().map(ms)
            },
        }
    }
}

/// The whole demo application.
pub(crate) fn router(state: AppState) -> Router {
    let policies = Arc::clone(&state.policies);
    // The policy hook always picks, so the layer's own default policy only needs a quota.
    let quota = *state.policies.default_limit().quota();
    let layer = RateLimitLayer::new(state.store.store(), quota)
        .key(ClientKey::clone(&state.key))
        .policy(move |parts: &Parts, key: &str| Some(policies.pick(parts.uri.path(), key).clone()))
        .cost(|parts: &Parts| parts.extensions.get::<Cost>().map_or(1, |c| c.0.get()))
        .on_store_error(state.store.failure_mode())
        // The handlers answer with the decision.
        .decision_extensions(true)
        .with_rejection(reject);
    Router::new()
        .route("/ratelimit", get(ratelimit).layer(layer.clone()))
        .route(
            "/acquire",
            post(acquire)
                .layer(layer)
                .layer(middleware::from_fn(read_cost)),
        )
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    (status, Json(body)).into_response()
}

/// The layer's rejections as JSON: 429 with the decision, 503, 400.
pub(crate) fn reject(rejection: &Rejection<'_>) -> Response<Body> {
    match rejection {
        Rejection::Limited(decision) => {
            json_response(rejection.status(), &DecisionBody::from(*decision))
        }
        Rejection::StoreUnavailable(err) => json_response(
            rejection.status(),
            &json!({ "error": "rate limit store unavailable", "detail": redact(&err.to_string()) }),
        ),
        Rejection::MissingKey => json_response(
            rejection.status(),
            &json!({ "error": "no client key: send the key header or connect directly" }),
        ),
        _ => json_response(rejection.status(), &json!({ "error": "rejected" })),
    }
}

/// The answer of an admitted request, from what the layer left in the extensions.
fn admitted(req: &Request) -> Response {
    if let Some(decision) = req.extensions().get::<Decision>() {
        return json_response(StatusCode::OK, &DecisionBody::from(decision));
    }
    // The store failed and the layer failed open: admitted without a decision.
    let detail = req
        .extensions()
        .get::<StoreFailure>()
        .map(|f| redact(f.message()));
    json_response(
        StatusCode::OK,
        &json!({
            "allowed": true,
            "limit": null,
            "remaining": null,
            "reset_after_ms": null,
            "retry_after_ms": 0,
            "degraded": detail,
        }),
    )
}

async fn ratelimit(req: Request) -> Response {
    admitted(&req)
}

async fn acquire(req: Request) -> Response {
    admitted(&req)
}

#[derive(Debug, Deserialize)]
struct AcquireBody {
    cost: Option<u32>,
}

fn bad_request(message: &str) -> Response {
    json_response(StatusCode::BAD_REQUEST, &json!({ "error": message }))
}

/// Reads `cost` from the `/acquire` body into a [`Cost`] extension, then passes the request on
/// with its body intact.
async fn read_cost(req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => return bad_request("body too large or unreadable"),
    };
    let cost = if bytes.iter().all(u8::is_ascii_whitespace) {
        NonZeroU32::MIN
    } else {
        match serde_json::from_slice::<AcquireBody>(&bytes) {
            Ok(AcquireBody { cost: None }) => NonZeroU32::MIN,
            Ok(AcquireBody { cost: Some(n) }) => match NonZeroU32::new(n) {
                Some(n) => n,
                None => return bad_request("cost must be at least 1"),
            },
            Err(_) => {
                return bad_request("expected a JSON object like {\"cost\": 3}");
            }
        }
    };
    parts.extensions.insert(Cost(cost));
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[derive(Debug, Serialize)]
struct StatusBody {
    #[serde(flatten)]
    decision: DecisionBody,
    backend: &'static str,
    circuit: &'static str,
}

/// The client `/status` asks about: `?key=` (a key-header value), `?ip=` (an address, keyed
/// as the layer keys it: IPv6 by its /64), or, with neither, the caller itself. A query it
/// cannot answer truthfully is refused with 400 rather than reported as a fresh client.
fn status_key(
    state: &AppState,
    query: &HashMap<String, String>,
    parts: &Parts,
) -> Result<String, String> {
    if let Some(other) = query.keys().find(|k| !matches!(k.as_str(), "key" | "ip")) {
        return Err(format!(
            "unknown query parameter `{other}`: use ?key=<client id> or ?ip=<address>"
        ));
    }
    let refuse = |message: &str| Err(message.to_owned());
    match (query.get("key"), query.get("ip")) {
        (Some(_), Some(_)) => refuse("pass ?key= or ?ip=, not both"),
        (Some(id), None) if id.is_empty() => refuse("?key= is empty"),
        (Some(_), None) if !state.key.has_header() => {
            refuse("clients are keyed by IP only here (KEY_HEADER is empty): use ?ip=<address>")
        }
        (Some(id), None) => Ok(ClientKey::for_id(id.as_bytes())),
        (None, Some(ip)) => match ip.trim().parse::<IpAddr>() {
            Ok(ip) => Ok(ClientKey::for_ip(ip)),
            Err(_) => refuse("?ip= is not an IP address (expected e.g. 192.0.2.1 or 2001:db8::1)"),
        },
        (None, None) => match state.key.extract(parts) {
            Some(key) => Ok(key),
            None => refuse("no client key: pass ?key=, ?ip= or send the key header"),
        },
    }
}

/// The client's state under `/ratelimit`'s policy, without charging anything.
async fn status(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    parts: Parts,
) -> Response {
    let key = match status_key(&state, &query, &parts) {
        Ok(key) => key,
        Err(message) => return bad_request(&message),
    };
    let policy = state.policies.pick("/ratelimit", &key);
    let store_key = policy.store_key(&key);
    let store = state.store.store();
    match store
        .peek(&store_key, policy.limits(), NonZeroU32::MIN)
        .await
    {
        Ok(decision) => {
            let mut res = json_response(
                StatusCode::OK,
                &StatusBody {
                    decision: DecisionBody::from(&decision),
                    backend: state.store.backend(),
                    circuit: state.store.circuit(),
                },
            );
            // The headers `/ratelimit` would carry, without spending anything.
            headers::write_headers(res.headers_mut(), HeaderStyle::Both, policy, &decision);
            res
        }
        Err(err) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({
                "error": "rate limit store unavailable",
                "detail": redact(&err.to_string()),
                "backend": state.store.backend(),
                "circuit": state.store.circuit(),
            }),
        ),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut res = state.metrics.render().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    res
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::extract::ConnectInfo;
    use metrics_exporter_prometheus::PrometheusBuilder;
    use tower::ServiceExt;

    use super::*;
    use crate::config::Config;

    fn app(vars: &[(&str, &str)]) -> Router {
        let config = Config::from_vars(vars).unwrap();
        router(AppState::new(
            DemoStore::memory(&config),
            Policies::from_config(&config).unwrap(),
            ClientKey::from_config(&config),
            PrometheusBuilder::new().build_recorder().handle(),
        ))
    }

    async fn get(app: &Router, uri: &str, peer: &str) -> (StatusCode, serde_json::Value) {
        let mut req = Request::get(uri).body(Body::empty()).unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        let res = app.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), MAX_BODY)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn status_finds_a_client_by_ip_with_ipv6_by_its_64() {
        let app = app(&[("RATE_LIMIT", "5"), ("RATE_LIMIT_WINDOW_SEC", "86400")]);
        for peer in ["[2001:db8:0:7::1]:9", "[2001:db8:0:7::2]:9", "192.0.2.1:9"] {
            assert_eq!(get(&app, "/ratelimit", peer).await.0, StatusCode::OK);
        }
        for (uri, remaining) in [
            ("/status?ip=2001:db8:0:7::ffff", 3),
            ("/status?ip=2001:db8:0:8::1", 5),
            ("/status?ip=192.0.2.1", 4),
            ("/status?ip=192.0.2.2", 5),
        ] {
            let (status, json) = get(&app, uri, "198.51.100.1:9").await;
            assert_eq!(status, StatusCode::OK, "{uri}: {json}");
            assert_eq!(json["remaining"], remaining, "{uri}: {json}");
        }
    }

    #[tokio::test]
    async fn status_refuses_what_it_cannot_answer() {
        let app_with_header = app(&[]);
        let by_ip_only = app(&[("KEY_HEADER", "")]);
        for (app, uri) in [
            (&app_with_header, "/status?ip=nope"),
            (&app_with_header, "/status?ip="),
            (&app_with_header, "/status?key="),
            (&app_with_header, "/status?client=alice"),
            (&app_with_header, "/status?key=a&ip=192.0.2.1"),
            (&by_ip_only, "/status?key=alice"),
        ] {
            let (status, json) = get(app, uri, "192.0.2.9:9").await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {json}");
            assert!(json["error"].is_string(), "{uri}: {json}");
        }
        // What it can answer: by key, and the caller itself.
        for uri in ["/status?key=alice", "/status"] {
            let (status, json) = get(&app_with_header, uri, "192.0.2.9:9").await;
            assert_eq!(status, StatusCode::OK, "{uri}: {json}");
        }
    }
}

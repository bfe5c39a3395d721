//! The demo's endpoints.
//!
//! | Endpoint | What it does |
//! |---|---|
//! | `GET /ratelimit` | charges 1 to the client: 200 or 429, JSON and rate-limit headers |
//! | `POST /acquire` | charges `cost` from an optional JSON body `{"cost": n}` (default 1) |
//! | `GET /status?key=K` | the client's state without charging, the backend and the circuit |
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz` | 200 |
//!
//! `/ratelimit` and `/acquire` sit behind the [`RateLimitLayer`]: it decides, writes every
//! header and answers 429 itself (with the JSON built by [`reject`]); the handlers only turn the
//! [`Decision`] the layer put in the request extensions into JSON. `/acquire` reads its cost in a
//! small middleware outside the layer, which buffers the body and puts a [`Cost`] into the
//! extensions, where the layer's cost hook finds it.

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

/// The largest `/acquire` body read.
const MAX_BODY: usize = 64 * 1024;

/// What the routes share.
#[derive(Clone, Debug)]
pub struct AppState {
    store: DemoStore,
    policies: Arc<Policies>,
    key: Arc<ClientKey>,
    metrics: PrometheusHandle,
}

impl AppState {
    /// The state for [`router`].
    pub fn new(
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
pub struct Cost(pub NonZeroU32);

/// The JSON of a decision: `/ratelimit`, `/acquire`, their 429s, and `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionBody {
    /// Whether the request was (or, for `/status`, would be) admitted.
    pub allowed: bool,
    /// Capacity of the binding limit.
    pub limit: u32,
    /// What is left of it.
    pub remaining: u32,
    /// Milliseconds until it is full again, rounded up.
    pub reset_after_ms: u64,
    /// Milliseconds to wait before retrying, rounded up: 0 when allowed, `null` when no wait
    /// would help (the cost exceeds the capacity).
    pub retry_after_ms: Option<u64>,
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
pub fn router(state: AppState) -> Router {
    let policies = Arc::clone(&state.policies);
    // The policy hook always picks, so the layer's own default policy only needs a quota.
    let quota = *state.policies.default_limit().quota();
    let layer = RateLimitLayer::new(state.store.store(), quota)
        .key(ClientKey::clone(&state.key))
        .policy(move |parts: &Parts, key: &str| Some(policies.pick(parts.uri.path(), key).clone()))
        .cost(|parts: &Parts| parts.extensions.get::<Cost>().map_or(1, |c| c.0.get()))
        .on_store_error(state.store.failure_mode())
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
pub fn reject(rejection: &Rejection<'_>) -> Response<Body> {
    match rejection {
        Rejection::Limited(decision) => {
            json_response(rejection.status(), &DecisionBody::from(*decision))
        }
        Rejection::StoreUnavailable(err) => json_response(
            rejection.status(),
            &json!({ "error": "rate limit store unavailable", "detail": err.to_string() }),
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
        .map(|f| f.message().to_owned());
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

#[derive(Debug, Deserialize)]
struct StatusQuery {
    key: Option<String>,
}

#[derive(Debug, Serialize)]
struct StatusBody {
    #[serde(flatten)]
    decision: DecisionBody,
    backend: &'static str,
    circuit: &'static str,
}

/// The client's state under `/ratelimit`'s policy, without charging anything.
async fn status(
    State(state): State<AppState>,
    Query(query): Query<StatusQuery>,
    parts: Parts,
) -> Response {
    let key = match query.key.filter(|k| !k.is_empty()) {
        Some(id) => ClientKey::for_id(id.as_bytes()),
        None => match state.key.extract(&parts) {
            Some(key) => key,
            None => return bad_request("no client key: pass ?key= or send the key header"),
        },
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
                "detail": err.to_string(),
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

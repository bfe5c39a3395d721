//! What the measurement programs of this crate build alike: the never-denying quota, our layer
//! with a given [`HeaderStyle`], tower_governor's layer with and without its headers, and the
//! fixed rate-limit fields of the `headers` baseline.
//!
//! Every limiter here keys requests by the [`CLIENT_HEADER`] header and has a quota far above
//! what one machine can send, so it never denies and every request pays the full admitted path:
//! key extraction, the decision and the headers it was asked for.

use std::num::NonZeroU32;

use axum::Router;
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use rate_limit_core::{Algorithm, Quota, Store};
use tower::util::MapResponseLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor as GovernorKey;
use tower_governor::{GovernorError, GovernorLayer};
use tower_ratelimit::{HeaderStyle, RateLimitLayer, headers, key};

/// The header every limiter keys by.
pub const CLIENT_HEADER: &str = "x-client-id";

/// Requests per second (and burst) of the never-denying quota.
pub const NEVER_DENY: u32 = 1_000_000_000;

/// Our layer's header styles, by the names the programs take on their command lines and in
/// `HEADER_STYLE`.
pub const HEADER_STYLES: [(&str, HeaderStyle); 4] = [
    ("none", HeaderStyle::None),
    ("legacy", HeaderStyle::Legacy),
    ("ietf", HeaderStyle::Ietf),
    ("both", HeaderStyle::Both),
];

/// The style named `name` in [`HEADER_STYLES`].
pub fn header_style(name: &str) -> Option<HeaderStyle> {
    HEADER_STYLES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|&(_, style)| style)
}

/// The names of [`HEADER_STYLES`], comma-separated, for messages.
pub fn header_style_names() -> String {
    HEADER_STYLES.map(|(name, _)| name).join(", ")
}

/// Our layer's quota: [`NEVER_DENY`] per second, burst the same.
pub fn never_deny() -> Quota {
    Quota::per_second(NonZeroU32::new(NEVER_DENY).unwrap_or(NonZeroU32::MAX))
}

/// Our layer on `store` with the never-denying quota, keyed by [`CLIENT_HEADER`], writing
/// `style`.
pub fn ours(store: impl Store, style: HeaderStyle) -> RateLimitLayer {
    RateLimitLayer::new(store, never_deny())
        .key(key::Header::new(CLIENT_HEADER))
        .headers(style)
}

/// tower-rate-limit-redis's quota as [`with_trl_redis`] sets it: 65,535 at once, one more
/// each millisecond (an emission interval of whole microseconds, as most quotas have; the
/// never-denying quota's interval of one nanosecond takes the script's exact-nanosecond path).
///
/// # Panics
///
/// Never: the count and period are valid.
pub fn trl_quota() -> Quota {
    let count = NonZeroU32::new(u32::from(u16::MAX)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(count, std::time::Duration::from_millis(u64::from(u16::MAX)))
        .unwrap_or_else(|_| never_deny())
}

/// Our layer on `store` with tower-rate-limit-redis's algorithm (GCRA) and quota
/// ([`trl_quota`]), keyed by [`CLIENT_HEADER`], writing `style`: the peer's limiter, decided by
/// ours.
pub fn ours_as_trl(store: impl Store, style: HeaderStyle) -> RateLimitLayer {
    RateLimitLayer::new(store, trl_quota())
        .algorithm(Algorithm::Gcra)
        .key(key::Header::new(CLIENT_HEADER))
        .headers(style)
}

/// tower_governor's key: the [`CLIENT_HEADER`] header, as our `key::Header` reads it.
#[derive(Debug, Clone, Copy)]
pub struct ClientId;

impl GovernorKey for ClientId {
    type Key = String;

    fn extract<T>(&self, req: &Request<T>) -> Result<String, GovernorError> {
        req.headers()
            .get(CLIENT_HEADER)
            .map(|value| key::compact_bytes(value.as_bytes()))
            .filter(|k| !k.is_empty())
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

/// `router` behind tower_governor's keyed limiter at the never-denying rate. With `headers`,
/// `use_headers()`: an admitted response carries `x-ratelimit-limit` and
/// `x-ratelimit-remaining`; without, no rate-limit field.
///
/// # Errors
///
/// tower_governor refuses the settings (it refuses only a zero period or burst).
pub fn with_governor(router: Router, headers: bool) -> Result<Router, String> {
    const REFUSED: &str = "governor: period and burst must be non-zero";
    // One cell per nanosecond, NEVER_DENY at once: the rate of `never_deny`.
    let mut builder = GovernorConfigBuilder::default();
    builder.per_nanosecond(1).burst_size(NEVER_DENY);
    let mut builder = builder.key_extractor(ClientId);
    Ok(if headers {
        let config = builder.use_headers().finish().ok_or(REFUSED)?;
        router.layer(GovernorLayer::new(config))
    } else {
        let config = builder.finish().ok_or(REFUSED)?;
        router.layer(GovernorLayer::new(config))
    })
}

/// `router` behind tower-rate-limit-redis 1.0 (a one-key GCRA script, no rate-limit headers),
/// keyed by [`CLIENT_HEADER`], over a multiplexed connection to `url`.
///
/// Its largest quota is 65,535 at once and one per millisecond: it never denies a client that
/// sends fewer than 1,000 requests per second after its first 65,535, which holds for 10k random
/// clients under one machine's load, not for one hot client (whose denials would cost Redis less
/// than admissions: compare it with 10k keys only).
///
/// # Errors
///
/// The Redis server cannot be reached.
pub async fn with_trl_redis(router: Router, url: &str) -> Result<Router, String> {
    let conn = redis_peer::Client::open(url)
        .map_err(|e| e.to_string())?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let layer = tower_rate_limit_redis::RateLimitLayer::builder()
        .conn(conn)
        .key_resolver(TrlClientId)
        .capacity(u16::MAX)
        .emission_interval(std::time::Duration::from_millis(1))
        .build();
    Ok(router.layer(layer))
}

/// tower-rate-limit-redis's key: the [`CLIENT_HEADER`]; a request without it is answered 400.
#[derive(Debug, Clone, Copy)]
struct TrlClientId;

impl tower_rate_limit_redis::KeyResolver for TrlClientId {
    type Key = Vec<u8>;
    type ErrorBody = axum::body::Body;

    fn key<T>(&self, req: &http::Request<T>) -> Result<Vec<u8>, http::Response<axum::body::Body>> {
        match req.headers().get(CLIENT_HEADER) {
            Some(id) => Ok(id.as_bytes().to_vec()),
            None => {
                let mut res = http::Response::new(axum::body::Body::empty());
                *res.status_mut() = http::StatusCode::BAD_REQUEST;
                Err(res)
            }
        }
    }
}

/// The five fields our layer writes on an admitted request with [`HeaderStyle::Both`], the
/// never-denying quota and policy `default`, as fixed values.
pub static FIVE_FIELDS: [(HeaderName, HeaderValue); 5] = [
    (
        headers::X_RATELIMIT_LIMIT,
        HeaderValue::from_static("1000000000"),
    ),
    (
        headers::X_RATELIMIT_REMAINING,
        HeaderValue::from_static("999999999"),
    ),
    (headers::X_RATELIMIT_RESET, HeaderValue::from_static("1")),
    (
        headers::RATELIMIT_POLICY,
        HeaderValue::from_static("\"default\";q=1000000000;w=1"),
    ),
    (
        headers::RATELIMIT,
        HeaderValue::from_static("\"default\";r=999999999;t=1"),
    ),
];

/// `router` with no limiter, writing [`FIVE_FIELDS`] on every response: the least any layer
/// that writes those fields can cost.
pub fn with_fixed_fields(router: Router) -> Router {
    router.layer(MapResponseLayer::new(|mut res: Response| {
        let map = res.headers_mut();
        map.reserve(FIVE_FIELDS.len());
        for (name, value) in &FIVE_FIELDS {
            map.insert(name.clone(), value.clone());
        }
        res
    }))
}

/// How many rate-limit fields `headers` holds: those whose name mentions `ratelimit`, which
/// covers ours (`X-RateLimit-*`, `RateLimit`, `RateLimit-Policy`) and tower_governor's.
pub fn rate_limit_fields(headers: &HeaderMap) -> usize {
    headers
        .keys()
        .filter(|name| name.as_str().contains("ratelimit"))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::body::Body;
    use axum::routing::get;
    use rate_limit_core::MemoryStore;
    use tower::ServiceExt;

    fn router() -> Router {
        Router::new().route("/", get(|| async { "ok" }))
    }

    async fn fields_of(app: Router) -> Vec<String> {
        let req = Request::get("/")
            .header(CLIENT_HEADER, "bench-test")
            .body(Body::empty())
            .unwrap();
        let res = app.oneshot(req).await.unwrap();
        assert!(res.status().is_success());
        let mut names: Vec<String> = res
            .headers()
            .keys()
            .map(|n| n.as_str().to_owned())
            .filter(|n| n.contains("ratelimit"))
            .collect();
        names.sort_unstable();
        assert_eq!(names.len(), rate_limit_fields(res.headers()));
        names
    }

    #[tokio::test]
    async fn each_style_writes_its_fields() {
        let expected: [(&str, &[&str]); 4] = [
            ("none", &[]),
            (
                "legacy",
                &[
                    "x-ratelimit-limit",
                    "x-ratelimit-remaining",
                    "x-ratelimit-reset",
                ],
            ),
            ("ietf", &["ratelimit", "ratelimit-policy"]),
            (
                "both",
                &[
                    "ratelimit",
                    "ratelimit-policy",
                    "x-ratelimit-limit",
                    "x-ratelimit-remaining",
                    "x-ratelimit-reset",
                ],
            ),
        ];
        for (name, fields) in expected {
            let style = header_style(name).unwrap();
            let app = router().layer(ours(MemoryStore::new(), style));
            assert_eq!(fields_of(app).await, fields, "{name}");
        }
        assert_eq!(header_style("all"), None);
    }

    #[tokio::test]
    async fn governor_writes_two_fields_with_headers_and_none_without() {
        let with = with_governor(router(), true).unwrap();
        assert_eq!(
            fields_of(with).await,
            ["x-ratelimit-limit", "x-ratelimit-remaining"]
        );
        let without = with_governor(router(), false).unwrap();
        assert!(fields_of(without).await.is_empty());
    }

    #[tokio::test]
    async fn fixed_fields_are_what_the_layer_writes_by_default() {
        let ours_res = router()
            .layer(ours(MemoryStore::new(), HeaderStyle::Both))
            .oneshot(
                Request::get("/")
                    .header(CLIENT_HEADER, "bench-test")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let fixed = with_fixed_fields(router())
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        for (name, value) in &FIVE_FIELDS {
            assert_eq!(ours_res.headers().get(name), Some(value), "{name}");
            assert_eq!(fixed.headers().get(name), Some(value), "{name}");
        }
        assert_eq!(ours_res.headers().len(), fixed.headers().len());
    }

    #[test]
    fn governor_key_is_the_client_header() {
        let req = Request::get("/")
            .header("X-Client-ID", "hot")
            .body(())
            .unwrap();
        assert_eq!(ClientId.extract(&req).unwrap(), "hot");
        let req = Request::get("/").body(()).unwrap();
        assert!(ClientId.extract(&req).is_err());
    }
}

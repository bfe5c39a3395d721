//! The server `bench/http.sh` loads: one `GET /` route answering `ok`, behind a limiter chosen
//! at startup, so that the cost of each limiter is the difference to the bare server.
//!
//! ```text
//! BENCH_MODE=memory PORT=3000 cargo run --release --example bench_server
//! curl -H 'x-client-id: a' http://127.0.0.1:3000/
//! ```
//!
//! Environment:
//!
//! - `BENCH_MODE` (required): `bare` (no limiter), `memory` (our layer on a `MemoryStore`),
//!   `redis` (our layer on a `RedisStore`), `redis-unbatched` (the same with batching and the
//!   deny cache off: one `EVALSHA` per request, the naive layer issue 7 compares against),
//!   `governor` (tower_governor's keyed limiter) or `headers` (no limiter: only the five
//!   rate-limit fields our layer writes here, as fixed values, the least any layer that writes
//!   them can cost).
//! - `PORT` (default 3000): the port to listen on, on 127.0.0.1.
//! - `REDIS_URL` (required in `redis` mode), e.g. `redis://127.0.0.1:6390`.
//!
//! Every limiter keys requests by the `X-Client-ID` header and has a quota far above what one
//! machine can send (10^9 per second, burst 10^9), so it never denies and every request pays
//! the full admitted path: key extraction, the store's decision and the rate-limit headers
//! (both header styles for our layer, tower_governor's `use_headers` for governor). A bad value
//! exits with status 2 and a message naming the variable.

use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::process::ExitCode;

use axum::Router;
use axum::response::Response;
use axum::routing::get;
use http::{HeaderName, HeaderValue, Request};
use rate_limit_core::{MemoryStore, Quota, RedisStore};
use tower::util::MapResponseLayer;
use tower_governor::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor as GovernorKey;
use tower_ratelimit::{HeaderStyle, RateLimitLayer, headers, key};

/// The header every limiter keys by.
const CLIENT_HEADER: &str = "x-client-id";

/// Requests per second (and burst) of the never-denying quota.
const NEVER_DENY: u32 = 1_000_000_000;

/// Which limiter, if any, sits in front of the route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bare,
    Memory,
    Redis,
    RedisUnbatched,
    Governor,
    Headers,
}

impl Mode {
    const ALL: [Self; 6] = [
        Self::Bare,
        Self::Memory,
        Self::Redis,
        Self::RedisUnbatched,
        Self::Governor,
        Self::Headers,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::RedisUnbatched => "redis-unbatched",
            Self::Governor => "governor",
            Self::Headers => "headers",
        }
    }
}

/// The server's settings, read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Config {
    mode: Mode,
    port: u16,
    redis_url: Option<String>,
}

/// A setting that is missing or has a bad value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EnvError {
    var: &'static str,
    value: Option<String>,
    expected: String,
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={value:?}: expected {}", self.var, self.expected),
            None => write!(f, "{} is not set: expected {}", self.var, self.expected),
        }
    }
}

impl std::error::Error for EnvError {}

impl Config {
    /// Reads the settings through `var`, which returns a variable's value if it is set.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let modes = Mode::ALL.map(Mode::name).join(", ");
        let mode = match var("BENCH_MODE") {
            Some(value) => Mode::ALL
                .into_iter()
                .find(|m| m.name() == value)
                .ok_or(EnvError {
                    var: "BENCH_MODE",
                    value: Some(value),
                    expected: format!("one of {modes}"),
                })?,
            None => {
                return Err(EnvError {
                    var: "BENCH_MODE",
                    value: None,
                    expected: format!("one of {modes}"),
                });
            }
        };
        let port = match var("PORT") {
            Some(value) => value.parse::<u16>().map_err(|_| EnvError {
                var: "PORT",
                value: Some(value),
                expected: String::from("a port number from 0 to 65535"),
            })?,
            None => 3000,
        };
        let redis_url = var("REDIS_URL").filter(|url| !url.is_empty());
        if matches!(mode, Mode::Redis | Mode::RedisUnbatched) && redis_url.is_none() {
            return Err(EnvError {
                var: "REDIS_URL",
                value: None,
                expected: String::from("a Redis URL such as redis://127.0.0.1:6390 in redis mode"),
            });
        }
        Ok(Self {
            mode,
            port,
            redis_url,
        })
    }
}

/// tower_governor's key: the `X-Client-ID` header, as our `key::Header` reads it.
#[derive(Debug, Clone, Copy)]
struct ClientId;

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

/// The five fields our layer writes on an admitted request here (both header styles, the
/// never-denying quota, policy `default`), as fixed values: what `headers` mode writes.
fn five_fields() -> [(HeaderName, HeaderValue); 5] {
    [
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
    ]
}

/// Our layer's quota: [`NEVER_DENY`] per second, burst the same.
fn never_deny() -> Quota {
    Quota::per_second(NonZeroU32::new(NEVER_DENY).unwrap_or(NonZeroU32::MAX))
}

/// The app for `config`: the route, behind the mode's limiter.
///
/// # Errors
///
/// The Redis server cannot be reached (redis mode), or governor rejects its settings.
async fn app(config: &Config) -> Result<Router, Box<dyn std::error::Error>> {
    let router = Router::new().route("/", get(|| async { "ok" }));
    let ours = |layer: RateLimitLayer| {
        layer
            .key(key::Header::new(CLIENT_HEADER))
            .headers(HeaderStyle::Both)
    };
    Ok(match config.mode {
        Mode::Bare => router,
        Mode::Headers => router.layer(MapResponseLayer::new(|mut res: Response| {
            let headers = res.headers_mut();
            headers.reserve(5);
            for (name, value) in five_fields() {
                headers.insert(name, value);
            }
            res
        })),
        Mode::Memory => router.layer(ours(RateLimitLayer::new(MemoryStore::new(), never_deny()))),
        Mode::Redis => {
            let url = config.redis_url.as_deref().unwrap_or_default();
            let store = RedisStore::connect(url).await?;
            router.layer(ours(RateLimitLayer::new(store, never_deny())))
        }
        Mode::RedisUnbatched => {
            let url = config.redis_url.as_deref().unwrap_or_default();
            let conn = redis::Client::open(url)?.get_connection_manager().await?;
            let store = RedisStore::builder(conn)
                .max_batch(NonZeroUsize::MIN)
                .deny_cache(0)
                .build()?;
            router.layer(ours(RateLimitLayer::new(store, never_deny())))
        }
        Mode::Governor => {
            // One cell per nanosecond, 10^9 at once: the same rate as `never_deny`.
            let governor = GovernorConfigBuilder::default()
                .per_nanosecond(1)
                .burst_size(NEVER_DENY)
                .key_extractor(ClientId)
                .use_headers()
                .finish()
                .ok_or("governor: period and burst must be non-zero")?;
            router.layer(tower_governor::GovernorLayer::new(governor))
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM, so that `bench/http.sh` stops the server cleanly.
async fn shutdown() {
    let ctrl_c = async {
        // If the handler cannot be installed, rely on SIGTERM alone.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Config::from_vars(|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("bench_server: {err}");
            return ExitCode::from(2);
        }
    };
    let app = match app(&config).await {
        Ok(app) => app,
        Err(err) => {
            eprintln!("bench_server: {} mode: {err}", config.mode.name());
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", config.port)).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("bench_server: PORT={}: cannot listen: {err}", config.port);
            return ExitCode::from(2);
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("bench_server: {} on http://{addr}", config.mode.name()),
        Err(err) => eprintln!("bench_server: {err}"),
    }
    match axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench_server: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use axum::body::Body;
    use http::StatusCode;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn config(vars: &[(&str, &str)]) -> Result<Config, EnvError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_vars(|name| vars.get(name).cloned())
    }

    /// The response of `mode`'s app to one keyed `GET /`.
    async fn response(mode: Mode, redis_url: Option<String>) -> Response {
        let app = app(&Config {
            mode,
            port: 0,
            redis_url,
        })
        .await
        .unwrap();
        let req = Request::get("/")
            .header(CLIENT_HEADER, "bench-test")
            .body(Body::empty())
            .unwrap();
        app.oneshot(req).await.unwrap()
    }

    /// Sends one keyed `GET /` through the app for `mode` and checks it is admitted.
    async fn answers_ok(mode: Mode, redis_url: Option<String>) {
        let res = response(mode, redis_url).await;
        assert_eq!(res.status(), StatusCode::OK, "{}", mode.name());
        // Every limiter reports the remaining budget; the bare server has none to report.
        assert_eq!(
            res.headers().contains_key("x-ratelimit-remaining"),
            mode != Mode::Bare,
            "{}",
            mode.name()
        );
        if matches!(mode, Mode::Memory | Mode::Redis | Mode::RedisUnbatched) {
            assert!(res.headers().contains_key("ratelimit"), "{}", mode.name());
        }
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    #[tokio::test]
    async fn headers_mode_writes_the_fields_the_layer_writes() {
        let ours = response(Mode::Memory, None).await;
        let fixed = response(Mode::Headers, None).await;
        assert_eq!(fixed.status(), StatusCode::OK);
        for (name, value) in five_fields() {
            assert_eq!(ours.headers().get(&name), Some(&value), "{name}");
            assert_eq!(fixed.headers().get(&name), Some(&value), "{name}");
        }
        assert_eq!(ours.headers().len(), fixed.headers().len());
    }

    #[tokio::test]
    async fn bare_answers_ok() {
        answers_ok(Mode::Bare, None).await;
    }

    #[tokio::test]
    async fn memory_answers_ok_with_headers() {
        answers_ok(Mode::Memory, None).await;
    }

    #[tokio::test]
    async fn governor_answers_ok_with_headers() {
        answers_ok(Mode::Governor, None).await;
        // The README compares header costs: on an admitted request, tower_governor writes two
        // rate-limit fields to our five.
        let res = response(Mode::Governor, None).await;
        let mut fields: Vec<&str> = res
            .headers()
            .keys()
            .map(HeaderName::as_str)
            .filter(|name| name.contains("ratelimit"))
            .collect();
        fields.sort_unstable();
        assert_eq!(fields, ["x-ratelimit-limit", "x-ratelimit-remaining"]);
    }

    #[tokio::test]
    async fn redis_answers_ok_with_headers() {
        // Its own redis-server on a free port: a visible skip without one, a failure under CI.
        if !integration_tests::redis_available() {
            return;
        }
        let server = integration_tests::RedisServer::start();
        answers_ok(Mode::Redis, Some(server.url())).await;
        answers_ok(Mode::RedisUnbatched, Some(server.url())).await;
    }

    #[test]
    fn reads_every_mode_and_port() {
        for mode in Mode::ALL {
            let cfg = config(&[
                ("BENCH_MODE", mode.name()),
                ("PORT", "4000"),
                ("REDIS_URL", "redis://127.0.0.1:1"),
            ])
            .unwrap();
            assert_eq!((cfg.mode, cfg.port), (mode, 4000));
        }
        assert_eq!(config(&[("BENCH_MODE", "bare")]).unwrap().port, 3000);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = config(&[("BENCH_MODE", "fast")]).unwrap_err();
        assert_eq!(err.var, "BENCH_MODE");
        assert!(err.to_string().starts_with("BENCH_MODE=\"fast\""), "{err}");
        assert_eq!(config(&[]).unwrap_err().var, "BENCH_MODE");
        let err = config(&[("BENCH_MODE", "bare"), ("PORT", "70000")]).unwrap_err();
        assert_eq!(err.var, "PORT");
        let err = config(&[("BENCH_MODE", "redis")]).unwrap_err();
        assert_eq!(err.var, "REDIS_URL");
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

//! The server `bench/http.sh` loads: one `GET /` route answering `ok`, behind a limiter chosen
//! at startup, so that the cost of each limiter is the difference to the bare server.
//!
//! ```text
//! BENCH_MODE=memory HEADER_STYLE=none PORT=3000 cargo run --release -p bench --bin bench_server
//! curl -H 'x-client-id: a' http://127.0.0.1:3000/
//! ```
//!
//! Environment:
//!
//! - `BENCH_MODE` (required): `bare` (no limiter), `memory` (our layer on a `MemoryStore`),
//!   `redis` (our layer on a `RedisStore`), `redis-unbatched` (the same with batching and the
//!   deny cache off: one `FCALL` per request), `redis-as-trl` (our layer on a `RedisStore`
//!   with tower-rate-limit-redis's algorithm and quota, GCRA at 65,535 at once and one per
//!   millisecond: compare it with `trl-redis`, with 10k random keys), `governor` (tower_governor's keyed limiter with
//!   `use_headers()`: two rate-limit fields), `governor-no-headers` (the same without them) or
//!   `headers` (no limiter: only the five rate-limit fields our layer writes by default, as
//!   fixed values, the least any layer that writes them can cost), or `trl-redis`
//!   (tower-rate-limit-redis 1.0, a one-key GCRA script per request, no headers; its largest
//!   quota denies one hot client under load, so compare it with 10k random keys).
//! - `HEADER_STYLE` (default `both`): the rate-limit headers our layer writes in `memory`,
//!   `redis`, `redis-unbatched` and `redis-as-trl` modes: `none`, `legacy` (three fields), `ietf` (two) or
//!   `both` (five). The other modes do not read it.
//! - `PORT` (default 3000): the port to listen on, on 127.0.0.1.
//! - `REDIS_URL` (required in the redis modes), e.g. `redis://127.0.0.1:6390`.
//!
//! Every limiter keys requests by the `X-Client-ID` header and, but for `redis-as-trl` and
//! `trl-redis`, has a quota far above what one machine can send (10^9 per second, burst 10^9),
//! so it never denies and every request pays the full admitted path (see the `bench` library). A bad value exits with status 2 and a
//! message naming the variable.

use std::fmt;
use std::num::NonZeroUsize;
use std::process::ExitCode;

use axum::Router;
use axum::routing::get;
use bench::{
    header_style, header_style_names, ours, ours_as_trl, with_fixed_fields, with_governor,
    with_trl_redis,
};
use rate_limit_core::{MemoryStore, RedisStore};
use tower_ratelimit::HeaderStyle;

/// Which limiter, if any, sits in front of the route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bare,
    Memory,
    Redis,
    RedisUnbatched,
    RedisAsTrl,
    Governor,
    GovernorNoHeaders,
    Headers,
    TrlRedis,
}

impl Mode {
    const ALL: [Self; 9] = [
        Self::Bare,
        Self::Memory,
        Self::Redis,
        Self::RedisUnbatched,
        Self::RedisAsTrl,
        Self::Governor,
        Self::GovernorNoHeaders,
        Self::Headers,
        Self::TrlRedis,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::RedisUnbatched => "redis-unbatched",
            Self::RedisAsTrl => "redis-as-trl",
            Self::Governor => "governor",
            Self::GovernorNoHeaders => "governor-no-headers",
            Self::Headers => "headers",
            Self::TrlRedis => "trl-redis",
        }
    }
}

/// The server's settings, read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Config {
    mode: Mode,
    style: HeaderStyle,
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
        let style = match var("HEADER_STYLE").filter(|v| !v.is_empty()) {
            Some(value) => header_style(&value).ok_or_else(|| EnvError {
                var: "HEADER_STYLE",
                value: Some(value),
                expected: format!("one of {}", header_style_names()),
            })?,
            None => HeaderStyle::Both,
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
        if matches!(
            mode,
            Mode::Redis | Mode::RedisUnbatched | Mode::RedisAsTrl | Mode::TrlRedis
        ) && redis_url.is_none()
        {
            return Err(EnvError {
                var: "REDIS_URL",
                value: None,
                expected: String::from("a Redis URL such as redis://127.0.0.1:6390 in redis mode"),
            });
        }
        Ok(Self {
            mode,
            style,
            port,
            redis_url,
        })
    }
}

impl Config {
    /// The mode, and the header style where the mode reads it.
    fn describe(&self) -> String {
        let mode = self.mode.name();
        if !matches!(
            self.mode,
            Mode::Memory | Mode::Redis | Mode::RedisUnbatched | Mode::RedisAsTrl
        ) {
            return mode.to_owned();
        }
        let style = bench::HEADER_STYLES
            .iter()
            .find(|(_, style)| *style == self.style)
            .map_or("?", |(name, _)| name);
        format!("{mode}, HEADER_STYLE={style}")
    }
}

/// The app for `config`: the route, behind the mode's limiter.
///
/// # Errors
///
/// The Redis server cannot be reached (redis modes), or governor rejects its settings.
async fn app(config: &Config) -> Result<Router, Box<dyn std::error::Error>> {
    let router = Router::new().route("/", get(|| async { "ok" }));
    let style = config.style;
    Ok(match config.mode {
        Mode::Bare => router,
        Mode::Headers => with_fixed_fields(router),
        Mode::Memory => router.layer(ours(MemoryStore::new(), style)),
        Mode::Redis => {
            let url = config.redis_url.as_deref().unwrap_or_default();
            let store = RedisStore::connect(url).await?;
            router.layer(ours(store, style))
        }
        Mode::RedisUnbatched => {
            let url = config.redis_url.as_deref().unwrap_or_default();
            let conn = redis::Client::open(url)?.get_connection_manager().await?;
            let store = RedisStore::builder(conn)
                .max_batch(NonZeroUsize::MIN)
                .deny_cache(None)
                .build()?;
            router.layer(ours(store, style))
        }
        Mode::RedisAsTrl => {
            let url = config.redis_url.as_deref().unwrap_or_default();
            let store = RedisStore::connect(url).await?;
            router.layer(ours_as_trl(store, style))
        }
        Mode::TrlRedis => {
            with_trl_redis(router, config.redis_url.as_deref().unwrap_or_default()).await?
        }
        Mode::Governor => with_governor(router, true)?,
        Mode::GovernorNoHeaders => with_governor(router, false)?,
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
        Ok(addr) => println!("bench_server: {} on http://{addr}", config.describe()),
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
    use axum::response::Response;
    use bench::{CLIENT_HEADER, rate_limit_fields};
    use http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn config(vars: &[(&str, &str)]) -> Result<Config, EnvError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_vars(|name| vars.get(name).cloned())
    }

    /// The response of the app for `vars` (`PORT` 0) to one keyed `GET /`, checked to be
    /// `200 ok`.
    async fn response(vars: &[(&str, &str)]) -> Response {
        let mut vars = vars.to_vec();
        vars.push(("PORT", "0"));
        let app = app(&config(&vars).unwrap()).await.unwrap();
        let req = Request::get("/")
            .header(CLIENT_HEADER, "bench-test")
            .body(Body::empty())
            .unwrap();
        let res = app.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{vars:?}");
        let (parts, body) = res.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"ok", "{vars:?}");
        Response::from_parts(parts, Body::empty())
    }

    /// The number of rate-limit fields on the response of `mode` with `style` (and `url`).
    async fn fields(mode: &str, style: &str, url: &str) -> usize {
        let res = response(&[
            ("BENCH_MODE", mode),
            ("HEADER_STYLE", style),
            ("REDIS_URL", url),
        ])
        .await;
        rate_limit_fields(res.headers())
    }

    #[tokio::test]
    async fn in_memory_modes_write_the_fields_they_are_asked_for() {
        for (mode, style, expected) in [
            ("bare", "both", 0),
            ("headers", "none", 5),
            ("governor", "none", 2),
            ("governor-no-headers", "both", 0),
            ("memory", "none", 0),
            ("memory", "legacy", 3),
            ("memory", "ietf", 2),
            ("memory", "both", 5),
            ("memory", "", 5),
        ] {
            assert_eq!(fields(mode, style, "").await, expected, "{mode} {style:?}");
        }
    }

    #[tokio::test]
    async fn redis_modes_answer_ok_with_the_style_asked_for() {
        // Its own redis-server on a free port: a visible skip without one, a failure under CI.
        if !integration_tests::redis_available() {
            return;
        }
        let server = integration_tests::RedisServer::start();
        let url = server.url();
        for mode in ["redis", "redis-unbatched", "redis-as-trl"] {
            assert_eq!(fields(mode, "both", &url).await, 5, "{mode}");
            assert_eq!(fields(mode, "legacy", &url).await, 3, "{mode}");
        }
        // The peer's quota, decided by ours: 65,535 at once.
        let res = response(&[
            ("BENCH_MODE", "redis-as-trl"),
            ("HEADER_STYLE", "legacy"),
            ("REDIS_URL", &url),
        ])
        .await;
        assert_eq!(res.headers()["x-ratelimit-limit"], "65535");
        // The peer writes no rate-limit fields, and decides in a script of its own.
        let before = server.calls("evalsha") + server.calls("eval");
        assert_eq!(fields("trl-redis", "both", &url).await, 0);
        let after = server.calls("evalsha") + server.calls("eval");
        assert!(after > before, "the peer's script never ran");
    }

    #[test]
    fn reads_every_mode_style_and_port() {
        for mode in Mode::ALL {
            let cfg = config(&[
                ("BENCH_MODE", mode.name()),
                ("PORT", "4000"),
                ("REDIS_URL", "redis://127.0.0.1:1"),
            ])
            .unwrap();
            assert_eq!((cfg.mode, cfg.port), (mode, 4000));
        }
        let cfg = config(&[("BENCH_MODE", "bare")]).unwrap();
        assert_eq!((cfg.port, cfg.style), (3000, HeaderStyle::Both));
        assert_eq!(cfg.describe(), "bare");
        for (name, style) in bench::HEADER_STYLES {
            let cfg = config(&[("BENCH_MODE", "memory"), ("HEADER_STYLE", name)]).unwrap();
            assert_eq!(cfg.style, style, "{name}");
            assert_eq!(cfg.describe(), format!("memory, HEADER_STYLE={name}"));
        }
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
        let err = config(&[("BENCH_MODE", "memory"), ("HEADER_STYLE", "all")]).unwrap_err();
        assert_eq!(err.var, "HEADER_STYLE");
        assert!(
            err.to_string().contains("none, legacy, ietf, both"),
            "{err}"
        );
    }
}

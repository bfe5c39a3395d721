//! The demo server: a rate-limited HTTP API configured from the environment.
//!
//! ```text
//! cargo run --release --example demo
//! RATE_LIMIT=5 RATE_LIMIT_WINDOW_SEC=10 REDIS_URL=redis://127.0.0.1:6379 cargo run --example demo
//! ```
//!
//! # Endpoints
//!
//! | Endpoint | What it does |
//! |---|---|
//! | `GET /ratelimit` | charges 1 to the client: 200 or 429, JSON and rate-limit headers |
//! | `POST /acquire` | charges `cost` from an optional JSON body `{"cost": n}` (default 1) |
//! | `GET /status` | the state of a client without charging: `?key=<id>` (a key-header value), `?ip=<address>` (a client keyed by IP; IPv6 by its /64, as the layer keys it), or neither (the caller); a query it cannot answer (an unknown parameter, both, a bad address, `?key=` when `KEY_HEADER` is empty) is a 400 |
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz` | 200 |
//!
//! The client is the key header's value (`id:<value>`), or its IP (`ip:<address>`) when the
//! header is absent. SIGTERM or Ctrl-C stops accepting connections, lets in-flight requests
//! finish (up to 30 s), and exits 0.
//!
//! # Settings
//!
//! Every setting is an environment variable, or the same name in lower case in the TOML file
//! that `RATELIMIT_CONFIG` names; the environment wins.
//!
//! | Variable | Default | Meaning |
//! |---|---|---|
//! | `PORT` | 8080 | listen port on every IPv4 interface; 0 picks a free one |
//! | `REDIS_URL` | unset: in memory | `redis://[user:password@]host:port[/db]` |
//! | `REDIS_ADDR` | unset | `host:port`, the same as `REDIS_URL=redis://host:port`; not with `REDIS_URL` |
//! | `REDIS_CLUSTER_NODES` | unset | comma-separated `redis://` URLs of some nodes of a Redis Cluster; not with `REDIS_URL`/`REDIS_ADDR` |
//! | `REDIS_SENTINELS` | unset | comma-separated `host:port` (or `redis://[user:password@]host:port`, a sentinel's own AUTH) of Redis Sentinels; the master they name is used, and found again after a failover; not with the three above |
//! | `REDIS_SENTINEL_MASTER` | unset | with `REDIS_SENTINELS`: the service's name, or `redis://[user:password@]name[/db]` for the master's AUTH and database |
//! | `RATE_LIMIT` | 100 | requests per window |
//! | `RATE_LIMIT_WINDOW_SEC` | 60 | window (refill period), seconds |
//! | `RATE_LIMIT_BURST` | `RATE_LIMIT` | bucket capacity (token_bucket, leaky_bucket, gcra) |
//! | `RATE_LIMIT_ALGORITHM` | token_bucket | token_bucket, leaky_bucket, fixed_window, sliding_window_log, sliding_window, gcra |
//! | `RATE_LIMIT_MAX_KEYS` | 1000000 | bound of the in-memory store and of the local fallback |
//! | `FAILURE_MODE` | local | when Redis cannot decide: `open` (allow), `closed` (503), `local` (in memory, `1/RATE_LIMIT_INSTANCES` of each quota per instance) |
//! | `RATE_LIMIT_INSTANCES` | 1 | instances sharing Redis; with `local`, a limit or burst below it stops the demo at start-up |
//! | `REDIS_TIMEOUT_MS` | 50 | time budget of one Redis call; failures open a circuit breaker |
//! | `KEY_HEADER` | X-Client-ID | header naming the client; empty: key by IP only |
//! | `TRUSTED_PROXIES` | none | comma-separated addresses or CIDRs whose `X-Forwarded-For` is believed |
//! | `RATELIMIT_CONFIG` | unset | the TOML file |
//!
//! In the file, numbers may be TOML integers, lists (`trusted_proxies`, `redis_cluster_nodes`,
//! `redis_sentinels`) arrays of strings, and the file alone holds per-route policies and per-key tiers:
//!
//! ```toml
//! rate_limit = 100
//! trusted_proxies = ["10.0.0.0/8"]
//!
//! [[routes]]            # /ratelimit or /acquire: path, and limit, window_sec, burst,
//! path = "/acquire"     # algorithm, name (default: the path without its slash)
//! limit = 20
//! window_sec = 1
//!
//! [[tiers]]             # these key-header values get their own limit on every route:
//! name = "premium"      # name, keys, and limit, window_sec, burst, algorithm
//! keys = ["alice", "bob"]
//! limit = 1000
//! ```
//!
//! A route's or tier's `window_sec` and `algorithm` default to the global ones. Every policy
//! name (`default`, each route's, each tier's) must differ, and a key may be listed in one
//! tier only.
//!
//! # Errors at start-up
//!
//! Every bad setting, from the environment or the file (a bad value, a wrong TOML type, an
//! unknown key, a key in two tiers, two backends at once), stops the demo with exit code 2 and
//! one line naming the setting and the value:
//!
//! ```text
//! demo: configuration error: invalid RATE_LIMIT `abc`: expected a positive integer (at most 4294967295)
//! demo: configuration error: invalid tiers[1].keys in demo.toml `alice`: already listed in tiers[0] (`gold`); a key belongs to one tier
//! ```
//!
//! With Redis, the demo asks it at start-up (`PING` through the store's connection, after
//! authentication and `SELECT`; under Sentinel, to the master the sentinels name). With
//! `FAILURE_MODE=closed` a refusal stops the demo (exit 1) naming the cause (`authentication
//! failed`, `invalid DB index`, `no answer within 5s`, ...); a Redis Cluster must also give its
//! slot map within 5 s. With `open` or `local` the demo serves at once whatever the backend
//! (single node, Cluster or Sentinel), connects and asks in the background, and logs at WARN why
//! Redis is not in use while the failure mode decides; it uses Redis once it answers.
//!
//! No password is ever printed: the password of every Redis URL is masked (`redis://:***@host`)
//! in every log line, error and answer.

mod client;
mod config;
mod redact;
mod routes;
mod server;
mod store;

use std::process::ExitCode;

use config::Config;
use redact::{RedactedStderr, redact};
use server::StartError;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(|| RedactedStderr)
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .init();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => return configuration_error(&err),
    };
    // Installed before the server starts, so that a SIGTERM that arrives once the demo has said
    // it is listening always means a graceful shutdown.
    let shutdown = match shutdown_signal() {
        Ok(signal) => signal,
        Err(err) => {
            eprintln!("demo: cannot install signal handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    match server::serve(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(StartError::Config(err)) => configuration_error(&err),
        Err(err) => {
            eprintln!("demo: {}", redact(&err.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// The one format of a bad setting, and exit code 2.
fn configuration_error(err: &rate_limit_core::ConfigError) -> ExitCode {
    eprintln!("demo: configuration error: {}", redact(&err.to_string()));
    ExitCode::from(2)
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let interrupt = tokio::signal::ctrl_c();
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = interrupt => {}
        }
        #[cfg(not(unix))]
        let _ = interrupt.await;
    })
}

//! The demo server: a rate-limited HTTP API configured from the environment.
//!
//! ```text
//! cargo run --release --example demo
//! RATE_LIMIT=5 RATE_LIMIT_WINDOW_SEC=10 REDIS_URL=redis://127.0.0.1:6379 cargo run --example demo
//! ```
//!
//! Endpoints: `GET /ratelimit`, `POST /acquire`, `GET /status?key=K`, `GET /metrics`,
//! `GET /healthz`. Settings: see the `config` module. SIGTERM or Ctrl-C stops accepting
//! connections, lets in-flight requests finish, and exits 0.

mod client;
mod config;
mod routes;
mod server;
mod store;

use std::process::ExitCode;

use config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .init();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("demo: configuration error: {err}");
            return ExitCode::from(2);
        }
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
        Err(err) => {
            eprintln!("demo: {err}");
            ExitCode::FAILURE
        }
    }
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

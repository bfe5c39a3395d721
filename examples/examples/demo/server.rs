//! Start-up, serving and graceful shutdown.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use rate_limit_core::ConfigError;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower_ratelimit::observe::{STORE_DURATION_BUCKETS, STORE_DURATION_SECONDS};

use super::client::{ClientKey, Policies};
use super::config::Config;
use super::routes::{AppState, router};
use super::store::{DemoStore, StoreStartError};

/// How long in-flight requests may take to finish after a shutdown signal.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the demo could not start or serve.
#[derive(Debug)]
#[non_exhaustive]
pub(crate) enum StartError {
    /// A setting is invalid.
    Config(ConfigError),
    /// The store could not be set up.
    Store(StoreStartError),
    /// The Prometheus recorder could not be installed.
    Metrics(String),
    /// The port could not be bound, or serving failed.
    Io(String, std::io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config(e) => write!(f, "{e}"),
            Self::Store(e) => write!(f, "{e}"),
            Self::Metrics(e) => write!(f, "cannot install the Prometheus recorder: {e}"),
            Self::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

/// Runs the demo until `shutdown` completes, then stops accepting connections and waits up to
/// [`DRAIN_TIMEOUT`] for in-flight requests.
///
/// Installs the global Prometheus recorder, builds the store, binds `0.0.0.0:PORT` and prints `listening on http://<address>` on stdout once it accepts
/// connections.
///
/// # Errors
///
/// See [`StartError`].
pub(crate) async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let policies = Policies::from_config(&config)?;
    let key = ClientKey::from_config(&config);
    let metrics = prometheus()?
        .install_recorder()
        .map_err(|e| StartError::Metrics(e.to_string()))?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let store = DemoStore::connect(&config)
        .await
        .map_err(StartError::Store)?;
    let listener = bind(config.port).await?;
    let local = listener
        .local_addr()
        .map_err(|e| StartError::Io(String::from("cannot read the bound address"), e))?;
    tracing::info!(
        %local,
        backend = %config.backend.describe(),
        limit = %config.limit,
        "demo listening"
    );
    println!("listening on http://{local}");

    let app = router(AppState::new(store, policies, key, metrics));
    let stop = Arc::new(Notify::new());
    let stopped = Arc::clone(&stop);
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stopped.notified().await })
    .into_future();
    let mut server = std::pin::pin!(server);
    tokio::select! {
        result = &mut server => {
            return result.map_err(|e| StartError::Io(String::from("server failed"), e));
        }
        () = shutdown => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
    stop.notify_one();
    match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
        Ok(result) => result.map_err(|e| StartError::Io(String::from("server failed"), e))?,
        Err(_) => tracing::warn!(
            "in-flight requests still running after {}s: exiting anyway",
            DRAIN_TIMEOUT.as_secs()
        ),
    }
    tracing::info!("stopped");
    Ok(())
}

/// The demo's Prometheus exporter. Store latency gets buckets
/// ([`STORE_DURATION_BUCKETS`]), so that `/metrics` shows it as a histogram, which sums over
/// instances; with the exporter's defaults it would be a summary.
///
/// # Errors
///
/// The buckets are refused (never: they are a fixed, non-empty list).
pub(crate) fn prometheus() -> Result<PrometheusBuilder, StartError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(STORE_DURATION_SECONDS.to_owned()),
            &STORE_DURATION_BUCKETS,
        )
        .map_err(|e| StartError::Metrics(e.to_string()))
}

/// Binds every IPv4 interface.
async fn bind(port: u16) -> Result<TcpListener, StartError> {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
        .await
        .map_err(|e| StartError::Io(format!("cannot listen on PORT {port}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_latency_is_a_histogram_with_buckets() {
        let recorder = prometheus().unwrap().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!(STORE_DURATION_SECONDS, "backend" => "redis").record(0.003);
        });
        let text = handle.render();
        assert!(
            text.contains("# TYPE ratelimit_store_duration_seconds histogram"),
            "{text}"
        );
        let bucket = |le: &str, n: u32| {
            format!(r#"ratelimit_store_duration_seconds_bucket{{backend="redis",le="{le}"}} {n}"#)
        };
        assert!(text.contains(&bucket("0.0025", 0)), "{text}");
        assert!(text.contains(&bucket("0.005", 1)), "{text}");
        assert!(!text.contains("quantile"), "{text}");
    }
}

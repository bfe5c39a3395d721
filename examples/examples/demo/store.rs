//! The store the configuration asks for: in memory, Redis, Redis Cluster or the master of a
//! Redis Sentinel service.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rate_limit_core::resilience::{CircuitBreaker, Fallback, Timeout};
use rate_limit_core::{MemoryStore, RedisStore, Store, StoreError};
use redis::sentinel::SentinelNodeConnectionInfo;
use tower_ratelimit::FailureMode;

use super::config::{Backend, Config, FailureSetting, SentinelSettings};
use crate::redact::redact;

/// How long the demo waits for Redis to answer at start-up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A circuit breaker's state, as `/status` reports it.
type CircuitFn = dyn Fn() -> &'static str + Send + Sync;

/// The demo's store with what `/status` reports about it.
#[derive(Clone)]
pub(crate) struct DemoStore {
    store: Arc<dyn Store>,
    backend: &'static str,
    failure_mode: FailureMode,
    circuit: Option<Arc<CircuitFn>>,
}

impl DemoStore {
    /// An in-memory store bounded to `config.max_keys`.
    pub(crate) fn memory(config: &Config) -> Self {
        let store = MemoryStore::builder().max_keys(config.max_keys).build();
        Self {
            store: Arc::new(store),
            backend: "memory",
            failure_mode: FailureMode::Open,
            circuit: None,
        }
    }

    /// Builds the store `config.backend` names, and asks Redis, if it is one, whether it
    /// serves this client: a `PING` through the store's own connection, which authenticates and
    /// selects the database first (under Sentinel, after asking the sentinels for the master).
    ///
    /// With `FAILURE_MODE=closed` the answer is awaited (at most 5 s): a Redis that refuses the
    /// password, the database index, or does not answer stops the demo, naming the cause; a
    /// Redis Cluster is connected to first, and must give its slot map within those 5 s. With
    /// `open` or `local` the demo does not wait: the store connects on first use or in the
    /// background (`RedisStore::connect_lazy`, `connect_cluster_lazy`,
    /// `connect_sentinel_lazy`), the probe runs beside the server, and a failure is logged at
    /// WARN with its cause while the failure mode decides.
    ///
    /// # Errors
    ///
    /// See above; also a URL the Redis client refuses.
    pub(crate) async fn connect(config: &Config) -> Result<Self, StoreStartError> {
        let shown = config.backend.describe();
        let unusable =
            |e: StoreError| StoreStartError(redact(&format!("cannot use Redis at {shown}: {e}")));
        match &config.backend {
            Backend::Memory => Ok(Self::memory(config)),
            Backend::Redis(url) => {
                let store = RedisStore::connect_lazy(url).map_err(unusable)?;
                probe_at_start(config, &shown, store.connection().clone()).await?;
                Ok(Self::remote(config, store, "redis"))
            }
            Backend::Cluster(nodes) if config.failure_mode == FailureSetting::Closed => {
                let refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
                let store =
                    match tokio::time::timeout(CONNECT_TIMEOUT, RedisStore::connect_cluster(&refs))
                        .await
                    {
                        Ok(Ok(store)) => store,
                        Ok(Err(e)) => return Err(refused(&shown, &store_cause(&e))),
                        Err(_) => return Err(refused(&shown, &no_answer())),
                    };
                probe_at_start(config, &shown, store.connection().clone()).await?;
                Ok(Self::remote(config, store, "cluster"))
            }
            Backend::Cluster(nodes) => {
                let refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
                let store = RedisStore::connect_cluster_lazy(&refs).map_err(unusable)?;
                probe_at_start(config, &shown, store.connection().clone()).await?;
                Ok(Self::remote(config, store, "cluster"))
            }
            Backend::Sentinel(sentinel) => {
                let refs: Vec<&str> = sentinel.sentinels.iter().map(String::as_str).collect();
                let store =
                    RedisStore::connect_sentinel_lazy(&refs, &sentinel.master, master(sentinel))
                        .map_err(unusable)?;
                probe_at_start(config, &shown, store.connection().clone()).await?;
                Ok(Self::remote(config, store, "sentinel"))
            }
        }
    }

    /// Wraps a Redis store for production: a time budget per call (`REDIS_TIMEOUT_MS`), a
    /// circuit breaker, and the `FAILURE_MODE`: `open` and `closed` are the layer's failure
    /// modes; `local` decides with an in-memory store on `1/RATE_LIMIT_INSTANCES` of each quota
    /// while Redis is away (and answers 503 only if that fails too).
    fn remote(config: &Config, store: impl Store, backend: &'static str) -> Self {
        let timed = Timeout::new(store, config.redis_timeout);
        let breaker = Arc::new(CircuitBreaker::new(timed));
        let probe = Arc::clone(&breaker);
        let circuit: Arc<CircuitFn> = Arc::new(move || probe.state().as_str());
        let (store, failure_mode): (Arc<dyn Store>, _) = match config.failure_mode {
            FailureSetting::Open => (breaker, FailureMode::Open),
            FailureSetting::Closed => (breaker, FailureMode::Closed),
            FailureSetting::Local => {
                let local = MemoryStore::builder().max_keys(config.max_keys).build();
                let fallback = Fallback::new(breaker, local, config.instances);
                (Arc::new(fallback), FailureMode::Closed)
            }
        };
        Self {
            store,
            backend,
            failure_mode,
            circuit: Some(circuit),
        }
    }

    /// The store, to hand to the layer and to `/status`.
    pub(crate) fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// `memory`, `redis`, `cluster` or `sentinel`.
    pub(crate) fn backend(&self) -> &'static str {
        self.backend
    }

    /// What the layer does when the store fails.
    pub(crate) fn failure_mode(&self) -> FailureMode {
        self.failure_mode
    }

    /// The circuit breaker's state: `closed`, `open` or `half_open`. A store with no breaker (in
    /// memory) has nothing to trip and reports `closed`.
    pub(crate) fn circuit(&self) -> &'static str {
        self.circuit.as_ref().map_or("closed", |state| state())
    }
}

impl fmt::Debug for DemoStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemoStore")
            .field("backend", &self.backend)
            .field("failure_mode", &self.failure_mode)
            .field("circuit", &self.circuit())
            .finish_non_exhaustive()
    }
}

/// The start-up probe through `conn`: awaited with `FAILURE_MODE=closed` (a refusal is the
/// error), otherwise run beside the server, logging the outcome.
async fn probe_at_start<C>(config: &Config, shown: &str, conn: C) -> Result<(), StoreStartError>
where
    C: redis::aio::ConnectionLike + Send + 'static,
{
    let probe = probe(conn);
    if config.failure_mode == FailureSetting::Closed {
        return probe.await.map_err(|cause| refused(shown, &cause));
    }
    let (mode, shown) = (config.failure_mode, shown.to_owned());
    tokio::spawn(async move {
        match probe.await {
            Ok(()) => tracing::info!(redis = %shown, "Redis answers"),
            Err(cause) => warn_not_in_use(&shown, &cause, mode),
        }
    });
    Ok(())
}

/// How to reach the master the sentinels name: the AUTH and database of
/// `REDIS_SENTINEL_MASTER=redis://user:password@name/db`, none for a bare name.
fn master(sentinel: &SentinelSettings) -> SentinelNodeConnectionInfo {
    let node = SentinelNodeConnectionInfo::default();
    // The URL was parsed when the configuration was read.
    match sentinel
        .master_url
        .as_deref()
        .map(redis::IntoConnectionInfo::into_connection_info)
    {
        Some(Ok(info)) => node.set_redis_connection_info(info.redis_settings().clone()),
        _ => node,
    }
}

/// One round trip to Redis through `conn`, bounded by [`CONNECT_TIMEOUT`]: `Ok` if it answers
/// `PING`, otherwise why not (`authentication failed`, `invalid DB index`, ...).
async fn probe<C>(mut conn: C) -> Result<(), String>
where
    C: redis::aio::ConnectionLike + Send + 'static,
{
    let ping = redis::cmd("PING");
    let ping = ping.query_async::<String>(&mut conn);
    match tokio::time::timeout(CONNECT_TIMEOUT, ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(cause(&e)),
        Err(_) => Err(no_answer()),
    }
}

fn no_answer() -> String {
    format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())
}

/// Why Redis refused: the causes an operator can fix by name first, then the client's message.
fn cause(e: &redis::RedisError) -> String {
    let code = e.code().unwrap_or_default();
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    let named = if e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(code, "NOAUTH" | "WRONGPASS")
        || lower.contains("noauth")
        || lower.contains("wrongpass")
        || lower.contains("invalid password")
        || lower.contains("authentication")
    {
        Some("authentication failed")
    } else if lower.contains("db index") || lower.contains("invalid database") {
        Some("invalid DB index")
    } else if e.is_timeout() {
        Some("no answer")
    } else if e.is_connection_refusal() {
        Some("connection refused")
    } else {
        None
    };
    let text = redact(&text);
    match named {
        Some(named) => format!("{named} ({text})"),
        None => text,
    }
}

/// As [`cause`], from a store error that wraps a Redis one.
fn store_cause(e: &StoreError) -> String {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(redis) = err.downcast_ref::<redis::RedisError>() {
            return cause(redis);
        }
        source = err.source();
    }
    redact(&e.to_string())
}

fn refused(shown: &str, cause: &str) -> StoreStartError {
    StoreStartError(redact(&format!(
        "Redis at {shown} is not usable: {cause}; FAILURE_MODE=closed does not start without it"
    )))
}

fn warn_not_in_use(shown: &str, cause: &str, mode: FailureSetting) {
    let meanwhile = match mode {
        FailureSetting::Open => "requests are let through undecided",
        FailureSetting::Closed => "requests are refused with 503",
        FailureSetting::Local => "each instance decides in memory on its share of each quota",
    };
    tracing::warn!(
        redis = %shown,
        "Redis is not in use: {}; until it answers, {meanwhile} (FAILURE_MODE={})",
        redact(cause),
        mode.name()
    );
}

/// The store could not be set up at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoreStartError(String);

impl fmt::Display for StoreStartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreStartError {}

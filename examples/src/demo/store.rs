//! The store the configuration asks for: in memory, Redis, Redis Cluster or Redis Sentinel.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rate_limit_core::resilience::{CircuitBreaker, Fallback, Timeout};
use rate_limit_core::{MemoryStore, RedisStore, Store, StoreError};
use tower_ratelimit::FailureMode;

use super::config::{Backend, Config, FailureSetting};

/// How long the demo waits for the first connection to Redis at start-up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A circuit breaker's state, as `/status` reports it.
type CircuitFn = dyn Fn() -> &'static str + Send + Sync;

/// The demo's store with what `/status` reports about it.
#[derive(Clone)]
pub struct DemoStore {
    store: Arc<dyn Store>,
    backend: &'static str,
    failure_mode: FailureMode,
    circuit: Option<Arc<CircuitFn>>,
}

impl DemoStore {
    /// An in-memory store bounded to `config.max_keys`.
    pub fn memory(config: &Config) -> Self {
        let store = MemoryStore::builder().max_keys(config.max_keys).build();
        Self {
            store: Arc::new(store),
            backend: "memory",
            failure_mode: FailureMode::Open,
            circuit: None,
        }
    }

    /// Builds the store `config.backend` names, connecting to Redis if it is one.
    ///
    /// With `FAILURE_MODE` `open` or `local`, a single Redis that cannot be reached at start-up
    /// is not fatal: the demo says so on stderr and starts anyway, with a store that connects
    /// once Redis is up (`RedisStore::connect_lazy`); until then the failure mode decides.
    ///
    /// # Errors
    ///
    /// Redis could not be reached within 5 s, in `closed` mode or on a cluster; or the URL is
    /// invalid.
    pub async fn connect(config: &Config) -> Result<Self, StoreStartError> {
        match &config.backend {
            Backend::Memory => Ok(Self::memory(config)),
            Backend::Redis(url) => {
                let store = match connect(url, RedisStore::connect(url)).await {
                    Ok(store) => store,
                    Err(err) if config.failure_mode != FailureSetting::Closed => {
                        eprintln!(
                            "demo: {err}; starting anyway (FAILURE_MODE={}), Redis is used \
                             once it answers",
                            config.failure_mode.name()
                        );
                        RedisStore::connect_lazy(url).map_err(|e| {
                            StoreStartError(format!("cannot use Redis at {url}: {e}"))
                        })?
                    }
                    Err(err) => return Err(err),
                };
                Ok(Self::remote(config, store, "redis"))
            }
            Backend::Cluster(nodes) => {
                let refs: Vec<&str> = nodes.iter().map(String::as_str).collect();
                let what = nodes.join(",");
                let store = connect(&what, RedisStore::connect_cluster(&refs)).await?;
                Ok(Self::remote(config, store, "cluster"))
            }
            Backend::Sentinel { sentinels, master } => {
                let refs: Vec<&str> = sentinels.iter().map(String::as_str).collect();
                let what = format!("{} (sentinels {})", master, sentinels.join(","));
                let node = redis::sentinel::SentinelNodeConnectionInfo::default();
                let store = match connect(
                    &what,
                    RedisStore::connect_sentinel(&refs, master, node.clone()),
                )
                .await
                {
                    Ok(store) => store,
                    Err(err) if config.failure_mode != FailureSetting::Closed => {
                        eprintln!(
                            "demo: {err}; starting anyway (FAILURE_MODE={}), Redis is used \
                             once the sentinels name a master that answers",
                            config.failure_mode.name()
                        );
                        RedisStore::connect_sentinel_lazy(&refs, master, node).map_err(|e| {
                            StoreStartError(format!("cannot use Redis at {what}: {e}"))
                        })?
                    }
                    Err(err) => return Err(err),
                };
                Ok(Self::remote(config, store, "sentinel"))
            }
        }
    }

    /// Wraps a Redis store for production: a time budget per call (`REDIS_TIMEOUT_MS`), a
    /// circuit breaker, and the `FAILURE_MODE`: `open` and `closed` are the layer's failure
    /// modes; `local` decides with an in-memory store on `1/RATE_LIMIT_INSTANCES` of each quota
    /// while Redis is away (and answers 503 only if that fails too).
    fn remote(config: &Config, store: impl Store, backend: &'static str) -> Self {
        let timed = Timeout::new(store).budget(config.redis_timeout);
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
    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// `memory`, `redis`, `cluster` or `sentinel`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// What the layer does when the store fails.
    pub fn failure_mode(&self) -> FailureMode {
        self.failure_mode
    }

    /// The circuit breaker's state: `closed`, `open` or `half_open`. A store with no breaker (in
    /// memory) has nothing to trip and reports `closed`.
    pub fn circuit(&self) -> &'static str {
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

async fn connect<S>(
    what: &str,
    fut: impl Future<Output = Result<S, StoreError>>,
) -> Result<S, StoreStartError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
        Ok(Ok(store)) => Ok(store),
        Ok(Err(err)) => Err(StoreStartError(format!(
            "cannot connect to Redis at {what}: {err}"
        ))),
        Err(_) => Err(StoreStartError(format!(
            "cannot connect to Redis at {what}: no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// The store could not be set up at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStartError(String);

impl fmt::Display for StoreStartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreStartError {}

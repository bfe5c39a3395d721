//! [`RedisStore`]: one budget per client shared by every instance, through Redis.
//!
//! See [`RedisStore`] for the details: how a check runs, time, exactness, keys, connections.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager};

use super::{BoxFuture, Store};
use crate::clock::Clock;
use crate::decision::Decision;
use crate::error::{ConfigError, StoreError, StoreErrorKind};
use crate::limit::Limit;

mod builder;
mod error;
mod keys;
mod script;

pub use builder::RedisStoreBuilder;

/// A [`Store`] on Redis: every instance that shares the server shares one budget per client.
///
/// # How a check runs
///
/// One `EVALSHA` per check, whatever the number of limits. The script (one Lua function per
/// algorithm, each the twin of its Rust transition, plus a dispatcher) decides every limit
/// without charging, then charges every limit only if all allow: several limits are
/// all-or-nothing, and limits of one request may use different algorithms. When the server does
/// not know the script (`NOSCRIPT`, after a restart or `SCRIPT FLUSH`), it is loaded and the call
/// is retried once.
///
/// # Time
///
/// By default the script reads the server's `TIME`: one clock for every instance, whatever
/// their own clocks say. [`RedisStoreBuilder::clock`] sends time from a [`Clock`] instead, for
/// servers that refuse `TIME` in scripts and for deterministic tests.
///
/// # Exactness
///
/// The script counts in integer microseconds. Lua numbers are doubles, exact up to 2^53, and
/// every value the script computes stays below that until about the year 2140, with one limit:
/// a [`SlidingWindow`](crate::Algorithm::SlidingWindow) limit needs `limit × period in µs < 2^53`
/// (about 9.0e15): up to 2.5 million per hour, 104,000 per day.
/// Beyond that a check fails with [`StoreErrorKind::InvalidInput`]; test a limit at start-up with
/// [`validate_limit`](RedisStore::validate_limit).
///
/// # Keys
///
/// `{prefix}:{<escaped client key>}:<limit id, 16 hex digits>`, for example
/// `rl:{client-1}:4877b29fe38dc867`. Every key of one client shares the hash tag in braces, so
/// they live in one Redis Cluster slot. In the client key, `%`, `{`, `}` and control characters
/// are written `%XX`; the empty key is written `%`. No client key can leave its braces or reach
/// another client's state.
///
/// Each key expires (`PEXPIRE`) when its state would be full again, so an idle client leaves
/// nothing behind. A denied check or a peek charges nothing; like the Rust transitions it may
/// store a tidied state (a refill counted, a window rolled, old log entries dropped), which is
/// full again at the same instant, so its expiry does not move (beyond the millisecond that
/// `PEXPIRE` rounds up to). A state back to full is deleted.
///
/// State: the buckets, the fixed window, the sliding window counter and GCRA keep a short string
/// of integers (`tokens:last`, `level:at`, `start:count`, `start:cur:prev`, `tat`); the sliding
/// window log keeps a list of `tick:cost:running total` entries, at most `limit` long.
///
/// # Connections, TLS and AUTH
///
/// Any clonable `redis::aio::ConnectionLike` works: a reconnecting `ConnectionManager` (what
/// [`RedisStore::connect`] builds), a `MultiplexedConnection`, or, with the `cluster` feature, a
/// `ClusterConnection` ([`RedisStore::connect_cluster`]). Each check clones the handle, which is
/// cheap: they multiplex one socket.
///
/// Credentials and TLS come from the URL: `redis://user:password@host:6379/0` sends `AUTH`
/// (`redis://:password@host` for a password alone); `rediss://host:6380` connects with TLS (the
/// `tls` feature, rustls with the webpki roots).
///
/// # Errors
///
/// Redis errors become [`StoreError`]s whose kind a circuit breaker can count: timeouts are
/// `Timeout`; refused, reset or dropped connections and failed authentication are `Connection`;
/// server answers (`CLUSTERDOWN`, script errors, `LOADING`, ...) are `Backend`.
///
/// # Example
///
/// ```no_run
/// use std::num::NonZeroU32;
/// use rate_limit_core::{Algorithm, Limit, Quota, RedisStore, Store};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let limits = [Limit::new(Quota::per_minute(NonZeroU32::new(100).unwrap()), Algorithm::Gcra)];
/// let d = store.check("client-1", &limits, NonZeroU32::MIN).await?;
/// assert!(d.allowed());
/// assert_eq!(d.limit(), 100);
/// # Ok(())
/// # }
/// ```
pub struct RedisStore<C = ConnectionManager> {
    conn: C,
    prefix: Arc<str>,
    clock: Option<Arc<dyn Clock>>,
    backend: &'static str,
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// A builder over an open connection: a `ConnectionManager`, a `MultiplexedConnection` or a
    /// `ClusterConnection`.
    ///
    /// ```no_run
    /// use rate_limit_core::{ManualClock, RedisStore, conformance};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// let conn = client.get_multiplexed_async_connection().await?;
    /// let clock = ManualClock::new(conformance::BASE);
    /// let store = RedisStore::builder(conn).prefix("test").clock(clock).build()?;
    /// assert_eq!(store.prefix(), "test");
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(conn: C) -> RedisStoreBuilder<C> {
        RedisStoreBuilder::new(conn)
    }
}

impl RedisStore<ConnectionManager> {
    /// Connects to `url` through a `ConnectionManager`, which reconnects after a failure, with
    /// the default prefix and server time.
    ///
    /// Reconnection waits at most 500 ms between attempts, and each attempt at most 500 ms, rather
    /// than the `redis` crate's longer defaults; use [`connect_with`](Self::connect_with) for
    /// other settings.
    ///
    /// # Errors
    ///
    /// The URL is invalid, or the first connection failed.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_millis(500)))
            .set_max_delay(std::time::Duration::from_millis(500));
        Self::connect_with(url, config).await
    }

    /// As [`connect`](Self::connect), with the `ConnectionManager`'s reconnection settings
    /// (delays, timeouts, retries) given by `config`.
    ///
    /// # Errors
    ///
    /// The URL is invalid, or the first connection failed.
    pub async fn connect_with(
        url: &str,
        config: redis::aio::ConnectionManagerConfig,
    ) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(error::from_redis)?;
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(error::from_redis)?;
        Ok(Self::with_defaults(conn))
    }
}

#[cfg(feature = "cluster")]
impl RedisStore<redis::cluster_async::ClusterConnection> {
    /// Connects to a Redis Cluster through any of its `nodes` (URLs), with the default prefix and
    /// server time.
    ///
    /// # Errors
    ///
    /// A URL is invalid, or no node could be reached.
    pub async fn connect_cluster(nodes: &[&str]) -> Result<Self, StoreError> {
        let client =
            redis::cluster::ClusterClient::new(nodes.to_vec()).map_err(error::from_redis)?;
        let conn = client
            .get_async_connection()
            .await
            .map_err(error::from_redis)?;
        Ok(Self {
            backend: "cluster",
            ..Self::with_defaults(conn)
        })
    }
}

impl<C> RedisStore<C> {
    fn with_defaults(conn: C) -> Self {
        Self {
            conn,
            prefix: keys::DEFAULT_PREFIX.into(),
            clock: None,
            backend: "redis",
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether time comes from a client [`Clock`] rather than the server's `TIME`.
    pub fn uses_client_clock(&self) -> bool {
        self.clock.is_some()
    }

    /// The connection, for other commands on the same server.
    pub fn connection(&self) -> &C {
        &self.conn
    }

    /// The Redis key holding `limit`'s state for `key`, as this store lays keys out.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use rate_limit_core::{Algorithm, Limit, Quota, RedisStore};
    ///
    /// let limit = Limit::new(Quota::per_minute(NonZeroU32::new(100).unwrap()), Algorithm::TokenBucket);
    /// let key = RedisStore::<()>::key_layout("rl", "a{b}", &limit);
    /// assert_eq!(key, "rl:{a%7Bb%7D}:4877b29fe38dc867");
    /// ```
    pub fn key_layout(prefix: &str, key: &str, limit: &Limit) -> String {
        keys::state_key(prefix, &keys::tag(key), limit.id())
    }

    /// The key of `limit`'s state for `key` in this store.
    pub fn state_key(&self, key: &str, limit: &Limit) -> String {
        Self::key_layout(&self.prefix, key, limit)
    }

    /// Whether the script decides `limit` exactly; see [exactness](RedisStore#exactness).
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use std::time::Duration;
    /// use rate_limit_core::{Algorithm, Limit, Quota, RedisStore};
    ///
    /// let per_hour = Quota::per_hour(NonZeroU32::new(1_000_000).unwrap());
    /// assert!(RedisStore::<()>::validate_limit(&Limit::new(per_hour, Algorithm::SlidingWindow)).is_ok());
    /// let day = Duration::from_secs(86_400);
    /// let per_day = Quota::with_period(NonZeroU32::new(1_000_000).unwrap(), day)?;
    /// let err = RedisStore::<()>::validate_limit(&Limit::new(per_day, Algorithm::SlidingWindow));
    /// assert_eq!(err.unwrap_err().setting(), "limit");
    /// # Ok::<(), rate_limit_core::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A sliding window counter whose `limit × period in µs` reaches 2^53.
    pub fn validate_limit(limit: &Limit) -> Result<(), ConfigError> {
        script::params(limit)
            .map(drop)
            .map_err(|e| ConfigError::new("limit", limit, e.to_string()))
    }
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn decide(
        &self,
        key: &str,
        limits: &[Limit],
        cost: NonZeroU32,
        commit: bool,
    ) -> Result<Decision, StoreError> {
        if limits.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::InvalidInput,
                "no limits to check",
            ));
        }
        let prepared = limits
            .iter()
            .map(|l| Ok((*l, script::params(l)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let tag = keys::tag(key);
        let mut invocation = script::DECIDE.prepare_invoke();
        for limit in limits {
            invocation.key(keys::state_key(&self.prefix, &tag, limit.id()));
        }
        let now = self
            .clock
            .as_ref()
            .map(|c| c.now_nanos() / script::TICK_NANOS);
        script::push_args(&mut invocation, now, cost.get(), commit, &prepared);
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(error::from_redis)?;
        let snapshots = script::parse_reply(&reply, &prepared)?;
        Ok(Decision::from_snapshots(snapshots))
    }
}

impl<C> Store for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn check<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(self.decide(key, limits, cost, true))
    }

    fn peek<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(self.decide(key, limits, cost, false))
    }

    fn backend(&self) -> &'static str {
        self.backend
    }
}

impl<C> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("client_clock", &self.clock.is_some())
            .finish_non_exhaustive()
    }
}

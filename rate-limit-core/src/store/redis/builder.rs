//! [`RedisStoreBuilder`]: the key prefix, where time comes from, batching, the response timeout
//! and the deny cache.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use super::batch::Dispatcher;
use super::deny_cache::{self, DenyCache};
use super::{RedisStore, keys};
use crate::clock::{Clock, SystemClock};
use crate::error::ConfigError;

/// Checks per script call unless [`RedisStoreBuilder::max_batch`] says otherwise.
const DEFAULT_MAX_BATCH: NonZeroUsize = NonZeroUsize::MIN.saturating_add(127);

/// How long a script call may wait for its reply unless
/// [`RedisStoreBuilder::response_timeout`] says otherwise.
pub(super) const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds a [`RedisStore`] over a connection `C`; see [`RedisStore::builder`].
pub struct RedisStoreBuilder<C> {
    conn: C,
    prefix: String,
    clock: Option<Arc<dyn Clock>>,
    backend: &'static str,
    max_batch: NonZeroUsize,
    response_timeout: Duration,
    deny_cache: Option<NonZeroUsize>,
    per_slot: bool,
}

impl<C> RedisStoreBuilder<C> {
    /// `per_slot`: the connection is a Redis Cluster's, where one call may touch one slot only.
    pub(super) fn new(conn: C, per_slot: bool) -> Self {
        Self {
            conn,
            prefix: keys::DEFAULT_PREFIX.to_owned(),
            clock: None,
            backend: "redis",
            max_batch: DEFAULT_MAX_BATCH,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            deny_cache: Some(deny_cache::DEFAULT_CAPACITY),
            per_slot,
        }
    }

    /// The first part of every key, `rl` by default. Keys are
    /// `{prefix}:{<escaped client key>}:<limit id in hex>`.
    ///
    /// Checked by [`build`](Self::build): it must be non-empty and hold no `{`, `}` or control
    /// characters.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Reads time from `clock` and sends it with each call (client-clock mode), instead of
    /// reading Redis `TIME` inside the script (the default).
    ///
    /// Server time is one clock for every instance; use a client clock only for servers that
    /// refuse `TIME` in scripts, or for deterministic tests with a
    /// [`ManualClock`](crate::ManualClock). Instances whose clocks disagree then disagree on
    /// refills and window edges.
    ///
    /// Key expiry (`PX`/`PEXPIRE`) still runs on the server's own clock: a client clock that
    /// runs slower than the server's lets a state expire before the client's time says it is
    /// full again, and that client is then treated as fresh (more lenient, never stricter).
    ///
    /// The [deny cache](RedisStore#deny-cache) counts its deadlines on this clock too.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The name [`Store::backend`](crate::Store::backend) reports (a metrics label, and what a
    /// status page shows): `redis` by default; `RedisStore::connect_cluster` uses `cluster`.
    /// Set `cluster` when building over a cluster connection yourself.
    #[must_use]
    pub fn backend(mut self, name: &'static str) -> Self {
        self.backend = name;
        self
    }

    /// The most checks one script call carries, 128 by default; see
    /// [batching](RedisStore#batching-and-coalescing).
    ///
    /// Checks that arrive while a call is in flight wait for the next call, which carries up to
    /// `max` of them. `1` turns batching off: each check is its own call, sent from the
    /// caller's future, as with no dispatcher at all.
    ///
    /// ```no_run
    /// use std::num::NonZeroUsize;
    /// use rate_limit_core::RedisStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// let conn = client.get_multiplexed_async_connection().await?;
    /// let store = RedisStore::builder(conn)
    ///     .max_batch(NonZeroUsize::new(32).unwrap())
    ///     .deny_cache(None)
    ///     .build()?;
    /// assert_eq!(store.max_batch(), 32);
    /// assert_eq!(store.deny_cache_capacity(), None);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn max_batch(mut self, max: NonZeroUsize) -> Self {
        self.max_batch = max;
        self
    }

    /// How long a script call may wait for its reply, 2 s by default (far above a round trip,
    /// even on a loaded host: it fails calls that are stuck, not slow ones); see
    /// [failures](RedisStore#failures-timeouts-and-retries).
    ///
    /// A call without a reply by then fails every check it carried with a
    /// [`Timeout`](crate::StoreErrorKind::Timeout) error, is not sent again (the script may
    /// have run), and frees its place in flight for the checks queued behind it. This bounds
    /// every call whatever the connection's own settings (a `ClusterConnection` has no response
    /// timeout by default), and keeps a hung server or Cluster master from holding calls in
    /// flight for ever. A caller that wants a tighter budget wraps the store in a
    /// [`Timeout`](crate::resilience::Timeout); this one stays the store's backstop.
    ///
    /// One task per store keeps the deadlines of its calls in flight, on Tokio's timer, as the
    /// `redis` crate's own response timeouts are: checks must run in a runtime with its time
    /// driver enabled (outside any Tokio runtime, each check is a call of its own, bounded by
    /// the connection's timeout only). The task runs on the runtime of the check that started
    /// it, and ends after a timeout's length with no call.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use rate_limit_core::RedisStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// let conn = client.get_multiplexed_async_connection().await?;
    /// let store = RedisStore::builder(conn)
    ///     .response_timeout(Duration::from_millis(100))
    ///     .build()?;
    /// assert_eq!(store.response_timeout(), Duration::from_millis(100));
    /// let zero = RedisStore::builder(store.connection().clone()).response_timeout(Duration::ZERO);
    /// assert_eq!(zero.build().unwrap_err().setting(), "response_timeout");
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// The number of slots of the [deny cache](RedisStore#deny-cache), 4096 by default; `None`
    /// turns it off (`NonZeroUsize::new(n)` maps a configured `0` to off).
    ///
    /// Each slot holds at most one recent denial (a client key, its limits, the cost and the
    /// decision): memory stays bounded whatever the number of client keys, and a new denial
    /// takes the place of whatever shared its slot.
    ///
    /// A state deleted out of band (an administrator resetting a client with `DEL`) is seen by
    /// this instance only once the cached denial's wait is over.
    #[must_use]
    pub fn deny_cache(mut self, capacity: Option<NonZeroUsize>) -> Self {
        self.deny_cache = capacity;
        self
    }

    /// Builds the store. No I/O happens here.
    ///
    /// # Errors
    ///
    /// The [`prefix`](Self::prefix) is empty or holds `{`, `}` or a control character; the
    /// [`response_timeout`](Self::response_timeout) is zero.
    pub fn build(self) -> Result<RedisStore<C>, ConfigError> {
        keys::validate_prefix(&self.prefix)?;
        if self.response_timeout.is_zero() {
            return Err(ConfigError::new(
                "response_timeout",
                format!("{:?}", self.response_timeout),
                "must be above zero",
            ));
        }
        Ok(self.assemble())
    }

    /// The store, with settings known to be valid.
    pub(super) fn assemble(self) -> RedisStore<C> {
        let deny_cache = self.deny_cache.map(|capacity| {
            let clock: Arc<dyn Clock> = match &self.clock {
                Some(clock) => Arc::clone(clock),
                None => Arc::new(SystemClock::new()),
            };
            DenyCache::new(capacity, clock)
        });
        RedisStore {
            dispatcher: Arc::new(Dispatcher::new(
                self.conn,
                self.clock,
                self.max_batch.get(),
                self.response_timeout,
                self.per_slot,
            )),
            prefix: self.prefix.into(),
            backend: self.backend,
            deny_cache,
        }
    }
}

impl<C> fmt::Debug for RedisStoreBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("client_clock", &self.clock.is_some())
            .field("max_batch", &self.max_batch)
            .field("response_timeout", &self.response_timeout)
            .field("deny_cache", &self.deny_cache)
            .finish_non_exhaustive()
    }
}

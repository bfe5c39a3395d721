//! [`RedisStoreBuilder`]: the key prefix and where time comes from.

use std::fmt;
use std::sync::Arc;

use super::RedisStore;
use super::keys;
use crate::clock::Clock;
use crate::error::ConfigError;

/// Builds a [`RedisStore`] over a connection `C`; see [`RedisStore::builder`].
pub struct RedisStoreBuilder<C> {
    conn: C,
    prefix: String,
    clock: Option<Arc<dyn Clock>>,
    backend: &'static str,
}

impl<C> RedisStoreBuilder<C> {
    pub(super) fn new(conn: C) -> Self {
        Self {
            conn,
            prefix: keys::DEFAULT_PREFIX.to_owned(),
            clock: None,
            backend: "redis",
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

    /// Builds the store. No I/O happens here.
    ///
    /// # Errors
    ///
    /// The [`prefix`](Self::prefix) is empty or holds `{`, `}` or a control character.
    pub fn build(self) -> Result<RedisStore<C>, ConfigError> {
        keys::validate_prefix(&self.prefix)?;
        Ok(RedisStore {
            conn: self.conn,
            prefix: self.prefix.into(),
            clock: self.clock,
            backend: self.backend,
        })
    }
}

impl<C> fmt::Debug for RedisStoreBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("client_clock", &self.clock.is_some())
            .finish_non_exhaustive()
    }
}

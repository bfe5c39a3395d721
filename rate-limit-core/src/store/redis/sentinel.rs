//! [`SentinelConnection`]: a connection to the master of a service that Redis Sentinel
//! monitors, found again through the sentinels after a failover.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

use super::error;
use crate::error::{StoreError, StoreErrorKind};

/// A connection to the master of a service monitored by Redis Sentinel, for
/// [`RedisStore::builder`](super::RedisStore::builder) (the `sentinel` feature);
/// [`RedisStore::connect_sentinel`](super::RedisStore::connect_sentinel) builds one.
///
/// It asks the sentinels for the master of the service (the first sentinel that names a master
/// that is not down and answers `ROLE` as a master wins), and keeps one multiplexed connection
/// to it. That connection is given up, and the next call asks the sentinels again, when a call
/// on it fails with a lost connection, a timeout, or a `READONLY` answer (the node was demoted
/// to a replica: a replica refuses a call of the store's library, a writing function, before
/// it runs), and when a call
/// is abandoned before its reply came (the store's response timeout). Sentinel itself closes
/// the clients of a node it reconfigures (`CLIENT KILL TYPE normal`), so after a failover every
/// instance's next call finds the promoted replica.
///
/// Like every connection under the store, it never sends a call again: a call that failed
/// fails, and only the next one goes to the new master. Clones share the connection and the
/// resolver.
#[derive(Clone)]
pub struct SentinelConnection {
    shared: Arc<Shared>,
}

struct Shared {
    /// Asks the sentinels; one lookup at a time (a lock held across it).
    resolver: tokio::sync::Mutex<SentinelClient>,
    /// The connection to the master last found, with its number.
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Numbers the connections made, so that a failure gives up only the one it happened on.
    made: AtomicU64,
    config: AsyncConnectionConfig,
    /// The database of the last connection made (`0` before the first).
    db: AtomicI64,
}

impl SentinelConnection {
    /// A connection through `client`, a [`SentinelClient`] for the service's
    /// [`Master`](SentinelServerType::Master), that connects on its first call.
    ///
    /// `config` sets the master connection's timeouts; the sentinels' own connections are set
    /// by the client. Build the client with `SentinelClientBuilder` to give TLS certificates of a
    /// private CA for the master or the sentinels.
    pub fn new(client: SentinelClient, config: AsyncConnectionConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                resolver: tokio::sync::Mutex::new(client),
                current: Mutex::new(None),
                made: AtomicU64::new(0),
                config,
                db: AtomicI64::new(0),
            }),
        }
    }

    /// A connection to the master named `master` by the sentinels at `sentinels` (URLs, which
    /// carry the sentinels' own password and TLS: `rediss://:secret@host:26379`), reached with
    /// `node` (the master's TLS mode, user, password and database). Connects on its first call.
    ///
    /// # Errors
    ///
    /// No sentinel was given, or a URL is invalid.
    pub fn open(
        sentinels: &[&str],
        master: &str,
        node: SentinelNodeConnectionInfo,
    ) -> Result<Self, StoreError> {
        if sentinels.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::InvalidInput,
                "redis sentinel: no sentinel address given",
            ));
        }
        // Without TLS, redis's `build` takes a `String`; with it, any `AsRef<str>`.
        #[allow(clippy::unnecessary_to_owned)]
        let client = SentinelClient::build(
            sentinels.to_vec(),
            master.to_owned(),
            Some(node),
            SentinelServerType::Master,
        )
        .map_err(error::from_redis)?;
        Ok(Self::new(client, default_config()))
    }

    /// Asks the sentinels for the master now and connects to it, unless connected already.
    ///
    /// # Errors
    ///
    /// No sentinel answered, none names a master of the service that is up, or the master
    /// could not be reached.
    pub async fn resolve(&self) -> Result<(), StoreError> {
        self.shared
            .connection()
            .await
            .map(|_| ())
            .map_err(error::from_redis)
    }

    /// How many connections to a master it has made: 1 after the first, one more after each
    /// failover (or each failure that made it ask the sentinels again).
    pub fn connections_made(&self) -> u64 {
        self.shared.made.load(Ordering::Relaxed)
    }
}

/// The master connection's settings of [`SentinelConnection::open`]: at most 500 ms to
/// connect and 500 ms for a reply, as a `ConnectionManager`'s.
pub(super) fn default_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)))
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(u64, MultiplexedConnection)>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current connection, or a new one to the master the sentinels name now.
    async fn connection(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        if let Some(current) = self.lock().clone() {
            return Ok(current);
        }
        let mut resolver = self.resolver.lock().await;
        // Another call may have connected while this one waited for the resolver.
        if let Some(current) = self.lock().clone() {
            return Ok(current);
        }
        let client = resolver.async_get_client().await?;
        let conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        let id = self.made.fetch_add(1, Ordering::Relaxed) + 1;
        self.db.store(conn.get_db(), Ordering::Relaxed);
        *self.lock() = Some((id, conn.clone()));
        Ok((id, conn))
    }

    /// Gives up connection `id` (not a newer one) after `outcome`, if it shows the node is gone
    /// or no longer the master.
    fn after<T>(&self, id: u64, outcome: &Result<T, RedisError>) {
        if let Err(e) = outcome
            && gone(e)
        {
            self.give_up(id);
        }
    }

    fn give_up(&self, id: u64) {
        let mut current = self.lock();
        if current.as_ref().is_some_and(|(held, _)| *held == id) {
            *current = None;
        }
    }
}

/// Whether a failed call shows that its connection no longer reaches a working master.
fn gone(e: &RedisError) -> bool {
    e.is_timeout()
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || is_readonly(e)
}

fn is_readonly(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
    )
}

/// Gives up the connection of a call that is dropped before it ends: its reply did not come in
/// time, and the node may hang.
struct Abandoned<'a> {
    shared: &'a Shared,
    id: u64,
    done: AtomicBool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.done.load(Ordering::Relaxed) {
            self.shared.give_up(self.id);
        }
    }
}

impl SentinelConnection {
    async fn run<T>(
        &self,
        send: impl AsyncFnOnce(&mut MultiplexedConnection) -> Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        let (id, mut conn) = self.shared.connection().await?;
        let guard = Abandoned {
            shared: &self.shared,
            id,
            done: AtomicBool::new(false),
        };
        let outcome = send(&mut conn).await;
        guard.done.store(true, Ordering::Relaxed);
        self.shared.after(id, &outcome);
        outcome
    }
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let reply = self.run(async |c| c.req_packed_command(cmd).await).await?;
            Ok(reply)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.run(async |c| c.req_packed_commands(cmd, offset, count).await)
                .await
        })
    }

    fn get_db(&self) -> i64 {
        self.shared.db.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for SentinelConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelConnection")
            .field("connections_made", &self.connections_made())
            .finish_non_exhaustive()
    }
}

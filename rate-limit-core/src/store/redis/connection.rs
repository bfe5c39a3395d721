//! [`RedisConnection`]: the store's own pipelined connection to one Redis node, which costs the
//! client a fraction of what the `redis` crate's `ConnectionManager` does per command.

use std::fmt;
use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{
    Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, Value,
};
use tokio::sync::oneshot;

mod reader;
mod shared;
mod target;

use reader::lost;
use shared::{Shared, Waiter};
use target::Target;

/// A connection to one Redis node, what [`RedisStore::connect`](super::RedisStore::connect)
/// builds: one socket (TCP or a Unix socket), commands pipelined on it, replies read by one
/// task. Clones share it, and cost an `Arc` clone.
///
/// A caller writes its command to the socket itself when nothing else is being written, so a
/// lone command costs no task wake-up to be sent; replies are read by a task on the Tokio
/// runtime that connected, and handed to their callers in order. A caller that gives up (its
/// future dropped) leaves its reply to be read and discarded: the replies of the others do not
/// shift.
///
/// Each command is sent once, and never again: when the socket fails (the server closed it, a
/// reset, a write error), every command waiting for a reply fails with an I/O error (a
/// [`Connection`](crate::StoreErrorKind::Connection) error through the store), and the next
/// command connects again (at most 500 ms, then `AUTH` and `SELECT` from the URL). Commands
/// arriving during that attempt wait for it; after a failed attempt, commands fail at once with
/// its error for 100 ms, and the first one after that tries again.
///
/// A `rediss://` (TLS) URL, or one asking for RESP3, is served by a `redis::aio::ConnectionManager`
/// instead, with [`RedisStore::connect`](super::RedisStore::connect)'s settings.
///
/// ```
/// use rate_limit_core::{RedisConnection, RedisStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Port 1: nothing listens there. A lazy connection tries on its first command.
/// let mut conn = RedisConnection::lazy("redis://:secret@127.0.0.1:1/2")?;
/// let err = redis::cmd("PING").query_async::<String>(&mut conn).await.unwrap_err();
/// assert!(err.is_connection_refusal());
/// assert!(!format!("{conn:?}").contains("secret"));
/// // The same handle serves a store, with other settings than `connect`'s.
/// let store = RedisStore::builder(conn).prefix("app").build()?;
/// assert_eq!(store.prefix(), "app");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisConnection {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Own(Arc<Shared>),
    Manager(ConnectionManager),
}

impl RedisConnection {
    /// Connects to `url` (`redis://[[user]:password@]host[:port][/db]`, `unix:///path`,
    /// `redis+unix:///path?db=..&pass=..`, `rediss://..`), and authenticates.
    ///
    /// # Errors
    ///
    /// The URL is invalid, or the first connection (or its `AUTH`, `SELECT`) failed.
    pub async fn connect(url: impl IntoConnectionInfo) -> RedisResult<Self> {
        match Target::of(url)? {
            Ok(target) => {
                let shared = Arc::new(Shared::new(target));
                Shared::reconnect(&shared).await?;
                Ok(Self {
                    inner: Inner::Own(shared),
                })
            }
            Err(info) => {
                let client = redis::Client::open(info)?;
                let manager =
                    ConnectionManager::new_with_config(client, super::manager_config()).await?;
                Ok(Self {
                    inner: Inner::Manager(manager),
                })
            }
        }
    }

    /// As [`connect`](Self::connect), without connecting: the first command does.
    ///
    /// # Errors
    ///
    /// The URL is invalid; for a TLS URL, this is called outside a Tokio runtime (its
    /// `ConnectionManager` starts a task at once).
    pub fn lazy(url: impl IntoConnectionInfo) -> RedisResult<Self> {
        let inner = match Target::of(url)? {
            Ok(target) => Inner::Own(Arc::new(Shared::new(target))),
            Err(_) if tokio::runtime::Handle::try_current().is_err() => {
                return Err(no_runtime());
            }
            Err(info) => Inner::Manager(ConnectionManager::new_lazy_with_config(
                redis::Client::open(info)?,
                super::manager_config(),
            )?),
        };
        Ok(Self { inner })
    }

    /// Sends what `write` appends to the socket, and waits for the reply `waiter` collects.
    async fn request<T>(
        shared: &Arc<Shared>,
        write: impl Fn(&mut Vec<u8>) + Sync,
        waiter: impl FnOnce(oneshot::Sender<RedisResult<T>>) -> Waiter,
    ) -> RedisResult<T> {
        let (tx, rx) = oneshot::channel();
        let mut waiter = Some(waiter(tx));
        if !shared.enqueue(&write, &mut waiter) {
            Shared::reconnect(shared).await?;
            if !shared.enqueue(&write, &mut waiter) {
                return Err(lost());
            }
        }
        rx.await.unwrap_or_else(|_| Err(lost()))
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.inner {
            Inner::Manager(manager) => manager.req_packed_command(cmd),
            Inner::Own(shared) => Box::pin(Self::request(
                shared,
                |out: &mut Vec<u8>| cmd.write_packed_command(out),
                Waiter::One,
            )),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.inner {
            Inner::Manager(manager) => manager.req_packed_commands(pipeline, offset, count),
            Inner::Own(shared) => Box::pin(async move {
                let packed = pipeline.get_packed_pipeline();
                Self::request(
                    shared,
                    |out: &mut Vec<u8>| out.extend_from_slice(&packed),
                    |tx| Waiter::Many {
                        tx,
                        skip: offset,
                        total: offset + count,
                        values: Vec::with_capacity(offset + count),
                    },
                )
                .await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Own(shared) => shared.target.db,
            Inner::Manager(manager) => manager.get_db(),
        }
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The address and database only: never the credentials.
        match &self.inner {
            Inner::Own(shared) => f
                .debug_struct("RedisConnection")
                .field("addr", &shared.target.addr)
                .field("db", &shared.target.db)
                .finish_non_exhaustive(),
            Inner::Manager(manager) => f
                .debug_struct("RedisConnection")
                .field("db", &manager.get_db())
                .field("tls", &true)
                .finish_non_exhaustive(),
        }
    }
}

fn no_runtime() -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "RedisConnection needs a Tokio runtime to run its connection on",
    ))
}

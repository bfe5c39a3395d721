//! [`RebuildingClusterConnection`]: a Redis Cluster connection that replaces itself, in the
//! background, when a slot's master stops answering.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Arg, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, ServerErrorKind, Value};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::error;
use crate::error::StoreError;

/// The least time between the starts of two rebuilds (or probes).
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How long a probe waits for its reply: a master that cannot answer `EXISTS` in this time is
/// taken for hung.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a call in flight on a connection that was replaced may still wait for its reply:
/// calls to the nodes that answer end within it, and those to the hung node fail at its end.
const GRACE: Duration = Duration::from_millis(200);

/// How long a new connection may take to connect to the cluster and read its slot map.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(5);

/// A Redis Cluster connection for [`RedisStore`](super::RedisStore) (the `cluster` feature)
/// that is replaced, in the background, by a new one when a slot's master hangs;
/// [`RedisStore::connect_cluster`](super::RedisStore::connect_cluster) builds one.
///
/// It sends each call through a `redis::cluster_async::ClusterConnection`. That connection
/// refreshes its slot map when a node answers `MOVED` or a connection is lost, but a call that
/// times out tells it nothing: when a master hangs (stopped, frozen, stalled), not dies, and
/// its replica is promoted, it keeps sending the slots' calls to the hung node, which never
/// answers, until the node resumes. Refreshing the slot map in place would not do either: the
/// refresh may ask the hung node, and holds every call, on every node, while it waits.
///
/// So when a call times out or is given up before its reply (a caller's timeout), the
/// connection checks, in a task of its own, whether the master of that call's slot still
/// answers: it sends `EXISTS` of the call's first key, and waits 500 ms. When no reply comes,
/// it builds a new `ClusterConnection` from the same client (which reads the slot map from the
/// nodes that answer), asks the same through it, and takes it for the calls that follow only
/// if the slot's master answers there (not `MOVED`, not `CLUSTERDOWN`: the replica was
/// promoted); otherwise it drops it and tries again at the next timeout. One check or rebuild
/// runs at a time, at most one starts per second, and none holds up a call: calls go on
/// through the connection in use until the new one is ready.
///
/// A call is never sent again. Only later calls go to the new connection; a call still waiting
/// on the old one 200 ms after it was replaced (a call to the hung node: the others have their
/// replies by then) fails with a [`Timeout`](crate::StoreErrorKind::Timeout) error (no reply
/// came, so it may or may not have run), rather than at the store's response timeout, so that
/// the calls queued behind it in its slot's lane go on. The client must be built
/// with `retries(0)`, as for any `ClusterConnection` under the store (see
/// [failures](super::RedisStore#failures-timeouts-and-retries)); the probe, `EXISTS`, changes
/// nothing.
///
/// Each new connection starts from the client's initial nodes (as the `redis` crate does when
/// it has lost every node): give it several, so that one hung node does not leave it without a
/// way in. A hung one among them makes a rebuild wait for its connection timeout.
///
/// Clones share the connection in use and the rebuilds.
#[derive(Clone)]
pub struct RebuildingClusterConnection {
    shared: Arc<Shared>,
}

struct Shared {
    client: ClusterClient,
    config: ClusterConfig,
    /// The connection in use, with its number (0 for the first).
    current: Mutex<Current>,
    healer: Mutex<Healer>,
    rebuilds: AtomicU64,
}

/// A connection, its number, and what tells the calls in flight on it that it was replaced.
#[derive(Clone)]
struct Current {
    id: u64,
    conn: ClusterConnection,
    replaced: Arc<Notify>,
}

#[derive(Default)]
struct Healer {
    /// A check or a rebuild is running.
    busy: bool,
    last_start: Option<Instant>,
    /// The number of a connection whose probe found a master hung: the next check of it
    /// rebuilds at once.
    stalled: Option<u64>,
}

impl RebuildingClusterConnection {
    /// Connects to the cluster through `client`, with `config`'s timeouts (and those of new
    /// connections after a hang).
    ///
    /// # Errors
    ///
    /// No node could be reached.
    pub async fn connect(client: ClusterClient, config: ClusterConfig) -> Result<Self, StoreError> {
        let conn = client
            .get_async_connection_with_config(config.clone())
            .await
            .map_err(error::from_redis)?;
        Ok(Self::over(client, config, conn))
    }

    /// As [`connect`](Self::connect), without waiting for the cluster: the connection
    /// connects in the background (`ClusterClient::get_pending_async_connection_with_config`).
    /// Call it in a Tokio runtime: the connection's task needs one.
    pub fn connect_lazy(client: ClusterClient, config: ClusterConfig) -> Self {
        let conn = client.get_pending_async_connection_with_config(config.clone());
        Self::over(client, config, conn)
    }

    fn over(client: ClusterClient, config: ClusterConfig, conn: ClusterConnection) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                config,
                current: Mutex::new(Current {
                    id: 0,
                    conn,
                    replaced: Arc::new(Notify::new()),
                }),
                healer: Mutex::new(Healer::default()),
                rebuilds: AtomicU64::new(0),
            }),
        }
    }

    /// The `ClusterConnection` in use now, for commands routed by hand (`route_command`).
    pub fn current(&self) -> ClusterConnection {
        self.shared.current().conn
    }

    /// How many times a new connection has replaced the one in use.
    pub fn rebuilds(&self) -> u64 {
        self.shared.rebuilds.load(Ordering::Relaxed)
    }

    async fn run<T>(
        &self,
        key: Option<&[u8]>,
        send: impl AsyncFnOnce(&mut ClusterConnection) -> Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        let Current {
            id,
            mut conn,
            replaced,
        } = self.shared.current();
        let mut watch = Watch {
            shared: &self.shared,
            id,
            key,
            done: false,
        };
        // Created before the call is sent: a replacement from then on ends the wait, after a
        // grace that a call to a node that answers does not need.
        let mut replaced = std::pin::pin!(replaced.notified());
        let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let mut reply = std::pin::pin!(send(&mut conn));
        let outcome = std::future::poll_fn(|cx| {
            if let Poll::Ready(outcome) = reply.as_mut().poll(cx) {
                return Poll::Ready(outcome);
            }
            if grace.is_none() && replaced.as_mut().poll(cx).is_ready() {
                grace = Some(Box::pin(tokio::time::sleep(GRACE)));
            }
            match grace.as_mut().map(|g| g.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Err(replaced_error())),
                _ => Poll::Pending,
            }
        })
        .await;
        watch.done = true;
        if let Err(e) = &outcome
            && e.is_timeout()
        {
            self.shared.suspect(id, key);
        }
        outcome
    }
}

/// Suspects a hang when a call is given up before its reply came.
struct Watch<'a> {
    shared: &'a Arc<Shared>,
    id: u64,
    key: Option<&'a [u8]>,
    done: bool,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.suspect(self.id, self.key);
        }
    }
}

impl Shared {
    fn current(&self) -> Current {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn healer(&self) -> MutexGuard<'_, Healer> {
        self.healer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A call on connection `id` about `key` got no reply: checks that slot's master in the
    /// background, unless a check runs, one started less than a second ago, or `id` is no
    /// longer in use.
    fn suspect(self: &Arc<Self>, id: u64, key: Option<&[u8]>) {
        let Some(key) = key else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let now = Instant::now();
        {
            let mut healer = self.healer();
            if healer.busy
                || healer
                    .last_start
                    .is_some_and(|t| now.saturating_duration_since(t) < MIN_INTERVAL)
            {
                return;
            }
            let in_use = self
                .current
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .id;
            if in_use != id {
                return;
            }
            healer.busy = true;
            healer.last_start = Some(now);
        }
        runtime.spawn(Arc::clone(self).heal(id, key.to_vec()));
    }

    /// Probes the master of `key`'s slot through connection `id`, and if it does not answer,
    /// builds a new connection and takes it if the slot's master answers there.
    async fn heal(self: Arc<Self>, id: u64, key: Vec<u8>) {
        let _idle = Idle(&self);
        let known = self.healer().stalled == Some(id);
        if !known {
            let mut conn = self.current().conn;
            if probe(&mut conn, &key).await != Probe::Stalled {
                return;
            }
            self.healer().stalled = Some(id);
        }
        let fresh = tokio::time::timeout(
            REBUILD_TIMEOUT,
            self.client
                .get_async_connection_with_config(self.config.clone()),
        )
        .await;
        let Ok(Ok(mut fresh)) = fresh else { return };
        if probe(&mut fresh, &key).await != Probe::Served {
            return;
        }
        let old = {
            let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
            if current.id != id {
                return;
            }
            let fresh = Current {
                id: id + 1,
                conn: fresh,
                replaced: Arc::new(Notify::new()),
            };
            std::mem::replace(&mut *current, fresh)
        };
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
        // The calls still waiting on the old connection's hung node fail now rather than at
        // their timeout, and free their places in flight for the calls that follow.
        old.replaced.notify_waiters();
    }
}

/// Marks the healer idle when a check ends, in any way.
struct Idle<'a>(&'a Shared);

impl Drop for Idle<'_> {
    fn drop(&mut self) {
        self.0.healer().busy = false;
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Probe {
    /// The slot's master answered.
    Served,
    /// An answer, from a node that does not serve the slot (a redirect, `CLUSTERDOWN`), or no
    /// node to send it to.
    NotServed,
    /// No answer in time.
    Stalled,
}

/// Sends `EXISTS key` through `conn`, routed to the master of `key`'s slot: a read of nothing
/// the store writes (or of a state, which it leaves as it is).
async fn probe(conn: &mut ClusterConnection, key: &[u8]) -> Probe {
    let mut cmd = redis::cmd("EXISTS");
    cmd.arg(key);
    match tokio::time::timeout(PROBE_TIMEOUT, cmd.query_async::<Value>(conn)).await {
        Err(_elapsed) => Probe::Stalled,
        Ok(Ok(_)) => Probe::Served,
        Ok(Err(e)) if e.is_timeout() => Probe::Stalled,
        Ok(Err(e)) => match e.kind() {
            ErrorKind::Server(
                ServerErrorKind::Moved
                | ServerErrorKind::Ask
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly,
            ) => Probe::NotServed,
            // Another answer from the node (`NOPERM` for a user who may not read the key):
            // it serves the slot.
            ErrorKind::Server(_) => Probe::Served,
            _ => Probe::NotServed,
        },
    }
}

/// The error of a call in flight on a connection that was replaced: no reply came, and none is
/// awaited any longer.
fn replaced_error() -> RedisError {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "redis cluster: no reply, and the connection was replaced after a node hung",
    )
    .into()
}

/// The key whose slot `cmd` is routed by: a script call's (`FCALL`, `EVALSHA`, ...) first
/// key, another command's first argument; `None` without one.
fn first_key(cmd: &Cmd) -> Option<&[u8]> {
    let mut args = cmd.args_iter().map(|a| match a {
        Arg::Simple(bytes) => bytes,
        _ => &[],
    });
    let name = args.next()?;
    let script = [
        "FCALL",
        "FCALL_RO",
        "EVAL",
        "EVAL_RO",
        "EVALSHA",
        "EVALSHA_RO",
    ]
    .iter()
    .any(|s| name.eq_ignore_ascii_case(s.as_bytes()));
    if script {
        let _function = args.next()?;
        let numkeys: usize = std::str::from_utf8(args.next()?).ok()?.parse().ok()?;
        if numkeys == 0 {
            return None;
        }
    }
    args.next().filter(|key| !key.is_empty())
}

impl ConnectionLike for RebuildingClusterConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            self.run(first_key(cmd), async |c| c.req_packed_command(cmd).await)
                .await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let key = pipeline.cmd_iter().next().and_then(first_key);
            self.run(key, async |c| {
                c.req_packed_commands(pipeline, offset, count).await
            })
            .await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

impl fmt::Debug for RebuildingClusterConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RebuildingClusterConnection")
            .field("rebuilds", &self.rebuilds())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_routed_by_its_first_key() {
        let mut fcall = redis::cmd("FCALL");
        fcall
            .arg("ratelimit_decide")
            .arg(2)
            .arg("rl:{a}:1")
            .arg("rl:{a}:2");
        assert_eq!(first_key(&fcall), Some(&b"rl:{a}:1"[..]));
        let mut keyless = redis::cmd("fcall");
        keyless.arg("f").arg(0).arg("x");
        assert_eq!(first_key(&keyless), None);
        let mut get = redis::cmd("GET");
        get.arg("k");
        assert_eq!(first_key(&get), Some(&b"k"[..]));
        assert_eq!(first_key(&redis::cmd("PING")), None);
    }
}

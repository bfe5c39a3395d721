//! One script call: sent once, bounded by the store's response timeout, and sent again only
//! after a reply proving that the script did not run.
//!
//! A call whose reply never came (a dropped connection, a timeout) may have run: sending it
//! again could charge its checks twice, so it fails instead. What proves the script did not
//! run is a reply the server gives before running it: `Function not found` (the library is
//! loaded, on every master of a cluster, and the call sent again), and on Redis Cluster a redirect, `MOVED` (sent again, to the node the
//! connection's refreshed slot map names) or `ASK` (sent to the node it names, after
//! `ASKING`), at most [`MAX_REDIRECTS`] times.

use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisError, ServerErrorKind, Value};

use super::deadline::{Deadlines, Elapsed};
use super::script::{self, Check};
use crate::decision::Decision;
use crate::error::StoreError;

/// Redirects one call follows, at most. A slot that moved needs one (`MOVED`, or `ASK` then
/// `MOVED` while it migrates); the others cover a slot map refreshed from a node that had not
/// yet heard of the move.
const MAX_REDIRECTS: u32 = 3;

/// Library loads this process has completed. A call that finds the library missing after
/// another call's load completed (since it was sent) tries again once without loading it.
static LOADS: AtomicU64 = AtomicU64::new(0);

/// Held while the library loads: the calls of many lanes (one per cluster slot) that find it
/// missing at once, on a new server, load it once rather than each compiling it on every
/// master.
static LOADING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One answer per check, or the error that failed the whole call.
pub(crate) type Answers = Result<Vec<Result<Decision, StoreError>>, RedisError>;

/// Decides `checks` in one script call on `conn`, at `now` (client-clock mode) or at the
/// server's `TIME`. With `deadlines`, the call (its resends included) fails with a timeout once
/// the store's response timeout has passed without a reply.
pub(crate) async fn call<C>(
    conn: &C,
    now: Option<u64>,
    checks: &[&Check],
    deadlines: Option<&Arc<Deadlines>>,
) -> Answers
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let mut attempt = pin!(send(conn.clone(), now, checks));
    match deadlines {
        Some(deadlines) => match deadlines.bound(attempt.as_mut()).await {
            Ok(answers) => answers,
            Err(Elapsed) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no reply within the store's response timeout of {:?}",
                    deadlines.timeout()
                ),
            )
            .into()),
        },
        None => attempt.await,
    }
}

async fn send<C>(mut conn: C, now: Option<u64>, checks: &[&Check]) -> Answers
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let cmd = script::command(now, checks);
    // The node an `ASK` named, until the call is sent there.
    let mut asked: Option<(String, u16)> = None;
    let (mut loaded, mut redirects) = (false, 0);
    // The loads completed before the call was sent; once the call has tried again after
    // another's load, it loads the library itself.
    let mut loads_seen = Some(LOADS.load(Ordering::Acquire));
    loop {
        let reply = match &asked {
            None => cmd.query_async(&mut conn).await,
            // Boxed, as the rare paths below: the future of every call stays small.
            Some(node) => Box::pin(asking(&mut conn, &cmd, node)).await,
        };
        let e = match reply {
            Ok(reply) => return Ok(script::parse_batch(reply, checks)),
            Err(e) => e,
        };
        match e.kind() {
            // On a new server, after a restart or `FUNCTION FLUSH`: load the library (on a
            // cluster, on every master) and send the call again.
            _ if !loaded && is_missing_function(&e) => {
                loaded = Box::pin(load(&mut conn, loads_seen.take())).await?;
            }
            // The slot is served elsewhere. The cluster connection refreshes its slot map on
            // this reply, before it routes the next call.
            ErrorKind::Server(ServerErrorKind::Moved) if redirects < MAX_REDIRECTS => {
                redirects += 1;
                asked = None;
            }
            ErrorKind::Server(ServerErrorKind::Ask)
                if redirects < MAX_REDIRECTS && super::is_cluster(&conn) =>
            {
                let Some(node) = e.redirect_node().and_then(|(addr, _)| address(addr)) else {
                    return Err(e);
                };
                redirects += 1;
                asked = Some(node);
            }
            _ => return Err(e),
        }
    }
}

/// Loads the library on `conn` unless another call completed a load since `loads_seen` (the
/// loads completed before the call was first sent; `None` once it has tried again after
/// another's load): whether it loaded it.
async fn load<C>(conn: &mut C, loads_seen: Option<u64>) -> Result<bool, RedisError>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let _one_load = LOADING.lock().await;
    match loads_seen {
        // Loaded by another call meanwhile (on this server, most likely): try again, and
        // load it if it is still missing.
        Some(seen) if seen != LOADS.load(Ordering::Acquire) => Ok(false),
        _ => {
            let _: Value = script::load_command().query_async(conn).await?;
            LOADS.fetch_add(1, Ordering::AcqRel);
            Ok(true)
        }
    }
}

/// Whether `e` is the server's answer to an `FCALL` of a function it does not have: given before
/// anything runs.
fn is_missing_function(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
        && e.detail().map(str::trim) == Some("Function not found")
}

/// `host` and `port` of `host:port`.
fn address(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

/// Sends `cmd` to `node` after `ASKING`, as a slot being migrated there requires: possible
/// through a `ClusterConnection` only, which can route to a given node (an `ASK` through
/// another connection fails the call).
#[cfg(feature = "cluster")]
async fn asking<C: 'static>(
    conn: &mut C,
    cmd: &redis::Cmd,
    (host, port): &(String, u16),
) -> Result<Value, RedisError> {
    use redis::cluster_async::ClusterConnection;
    use redis::cluster_routing::SingleNodeRoutingInfo;
    let conn = conn as &mut dyn std::any::Any;
    let mut cluster = match conn.downcast_mut::<ClusterConnection>() {
        Some(cluster) => cluster.clone(),
        None => match conn.downcast_ref::<super::RebuildingClusterConnection>() {
            Some(rebuilding) => rebuilding.current(),
            None => return Err(cannot_ask()),
        },
    };
    let mut pipe = redis::pipe();
    pipe.cmd("ASKING").add_command(cmd.clone());
    let route = SingleNodeRoutingInfo::ByAddress {
        host: host.clone(),
        port: *port,
    };
    // The second reply, the script's.
    let mut replies = cluster.route_pipeline(pipe, 1, 1, route).await?;
    replies.pop().ok_or_else(cannot_ask)?.extract_error()
}

#[cfg(not(feature = "cluster"))]
async fn asking<C>(
    _conn: &mut C,
    _cmd: &redis::Cmd,
    _node: &(String, u16),
) -> Result<Value, RedisError> {
    Err(cannot_ask())
}

fn cannot_ask() -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "an ASK redirect can only be followed through a ClusterConnection",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_addresses_split_at_the_last_colon() {
        assert_eq!(
            address("127.0.0.1:7001"),
            Some(("127.0.0.1".to_owned(), 7001))
        );
        assert_eq!(address("::1:7001"), Some(("::1".to_owned(), 7001)));
        assert_eq!(address("host"), None);
        assert_eq!(address("host:x"), None);
    }
}

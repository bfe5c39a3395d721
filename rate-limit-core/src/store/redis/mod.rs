//! [`RedisStore`]: one budget per client shared by every instance, through Redis.
//!
//! See [`RedisStore`] for the details: how a check runs, batching, the deny cache, time,
//! exactness, keys, connections, failures and retries.

use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager};

use super::{BoxFuture, Charge, Store};
use crate::decision::Decision;
use crate::error::{ConfigError, StoreError, StoreErrorKind};
use crate::limit::Limit;

mod batch;
mod builder;
mod call;
#[cfg(feature = "cluster")]
mod cluster;
mod connection;
mod deadline;
mod deny_cache;
use deny_cache::DenyCache;
mod error;
mod keys;
mod resp;
mod script;
#[cfg(feature = "sentinel")]
mod sentinel;

pub use builder::RedisStoreBuilder;
#[cfg(feature = "cluster")]
pub use cluster::RebuildingClusterConnection;
pub use connection::RedisConnection;
#[cfg(feature = "sentinel")]
pub use sentinel::SentinelConnection;

/// A [`Store`] on Redis: every instance that shares the server shares one budget per client.
///
/// # How a check runs
///
/// A check first looks in the [deny cache](#deny-cache): a recent denial that still holds
/// answers at once, with no call to Redis. Otherwise it joins the store's queue, and one
/// `FCALL` decides it, together with the other checks that queued meanwhile (see
/// [batching](#batching-and-coalescing)). The script (one Lua function per algorithm, each the
/// twin of its Rust transition, plus an entry point) runs the checks of a call one after the
/// other, in arrival order, at one instant: exactly as separate calls at that instant would.
/// A call whose checks differ only in their keys (many clients under one quota, the common
/// batch of an HTTP service) takes a shorter path with the same answers and stored states, each
/// key decided and written as it is read: with 32 keys per call, about two thirds of what Redis
/// spends on the general path for GCRA (see `bench/README.md`). For each check it decides every limit without charging, then charges every limit only if all
/// allow: several limits are all-or-nothing, and limits of one request may use different
/// algorithms. A check that fails in the script (a key holding another type, `WRONGTYPE`) gets
/// its error; the others in the same call get their decisions. The script is a Redis Functions
/// library, loaded once per server (`FUNCTION LOAD`; on Redis Cluster, on every master), so a
/// call runs the entry point alone, not the definitions of every algorithm. When the server
/// does not have it (`Function not found`: a new server, a restart, `FUNCTION FLUSH`), it is
/// loaded and the call is sent again; no other failure is retried (see
/// [failures](#failures-timeouts-and-retries)).
///
/// # Batching and coalescing
///
/// Each store has a dispatcher. A check that finds fewer than two calls in flight in its
/// queue starts a flush task, which sends what is queued (up to
/// [`max_batch`](RedisStoreBuilder::max_batch) checks, 128 by default) as one call, answers
/// each caller, and goes on while checks keep arriving. A lone check is sent at once: batching
/// adds no timer and no wait; under load, the checks that arrive during one round trip share
/// the next. The flush runs in its own Tokio task, so a caller that gives up (a
/// `resilience::Timeout` dropping its future) cancels only its own wait; a queued check whose
/// caller has gone is not sent, and is dropped from the queue. A failed call (a lost
/// connection, a timeout) fails every check it carried.
///
/// On a single server, every check shares one queue. On Redis Cluster, where a script may
/// only touch keys of one slot, each hash slot has a queue of its own, with at most two calls
/// in flight: a master that hangs holds up the checks of its own slots only, and checks of
/// keys on the other masters keep being answered.
///
/// Identical checks in a row in a batch (the same key, limits, cost and commit, as a hot
/// key's are) are sent once with a count, and the script decides each of them in turn; checks
/// in a row that differ only in their keys share one description of their limits: the
/// call's size and the script's work per check no longer grow with the arguments every check
/// repeated, and the reply is one compact string the client reads in place. What a check costs
/// redis-server and the client, per call shape, is measured in `bench/README.md`.
///
/// Inside one call, the script reads each state once (`GET`: one to three integers, stored as
/// little-endian doubles, exact below 2^53, and the key's expiry), lets the checks read and
/// update it in a table, and writes it once at the end, only if it changed; or `DEL`s it when
/// it is full again: 32 concurrent checks of one hot key cost one `GET` and one write. On the
/// server's time, a key expires when its state is full again, rounded up to the next second
/// (so that a write within the second keeps the expiry, with `SETRANGE`, which costs Redis less
/// than setting one); on a client's clock, with `PX`, at every write.
/// The sliding window log, one string of packed entries, is read in pieces: its newest entry
/// and trailer once per call (one `GETRANGE`), and written once, at the end of the call (one
/// `SETRANGE` of the newest entry and the trailer).
///
/// This changes no decision. A script runs alone on the server, so the checks of one call are
/// decided serially, each on the state the one before left, as if each had been a call of its
/// own arriving at that instant: never more is admitted than by one check per call.
///
/// # Deny cache
///
/// A check denied with a `retry_after` of `T` is remembered locally: the client key, the
/// limits, the cost and the decision, until `T` after a local clock reading taken *before* the
/// check was sent. Until then, a check of the same key and limits with the same cost or more
/// is denied with no call to Redis, its `retry_after` and `reset_after` shortened by the time
/// gone by (for a greater cost, the real wait may be longer). [`Store::try_check_now`] answers
/// from this cache (and `None` otherwise), so the tower layer denies a client that keeps
/// knocking without a future or a round trip. Such a decision is
/// [marked cached](Decision::is_cached): it says nothing of Redis's health, and a circuit
/// breaker does not take it for an answer.
///
/// Why this is exact: with no charges, what a state admits never shrinks as time passes, and
/// other instances can only charge (but for [refunds](#refunds)); Redis decided at or after the send, so until the deadline it
/// would deny too (given clocks that run at the same rate and never go back). A smaller cost may
/// pass, so it is not answered from the cache; nor is a cost above a limit's capacity, which
/// Redis denies with no `retry_after` (no wait helps it), as it would with no cache. An
/// admission clears the key's entry. The clock is the store's
/// [`clock`](RedisStoreBuilder::clock) if one is set, else a
/// [`SystemClock`](crate::SystemClock); [`peek`](Store::peek) never uses the cache.
///
/// The cache has a fixed number of slots ([`deny_cache`](RedisStoreBuilder::deny_cache), 4096
/// by default, `0` turns it off), each holding one denial: memory stays bounded whatever the
/// number of client keys. The full client key is compared, so a hash collision never denies
/// another key. A state deleted out of band (an administrator resetting a client) is seen by an
/// instance holding a denial for it only once that denial's wait is over.
///
/// # Refunds
///
/// [`Store::refund`] gives a charge back in one script call, on every limit of the key at once
/// (what each algorithm gives back is in [`Algorithm`](crate::Algorithm#refunds)'s docs), and
/// answers a peek of the charge's cost. The charge time is the call's instant (the server's
/// `TIME`, or the store's clock) less the charge's
/// [`since`](crate::Charge::since), rounded up to the microsecond.
///
/// A refund joins the same queue as the checks, and rides the same batched call: in a lane,
/// calls run in the order they were queued, so a refund is applied after every check of its key
/// queued before it, and a hot key's refunds coalesce as its checks do; on Redis Cluster it
/// takes its key's slot lane. Like a check, it is sent once: a refund whose reply was lost (a
/// dropped connection, a timeout) fails, and may or may not have been given back. It is never
/// sent again, since giving back twice would admit more than the quota. A queued refund whose
/// caller has gone is not sent.
///
/// The script's work is a check's, but for the sliding window log, whose refund rewrites the
/// entries logged since the charge time (one `GETRANGE` and one `SETRANGE`, after finding that
/// time among the last 16 entries, or beyond them in O(log n) reads): few for a prompt refund,
/// up to the whole log for a charge made nearly a period ago.
///
/// When a refund's call has ended, the [deny cache](#deny-cache) drops what it keeps for the key
/// (every set of limits), and a denial of a check sent before is not kept: the budget given back
/// is not denied from the cache. A refund made by *another* instance is seen by this instance's
/// cached denials only at their deadline, at most the wait Redis announced.
///
/// # Time
///
/// By default the script reads the server's `TIME`: one clock for every instance, whatever
/// their own clocks say. [`RedisStoreBuilder::clock`] sends time from a
/// [`Clock`](crate::Clock) instead, for servers that refuse `TIME` in scripts and for
/// deterministic tests.
///
/// # Exactness
///
/// The script decides exactly as the in-memory transitions on the same arrivals, for every
/// quota: time is in integer microseconds (the server's `TIME` has no finer grain), and the
/// bucket algorithms (token bucket, leaky bucket, GCRA) count their spans in nanoseconds, as
/// memory does, so an emission interval that is not a whole microsecond (3/s is 333,333.334 µs,
/// 10^7/s is 100 ns) is never rounded to one. Waits are memory's rounded up to the microsecond:
/// the two never disagree by a tick. Lua numbers are doubles, exact up to 2^53: the script holds
/// a span of nanoseconds as microseconds and nanoseconds, and every value it computes stays
/// below 2^53 until about the year 2140.
///
/// Two kinds of limit cannot be counted exactly, and are refused: a window algorithm (fixed
/// window, sliding window log, sliding window counter) whose period is not a whole number of
/// microseconds, and a [`SlidingWindow`](crate::Algorithm::SlidingWindow) limit whose
/// `limit × period in µs` reaches 2^53 (about 9.0e15: up to 2.5 million per hour, 104,000 per
/// day). [`Store::validate`] (and [`validate_limit`](RedisStore::validate_limit)) says so with a
/// [`ConfigError`] naming the limit: call it at start-up (the tower layer's `validate` does it
/// for every limit of a layer). A check of such a limit fails with
/// [`StoreErrorKind::InvalidInput`](crate::StoreErrorKind), as a last line.
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
/// of integers (`tokens:last`, `level:at`, `start:count`, `start:cur:prev`, `tat`, in
/// microseconds; a bucket whose time or level is not a whole microsecond adds its nanoseconds
/// after them: `tokens:last:ns`, `level:at:ns`, `tat:ns`); the sliding window log keeps one
/// string of 12-byte entries (a tick as a little-endian double, the running total of the costs
/// modulo 2^32) and a 28-byte trailer (the number of entries, the index of the oldest live one,
/// its tick and total, the total before it, the key's expiry second), so about 12 bytes an entry
/// (2.6 MB for a full log of 200,000). A check reads the newest entry and the trailer (the last
/// 40 bytes, one `GETRANGE`) and an admission rewrites them (one `SETRANGE`); dropping expired
/// entries moves the head by a search (one read of the 9 to 12 entries after it, O(log n) single
/// reads beyond), and finding a denial's wait searches from the head likewise, so a denial or a
/// peek costs Redis a few times an admission whatever the limit
/// (`tests/tests/redis_sliding_log.rs` measures it with `INFO commandstats`), never a read of
/// the whole log. The room dropped entries leave is reclaimed when an admission finds it larger
/// than the live part (and at least 8 entries): the live part is moved to the start of the
/// string, one copy paid for by the entries that left. A refund may leave zero-cost copies in
/// place of the entries it empties, which are dropped once the live part exceeds twice the
/// limit: a key holds at most about 4 × limit entries, 2 × limit without refunds (and Redis
/// caps a string at 512 MB: keep a log's limit below some 10 million). A log written by an
/// earlier version as a list of `tick:cost:total` entries is converted, entries and expiry, when
/// it is first read.
///
/// # Servers
///
/// Needs Redis 7.0 or later, for Redis Functions (`FUNCTION LOAD`, `FCALL`); tested against
/// Redis 7.0 (Debian's `redis-server`), standalone and Cluster. The script reads
/// `TIME` before it writes, which needs effects replication (the default since Redis 5), and
/// packs its reply with the `struct` library that Redis bundles with its Lua interpreter; a
/// Redis-compatible server without `struct` answers every call with a script error.
///
/// # Connections, TLS and AUTH
///
/// [`RedisStore::connect`] builds a [`RedisConnection`] ([`connect_lazy`](RedisStore::connect_lazy)
/// one that connects on its first check): the store's own connection to one node (TCP, or a Unix
/// socket with `unix:///path` or `redis+unix:///path`), which pipelines every command on one
/// socket, has each caller write its command itself and one task read the replies, and
/// reconnects after a failure. It costs a lone check about a quarter less than the `redis`
/// crate's `ConnectionManager` (`bench/README.md`). A `rediss://` URL is served by a
/// `ConnectionManager` behind the same type.
///
/// Any clonable `redis::aio::ConnectionLike` works too: a reconnecting `ConnectionManager`
/// ([`RedisStore::connect_with`]), a `MultiplexedConnection`, or, with the `cluster` feature, a
/// `ClusterConnection` or a [`RebuildingClusterConnection`], which wraps one and replaces it
/// when a master hangs ([`RedisStore::connect_cluster`] builds one, or
/// [`connect_cluster_lazy`](RedisStore::connect_cluster_lazy), which does not wait for the
/// cluster; [`connect_sentinel_lazy`](RedisStore::connect_sentinel_lazy) is Sentinel's). Each
/// call clones the handle, which is cheap: they multiplex one socket. A cluster connection of
/// another type is recognised by the first `CROSSSLOT` answer, and the batch is sent again one
/// call per slot; pass one of these two to get a queue per slot, and `ASK` redirects followed.
///
/// With the `sentinel` feature, a [`SentinelConnection`] ([`RedisStore::connect_sentinel`])
/// reaches the master of a service that Redis Sentinel monitors, and asks the sentinels again
/// after a failover; see [high availability](#high-availability-and-data).
///
/// Batching needs a Tokio runtime to run its flush task on; outside one, each check is a call
/// of its own.
///
/// Credentials and TLS come from the URL: `redis://user:password@host:6379/0` sends `AUTH`
/// (`redis://:password@host` for a password alone); `rediss://host:6380` connects with TLS (the
/// `tls` feature, rustls with the webpki roots). A server whose certificate comes from a private
/// CA is refused by [`connect`](RedisStore::connect) (the cause, the error's source, says
/// `invalid peer certificate: UnknownIssuer`); connect through
/// `redis::Client::build_with_tls` with that CA as the root and pass the connection to
/// [`builder`](RedisStore::builder). Both are tested against a live TLS `redis-server` in
/// `tests/tests/redis_tls.rs`.
///
/// # Failures, timeouts and retries
///
/// A call whose reply never came (a dropped connection, a timeout) may have run on the server:
/// it is never sent again, since running the script twice would charge its checks twice. It
/// fails, and a check that failed this way may or may not have been charged. A call is sent
/// again only after a reply the server gives before it runs a script: `Function not found`
/// (the library is loaded first, on every master of a cluster), and on Redis Cluster the redirects `MOVED` (the connection has refreshed
/// its slot map) and `ASK` (the call goes to the node it names, after `ASKING`; through a
/// `ClusterConnection` only), at most three redirects per call. Other cluster answers
/// (`TRYAGAIN`, `CLUSTERDOWN`, ...) fail the call at once rather than wait inside it.
///
/// The connections must not re-send on their own either:
///
/// - [`RedisConnection`] sends each command once, and never again. When its socket fails (the
///   server closed it, a reset, a write error), every call waiting on it fails with a
///   [`Connection`](StoreErrorKind::Connection) error, and the next call connects again (at
///   most 500 ms; the calls arriving meanwhile wait for that attempt, and after a failed one
///   calls fail at once for 100 ms rather than each waiting to connect). A caller that gives up
///   leaves its reply to be read and dropped: no other caller gets it.
/// - `ConnectionManager` (redis 1.8) sends a command once; when the connection drops, the
///   error goes to the caller and it reconnects in the background (its `number_of_retries` is
///   about reconnecting, not re-sending; see `ConnectionManager::send_packed_command`). A
///   `MultiplexedConnection` sends once and does not reconnect. Both are tested behind a proxy
///   that withholds the reply of a script call (`tests/tests/redis_faults.rs`): charged once.
/// - `ClusterConnection` re-sends a command after a dropped connection or a timeout, as many
///   times as its `retries` setting allows (16 by default), and counts `MOVED` and `ASK`
///   redirects against the same number, so re-sends cannot be turned off without turning
///   redirects off too. [`RedisStore::connect_cluster`] builds it with `retries(0)`, and the
///   store follows redirects itself. A `ClusterConnection` passed to
///   [`builder`](RedisStore::builder) (or wrapped in a [`RebuildingClusterConnection`]) must
///   be built the same way: `ClusterClient::builder(nodes).retries(0)`, and a
///   `response_timeout`, so that a slot map refresh never waits long on a hung node.
///
/// Every call waits at most the store's
/// [`response_timeout`](RedisStoreBuilder::response_timeout) (2 s by default) for its reply,
/// or less if the connection's own timeout is shorter (500 ms by default for a
/// `ConnectionManager` or a `MultiplexedConnection`; a [`RedisConnection`] has none, and a
/// `ClusterConnection` none unless given one): then it fails with a `Timeout` error and frees its place in flight. A caller
/// with a tighter budget wraps the store in a
/// [`resilience::Timeout`](crate::resilience::Timeout). When it gives up, its check is dropped
/// from the queue, at the latest when the calls ahead of it end: it is never sent, and nothing
/// of it stays behind.
///
/// # High availability and data
///
/// The budgets live in Redis memory, and what a topology keeps of them decides what a client
/// can get when a node is lost:
///
/// - **A single node without persistence** (`save ""`, `appendonly no`): a restart empties it,
///   and every client starts again with a full budget, up to one extra quota each. To keep the
///   budgets across a restart, turn on the append-only file (`appendonly yes`, with
///   `appendfsync everysec`: at most about a second of charges is lost in a crash); RDB
///   snapshots alone lose everything since the last one. States expire on their own (each key
///   when its state would be full again), so an old snapshot never holds a client back longer
///   than its own quota would.
/// - **Sentinel** ([`SentinelConnection`]): a replica is promoted after the master is deemed
///   down, and the store's next call goes to it. Replication is asynchronous: charges the
///   master made but had not yet sent to the replica are lost, so a client may get those
///   admissions again, at most one window's worth (one quota). Until the promotion, checks
///   fail (with a breaker and a local [`Fallback`](crate::resilience::Fallback): decided on
///   each instance's share). Measured in `tests/tests/redis_sentinel.rs` (a master, a replica,
///   three sentinels deeming a master down after 400 ms, two instances under load, the
///   master killed): no check failed, decisions back on the promoted replica about 2.4 s after
///   the kill, the slowest check 84 ms (budget 100 ms), and each key got at most its quota
///   more, the two local shares.
/// - **Cluster with replicas**: the same, per master: the keys of a lost master's slots fail
///   (or are decided by a fallback) until its replica is promoted, and charges not yet
///   replicated can be lost. Scripts are not replicated: the store loads its script on the
///   promoted node at the first `NOSCRIPT`. Set `cluster-require-full-coverage no` on the
///   nodes: with Redis's default, `yes`, a slot that no working master serves takes the whole
///   cluster down, and from the moment the lost master is flagged `FAIL` until its replica is
///   promoted (at least 500 ms: a replica waits 500 ms plus up to 500 ms before it asks for
///   votes), every node answers `CLUSTERDOWN` for every key, the healthy masters' too.
///   Measured in `tests/tests/redis_cluster_failover.rs` (three masters and three replicas,
///   `cluster-node-timeout` 1 s, two instances with a 100 ms timeout and a local fallback, one
///   master killed): no check failed, the failed master's keys back on Redis about 2.7 s after
///   the kill, the slowest check 100 ms; with `no`, no check of another master's keys fell back
///   (the longest stretch without a Redis decision for them 137 ms); with `yes`, about 1,000 of
///   them did, over a stretch of 1.15 s. Put no circuit breaker over a whole cluster: one
///   master's failure would open it for every key.
/// - **What remains from the `redis` crate** (1.8): while a master is down, its slots' calls
///   reach its replica, which answers `MOVED` back to the lost master; each `MOVED` (and each
///   call finding no connection) makes the `ClusterConnection` refresh its slot map, and while
///   it does, it dispatches no call and delivers no reply, on any node
///   (`ClusterConnInner::poll_flush` in `cluster_handling/async_connection/mod.rs` polls the
///   recovery future first; `refresh_slots` holds the connection map's write lock, asks
///   `CLUSTER SLOTS`, then pings every node and reconnects to those missing, the lost master
///   included, in `refresh_connections_locked`). Under load this is a refresh every few
///   milliseconds, each holding up the healthy masters' checks: 30 to 130 ms beside the test
///   above (about 1,600 refreshes in 5 s), on loopback where connecting to the lost master is
///   refused at once; a lost host that drops packets makes each refresh wait up to the 500 ms
///   connection timeout.
/// - **A hung master** (stopped, frozen, stalled in a long pause: its sockets stay open and
///   nothing answers): its slots' calls time out, and a timeout tells the `redis` crate's
///   `ClusterConnection` nothing (it refreshes its slot map on `MOVED` or a lost connection
///   only). On its own it keeps sending those calls to the hung node after the replica is
///   promoted, until the node answers again: none of its keys came back to Redis in the test
///   below until it was resumed, 10.5 s after the promotion. Through a
///   [`RebuildingClusterConnection`] (what [`connect_cluster`](RedisStore::connect_cluster)
///   builds), a call that times out or is given up makes the store probe the master of its
///   slot, in the background; with no reply in 500 ms, it builds a new cluster connection beside
///   the one in use (at most one at a time, and one a second) and takes it for the calls that
///   follow once the slot's master answers there, which is the promoted replica; the calls
///   still waiting on the hung node then fail 200 ms later. Meanwhile the hung master's keys fail
///   (or a fallback decides them) within the caller's budget, and the other masters' keys never
///   wait on the hung node nor on a refresh. Calls that reached the hung node may still run
///   when it resumes, before it learns it was replaced; it then becomes a replica and takes the
///   promoted node's data, so those charges are dropped, never doubled. Measured in
///   `tests/tests/redis_cluster_hang.rs` (three masters and three replicas,
///   `cluster-node-timeout` 1 s, `cluster-require-full-coverage no`, two instances with a
///   100 ms timeout and a local fallback, one master stopped with `SIGSTOP`, then resumed),
///   over eight runs on a loaded 2-core host: the promotion visible in `CLUSTER NODES` 2.3 to
///   2.7 s after the stop; the hung master's keys decided by Redis again, on both instances,
///   0.4 to 0.9 s after it; the other masters' keys at most 23 to 61 ms without a Redis
///   decision (up to 237 ms when the host stalled the whole process, every check with it); no
///   check failed; p99 latency 7 to 22 ms, max 103 to 152 ms (237 ms in that stall); the old
///   master, resumed, rejoined as a replica with no check noticing.
///
/// Behind a slow or broken link (`tests/tests/redis_links.rs`): with 20 ms added to every
/// reply, checks from four tasks stay exact, p50 about 46 ms and max about 70 ms (two calls in
/// flight at most, so a check may wait two or three round trips); with replies stalled, or the
/// link to a Redis in a network namespace taken down, a 100 ms timeout, a breaker and a local
/// fallback decide every check within the budget (max about 102 ms), and Redis decides again
/// 0.2 s (stall) and 0.5 s (partition, 200-400 ms cool-down) after the link is back.
///
/// `WAIT` could make a charge wait for a replica, but would put a replica's round trip on
/// every check; the store does not use it.
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
/// let limits = [Limit::new(Quota::per_minute(100), Algorithm::Gcra)];
/// let d = store.check("client-1", &limits, NonZeroU32::MIN).await?;
/// assert!(d.is_allowed());
/// assert_eq!(d.limit(), 100);
/// # Ok(())
/// # }
/// ```
pub struct RedisStore<C = RedisConnection> {
    dispatcher: Arc<batch::Dispatcher<C>>,
    prefix: Arc<str>,
    backend: &'static str,
    deny_cache: Option<DenyCache>,
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
    ///
    /// A `ClusterConnection` must come from a client built with `.retries(0)`: by default it
    /// re-sends a call whose connection dropped after the script ran, charging its checks
    /// twice. Give it a `.response_timeout(..)` too, so that a hung node never stalls its slot
    /// map refresh for long. The store follows `MOVED` and `ASK` itself; see
    /// [failures](RedisStore#failures-timeouts-and-retries). A bare `ClusterConnection` keeps
    /// sending a hung master's slots to it after a failover; pass
    /// [`RebuildingClusterConnection::connect`] the same client to have it replaced.
    ///
    /// ```no_run
    /// # #[cfg(feature = "cluster")]
    /// # async fn cluster() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use rate_limit_core::{RedisStore, Store};
    ///
    /// let client = redis::cluster::ClusterClient::builder(["redis://127.0.0.1:7000"])
    ///     .retries(0)
    ///     .response_timeout(Duration::from_secs(2))
    ///     .build()?;
    /// let conn = client.get_async_connection().await?;
    /// let store = RedisStore::builder(conn).backend("cluster").build()?;
    /// assert_eq!(store.backend(), "cluster");
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(conn: C) -> RedisStoreBuilder<C> {
        let per_slot = is_cluster(&conn);
        RedisStoreBuilder::new(conn, per_slot)
    }
}

/// Whether `conn` is a cluster connection, whose calls must each stay in one slot.
fn is_cluster<C: 'static>(conn: &C) -> bool {
    #[cfg(feature = "cluster")]
    {
        let conn = conn as &dyn std::any::Any;
        conn.is::<redis::cluster_async::ClusterConnection>()
            || conn.is::<RebuildingClusterConnection>()
    }
    #[cfg(not(feature = "cluster"))]
    {
        let _ = conn;
        false
    }
}

impl RedisStore<RedisConnection> {
    /// Connects to `url` through a [`RedisConnection`], which reconnects after a failure, with
    /// the default prefix and server time.
    ///
    /// The connection sends each command once, and never again; when its socket fails, the
    /// calls waiting on it fail with a [`Connection`](StoreErrorKind::Connection) error, and the
    /// next call connects again (waiting at most 500 ms; after a failed attempt, calls fail at
    /// once for 100 ms): a check that meets Redis down fails within the store's
    /// [response timeout](RedisStoreBuilder::response_timeout), and a later check tries again.
    /// A `rediss://` URL is served by a `redis::aio::ConnectionManager` with the same bounds
    /// (two attempts, 500 ms each). Use [`connect_with`](RedisStore::connect_with) for a
    /// `ConnectionManager` with other settings.
    ///
    /// # Errors
    ///
    /// The URL is invalid, or the first connection (or its `AUTH`) failed.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let conn = RedisConnection::connect(url)
            .await
            .map_err(error::from_redis)?;
        Ok(Self::builder(conn).assemble())
    }

    /// As [`connect`](Self::connect), without waiting for Redis: the store is built at once
    /// and connects on its first check, then reconnects after failures as `connect`'s does.
    ///
    /// Until Redis answers, checks fail with a [`Connection`](StoreErrorKind::Connection)
    /// error, which a circuit breaker, a local fallback or the layer's failure mode handles: an
    /// application can start, and serve, while Redis is down.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use rate_limit_core::{Algorithm, Limit, Quota, RedisStore, Store, StoreErrorKind};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Port 1: nothing listens there.
    /// let store = RedisStore::connect_lazy("redis://127.0.0.1:1")?;
    /// let limits = [Limit::new(Quota::per_second(1), Algorithm::Gcra)];
    /// let err = store.check("k", &limits, NonZeroU32::MIN).await.unwrap_err();
    /// assert_eq!(err.kind(), StoreErrorKind::Connection);
    /// assert!(RedisStore::connect_lazy("not a url").is_err());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// The URL is invalid, or this is called outside a Tokio runtime (the connection's task
    /// needs one).
    pub fn connect_lazy(url: &str) -> Result<Self, StoreError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StoreError::new(
                StoreErrorKind::InvalidInput,
                "RedisStore::connect_lazy needs a Tokio runtime",
            ));
        }
        let conn = RedisConnection::lazy(url).map_err(error::from_redis)?;
        Ok(Self::builder(conn).assemble())
    }
}

impl RedisStore<ConnectionManager> {
    /// As [`connect`](RedisStore::connect), through a `ConnectionManager` with the reconnection
    /// settings (delays, timeouts, retries) given by `config`.
    ///
    /// A check waits at most the store's response timeout (2 s) in all, reconnection
    /// included: with settings whose reconnection takes longer, checks made while Redis is down
    /// fail with a [`Timeout`](StoreErrorKind::Timeout) error rather than a `Connection` one.
    /// The `config`'s own response timeout (the `redis` crate's default is 500 ms) bounds each
    /// call too; `set_response_timeout(None)` leaves the store's alone.
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
        Ok(Self::builder(conn).assemble())
    }
}

/// The reconnection settings of [`RedisStore::connect`]'s `ConnectionManager` (for TLS URLs):
/// two attempts, at most 500 ms each and
/// between them; no response timeout but the store's.
fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_millis(500)))
        .set_max_delay(std::time::Duration::from_millis(500))
        .set_number_of_retries(1)
        .set_response_timeout(None)
}

#[cfg(feature = "cluster")]
impl RedisStore<RebuildingClusterConnection> {
    /// Connects to a Redis Cluster through any of its `nodes` (URLs), with the default prefix and
    /// server time.
    ///
    /// The connection re-sends nothing on its own (`retries(0)`): the store sends a call again
    /// only after a reply proving that the script did not run, `MOVED` and `ASK` redirects
    /// included (see [failures](RedisStore#failures-timeouts-and-retries)). Each node's
    /// connection waits at most the store's default
    /// [response timeout](RedisStoreBuilder::response_timeout), 2 s, for a reply, so that
    /// the slot-map refresh never waits long on a hung node, and at most 500 ms to connect.
    ///
    /// It is a [`RebuildingClusterConnection`]: when a master hangs and its replica is
    /// promoted, a new cluster connection is built in the background and takes over (see
    /// [high availability](RedisStore#high-availability-and-data)). `nodes` are what every new
    /// connection starts from: name several.
    ///
    /// # Errors
    ///
    /// A URL is invalid, or no node could be reached.
    pub async fn connect_cluster(nodes: &[&str]) -> Result<Self, StoreError> {
        let conn =
            RebuildingClusterConnection::connect(cluster_client(nodes)?, cluster_config()).await?;
        Ok(Self::builder(conn).backend("cluster").assemble())
    }

    /// As [`connect_cluster`](Self::connect_cluster), without waiting for the cluster: the
    /// store is built at once, and its connection connects to the nodes in the background
    /// (the `redis` crate's `ClusterClient::get_pending_async_connection_with_config`).
    ///
    /// Until a node answers with the slot map, checks fail with a
    /// [`Connection`](StoreErrorKind::Connection) error ("no connections found"), each of which
    /// starts another attempt from the `nodes` given here; a fallback or the layer's failure
    /// mode decides meanwhile, so an application can start, and serve, while the cluster is
    /// down. Nothing is sent before the cluster is connected, and then each call is sent once,
    /// as through `connect_cluster`.
    ///
    /// ```
    /// use rate_limit_core::{Algorithm, Limit, Quota, RedisStore, Store, StoreErrorKind};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Port 1: nothing listens there.
    /// let store = RedisStore::connect_cluster_lazy(&["redis://127.0.0.1:1"])?;
    /// let limits = [Limit::new(Quota::per_second(1), Algorithm::Gcra)];
    /// let err = store.check("k", &limits, 1.try_into()?).await.unwrap_err();
    /// assert_eq!(err.kind(), StoreErrorKind::Connection);
    /// assert!(RedisStore::connect_cluster_lazy(&["not a url"]).is_err());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// A URL is invalid, or this is called outside a Tokio runtime (the connection's task
    /// needs one).
    pub fn connect_cluster_lazy(nodes: &[&str]) -> Result<Self, StoreError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StoreError::new(
                StoreErrorKind::InvalidInput,
                "RedisStore::connect_cluster_lazy needs a Tokio runtime",
            ));
        }
        let conn =
            RebuildingClusterConnection::connect_lazy(cluster_client(nodes)?, cluster_config());
        Ok(Self::builder(conn).backend("cluster").assemble())
    }
}

/// How long a cluster connection waits to connect to a node.
#[cfg(feature = "cluster")]
const CLUSTER_CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// The timeouts of the connections of [`RedisStore::connect_cluster`] and
/// [`RedisStore::connect_cluster_lazy`], new ones after a hang included: those of
/// [`cluster_client`].
#[cfg(feature = "cluster")]
fn cluster_config() -> redis::cluster::ClusterConfig {
    redis::cluster::ClusterConfig::new()
        .set_connection_timeout(CLUSTER_CONNECTION_TIMEOUT)
        .set_response_timeout(builder::DEFAULT_RESPONSE_TIMEOUT)
}

/// The client of [`RedisStore::connect_cluster`] and [`RedisStore::connect_cluster_lazy`]: no
/// re-sends, a response timeout, 500 ms to connect.
#[cfg(feature = "cluster")]
fn cluster_client(nodes: &[&str]) -> Result<redis::cluster::ClusterClient, StoreError> {
    redis::cluster::ClusterClient::builder(nodes.to_vec())
        .retries(0)
        .response_timeout(builder::DEFAULT_RESPONSE_TIMEOUT)
        .connection_timeout(CLUSTER_CONNECTION_TIMEOUT)
        .build()
        .map_err(error::from_redis)
}

/// Functions of the store's layout and scripts that need no store: `RedisStore::key_layout(..)`
/// and `RedisStore::validate_limit(..)` are called without naming a connection type.
impl RedisStore {
    /// The Redis key holding `limit`'s state for `key`, as this store lays keys out.
    ///
    /// ```
    /// use rate_limit_core::{Algorithm, Limit, Quota, RedisStore};
    ///
    /// let limit = Limit::new(Quota::per_minute(100), Algorithm::TokenBucket);
    /// let key = RedisStore::key_layout("rl", "a{b}", &limit);
    /// assert_eq!(key, "rl:{a%7Bb%7D}:4877b29fe38dc867");
    /// ```
    pub fn key_layout(prefix: &str, key: &str, limit: &Limit) -> String {
        keys::state_key(prefix, key, limit.id())
    }

    /// Whether the script decides `limit` exactly; see [exactness](RedisStore#exactness).
    ///
    /// ```
    /// use std::time::Duration;
    /// use rate_limit_core::{Algorithm, Limit, Quota, RedisStore};
    ///
    /// let per_hour = Quota::per_hour(1_000_000);
    /// assert!(RedisStore::validate_limit(&Limit::new(per_hour, Algorithm::SlidingWindow)).is_ok());
    /// let day = Duration::from_secs(86_400);
    /// let per_day = Quota::with_period(1_000_000, day)?;
    /// let err = RedisStore::validate_limit(&Limit::new(per_day, Algorithm::SlidingWindow));
    /// assert_eq!(err.unwrap_err().setting(), "limit");
    /// // Buckets count in nanoseconds: a billion per second is exact.
    /// let fast = Quota::per_second(1_000_000_000);
    /// assert!(RedisStore::validate_limit(&Limit::new(fast, Algorithm::Gcra)).is_ok());
    /// // Windows count in microseconds.
    /// let odd = Quota::with_period(3, Duration::from_nanos(1_500))?;
    /// assert!(RedisStore::validate_limit(&Limit::new(odd, Algorithm::FixedWindow)).is_err());
    /// # Ok::<(), rate_limit_core::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A window algorithm whose period is not a whole number of microseconds, or a sliding
    /// window counter whose `limit × period in µs` reaches 2^53.
    pub fn validate_limit(limit: &Limit) -> Result<(), ConfigError> {
        match script::refusal(limit) {
            Some(why) => Err(ConfigError::new("limit", limit, why)),
            None => Ok(()),
        }
    }
}

#[cfg(feature = "sentinel")]
impl RedisStore<SentinelConnection> {
    /// Connects to the master that the sentinels at `sentinels` name `master`, with the
    /// default prefix and server time; after a failover, the store's next call goes to the
    /// promoted replica (see [`SentinelConnection`]).
    ///
    /// `sentinels` are URLs carrying the sentinels' own credentials and TLS
    /// (`redis://host:26379`, `rediss://:secret@host:26379`); `node` says how to reach the
    /// master: its TLS mode, user, password and database, as for a single node.
    ///
    /// ```no_run
    /// use redis::sentinel::SentinelNodeConnectionInfo;
    /// use rate_limit_core::{RedisStore, Store};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let auth = redis::RedisConnectionInfo::default().set_password("secret");
    /// let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(auth);
    /// let sentinels = ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379"];
    /// let store = RedisStore::connect_sentinel(&sentinels, "mymaster", node).await?;
    /// assert_eq!(store.backend(), "sentinel");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// No sentinel is given, a URL is invalid, or no master of the service could be reached.
    pub async fn connect_sentinel(
        sentinels: &[&str],
        master: &str,
        node: redis::sentinel::SentinelNodeConnectionInfo,
    ) -> Result<Self, StoreError> {
        let conn = SentinelConnection::open(sentinels, master, node)?;
        conn.resolve().await?;
        Ok(Self::builder(conn).backend("sentinel").assemble())
    }

    /// As [`connect_sentinel`](Self::connect_sentinel), without waiting for Redis: the first
    /// check asks the sentinels. Until a master answers, checks fail with an error a circuit
    /// breaker or a fallback handles.
    ///
    /// # Errors
    ///
    /// No sentinel is given, or a URL is invalid.
    pub fn connect_sentinel_lazy(
        sentinels: &[&str],
        master: &str,
        node: redis::sentinel::SentinelNodeConnectionInfo,
    ) -> Result<Self, StoreError> {
        let conn = SentinelConnection::open(sentinels, master, node)?;
        Ok(Self::builder(conn).backend("sentinel").assemble())
    }
}

impl<C> RedisStore<C> {
    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether time comes from a client [`Clock`](crate::Clock) rather than the server's `TIME`.
    pub fn uses_client_clock(&self) -> bool {
        self.dispatcher.uses_client_clock()
    }

    /// The connection, for other commands on the same server.
    pub fn connection(&self) -> &C {
        &self.dispatcher.conn
    }

    /// The most checks one script call carries; see
    /// [`max_batch`](RedisStoreBuilder::max_batch).
    pub fn max_batch(&self) -> usize {
        self.dispatcher.max_batch()
    }

    /// How long a script call waits for its reply; see
    /// [`response_timeout`](RedisStoreBuilder::response_timeout).
    pub fn response_timeout(&self) -> std::time::Duration {
        self.dispatcher.response_timeout()
    }

    /// The number of checks queued for a script call now, whether their callers still wait or
    /// have gone (a check whose caller has gone is dropped when a call would carry it, or when
    /// its queue is pruned). It locks the queue: for tests and status pages, not for every
    /// request.
    pub fn queue_len(&self) -> usize {
        self.dispatcher.queued()
    }

    /// The number of slots of the [deny cache](RedisStore#deny-cache), `None` when it is off.
    pub fn deny_cache_capacity(&self) -> Option<NonZeroUsize> {
        self.deny_cache
            .as_ref()
            .and_then(|cache| NonZeroUsize::new(cache.capacity()))
    }

    /// The number of denials the [deny cache](RedisStore#deny-cache) holds now, at most its
    /// capacity (entries past their deadline count until a lookup finds them or they are
    /// overwritten). It visits
    /// every slot: for tests and status pages, not for every request.
    pub fn deny_cache_len(&self) -> usize {
        self.deny_cache.as_ref().map_or(0, DenyCache::len)
    }

    /// The key of `limit`'s state for `key` in this store.
    pub fn state_key(&self, key: &str, limit: &Limit) -> String {
        RedisStore::key_layout(&self.prefix, key, limit)
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
        // Peeks neither read nor fill the deny cache. The key's slot is found at most once,
        // for the lookup and for what Redis answers.
        let cached = match self.deny_cache.as_ref().filter(|_| commit) {
            Some(cache) => match cache.lookup(key, limits, cost) {
                Ok(sent) => Some((cache, sent)),
                Err(denied) => return Ok(denied.mark_cached()),
            },
            None => None,
        };
        let ask = script::Ask {
            prefix: &self.prefix,
            key,
            limits,
            cost: cost.get(),
            commit,
        };
        let decision = self.dispatcher.decide(batch::Query::Asked(ask)).await?;
        if let Some((cache, sent)) = cached {
            cache.learn(sent, key, limits, cost, &decision);
        }
        Ok(decision)
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

    /// Gives `charge` back in one script call: see [refunds](RedisStore#refunds).
    fn refund<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        charge: Charge,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async move {
            let refund = script::Check::refund(&self.prefix, key, limits, charge)?;
            // Once the call has ended (answered, failed, or its caller gone), the key's kept
            // denials are void: the refund may have run.
            let _void = self
                .deny_cache
                .as_ref()
                .map(|cache| VoidDenials(cache, key));
            self.dispatcher.decide(batch::Query::Built(refund)).await
        })
    }

    fn backend(&self) -> &'static str {
        self.backend
    }

    /// Refuses what the script cannot count exactly: see
    /// [`validate_limit`](RedisStore::validate_limit).
    fn validate(&self, limit: &Limit) -> Result<(), ConfigError> {
        RedisStore::validate_limit(limit)
    }

    /// A denial from the [deny cache](RedisStore#deny-cache) that still holds; `None` when
    /// the check needs Redis.
    fn try_check_now(
        &self,
        key: &str,
        limits: &[Limit],
        cost: NonZeroU32,
    ) -> Option<Result<Decision, StoreError>> {
        let cache = self.deny_cache.as_ref()?;
        cache
            .find(key, limits, cost)
            .map(|denied| Ok(denied.mark_cached()))
    }
}

/// Voids the deny cache's denials of a key when dropped: at the end of a refund's call.
struct VoidDenials<'a>(&'a DenyCache, &'a str);

impl Drop for VoidDenials<'_> {
    fn drop(&mut self) {
        self.0.refunded(self.1);
    }
}

impl<C> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("client_clock", &self.uses_client_clock())
            .field("max_batch", &self.dispatcher.max_batch())
            .field("response_timeout", &self.dispatcher.response_timeout())
            .field("deny_cache", &self.deny_cache_capacity())
            .finish_non_exhaustive()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn size_of_output<A, T>(_: impl FnOnce(A) -> T) -> usize {
        std::mem::size_of::<T>()
    }

    /// glibc serves requests of up to 1,032 bytes from a per-thread cache; a larger block
    /// takes its slower path, which cost a check about 250 client instructions in
    /// `bench/redis_client_instructions.sh` (the future was 1,792 bytes, 4,704 with the
    /// `cluster` feature).
    #[test]
    fn the_future_of_a_check_fits_the_allocators_cache_of_small_blocks() {
        let check = size_of_output(|store: &'static RedisStore<RedisConnection>| {
            store.decide("k", &[], NonZeroU32::MIN, true)
        });
        assert!(check <= 1032, "{check} bytes");
    }
}

//! [`RedisConnection`]: the store's own pipelined connection to one Redis node, which costs the
//! client a fraction of what the `redis` crate's `ConnectionManager` does per command.

use std::collections::VecDeque;
use std::fmt;
use std::future::poll_fn;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{
    Cmd, ConnectionAddr, ErrorKind, IntoConnectionInfo, Pipeline, ProtocolVersion, RedisError,
    RedisFuture, RedisResult, Value,
};
use tokio::io::Interest;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::resp::{self, Parsed};

/// How long one attempt waits to connect (and authenticate), as `RedisStore::connect`'s
/// `ConnectionManager` did.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// After a failed attempt, calls fail at once with its error for this long, rather than each
/// waiting on an attempt of its own.
const BACKOFF: Duration = Duration::from_millis(100);

/// Room the reader asks for before each read.
const READ_CHUNK: usize = 16 * 1024;

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

/// Where to connect and how to log in.
struct Target {
    addr: Addr,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

#[derive(Debug)]
enum Addr {
    Tcp(String, u16),
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

impl Target {
    /// The target of `url`, or its connection info when the `redis` crate must serve it (TLS,
    /// RESP3).
    fn of(url: impl IntoConnectionInfo) -> RedisResult<Result<Self, redis::ConnectionInfo>> {
        let info = url.into_connection_info()?;
        let addr = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Addr::Tcp(host.clone(), *port),
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Addr::Unix(path.clone()),
            _ => return Ok(Err(info)),
        };
        let redis = info.redis_settings();
        if redis.protocol() != ProtocolVersion::RESP2 {
            return Ok(Err(info));
        }
        Ok(Ok(Self {
            addr,
            username: redis.username().map(str::to_owned),
            password: redis.password().map(str::to_owned),
            db: redis.db(),
        }))
    }

    /// Opens a socket and logs in.
    async fn open(&self) -> RedisResult<Stream> {
        let stream = match &self.addr {
            Addr::Tcp(host, port) => {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                tcp.set_nodelay(true)?;
                Stream::Tcp(tcp)
            }
            #[cfg(unix)]
            Addr::Unix(path) => Stream::Unix(tokio::net::UnixStream::connect(path).await?),
        };
        let mut hello = Vec::new();
        let mut replies = 0;
        if let Some(password) = &self.password {
            let mut auth = redis::cmd("AUTH");
            if let Some(user) = &self.username {
                auth.arg(user);
            }
            auth.arg(password).write_packed_command(&mut hello);
            replies += 1;
        }
        if self.db != 0 {
            redis::cmd("SELECT")
                .arg(self.db)
                .write_packed_command(&mut hello);
            replies += 1;
        }
        let mut written = 0;
        while written < hello.len() {
            poll_fn(|cx| stream.poll_write_ready(cx)).await?;
            match stream.try_write(&hello[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut buf = Vec::new();
        let mut start = 0;
        for n in 0..replies {
            let reply = loop {
                if let Parsed::Frame(v, len) = resp::parse(&buf[start..])? {
                    start += len;
                    break v;
                }
                poll_fn(|cx| stream.poll_read_ready(cx)).await?;
                buf.reserve(512);
                match stream.try_read_buf(&mut buf) {
                    Ok(0) => return Err(closed()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
            };
            match reply.extract_error() {
                // The first reply is `AUTH`'s when there is a password. The server's message
                // names no credential, but is left out all the same.
                Err(_) if n == 0 && self.password.is_some() => {
                    return Err(RedisError::from((
                        ErrorKind::AuthenticationFailed,
                        "redis refused the credentials of the URL",
                    )));
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
        Ok(stream)
    }
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Stream {
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.try_write(buf),
            #[cfg(unix)]
            Self::Unix(s) => s.try_write(buf),
        }
    }

    /// Reads what the socket holds into `buf`'s spare room. A read that leaves room unfilled
    /// has drained the socket: its readiness is cleared then (as Tokio's own `poll_read`
    /// does), so that the reader parks at once rather than after a read that finds nothing.
    fn try_read_buf(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let room = buf.capacity() - buf.len();
        let drained = || Err(io::ErrorKind::WouldBlock.into());
        match self {
            Self::Tcp(s) => {
                let n = s.try_read_buf(buf)?;
                if n > 0 && n < room {
                    let _cleared: io::Result<()> = s.try_io(Interest::READABLE, drained);
                }
                Ok(n)
            }
            #[cfg(unix)]
            Self::Unix(s) => {
                let n = s.try_read_buf(buf)?;
                if n > 0 && n < room {
                    let _cleared: io::Result<()> = s.try_io(Interest::READABLE, drained);
                }
                Ok(n)
            }
        }
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Tcp(s) => s.poll_read_ready(cx),
            #[cfg(unix)]
            Self::Unix(s) => s.poll_read_ready(cx),
        }
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Self::Tcp(s) => s.poll_write_ready(cx),
            #[cfg(unix)]
            Self::Unix(s) => s.poll_write_ready(cx),
        }
    }
}

/// What the handles share: the target, and the state of the current socket.
struct Shared {
    target: Target,
    state: Mutex<State>,
    /// Held during a connection attempt: the calls that arrive meanwhile wait for it.
    connecting: tokio::sync::Mutex<()>,
}

struct State {
    /// The socket in use; `None` when down.
    link: Option<Arc<Link>>,
    /// Counts sockets, so that a reader of an old one leaves the new one alone.
    generation: u64,
    /// Commands not yet written to the socket.
    out: Vec<u8>,
    /// Who waits for each coming reply, in order.
    waiters: VecDeque<Waiter>,
    /// The last failed attempt to connect, and its error.
    failed: Option<(Instant, RedisError)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn new(target: Target) -> Self {
        Self {
            target,
            state: Mutex::new(State {
                link: None,
                generation: 0,
                out: Vec::new(),
                waiters: VecDeque::new(),
                failed: None,
            }),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Appends a command and its waiter, and writes what it can at once when nothing else is
    /// being written. `false` when there is no socket.
    fn enqueue(&self, write: &(dyn Fn(&mut Vec<u8>) + Sync), waiter: &mut Option<Waiter>) -> bool {
        let mut state = lock(&self.state);
        let state = &mut *state;
        let Some(link) = &state.link else {
            return false;
        };
        let idle = state.out.is_empty();
        write(&mut state.out);
        state.waiters.extend(waiter.take());
        if idle {
            match link.stream.try_write(&state.out) {
                Ok(n) if n == state.out.len() => state.out.clear(),
                Ok(n) => {
                    state.out.drain(..n);
                    link.signal(|s| s.flush = true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    link.signal(|s| s.flush = true);
                }
                // The waiter just queued fails with the others.
                Err(e) => state.fail(&e.into()),
            }
        }
        true
    }

    /// Connects, unless another call did meanwhile or an attempt failed within [`BACKOFF`].
    async fn reconnect(this: &Arc<Self>) -> RedisResult<()> {
        let _one = this.connecting.lock().await;
        if let Some(e) = lock(&this.state).must_wait() {
            return e;
        }
        let opened = tokio::time::timeout(CONNECT_TIMEOUT, this.target.open())
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "could not connect to redis within 500 ms",
                )
                .into())
            });
        let mut state = lock(&this.state);
        let stream = match opened {
            Ok(stream) => stream,
            Err(e) => {
                state.failed = Some((Instant::now(), e.clone()));
                return Err(e);
            }
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| no_runtime())?;
        let link = Arc::new(Link {
            stream,
            signals: Mutex::new(Signals::default()),
        });
        state.generation += 1;
        state.link = Some(Arc::clone(&link));
        state.failed = None;
        runtime.spawn(read(link, Arc::downgrade(this), state.generation));
        Ok(())
    }
}

impl State {
    /// `Some` when no attempt is to be made now: `Ok` when connected, the last attempt's error
    /// within [`BACKOFF`] of it.
    fn must_wait(&self) -> Option<RedisResult<()>> {
        if self.link.is_some() {
            return Some(Ok(()));
        }
        match &self.failed {
            Some((at, e)) if at.elapsed() < BACKOFF => Some(Err(e.clone())),
            _ => None,
        }
    }

    /// Marks the socket down and fails every waiter with `e`.
    fn fail(&mut self, e: &RedisError) {
        if let Some(link) = self.link.take() {
            link.signal(|s| s.closed = true);
        }
        self.out.clear();
        for waiter in self.waiters.drain(..) {
            waiter.fail(e.clone());
        }
    }

    /// Hands `replies` to their waiters, in order.
    fn deliver(&mut self, replies: &mut Vec<Value>) -> Result<(), RedisError> {
        for reply in replies.drain(..) {
            match self.waiters.front_mut() {
                None => {
                    return Err(RedisError::from((
                        ErrorKind::Parse,
                        "redis sent a reply nobody asked for",
                    )));
                }
                Some(Waiter::One(_)) => {
                    if let Some(Waiter::One(tx)) = self.waiters.pop_front() {
                        let _gone = tx.send(Ok(reply));
                    }
                }
                Some(Waiter::Many { total, values, .. }) => {
                    values.push(reply);
                    if values.len() == *total
                        && let Some(waiter) = self.waiters.pop_front()
                    {
                        waiter.complete();
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last handle is gone: the reader stops, and the socket closes.
        if let Some(link) = lock(&self.state).link.take() {
            link.signal(|s| s.closed = true);
        }
    }
}

/// Who waits for a reply (a command) or for several (a pipeline).
enum Waiter {
    One(oneshot::Sender<RedisResult<Value>>),
    Many {
        tx: oneshot::Sender<RedisResult<Vec<Value>>>,
        /// Replies read but not returned (`MULTI` and the `QUEUED`s of a transaction).
        skip: usize,
        total: usize,
        values: Vec<Value>,
    },
}

impl Waiter {
    fn fail(self, e: RedisError) {
        let _gone = match self {
            Self::One(tx) => tx.send(Err(e)).is_ok(),
            Self::Many { tx, .. } => tx.send(Err(e)).is_ok(),
        };
    }

    /// Answers a pipeline whose replies have all arrived: the first error among the skipped
    /// ones, or the others.
    fn complete(self) {
        if let Self::Many {
            tx,
            skip,
            mut values,
            ..
        } = self
        {
            let rest = values.split_off(skip.min(values.len()));
            let answer = match values.into_iter().find_map(|v| v.extract_error().err()) {
                Some(e) => Err(e),
                None => Ok(rest),
            };
            let _gone = tx.send(answer);
        }
    }
}

/// One socket, and how writers and [`Shared`]'s drop reach its reader.
struct Link {
    stream: Stream,
    signals: Mutex<Signals>,
}

#[derive(Default)]
struct Signals {
    waker: Option<Waker>,
    /// Commands are waiting in `out` for the socket to take them.
    flush: bool,
    /// The socket is no longer in use.
    closed: bool,
}

enum Event {
    Read,
    Flush,
    Closed,
}

impl Link {
    fn signal(&self, set: impl FnOnce(&mut Signals)) {
        let mut signals = lock(&self.signals);
        set(&mut signals);
        if let Some(waker) = signals.waker.take() {
            waker.wake();
        }
    }

    fn poll_event(&self, cx: &mut Context<'_>) -> Poll<Event> {
        let flush = {
            let mut signals = lock(&self.signals);
            if signals.closed {
                return Poll::Ready(Event::Closed);
            }
            if !signals
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                signals.waker = Some(cx.waker().clone());
            }
            signals.flush
        };
        if flush && self.stream.poll_write_ready(cx).is_ready() {
            return Poll::Ready(Event::Flush);
        }
        self.stream.poll_read_ready(cx).map(|_| Event::Read)
    }
}

/// The reader of one socket: parses replies and hands them out, and writes what callers could
/// not, until the socket fails or is closed.
async fn read(link: Arc<Link>, shared: Weak<Shared>, generation: u64) {
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    // Parsed up to `start`; no reply can be whole before `need` bytes follow it.
    let (mut start, mut need) = (0, 0);
    let mut replies = Vec::new();
    let failure = loop {
        match poll_fn(|cx| link.poll_event(cx)).await {
            Event::Closed => return,
            Event::Flush => {
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let mut state = lock(&shared.state);
                if state.generation != generation {
                    return;
                }
                match link.stream.try_write(&state.out) {
                    Ok(n) => {
                        state.out.drain(..n);
                        if state.out.is_empty() {
                            lock(&link.signals).flush = false;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        state.fail(&e.into());
                        return;
                    }
                }
                continue;
            }
            Event::Read => {}
        }
        if start == buf.len() {
            buf.clear();
            start = 0;
        } else if start > 0 && buf.capacity() - buf.len() < READ_CHUNK / 2 {
            buf.drain(..start);
            start = 0;
        }
        buf.reserve(READ_CHUNK);
        match link.stream.try_read_buf(&mut buf) {
            Ok(0) => break closed(),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => break e.into(),
        }
        if buf.len() - start < need {
            continue;
        }
        let parsed = loop {
            match resp::parse(&buf[start..]) {
                Ok(Parsed::Frame(reply, len)) => {
                    replies.push(reply);
                    start += len;
                }
                Ok(Parsed::Incomplete(n)) => {
                    need = n;
                    break Ok(());
                }
                Err(e) => break Err(e),
            }
        };
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut state = lock(&shared.state);
        if state.generation != generation {
            return;
        }
        match parsed.and_then(|()| state.deliver(&mut replies)) {
            Ok(()) => {}
            Err(e) => {
                // The stream cannot be read any further: nobody's reply would be theirs.
                state.fail(&e);
                return;
            }
        }
    };
    if let Some(shared) = shared.upgrade() {
        let mut state = lock(&shared.state);
        if state.generation == generation {
            state.fail(&failure);
        }
    }
}

fn no_runtime() -> RedisError {
    RedisError::from((
        ErrorKind::Client,
        "RedisConnection needs a Tokio runtime to run its connection on",
    ))
}

/// The error of calls whose reply will not come: the socket failed, or was closed.
fn lost() -> RedisError {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "the connection to redis was lost",
    )
    .into()
}

fn closed() -> RedisError {
    io::Error::new(io::ErrorKind::UnexpectedEof, "redis closed the connection").into()
}

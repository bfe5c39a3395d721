//! [`Relay`]: a Redis connection of a type of its own, which passes every call on to the
//! connection inside, its single commands through a function the test chooses.

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Sends one command on a connection, or something in its place.
pub type SendFn<C> = for<'a> fn(&'a mut C, &'a Cmd) -> RedisFuture<'a, Value>;

/// A connection that passes every call on to `C`, single commands through its [`SendFn`]
/// function: to the store it is a connection type it does not know.
#[derive(Clone)]
pub struct Relay<C> {
    inner: C,
    send: SendFn<C>,
}

impl<C: ConnectionLike> Relay<C> {
    /// Passes every call on unchanged.
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            send: C::req_packed_command,
        }
    }

    /// Sends each single command with `send`, given the connection inside.
    pub fn with(inner: C, send: SendFn<C>) -> Self {
        Self { inner, send }
    }
}

impl Relay<redis::aio::MultiplexedConnection> {
    /// Sends each script call with `PERSIST` of its keys in the same pipeline, right behind it:
    /// expiry runs on the server's real time, not on a test's manual clock, and a state a few
    /// microseconds from full expires within a millisecond, which a stalled test would otherwise
    /// see as a lost state. Every key is kept, so that only the transitions are compared
    /// (expiry has tests of its own).
    pub fn persisting(inner: redis::aio::MultiplexedConnection) -> Self {
        Self::with(inner, persist_after_calls)
    }
}

fn persist_after_calls<'a>(
    conn: &'a mut redis::aio::MultiplexedConnection,
    cmd: &'a Cmd,
) -> RedisFuture<'a, Value> {
    let args: Vec<Vec<u8>> = cmd
        .args_iter()
        .map(|a| match a {
            redis::Arg::Simple(b) => b.to_vec(),
            _ => Vec::new(),
        })
        .collect();
    if args.first().map(Vec::as_slice) != Some(b"FCALL".as_slice()) {
        return conn.req_packed_command(cmd);
    }
    let n: usize = String::from_utf8_lossy(&args[2]).parse().unwrap_or(0);
    let mut pipe = redis::pipe();
    pipe.add_command(cmd.clone());
    for key in args.iter().skip(3).take(n) {
        pipe.cmd("PERSIST").arg(key.as_slice());
    }
    Box::pin(async move {
        let mut replies = conn.req_packed_commands(&pipe, 0, 1 + n).await?;
        replies.truncate(1);
        replies.pop().unwrap_or(Value::Nil).extract_error()
    })
}

impl<C> std::fmt::Debug for Relay<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").finish_non_exhaustive()
    }
}

impl<C: ConnectionLike> ConnectionLike for Relay<C> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        (self.send)(&mut self.inner, cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.inner.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

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

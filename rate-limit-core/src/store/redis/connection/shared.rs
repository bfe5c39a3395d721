//! What the handles of one [`RedisConnection`](super::RedisConnection) share: the socket in use,
//! the commands not yet written, who waits for each reply, and reconnecting.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::{ErrorKind, RedisError, RedisResult, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::no_runtime;
use super::reader::{Link, Signals, read};
use super::target::Target;

/// How long one attempt waits to connect (and authenticate), as `RedisStore::connect`'s
/// `ConnectionManager` did.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// After a failed attempt, calls fail at once with its error for this long, rather than each
/// waiting on an attempt of its own.
const BACKOFF: Duration = Duration::from_millis(100);

/// What the handles share: the target, and the state of the current socket.
pub(super) struct Shared {
    pub(super) target: Target,
    pub(super) state: Mutex<State>,
    /// Held during a connection attempt: the calls that arrive meanwhile wait for it.
    pub(super) connecting: tokio::sync::Mutex<()>,
}

pub(super) struct State {
    /// The socket in use; `None` when down.
    pub(super) link: Option<Arc<Link>>,
    /// Counts sockets, so that a reader of an old one leaves the new one alone.
    pub(super) generation: u64,
    /// Commands not yet written to the socket.
    pub(super) out: Vec<u8>,
    /// Who waits for each coming reply, in order.
    pub(super) waiters: VecDeque<Waiter>,
    /// The last failed attempt to connect, and its error.
    pub(super) failed: Option<(Instant, RedisError)>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(super) fn new(target: Target) -> Self {
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
    pub(super) fn enqueue(
        &self,
        write: &(dyn Fn(&mut Vec<u8>) + Sync),
        waiter: &mut Option<Waiter>,
    ) -> bool {
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
    pub(super) async fn reconnect(this: &Arc<Self>) -> RedisResult<()> {
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
    pub(super) fn must_wait(&self) -> Option<RedisResult<()>> {
        if self.link.is_some() {
            return Some(Ok(()));
        }
        match &self.failed {
            Some((at, e)) if at.elapsed() < BACKOFF => Some(Err(e.clone())),
            _ => None,
        }
    }

    /// Marks the socket down and fails every waiter with `e`.
    pub(super) fn fail(&mut self, e: &RedisError) {
        if let Some(link) = self.link.take() {
            link.signal(|s| s.closed = true);
        }
        self.out.clear();
        for waiter in self.waiters.drain(..) {
            waiter.fail(e.clone());
        }
    }

    /// Hands `replies` to their waiters, in order.
    pub(super) fn deliver(&mut self, replies: &mut Vec<Value>) -> Result<(), RedisError> {
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
pub(super) enum Waiter {
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
    pub(super) fn fail(self, e: RedisError) {
        let _gone = match self {
            Self::One(tx) => tx.send(Err(e)).is_ok(),
            Self::Many { tx, .. } => tx.send(Err(e)).is_ok(),
        };
    }

    /// Answers a pipeline whose replies have all arrived: the first error among the skipped
    /// ones, or the others.
    pub(super) fn complete(self) {
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

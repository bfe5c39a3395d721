//! The dispatcher: checks queue up while a script call is in flight, and the next call carries
//! all of them.
//!
//! A check is queued with a oneshot sender for its answer. When fewer than [`MAX_IN_FLIGHT`]
//! calls are in flight, the check that queues starts a flush task (`tokio::spawn`): the task,
//! not any caller, owns the batch, so a caller that gives up (a `Timeout` dropping its future)
//! cancels nothing but its own wait. A flush takes what is queued (up to the maximum batch),
//! skips checks whose caller has gone, sends them in one call, answers each caller, and goes
//! on while checks keep arriving. A lone check is sent at once: no timer, no added wait.
//!
//! On Redis Cluster, one script may only touch keys of one slot: a flush sends one call per slot,
//! concurrently.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use redis::aio::ConnectionLike;
use redis::{ErrorKind, ServerErrorKind};
use tokio::sync::oneshot;

use super::call::{self, Answers};
use super::error;
use super::script::{self, Check};
use crate::clock::Clock;
use crate::decision::Decision;
use crate::error::{StoreError, StoreErrorKind};

/// Script calls of one store in flight at once, at most. With one, every check that arrives
/// during a round trip rides the next call; a second call overlaps one batch's script run on the
/// server with the client's work on the next, at the price of smaller batches. The throughput
/// this gives is measured by
/// `cargo test --release -p integration-tests --test redis_throughput -- --ignored --nocapture`.
const MAX_IN_FLIGHT: usize = 2;

/// Queued checks whose callers have gone are dropped when the queue reaches this length, and
/// then whenever it doubles, so it never holds many more than the checks still awaited.
const PRUNE_AT: usize = 1024;

/// What the callers' checks go through: the connection, the clock (client-clock mode) and the
/// queue.
pub(crate) struct Dispatcher<C> {
    pub(crate) conn: C,
    clock: Option<Arc<dyn Clock>>,
    max_batch: usize,
    /// Send one call per cluster slot rather than one per batch: set for a Redis Cluster
    /// connection, and learnt from a `CROSSSLOT` answer.
    per_slot: AtomicBool,
    queue: Mutex<Queue>,
}

struct Queue {
    waiting: VecDeque<Request>,
    in_flight: usize,
    prune_at: usize,
}

struct Request {
    check: Check,
    answer: oneshot::Sender<Result<Decision, StoreError>>,
}

impl<C> Dispatcher<C> {
    pub(crate) fn new(
        conn: C,
        clock: Option<Arc<dyn Clock>>,
        max_batch: usize,
        per_slot: bool,
    ) -> Self {
        Self {
            conn,
            clock,
            max_batch,
            per_slot: AtomicBool::new(per_slot),
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                in_flight: 0,
                prune_at: PRUNE_AT,
            }),
        }
    }

    pub(crate) fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Whether calls send a client clock's time rather than ask for the server's `TIME`.
    pub(crate) fn uses_client_clock(&self) -> bool {
        self.clock.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue is only pushed to and popped from under the lock; a panic elsewhere cannot
        // leave it half-changed.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<C> Dispatcher<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Decides `check`: through the queue, or in a call of its own when batching is off
    /// (`max_batch` 1) or there is no Tokio runtime to run a flush on.
    pub(crate) async fn decide(self: &Arc<Self>, check: Check) -> Result<Decision, StoreError> {
        if self.max_batch == 1 || tokio::runtime::Handle::try_current().is_err() {
            return match self.call(&[&check]).await {
                Ok(mut answers) => answers.pop().unwrap_or_else(|| Err(lost())),
                Err(e) => Err(error::from_redis(e)),
            };
        }
        let (answer, wait) = oneshot::channel();
        let start = {
            let mut queue = self.lock();
            queue.push(Request { check, answer });
            let start = queue.in_flight < MAX_IN_FLIGHT;
            if start {
                queue.in_flight += 1;
            }
            start
        };
        if start {
            tokio::spawn(Arc::clone(self).flush());
        }
        wait.await.unwrap_or_else(|_| Err(lost()))
    }

    /// Sends batches until the queue is empty.
    async fn flush(self: Arc<Self>) {
        // Counted in `in_flight` until the queue is found empty, or until this task is dropped
        // (its runtime shutting down), so that a later check starts a new flush.
        let mut counted = InFlight {
            dispatcher: &self,
            armed: true,
        };
        loop {
            let batch = {
                let mut queue = self.lock();
                let batch = queue.take(self.max_batch);
                if batch.is_empty() {
                    queue.in_flight -= 1;
                    counted.armed = false;
                    return;
                }
                batch
            };
            self.send(batch).await;
        }
    }

    async fn send(self: &Arc<Self>, batch: Vec<Request>) {
        if self.per_slot.load(Ordering::Relaxed) {
            return self.send_per_slot(batch).await;
        }
        let answers = self.call(&checks(&batch)).await;
        if let Err(e) = &answers
            && e.kind() == ErrorKind::Server(ServerErrorKind::CrossSlot)
            && batch
                .iter()
                .any(|r| r.check.slot() != batch[0].check.slot())
        {
            // A cluster behind a connection type not known as one: nothing ran (the server
            // checks slots first), so send again, one call per slot, from now on.
            self.per_slot.store(true, Ordering::Relaxed);
            return self.send_per_slot(batch).await;
        }
        answer(batch, answers);
    }

    /// One call per slot, concurrently; returns when every caller has its answer.
    async fn send_per_slot(self: &Arc<Self>, mut batch: Vec<Request>) {
        // A stable sort keeps arrival order within each slot.
        batch.sort_by_key(|r| r.check.slot());
        let mut groups = Vec::new();
        while let Some(last) = batch.last() {
            let slot = last.check.slot();
            let start = batch.partition_point(|r| r.check.slot() < slot);
            groups.push(batch.split_off(start));
        }
        if groups.len() == 1 {
            if let Some(group) = groups.pop() {
                let answers = self.call(&checks(&group)).await;
                answer(group, answers);
            }
            return;
        }
        let tasks: Vec<_> = groups
            .into_iter()
            .map(|group| {
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    let answers = this.call(&checks(&group)).await;
                    answer(group, answers);
                })
            })
            .collect();
        for task in tasks {
            // A task that panicked dropped its senders: its callers see the check as lost.
            let _ = task.await;
        }
    }

    /// One script call for `checks`, at one instant: one answer per check.
    async fn call(&self, checks: &[&Check]) -> Answers {
        let now = self
            .clock
            .as_ref()
            .map(|c| c.now_nanos() / script::TICK_NANOS);
        call::call(&self.conn, now, checks).await
    }
}

impl Queue {
    fn push(&mut self, request: Request) {
        if self.waiting.len() >= self.prune_at {
            self.waiting.retain(|r| !r.answer.is_closed());
            self.prune_at = (self.waiting.len() * 2).max(PRUNE_AT);
        }
        self.waiting.push_back(request);
    }

    /// Up to `max` checks whose callers still wait, oldest first.
    fn take(&mut self, max: usize) -> Vec<Request> {
        let mut batch = Vec::with_capacity(max.min(self.waiting.len()));
        while batch.len() < max {
            let Some(request) = self.waiting.pop_front() else {
                break;
            };
            if !request.answer.is_closed() {
                batch.push(request);
            }
        }
        batch
    }
}

/// Gives each caller its answer. A failed call fails every check it carried, each with its own
/// copy of the error.
fn answer(batch: Vec<Request>, answers: Answers) {
    match answers {
        Ok(answers) => {
            for (request, answer) in batch.into_iter().zip(answers) {
                // A caller that has gone no longer needs its answer.
                let _ = request.answer.send(answer);
            }
        }
        Err(e) => {
            for request in batch {
                let _ = request.answer.send(Err(error::from_redis(e.clone())));
            }
        }
    }
}

fn checks(batch: &[Request]) -> Vec<&Check> {
    batch.iter().map(|r| &r.check).collect()
}

/// The answer never came: the flush carrying the check was dropped (its runtime shut down).
fn lost() -> StoreError {
    StoreError::new(
        StoreErrorKind::Connection,
        "redis: the call carrying this check was dropped",
    )
}

/// A flush counted in `in_flight`, uncounted when it ends in any way.
struct InFlight<'a, C> {
    dispatcher: &'a Dispatcher<C>,
    armed: bool,
}

impl<C> Drop for InFlight<'_, C> {
    fn drop(&mut self) {
        if self.armed {
            self.dispatcher.lock().in_flight -= 1;
        }
    }
}

//! The response timeout of a store's calls, kept by one watchdog task rather than a Tokio
//! timer per call.
//!
//! Every call of a store waits at most the same time, so deadlines come in the order calls
//! start: the calls in flight form a queue sorted by deadline. A call joins it when it first
//! waits (one clock reading, one uncontended lock) and leaves it when it ends (one more). One
//! task per store, started by the first call that waits, sleeps until the deadline at the front,
//! wakes every call whose deadline has passed (each then ends with a timeout error), and stops
//! once a whole timeout has gone by with no call joining. A Tokio timer per call (registered,
//! polled, cancelled, and the time driver's work for it) cost a lone check about 2,100 client
//! instructions (`bench/redis_client_instructions.sh`).
//!
//! The task runs on the runtime of the call that started it. Should that runtime stop being
//! driven while the store is used from another one, a call that joins the queue fails the
//! calls whose deadline has passed itself, and a task is started again once the first has
//! been dropped (its runtime shut down).

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

/// The calls in flight of one store and their deadlines.
pub(crate) struct Deadlines {
    timeout: Duration,
    queue: Mutex<Queue>,
}

/// A call whose deadline passed before its reply came.
pub(crate) struct Elapsed;

struct Queue {
    /// Sorted by id and by deadline (both rise with the time a call joins).
    calls: VecDeque<Call>,
    next_id: u64,
    /// Whether a watchdog task is running.
    watching: bool,
    /// Whether a call joined since the watchdog last looked.
    joined: bool,
}

struct Call {
    id: u64,
    deadline: Instant,
    state: State,
}

enum State {
    /// In flight: woken when its deadline passes.
    Waiting(Waker),
    /// Its deadline passed; it ends with [`Elapsed`] when next polled.
    Expired,
    /// Ended: left in place until it reaches the front.
    Ended,
}

impl Deadlines {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            queue: Mutex::new(Queue {
                calls: VecDeque::new(),
                next_id: 0,
                watching: false,
                joined: false,
            }),
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue is consistent between any two statements that change it.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `f`'s output, or [`Elapsed`] once the timeout has passed since `f` first waited. Must be
    /// called within a Tokio runtime with its time driver enabled. `f` is pinned by the caller,
    /// so that its future is stored once, in the caller's (a future moved into an `async fn`
    /// takes its room twice there).
    pub(crate) async fn bound<F: Future + ?Sized>(
        self: &Arc<Self>,
        mut f: Pin<&mut F>,
    ) -> Result<F::Output, Elapsed> {
        let mut ticket = Ticket {
            deadlines: self,
            id: None,
        };
        poll_fn(|cx| {
            // A reply that came is taken, even at the deadline.
            if let Poll::Ready(out) = f.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            if ticket.wait(cx) {
                Poll::Ready(Err(Elapsed))
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// A call's place in the queue, left when dropped.
struct Ticket<'a> {
    deadlines: &'a Arc<Deadlines>,
    id: Option<u64>,
}

impl Ticket<'_> {
    /// Joins the queue on the first wait, or keeps the waker up to date: whether the deadline
    /// has passed.
    fn wait(&mut self, cx: &Context<'_>) -> bool {
        let d = self.deadlines;
        let mut q = d.lock();
        let Some(id) = self.id else {
            let now = Instant::now();
            let id = q.next_id;
            q.next_id += 1;
            self.id = Some(id);
            // A watchdog whose runtime is not driven would leave these waiting.
            let overdue = q.expire(now);
            q.calls.push_back(Call {
                id,
                deadline: now + d.timeout,
                state: State::Waiting(cx.waker().clone()),
            });
            q.joined = true;
            let start = !q.watching;
            q.watching = true;
            drop(q);
            overdue.into_iter().for_each(Waker::wake);
            if start {
                tokio::spawn(watch(Arc::clone(d)));
            }
            return false;
        };
        match q.find(id).map(|call| &mut call.state) {
            Some(State::Waiting(waker)) => {
                if !waker.will_wake(cx.waker()) {
                    waker.clone_from(cx.waker());
                }
                false
            }
            // Expired, or (never) gone.
            _ => true,
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let Some(id) = self.id else { return };
        let mut q = self.deadlines.lock();
        if let Some(call) = q.find(id) {
            call.state = State::Ended;
        }
        q.pop_ended();
    }
}

impl Queue {
    fn find(&mut self, id: u64) -> Option<&mut Call> {
        let at = self.calls.binary_search_by_key(&id, |c| c.id).ok()?;
        self.calls.get_mut(at)
    }

    /// Drops the ended calls at the front.
    fn pop_ended(&mut self) {
        while self
            .calls
            .front()
            .is_some_and(|c| matches!(c.state, State::Ended))
        {
            self.calls.pop_front();
        }
    }

    /// Marks every waiting call whose deadline is at or before `now` expired: their wakers.
    fn expire(&mut self, now: Instant) -> Vec<Waker> {
        let mut woken = Vec::new();
        for call in &mut self.calls {
            if call.deadline > now {
                break;
            }
            if let State::Waiting(_) = call.state
                && let State::Waiting(waker) = std::mem::replace(&mut call.state, State::Expired)
            {
                woken.push(waker);
            }
        }
        self.pop_ended();
        woken
    }

    /// The earliest deadline still to come after `now`.
    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.calls
            .iter()
            .map(|c| c.deadline)
            .find(|&deadline| deadline > now)
    }
}

/// The watchdog: sleeps until the front deadline, expires what is due, and stops after a
/// whole timeout with no call joining.
async fn watch(d: Arc<Deadlines>) {
    let mut running = Running(&d, true);
    let mut next = Instant::now() + d.timeout;
    loop {
        tokio::time::sleep_until(next).await;
        let now = Instant::now();
        let mut q = d.lock();
        let woken = q.expire(now);
        next = match q.next_deadline(now) {
            Some(deadline) => deadline,
            None if q.joined => now + d.timeout,
            None => {
                q.watching = false;
                running.1 = false;
                drop(q);
                woken.into_iter().for_each(Waker::wake);
                return;
            }
        };
        q.joined = false;
        drop(q);
        woken.into_iter().for_each(Waker::wake);
    }
}

/// Clears `watching` if the watchdog is dropped (its runtime shutting down), so that the next
/// call starts another.
struct Running<'a>(&'a Deadlines, bool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.lock().watching = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_fails_at_its_deadline_and_not_before() {
        let d = Arc::new(Deadlines::new(Duration::from_millis(100)));
        let start = Instant::now();
        let stuck = d.bound(pin!(std::future::pending::<()>())).await;
        assert!(stuck.is_err());
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        // A call that ends in time keeps its output and leaves the queue.
        let quick = d
            .bound(pin!(tokio::time::sleep(Duration::from_millis(99))))
            .await;
        assert!(quick.is_ok());
        assert!(d.lock().calls.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn calls_expire_in_turn_and_the_watchdog_stops_when_idle() {
        let d = Arc::new(Deadlines::new(Duration::from_millis(100)));
        let start = Instant::now();
        let late = {
            let d = Arc::clone(&d);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                d.bound(pin!(std::future::pending::<()>())).await.is_err()
            })
        };
        assert!(d.bound(pin!(std::future::pending::<()>())).await.is_err());
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        assert!(late.await.unwrap());
        assert_eq!(start.elapsed(), Duration::from_millis(130));
        // A call that ended keeps the watchdog for a while; a whole timeout with no call stops
        // it, and the next call starts another.
        assert!(
            d.bound(pin!(tokio::time::sleep(Duration::from_millis(10))))
                .await
                .is_ok()
        );
        assert!(d.lock().watching);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!d.lock().watching);
        assert!(d.bound(pin!(std::future::pending::<()>())).await.is_err());
        assert!(d.lock().calls.is_empty());
    }
}

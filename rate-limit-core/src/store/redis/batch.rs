//! The dispatcher: checks queue up while a script call is in flight, and the next call carries
//! all of them.
//!
//! Checks queue in lanes. On a single server every check shares one lane; on Redis Cluster,
//! where one script may only touch keys of one slot, each slot has a lane of its own, so that
//! a slot whose master hangs holds up its own checks and no others.
//!
//! While checks come one at a time (the last call carried one), a check that finds its lane
//! idle (nothing queued, no call in flight) is sent at once by its caller, in a call of its own
//! counted as in flight: a lone check costs no task and no channel. Otherwise a check is queued
//! with a oneshot sender for its answer, so that checks arriving together (a burst after a
//! quiet spell, the clients a call answered checking again) share a call rather than the first
//! going alone. When its lane has fewer than [`MAX_IN_FLIGHT`] calls in flight, the check that
//! queues starts a flush task (`tokio::spawn`): the task, not any caller, owns the batch, so a
//! caller that gives up (a `Timeout` dropping its future) cancels nothing but its own wait. A
//! flush takes what its lane holds (up to the maximum batch), skips checks whose caller has
//! gone, sends them in one call (bounded by the store's response timeout, see
//! [`call`](super::call)), answers each caller, and goes on while checks keep arriving. Having
//! answered a call, a flush that finds its lane empty yields once before it ends, so that the
//! callers it woke, checking again, queue for it rather than each round of them starting a
//! task. Either way a check is sent at once: no timer, no added wait.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{ErrorKind, ServerErrorKind};
use tokio::sync::oneshot;

use super::call::{self, Answers};
use super::deadline::Deadlines;
use super::error;
use super::script::{self, Ask, Check};
use crate::clock::Clock;
use crate::decision::Decision;
use crate::error::{StoreError, StoreErrorKind};

/// Script calls of one lane in flight at once, at most. With one, every check that arrives
/// during a round trip rides the next call; a second call overlaps one batch's script run on the
/// server with the client's work on the next, at the price of smaller batches. The throughput
/// this gives is measured by
/// `cargo test --release -p integration-tests --test redis_throughput -- --ignored --nocapture`.
const MAX_IN_FLIGHT: usize = 2;

/// Queued checks whose callers have gone are dropped when a lane reaches this length, and
/// then whenever it doubles, so it never holds many more than the checks still awaited.
const PRUNE_AT: usize = 1024;

/// The lane of every check while calls may carry checks of several slots (no cluster slot is
/// this high).
const SHARED_LANE: u16 = u16::MAX;

/// What the callers' checks go through: the connection, the clock (client-clock mode), the
/// response timeout and the lanes.
pub(crate) struct Dispatcher<C> {
    pub(crate) conn: C,
    clock: Option<Arc<dyn Clock>>,
    max_batch: usize,
    /// The response timeout of every call.
    deadlines: Arc<Deadlines>,
    /// Send one call per cluster slot rather than one per batch: set for a Redis Cluster
    /// connection, and learnt from a `CROSSSLOT` answer.
    per_slot: AtomicBool,
    /// Whether the last call carried a single check: traffic that comes one check at a time,
    /// whose next check, finding its lane idle, is sent by its caller (see the module docs).
    lone: AtomicBool,
    /// The lanes that hold checks or have calls in flight, by slot (or [`SHARED_LANE`]).
    lanes: Mutex<Lanes>,
}

/// The lanes by slot. A lone check finds, inserts and removes its lane: with the default
/// SipHash that was about 250 client instructions per check.
type Lanes = HashMap<u16, Lane, BuildHasherDefault<SlotHasher>>;

/// Hashes a slot number by one multiplication (Fibonacci hashing), which spreads slots that are
/// close over the whole `u64`, as the table's probing needs. Lane keys are slot numbers, not
/// input an attacker chooses freely (any key maps to one of 16,384 slots).
#[derive(Default)]
struct SlotHasher(u64);

impl Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.0 = u64::from(n);
    }
}

struct Lane {
    waiting: VecDeque<Request>,
    in_flight: usize,
    /// A flush found the lane empty and yields once before it ends: checks queued meanwhile
    /// (the callers its call just answered, checking again) are its, and start no flush.
    lingering: bool,
    prune_at: usize,
}

/// A queued check. A caller whose check is the one queued last (a hot key's callers) shares
/// it rather than build its own.
struct Request {
    check: Arc<Check>,
    answer: oneshot::Sender<Result<Decision, StoreError>>,
}

/// What a caller asks the dispatcher to decide.
pub(crate) enum Query<'a> {
    /// A check still to be built, which may join the one queued last.
    Asked(Ask<'a>),
    /// A check already built (a refund): queued on its own.
    Built(Check),
}

impl Query<'_> {
    fn build(self) -> Result<Check, StoreError> {
        match self {
            Self::Asked(ask) => ask.check(),
            Self::Built(check) => Ok(check),
        }
    }
}

/// Where a caller's check went.
enum Entered<'a, C> {
    /// Its lane was idle: its caller sends it, counted in flight.
    Alone(InFlight<'a, C>, Check),
    /// Queued in `lane`: whether to start a flush, and where its answer comes.
    Queued(bool, u16, oneshot::Receiver<Result<Decision, StoreError>>),
}

/// What a caller found under the lanes' lock.
enum Step {
    /// Its lane idle: it sends its check itself.
    Alone,
    /// Queued: whether to start a flush, and where its answer comes.
    Queued(bool, oneshot::Receiver<Result<Decision, StoreError>>),
    /// Its check must be built (outside the lock) before it is queued.
    Build,
}

impl<C> Dispatcher<C> {
    pub(crate) fn new(
        conn: C,
        clock: Option<Arc<dyn Clock>>,
        max_batch: usize,
        response_timeout: Duration,
        per_slot: bool,
    ) -> Self {
        Self {
            conn,
            clock,
            max_batch,
            deadlines: Arc::new(Deadlines::new(response_timeout)),
            per_slot: AtomicBool::new(per_slot),
            lone: AtomicBool::new(true),
            lanes: Mutex::new(Lanes::default()),
        }
    }

    pub(crate) fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Whether calls send a client clock's time rather than ask for the server's `TIME`.
    pub(crate) fn uses_client_clock(&self) -> bool {
        self.clock.is_some()
    }

    pub(crate) fn response_timeout(&self) -> Duration {
        self.deadlines.timeout()
    }

    /// Checks queued in every lane, awaited or not.
    pub(crate) fn queued(&self) -> usize {
        self.lock().values().map(|lane| lane.waiting.len()).sum()
    }

    fn lock(&self) -> MutexGuard<'_, Lanes> {
        // Lanes are only changed under the lock; a panic elsewhere cannot leave one
        // half-changed.
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<C> Dispatcher<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Decides `check`: through its lane, or in a call of its own when batching is off
    /// (`max_batch` 1) or there is no Tokio runtime to run a flush on (and no timer to bound
    /// the call with: the connection's own timeout applies).
    ///
    /// The lanes are visited by [`enter`](Self::enter), a function of its own: what it holds
    /// is not stored in this future, which the store boxes for every check.
    pub(crate) async fn decide(self: &Arc<Self>, query: Query<'_>) -> Result<Decision, StoreError> {
        let runtime = tokio::runtime::Handle::try_current().is_ok();
        if self.max_batch == 1 || !runtime {
            let check = query.build()?;
            let deadlines = runtime.then_some(&self.deadlines);
            return match call::call(&self.conn, self.now(), &[&check], deadlines).await {
                Ok(mut answers) => answers.pop().unwrap_or_else(|| Err(lost())),
                Err(e) => Err(error::from_redis(e)),
            };
        }
        let (counted, check) = match self.enter(query)? {
            Entered::Alone(counted, check) => (counted, check),
            Entered::Queued(start, lane, wait) => {
                if start {
                    tokio::spawn(Arc::clone(self).flush(lane));
                }
                return wait.await.unwrap_or_else(|_| Err(lost()));
            }
        };
        // The lane was idle: this check is sent at once, by its caller, as one call counted
        // in flight, so that checks arriving meanwhile queue and ride the next call. No flush
        // task, no channel: the caller owns only its own check, and giving up cancels only its
        // own call.
        let answers = self.call(&[&check]).await;
        drop(counted);
        match answers {
            Ok(mut answers) => answers.pop().unwrap_or_else(|| Err(lost())),
            Err(e) => Err(error::from_redis(e)),
        }
    }

    /// Finds `query`'s lane: idle (its caller sends it, counted in flight), or queued in it.
    fn enter(&self, query: Query<'_>) -> Result<Entered<'_, C>, StoreError> {
        // On a cluster the lane is the check's slot, read from the built check.
        let (ask, mut built) = match query {
            Query::Asked(ask) if self.per_slot.load(Ordering::Relaxed) => {
                (None, Some(ask.check()?))
            }
            Query::Asked(ask) => (Some(ask), None),
            Query::Built(check) => (None, Some(check)),
        };
        let lane = match &built {
            Some(check) if self.per_slot.load(Ordering::Relaxed) => check.slot(),
            _ => SHARED_LANE,
        };
        loop {
            let step = {
                let mut lanes = self.lock();
                match lanes.entry(lane) {
                    Entry::Vacant(idle) if self.lone.load(Ordering::Relaxed) => {
                        idle.insert(Lane::new()).in_flight = 1;
                        Step::Alone
                    }
                    entry => {
                        // The check queued last, if this one asks the same: shared, not built.
                        let shared = match (&ask, &entry) {
                            (Some(ask), Entry::Occupied(l)) => l
                                .get()
                                .waiting
                                .back()
                                .filter(|last| last.check.is_asked_by(ask))
                                .map(|last| Arc::clone(&last.check)),
                            _ => None,
                        };
                        match shared.or_else(|| built.take().map(Arc::new)) {
                            // Built outside the lock, then queued.
                            None => Step::Build,
                            Some(check) => {
                                let l = entry.or_insert_with(Lane::new);
                                let (answer, wait) = oneshot::channel();
                                l.push(Request { check, answer });
                                let start = l.in_flight < MAX_IN_FLIGHT && !l.lingering;
                                if start {
                                    l.in_flight += 1;
                                }
                                Step::Queued(start, wait)
                            }
                        }
                    }
                }
            };
            match step {
                Step::Build => {
                    if let Some(ask) = &ask {
                        built = Some(ask.check()?);
                    }
                }
                Step::Queued(start, wait) => return Ok(Entered::Queued(start, lane, wait)),
                Step::Alone => {
                    // Counted in flight from here: a check that fails to build uncounts it.
                    let counted = InFlight {
                        dispatcher: self,
                        lane,
                        armed: true,
                    };
                    let check = match (built, ask) {
                        (Some(check), _) => check,
                        (None, Some(ask)) => ask.check()?,
                        (None, None) => return Err(lost()),
                    };
                    return Ok(Entered::Alone(counted, check));
                }
            }
        }
    }

    /// Sends batches of `lane` until it is empty.
    async fn flush(self: Arc<Self>, lane: u16) {
        // Counted in the lane's `in_flight` until the lane is found empty, or until this task
        // is dropped (its runtime shutting down), so that a later check starts a new flush.
        let mut counted = InFlight {
            dispatcher: &self,
            lane,
            armed: true,
        };
        let mut lingered = false;
        loop {
            let batch = {
                // Found empty and released under one lock: a check queued after this starts
                // a flush of its own.
                let mut lanes = self.lock();
                let mut batch = Vec::new();
                if let Some(l) = lanes.get_mut(&lane) {
                    l.lingering = false;
                    batch = l.take(self.max_batch);
                    if batch.is_empty() && !lingered {
                        // Once, after a call: the callers it answered, woken, may be about to
                        // check again. Starting a task per call cost a hot key's check about
                        // 190 client instructions.
                        l.lingering = true;
                    }
                }
                if batch.is_empty() && (lingered || !lanes.contains_key(&lane)) {
                    counted.armed = false;
                    release(&mut lanes, lane);
                    return;
                }
                batch
            };
            if batch.is_empty() {
                lingered = true;
                tokio::task::yield_now().await;
                continue;
            }
            lingered = false;
            self.send(lane, batch).await;
        }
    }

    async fn send(self: &Arc<Self>, lane: u16, batch: Vec<Request>) {
        if lane != SHARED_LANE {
            // One slot: one call.
            let answers = self.call(&checks(&batch)).await;
            return answer(batch, answers);
        }
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
            // checks slots first), so send again, one call per slot; later checks queue in the
            // lanes of their slots.
            self.per_slot.store(true, Ordering::Relaxed);
            return self.send_per_slot(batch).await;
        }
        answer(batch, answers);
    }

    /// One call per slot, concurrently; returns when every caller has its answer. Only for the
    /// checks of the shared lane once `CROSSSLOT` has shown that the connection is a cluster's.
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

    /// One script call for `checks`, at one instant, bounded by the response timeout: one
    /// answer per check.
    async fn call(&self, checks: &[&Check]) -> Answers {
        self.lone.store(checks.len() == 1, Ordering::Relaxed);
        call::call(&self.conn, self.now(), checks, Some(&self.deadlines)).await
    }

    /// Now in ticks, in client-clock mode; `None` to use the server's `TIME`.
    fn now(&self) -> Option<u64> {
        self.clock
            .as_ref()
            .map(|c| c.now_nanos() / script::TICK_NANOS)
    }
}

impl Lane {
    fn new() -> Self {
        Self {
            waiting: VecDeque::new(),
            in_flight: 0,
            lingering: false,
            prune_at: PRUNE_AT,
        }
    }

    fn push(&mut self, request: Request) {
        // Callers give up about in the order they came (each after its own budget): the ones
        // at the front that have gone are dropped at once, the others at the next prune.
        while self.waiting.front().is_some_and(|r| r.answer.is_closed()) {
            self.waiting.pop_front();
        }
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

/// Ends a flush of `lane`: one call fewer in flight, and the lane forgotten once it is idle.
fn release(lanes: &mut Lanes, lane: u16) {
    if let Some(l) = lanes.get_mut(&lane) {
        l.in_flight -= 1;
        // A flush that lingered and was dropped (its runtime shutting down) must not keep
        // later checks from starting one.
        l.lingering = false;
        if l.in_flight == 0 && l.waiting.is_empty() {
            lanes.remove(&lane);
        }
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
    batch.iter().map(|r| &*r.check).collect()
}

/// The answer never came: the flush carrying the check was dropped (its runtime shut down).
fn lost() -> StoreError {
    StoreError::new(
        StoreErrorKind::Connection,
        "redis: the call carrying this check was dropped",
    )
}

/// A flush counted in its lane's `in_flight`, uncounted when it ends in any way.
struct InFlight<'a, C> {
    dispatcher: &'a Dispatcher<C>,
    lane: u16,
    armed: bool,
}

impl<C> Drop for InFlight<'_, C> {
    fn drop(&mut self) {
        if self.armed {
            release(&mut self.dispatcher.lock(), self.lane);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::{Algorithm, Limit, Quota};

    type Wait = oneshot::Receiver<Result<Decision, StoreError>>;

    fn limit() -> Limit {
        Limit::new(Quota::per_second(NonZeroU32::MIN), Algorithm::Gcra)
    }

    fn check(key: &str) -> Check {
        Check::new("rl", key, &[limit()], 1, true).unwrap()
    }

    /// Queues the check of `key`, or (`None`) the check queued last again, shared.
    fn queue(lane: &mut Lane, key: Option<&str>) -> Wait {
        let check = match key {
            Some(k) => Arc::new(check(k)),
            None => Arc::clone(&lane.waiting.back().unwrap().check),
        };
        let (answer, wait) = oneshot::channel();
        lane.push(Request { check, answer });
        wait
    }

    /// The client key of each check of a batch, read back from its state key.
    fn keys_of(batch: &[Request]) -> Vec<String> {
        checks(batch).iter().map(|c| client_key(c)).collect()
    }

    fn client_key(c: &Check) -> String {
        let k = c.state_key();
        k[k.find('{').unwrap() + 1..k.find('}').unwrap()].to_owned()
    }

    /// The checks a batch carries that are not the one before them.
    fn built(batch: &[Request]) -> usize {
        let checks = checks(batch);
        let mut n = usize::from(!checks.is_empty());
        n += checks
            .windows(2)
            .filter(|w| !std::ptr::eq(w[0], w[1]))
            .count();
        n
    }

    #[test]
    fn shared_checks_are_decided_as_the_check_they_share() {
        let mut lane = Lane::new();
        let _w = [
            queue(&mut lane, Some("a")),
            queue(&mut lane, None),
            queue(&mut lane, Some("b")),
            queue(&mut lane, None),
            queue(&mut lane, None),
        ];
        let batch = lane.take(10);
        assert_eq!(keys_of(&batch), ["a", "a", "b", "b", "b"]);
        assert_eq!(built(&batch), 2);
    }

    #[test]
    fn a_gone_caller_leaves_its_check_to_those_sharing_it() {
        let mut lane = Lane::new();
        let gone = queue(&mut lane, Some("a"));
        let w1 = queue(&mut lane, None);
        let gone2 = queue(&mut lane, None);
        let w3 = queue(&mut lane, None);
        drop((gone, gone2));
        let batch = lane.take(10);
        assert_eq!(keys_of(&batch), ["a", "a"]);
        assert_eq!(built(&batch), 1);
        drop((w1, w3));
    }

    #[test]
    fn a_batch_cut_short_leaves_the_next_one_its_check() {
        let mut lane = Lane::new();
        let _w: Vec<Wait> = [Some("a"), None, None, None, None]
            .into_iter()
            .map(|k| queue(&mut lane, k))
            .collect();
        assert_eq!(keys_of(&lane.take(2)), ["a", "a"]);
        assert_eq!(keys_of(&lane.take(2)), ["a", "a"]);
        assert_eq!(keys_of(&lane.take(2)), ["a"]);
        assert!(lane.take(2).is_empty());
    }

    #[test]
    fn callers_gone_at_the_front_are_dropped_and_the_rest_keep_their_checks() {
        let mut lane = Lane::new();
        let gone = queue(&mut lane, Some("a"));
        let _w1 = queue(&mut lane, None);
        drop(gone);
        // Pushing drops the gone front.
        let _w2 = queue(&mut lane, Some("b"));
        assert_eq!(lane.waiting.len(), 2);
        assert_eq!(keys_of(&lane.take(10)), ["a", "b"]);
    }

    #[test]
    fn callers_gone_in_a_prune_are_dropped_and_the_rest_keep_their_checks() {
        let mut lane = Lane::new();
        let _a = queue(&mut lane, Some("a"));
        let gone_repeat = queue(&mut lane, None);
        let gone_b = queue(&mut lane, Some("b"));
        let _rb = queue(&mut lane, None);
        let _rb2 = queue(&mut lane, None);
        drop((gone_repeat, gone_b));
        lane.prune_at = 5;
        let _c = queue(&mut lane, Some("c"));
        // Pruned: the gone two are out.
        assert_eq!(lane.waiting.len(), 4);
        assert_eq!(keys_of(&lane.take(10)), ["a", "b", "b", "c"]);
    }

    #[test]
    fn a_caller_shares_the_last_check_only_if_it_asks_the_same() {
        let mut lane = Lane::new();
        let _a = queue(&mut lane, Some("a"));
        let limits = [limit()];
        let ask = |key| Ask {
            prefix: "rl",
            key,
            limits: &limits,
            cost: 1,
            commit: true,
        };
        let last = |lane: &Lane| Arc::clone(&lane.waiting.back().unwrap().check);
        assert!(last(&lane).is_asked_by(&ask("a")));
        assert!(!last(&lane).is_asked_by(&ask("b")));
        let _b = queue(&mut lane, Some("b"));
        assert_eq!(client_key(&last(&lane)), "b");
        assert!(!last(&lane).is_asked_by(&ask("a")));
    }

    #[test]
    fn a_check_is_asked_by_the_same_key_limits_cost_and_mode_only() {
        let limits = [limit()];
        let ask = |key, cost, commit| Ask {
            prefix: "rl",
            key,
            limits: &limits,
            cost,
            commit,
        };
        let c = check("a");
        assert!(c.is_asked_by(&ask("a", 1, true)));
        assert!(!c.is_asked_by(&ask("b", 1, true)));
        assert!(!c.is_asked_by(&ask("a", 2, true)));
        assert!(!c.is_asked_by(&ask("a", 1, false)));
        let other = [Limit::new(
            Quota::per_second(NonZeroU32::MIN),
            Algorithm::TokenBucket,
        )];
        assert!(!c.is_asked_by(&Ask {
            limits: &other,
            ..ask("a", 1, true)
        }));
        assert!(!c.is_asked_by(&Ask {
            limits: &[limit(), limit()],
            ..ask("a", 1, true)
        }));
        assert!(!c.is_asked_by(&Ask {
            prefix: "rl2",
            ..ask("a", 1, true)
        }));
        // A key that needs escaping is never joined: its caller builds its own check.
        let escaped = Check::new("rl", "a{b", &limits, 1, true).unwrap();
        assert!(!escaped.is_asked_by(&ask("a{b", 1, true)));
    }
}

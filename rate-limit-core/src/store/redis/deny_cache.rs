//! The deny cache: recent denials, answered locally until the wait they announced is over.
//!
//! A denial with `retry_after = T` for cost `c` means that, without new charges, no check of
//! cost `c` or more passes before `T` has gone by. Other instances can only charge (capacity
//! never grows but with time), so the denial holds until `T` after the instant Redis decided.
//! The deadline is counted from a local clock read *before* the check was sent, which is at or
//! before that instant: the cache never denies what Redis would admit, given clocks that run at
//! the same rate. Only a state deleted out of band (an administrator resetting a client) is seen
//! late, at the deadline.
//!
//! A cost above a capacity is never answered from the cache: no wait helps it, and Redis says so
//! with a denial that has no `retry_after`, as it would with no cache.
//!
//! A refund breaks "other instances can only charge" for its key. A refund made through this
//! store bumps the key's *generation* (one counter per slot, picked by the key alone, so every
//! set of limits of the key sees it) once Redis has answered it: a denial kept from before is
//! dropped at its next lookup, and a denial whose check was sent before the bump is not kept.
//! A refund made by another instance is seen only at the deadline, like a state reset out of
//! band: for at most the wait Redis announced.
//!
//! While the cache holds no denial that still holds (none kept, or every one past its deadline),
//! a check skips its slot: no hash before it is sent. Should its answer be a denial to keep, the
//! slot is found then; the key's generation read then is the one the check was sent under
//! unless a refund (of any key) ended meanwhile, which a store-wide count of refunds, read
//! before sending and again after the generation, tells: then the denial is not kept.
//!
//! The table is direct-mapped: a fixed number of slots, each holding at most one denial; a new
//! denial takes its slot whatever was there. Entries hold the whole client key, so a hash
//! collision can only miss, never deny another key.

use std::hash::{BuildHasher, Hash, Hasher};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hashbrown::DefaultHashBuilder;

use crate::clock::Clock;
use crate::decision::{Decision, Snapshot};
use crate::limit::Limit;

/// Slots unless the builder says otherwise.
pub(crate) const DEFAULT_CAPACITY: NonZeroUsize = match NonZeroUsize::new(4096) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

/// One denial: who, what, for how long.
struct Entry {
    key: Box<str>,
    limits: Box<[u64]>,
    cost: u32,
    /// Local time, in nanoseconds, read before the check was sent.
    sent_at: u64,
    /// `sent_at` plus the denial's retry-after: until then, the denial holds.
    until: u64,
    /// The key's refund generation when the check was sent: a refund since voids the denial.
    generation: u64,
    decision: Decision,
}

impl Entry {
    fn is_for(&self, key: &str, limits: &[Limit]) -> bool {
        *self.key == *key
            && self.limits.len() == limits.len()
            && self.limits.iter().zip(limits).all(|(&id, l)| id == l.id())
    }
}

/// One slot: its entry, and the entry's deadline in an atomic (0 when empty), written under the
/// lock. Most checks find their slot empty or expired: they read the atomic and never lock.
pub(crate) struct Slot {
    until: AtomicU64,
    entry: Mutex<Option<Box<Entry>>>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Option<Box<Entry>>> {
        // An entry is replaced whole under the lock: a panic elsewhere cannot leave half of one.
        self.entry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Empties the slot; the caller holds its lock. `occupied` counts the slots that hold an
    /// entry.
    fn clear(&self, entry: &mut Option<Box<Entry>>, occupied: &AtomicUsize) {
        if entry.take().is_some() {
            occupied.fetch_sub(1, Ordering::AcqRel);
        }
        self.until.store(0, Ordering::Release);
    }
}

/// Where a check of a key and limits is kept: its slot, and its key's refund generation as read
/// before the check was sent.
pub(crate) struct Spot<'a> {
    slot: &'a Slot,
    generation: &'a AtomicU64,
    seen: u64,
    /// The cache's count of slots holding an entry.
    occupied: &'a AtomicUsize,
    /// The cache's latest deadline.
    latest: &'a AtomicU64,
}

/// A check sent to Redis after its lookup, for [`learn`](DenyCache::learn) to learn from its
/// answer.
pub(crate) struct Sent<'a> {
    /// Local time, in nanoseconds, read before the check was sent.
    sent_at: u64,
    at: Lookup<'a>,
}

/// Where a lookup looked.
enum Lookup<'a> {
    /// In the check's slot.
    Slot(Spot<'a>),
    /// Nowhere, the cache holding no denial that still held: the store's count of refunds
    /// then.
    Skipped { refunds: u64 },
}

pub(crate) struct DenyCache {
    slots: Box<[Slot]>,
    /// Refund generations, indexed by the key's hash alone: bumped by each refund of a key that
    /// lands here.
    generations: Box<[AtomicU64]>,
    hasher: DefaultHashBuilder,
    clock: Arc<dyn Clock>,
    /// The slots holding an entry, expired or not: changed under a slot's lock as its entry
    /// comes and goes.
    occupied: AtomicUsize,
    /// The latest deadline of any entry ever kept (0 for none): from then on, none holds.
    latest: AtomicU64,
    /// Refunds of any key whose call has ended: bumped before the key's generation.
    refunds: AtomicU64,
}

impl DenyCache {
    pub(crate) fn new(capacity: NonZeroUsize, clock: Arc<dyn Clock>) -> Self {
        Self {
            slots: (0..capacity.get())
                .map(|_| Slot {
                    until: AtomicU64::new(0),
                    entry: Mutex::new(None),
                })
                .collect(),
            generations: (0..capacity.get()).map(|_| AtomicU64::new(0)).collect(),
            hasher: DefaultHashBuilder::default(),
            clock,
            occupied: AtomicUsize::new(0),
            latest: AtomicU64::new(0),
            refunds: AtomicU64::new(0),
        }
    }

    /// Local time in nanoseconds, from the clock deadlines are counted on.
    pub(crate) fn now(&self) -> u64 {
        self.clock.now_nanos()
    }

    /// The number of slots.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The number of slots holding a denial (expired ones included until a lookup lands on
    /// their slot, which lookups skip once every denial is past its deadline, or they are
    /// overwritten). Visits every slot.
    pub(crate) fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.lock().is_some()).count()
    }

    /// The spot of `key` and `limits`: found at most once per check, for both
    /// [`get`](Self::get) and [`record`](Self::record).
    pub(crate) fn slot(&self, key: &str, limits: &[Limit]) -> Spot<'_> {
        let mut h = self.hasher.build_hasher();
        key.hash(&mut h);
        let generation = &self.generations[index(h.clone().finish(), self.generations.len())];
        for l in limits {
            l.id().hash(&mut h);
        }
        Spot {
            slot: &self.slots[index(h.finish(), self.slots.len())],
            generation,
            seen: generation.load(Ordering::Acquire),
            occupied: &self.occupied,
            latest: &self.latest,
        }
    }

    /// Whether no entry kept holds at `now`: none is kept, or every one is past its deadline.
    fn holds_none(&self, now: u64) -> bool {
        self.occupied.load(Ordering::Acquire) == 0 || now >= self.latest.load(Ordering::Acquire)
    }

    /// A denial of `key` against `limits` that holds now for `cost`, as [`get`](Self::get)
    /// finds it; `None` when the check needs Redis.
    pub(crate) fn find(&self, key: &str, limits: &[Limit], cost: NonZeroU32) -> Option<Decision> {
        if self.occupied.load(Ordering::Acquire) == 0 {
            // Not even the clock is needed.
            return None;
        }
        let now = self.now();
        if now >= self.latest.load(Ordering::Acquire) {
            return None;
        }
        Self::get(&self.slot(key, limits), key, limits, cost, now)
    }

    /// The lookup of a check about to be sent: the denial that holds for it (see
    /// [`get`](Self::get)), or what [`learn`](Self::learn) needs once Redis has answered it.
    /// Its slot is found only if some denial may hold; the clock is read either way, as the
    /// instant the check is sent after.
    pub(crate) fn lookup(
        &self,
        key: &str,
        limits: &[Limit],
        cost: NonZeroU32,
    ) -> Result<Sent<'_>, Decision> {
        let now = self.now();
        if self.holds_none(now) {
            return Ok(Sent {
                sent_at: now,
                // Read before the check is sent.
                at: Lookup::Skipped {
                    refunds: self.refunds.load(Ordering::Acquire),
                },
            });
        }
        let spot = self.slot(key, limits);
        match Self::get(&spot, key, limits, cost, now) {
            Some(denied) => Err(denied),
            None => Ok(Sent {
                sent_at: now,
                at: Lookup::Slot(spot),
            }),
        }
    }

    /// Learns from Redis's answer to `sent`, as [`record`](Self::record) does. A check whose
    /// lookup skipped its slot finds it now; its denial is kept only if no refund ended since
    /// it was sent.
    pub(crate) fn learn(
        &self,
        sent: Sent<'_>,
        key: &str,
        limits: &[Limit],
        cost: NonZeroU32,
        decision: &Decision,
    ) {
        let spot = match sent.at {
            Lookup::Slot(spot) => spot,
            Lookup::Skipped { refunds } => {
                if decision.is_allowed() {
                    // An admission clears what is kept for the key and limits: if anything.
                    if self.occupied.load(Ordering::Acquire) == 0 {
                        return;
                    }
                    self.slot(key, limits)
                } else {
                    if decision.retry_after().is_none() {
                        return;
                    }
                    // The generation first, then the count: a refund bumps the count before
                    // the generation, so a generation bumped since the check was sent shows
                    // in the count read after it.
                    let spot = self.slot(key, limits);
                    if self.refunds.load(Ordering::Acquire) != refunds {
                        // A refund ended while this check was out, perhaps of this key.
                        return;
                    }
                    spot
                }
            }
        };
        Self::record(&spot, key, limits, cost, sent.sent_at, decision);
    }

    /// A refund of `key` has been made (or may have been: its call failed): every denial kept
    /// for the key, whatever its limits, is void, and so is every denial of a check sent before.
    pub(crate) fn refunded(&self, key: &str) {
        // As `slot` hashes the key before the limits.
        let i = index(self.hasher.hash_one(key), self.generations.len());
        // The count before the generation: see `learn`.
        self.refunds.fetch_add(1, Ordering::AcqRel);
        self.generations[i].fetch_add(1, Ordering::AcqRel);
    }

    /// A denial of `key` against `limits`, kept in `slot` (their [`slot`](Self::slot)), that
    /// still holds at `now` for `cost`: the decision Redis gave, its waits shortened by the time
    /// gone by since it was sent.
    pub(crate) fn get(
        spot: &Spot<'_>,
        key: &str,
        limits: &[Limit],
        cost: NonZeroU32,
        now: u64,
    ) -> Option<Decision> {
        let slot = spot.slot;
        // An empty slot, the common case, costs one atomic load.
        let until = slot.until.load(Ordering::Acquire);
        if until == 0 {
            return None;
        }
        let mut entry = slot.lock();
        if now >= entry.as_ref().map_or(0, |e| e.until) {
            // Expired, whoever it was for: the slot is free again.
            slot.clear(&mut entry, spot.occupied);
            return None;
        }
        let found = entry.as_ref().filter(|e| e.is_for(key, limits))?;
        if found.generation != spot.seen {
            // The key was given a refund since: Redis may admit now.
            slot.clear(&mut entry, spot.occupied);
            return None;
        }
        if cost.get() < found.cost {
            return None;
        }
        // A cost above a limit's capacity is denied for good (no `retry_after`), which the
        // kept denial, made for a cost that a wait would let through, cannot say: Redis answers.
        if found
            .decision
            .snapshots()
            .iter()
            .any(|s| cost.get() > s.limit())
        {
            return None;
        }
        Some(aged(
            &found.decision,
            Duration::from_nanos(now.saturating_sub(found.sent_at)),
        ))
    }

    /// Learns from Redis's answer to a check of `cost` sent at `sent_at`, in `slot` (the
    /// [`slot`](Self::slot) of `key` and `limits`): a denial with a wait is kept until the wait
    /// is over; an admission clears what was kept for the key and limits.
    pub(crate) fn record(
        spot: &Spot<'_>,
        key: &str,
        limits: &[Limit],
        cost: NonZeroU32,
        sent_at: u64,
        decision: &Decision,
    ) {
        let slot = spot.slot;
        if decision.is_allowed() {
            // Nothing kept here: nothing to clear, and no lock taken.
            if slot.until.load(Ordering::Acquire) == 0 {
                return;
            }
            let mut entry = slot.lock();
            if entry.as_ref().is_some_and(|e| e.is_for(key, limits)) {
                slot.clear(&mut entry, spot.occupied);
            }
            return;
        }
        let Some(wait) = decision.retry_after() else {
            // Never: the cost exceeds a capacity, and no entry is needed to say so again.
            return;
        };
        if spot.generation.load(Ordering::Acquire) != spot.seen {
            // A refund of the key was answered while this check was out: Redis may have
            // decided it before the refund, so the denial may no longer hold.
            return;
        }
        let wait = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
        let entry = Entry {
            key: key.into(),
            limits: limits.iter().map(Limit::id).collect(),
            cost: cost.get(),
            sent_at,
            // Never 0, which marks an empty slot.
            until: sent_at.saturating_add(wait).max(1),
            decision: decision.clone(),
            generation: spot.seen,
        };
        let until = entry.until;
        let mut kept = slot.lock();
        if kept.replace(Box::new(entry)).is_none() {
            spot.occupied.fetch_add(1, Ordering::AcqRel);
        }
        spot.latest.fetch_max(until, Ordering::AcqRel);
        slot.until.store(until, Ordering::Release);
    }
}

/// The position that the high bits of `hash * len` give: they spread hashes evenly over `len`.
fn index(hash: u64, len: usize) -> usize {
    usize::try_from((u128::from(hash) * len as u128) >> 64).unwrap_or(0)
}

/// `decision` as seen `elapsed` later: every wait shorter by `elapsed`, a retry-after never
/// below one nanosecond while denied.
fn aged(decision: &Decision, elapsed: Duration) -> Decision {
    if elapsed.is_zero() {
        return decision.clone();
    }
    let snapshots = decision
        .snapshots()
        .iter()
        .map(|s| {
            Snapshot::new(
                s.is_allowed(),
                s.limit(),
                s.remaining(),
                s.reset_after().saturating_sub(elapsed),
                s.retry_after()
                    .map(|r| r.saturating_sub(elapsed).max(Duration::from_nanos(1))),
            )
        })
        .collect();
    Decision::from_snapshots(snapshots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, ManualClock, Quota};

    const SEC: u64 = 1_000_000_000;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn limit() -> [Limit; 1] {
        [Limit::new(Quota::per_second(nz(4)), Algorithm::Gcra)]
    }

    fn denial(retry_ms: u64) -> Decision {
        let ms = Duration::from_millis;
        Decision::single(Snapshot::new(false, 4, 0, ms(900), Some(ms(retry_ms))))
    }

    /// `get` and `record` through the slot of the key and limits.
    impl DenyCache {
        fn get_key(&self, key: &str, l: &[Limit], cost: NonZeroU32, now: u64) -> Option<Decision> {
            Self::get(&self.slot(key, l), key, l, cost, now)
        }

        fn record_key(&self, key: &str, l: &[Limit], cost: NonZeroU32, at: u64, d: &Decision) {
            Self::record(&self.slot(key, l), key, l, cost, at, d);
        }
    }

    fn cache(slots: usize) -> DenyCache {
        let clock = ManualClock::new(Duration::from_secs(100));
        DenyCache::new(NonZeroUsize::new(slots).unwrap(), Arc::new(clock))
    }

    #[test]
    fn a_denial_holds_until_its_deadline_with_waits_shortened() {
        let c = cache(16);
        let l = limit();
        c.record_key("k", &l, nz(2), 10 * SEC, &denial(250));
        let d = c.get_key("k", &l, nz(2), 10 * SEC + SEC / 10).unwrap();
        assert!(!d.is_allowed());
        assert_eq!(d.retry_after(), Some(Duration::from_millis(150)));
        assert_eq!(d.reset_after(), Duration::from_millis(800));
        // A greater cost is denied too; a smaller one may pass, so it goes to Redis.
        assert!(c.get_key("k", &l, nz(3), 10 * SEC).is_some());
        assert!(c.get_key("k", &l, nz(1), 10 * SEC).is_none());
        // One nanosecond before the deadline: still denied, with a wait above zero.
        let d = c.get_key("k", &l, nz(2), 10 * SEC + SEC / 4 - 1).unwrap();
        assert_eq!(d.retry_after(), Some(Duration::from_nanos(1)));
        // At the deadline the entry is dropped.
        assert!(c.get_key("k", &l, nz(2), 10 * SEC + SEC / 4).is_none());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn a_cost_above_a_capacity_is_left_to_redis() {
        let c = cache(16);
        let l = limit();
        c.record_key("k", &l, nz(2), 0, &denial(250));
        assert!(c.get_key("k", &l, nz(4), 0).is_some());
        // No wait helps a cost of 5 against a capacity of 4: Redis answers never, and so must
        // the cache, which has no wait to give it.
        assert!(c.get_key("k", &l, nz(5), 0).is_none());
    }

    #[test]
    fn an_expired_denial_frees_its_slot_for_any_key() {
        let c = cache(1);
        let l = limit();
        c.record_key("k", &l, nz(1), 0, &denial(1000));
        // Another key's lookup before the deadline leaves it; after it, clears it.
        assert!(c.get_key("x", &l, nz(1), SEC - 1).is_none());
        assert_eq!(c.len(), 1);
        assert!(c.get_key("x", &l, nz(1), SEC).is_none());
        assert_eq!(c.len(), 0);
        assert!(c.get_key("k", &l, nz(1), 0).is_none());
    }

    #[test]
    fn other_keys_and_limits_never_hit() {
        let c = cache(1);
        let l = limit();
        c.record_key("k", &l, nz(1), 0, &denial(1000));
        // One slot: every lookup lands on it, and only the same key and limits match.
        assert!(c.get_key("k", &l, nz(1), 0).is_some());
        assert!(c.get_key("k2", &l, nz(1), 0).is_none());
        let other = [Limit::new(Quota::per_second(nz(5)), Algorithm::Gcra)];
        assert!(c.get_key("k", &other, nz(1), 0).is_none());
        assert!(c.get_key("k", &[l[0], other[0]], nz(1), 0).is_none());
    }

    #[test]
    fn an_admission_clears_and_a_new_denial_overwrites() {
        let c = cache(1);
        let l = limit();
        let allowed = Decision::single(Snapshot::new(true, 4, 3, Duration::ZERO, None));
        c.record_key("k", &l, nz(1), 0, &denial(1000));
        // Another key's admission leaves it alone; its own clears it.
        c.record_key("x", &l, nz(1), 0, &allowed);
        assert_eq!(c.len(), 1);
        c.record_key("k", &l, nz(1), 0, &allowed);
        assert_eq!(c.len(), 0);
        c.record_key("k", &l, nz(1), 0, &denial(1000));
        c.record_key("x", &l, nz(1), 0, &denial(1000));
        assert!(c.get_key("k", &l, nz(1), 0).is_none());
        assert!(c.get_key("x", &l, nz(1), 0).is_some());
        assert_eq!(c.len(), 1);
        // A denial that no wait helps is not kept.
        let never = Decision::single(Snapshot::new(false, 4, 4, Duration::ZERO, None));
        c.record_key("n", &l, nz(9), 0, &never);
        assert!(c.get_key("n", &l, nz(9), 0).is_none());
    }

    #[test]
    fn several_limits_keep_their_binding_limit() {
        let ms = Duration::from_millis;
        let a = Snapshot::new(false, 4, 0, ms(900), Some(ms(100)));
        let b = Snapshot::new(true, 100, 50, ms(500), None);
        let c_ = Snapshot::new(false, 10, 0, ms(9000), Some(ms(3000)));
        let d = Decision::from_snapshots(vec![a, b, c_]);
        let old = aged(&d, ms(200));
        assert!(!old.is_allowed());
        assert_eq!(old.binding_index(), 2);
        assert_eq!(old.retry_after(), Some(ms(2800)));
        assert_eq!(
            old.snapshots()[0].retry_after(),
            Some(Duration::from_nanos(1))
        );
        assert_eq!(old.snapshots()[1].reset_after(), ms(300));
    }

    #[test]
    fn a_refund_voids_the_keys_denials_and_those_of_checks_sent_before_it() {
        let c = cache(64);
        let l = limit();
        let two = [
            l[0],
            Limit::new(Quota::per_minute(nz(9)), Algorithm::FixedWindow),
        ];
        c.record_key("k", &l, nz(1), SEC, &denial(500));
        c.record_key("k", &two, nz(1), SEC, &denial(500));
        assert!(c.get_key("k", &l, nz(1), SEC + 1).is_some());
        // Another key, unless it shares the refund's generation, keeps its denial.
        let other = (0..)
            .map(|i| format!("other-{i}"))
            .find(|o| {
                let n = c.generations.len();
                index(c.hasher.hash_one(o.as_str()), n) != index(c.hasher.hash_one("k"), n)
            })
            .unwrap();
        c.record_key(&other, &l, nz(1), SEC, &denial(500));
        // A check of the key sent before the refund, answered after it.
        let sent_before = c.slot("k", &l);
        c.refunded("k");
        assert!(c.get_key("k", &l, nz(1), SEC + 1).is_none());
        assert!(c.get_key("k", &two, nz(1), SEC + 1).is_none());
        assert!(c.get_key(&other, &l, nz(1), SEC + 1).is_some());
        DenyCache::record(&sent_before, "k", &l, nz(1), SEC, &denial(500));
        assert!(c.get_key("k", &l, nz(1), SEC + 1).is_none());
        // A check sent after it is kept.
        c.record_key("k", &l, nz(1), SEC, &denial(500));
        assert!(c.get_key("k", &l, nz(1), SEC + 1).is_some());
    }
    /// The cache's clock, to move.
    fn cache_at(slots: usize, now: Duration) -> (DenyCache, ManualClock) {
        let clock = ManualClock::new(now);
        let c = DenyCache::new(NonZeroUsize::new(slots).unwrap(), Arc::new(clock.clone()));
        (c, clock)
    }

    fn skipped(sent: &Sent<'_>) -> bool {
        matches!(sent.at, Lookup::Skipped { .. })
    }

    #[test]
    fn an_empty_cache_skips_the_slot_and_still_keeps_the_denial_answered() {
        let (c, clock) = cache_at(16, Duration::from_secs(10));
        let l = limit();
        let sent = c.lookup("k", &l, nz(1)).ok().unwrap();
        assert!(skipped(&sent));
        assert_eq!(sent.sent_at, 10 * SEC);
        // Answered later: the wait counts from the reading before the send.
        clock.advance(Duration::from_millis(100));
        c.learn(sent, "k", &l, nz(1), &denial(250));
        assert_eq!(c.occupied.load(Ordering::Relaxed), 1);
        let d = c.lookup("k", &l, nz(1)).err().unwrap();
        assert_eq!(d.retry_after(), Some(Duration::from_millis(150)));
        assert!(c.find("k", &l, nz(1)).is_some());
        // Another key now looks in its slot, and finds nothing.
        let other = c.lookup("x", &l, nz(1)).ok().unwrap();
        assert!(!skipped(&other));
        assert!(c.find("x", &l, nz(1)).is_none());
        // An admission answered to a skipped lookup clears the key's denial.
        let (c2, _) = cache_at(16, Duration::from_secs(10));
        let sent = c2.lookup("k", &l, nz(1)).ok().unwrap();
        c2.record_key("k", &l, nz(1), 10 * SEC, &denial(250));
        let allowed = Decision::single(Snapshot::new(true, 4, 3, Duration::ZERO, None));
        c2.learn(sent, "k", &l, nz(1), &allowed);
        assert_eq!(c2.len(), 0);
        assert_eq!(c2.occupied.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_refund_ended_while_a_skipped_check_was_out_keeps_its_denial_out() {
        let (c, _) = cache_at(16, Duration::from_secs(10));
        let l = limit();
        let sent = c.lookup("k", &l, nz(1)).ok().unwrap();
        assert!(skipped(&sent));
        c.refunded("k");
        c.learn(sent, "k", &l, nz(1), &denial(250));
        assert_eq!(c.len(), 0);
        assert!(c.find("k", &l, nz(1)).is_none());
        // Any key's refund does: the count is the store's.
        let sent = c.lookup("k", &l, nz(1)).ok().unwrap();
        c.refunded("another");
        c.learn(sent, "k", &l, nz(1), &denial(250));
        assert_eq!(c.len(), 0);
        // A refund that ended before the send does not.
        let sent = c.lookup("k", &l, nz(1)).ok().unwrap();
        c.learn(sent, "k", &l, nz(1), &denial(250));
        assert!(c.find("k", &l, nz(1)).is_some());
        // Nor does a denial without a wait get kept.
        let (c, _) = cache_at(16, Duration::from_secs(10));
        let sent = c.lookup("n", &l, nz(9)).ok().unwrap();
        let never = Decision::single(Snapshot::new(false, 4, 4, Duration::ZERO, None));
        c.learn(sent, "n", &l, nz(9), &never);
        assert_eq!(c.occupied.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn lookups_skip_again_once_denials_are_gone_or_past_their_deadline() {
        let (c, clock) = cache_at(16, Duration::from_secs(10));
        let l = limit();
        c.record_key("k", &l, nz(1), 10 * SEC, &denial(1000));
        c.record_key("j", &l, nz(1), 10 * SEC, &denial(500));
        assert_eq!(c.occupied.load(Ordering::Relaxed), c.len());
        assert!(!skipped(&c.lookup("x", &l, nz(1)).ok().unwrap()));
        // An admission clears one, an expiry found by a lookup the other.
        let allowed = Decision::single(Snapshot::new(true, 4, 3, Duration::ZERO, None));
        c.record_key("k", &l, nz(1), 10 * SEC, &allowed);
        assert_eq!(c.occupied.load(Ordering::Relaxed), 1);
        clock.advance(Duration::from_millis(600));
        assert!(c.lookup("j", &l, nz(1)).is_ok());
        assert_eq!(c.occupied.load(Ordering::Relaxed), 0);
        assert_eq!(c.len(), 0);
        assert!(skipped(&c.lookup("x", &l, nz(1)).ok().unwrap()));
        // A refund's void found by a lookup empties a slot too.
        c.record_key("k", &l, nz(1), clock.now_nanos(), &denial(1000));
        c.refunded("k");
        assert!(c.lookup("k", &l, nz(1)).is_ok());
        assert_eq!(c.occupied.load(Ordering::Relaxed), 0);
        // Past the latest deadline, lookups skip though the entry is still kept; an overwrite
        // keeps the count.
        c.record_key("k", &l, nz(1), clock.now_nanos(), &denial(1000));
        c.record_key("k", &l, nz(1), clock.now_nanos(), &denial(1000));
        assert_eq!(c.occupied.load(Ordering::Relaxed), 1);
        assert!(!skipped(&c.lookup("x", &l, nz(1)).ok().unwrap()));
        clock.advance(Duration::from_secs(1));
        assert!(skipped(&c.lookup("k", &l, nz(1)).ok().unwrap()));
        assert!(c.find("k", &l, nz(1)).is_none());
    }
}

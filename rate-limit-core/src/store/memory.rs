//! [`MemoryStore`]: a sharded, bounded, in-process store.

use std::fmt;
use std::hash::BuildHasher;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockWriteGuard};
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::{BoxFuture, Charge, Store};
use crate::algorithm::gcra::GcraState;
use crate::algorithm::{self, Raw, State};
use crate::clock::{Clock, SystemClock};
use crate::decision::Decision;
use crate::error::{StoreError, StoreErrorKind};
use crate::limit::Limit;
use crate::quota::Params;

mod fast;
mod full;
pub use full::{METRIC_MEMORY_STORE_FULL, WhenFull};

const DEFAULT_MAX_KEYS: usize = 1_000_000;
const DEFAULT_SHARDS: usize = 64;
const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// An in-process store: a fixed number of shards, each a lock around a hash table, so that
/// checks on different keys rarely contend and no lock is global. A check of one GCRA or token
/// bucket limit on a key already held shares its shard's lock with other such checks and updates
/// its entry by compare-and-swap, so that threads checking one hot key do not queue for it. (A
/// token bucket does so while its state fits the one word that holds its missing tokens and
/// when it is full again, counted from the refill time it was last stored with under the lock:
/// for years with one token missing, for 67 ms with 2^32 - 1.)
///
/// Each entry (one key and one limit) takes 64 bytes, one cache line, with keys of up to 22
/// bytes inside it (longer keys are boxed). A shard keeps its entries dense in a vector that
/// grows an eighth at a time, and finds them through an index of 5 bytes a bucket: about 76
/// bytes an entry in all at a million GCRA entries (`cargo run --release -p rate-limit-core
/// --example memory_per_key`), where a table of the entries themselves, growing by doubling,
/// could sit half empty at twice that.
///
/// It is bounded: it holds at most [`max_keys`](MemoryStoreBuilder::max_keys) entries (one per
/// key and limit), split evenly between the shards. An entry whose state is full again is
/// dropped by the next sweep, which each shard runs on its own every
/// [`sweep_interval`](MemoryStoreBuilder::sweep_interval), and by [`sweep`](MemoryStore::sweep).
///
/// ```
/// use std::num::NonZeroU32;
/// use rate_limit_core::{Algorithm, Limit, MemoryStore, Quota, Store};
///
/// # tokio_test();
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn tokio_test() {
/// let store = MemoryStore::new();
/// let limit = [Limit::new(Quota::per_minute(NonZeroU32::new(2).unwrap()), Algorithm::Gcra)];
/// let one = NonZeroU32::MIN;
/// assert!(store.check("alice", &limit, one).await.unwrap().is_allowed());
/// assert!(store.check("alice", &limit, one).await.unwrap().is_allowed());
/// let denied = store.check("alice", &limit, one).await.unwrap();
/// assert!(!denied.is_allowed());
/// assert!(denied.retry_after().is_some());
/// assert!(store.check("bob", &limit, one).await.unwrap().is_allowed());
/// # }
/// ```
///
/// # When a shard is full
///
/// A new key's entry takes the place of one whose state is full again, without waiting for the
/// sweep: dropping such state admits nothing extra. State that still counts is never dropped to
/// make room, since its client would get a fresh budget: a flood of fresh keys cannot wipe out
/// what a heavy user has spent, whatever the algorithm (with fixed windows and logs, the
/// flood's own state is full again no sooner than the heavy user's).
///
/// A full shard looks for state that is full again once any can be there; when it finds less
/// than a sixty-fourth of itself, it looks again only once a sixty-fourth can be (or at the next
/// sweep), so that a flood of new keys costs each a small share of a scan, never a whole one.
/// This happens only when a new key meets a full shard: a check of a key already held does
/// none of it.
///
/// When it finds no room, [`when_full`](MemoryStoreBuilder::when_full) decides what the new key
/// gets: by default ([`WhenFull::AdmitUntracked`]) its check is answered as for a fresh client
/// and nothing is kept, so it is not counted while the shard stays full (fail open, for new
/// keys only; tracked clients keep their budgets); [`WhenFull::Deny`] denies it, with a
/// `retry_after` of when the shard will look again; [`WhenFull::Evict`] evicts the eighth of
/// the shard that is full again soonest, resetting those clients' budgets. Each new entry left
/// out, each denial and each eviction is counted in the `metrics` counter
/// [`ratelimit_memory_store_full_total`](METRIC_MEMORY_STORE_FULL), labelled `action`
/// (`untracked`, `denied` or `evicted`), never with a key. The entries of one check of several
/// limits are stored together or not at all, which may take a shard a few entries (that
/// check's limits, less one) past its share of the bound.
///
/// The local store of `resilience::Fallback` (feature `resilience`) is a `MemoryStore` and
/// behaves the same during an outage.
pub struct MemoryStore<C = SystemClock> {
    shards: Box<[Shard]>,
    mask: u64,
    per_shard: usize,
    hasher: DefaultHashBuilder,
    clock: C,
    sweep_every: u64,
    when_full: WhenFull,
    evictions: AtomicU64,
}

/// Builds a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder<C = SystemClock> {
    max_keys: NonZeroUsize,
    shards: NonZeroUsize,
    sweep_interval: Duration,
    when_full: WhenFull,
    clock: C,
}

// Padded to a cache line pair so that neighbouring shards' locks do not share a line.
//
// Everything but the shared-lock path (`fast.rs`) takes the write lock.
#[repr(align(128))]
struct Shard(RwLock<Inner>);

/// A shard's entries, dense in a vector grown in small steps, and an index from (key, limit) to
/// a position in that vector.
///
/// A hash table holding the entries themselves would grow by doubling, and sit half empty at 64
/// bytes a bucket just after; the index's buckets are 5 bytes (a `u32` and a control byte), and
/// the vector grows by an eighth at a time.
struct Inner {
    entries: Vec<Entry>,
    index: HashTable<u32>,
    next_sweep: u64,
    /// A full shard looks for state that is full again only from this instant on. A sweep sets
    /// it to the soonest `expires` (`u64::MAX` when empty), and inserts lower it; a check only
    /// moves its entry's expiry later (unless the clock steps back, which the periodic sweep
    /// mends). When a full shard looked and found less than a share of itself
    /// ([`RECLAIM_SHARE`]), it is the instant when a share will be, and inserts leave it
    /// (`rationed`) until the next sweep.
    reclaim_at: u64,
    rationed: bool,
    /// The key hash and instant of the last insert: the other entries of that check (a check
    /// of several limits) may follow it past the bound, so that a check's entries are stored
    /// all together (see `MemoryStore::make_room`).
    last_insert: Option<(u64, u64)>,
}

/// One key and one limit.
///
/// 64 bytes, aligned to a cache line, so that reading an entry touches one line (plus the key's
/// heap bytes only for keys longer than [`INLINE_KEY`]).
///
/// The state of the two algorithms the shared-lock path (`fast.rs`) decides lives in the atomic
/// `word`, which that path updates by compare-and-swap: a GCRA state is its theoretical arrival
/// time, and a token bucket is packed into it whole ([`Stored::TokenBucket`]). Every other state
/// is in `stored`. Every transition of an entry (check, peek, refund) either holds the shard's
/// write lock and goes through [`take`](Self::take) and [`put`](Self::put), or holds the read
/// lock and swaps `word` from the value it decided on: the two never interleave on one entry.
#[repr(align(64))]
struct Entry {
    key: Key,
    limit: u64,
    /// What [`Stored`] says: a TAT, a packed token bucket, or when the state is full again.
    word: AtomicU64,
    stored: Stored,
}

/// How an entry keeps its state, and what its `word` holds.
enum Stored {
    /// GCRA: `word` is the theoretical arrival time, which is also the instant the state is full
    /// again.
    Gcra,
    /// A token bucket packed into `word` (see [`fast::pack`]): its missing tokens, and when it is
    /// full again, from `base`.
    TokenBucket { base: u64 },
    /// Any other state, or a token bucket too far from full to pack: `word` is the instant the
    /// state is full again.
    State(State),
}

// One cache line, as the docs above say: `Stored` takes no more room than the state it holds.
const _: () = assert!(std::mem::size_of::<Entry>() == 64);

impl Entry {
    fn new(key: &str, limit: u64, state: State, expires: u64, p: &Params) -> Self {
        let mut entry = Self {
            key: Key::new(key),
            limit,
            word: AtomicU64::new(0),
            stored: Stored::Gcra,
        };
        entry.put(state, expires, p);
        entry
    }

    /// Whether this is the entry of `key` under the limit `limit`: the test every lookup in a
    /// shard's index makes.
    #[inline]
    fn is(&self, key: &str, limit: u64) -> bool {
        self.limit == limit && self.key.as_bytes() == key.as_bytes()
    }

    /// The state, taken out for a transition under the write lock, which [`put`](Self::put)
    /// puts back unless the state is full again (and the entry leaves the shard).
    #[inline]
    fn take(&mut self, p: &Params) -> State {
        let word = *self.word.get_mut();
        match std::mem::replace(&mut self.stored, Stored::Gcra) {
            Stored::Gcra => State::Gcra(GcraState { tat: word }),
            Stored::TokenBucket { base } => State::TokenBucket(fast::unpack(word, base, p)),
            Stored::State(state) => state,
        }
    }

    /// Stores `state` after a transition under the write lock; `expires` is when it is full
    /// again (`now + reset_after`; for GCRA, the TAT).
    #[inline]
    fn put(&mut self, state: State, expires: u64, p: &Params) {
        let (stored, word) = match state {
            State::Gcra(s) => (Stored::Gcra, s.tat),
            State::TokenBucket(s) => match fast::pack(&s, s.last, p) {
                Some(word) => (Stored::TokenBucket { base: s.last }, word),
                None => (Stored::State(state), expires),
            },
            state => (Stored::State(state), expires),
        };
        self.stored = stored;
        *self.word.get_mut() = word;
    }

    /// When the state is full again.
    #[inline]
    fn expires(&self) -> u64 {
        // Under the write lock nothing else writes it; under the read lock, only by CAS.
        let word = self.word.load(Ordering::Relaxed);
        match self.stored {
            Stored::TokenBucket { base } => fast::packed_full_at(word, base),
            Stored::Gcra | Stored::State(_) => word,
        }
    }
}

/// A full shard that found too little full again looks again only once this share of it (one
/// sixty-fourth) will be: a flood of new keys then costs each at most about 64 entries of a scan
/// on average, not a scan of the shard.
const RECLAIM_SHARE: usize = 64;

/// The fewest entries a shard's vector grows by.
const MIN_GROWTH: usize = 16;

/// Keys up to this many bytes are stored inside the entry.
const INLINE_KEY: usize = 22;

/// A key stored inline when short (no allocation, no pointer to chase), boxed when long.
enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<str>),
}

impl Key {
    fn new(key: &str) -> Self {
        let src = key.as_bytes();
        match u8::try_from(src.len()) {
            Ok(len) if src.len() <= INLINE_KEY => {
                let mut bytes = [0; INLINE_KEY];
                bytes[..src.len()].copy_from_slice(src);
                Self::Inline { len, bytes }
            }
            _ => Self::Heap(key.into()),
        }
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Heap(s) => s.as_bytes(),
        }
    }
}

impl MemoryStore<SystemClock> {
    /// A store with the defaults: 1,000,000 keys, 64 shards, a sweep every 10 s, the system clock.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder, to set the bound, the shards, the sweep interval or the clock.
    pub fn builder() -> MemoryStoreBuilder<SystemClock> {
        MemoryStoreBuilder {
            max_keys: NonZeroUsize::new(DEFAULT_MAX_KEYS).unwrap_or(NonZeroUsize::MIN),
            shards: NonZeroUsize::new(DEFAULT_SHARDS).unwrap_or(NonZeroUsize::MIN),
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
            when_full: WhenFull::default(),
            clock: SystemClock::new(),
        }
    }
}

impl Default for MemoryStore<SystemClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock> MemoryStoreBuilder<C> {
    /// The most entries (keys times limits) the store holds. Default 1,000,000. Each shard holds
    /// at most `u32::MAX` of them.
    #[must_use]
    pub fn max_keys(mut self, max_keys: NonZeroUsize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// How many shards (rounded up to a power of two, and at most `max_keys`). Default 64.
    #[must_use]
    pub fn shards(mut self, shards: NonZeroUsize) -> Self {
        self.shards = shards;
        self
    }

    /// How often each shard drops entries that are full again. Default 10 s.
    #[must_use]
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.sweep_interval = every;
        self
    }

    /// What to do with a new key when its shard is full and no state in it is full again.
    /// Default [`WhenFull::AdmitUntracked`]: a spent budget is never reset to make room.
    #[must_use]
    pub fn when_full(mut self, when_full: WhenFull) -> Self {
        self.when_full = when_full;
        self
    }

    /// The clock to read time from (a [`ManualClock`](crate::ManualClock) in tests).
    pub fn clock<C2: Clock>(self, clock: C2) -> MemoryStoreBuilder<C2> {
        MemoryStoreBuilder {
            max_keys: self.max_keys,
            shards: self.shards,
            sweep_interval: self.sweep_interval,
            when_full: self.when_full,
            clock,
        }
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore<C> {
        let max = self.max_keys.get();
        let mut shards = self.shards.get().next_power_of_two();
        while shards > max {
            shards /= 2;
        }
        // Positions in a shard are `u32`s.
        let per_shard = (max / shards).min(u32::MAX as usize);
        MemoryStore {
            shards: (0..shards)
                .map(|_| {
                    Shard(RwLock::new(Inner {
                        entries: Vec::new(),
                        index: HashTable::new(),
                        next_sweep: 0,
                        reclaim_at: u64::MAX,
                        rationed: false,
                        last_insert: None,
                    }))
                })
                .collect(),
            mask: shards as u64 - 1,
            per_shard,
            hasher: DefaultHashBuilder::default(),
            clock: self.clock,
            sweep_every: u64::try_from(self.sweep_interval.as_nanos()).unwrap_or(u64::MAX),
            when_full: self.when_full,
            evictions: AtomicU64::new(0),
        }
    }
}

impl<C: Clock> MemoryStore<C> {
    /// Entries held now (keys times limits), expired ones included until swept.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).entries.len()).sum()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bound on entries.
    pub fn max_keys(&self) -> usize {
        self.per_shard * self.shards.len()
    }

    /// Entries evicted before they were full again, since the store was built: always 0 but
    /// under [`WhenFull::Evict`].
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// What the store does with a new key when it is full.
    pub fn when_full(&self) -> WhenFull {
        self.when_full
    }

    /// The store's clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// [`Store::check`] without a future: the memory store never waits, so callers that are not
    /// async (or that want to skip the boxed future) can decide in place.
    ///
    /// # Errors
    ///
    /// `limits` is empty.
    pub fn check_now(
        &self,
        key: &str,
        limits: &[Limit],
        cost: NonZeroU32,
    ) -> Result<Decision, StoreError> {
        self.decide(key, limits, cost, true)
    }

    /// [`Store::peek`] without a future.
    ///
    /// # Errors
    ///
    /// `limits` is empty.
    pub fn peek_now(
        &self,
        key: &str,
        limits: &[Limit],
        cost: NonZeroU32,
    ) -> Result<Decision, StoreError> {
        self.decide(key, limits, cost, false)
    }

    /// [`Store::refund`] without a future: gives `charge` back on every limit under one shard
    /// lock, and answers what a peek of its cost answers right after.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use rate_limit_core::{Algorithm, Charge, Limit, MemoryStore, Quota};
    ///
    /// let store = MemoryStore::new();
    /// let limits = [Limit::new(Quota::per_minute(1), Algorithm::TokenBucket)];
    /// let one = NonZeroU32::MIN;
    /// assert!(store.check_now("k", &limits, one).unwrap().is_allowed());
    /// assert!(!store.peek_now("k", &limits, one).unwrap().is_allowed());
    /// let after = store.refund_now("k", &limits, Charge::new(one)).unwrap();
    /// assert!(after.is_allowed());
    /// assert!(store.check_now("k", &limits, one).unwrap().is_allowed());
    /// ```
    ///
    /// # Errors
    ///
    /// `limits` is empty.
    pub fn refund_now(
        &self,
        key: &str,
        limits: &[Limit],
        charge: Charge,
    ) -> Result<Decision, StoreError> {
        if limits.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::InvalidInput,
                "no limits to refund",
            ));
        }
        let now = self.clock.now_nanos();
        let since = u64::try_from(charge.since().as_nanos()).unwrap_or(u64::MAX);
        let at = now.saturating_sub(since);
        let cost = u64::from(charge.cost().get());
        let h = self.hasher.hash_one(key);
        let mut inner = self.locked(self.shard(h), now);
        if let [limit] = limits {
            let raw = self.give_back(&mut inner, key, h, limit, now, cost, at);
            drop(inner);
            return Ok(Decision::single(raw.snapshot(limit.nanos())));
        }
        // Every limit under the one lock; a limit listed twice is given back once.
        let first = first_occurrences(limits);
        let mut raws: Vec<Raw> = Vec::with_capacity(limits.len());
        for (i, l) in limits.iter().enumerate() {
            let r = match first[i] {
                j if j < i => raws[j],
                _ => self.give_back(&mut inner, key, h, l, now, cost, at),
            };
            raws.push(r);
        }
        drop(inner);
        Ok(decision_of(&raws, limits))
    }

    /// Gives `cost`, charged at `at`, back to one key and limit; answers a peek of `cost` after
    /// it. A key with no entry is full: nothing to give back, and no entry is made.
    #[allow(clippy::too_many_arguments)]
    fn give_back(
        &self,
        inner: &mut Inner,
        key: &str,
        key_hash: u64,
        limit: &Limit,
        now: u64,
        cost: u64,
        at: u64,
    ) -> Raw {
        let hash = entry_hash(key_hash, limit.id());
        let p = limit.nanos();
        let id = limit.id();
        let Inner { entries, index, .. } = &mut *inner;
        let found = index.find_entry(hash, |&i| entries[i as usize].is(key, id));
        let Ok(slot) = found else {
            return algorithm::refund(limit.algorithm(), &mut None, now, p, cost, at);
        };
        let i = *slot.get() as usize;
        let e = &mut entries[i];
        // Under the write lock, which shuts out the shared-lock path: a refund and a check of
        // the same key never interleave.
        let mut state = Some(e.take(p));
        let raw = algorithm::refund(limit.algorithm(), &mut state, now, p, cost, at);
        match state {
            // Sooner than before: `reclaim_at` may now be late, which only delays reclaiming
            // this entry's room to the next sweep.
            Some(state) => e.put(state, now.saturating_add(raw.reset_after), p),
            None => {
                slot.remove();
                self.remove_at(inner, i);
            }
        }
        raw
    }

    /// Drops every entry that is full again, in every shard, and gives back memory that the
    /// tables no longer need. Returns how many entries were dropped.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now_nanos();
        self.shards
            .iter()
            .map(|s| self.sweep_shard(&mut lock(s), now))
            .sum()
    }

    fn sweep_shard(&self, inner: &mut Inner, now: u64) -> usize {
        let before = inner.entries.len();
        let mut soonest = u64::MAX;
        self.retain(inner, |e| {
            let keep = e.expires() > now;
            if keep {
                soonest = soonest.min(e.expires());
            }
            keep
        });
        inner.reclaim_at = soonest;
        inner.rationed = false;
        let Inner { entries, index, .. } = inner;
        if entries.capacity() > 64 && entries.len() * 4 < entries.capacity() {
            entries.shrink_to_fit();
            index.shrink_to_fit(|&i| self.rehash(&entries[i as usize]));
        }
        inner.next_sweep = now.saturating_add(self.sweep_every);
        before - inner.entries.len()
    }

    /// Keeps the entries for which `keep` is true (called once per entry, in order), keeping
    /// their order and renumbering their index slots; no key is hashed again.
    fn retain(&self, inner: &mut Inner, mut keep: impl FnMut(&Entry) -> bool) {
        let Inner { entries, index, .. } = inner;
        let Some(first) = entries.iter().position(|e| !keep(e)) else {
            return;
        };
        // New positions of the entries from `first` on; `u32::MAX` for those dropped.
        let mut moved = Vec::with_capacity(entries.len() - first);
        moved.push(u32::MAX);
        let mut next = first;
        for e in &entries[first + 1..] {
            if keep(e) {
                moved.push(pos(next));
                next += 1;
            } else {
                moved.push(u32::MAX);
            }
        }
        index.retain(|i| match (*i as usize).checked_sub(first) {
            None => true,
            Some(off) if moved[off] == u32::MAX => false,
            Some(off) => {
                *i = moved[off];
                true
            }
        });
        let mut at = 0;
        entries.retain(|_| {
            let kept = at < first || moved[at - first] != u32::MAX;
            at += 1;
            kept
        });
    }

    /// Removes the entry at `i`, whose index slot is already gone: the last entry moves into its
    /// place, and that entry's index slot follows it.
    fn remove_at(&self, inner: &mut Inner, i: usize) {
        let Inner { entries, index, .. } = inner;
        let last = entries.len() - 1;
        entries.swap_remove(i);
        if i != last {
            let from = pos(last);
            if let Some(slot) = index.find_mut(self.rehash(&entries[i]), |&j| j == from) {
                *slot = pos(i);
            }
        }
    }

    fn rehash(&self, e: &Entry) -> u64 {
        // Keys are hashed as `str` on lookup; hash the same bytes the same way here.
        let key = std::str::from_utf8(e.key.as_bytes()).unwrap_or_default();
        entry_hash(self.hasher.hash_one(key), e.limit)
    }

    fn decide(
        &self,
        key: &str,
        limits: &[Limit],
        cost: NonZeroU32,
        commit: bool,
    ) -> Result<Decision, StoreError> {
        if limits.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::InvalidInput,
                "no limits to check",
            ));
        }
        let now = self.clock.now_nanos();
        let cost = u64::from(cost.get());
        let h = self.hasher.hash_one(key);
        let shard = self.shard(h);
        if let [limit] = limits
            && let Some(raw) = fast::check_one(shard, key, h, limit, now, cost, commit)
        {
            return Ok(Decision::single(raw.snapshot(limit.nanos())));
        }
        let mut inner = self.locked(shard, now);
        if let [limit] = limits {
            let raw = self.apply(&mut inner, key, h, limit, now, cost, commit);
            drop(inner);
            return Ok(Decision::single(raw.snapshot(limit.nanos())));
        }
        // A limit listed twice (same id, so one state) is decided and charged once: each
        // position gets the answer of its first occurrence.
        let first = first_occurrences(limits);
        // All-or-nothing: decide every limit without charging, then charge only if all allow.
        let mut raws: Vec<Raw> = Vec::with_capacity(limits.len());
        for (i, l) in limits.iter().enumerate() {
            let r = match first[i] {
                j if j < i => raws[j],
                _ => self.apply(&mut inner, key, h, l, now, cost, false),
            };
            raws.push(r);
        }
        if commit && raws.iter().all(|r| r.allowed) {
            for (i, l) in limits.iter().enumerate() {
                raws[i] = match first[i] {
                    j if j < i => raws[j],
                    _ => self.apply(&mut inner, key, h, l, now, cost, true),
                };
            }
        }
        Ok(decision_of(&raws, limits))
    }

    /// The shard of a key hashed to `h`: from bits the table does not use for its own buckets.
    fn shard(&self, h: u64) -> &Shard {
        &self.shards[usize::try_from((h >> 40) & self.mask).unwrap_or(0)]
    }

    /// `shard` locked for writing, swept first if its sweep is due.
    fn locked<'s>(&self, shard: &'s Shard, now: u64) -> RwLockWriteGuard<'s, Inner> {
        let mut inner = lock(shard);
        if now >= inner.next_sweep {
            self.sweep_shard(&mut inner, now);
        }
        inner
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        inner: &mut Inner,
        key: &str,
        key_hash: u64,
        limit: &Limit,
        now: u64,
        cost: u64,
        commit: bool,
    ) -> Raw {
        let hash = entry_hash(key_hash, limit.id());
        let p = limit.nanos();
        let id = limit.id();
        let Inner { entries, index, .. } = &mut *inner;
        let found = index.find_entry(hash, |&i| entries[i as usize].is(key, id));
        if let Ok(slot) = found {
            let i = *slot.get() as usize;
            let e = &mut entries[i];
            let mut state = Some(e.take(p));
            let raw = algorithm::apply(limit.algorithm(), &mut state, now, p, cost, commit);
            match state {
                Some(state) => e.put(state, now.saturating_add(raw.reset_after), p),
                None => {
                    slot.remove();
                    self.remove_at(inner, i);
                }
            }
            return raw;
        }
        let mut state = None;
        let raw = algorithm::apply(limit.algorithm(), &mut state, now, p, cost, commit);
        // Whether this key needs an entry: when committing, if the check left state; on a peek
        // (or the first pass of several limits) only `Deny` asks, so that what a peek answers
        // and what the first pass lets through is what the check will do.
        let needs_entry = if commit {
            state.is_some()
        } else {
            raw.allowed && self.when_full == WhenFull::Deny
        };
        if needs_entry
            && inner.entries.len() >= self.per_shard
            && !self.make_room(inner, key_hash, now, commit)
        {
            let wait = inner.reclaim_at.saturating_sub(now);
            return self.when_full.refuse(raw, wait, commit);
        }
        if let Some(state) = state {
            let Inner { entries, index, .. } = &mut *inner;
            let len = entries.len();
            if len == entries.capacity() {
                // Small steps (an eighth), never past the bound: little room is ever unused.
                let step = (len / 8)
                    .max(MIN_GROWTH)
                    .min(self.per_shard.saturating_sub(len));
                entries.reserve_exact(step.max(1));
            }
            let expires = now.saturating_add(raw.reset_after);
            entries.push(Entry::new(key, id, state, expires, p));
            index.insert_unique(hash, pos(len), |&i| self.rehash(&entries[i as usize]));
            if !inner.rationed {
                inner.reclaim_at = inner.reclaim_at.min(expires);
            }
            inner.last_insert = Some((key_hash, now));
        }
        raw
    }

    /// Finds room in a full shard for a new entry of the key hashed `key_hash`; returns whether
    /// there is room. Work done here, on inserts into a full shard, never on the checks of keys
    /// already held.
    ///
    /// Only state that is full again is dropped (it admits nothing extra once gone), and the
    /// shard is searched for it only once something can be (`Inner::reclaim_at`); if that
    /// frees less than a [share](RECLAIM_SHARE) of it, only once a share can be. Under
    /// [`WhenFull::Evict`] (and only when committing), the eighth of the shard that would be
    /// full again soonest is evicted if that is not enough.
    ///
    /// The entries of a check of several limits are stored together: an entry for the key and
    /// instant of the shard's last insert always has room, so the first pass of such a check
    /// (which found room for each entry alone) never leaves it half-stored. A shard may so
    /// exceed its bound by the entries of one key at one instant, less one.
    fn make_room(&self, inner: &mut Inner, key_hash: u64, now: u64, commit: bool) -> bool {
        if commit && inner.last_insert == Some((key_hash, now)) {
            return true;
        }
        if now >= inner.reclaim_at {
            let freed = self.sweep_shard(inner, now);
            let share = (self.per_shard / RECLAIM_SHARE).max(1);
            if freed < share && !inner.entries.is_empty() {
                let mut expiries: Vec<u64> = inner.entries.iter().map(Entry::expires).collect();
                let nth = share.min(expiries.len()) - 1;
                let (_, &mut at, _) = expiries.select_nth_unstable(nth);
                inner.reclaim_at = at;
                inner.rationed = true;
            }
        }
        let len = inner.entries.len();
        if len < self.per_shard {
            return true;
        }
        if self.when_full != WhenFull::Evict || !commit {
            return false;
        }
        let evict = (len - self.per_shard * 7 / 8).max(1);
        let mut expiries: Vec<u64> = inner.entries.iter().map(Entry::expires).collect();
        let (_, &mut threshold, _) = expiries.select_nth_unstable(evict - 1);
        let mut at_threshold = evict - expiries.iter().filter(|&&x| x < threshold).count();
        let mut soonest = u64::MAX;
        self.retain(inner, |e| {
            let keep = if e.expires() < threshold {
                false
            } else if e.expires() == threshold && at_threshold > 0 {
                at_threshold -= 1;
                false
            } else {
                true
            };
            if keep {
                soonest = soonest.min(e.expires());
            }
            keep
        });
        inner.reclaim_at = soonest;
        inner.rationed = false;
        self.evictions.fetch_add(evict as u64, Ordering::Relaxed);
        self.when_full.count();
        true
    }
}

impl<C: Clock> Store for MemoryStore<C> {
    fn check<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        let result = self.decide(key, limits, cost, true);
        Box::pin(std::future::ready(result))
    }

    fn peek<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        cost: NonZeroU32,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        let result = self.decide(key, limits, cost, false);
        Box::pin(std::future::ready(result))
    }

    fn refund<'a>(
        &'a self,
        key: &'a str,
        limits: &'a [Limit],
        charge: Charge,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        let result = self.refund_now(key, limits, charge);
        Box::pin(std::future::ready(result))
    }

    fn backend(&self) -> &'static str {
        "memory"
    }

    fn try_refund_now(
        &self,
        key: &str,
        limits: &[Limit],
        charge: Charge,
    ) -> Option<Result<Decision, StoreError>> {
        Some(self.refund_now(key, limits, charge))
    }

    fn try_check_now(
        &self,
        key: &str,
        limits: &[Limit],
        cost: NonZeroU32,
    ) -> Option<Result<Decision, StoreError>> {
        Some(self.decide(key, limits, cost, true))
    }
}

impl<C> fmt::Debug for MemoryStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("max_keys", &(self.per_shard * self.shards.len()))
            .finish_non_exhaustive()
    }
}

/// A shard's write lock.
#[inline]
fn lock(shard: &Shard) -> RwLockWriteGuard<'_, Inner> {
    // A panic while holding a shard cannot leave an entry half-written (transitions are pure and
    // write back whole values), so a poisoned lock is still consistent.
    shard.0.write().unwrap_or_else(PoisonError::into_inner)
}

/// The decision of several limits from each one's answer.
fn decision_of(raws: &[Raw], limits: &[Limit]) -> Decision {
    Decision::from_snapshots(
        raws.iter()
            .zip(limits)
            .map(|(r, l)| r.snapshot(l.nanos()))
            .collect(),
    )
}

/// For each limit, the position of the first limit with its id (its own when it is the first).
fn first_occurrences(limits: &[Limit]) -> Vec<usize> {
    limits
        .iter()
        .enumerate()
        .map(|(i, l)| {
            limits[..i]
                .iter()
                .position(|m| m.id() == l.id())
                .unwrap_or(i)
        })
        .collect()
}

/// An entry's position as stored in the index. A shard never holds more than `u32::MAX` entries
/// (the builder caps `max_keys` per shard).
#[inline]
fn pos(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// One hash per (key, limit), derived from the key's hash so the key is hashed once per check.
fn entry_hash(key_hash: u64, limit: u64) -> u64 {
    key_hash ^ limit.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Algorithm, ManualClock, Quota};
    use std::sync::atomic::Ordering;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn store(max: usize, clock: &ManualClock) -> MemoryStore<ManualClock> {
        MemoryStore::builder()
            .max_keys(NonZeroUsize::new(max).unwrap())
            .shards(NonZeroUsize::new(1).unwrap())
            .clock(clock.clone())
            .build()
    }

    fn check(s: &MemoryStore<ManualClock>, key: &str, limits: &[Limit], cost: u32) -> Decision {
        s.decide(key, limits, nz(cost), true).unwrap()
    }

    #[test]
    fn several_limits_are_all_or_nothing() {
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let s = store(100, &clock);
        let per_sec = Limit::new(Quota::per_second(nz(3)), Algorithm::Gcra);
        let per_min = Limit::new(Quota::per_minute(nz(4)), Algorithm::FixedWindow);
        let both = [per_sec, per_min];
        assert!(check(&s, "k", &both, 3).is_allowed());
        // Per-second denies: the per-minute window must not be charged.
        let d = check(&s, "k", &both, 1);
        assert!(!d.is_allowed());
        assert_eq!(d.binding_index(), 0);
        assert_eq!(d.snapshots()[1].remaining(), 1);
        clock.advance(Duration::from_secs(1));
        let d = check(&s, "k", &both, 1);
        assert!(d.is_allowed());
        assert_eq!((d.remaining(), d.binding_index()), (0, 1));
    }

    /// Whether the entry of the only shard's first key keeps a packed token bucket.
    fn packed(s: &MemoryStore<ManualClock>) -> bool {
        matches!(
            lock(&s.shards[0]).entries[0].stored,
            Stored::TokenBucket { .. }
        )
    }

    #[test]
    fn a_token_bucket_decides_as_its_transition_packed_or_not_and_when_time_steps_back() {
        let t0 = Duration::from_secs(1_000);
        let clock = ManualClock::new(t0);
        let s = store(100, &clock);
        // Packed exactly when the bucket is full again soon enough after its refill time for
        // the bits its missing tokens leave: always here but with a quota of one in 31 years.
        let decades = Quota::with_period(nz(1), Duration::from_secs(1_000_000_000)).unwrap();
        for (q, cost) in [
            (Quota::per_second(nz(10)).burst(nz(5)).unwrap(), 1),
            (Quota::per_hour(nz(60)).burst(nz(10)).unwrap(), 3),
            (decades.burst(nz(2)).unwrap(), 1),
        ] {
            let limit = [Limit::new(q, Algorithm::TokenBucket)];
            let p = limit[0].nanos();
            let (mut state, mut packs) = (None, [false, false]);
            // Forward, back behind the refill time, and forward again.
            let ms = [
                0, 0, 150, 120, 90, 400, 380, 380, 1_200, 1_100, 5_000, 4_990, 9_000,
            ];
            for ms in ms {
                let at = t0 + Duration::from_millis(ms);
                clock.set(at);
                let (peek, _) =
                    Algorithm::TokenBucket.transition(state.clone(), at, &q, nz(cost), false);
                let (want, next) = Algorithm::TokenBucket.transition(state, at, &q, nz(cost), true);
                assert_eq!(
                    s.peek_now("k", &limit, nz(cost)).unwrap().snapshots(),
                    &[peek]
                );
                assert_eq!(
                    check(&s, "k", &limit, cost).snapshots(),
                    &[want],
                    "{q:?} {ms}"
                );
                state = next;
                if let Some(State::TokenBucket(b)) = &state {
                    let fits = fast::pack(b, b.last, p).is_some();
                    assert_eq!(packed(&s), fits, "{q:?} {ms}");
                    packs[usize::from(fits)] = true;
                }
            }
            // The sequence tried the shared-lock path, or with the 31 years' quota the locked one.
            let slow = q.period() == decades.period();
            assert_eq!(packs, [slow, !slow], "{q:?}");
            clock.set(t0 + Duration::from_secs(3_600));
            s.sweep();
        }
    }

    #[test]
    fn peek_charges_nothing() {
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let s = store(100, &clock);
        let l = [Limit::new(
            Quota::per_second(nz(1)),
            Algorithm::SlidingWindowLog,
        )];
        for _ in 0..3 {
            assert!(s.decide("k", &l, nz(1), false).unwrap().is_allowed());
        }
        assert!(s.is_empty());
        assert!(check(&s, "k", &l, 1).is_allowed());
        assert!(!s.decide("k", &l, nz(1), false).unwrap().is_allowed());
    }

    #[test]
    fn full_again_keys_hold_no_memory_after_a_sweep() {
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let s = store(10_000, &clock);
        for alg in Algorithm::ALL {
            let l = [Limit::new(Quota::per_second(nz(10)), alg)];
            for i in 0..500 {
                check(&s, &format!("k{i}"), &l, 1);
            }
        }
        assert_eq!(s.len(), 3000);
        clock.advance(Duration::from_secs(2));
        assert_eq!(s.sweep(), 3000);
        assert!(s.is_empty());
    }

    #[test]
    fn periodic_sweep_runs_on_access() {
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let s = MemoryStore::builder()
            .shards(NonZeroUsize::new(1).unwrap())
            .sweep_interval(Duration::from_secs(5))
            .clock(clock.clone())
            .build();
        let l = [Limit::new(
            Quota::per_second(nz(10)),
            Algorithm::TokenBucket,
        )];
        for i in 0..100 {
            s.decide(&format!("k{i}"), &l, nz(1), true).unwrap();
        }
        assert_eq!(s.len(), 100);
        clock.advance(Duration::from_secs(6));
        s.decide("other", &l, nz(1), true).unwrap();
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn removals_keep_the_index_in_step() {
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let s = store(1_000, &clock);
        let l = [Limit::new(Quota::per_second(nz(10)), Algorithm::Gcra)];
        // Key i spends 1 + i % 10 of 10; a spend of c is full again after c * 100 ms.
        let spend = |i: u32| 1 + i % 10;
        for i in 0..200 {
            check(&s, &format!("k{i}"), &l, spend(i));
        }
        clock.advance(Duration::from_millis(550));
        // A peek at an entry that is full again removes it (the last entry moves into its place).
        for i in (0..200).step_by(3) {
            s.decide(&format!("k{i}"), &l, nz(1), false).unwrap();
        }
        // The sweep drops the rest of those and renumbers what it keeps.
        s.sweep();
        assert_eq!(s.len(), 100);
        for i in 0..200 {
            let left = s
                .decide(&format!("k{i}"), &l, nz(1), false)
                .unwrap()
                .remaining();
            let want = if spend(i) > 5 { 15 - spend(i) } else { 10 };
            assert_eq!(left, want, "k{i}");
        }
    }

    #[test]
    fn entries_fill_one_cache_line() {
        assert_eq!(std::mem::size_of::<Entry>(), 64);
    }

    #[test]
    fn short_and_long_keys_are_told_apart() {
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let s = store(100, &clock);
        let l = [Limit::new(Quota::per_hour(nz(1)), Algorithm::Gcra)];
        let long = "x".repeat(INLINE_KEY + 1);
        let keys = ["", "a", &long[..INLINE_KEY], &long, "é\u{0}z"];
        for k in keys {
            assert!(check(&s, k, &l, 1).is_allowed(), "{k:?}");
        }
        for k in keys {
            assert!(!check(&s, k, &l, 1).is_allowed(), "{k:?}");
        }
        // Growth rehashes every entry: inline and boxed keys must hash as they were looked up.
        for i in 0..90 {
            check(&s, &format!("grow-{i}-{long}"), &l, 1);
        }
        for k in keys {
            assert!(!check(&s, k, &l, 1).is_allowed(), "{k:?}");
        }
    }

    #[test]
    fn empty_limits_is_an_error() {
        let clock = ManualClock::new(Duration::from_secs(1));
        let e = store(10, &clock).decide("k", &[], nz(1), true).unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::InvalidInput);
    }

    fn refund(
        s: &MemoryStore<ManualClock>,
        key: &str,
        limits: &[Limit],
        charge: Charge,
    ) -> Decision {
        s.refund_now(key, limits, charge).unwrap()
    }

    #[test]
    fn refund_at_full_changes_nothing_and_makes_no_entry() {
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let s = store(100, &clock);
        for alg in Algorithm::ALL {
            let l = [Limit::new(Quota::per_second(nz(3)), alg)];
            let d = refund(&s, "k", &l, Charge::new(nz(2)));
            assert_eq!(
                (d.is_allowed(), d.remaining(), d.limit()),
                (true, 3, 3),
                "{alg}"
            );
            assert!(s.is_empty(), "{alg}");
            // Charged 1, refunded 3: back to full, never above it, and the entry is gone.
            assert!(check(&s, "k", &l, 1).is_allowed());
            let d = refund(&s, "k", &l, Charge::new(nz(3)));
            assert_eq!(d.remaining(), 3, "{alg}");
            assert!(s.is_empty(), "{alg}");
        }
    }

    #[test]
    fn refund_gives_back_on_every_limit_once() {
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let s = store(100, &clock);
        let per_sec = Limit::new(Quota::per_second(nz(3)), Algorithm::Gcra);
        let per_min = Limit::new(Quota::per_minute(nz(5)), Algorithm::SlidingWindowLog);
        // The per-minute limit listed twice is one state: charged once, refunded once.
        let limits = [per_sec, per_min, per_min];
        assert!(check(&s, "k", &limits, 3).is_allowed());
        let d = refund(&s, "k", &limits, Charge::new(nz(2)));
        let left: Vec<u32> = d.snapshots().iter().map(|x| x.remaining()).collect();
        assert_eq!(left, [2, 4, 4]);
        assert_eq!(d.remaining(), 2);
        // Refunded on every limit: 2 more fit on each.
        assert!(check(&s, "k", &limits, 2).is_allowed());
        assert!(!check(&s, "k", &limits, 1).is_allowed());
        let e = s.refund_now("k", &[], Charge::new(nz(1))).unwrap_err();
        assert_eq!(e.kind(), StoreErrorKind::InvalidInput);
    }

    #[test]
    fn refunds_racing_checks_never_admit_more_than_quota_plus_refunds() {
        // Time stands still, so nothing refills: every admission is paid for by the quota or by a
        // refund made before it. Invariant: admitted <= quota + refunds made.
        use std::sync::atomic::AtomicU32;
        let clock = ManualClock::new(Duration::from_secs(1_000));
        for alg in Algorithm::ALL {
            let s = store(100, &clock);
            let l = [Limit::new(Quota::per_minute(nz(20)), alg)];
            let admitted = AtomicU32::new(0);
            let refunded = AtomicU32::new(0);
            std::thread::scope(|scope| {
                for t in 0..4u32 {
                    let (s, l, admitted, refunded) = (&s, &l, &admitted, &refunded);
                    scope.spawn(move || {
                        for i in 0..500u32 {
                            if check(s, "hot", l, 1).is_allowed() {
                                admitted.fetch_add(1, Ordering::SeqCst);
                                // Some threads give back some of what they were charged.
                                if (t + i).is_multiple_of(3) {
                                    refund(s, "hot", l, Charge::new(nz(1)));
                                    refunded.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        }
                    });
                }
            });
            let (a, r) = (admitted.into_inner(), refunded.into_inner());
            assert!(r > 0, "{alg}");
            assert!(a <= 20 + r, "{alg}: {a} admitted, {r} refunded");
            // Every refund gave back exactly what its check charged: the store holds what
            // was charged and kept.
            let left = s.peek_now("hot", &l, nz(1)).unwrap().remaining();
            assert_eq!(20 - left, a - r, "{alg}");
        }
    }
}

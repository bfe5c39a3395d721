//! [`WhenFull`]: what a full [`MemoryStore`](super::MemoryStore) does with a new key.

use crate::algorithm::Raw;

/// The counter of new entries that found their shard full of state that is not full again, by
/// `action`: `untracked`, `denied` or `evicted` (see [`WhenFull`]). It has no other label: a
/// client key is never a label.
pub const METRIC_MEMORY_STORE_FULL: &str = "ratelimit_memory_store_full_total";

/// What a [`MemoryStore`](super::MemoryStore) does with a new key (one it holds no state for)
/// when the key's shard is at its bound and every entry in it still counts, that is, no state
/// in it is full again.
///
/// Only state that is full again is ever dropped unasked: dropping it admits nothing extra. A
/// state that still counts, a budget partly or wholly spent, is dropped only under
/// [`Evict`](WhenFull::Evict). Whatever the choice, each such new entry is counted in
/// [`METRIC_MEMORY_STORE_FULL`](crate::METRIC_MEMORY_STORE_FULL) with the `action` label named
/// below.
///
/// ```
/// use std::num::{NonZeroU32, NonZeroUsize};
/// use std::time::Duration;
/// use rate_limit_core::{Algorithm, Limit, ManualClock, MemoryStore, Quota, WhenFull};
///
/// let clock = ManualClock::new(Duration::from_secs(1_000));
/// let store = MemoryStore::builder()
///     .max_keys(NonZeroUsize::new(1).unwrap())
///     .when_full(WhenFull::Deny)
///     .clock(clock.clone())
///     .build();
/// let limit = [Limit::new(Quota::per_minute(NonZeroU32::new(5).unwrap()), Algorithm::Gcra)];
/// let one = NonZeroU32::MIN;
/// assert!(store.check_now("alice", &limit, one).unwrap().is_allowed());
/// // Alice's state fills the store: a new key is refused, alice keeps her count.
/// let bob = store.check_now("bob", &limit, one).unwrap();
/// assert!(!bob.is_allowed());
/// // Bob may retry when alice's state is full again (after 12 s, one emission interval).
/// assert_eq!(bob.retry_after(), Some(Duration::from_secs(12)));
/// assert_eq!(store.check_now("alice", &limit, one).unwrap().remaining(), 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum WhenFull {
    /// Decide the new key's check as for a fresh client and keep no state for it (fail open,
    /// as the layer's default failure mode does): it is admitted if its cost fits the capacity,
    /// and not counted. Tracked clients keep their budgets. Counted as `untracked`, once per
    /// entry left out. The default.
    #[default]
    AdmitUntracked,
    /// Deny the new key's check (and a peek at it), with a `retry_after` of the time until its
    /// shard looks for room again: when an entry of it is full again (or, once it found too
    /// little, a sixty-fourth of its entries). Nothing is charged. Counted as `denied`, once per
    /// limit of each check or peek so answered.
    Deny,
    /// Evict the eighth of the shard's entries that would be full again soonest, and keep the
    /// new key's state. The evicted clients get fresh budgets: this trades exactness for
    /// tracking every new key. Counted as `evicted`, once per eviction; the entries evicted are
    /// counted by [`MemoryStore::evictions`](super::MemoryStore::evictions).
    Evict,
}

impl WhenFull {
    /// The `action` label of [`METRIC_MEMORY_STORE_FULL`](crate::METRIC_MEMORY_STORE_FULL).
    pub const fn action(self) -> &'static str {
        match self {
            Self::AdmitUntracked => "untracked",
            Self::Deny => "denied",
            Self::Evict => "evicted",
        }
    }

    /// Counts one new entry that found its shard full.
    pub(super) fn count(self) {
        metrics::counter!(METRIC_MEMORY_STORE_FULL, "action" => self.action()).increment(1);
    }

    /// The answer to a new key that could not be stored, given what a fresh state answered
    /// (`fresh`) and how long until the shard looks for room again (`wait`, in ticks).
    /// `commit` is false for a peek or the first pass of a check of several limits.
    pub(super) fn refuse(self, fresh: Raw, wait: u64, commit: bool) -> Raw {
        match self {
            Self::Deny => {
                self.count();
                Raw {
                    allowed: false,
                    capacity: fresh.capacity,
                    remaining: 0,
                    reset_after: wait,
                    retry_after: Some(wait),
                }
            }
            // `Evict` always makes room when committing; a peek answers as for a fresh key.
            Self::AdmitUntracked | Self::Evict => {
                if commit {
                    self.count();
                }
                fresh
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::num::{NonZeroU32, NonZeroUsize};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use metrics::{
        Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use super::*;
    use crate::{Algorithm, Clock, Decision, Limit, ManualClock, MemoryStore, Quota};

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    /// One shard of `max` entries, a sweep interval too long to matter.
    fn store(max: usize, when_full: WhenFull, clock: &ManualClock) -> MemoryStore<ManualClock> {
        MemoryStore::builder()
            .max_keys(NonZeroUsize::new(max).unwrap())
            .shards(NonZeroUsize::MIN)
            .sweep_interval(Duration::from_secs(86_400))
            .when_full(when_full)
            .clock(clock.clone())
            .build()
    }

    fn check(s: &MemoryStore<ManualClock>, key: &str, limits: &[Limit], cost: u32) -> Decision {
        s.check_now(key, limits, nz(cost)).unwrap()
    }

    fn per_hour(n: u32, alg: Algorithm) -> [Limit; 1] {
        [Limit::new(Quota::per_hour(nz(n)), alg)]
    }

    /// Counts counter increments by name and `action` label.
    #[derive(Default)]
    struct Counts(Mutex<BTreeMap<String, Arc<Count>>>);

    #[derive(Default)]
    struct Count(AtomicU64);

    impl CounterFn for Count {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::SeqCst);
        }

        fn absolute(&self, value: u64) {
            self.0.store(value, Ordering::SeqCst);
        }
    }

    impl Counts {
        fn full(&self, action: &str) -> u64 {
            let name = format!("{METRIC_MEMORY_STORE_FULL}{{action={action}}}");
            self.0
                .lock()
                .unwrap()
                .get(&name)
                .map_or(0, |c| c.0.load(Ordering::SeqCst))
        }

        fn names(&self) -> Vec<String> {
            self.0.lock().unwrap().keys().cloned().collect()
        }
    }

    impl Recorder for Counts {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            let mut map = self.0.lock().unwrap();
            Counter::from_arc(Arc::clone(map.entry(name).or_default()))
        }

        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }

        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    /// Runs `f` with a recorder that counts, and returns the counts.
    fn counted(f: impl FnOnce()) -> Counts {
        let counts = Counts::default();
        metrics::with_local_recorder(&counts, f);
        counts
    }

    #[test]
    fn a_key_flood_never_resets_a_spent_budget() {
        let mut reset = Vec::new();
        for when_full in [WhenFull::AdmitUntracked, WhenFull::Deny] {
            for alg in Algorithm::ALL {
                let clock = ManualClock::new(Duration::from_secs(1_000));
                let s = store(64, when_full, &clock);
                let l = per_hour(100, alg);
                assert!(check(&s, "heavy", &l, 100).is_allowed(), "{alg}");
                // Fresh keys under the same limit, each one request in, a little later: their
                // states are full again no earlier than the heavy user's.
                clock.advance(Duration::from_secs(1));
                for i in 0..1_000 {
                    check(&s, &format!("flood{i}"), &l, 1);
                    assert!(s.len() <= 64, "{alg}");
                }
                let d = check(&s, "heavy", &l, 1);
                if d.is_allowed() {
                    reset.push(format!("{alg} {when_full:?} ({} left)", d.remaining()));
                }
                assert_eq!(s.evictions(), 0);
            }
        }
        assert!(
            reset.is_empty(),
            "the flood gave the heavy user a fresh budget: {}",
            reset.join(", ")
        );
    }

    #[test]
    fn state_full_again_makes_room_without_a_sweep() {
        for when_full in [WhenFull::AdmitUntracked, WhenFull::Deny, WhenFull::Evict] {
            for alg in Algorithm::ALL {
                let clock = ManualClock::new(Duration::from_secs(1_000));
                let s = store(4, when_full, &clock);
                let heavy = per_hour(10, alg);
                let light = [Limit::new(Quota::per_second(nz(10)), alg)];
                for k in ["h1", "h2", "h3"] {
                    check(&s, k, &heavy, 10);
                }
                check(&s, "light", &light, 10);
                // The light key is full again after at most two seconds (sliding window
                // counter); the periodic sweep is a day away.
                clock.advance(Duration::from_secs(2));
                let counts = counted(|| {
                    for n in 1..=3 {
                        let d = check(&s, "new", &heavy, 1);
                        assert!(d.is_allowed(), "{alg} {when_full:?}");
                        // Tracked: it took the light key's place and counts.
                        assert_eq!(d.remaining(), 10 - n, "{alg} {when_full:?}");
                    }
                });
                assert_eq!(s.len(), 4);
                assert!(counts.names().is_empty(), "{:?}", counts.names());
                assert_eq!(s.evictions(), 0);
                for k in ["h1", "h2", "h3"] {
                    assert!(!check(&s, k, &heavy, 1).is_allowed(), "{alg} {when_full:?}");
                }
            }
        }
    }

    #[test]
    fn a_full_shard_that_found_too_little_looks_again_once_a_share_is_full_again() {
        // 640 entries: a share (a sixty-fourth) is 10.
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let s = store(640, WhenFull::AdmitUntracked, &clock);
        let hour = per_hour(10, Algorithm::Gcra);
        let second = [Limit::new(Quota::per_second(nz(10)), Algorithm::Gcra)];
        for i in 0..635 {
            check(&s, &format!("h{i}"), &hour, 1);
        }
        for i in 0..5 {
            check(&s, &format!("s{i}"), &second, 10);
        }
        // Five entries are full again: a new key looks, finds them, takes one.
        clock.advance(Duration::from_secs(2));
        assert_eq!(check(&s, "a", &second, 10).remaining(), 0);
        // Too little was found to look on every new key: the shard looks again only once a
        // share is full again. Four free places are left meanwhile.
        for k in ["b", "c", "d", "e"] {
            assert_eq!(check(&s, k, &second, 10).remaining(), 0);
        }
        assert_eq!(s.len(), 640);
        clock.advance(Duration::from_secs(2));
        // Five are full again, less than a share: not looked for, the new key is untracked.
        let counts = counted(|| {
            assert_eq!(check(&s, "f", &second, 10).remaining(), 0);
            assert_eq!(check(&s, "f", &second, 10).remaining(), 0);
        });
        assert_eq!(counts.full("untracked"), 2);
        assert_eq!(s.len(), 640);
        // The hourly entries are full again 360 s after they came (one emission interval):
        // only then is a share full again, and the next new key finds them all.
        clock.set(Duration::from_secs(1_360) - Duration::from_nanos(1));
        assert_eq!(check(&s, "g", &second, 1).remaining(), 9);
        assert_eq!(check(&s, "g", &second, 1).remaining(), 9);
        clock.set(Duration::from_secs(1_360));
        let counts = counted(|| {
            assert_eq!(check(&s, "g", &second, 1).remaining(), 9);
            assert_eq!(check(&s, "g", &second, 1).remaining(), 8);
        });
        assert!(counts.names().is_empty(), "{:?}", counts.names());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn admit_untracked_answers_new_keys_as_fresh_and_counts_them() {
        for alg in Algorithm::ALL {
            let clock = ManualClock::new(Duration::from_secs(1_000));
            let s = store(2, WhenFull::AdmitUntracked, &clock);
            let l = per_hour(10, alg);
            check(&s, "h1", &l, 10);
            check(&s, "h2", &l, 10);
            let counts = counted(|| {
                for _ in 0..20 {
                    let d = check(&s, "new", &l, 3);
                    assert_eq!((d.is_allowed(), d.remaining()), (true, 7), "{alg}");
                }
                // A peek counts nothing; a cost above the capacity is still never allowed.
                assert!(s.peek_now("new", &l, nz(3)).unwrap().is_allowed());
                assert!(!check(&s, "new", &l, 11).is_allowed());
            });
            assert_eq!(counts.full("untracked"), 20, "{alg}");
            assert_eq!(counts.names().len(), 1, "{:?}", counts.names());
            assert_eq!(s.len(), 2);
            assert!(!check(&s, "h1", &l, 1).is_allowed(), "{alg}");
        }
    }

    #[test]
    fn deny_refuses_new_keys_until_an_entry_is_full_again() {
        for alg in Algorithm::ALL {
            let clock = ManualClock::new(Duration::from_secs(1_000));
            let s = store(2, WhenFull::Deny, &clock);
            let l = per_hour(10, alg);
            let minute = [Limit::new(Quota::per_minute(nz(10)), alg)];
            check(&s, "h1", &l, 10);
            check(&s, "m", &minute, 1);
            // When "m" is full again, as its reset says: the soonest entry of the shard.
            let free_at = clock.now() + s.peek_now("m", &minute, nz(1)).unwrap().reset_after();
            let counts = counted(|| {
                let d = check(&s, "new", &l, 1);
                assert!(!d.is_allowed(), "{alg}");
                assert_eq!(d.retry_after(), Some(free_at - clock.now()), "{alg}");
                assert!(!s.peek_now("new", &l, nz(1)).unwrap().is_allowed());
                // Several limits, one held and one new: denied, and the held one not charged.
                let both = [minute[0], l[0]];
                assert!(!check(&s, "m", &both, 1).is_allowed());
            });
            assert_eq!(counts.full("denied"), 3, "{alg}");
            assert_eq!(counts.names().len(), 1, "{:?}", counts.names());
            assert_eq!(s.peek_now("m", &minute, nz(1)).unwrap().remaining(), 9);
            clock.set(free_at);
            assert!(check(&s, "new", &l, 1).is_allowed(), "{alg}");
            assert_eq!(check(&s, "new", &l, 1).remaining(), 8, "{alg}");
            assert!(!check(&s, "h1", &l, 1).is_allowed(), "{alg}");
        }
    }

    #[test]
    fn a_check_of_several_limits_stores_its_entries_together() {
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let limits = [
            Limit::new(Quota::per_second(nz(5)), Algorithm::Gcra),
            Limit::new(Quota::per_hour(nz(50)), Algorithm::FixedWindow),
            Limit::new(Quota::per_hour(nz(60)), Algorithm::SlidingWindowLog),
        ];
        for when_full in [WhenFull::AdmitUntracked, WhenFull::Deny] {
            let s = store(3, when_full, &clock);
            check(&s, "a", &per_hour(1, Algorithm::Gcra), 1);
            check(&s, "b", &per_hour(1, Algorithm::Gcra), 1);
            // One free entry: the first pass finds room for each limit, and the check stores all
            // three (two past the bound) rather than half of them.
            assert!(check(&s, "k", &limits, 1).is_allowed());
            assert_eq!(s.len(), 5, "{when_full:?}");
            let d = check(&s, "k", &limits, 1);
            let left: Vec<u32> = d.snapshots().iter().map(|s| s.remaining()).collect();
            assert_eq!(left, [3, 48, 58], "{when_full:?}");
            // Past the bound, the next new key is refused.
            let counts = counted(|| {
                check(&s, "other", &limits, 1);
            });
            assert_eq!(s.len(), 5);
            // Counted per entry: three limits, three new entries refused.
            assert_eq!(counts.full(when_full.action()), 3, "{when_full:?}");
        }
    }

    #[test]
    fn evict_makes_room_from_the_soonest_full_and_counts_it() {
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let s = store(64, WhenFull::Evict, &clock);
        let heavy = per_hour(100, Algorithm::Gcra);
        let light = [Limit::new(Quota::per_second(nz(100)), Algorithm::Gcra)];
        for _ in 0..50 {
            check(&s, "heavy", &heavy, 1);
        }
        let counts = counted(|| {
            for i in 0..1000 {
                assert!(check(&s, &format!("flood{i}"), &light, 1).is_allowed());
                assert!(s.len() <= 64);
            }
        });
        // 1000 - 64 new entries found no room, each eviction round freed an eighth (8).
        assert_eq!(s.evictions(), 1000 - 56);
        assert_eq!(counts.full("evicted"), (1000 - 56) / 8);
        // The heavy user's state, full again last, survived: 50 spent of 100.
        assert_eq!(check(&s, "heavy", &heavy, 1).remaining(), 49);
    }
}

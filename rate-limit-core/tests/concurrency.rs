//! Many threads on one key admit exactly the quota.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use rate_limit_core::{Algorithm, Limit, ManualClock, MemoryStore, Quota};

#[test]
fn eight_threads_on_one_key_admit_exactly_the_quota() {
    // A second's quota keeps a token bucket packed for the shared-lock path; 1,000 in 31 years
    // does not (its refill is too long for the word), so it is decided under the write lock.
    let decades = Quota::with_period(1000, Duration::from_secs(1_000_000_000)).unwrap();
    let quotas = [decades, Quota::per_second(1000)];
    for (alg, quota) in Algorithm::ALL
        .into_iter()
        .flat_map(|a| quotas.map(|q| (a, q)))
    {
        // Time stands still, so nothing refills during the test.
        let clock = ManualClock::new(Duration::from_secs(1_800_000_000));
        let store = Arc::new(MemoryStore::builder().clock(clock).build());
        let limits = Arc::new([Limit::new(quota, alg)]);
        let admitted = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (store, limits, admitted) = (store.clone(), limits.clone(), admitted.clone());
                thread::spawn(move || {
                    for _ in 0..500 {
                        let d = store
                            .check_now("hot", &limits[..], NonZeroU32::MIN)
                            .unwrap();
                        if d.is_allowed() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 1000, "{alg} {quota:?}");
    }
}

/// Checks of one GCRA or token-bucket limit on a held key share the shard's lock and swap the
/// state; every other check takes the lock alone. Mixed on one key and one shard, with sweeps,
/// peeks and new keys between them, they still admit exactly the quota.
#[test]
fn shared_lock_checks_and_locked_checks_of_one_key_admit_exactly_the_quota() {
    for hot in [
        Limit::new(Quota::per_hour(1000), Algorithm::Gcra),
        Limit::new(Quota::per_second(1000), Algorithm::TokenBucket),
    ] {
        mixed_checks_of_one_key(hot);
    }
}

fn mixed_checks_of_one_key(hot: Limit) {
    let clock = ManualClock::new(Duration::from_secs(1_800_000_000));
    let store = Arc::new(
        MemoryStore::builder()
            .shards(std::num::NonZeroUsize::MIN)
            .clock(clock)
            .build(),
    );
    let wide = Limit::new(Quota::per_hour(1_000_000), Algorithm::TokenBucket);
    let admitted = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (store, admitted) = (store.clone(), admitted.clone());
            thread::spawn(move || {
                for i in 0..500 {
                    let one = NonZeroU32::MIN;
                    // Half the threads charge the hot limit beside another one: the locked path.
                    let d = if t % 2 == 0 {
                        store.check_now("hot", &[hot], one)
                    } else {
                        store.check_now("hot", &[hot, wide], one)
                    };
                    if d.unwrap().is_allowed() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    // Work under the write lock between the checks.
                    store
                        .check_now(&format!("new-{t}-{i}"), &[hot], one)
                        .unwrap();
                    store.peek_now("hot", &[hot], one).unwrap();
                    if i % 50 == 0 {
                        store.sweep();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 1000, "{hot:?}");
    let left = store.peek_now("hot", &[hot], NonZeroU32::MIN).unwrap();
    assert_eq!(left.remaining(), 0);
}

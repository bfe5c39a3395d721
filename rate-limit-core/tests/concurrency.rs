//! Many threads on one key admit exactly the quota.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use rate_limit_core::{Algorithm, Limit, ManualClock, MemoryStore, Quota};

#[test]
fn eight_threads_on_one_key_admit_exactly_the_quota() {
    for alg in Algorithm::ALL {
        // Time stands still, so nothing refills during the test.
        let clock = ManualClock::new(Duration::from_secs(1_800_000_000));
        let store = Arc::new(MemoryStore::builder().clock(clock).build());
        let limits = Arc::new([Limit::new(
            Quota::per_hour(NonZeroU32::new(1000).unwrap()),
            alg,
        )]);
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
        assert_eq!(admitted.load(Ordering::Relaxed), 1000, "{alg}");
    }
}

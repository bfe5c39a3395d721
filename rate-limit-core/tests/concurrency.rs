//! Many threads on one key admit exactly the quota.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use rate_limit_core::{Algorithm, Limit, ManualClock, MemoryStore, Quota, Store};

fn ready<T>(f: rate_limit_core::BoxFuture<'_, T>) -> T {
    let mut f = f;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => panic!("memory store future was not ready"),
    }
}

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
                        let d = ready(store.check("hot", &limits[..], NonZeroU32::MIN)).unwrap();
                        if d.allowed() {
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

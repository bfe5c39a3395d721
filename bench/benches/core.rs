//! Criterion benchmarks: each transition, and `MemoryStore::check` against governor's keyed
//! limiter with the same quota, 1 key and 100k keys, 1 and 2 threads.
//!
//! `cargo bench -p bench --bench core`

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use rate_limit_core::{Algorithm, Limit, MemoryStore, Quota, State, Store};

/// A rate no benchmark reaches, so every check is allowed (the common case).
const RATE: u32 = 1_000_000_000;

fn quota() -> Quota {
    Quota::per_second(NonZeroU32::new(RATE).unwrap())
}

fn ready<T>(f: rate_limit_core::BoxFuture<'_, T>) -> T {
    let mut f = f;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => unreachable!("memory store futures are ready"),
    }
}

fn transitions(c: &mut Criterion) {
    let mut g = c.benchmark_group("transition");
    let q = Quota::per_second(NonZeroU32::new(1000).unwrap());
    for alg in Algorithm::ALL {
        g.bench_function(alg.name(), |b| {
            let mut state: Option<State> = None;
            let mut now = Duration::from_secs(1_800_000_000);
            b.iter(|| {
                now += Duration::from_millis(1);
                let (d, s) = alg.transition(state.take(), now, &q, NonZeroU32::MIN, true);
                state = s;
                black_box(d.is_allowed())
            });
        });
    }
    g.finish();
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("client-{i:08}")).collect()
}

/// Runs `iters` checks split over `threads` threads, returns the wall time.
fn spread<F: Fn(usize) + Sync>(threads: usize, iters: u64, f: F) -> Duration {
    let per = iters / threads as u64;
    #[allow(clippy::disallowed_methods)] // benchmarks measure wall time
    let start = Instant::now();
    thread::scope(|s| {
        for t in 0..threads {
            let f = &f;
            s.spawn(move || {
                for i in 0..per {
                    f(t * 7919 + i as usize);
                }
            });
        }
    });
    start.elapsed()
}

fn stores(c: &mut Criterion) {
    for (nkeys, threads) in [(1, 1), (1, 2), (100_000, 1), (100_000, 2)] {
        let mut g = c.benchmark_group(format!("check/{nkeys}keys/{threads}threads"));
        let keys = keys(nkeys);

        let ours = Arc::new(MemoryStore::new());
        let limits = [Limit::new(quota(), Algorithm::Gcra)];
        for k in &keys {
            ready(ours.check(k, &limits, NonZeroU32::MIN)).unwrap();
        }
        g.bench_function("memory_store_gcra", |b| {
            b.iter_custom(|iters| {
                spread(threads, iters, |i| {
                    let k = &keys[i % nkeys];
                    let d = ready(ours.check(k, &limits, NonZeroU32::MIN)).unwrap();
                    black_box(d.is_allowed());
                })
            });
        });

        g.bench_function("memory_store_gcra_now", |b| {
            b.iter_custom(|iters| {
                spread(threads, iters, |i| {
                    let k = &keys[i % nkeys];
                    let d = ours.check_now(k, &limits, NonZeroU32::MIN).unwrap();
                    black_box(d.is_allowed());
                })
            });
        });

        let gov = governor::RateLimiter::keyed(governor::Quota::per_second(
            NonZeroU32::new(RATE).unwrap(),
        ));
        for k in &keys {
            let _ = gov.check_key(k);
        }
        g.bench_function("governor_keyed", |b| {
            b.iter_custom(|iters| {
                spread(threads, iters, |i| {
                    black_box(gov.check_key(&keys[i % nkeys]).is_ok());
                })
            });
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = transitions, stores
}
criterion_main!(benches);

//! Measures the memory a `MemoryStore` holds per key, from the process's resident set.
//!
//! `cargo run --release -p bench --bin memory_per_key -- [algorithm] [keys]`
//!
//! Inserts `keys` (default 1,000,000) distinct 15-byte keys, one check each, and prints the
//! growth of VmRSS divided by the number of keys. Keys of up to 22 bytes are stored inside the
//! store's 64-byte entry; a longer key's own heap allocation would count in that figure too (on
//! glibc a 32-byte `Box<str>` takes a 48-byte chunk). So does the state's, for the algorithms
//! that box it (the sliding window log).

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use rate_limit_core::{Algorithm, Limit, ManualClock, MemoryStore, Quota, Store};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let alg: Algorithm = args
        .next()
        .as_deref()
        .unwrap_or("gcra")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let n: usize = args
        .next()
        .map_or(1_000_000, |s| s.parse().unwrap_or(1_000_000));
    let clock = ManualClock::new(Duration::from_secs(1_800_000_000));
    let store = MemoryStore::builder()
        .max_keys(NonZeroUsize::new(n * 2).unwrap_or(NonZeroUsize::MIN))
        .clock(clock)
        .build();
    let limits = [Limit::new(
        Quota::per_hour(NonZeroU32::new(100).unwrap_or(NonZeroU32::MIN)),
        alg,
    )];
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut key = String::with_capacity(16);
    let before = rss_bytes();
    for i in 0..n {
        use std::fmt::Write as _;
        key.clear();
        let _ = write!(key, "client-{i:08}");
        let mut f = store.check(&key, &limits, NonZeroU32::MIN);
        let _ = f.as_mut().poll(&mut cx);
    }
    let after = rss_bytes();
    assert_eq!(store.len(), n);
    let per_key = (after - before) as f64 / n as f64;
    println!(
        "{alg}: {n} keys (15-byte keys), RSS grew {:.1} MiB = {per_key:.1} bytes per key",
        (after - before) as f64 / 1_048_576.0
    );
}

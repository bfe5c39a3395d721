//! Helpers for tests that replay a seeded sequence of checks against two stores and compare
//! what they decide.

use std::time::Duration;

use rate_limit_core::Decision;

/// xorshift64*: a fixed, seeded sequence, so that a failure can be replayed from its seed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next number of the sequence.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The next number, below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// One limit's snapshot: allowed, limit, remaining, reset after (µs), retry after (µs).
pub type SnapshotMicros = (bool, u32, u32, u128, Option<u128>);

/// Every snapshot of `d` with its durations in whole microseconds, rounded up: the sliding
/// window counter finds the exact instant a weighted count fits, which in nanosecond ticks may
/// fall inside a microsecond; Redis, counting in microseconds, answers the end of that
/// microsecond.
pub fn snapshot_micros(d: &Decision) -> Vec<SnapshotMicros> {
    let us = |d: Duration| d.as_nanos().div_ceil(1000);
    d.snapshots()
        .iter()
        .map(|s| {
            (
                s.is_allowed(),
                s.limit(),
                s.remaining(),
                us(s.reset_after()),
                s.retry_after().map(us),
            )
        })
        .collect()
}

//! The shared-lock path: a check of one GCRA or token-bucket limit on a key the shard already
//! holds.
//!
//! Such an entry keeps its whole state in one atomic word (see [`Stored`](super::Stored)): a
//! GCRA state is its theoretical arrival time (TAT), and a token bucket's missing tokens and the
//! instant it is full again are packed into one `u64` ([`pack`]). So such a check needs no exclusive
//! access: it takes the shard's read lock, finds the entry, runs the same transition as every
//! other path ([`gcra::apply`], [`token_bucket::apply`]) on the state it loaded, and writes the
//! new state by compare-and-swap from the word it decided on; if another check moved the word
//! in between, it decides again on the new one. Every other transition of an entry (a new key, a
//! state that is full again and leaves the shard, a token bucket that no longer packs, a sweep,
//! a refund, several limits at once) takes the write lock, which excludes this path: so each
//! transition of a state, on either path, acts on the value the one before it left, as under
//! one mutex.
//!
//! Threads checking one hot key then share the shard's lock (one atomic add each) rather than
//! queue for it, as governor's keyed limiter does with its own compare-and-swap of a TAT.

use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Shard, Stored, entry_hash};
use crate::algorithm::gcra::{self, GcraState};
use crate::algorithm::token_bucket::{self, TokenBucketState};
use crate::algorithm::{Algorithm, Raw};
use crate::limit::Limit;
use crate::quota::Params;

/// Decides one GCRA or token-bucket `limit` for the key hashed `key_hash` under the shard's read
/// lock, if it can without the write lock: the shard holds the key's entry, its state is in its
/// word, no sweep is due, and the state is not full again after the check (which would remove
/// the entry). `None` leaves the check to the write-locked path, which then decides as if this
/// one had not looked.
#[inline]
pub(super) fn check_one(
    shard: &Shard,
    key: &str,
    key_hash: u64,
    limit: &Limit,
    now: u64,
    cost: u64,
    commit: bool,
) -> Option<Raw> {
    if !matches!(limit.algorithm(), Algorithm::Gcra | Algorithm::TokenBucket) {
        return None;
    }
    let inner = shard.0.read().unwrap_or_else(PoisonError::into_inner);
    if now >= inner.next_sweep {
        return None;
    }
    let id = limit.id();
    let entries = &inner.entries;
    let &i = inner.index.find(entry_hash(key_hash, id), |&i| {
        entries[i as usize].is(key, id)
    })?;
    let e = entries.get(i as usize)?;
    let p = limit.nanos();
    // The entry's limit id names its algorithm, so the state is the limit's.
    match e.stored {
        Stored::Gcra => swap(&e.word, |tat| {
            // As the write-locked path hands the entry's state to the transition (`take`).
            let mut state = Some(GcraState { tat });
            let raw = gcra::apply(&mut state, now, p, cost, commit);
            // Full again: the entry must leave the shard, under the write lock.
            Some((raw, state?.tat))
        }),
        Stored::TokenBucket { base } => swap(&e.word, |word| {
            let mut state = Some(unpack(word, base, p));
            let raw = token_bucket::apply(&mut state, now, p, cost, commit);
            // Full again, or too far from its base to pack: the write-locked path stores it.
            Some((raw, pack(&state?, base, p)?))
        }),
        Stored::State(_) => None,
    }
}

/// Decides on the state in `word` with `decide` (the answer and the new word, or `None` to
/// leave the check to the write lock) and swaps the new word in, deciding again if another
/// check moved it in between.
#[inline]
fn swap(word: &AtomicU64, mut decide: impl FnMut(u64) -> Option<(Raw, u64)>) -> Option<Raw> {
    let mut seen = word.load(Ordering::Acquire);
    loop {
        let (raw, new) = decide(seen)?;
        if new == seen {
            return Some(raw);
        }
        match word.compare_exchange_weak(seen, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(raw),
            Err(now_there) => seen = now_there,
        }
    }
}

/// The high bits of a packed token bucket that say how many bits its missing tokens take.
const LEN_BITS: u32 = 6;

/// The bits left for the missing tokens and the time together.
const BODY_BITS: u32 = 64 - LEN_BITS;

/// `n` low bits set, for `n` up to [`BODY_BITS`].
#[inline]
fn low_bits(n: u32) -> u64 {
    (1 << n.min(BODY_BITS)) - 1
}

/// A token bucket's state in one word: how many tokens it misses (its burst less its tokens,
/// 1 to 2^32 - 1) in as many bits as that takes, the number of those bits in the top 6, and
/// when the bucket is full again, in nanoseconds after `base` (its refill time when it was stored
/// under the write lock), in the bits left. Exact both ways ([`unpack`]), since the bucket is
/// full again a whole number of intervals per missing token after its refill time. `None` when
/// that instant comes before `base`, or too long after it for the bits left: 2^57 ns (4.5 years)
/// with one token missing, 2^26 ns (67 ms) with 2^32 - 1. Such a bucket is kept unpacked, and
/// decided under the write lock, which packs it again from a new base.
#[inline]
pub(super) fn pack(state: &TokenBucketState, base: u64, p: &Params) -> Option<u64> {
    let missing = p.burst.checked_sub(u64::from(state.tokens))?;
    let full_at = state.last.checked_add(missing.checked_mul(p.interval)?)?;
    let off = full_at.checked_sub(base)?;
    let len = 64 - missing.leading_zeros();
    let time_bits = BODY_BITS.checked_sub(len)?;
    (off <= low_bits(time_bits))
        .then_some((u64::from(len) << BODY_BITS) | (missing << time_bits) | off)
}

/// The token bucket [`pack`] packed into `word` with `base`.
#[inline]
pub(super) fn unpack(word: u64, base: u64, p: &Params) -> TokenBucketState {
    let (missing, full_at) = fields(word, base);
    TokenBucketState {
        tokens: u32::try_from(p.burst.saturating_sub(missing)).unwrap_or(u32::MAX),
        // Within `u64` by construction: `pack` added these to `last` without overflow.
        last: full_at.saturating_sub(missing.saturating_mul(p.interval)),
    }
}

/// When the token bucket packed into `word` with `base` is full again.
#[inline]
pub(super) fn packed_full_at(word: u64, base: u64) -> u64 {
    fields(word, base).1
}

/// The missing tokens and the instant full again of a packed token bucket.
#[inline]
fn fields(word: u64, base: u64) -> (u64, u64) {
    // `pack` writes at most 58 for the length; a word is only ever written by `pack`.
    let len = u32::try_from(word >> BODY_BITS).unwrap_or(0).min(BODY_BITS);
    let time_bits = BODY_BITS - len;
    let missing = (word & low_bits(BODY_BITS))
        .checked_shr(time_bits)
        .unwrap_or(0);
    (missing, base.saturating_add(word & low_bits(time_bits)))
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::Quota;

    fn params(limit: u32, burst: u32) -> Params {
        Quota::per_second(NonZeroU32::new(limit).unwrap())
            .burst(NonZeroU32::new(burst).unwrap())
            .unwrap()
            .params(1)
    }

    #[test]
    fn a_packed_bucket_unpacks_to_itself() {
        let p = params(1_000, 50); // 1 ms an interval
        for (tokens, last, base) in [
            (0, 5_000, 5_000),
            (49, 7_123, 5_000),
            (10, 1 << 40, 1 << 40),
        ] {
            let s = TokenBucketState { tokens, last };
            let word = pack(&s, base, &p).unwrap();
            assert_eq!(unpack(word, base, &p), s);
            let full_at = last + u64::from(50 - tokens) * 1_000_000;
            assert_eq!(packed_full_at(word, base), full_at);
        }
    }

    #[test]
    fn a_bucket_full_again_too_late_for_its_bits_does_not_pack() {
        // A burst of 2^32 - 1 at 1 ns, all missing: 4.29 s of refill, past its 26 bits of time.
        let p = Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap())
            .burst(NonZeroU32::MAX)
            .unwrap()
            .params(1);
        assert_eq!(p.interval, 1);
        let s = TokenBucketState {
            tokens: 0,
            last: 1_000,
        };
        assert_eq!(pack(&s, 1_000, &p), None);
        // Half of it missing: 31 bits of tokens, 27 of time, 2.1 s: too long still; a
        // thousand missing: 1 µs, which fits.
        let s = |tokens| TokenBucketState { tokens, last: 0 };
        assert_eq!(pack(&s(1 << 31), 0, &p), None);
        let word = pack(&s(u32::MAX - 1_000), 0, &p).unwrap();
        assert_eq!(unpack(word, 0, &p), s(u32::MAX - 1_000));
        // Before its base: never packed.
        assert_eq!(pack(&s(u32::MAX - 1_000), 5_000, &p), None);
        // One missing at 1 per second: 2^57 ns of time, years.
        let p = params(1, 10);
        let s = TokenBucketState {
            tokens: 9,
            last: 1_000,
        };
        let word = pack(&s, 0, &p).unwrap();
        assert_eq!(packed_full_at(word, 0), 1_000_001_000);
        // The edge: full again exactly 2^57 - 1 ns after the base packs, a nanosecond later not.
        let edge = (1u64 << 57) - 1 - 1_000_000_000;
        let s = |last| TokenBucketState { tokens: 9, last };
        let word = pack(&s(edge), 0, &p).unwrap();
        assert_eq!(unpack(word, 0, &p), s(edge));
        assert_eq!(packed_full_at(word, 0), (1 << 57) - 1);
        assert_eq!(pack(&s(edge + 1), 0, &p), None);
    }
}

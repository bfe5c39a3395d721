//! The shared-lock path: a check of one GCRA limit on a key the shard already holds.
//!
//! A GCRA state is one instant, its theoretical arrival time (TAT), which is also the instant
//! the state is full again: a GCRA entry keeps it in its `expires` atomic alone (see
//! [`Entry`](super::Entry)). So such a check needs no exclusive access: it takes the shard's
//! read lock, finds the entry, runs the same transition as every other path
//! ([`gcra::apply`]) on the TAT it loaded, and writes the new TAT by compare-and-swap from the
//! one it decided on; if another check moved the TAT in between, it decides again on the new
//! one. Every other transition of an entry (a new key, a state that is full again and leaves
//! the shard, a sweep, a refund, several limits at once) takes the write lock, which excludes
//! this path: so each transition of a TAT, on either path, acts on the value the one before it
//! left, as under one mutex.
//!
//! Threads checking one hot key then share the shard's lock (one atomic add each) rather than
//! queue for it, as governor's keyed limiter does with its own compare-and-swap of a TAT.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use super::{Shard, entry_hash};
use crate::algorithm::gcra::{self, GcraState};
use crate::algorithm::{Algorithm, Raw};
use crate::limit::Limit;

/// Decides one GCRA `limit` for the key hashed `key_hash` under the shard's read lock, if it can
/// without the write lock: the limit is GCRA, the shard holds the key's entry, no sweep is due,
/// and the state is not full again after the check (which would remove the entry). `None` leaves
/// the check to the write-locked path, which then decides as if this one had not looked.
#[inline]
pub(super) fn check_one_gcra(
    shard: &Shard,
    key: &str,
    key_hash: u64,
    limit: &Limit,
    now: u64,
    cost: u64,
    commit: bool,
) -> Option<Raw> {
    if limit.algorithm() != Algorithm::Gcra {
        return None;
    }
    let inner = shard.0.read().unwrap_or_else(PoisonError::into_inner);
    if now >= inner.next_sweep {
        return None;
    }
    let id = limit.id();
    let entries = &inner.entries;
    let &i = inner.index.find(entry_hash(key_hash, id), |&i| {
        let e = &entries[i as usize];
        e.limit == id && e.key.as_bytes() == key.as_bytes()
    })?;
    let tat = &entries.get(i as usize)?.expires;
    let p = limit.nanos();
    let mut seen = tat.load(Ordering::Acquire);
    loop {
        // As the write-locked path hands the entry's state to the transition (`state_mut`).
        let mut state = Some(GcraState { tat: seen });
        let raw = gcra::apply(&mut state, now, p, cost, commit);
        // Full again: the entry must leave the shard, under the write lock.
        let new = state?.tat;
        if new == seen {
            return Some(raw);
        }
        match tat.compare_exchange_weak(seen, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(raw),
            Err(now_there) => seen = now_there,
        }
    }
}

//! Sliding window log: remembers every admission for one period; exact in any window. See
//! [`LogState`] for its memory, its cost and what a clock stepping back does.

use std::collections::VecDeque;

use super::Raw;
use crate::quota::Params;

/// [`Algorithm::SlidingWindowLog`](crate::Algorithm::SlidingWindowLog)'s state: admission
/// times, oldest first, each with the running total of the costs admitted up to it.
///
/// Memory: admissions at the same tick share an entry and every entry is in the window when
/// one is added, so a log holds at most `limit` entries. In a
/// [`MemoryStore`](crate::MemoryStore) they take 16 bytes each, boxed beside the key's 64-byte
/// entry, in a buffer never more than four times what it holds (or 16 entries): at most
/// `64 × limit` bytes per key and limit. On Redis each takes 12 bytes of one string (see
/// [`RedisStore`](crate::RedisStore)'s state).
///
/// Cost: what is in the window and how long a denial must wait are read from the running
/// totals by binary search, so a check costs O(log n) in the log's length, never a walk over it.
///
/// A clock that goes back (now before the newest entry, as with instances whose clocks
/// disagree) is taken as standing still at the newest entry: the window is read as of that
/// instant, which only lets more leave it, and an admission joins the newest entry. A client
/// with budget left is admitted; a denial's wait is counted from the newest entry, so it may be
/// short by the step back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogState {
    /// (tick, running total after it).
    pub(crate) entries: VecDeque<(u64, u64)>,
    /// The running total before the oldest entry.
    pub(crate) base: u64,
}

impl LogState {
    /// The cost in the log.
    fn used(&self) -> u64 {
        self.entries
            .back()
            .map_or(0, |&(_, total)| total.wrapping_sub(self.base))
    }

    /// Drops the entries at or before `cutoff`.
    fn expire(&mut self, cutoff: u64) {
        let Some(&(oldest, _)) = self.entries.front() else {
            return;
        };
        if oldest > cutoff {
            return;
        }
        let k = self.entries.partition_point(|&(t, _)| t <= cutoff);
        self.base = self.entries[k - 1].1;
        self.entries.drain(..k);
        // Give memory back once three quarters of the buffer stand empty.
        if self.entries.capacity() > 16 && self.entries.len() * 4 < self.entries.capacity() {
            self.entries.shrink_to(self.entries.len() * 2);
        }
    }
}

pub(crate) fn apply(
    state: &mut Option<Box<LogState>>,
    now: u64,
    p: &Params,
    cost: u64,
    commit: bool,
) -> Raw {
    // Entries are kept in order; a clock that goes back is treated as standing still.
    let now = state
        .as_ref()
        .and_then(|s| s.entries.back())
        .map_or(now, |&(t, _)| now.max(t));
    if let (Some(s), Some(cutoff)) = (state.as_mut(), now.checked_sub(p.period)) {
        s.expire(cutoff);
    }
    let used = state.as_ref().map_or(0, |s| s.used());
    let allowed = used.saturating_add(cost) <= p.limit;
    let retry_after = match state.as_ref() {
        Some(s) if !allowed && cost <= p.limit => {
            // The oldest entries that together free enough must leave the window first.
            let to_free = used + cost - p.limit;
            let i = s
                .entries
                .partition_point(|&(_, total)| total.wrapping_sub(s.base) < to_free);
            s.entries.get(i).map(|&(t, _)| t + p.period - now)
        }
        _ => None,
    };
    if allowed && commit {
        let s = state.get_or_insert_with(Box::default);
        let total = s.entries.back().map_or(s.base, |&(_, total)| total);
        match s.entries.back_mut() {
            Some((t, total)) if *t == now => *total = total.wrapping_add(cost),
            _ => s.entries.push_back((now, total.wrapping_add(cost))),
        }
    }
    if state.as_ref().is_some_and(|s| s.entries.is_empty()) {
        *state = None;
    }
    let (used, newest) = state
        .as_ref()
        .map_or((0, None), |s| (s.used(), s.entries.back().map(|&(t, _)| t)));
    Raw {
        allowed,
        capacity: p.limit,
        remaining: p.limit - used.min(p.limit),
        reset_after: newest.map_or(0, |t| t + p.period - now),
        retry_after,
    }
}

/// Takes up to `cost` units off the *oldest* entries logged at or after the charge time `at`,
/// oldest first; nothing if `at` has left the window (as in a check, a clock behind the newest
/// entry stands at it).
///
/// The charge was logged at or after `at` (a check is logged no earlier than it is sent), so the
/// earliest admissions from `at` on are the earliest it can be. Taking those, rather than the
/// newest, never frees budget sooner than if the charge had never been made: where the charge
/// was one of them, the refund is its exact inverse, and otherwise what stays in the log leaves
/// the window no earlier than what would have stayed. Taking the newest would leave the charge
/// and drop a later admission, whose budget would come back too late but the charge's too soon.
/// Once `at` has left the window, the charge may have left too: nothing is given back.
///
/// Work: O(log n) to find `at`, and O(k) for the k entries logged since, which a prompt refund
/// keeps few.
pub(crate) fn refund(state: &mut Option<Box<LogState>>, now: u64, p: &Params, cost: u64, at: u64) {
    let Some(s) = state.as_mut() else {
        return;
    };
    let Some(&(newest, _)) = s.entries.back() else {
        *state = None;
        return;
    };
    let now = now.max(newest);
    if at.saturating_add(p.period) <= now {
        return;
    }
    let first = s.entries.partition_point(|&(t, _)| t < at);
    let mut before = first.checked_sub(1).map_or(s.base, |i| s.entries[i].1);
    // Each entry from `first` on loses what is still to give back, up to its cost, and every
    // running total from there on drops by what has been given back up to it.
    let (mut left, mut given) = (cost, 0u64);
    let tail: Vec<(u64, u64)> = s.entries.drain(first..).collect();
    for (t, total) in tail {
        let c = total.wrapping_sub(before);
        before = total;
        let take = c.min(left);
        left -= take;
        given += take;
        if take < c {
            s.entries.push_back((t, total.wrapping_sub(given)));
        }
    }
    if s.entries.is_empty() {
        *state = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Quota;
    use std::num::NonZeroU32;

    fn params(limit: u32) -> Params {
        Quota::per_second(NonZeroU32::new(limit).unwrap()).params(1_000_000)
    }

    #[test]
    fn exact_in_any_window() {
        let p = params(3);
        let mut s = None;
        for t in [0, 400, 800] {
            assert!(apply(&mut s, t, &p, 1, true).allowed);
        }
        let r = apply(&mut s, 900, &p, 1, true);
        assert_eq!((r.allowed, r.retry_after), (false, Some(100)));
        assert!(!apply(&mut s, 999, &p, 1, true).allowed);
        let r = apply(&mut s, 1000, &p, 1, true);
        assert_eq!((r.allowed, r.remaining, r.reset_after), (true, 0, 1000));
    }

    #[test]
    fn retry_waits_for_enough_cost_to_expire() {
        let p = params(4);
        let mut s = None;
        assert!(apply(&mut s, 0, &p, 1, true).allowed);
        assert!(apply(&mut s, 100, &p, 1, true).allowed);
        assert!(apply(&mut s, 200, &p, 2, true).allowed);
        let r = apply(&mut s, 300, &p, 2, true);
        assert_eq!(r.retry_after, Some(800));
    }

    #[test]
    fn a_clock_step_back_does_not_lock_out_a_client_with_budget_left() {
        let p = params(3);
        let mut s = None;
        assert!(apply(&mut s, 1_000, &p, 1, true).allowed);
        // 50 ticks earlier (another instance's clock): counted as at the newest entry.
        let r = apply(&mut s, 950, &p, 1, true);
        assert_eq!((r.allowed, r.remaining, r.reset_after), (true, 1, 1000));
        assert!(apply(&mut s, 500, &p, 1, true).allowed);
        let r = apply(&mut s, 900, &p, 1, true);
        assert_eq!((r.allowed, r.retry_after), (false, Some(1000)));
        // Back in step, the window slides as usual.
        assert!(apply(&mut s, 2_000, &p, 3, true).allowed);
    }

    #[test]
    fn decisions_match_a_plain_walk_over_the_log() {
        // A log of (tick, cost) walked in full, as the definition reads.
        fn reference(log: &mut Vec<(u64, u64)>, now: u64, p: &Params, cost: u64) -> Raw {
            log.retain(|&(t, _)| t + p.period > now);
            let used: u64 = log.iter().map(|&(_, c)| c).sum();
            let allowed = used + cost <= p.limit;
            let retry_after = (!allowed && cost <= p.limit).then(|| {
                let mut freed = 0;
                let &(t, _) = log
                    .iter()
                    .find(|&&(_, c)| {
                        freed += c;
                        freed >= used + cost - p.limit
                    })
                    .unwrap();
                t + p.period - now
            });
            if allowed {
                match log.last_mut() {
                    Some((t, c)) if *t == now => *c += cost,
                    _ => log.push((now, cost)),
                }
            }
            let used: u64 = log.iter().map(|&(_, c)| c).sum();
            Raw {
                allowed,
                capacity: p.limit,
                remaining: p.limit - used,
                reset_after: log.last().map_or(0, |&(t, _)| t + p.period - now),
                retry_after,
            }
        }
        let p = params(50);
        let (mut s, mut log) = (None, Vec::new());
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut now = 10_000;
        for step in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            now += [0, 1, 7, 40, 300][(x % 5) as usize];
            let cost = 1 + (x >> 8) % 20;
            let r = apply(&mut s, now, &p, cost, true);
            assert_eq!(r, reference(&mut log, now, &p, cost), "step {step}");
            assert!(s.as_ref().map_or(0, |s| s.entries.len()) <= 50);
        }
    }

    #[test]
    fn running_totals_may_wrap() {
        let p = params(10);
        let mut s = Some(Box::new(LogState {
            entries: VecDeque::from([(0, u64::MAX - 2)]),
            base: u64::MAX - 6,
        }));
        // 4 in the log; 6 more fit, across the wrap of the running total.
        let r = apply(&mut s, 100, &p, 6, true);
        assert_eq!((r.allowed, r.remaining), (true, 0));
        let r = apply(&mut s, 200, &p, 4, true);
        assert_eq!((r.allowed, r.retry_after), (false, Some(800)));
        assert_eq!(apply(&mut s, 1_000, &p, 4, true).remaining, 0);
    }

    #[test]
    fn memory_is_given_back_as_the_log_empties() {
        let p = params(100_000);
        let mut s = None;
        for t in 0..100_000 {
            apply(&mut s, t / 100, &p, 1, true);
        }
        assert_eq!(s.as_ref().unwrap().entries.len(), 1000);
        // All but the last ten ticks' entries leave the window.
        let r = apply(&mut s, p.period + 989, &p, 1, false);
        assert_eq!(r.remaining, 100_000 - 1_000);
        let log = s.as_ref().unwrap();
        assert_eq!(log.entries.len(), 10);
        assert!(log.entries.capacity() <= 40, "{}", log.entries.capacity());
    }

    #[test]
    fn same_tick_admissions_share_an_entry() {
        let p = params(100);
        let mut s = None;
        for _ in 0..100 {
            apply(&mut s, 5, &p, 1, true);
        }
        assert_eq!(s.as_ref().unwrap().entries.len(), 1);
        apply(&mut s, 2000, &p, 1, false);
        assert_eq!(s, None);
    }

    #[test]
    fn refund_takes_the_oldest_units_charged_since_the_charge_time() {
        let p = params(10);
        let mut s = None;
        refund(&mut s, 0, &p, 1, 0);
        assert_eq!(s, None);
        for (t, c) in [(100, 2), (200, 3), (300, 4)] {
            assert!(apply(&mut s, t, &p, c, true).allowed);
        }
        // 5 from 200 on: all of 200's 3 and two of 300's 4; running totals follow.
        refund(&mut s, 350, &p, 5, 200);
        let log = s.as_ref().unwrap();
        assert_eq!(Vec::from(log.entries.clone()), [(100, 2), (300, 4)]);
        // Nothing charged at or after 350: nothing more is given back.
        refund(&mut s, 350, &p, 5, 350);
        assert_eq!(apply(&mut s, 350, &p, 1, false).remaining, 6);
        // A charge time that has left the window gives nothing, even though 300's entry is in.
        refund(&mut s, 1_150, &p, 5, 150);
        assert_eq!(apply(&mut s, 1_150, &p, 1, false).remaining, 8);
        refund(&mut s, 1_150, &p, 5, 151);
        assert_eq!(apply(&mut s, 1_150, &p, 1, false).remaining, 10);
        assert_eq!(s, None);
    }

    #[test]
    fn refund_keeps_running_totals_across_a_wrap() {
        let p = params(10);
        // 2 at 0, 3 at 100, 4 at 200, the running totals wrapping past u64::MAX.
        let mut s = Some(Box::new(LogState {
            entries: VecDeque::from([(0, u64::MAX - 1), (100, 1), (200, 5)]),
            base: u64::MAX - 3,
        }));
        refund(&mut s, 300, &p, 4, 50);
        let log = s.as_ref().unwrap();
        assert_eq!(
            Vec::from(log.entries.clone()),
            [(0, u64::MAX - 1), (200, 1)]
        );
        assert_eq!(apply(&mut s, 300, &p, 1, false).remaining, 5);
    }

    #[test]
    fn refund_at_full_and_behind_the_newest_entry() {
        let p = params(3);
        let mut s = None;
        assert!(apply(&mut s, 1_000, &p, 3, true).allowed);
        // A caller 50 behind stands at the newest entry.
        refund(&mut s, 950, &p, 1, 940);
        assert_eq!(apply(&mut s, 950, &p, 1, false).remaining, 1);
        refund(&mut s, 950, &p, 7, 940);
        assert_eq!(s, None);
    }

    #[test]
    fn refunds_match_a_plain_walk_over_the_log() {
        // (tick, cost) entries; a refund takes units off the oldest entries at or after `at`.
        fn reference(log: &mut Vec<(u64, u64)>, now: u64, p: &Params, cost: u64, at: u64) {
            let now = log.last().map_or(now, |&(t, _)| now.max(t));
            if at + p.period <= now {
                return;
            }
            let mut left = cost;
            for (_, c) in log.iter_mut().filter(|(t, _)| *t >= at) {
                let take = left.min(*c);
                *c -= take;
                left -= take;
            }
            log.retain(|&(_, c)| c > 0);
        }
        let p = params(40);
        let (mut s, mut log) = (None, Vec::new());
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut now: u64 = 10_000;
        for step in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            now += [0, 1, 7, 40, 300][(x % 5) as usize];
            let cost = 1 + (x >> 8) % 12;
            if (x >> 20).is_multiple_of(3) {
                let at = now.saturating_sub((x >> 24) % 1_200);
                refund(&mut s, now, &p, cost, at);
                reference(&mut log, now, &p, cost, at);
            } else if apply(&mut s, now, &p, cost, true).allowed {
                match log.last_mut() {
                    Some((t, c)) if *t == now => *c += cost,
                    _ => log.push((now, cost)),
                }
            }
            log.retain(|&(t, _)| t + p.period > now);
            let r = apply(&mut s, now, &p, 1, false);
            let used: u64 = log.iter().map(|&(_, c)| c).sum();
            assert_eq!(r.remaining, p.limit - used, "step {step}");
        }
    }
}

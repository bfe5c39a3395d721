//! Sliding window counter: the current aligned window's count plus the previous one's, weighted
//! by the share of the previous window the sliding window still covers.
//!
//! A request of cost `c` passes when `prev * (P - e) + (cur + c) * P <= limit * P`, where `e` is
//! the time since the current window began: exact integer arithmetic, no floats. See
//! [`Algorithm::SlidingWindow`](crate::Algorithm::SlidingWindow) for the error bound.
//!
//! When time steps back behind the stored window's start (a clock stepped back, or instances
//! sharing a state whose clocks disagree), the check counts into that window as at its start,
//! where the previous window still weighs fully: a client with budget left is admitted, and
//! every wait is counted on the caller's clock. Behind by less (inside the stored window), the
//! previous window simply weighs more, as it did earlier in the window.

use super::Raw;
use crate::quota::Params;

/// The current window's start tick, its count, and the previous window's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindowState {
    pub(crate) start: u64,
    pub(crate) cur: u32,
    pub(crate) prev: u32,
}

pub(crate) fn apply(
    state: &mut Option<SlidingWindowState>,
    now: u64,
    p: &Params,
    cost: u64,
    commit: bool,
) -> Raw {
    // A stored window newer than `now` (a clock behind the one that wrote it) is counted into
    // as at its start; `lag` is how far the caller's clock is behind that start, which every
    // wait adds on the caller's clock.
    let caller = now;
    let now = state.map_or(now, |s| now.max(s.start));
    let lag = now - caller;
    let start = now - now % p.period;
    let (mut cur, prev) = match *state {
        Some(s) if s.start == start => (u64::from(s.cur), u64::from(s.prev)),
        Some(s) if s.start.saturating_add(p.period) == start => (0, u64::from(s.cur)),
        _ => (0, 0),
    };
    let period = u128::from(p.period);
    let elapsed = u128::from(now - start);
    // Previous window's weight, in units of cost times ticks.
    let carried = u128::from(prev) * (period - elapsed);
    let budget = u128::from(p.limit) * period;
    let fits = |cur: u64, cost: u64| carried + u128::from(cur + cost) * period <= budget;
    let allowed = cost <= p.limit && fits(cur, cost);
    let retry_after = if allowed || cost > p.limit {
        None
    } else if cur + cost <= p.limit {
        // Later in this window, once prev's weight has dropped far enough.
        let k = u128::from(p.limit - cur - cost) * period / u128::from(prev);
        Some(to_u64(period - k - elapsed) + lag)
    } else {
        // In the next window, where `cur` becomes the weighted previous count.
        let k = u128::from(p.limit - cost) * period / u128::from(cur);
        Some(to_u64(2 * period - k - elapsed) + lag)
    };
    if allowed && commit {
        cur += cost;
    }
    *state = (cur > 0 || prev > 0).then(|| SlidingWindowState {
        start,
        cur: narrow(cur),
        prev: narrow(prev),
    });
    let weighted_prev = to_u64(carried.div_ceil(period));
    let end = start + p.period;
    Raw {
        allowed,
        capacity: p.limit,
        remaining: p.limit.saturating_sub(weighted_prev + cur),
        reset_after: if cur > 0 {
            end + p.period - caller
        } else if prev > 0 {
            end - caller
        } else {
            0
        },
        retry_after,
    }
}

/// Takes `cost` off the count of the window the charge time `at` falls in: the stored window's
/// count, or the previous window's, never below zero. A charge of an older window gives nothing
/// back: it no longer weighs on any decision.
pub(crate) fn refund(state: &mut Option<SlidingWindowState>, p: &Params, cost: u64, at: u64) {
    let Some(s) = state.as_mut() else {
        return;
    };
    let charged = at - at % p.period;
    let less = |n: u32| narrow(u64::from(n).saturating_sub(cost));
    if charged == s.start {
        s.cur = less(s.cur);
    } else if charged.saturating_add(p.period) == s.start {
        s.prev = less(s.prev);
    } else {
        return;
    }
    if s.cur == 0 && s.prev == 0 {
        *state = None;
    }
}

/// Counts never exceed the limit, a `u32`.
fn narrow(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn to_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
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
    fn previous_window_is_weighted_by_overlap() {
        let p = params(10);
        let mut s = None;
        assert!(apply(&mut s, 1_900, &p, 10, true).allowed);
        // At 2_250, 75% of the previous window overlaps: 7.5 carried, 2 fit.
        let r = apply(&mut s, 2_250, &p, 1, false);
        assert_eq!((r.allowed, r.remaining), (true, 2));
        assert!(apply(&mut s, 2_250, &p, 2, true).allowed);
        let r = apply(&mut s, 2_250, &p, 1, true);
        // Needs 10*(1000 - e) <= (10-2-1)*1000 -> e >= 300.
        assert_eq!((r.allowed, r.retry_after), (false, Some(50)));
        assert!(!apply(&mut s, 2_299, &p, 1, true).allowed);
        assert!(apply(&mut s, 2_300, &p, 1, true).allowed);
    }

    #[test]
    fn full_window_waits_into_the_next() {
        let p = params(4);
        let mut s = None;
        assert!(apply(&mut s, 0, &p, 4, true).allowed);
        let r = apply(&mut s, 500, &p, 2, true);
        // Next window: 4*(1000 - e) <= 2*1000 -> e >= 500, i.e. t = 1500.
        assert_eq!(r.retry_after, Some(1000));
        assert!(!apply(&mut s, 1_499, &p, 2, true).allowed);
        assert!(apply(&mut s, 1_500, &p, 2, true).allowed);
    }

    #[test]
    fn clock_going_back_counts_into_the_stored_window_and_waits_on_the_callers_clock() {
        let p = params(4);
        let mut s = None;
        assert!(apply(&mut s, 1_000, &p, 3, true).allowed);
        // 40 behind the stored window's start: 1 more fits, and the state outlives both
        // windows counted from the caller's clock.
        let r = apply(&mut s, 960, &p, 1, true);
        assert_eq!((r.allowed, r.reset_after), (true, 2_040));
        // Full: 1 more fits once the weighted 4 drop to 3, at 2250, 1290 from 960.
        let r = apply(&mut s, 960, &p, 1, true);
        assert_eq!((r.allowed, r.retry_after), (false, Some(1_290)));
        assert!(!apply(&mut s, 2_249, &p, 1, true).allowed);
        assert!(apply(&mut s, 2_250, &p, 1, true).allowed);
    }

    #[test]
    fn state_vanishes_after_two_idle_windows() {
        let p = params(4);
        let mut s = None;
        apply(&mut s, 0, &p, 1, true);
        apply(&mut s, 1_500, &p, 1, false);
        assert!(s.is_some());
        apply(&mut s, 2_000, &p, 1, false);
        assert_eq!(s, None);
    }

    #[test]
    fn refund_gives_back_to_the_current_or_previous_window() {
        let p = params(10);
        let mut s = None;
        refund(&mut s, &p, 1, 500);
        assert_eq!(s, None);
        assert!(apply(&mut s, 1_900, &p, 6, true).allowed);
        assert!(apply(&mut s, 2_100, &p, 4, true).allowed);
        // Current window.
        refund(&mut s, &p, 1, 2_050);
        assert_eq!(s.map(|s| (s.start, s.cur, s.prev)), Some((2_000, 3, 6)));
        // Previous window, floored at zero.
        refund(&mut s, &p, 9, 1_950);
        assert_eq!(s.map(|s| (s.start, s.cur, s.prev)), Some((2_000, 3, 0)));
        // Older windows no longer count: nothing.
        refund(&mut s, &p, 3, 950);
        assert_eq!(s.map(|s| s.cur), Some(3));
        refund(&mut s, &p, 3, 2_999);
        assert_eq!(s, None);
    }

    #[test]
    fn refund_after_the_window_rolled_gives_to_the_previous_count() {
        let p = params(4);
        let mut s = None;
        assert!(apply(&mut s, 1_000, &p, 4, true).allowed);
        // At 2_500 the stored window is still [1000, 2000); a peek rolls it.
        assert!(!apply(&mut s, 2_500, &p, 3, false).allowed);
        refund(&mut s, &p, 2, 1_100);
        // 2 left in the previous window, weighing half: 1 carried, 3 fit.
        let r = apply(&mut s, 2_500, &p, 3, false);
        assert_eq!((r.allowed, r.remaining), (true, 3));
    }
}

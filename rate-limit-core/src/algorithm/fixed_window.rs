//! Fixed window: a counter per window, windows aligned to multiples of the period since the Unix
//! epoch so that every instance agrees where a window starts.
//!
//! When time steps back (a clock stepped back, or instances sharing a state whose clocks
//! disagree), the stored window may be newer than the one `now` falls in. The check then counts
//! into that newer window: a client with budget left in it is admitted, and every wait runs to
//! its end on the caller's clock. Counts never exceed the limit in any stored window.

use super::Raw;
use crate::quota::Params;

/// The current window's start tick and what it has admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedWindowState {
    pub(crate) start: u64,
    pub(crate) count: u32,
}

pub(crate) fn apply(
    state: &mut Option<FixedWindowState>,
    now: u64,
    p: &Params,
    cost: u64,
    commit: bool,
) -> Raw {
    let current = now - now % p.period;
    // A stored window newer than `now`'s (a clock behind the one that wrote it) is the window
    // counted into: the caller spends what is left of it, and waits until it ends.
    let (start, mut count) = match *state {
        Some(s) if s.start >= current => (s.start, u64::from(s.count)),
        _ => (current, 0),
    };
    let end = start.saturating_add(p.period);
    let allowed = count.saturating_add(cost) <= p.limit;
    let retry_after = (!allowed && cost <= p.limit).then(|| end - now);
    if allowed && commit {
        count += cost;
    }
    *state = (count > 0).then(|| FixedWindowState {
        start,
        count: narrow(count),
    });
    Raw {
        allowed,
        capacity: p.limit,
        remaining: p.limit - count,
        reset_after: if count > 0 { end - now } else { 0 },
        retry_after,
    }
}

/// Takes `cost` off the count if the charge time `at` falls in the stored window, never below
/// zero; a charge of another window (one gone, or older than a newer stored window) gives
/// nothing back.
pub(crate) fn refund(state: &mut Option<FixedWindowState>, p: &Params, cost: u64, at: u64) {
    let Some(s) = state.as_mut() else {
        return;
    };
    if at - at % p.period != s.start {
        return;
    }
    s.count = narrow(u64::from(s.count).saturating_sub(cost));
    if s.count == 0 {
        *state = None;
    }
}

/// Counts never exceed the limit, a `u32`.
fn narrow(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
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
    fn windows_align_to_the_epoch() {
        let p = params(2);
        let mut s = None;
        assert!(apply(&mut s, 1_250, &p, 2, true).allowed);
        let r = apply(&mut s, 1_999, &p, 1, true);
        assert_eq!(
            (r.allowed, r.retry_after, r.reset_after),
            (false, Some(1), 1)
        );
        let r = apply(&mut s, 2_000, &p, 1, true);
        assert_eq!((r.allowed, r.remaining, r.reset_after), (true, 1, 1000));
    }

    #[test]
    fn cost_above_limit_is_never() {
        let p = params(2);
        let r = apply(&mut None, 0, &p, 3, true);
        assert_eq!((r.allowed, r.retry_after), (false, None));
    }

    #[test]
    fn clock_going_back_counts_into_the_newer_window() {
        // Two instances 50 ms apart: the one ahead opened the window [2000, 3000).
        let p = params(3);
        let mut s = None;
        assert!(apply(&mut s, 2_010, &p, 1, true).allowed);
        let r = apply(&mut s, 1_960, &p, 1, true);
        assert_eq!((r.allowed, r.remaining, r.reset_after), (true, 1, 1_040));
        assert!(apply(&mut s, 1_970, &p, 1, true).allowed);
        let r = apply(&mut s, 1_980, &p, 1, true);
        assert_eq!((r.allowed, r.retry_after), (false, Some(1_020)));
        assert_eq!(s.map(|s| (s.start, s.count)), Some((2_000, 3)));
    }

    #[test]
    fn refund_gives_back_to_the_window_charged_only() {
        let p = params(3);
        let mut s = None;
        refund(&mut s, &p, 1, 1_000);
        assert_eq!(s, None);
        assert!(apply(&mut s, 1_100, &p, 3, true).allowed);
        refund(&mut s, &p, 2, 1_050);
        assert_eq!(apply(&mut s, 1_200, &p, 1, false).remaining, 2);
        // More than the count: empty, no state.
        refund(&mut s, &p, 5, 1_999);
        assert_eq!(s, None);
        // A charge of the previous window gives nothing to this one.
        assert!(apply(&mut s, 2_100, &p, 3, true).allowed);
        refund(&mut s, &p, 1, 1_999);
        assert_eq!(apply(&mut s, 2_100, &p, 1, false).remaining, 0);
    }

    #[test]
    fn refund_of_a_charge_older_than_a_newer_stored_window_gives_nothing() {
        let p = params(3);
        let mut s = None;
        assert!(apply(&mut s, 2_010, &p, 1, true).allowed);
        // A caller 50 behind charged into [2000, 3000) at 1_960; its charge time is in the
        // window before.
        assert!(apply(&mut s, 1_960, &p, 1, true).allowed);
        refund(&mut s, &p, 1, 1_960);
        assert_eq!(s.map(|s| s.count), Some(2));
    }
}

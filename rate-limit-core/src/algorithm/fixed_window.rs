//! Fixed window: a counter per window, windows aligned to multiples of the period since the Unix
//! epoch so that every instance agrees where a window starts.

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
    let start = now - now % p.period;
    let end = start.saturating_add(p.period);
    let mut count = match *state {
        Some(s) if s.start == start => u64::from(s.count),
        // A clock that went back into an older window keeps the newer window's count.
        Some(s) if s.start > start => {
            return Raw {
                allowed: false,
                capacity: p.limit,
                remaining: p.limit - u64::from(s.count).min(p.limit),
                reset_after: s.start + p.period - now,
                retry_after: (cost <= p.limit).then(|| s.start + p.period - now),
            };
        }
        _ => 0,
    };
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
    fn clock_going_back_keeps_the_newer_window() {
        let p = params(1);
        let mut s = None;
        assert!(apply(&mut s, 2_100, &p, 1, true).allowed);
        assert!(!apply(&mut s, 1_900, &p, 1, true).allowed);
    }
}

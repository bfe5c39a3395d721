//! Leaky bucket as a meter: each unit of cost pours one emission interval of water in, the
//! bucket drains one tick of water per tick, and a request that would overflow `tau` is denied.
//!
//! When time steps back (a clock stepped back, or instances sharing a state whose clocks
//! disagree), nothing drains before the state's time: the caller is admitted while the level
//! leaves room, and every wait is counted on its own clock, so it includes how far that clock is
//! behind the state's.

use super::Raw;
use crate::quota::Params;

/// Water level (in ticks of draining) at tick `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeakyBucketState {
    pub(crate) level: u64,
    pub(crate) at: u64,
}

pub(crate) fn apply(
    state: &mut Option<LeakyBucketState>,
    now: u64,
    p: &Params,
    cost: u64,
    commit: bool,
) -> Raw {
    // The state's time, if it is ahead of the caller's: no draining is counted before it.
    let at = state.map_or(now, |s| now.max(s.at));
    // How far the caller's clock is behind it: every wait is longer by that on its clock.
    let lag = at - now;
    let mut level = state.map_or(0, |s| s.level.saturating_sub(at - s.at));
    let room = |level: u64| (p.tau - level.min(p.tau)) / p.interval;
    let poured = level.saturating_add(cost.saturating_mul(p.interval));
    let allowed = cost <= p.burst && poured <= p.tau;
    let retry_after = if allowed || cost > p.burst {
        None
    } else {
        Some(poured - p.tau + lag)
    };
    if allowed && commit {
        level = poured;
    }
    *state = (level > 0).then_some(LeakyBucketState { level, at });
    Raw {
        allowed,
        capacity: p.burst,
        remaining: room(level),
        reset_after: if level > 0 { level + lag } else { 0 },
        retry_after,
    }
}

/// Lowers the level by `cost` units of water, drained to `now` first as a check would, and
/// never below empty. Nothing drains before the state's time (a clock behind it).
pub(crate) fn refund(state: &mut Option<LeakyBucketState>, now: u64, p: &Params, cost: u64) {
    let Some(s) = *state else {
        return;
    };
    let at = now.max(s.at);
    let level = s
        .level
        .saturating_sub(at - s.at)
        .saturating_sub(cost.min(p.burst) * p.interval);
    *state = (level > 0).then_some(LeakyBucketState { level, at });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Quota;
    use std::num::NonZeroU32;

    fn params(limit: u32, burst: u32) -> Params {
        let l = NonZeroU32::new(limit).unwrap();
        Quota::per_second(l)
            .burst(NonZeroU32::new(burst).unwrap())
            .unwrap()
            .params(1_000_000)
    }

    #[test]
    fn overflow_is_denied_until_drained() {
        let p = params(10, 2);
        let mut s = None;
        assert!(apply(&mut s, 0, &p, 1, true).allowed);
        assert!(apply(&mut s, 0, &p, 1, true).allowed);
        let r = apply(&mut s, 30, &p, 1, true);
        assert_eq!(
            (r.allowed, r.retry_after, r.reset_after),
            (false, Some(70), 170)
        );
        assert!(apply(&mut s, 100, &p, 1, true).allowed);
    }

    #[test]
    fn drained_meter_holds_no_state() {
        let p = params(10, 2);
        let mut s = None;
        apply(&mut s, 0, &p, 1, true);
        apply(&mut s, 100, &p, 1, false);
        assert_eq!(s, None);
    }

    #[test]
    fn clock_going_back_does_not_drain_and_waits_on_the_callers_clock() {
        let p = params(10, 2);
        let mut s = None;
        assert!(apply(&mut s, 1000, &p, 1, true).allowed);
        // 100 ticks behind: the level is still 100, so one more fits, full again at 1200.
        let r = apply(&mut s, 900, &p, 1, true);
        assert_eq!((r.allowed, r.reset_after), (true, 300));
        let r = apply(&mut s, 900, &p, 1, true);
        // Room again at 1100 on the state's time, 200 ticks from the caller's 900.
        assert_eq!((r.allowed, r.retry_after), (false, Some(200)));
        assert!(!apply(&mut s, 1099, &p, 1, true).allowed);
        assert!(apply(&mut s, 1100, &p, 1, true).allowed);
    }

    #[test]
    fn refund_lowers_the_level_not_below_empty() {
        let p = params(10, 3);
        let mut s = None;
        refund(&mut s, 0, &p, 1);
        assert_eq!(s, None);
        assert!(apply(&mut s, 1000, &p, 3, true).allowed);
        refund(&mut s, 1050, &p, 1);
        // 300 poured, 50 drained, 100 given back.
        assert_eq!(
            s,
            Some(LeakyBucketState {
                level: 150,
                at: 1050
            })
        );
        refund(&mut s, 1050, &p, 2);
        assert_eq!(s, None);
    }

    #[test]
    fn refund_behind_the_state_drains_nothing() {
        let p = params(10, 3);
        let mut s = None;
        assert!(apply(&mut s, 1000, &p, 3, true).allowed);
        refund(&mut s, 900, &p, 1);
        assert_eq!(
            s,
            Some(LeakyBucketState {
                level: 200,
                at: 1000
            })
        );
    }
}

//! GCRA: one theoretical arrival time (TAT) per key.
//!
//! Each unit of cost pushes the TAT one emission interval `T` later. A request of cost `c` at
//! `now` passes when `max(TAT, now) + c*T <= now + tau`, with `tau = burst * T`.
//!
//! The TAT is a point in time, read on the caller's clock. A caller whose clock is `d` behind
//! the one that set it (a clock stepped back, or instances sharing a state whose clocks
//! disagree) admits what the state admits `d` later: at most `d` stricter, never locked out,
//! and its waits are exact on its own clock.

use super::Raw;
use crate::quota::Params;

/// The theoretical arrival time, in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraState {
    pub(crate) tat: u64,
}

#[inline]
pub(crate) fn apply(
    state: &mut Option<GcraState>,
    now: u64,
    p: &Params,
    cost: u64,
    commit: bool,
) -> Raw {
    let tat = state.map_or(now, |s| s.tat.max(now));
    if tat <= now {
        *state = None;
    }
    let remaining = |tat: u64| (now.saturating_add(p.tau).saturating_sub(tat)) / p.interval;
    if cost > p.burst {
        return Raw {
            allowed: false,
            capacity: p.burst,
            remaining: remaining(tat),
            reset_after: tat - now,
            retry_after: None,
        };
    }
    let new_tat = tat.saturating_add(cost * p.interval);
    let allow_at = new_tat.saturating_sub(p.tau);
    if allow_at <= now {
        if commit {
            *state = Some(GcraState { tat: new_tat });
        }
        let tat = if commit { new_tat } else { tat };
        Raw {
            allowed: true,
            capacity: p.burst,
            remaining: remaining(tat),
            reset_after: tat - now,
            retry_after: None,
        }
    } else {
        Raw {
            allowed: false,
            capacity: p.burst,
            remaining: remaining(tat),
            reset_after: tat - now,
            retry_after: Some(allow_at - now),
        }
    }
}

/// Moves the theoretical arrival time back by `cost` emission intervals (a cost above the burst
/// counts as the burst: no charge was larger), never before `now` (a full bucket): a TAT at or
/// before `now` is no state. Behind the state's clock, a TAT more than a full bucket ahead of
/// the caller's `now` stays ahead of it.
pub(crate) fn refund(state: &mut Option<GcraState>, now: u64, p: &Params, cost: u64) {
    let Some(s) = *state else {
        return;
    };
    let tat = s.tat.saturating_sub(cost.min(p.burst) * p.interval);
    *state = (tat > now).then_some(GcraState { tat });
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
    fn admits_burst_then_one_per_interval() {
        // 10/s in ms ticks: T = 100, burst 3.
        let p = params(10, 3);
        let mut s = None;
        for left in [2, 1, 0] {
            let r = apply(&mut s, 1000, &p, 1, true);
            assert!(r.allowed);
            assert_eq!(r.remaining, left);
        }
        let r = apply(&mut s, 1000, &p, 1, true);
        assert_eq!(
            (r.allowed, r.retry_after, r.reset_after),
            (false, Some(100), 300)
        );
        assert!(!apply(&mut s, 1099, &p, 1, true).allowed);
        assert!(apply(&mut s, 1100, &p, 1, true).allowed);
    }

    #[test]
    fn peek_does_not_charge() {
        let p = params(10, 1);
        let mut s = None;
        assert!(apply(&mut s, 0, &p, 1, false).allowed);
        assert_eq!(s, None);
        assert!(apply(&mut s, 0, &p, 1, true).allowed);
        assert!(!apply(&mut s, 0, &p, 1, false).allowed);
    }

    #[test]
    fn cost_above_burst_is_never() {
        let p = params(10, 3);
        let mut s = None;
        let r = apply(&mut s, 0, &p, 4, true);
        assert_eq!((r.allowed, r.retry_after, r.remaining), (false, None, 3));
        assert_eq!(s, None);
    }

    #[test]
    fn clock_going_back_is_at_most_the_lag_stricter() {
        let p = params(10, 3);
        let mut s = None;
        assert!(apply(&mut s, 1000, &p, 1, true).allowed);
        // 30 behind: one more fits (TAT 1100 + 100 - 300 <= 970).
        let r = apply(&mut s, 970, &p, 1, true);
        assert_eq!((r.allowed, r.reset_after), (true, 230));
        // The third fits at 1000 on any clock: 30 from the caller's 970, the lag.
        let r = apply(&mut s, 970, &p, 1, true);
        assert_eq!((r.allowed, r.retry_after), (false, Some(30)));
        assert!(apply(&mut s, 1000, &p, 1, true).allowed);
    }

    #[test]
    fn full_state_is_dropped() {
        let p = params(10, 2);
        let mut s = None;
        apply(&mut s, 0, &p, 1, true);
        assert!(s.is_some());
        apply(&mut s, 500, &p, 1, false);
        assert_eq!(s, None);
    }

    #[test]
    fn refund_moves_the_tat_back_not_before_now() {
        let p = params(10, 3);
        let mut s = None;
        refund(&mut s, 1000, &p, 1);
        assert_eq!(s, None);
        assert!(apply(&mut s, 1000, &p, 3, true).allowed);
        assert_eq!(s, Some(GcraState { tat: 1300 }));
        refund(&mut s, 1000, &p, 1);
        assert_eq!(s, Some(GcraState { tat: 1200 }));
        assert_eq!(apply(&mut s, 1000, &p, 1, false).remaining, 1);
        // More than was charged: full, not beyond.
        refund(&mut s, 1050, &p, 3);
        assert_eq!(s, None);
        assert_eq!(apply(&mut s, 1050, &p, 1, false).remaining, 3);
    }

    #[test]
    fn refund_behind_the_tat_stops_at_the_callers_now() {
        let p = params(10, 3);
        let mut s = None;
        assert!(apply(&mut s, 1000, &p, 2, true).allowed);
        // 50 behind: the TAT 1200 goes back 300, to the caller's 950 at most: full.
        refund(&mut s, 950, &p, 3);
        assert_eq!(s, None);
    }
}

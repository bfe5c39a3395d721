//! Token bucket: whole tokens, refilled one per emission interval up to the burst.
//!
//! The refill keeps its remainder (`last` advances by whole intervals only), so refills never
//! drift however often the bucket is checked.
//!
//! When time steps back behind `last` (a clock stepped back, or instances sharing a state whose
//! clocks disagree), no refill is counted: the caller is admitted from the tokens the state
//! holds, and its waits are counted from `last` on its own clock.

use super::Raw;
use crate::quota::Params;

/// Tokens left, and the tick from which the next refill is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucketState {
    pub(crate) tokens: u32,
    pub(crate) last: u64,
}

#[inline]
pub(crate) fn apply(
    state: &mut Option<TokenBucketState>,
    now: u64,
    p: &Params,
    cost: u64,
    commit: bool,
) -> Raw {
    let (mut tokens, last) = match *state {
        None => (p.burst, now),
        Some(s) => {
            let add = now.saturating_sub(s.last) / p.interval;
            let tokens = u64::from(s.tokens).saturating_add(add).min(p.burst);
            if tokens == p.burst {
                (tokens, now)
            } else {
                (tokens, s.last + add * p.interval)
            }
        }
    };
    // Time at which the bucket is full again, given `tokens` valid from `last`.
    let full_at = |tokens: u64, last: u64| last.saturating_add((p.burst - tokens) * p.interval);
    let allowed = cost <= tokens;
    let retry_after = if allowed || cost > p.burst {
        None
    } else {
        Some(last + (cost - tokens) * p.interval - now)
    };
    if allowed && commit {
        tokens -= cost;
    }
    *state = (tokens < p.burst).then(|| TokenBucketState {
        tokens: u32::try_from(tokens).unwrap_or(u32::MAX),
        last,
    });
    Raw {
        allowed,
        capacity: p.burst,
        remaining: tokens,
        reset_after: full_at(tokens, last).saturating_sub(now),
        retry_after,
    }
}

/// Gives `cost` tokens back, refilled to `now` first as a check would, and never above the
/// burst: a full bucket stays full. No refill is counted before `last` (a clock behind it).
pub(crate) fn refund(state: &mut Option<TokenBucketState>, now: u64, p: &Params, cost: u64) {
    let Some(s) = *state else {
        return;
    };
    let add = now.saturating_sub(s.last) / p.interval;
    let tokens = u64::from(s.tokens).saturating_add(add).saturating_add(cost);
    *state = (tokens < p.burst).then(|| TokenBucketState {
        tokens: u32::try_from(tokens).unwrap_or(u32::MAX),
        last: s.last + add * p.interval,
    });
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
    fn refills_whole_tokens_without_drift() {
        let p = params(10, 2); // T = 100 ms
        let mut s = None;
        assert!(apply(&mut s, 0, &p, 2, true).allowed);
        // 150 ms later: one token, and the half interval is kept.
        let r = apply(&mut s, 150, &p, 1, true);
        assert_eq!((r.allowed, r.remaining), (true, 0));
        let r = apply(&mut s, 199, &p, 1, true);
        assert_eq!((r.allowed, r.retry_after), (false, Some(1)));
        assert!(apply(&mut s, 200, &p, 1, true).allowed);
    }

    #[test]
    fn reset_after_counts_to_full() {
        let p = params(10, 5);
        let mut s = None;
        let r = apply(&mut s, 1000, &p, 3, true);
        assert_eq!((r.remaining, r.reset_after), (2, 300));
        let r = apply(&mut s, 1050, &p, 1, false);
        assert_eq!((r.remaining, r.reset_after), (2, 250));
    }

    #[test]
    fn clock_going_back_admits_from_the_tokens_held() {
        let p = params(10, 3);
        let mut s = None;
        assert!(apply(&mut s, 1000, &p, 1, true).allowed);
        let r = apply(&mut s, 900, &p, 1, true);
        assert_eq!((r.allowed, r.remaining, r.reset_after), (true, 1, 300));
        let r = apply(&mut s, 900, &p, 2, true);
        assert_eq!((r.allowed, r.retry_after), (false, Some(200)));
        assert!(apply(&mut s, 1100, &p, 2, true).allowed);
    }

    #[test]
    fn full_bucket_holds_no_state() {
        let p = params(10, 1);
        let mut s = None;
        apply(&mut s, 0, &p, 1, true);
        assert!(s.is_some());
        apply(&mut s, 100, &p, 1, false);
        assert_eq!(s, None);
    }

    #[test]
    fn refund_gives_tokens_back_up_to_the_burst() {
        let p = params(10, 3);
        let mut s = None;
        // A full bucket holds nothing, and a refund leaves it so.
        refund(&mut s, 0, &p, 2);
        assert_eq!(s, None);
        assert!(apply(&mut s, 1000, &p, 3, true).allowed);
        refund(&mut s, 1000, &p, 2);
        assert_eq!(apply(&mut s, 1000, &p, 1, false).remaining, 2);
        // 150 ticks on: one token refilled (the half interval kept), so one more fills it.
        refund(&mut s, 1150, &p, 5);
        assert_eq!(s, None);
        let mut s = None;
        assert!(apply(&mut s, 1000, &p, 3, true).allowed);
        refund(&mut s, 1150, &p, 1);
        let r = apply(&mut s, 1150, &p, 1, false);
        assert_eq!((r.remaining, r.reset_after), (2, 50));
    }

    #[test]
    fn refund_behind_the_state_counts_no_refill() {
        let p = params(10, 3);
        let mut s = None;
        assert!(apply(&mut s, 1000, &p, 3, true).allowed);
        refund(&mut s, 900, &p, 1);
        assert_eq!(
            s,
            Some(TokenBucketState {
                tokens: 1,
                last: 1000
            })
        );
    }
}

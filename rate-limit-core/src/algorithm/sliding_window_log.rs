//! Sliding window log: remembers every admission for one period; exact in any window.
//!
//! Admissions at the same tick share one entry, so the state holds at most `limit` entries.

use std::collections::VecDeque;

use super::Raw;
use crate::quota::Params;

/// Admission times (tick, cost), oldest first, and their total cost.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogState {
    pub(crate) entries: VecDeque<(u64, u64)>,
    pub(crate) used: u64,
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
    if let Some(s) = state.as_mut() {
        while let Some(&(t, c)) = s.entries.front() {
            if t.saturating_add(p.period) > now {
                break;
            }
            s.entries.pop_front();
            s.used -= c;
        }
    }
    let used = state.as_ref().map_or(0, |s| s.used);
    let allowed = used.saturating_add(cost) <= p.limit;
    let retry_after = if allowed || cost > p.limit {
        None
    } else {
        // Walk from the oldest entry until enough cost has expired.
        let mut to_free = used + cost - p.limit;
        let mut at = now;
        for &(t, c) in state.iter().flat_map(|s| s.entries.iter()) {
            at = t + p.period;
            to_free = to_free.saturating_sub(c);
            if to_free == 0 {
                break;
            }
        }
        Some(at - now)
    };
    if allowed && commit {
        let s = state.get_or_insert_with(Box::default);
        match s.entries.back_mut() {
            Some((t, c)) if *t == now => *c += cost,
            _ => s.entries.push_back((now, cost)),
        }
        s.used += cost;
    }
    if state.as_ref().is_some_and(|s| s.entries.is_empty()) {
        *state = None;
    }
    let (used, newest) = state
        .as_ref()
        .map_or((0, None), |s| (s.used, s.entries.back().map(|&(t, _)| t)));
    Raw {
        allowed,
        capacity: p.limit,
        remaining: p.limit - used.min(p.limit),
        reset_after: newest.map_or(0, |t| t + p.period - now),
        retry_after,
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
}

//! The six algorithms, each a pure state transition in integer ticks.
//!
//! Every transition has the shape
//! `(state, now, quota, cost, commit) -> (decision, state)`: no I/O, no real time, no floats.
//! `commit = false` computes the same decision without charging (a *peek*); it may still tidy the
//! state (drop expired log entries, roll a window), which never changes a later decision on a
//! clock that does not go back.
//!
//! A state that is back to full is `None`: a store holds nothing for it.
//!
//! | algorithm | state | admits |
//! |---|---|---|
//! | [`TokenBucket`](Algorithm::TokenBucket) | tokens + refill time | `burst` at once, then one per emission interval |
//! | [`LeakyBucket`](Algorithm::LeakyBucket) | water level + time | the same, as a meter that drains |
//! | [`Gcra`](Algorithm::Gcra) | one timestamp (TAT) | the same, in 8 bytes |
//! | [`FixedWindow`](Algorithm::FixedWindow) | window start + count | `limit` per epoch-aligned window |
//! | [`SlidingWindowLog`](Algorithm::SlidingWindowLog) | one entry per admission time | `limit` in *any* window of `period` |
//! | [`SlidingWindow`](Algorithm::SlidingWindow) | two counters | `limit` per aligned window; < `2 * limit` in any window (see its docs) |
//!
//! The three bucket algorithms make identical decisions on a clock that does not go back (the
//! conformance table checks that); they differ in the state they keep and in how their state
//! reads.
//!
//! # When time steps back
//!
//! A check may find a state written at a later time than its `now`: a clock stepped back, or
//! instances whose clocks disagree sharing one Redis state (with
//! [`RedisStoreBuilder::clock`](crate::RedisStoreBuilder::clock); with the server's `TIME`, one
//! clock decides for all). No algorithm locks a client with budget left out for it, and every
//! wait (`retry_after`, `reset_after`) is counted on the caller's clock, so it includes how far
//! that clock is behind the state's:
//!
//! | algorithm | behind the state's time |
//! |---|---|
//! | token bucket | counts no refill before the state's refill time; admits from the tokens it holds |
//! | leaky bucket | drains nothing before the state's time; admits while the level leaves room |
//! | GCRA | reads its theoretical arrival time on the caller's clock: a caller `d` behind admits what the state admits `d` later, so it is at most `d` stricter, never locked out |
//! | fixed window | counts into the stored window, which is newer than the caller's, and waits to its end |
//! | sliding window log | treats the clock as standing at its newest entry |
//! | sliding window counter | counts into the stored window as at its start, the previous window weighing fully |
//!
//! So two instances whose clocks are 50 ms apart, sharing a fixed window, count into one window
//! between them: the one behind spends what is left of the window the one ahead opened.
//!
//! What a refund gives back, per algorithm, is in [`Algorithm`]'s docs (`# Refunds`).

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use crate::decision::Snapshot;
use crate::error::ConfigError;
use crate::quota::{Params, Quota};
use crate::store::Charge;

pub(crate) mod fixed_window;
pub(crate) mod gcra;
pub(crate) mod leaky_bucket;
pub(crate) mod sliding_window;
pub(crate) mod sliding_window_log;
pub(crate) mod token_bucket;

/// A rate-limiting algorithm.
///
/// # Refunds
///
/// [`Store::refund`](crate::Store::refund) gives back a [`Charge`](crate::Charge) that a check
/// made: `cost` units, charged `since` before the refund (the *charge time* is `now - since`).
/// A refund is never more than the charge and never takes a limit above its capacity (a full
/// bucket, an empty window): a refund of a charge whose budget has already come back gives
/// nothing. Each is the exact inverse of the check's charge when nothing else happened between
/// them.
///
/// | algorithm | a refund of `cost` charged at `at` |
/// |---|---|
/// | token bucket | refills to now as a check does, then adds `cost` tokens, up to `burst` |
/// | leaky bucket | drains to now as a check does, then lowers the level by `cost` intervals, not below empty |
/// | GCRA | moves the TAT back by `cost` emission intervals (at most `burst` of them), not before now (full: no state) |
/// | fixed window | if `at` falls in the stored window, takes `cost` off its count (not below 0); else nothing: that window is gone |
/// | sliding window log | if `at` is still in the window, takes up to `cost` units off the *oldest* entries logged at or after `at` (the earliest admissions the charge can be: it was logged no earlier than it was sent); else nothing |
/// | sliding window counter | takes `cost` off the count of `at`'s window: the current one, or the previous one (which weighs only in part); an older window gives nothing |
///
/// The log gives back the oldest admissions it can rather than the most recent ones: those
/// leave the window first, so what stays never frees budget sooner than if the charge had never
/// been made (the most recent ones would leave the charge in the log and free the budget of a
/// later admission instead, and with it budget the charge still holds once it leaves). A refund
/// made promptly, before other admissions of the key, gives back the charge itself.
///
/// The buckets do not read `at`: a bucket has no windows, and what it gives back is capped by
/// what it lacks. A window algorithm gives back only to the window the charge time falls in, so
/// a charge time measured early (before the check was sent, as
/// [`Charge::elapsed`](crate::Charge::elapsed) asks) can only give back less: a check sent just
/// before a fixed window's end and counted in the next window gives nothing back, and with the
/// counter it is taken off the previous window, which weighs less than the current one.
///
/// A clock behind the state's time is read as a check on it reads it: the buckets count no
/// refill or drain before the state's time, and the log stands at its newest entry. The charge
/// time of a window algorithm is on the caller's clock: if it names a window older than a newer
/// stored one (written by a clock ahead), the refund gives nothing. No refund panics or gives
/// back more than `cost`.
///
/// A key with several limits is refunded on every limit at once (one shard lock in memory, one
/// script call on Redis); a limit listed twice is refunded once, as a check charges it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// A bucket of `burst` tokens refilled one per emission interval, in whole tokens.
    #[default]
    TokenBucket,
    /// A meter of capacity `burst` that drains one unit per emission interval; a request that
    /// would overflow it is denied.
    LeakyBucket,
    /// Counts per window aligned to multiples of the period since the Unix epoch, so that every
    /// instance agrees on window edges. Up to `2 * limit` can pass around an edge.
    FixedWindow,
    /// Exact sliding window: remembers each admission for one period. State grows with the
    /// limit, up to `limit` entries per key: 16 bytes each in memory, about 26 on Redis (see
    /// [`LogState`](crate::state::LogState)). For limits in the many thousands per key, the
    /// sliding window counter keeps a few integers instead.
    SlidingWindowLog,
    /// Sliding window counter: the current window's count plus the previous window's, weighted by
    /// how much of it still overlaps the sliding window.
    ///
    /// Error bound: it admits at most `limit` per aligned window, and in any window of length
    /// `period` at most `limit + prev * e / period < 2 * limit`, where `prev` is what the previous
    /// aligned window admitted and `e` is how far the sliding window reaches into the current one.
    /// It over-admits only when the previous window's traffic was bunched at its end.
    SlidingWindow,
    /// Generic cell rate algorithm: a theoretical arrival time, one `u64` of state.
    Gcra,
}

impl Algorithm {
    /// Every algorithm, in a fixed order.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::TokenBucket,
        Algorithm::LeakyBucket,
        Algorithm::FixedWindow,
        Algorithm::SlidingWindowLog,
        Algorithm::SlidingWindow,
        Algorithm::Gcra,
    ];

    /// The snake_case name used in configuration (`token_bucket`, `gcra`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::TokenBucket => "token_bucket",
            Self::LeakyBucket => "leaky_bucket",
            Self::FixedWindow => "fixed_window",
            Self::SlidingWindowLog => "sliding_window_log",
            Self::SlidingWindow => "sliding_window",
            Self::Gcra => "gcra",
        }
    }

    /// Whether the algorithm's capacity is the quota's burst (buckets) rather than its limit
    /// (windows).
    pub const fn is_bucket(self) -> bool {
        matches!(self, Self::TokenBucket | Self::LeakyBucket | Self::Gcra)
    }

    /// Runs one transition in nanoseconds since the Unix epoch: the decision for `cost` at `now`
    /// and the state to keep (`None` when the state is back to full).
    ///
    /// With `commit = false` nothing is charged: this is what a check *would* decide.
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use std::time::Duration;
    /// use rate_limit_core::{Algorithm, Quota};
    ///
    /// let quota = Quota::per_second(2);
    /// let one = NonZeroU32::MIN;
    /// let t0 = Duration::from_secs(1_000);
    /// let (d, s) = Algorithm::Gcra.transition(None, t0, &quota, one, true);
    /// assert!(d.is_allowed());
    /// let (d, s) = Algorithm::Gcra.transition(s, t0, &quota, one, true);
    /// assert!(d.is_allowed());
    /// let (d, _) = Algorithm::Gcra.transition(s, t0, &quota, one, true);
    /// assert!(!d.is_allowed());
    /// assert_eq!(d.retry_after(), Some(Duration::from_millis(500)));
    /// ```
    pub fn transition(
        self,
        state: Option<State>,
        now: Duration,
        quota: &Quota,
        cost: NonZeroU32,
        commit: bool,
    ) -> (Snapshot, Option<State>) {
        let mut slot = state;
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let p = quota.params(1);
        let raw = apply(self, &mut slot, now, &p, u64::from(cost.get()), commit);
        (raw.snapshot(&p), slot)
    }
}

impl Algorithm {
    /// Gives back a [`Charge`] at `now` (nanoseconds since the Unix epoch), as
    /// [`Store::refund`](crate::Store::refund) does for one limit: what each algorithm gives back
    /// is in [the table](Algorithm#refunds). Returns what a check of the charge's cost *would* decide
    /// right after (a peek), and the state to keep (`None` when it is back to full).
    ///
    /// ```
    /// use std::num::NonZeroU32;
    /// use std::time::Duration;
    /// use rate_limit_core::{Algorithm, Charge, Quota};
    ///
    /// let quota = Quota::per_second(2);
    /// let one = NonZeroU32::MIN;
    /// let t0 = Duration::from_secs(1_000);
    /// let (_, s) = Algorithm::FixedWindow.transition(None, t0, &quota, one, true);
    /// let (d, s) = Algorithm::FixedWindow.transition(s, t0, &quota, one, true);
    /// assert_eq!(d.remaining(), 0);
    /// // The second charge is given back: one is left again.
    /// let (d, s) = Algorithm::FixedWindow.refund(s, t0, &quota, Charge::new(one));
    /// assert!(d.is_allowed());
    /// assert_eq!(d.remaining(), 1);
    /// // A charge of a window that is gone gives nothing back.
    /// let later = t0 + Duration::from_millis(1_500);
    /// let (_, s) = Algorithm::FixedWindow.transition(s, later, &quota, one, true);
    /// let old = Charge::new(one).elapsed(Duration::from_millis(1_500));
    /// let (d, _) = Algorithm::FixedWindow.refund(s, later, &quota, old);
    /// assert_eq!(d.remaining(), 1);
    /// ```
    pub fn refund(
        self,
        state: Option<State>,
        now: Duration,
        quota: &Quota,
        charge: Charge,
    ) -> (Snapshot, Option<State>) {
        let mut slot = state;
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let since = u64::try_from(charge.since().as_nanos()).unwrap_or(u64::MAX);
        let p = quota.params(1);
        let cost = u64::from(charge.cost().get());
        let raw = refund(self, &mut slot, now, &p, cost, now.saturating_sub(since));
        (raw.snapshot(&p), slot)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = ConfigError;

    /// Parses a [`name`](Algorithm::name); `-` is accepted for `_` and case is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|a| a.name() == norm)
            .ok_or_else(|| {
                ConfigError::new(
                    "algorithm",
                    s,
                    "expected one of token_bucket, leaky_bucket, fixed_window, sliding_window_log, sliding_window, gcra",
                )
            })
    }
}

/// The state one algorithm keeps for one key and one limit. Opaque: only transitions read it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// [`Algorithm::TokenBucket`]'s state.
    TokenBucket(token_bucket::TokenBucketState),
    /// [`Algorithm::LeakyBucket`]'s state.
    LeakyBucket(leaky_bucket::LeakyBucketState),
    /// [`Algorithm::FixedWindow`]'s state.
    FixedWindow(fixed_window::FixedWindowState),
    /// [`Algorithm::SlidingWindowLog`]'s state.
    SlidingWindowLog(Box<sliding_window_log::LogState>),
    /// [`Algorithm::SlidingWindow`]'s state.
    SlidingWindow(sliding_window::SlidingWindowState),
    /// [`Algorithm::Gcra`]'s state.
    Gcra(gcra::GcraState),
}

/// A decision in ticks, before conversion to durations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Raw {
    pub(crate) allowed: bool,
    pub(crate) capacity: u64,
    pub(crate) remaining: u64,
    pub(crate) reset_after: u64,
    pub(crate) retry_after: Option<u64>,
}

impl Raw {
    pub(crate) fn snapshot(&self, p: &Params) -> Snapshot {
        let d = |ticks: u64| Duration::from_nanos(ticks.saturating_mul(p.tick));
        Snapshot::new(
            self.allowed,
            u32::try_from(self.capacity).unwrap_or(u32::MAX),
            u32::try_from(self.remaining).unwrap_or(u32::MAX),
            d(self.reset_after),
            self.retry_after.map(d),
        )
    }
}

/// Moves the matching variant out of `slot`, runs `f` on it, and puts the result back. A state
/// of another algorithm (which a store never hands over) counts as no state.
macro_rules! dispatch {
    ($slot:ident, $variant:ident, $module:ident, $($arg:expr),*) => {{
        let mut s = match $slot.take() {
            Some(State::$variant(s)) => Some(s),
            _ => None,
        };
        let raw = $module::apply(&mut s, $($arg),*);
        *$slot = s.map(State::$variant);
        raw
    }};
}

/// Runs `f` on the state of `algorithm`'s variant in `slot`, putting the result back. A state
/// of another algorithm counts as no state.
macro_rules! with_state {
    ($slot:ident, $variant:ident, |$s:ident| $body:expr) => {{
        let mut $s = match $slot.take() {
            Some(State::$variant(s)) => Some(s),
            _ => None,
        };
        $body;
        *$slot = $s.map(State::$variant);
    }};
}

/// Gives back a charge of `cost` made at tick `at` (see [the table](Algorithm#refunds)) on `slot` at
/// `now`, then answers what a peek of `cost` answers after it.
pub(crate) fn refund(
    algorithm: Algorithm,
    slot: &mut Option<State>,
    now: u64,
    p: &Params,
    cost: u64,
    at: u64,
) -> Raw {
    match algorithm {
        Algorithm::TokenBucket => {
            with_state!(slot, TokenBucket, |s| token_bucket::refund(
                &mut s, now, p, cost
            ));
        }
        Algorithm::LeakyBucket => {
            with_state!(slot, LeakyBucket, |s| leaky_bucket::refund(
                &mut s, now, p, cost
            ));
        }
        Algorithm::Gcra => with_state!(slot, Gcra, |s| gcra::refund(&mut s, now, p, cost)),
        Algorithm::FixedWindow => {
            with_state!(slot, FixedWindow, |s| fixed_window::refund(
                &mut s, p, cost, at
            ));
        }
        Algorithm::SlidingWindow => {
            with_state!(slot, SlidingWindow, |s| sliding_window::refund(
                &mut s, p, cost, at
            ));
        }
        Algorithm::SlidingWindowLog => {
            with_state!(slot, SlidingWindowLog, |s| sliding_window_log::refund(
                &mut s, now, p, cost, at
            ));
        }
    }
    apply(algorithm, slot, now, p, cost, false)
}

/// Runs `algorithm`'s transition on `slot` in ticks.
pub(crate) fn apply(
    algorithm: Algorithm,
    slot: &mut Option<State>,
    now: u64,
    p: &Params,
    cost: u64,
    commit: bool,
) -> Raw {
    match algorithm {
        Algorithm::TokenBucket => dispatch!(slot, TokenBucket, token_bucket, now, p, cost, commit),
        Algorithm::LeakyBucket => dispatch!(slot, LeakyBucket, leaky_bucket, now, p, cost, commit),
        Algorithm::FixedWindow => dispatch!(slot, FixedWindow, fixed_window, now, p, cost, commit),
        Algorithm::SlidingWindowLog => {
            dispatch!(
                slot,
                SlidingWindowLog,
                sliding_window_log,
                now,
                p,
                cost,
                commit
            )
        }
        Algorithm::SlidingWindow => {
            dispatch!(slot, SlidingWindow, sliding_window, now, p, cost, commit)
        }
        Algorithm::Gcra => dispatch!(slot, Gcra, gcra, now, p, cost, commit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>().unwrap(), a);
        }
        assert_eq!(
            "Sliding-Window-Log".parse::<Algorithm>().unwrap(),
            Algorithm::SlidingWindowLog
        );
        let err = "leaky".parse::<Algorithm>().unwrap_err();
        assert_eq!(err.setting(), "algorithm");
        assert_eq!(err.value(), "leaky");
    }

    #[test]
    fn a_foreign_state_counts_as_none() {
        let q = Quota::per_second(NonZeroU32::new(1).unwrap());
        let t = Duration::from_secs(10);
        let (_, s) = Algorithm::Gcra.transition(None, t, &q, NonZeroU32::MIN, true);
        let (d, _) = Algorithm::FixedWindow.transition(s, t, &q, NonZeroU32::MIN, true);
        assert!(d.is_allowed());
    }

    #[test]
    fn a_refund_never_gives_back_more_than_its_cost_nor_above_capacity() {
        // Random checks and refunds on every algorithm, the clock mostly moving on and now and
        // then stepping back behind the state's time: a refund never panics, and what a peek
        // of its cost sees afterwards is at most `cost` more than before, never above capacity.
        let quota = Quota::per_second(NonZeroU32::new(7).unwrap())
            .burst(NonZeroU32::new(5).unwrap())
            .unwrap();
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for alg in Algorithm::ALL {
            let mut state = None;
            let mut now = Duration::from_secs(1_000);
            for step in 0..5_000 {
                let r = next();
                now = match r % 10 {
                    0 => now.saturating_sub(Duration::from_millis(r >> 40 & 511)),
                    _ => now + Duration::from_millis(r >> 40 & 127),
                };
                let cost = NonZeroU32::new(1 + (r >> 8) as u32 % 8).unwrap();
                if r >> 20 & 1 == 0 {
                    state = alg.transition(state, now, &quota, cost, true).1;
                    continue;
                }
                let since = Duration::from_millis(r >> 24 & 2047);
                let charge = Charge::new(cost).elapsed(since);
                let (before, _) = alg.transition(state.clone(), now, &quota, cost, false);
                let (after, s) = alg.refund(state, now, &quota, charge);
                state = s;
                let context = format!("{alg} step {step}: {before:?} then {after:?}");
                assert!(after.remaining() <= after.limit(), "{context}");
                assert!(
                    after.remaining() <= before.remaining() + cost.get(),
                    "{context}"
                );
                // The answer is the peek of the state kept.
                let (peek, _) = alg.transition(state.clone(), now, &quota, cost, false);
                assert_eq!(peek, after, "{context}");
            }
        }
    }
}

//! Property tests of the transitions: bounds in any interval, exact retry times, all-or-nothing.

use std::num::NonZeroU32;
use std::time::Duration;

use proptest::prelude::*;
use rate_limit_core::{Algorithm, Limit, ManualClock, MemoryStore, Quota, State};

const T0: u64 = 1_800_000_000_000_000_000;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// A quota of 1..=8 per 1..=2000 ms with a burst of 1..=8.
fn quota() -> impl Strategy<Value = Quota> {
    (1u32..=8, 1u64..=2000, 1u32..=8).prop_map(|(limit, ms, burst)| {
        Quota::with_period(nz(limit), Duration::from_millis(ms))
            .unwrap()
            .burst(nz(burst))
            .unwrap()
    })
}

/// Arrivals as (gap in µs, cost): bunched and spread alike.
fn arrivals() -> impl Strategy<Value = Vec<(u64, u32)>> {
    prop::collection::vec(
        (
            prop_oneof![Just(0u64), 0u64..2_000, 0u64..3_000_000],
            1u32..=3,
        ),
        1..120,
    )
}

/// Runs the arrivals through one algorithm; returns (time in ns, cost) of each admission.
fn admitted(alg: Algorithm, q: &Quota, arrivals: &[(u64, u32)]) -> Vec<(u64, u64)> {
    let mut state: Option<State> = None;
    let mut now = T0;
    let mut out = Vec::new();
    for &(gap_us, cost) in arrivals {
        now += gap_us * 1000;
        let (d, s) = alg.transition(state, Duration::from_nanos(now), q, nz(cost), true);
        state = s;
        if d.is_allowed() {
            out.push((now, u64::from(cost)));
        }
    }
    out
}

/// Largest total cost admitted in any window `[t, t + span)` starting at an admission.
fn max_in_span(adm: &[(u64, u64)], span: u64) -> u64 {
    let mut best = 0;
    for (i, &(t, _)) in adm.iter().enumerate() {
        let sum: u64 = adm[i..]
            .iter()
            .take_while(|&&(u, _)| u < t + span)
            .map(|&(_, c)| c)
            .sum();
        best = best.max(sum);
    }
    best
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Bucket algorithms: in any interval of length d, at most burst + floor(d / T) pass.
    #[test]
    fn buckets_never_exceed_burst_plus_refill(q in quota(), arr in arrivals()) {
        let interval = u64::try_from(q.emission_interval().as_nanos()).unwrap();
        for alg in [Algorithm::TokenBucket, Algorithm::LeakyBucket, Algorithm::Gcra] {
            let adm = admitted(alg, &q, &arr);
            for (i, &(t1, _)) in adm.iter().enumerate() {
                let mut sum = 0;
                for &(t2, c) in &adm[i..] {
                    sum += c;
                    let bound = u64::from(q.burst_size().get()) + (t2 - t1) / interval;
                    prop_assert!(sum <= bound, "{alg}: {sum} admitted in {}ns, bound {bound}", t2 - t1);
                }
            }
        }
    }

    /// The three bucket algorithms make the same decisions.
    #[test]
    fn bucket_algorithms_agree(q in quota(), arr in arrivals()) {
        let tb = admitted(Algorithm::TokenBucket, &q, &arr);
        prop_assert_eq!(&tb, &admitted(Algorithm::LeakyBucket, &q, &arr));
        prop_assert_eq!(&tb, &admitted(Algorithm::Gcra, &q, &arr));
    }

    /// Sliding window log: never more than the limit in any window of one period.
    #[test]
    fn log_is_exact_in_any_window(q in quota(), arr in arrivals()) {
        let period = u64::try_from(q.period().as_nanos()).unwrap();
        let adm = admitted(Algorithm::SlidingWindowLog, &q, &arr);
        prop_assert!(max_in_span(&adm, period) <= u64::from(q.limit().get()));
    }

    /// Window counters: at most the limit per aligned window; the weighted counter less than
    /// twice the limit in any window of one period.
    #[test]
    fn windows_respect_their_bounds(q in quota(), arr in arrivals()) {
        let period = u64::try_from(q.period().as_nanos()).unwrap();
        let limit = u64::from(q.limit().get());
        for alg in [Algorithm::FixedWindow, Algorithm::SlidingWindow] {
            let adm = admitted(alg, &q, &arr);
            let mut per_window = std::collections::HashMap::<u64, u64>::new();
            for &(t, c) in &adm {
                *per_window.entry(t / period).or_default() += c;
            }
            prop_assert!(per_window.values().all(|&n| n <= limit), "{alg}: {per_window:?}");
            if alg == Algorithm::SlidingWindow {
                prop_assert!(max_in_span(&adm, period) < 2 * limit);
            }
        }
    }

    /// retry_after is exact: 1 ns earlier the same request is denied, at it allowed.
    #[test]
    fn retry_after_is_exact(q in quota(), arr in arrivals(), cost in 1u32..=3) {
        for alg in Algorithm::ALL {
            let mut state: Option<State> = None;
            let mut now = T0;
            for &(gap_us, c) in &arr {
                now += gap_us * 1000;
                let (_, s) = alg.transition(state, Duration::from_nanos(now), &q, nz(c), true);
                state = s;
                let at = Duration::from_nanos(now);
                let (d, _) = alg.transition(state.clone(), at, &q, nz(cost), false);
                if let Some(wait) = d.retry_after() {
                    prop_assert!(!wait.is_zero());
                    let before = at + wait - Duration::from_nanos(1);
                    let (early, _) = alg.transition(state.clone(), before, &q, nz(cost), false);
                    prop_assert!(!early.is_allowed(), "{alg}: allowed 1ns before retry_after");
                    let (on_time, _) = alg.transition(state.clone(), at + wait, &q, nz(cost), false);
                    prop_assert!(on_time.is_allowed(), "{alg}: denied at retry_after {wait:?}");
                } else if !d.is_allowed() {
                    // Never: the cost is above the capacity.
                    let cap = if alg.is_bucket() { q.burst_size() } else { q.limit() };
                    prop_assert!(cost > cap.get());
                }
            }
        }
    }

    /// One limit: a store answers every check and peek as the transition does, whichever of
    /// its paths decides (the shared-lock path of one GCRA limit on a held key, or the locked
    /// one), with sweeps between them.
    #[test]
    fn one_limit_in_a_store_is_its_transition(q in quota(), a in 0usize..6, arr in arrivals()) {
        let alg = Algorithm::ALL[a];
        let clock = ManualClock::new(Duration::from_nanos(T0));
        let store = MemoryStore::builder().clock(clock.clone()).build();
        let limit = [Limit::new(q, alg)];
        let mut state: Option<State> = None;
        let mut now = T0;
        for (i, &(gap_us, cost)) in arr.iter().enumerate() {
            now += gap_us * 1000;
            clock.set(Duration::from_nanos(now));
            let at = Duration::from_nanos(now);
            let (peek, _) = alg.transition(state.clone(), at, &q, nz(cost), false);
            let got = store.peek_now("k", &limit, nz(cost)).unwrap();
            prop_assert_eq!(got.snapshots(), &[peek][..]);
            let (check, s) = alg.transition(state, at, &q, nz(cost), true);
            state = s;
            let got = store.check_now("k", &limit, nz(cost)).unwrap();
            prop_assert_eq!(got.snapshots(), &[check][..]);
            if i % 5 == 4 {
                store.sweep();
            }
        }
    }

    /// Several limits: the store charges all or none, exactly as two separate transitions
    /// checked first and charged only together.
    #[test]
    fn several_limits_are_all_or_nothing(
        q1 in quota(),
        q2 in quota(),
        a1 in 0usize..6,
        a2 in 0usize..6,
        arr in arrivals(),
    ) {
        let (alg1, alg2) = (Algorithm::ALL[a1], Algorithm::ALL[a2]);
        let clock = ManualClock::new(Duration::from_nanos(T0));
        let store = MemoryStore::builder().clock(clock.clone()).build();
        let limits = [Limit::new(q1, alg1), Limit::new(q2, alg2)];
        let (mut s1, mut s2): (Option<State>, Option<State>) = (None, None);
        let mut now = T0;
        for &(gap_us, cost) in &arr {
            now += gap_us * 1000;
            clock.set(Duration::from_nanos(now));
            let at = Duration::from_nanos(now);
            let (p1, _) = alg1.transition(s1.clone(), at, &q1, nz(cost), false);
            let (p2, _) = alg2.transition(s2.clone(), at, &q2, nz(cost), false);
            let both = p1.is_allowed() && p2.is_allowed();
            let got = store.check_now("k", &limits, nz(cost)).unwrap();
            prop_assert_eq!(got.is_allowed(), both);
            if both {
                s1 = alg1.transition(s1, at, &q1, nz(cost), true).1;
                s2 = alg2.transition(s2, at, &q2, nz(cost), true).1;
            }
            let (e1, _) = alg1.transition(s1.clone(), at, &q1, nz(cost), false);
            let (e2, _) = alg2.transition(s2.clone(), at, &q2, nz(cost), false);
            let after = store.peek_now("k", &limits, nz(cost)).unwrap();
            prop_assert_eq!(after.snapshots(), &[e1, e2][..]);
        }
    }
}

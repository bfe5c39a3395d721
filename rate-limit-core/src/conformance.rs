//! A table of cases that every [`Store`] must pass: quota, arrivals, expected decisions.
//!
//! The expected values were worked out by hand from each algorithm's definition, not recorded
//! from an implementation. The in-memory store and the Redis store (with a client clock) run the
//! very same table, so the Lua twins cannot drift from the Rust transitions.
//!
//! All quotas have emission intervals of whole milliseconds and all arrivals fall on whole
//! milliseconds after [`BASE`], a multiple of every period used, so the table holds for a store
//! that counts in nanoseconds and one that counts in microseconds alike.
//!
//! ```
//! use rate_limit_core::{conformance, ManualClock, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let clock = ManualClock::new(conformance::BASE);
//! let store = MemoryStore::builder().clock(clock.clone()).build();
//! let steps = conformance::run(&store, &clock, "doc").await.unwrap();
//! assert!(steps > 50);
//! # }
//! ```

use std::fmt::Write as _;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::{Algorithm, Charge, Decision, Limit, ManualClock, Quota, Store};

/// The instant every case starts from: 2027-01-15T08:00:00Z, a whole number of hours (and so of
/// seconds and minutes) since the Unix epoch.
pub const BASE: Duration = Duration::from_secs(1_800_000_000);

/// One limit's expected snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// Whether this limit allows the request.
    pub allowed: bool,
    /// Expected remaining.
    pub remaining: u32,
    /// Expected reset-after, in milliseconds.
    pub reset_ms: u64,
    /// Expected retry-after in milliseconds; `None` when allowed or never.
    pub retry_ms: Option<u64>,
}

/// One arrival and what it must produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Milliseconds after [`BASE`].
    pub at_ms: u64,
    /// Cost of the request.
    pub cost: u32,
    /// `true` for a [`Store::peek`], `false` for a [`Store::check`].
    pub peek: bool,
    /// `Some(since_ms)` for a [`Store::refund`] of `cost` charged `since_ms` before `at_ms`
    /// (then `peek` is ignored, and the expectation is the peek the refund answers).
    pub refund: Option<u64>,
    /// Whether the whole decision is allowed.
    pub allowed: bool,
    /// Expected index of the binding limit.
    pub binding: usize,
    /// One expectation per limit, in order.
    pub expect: Vec<Expect>,
}

/// A named sequence of steps against a set of limits on one key.
#[derive(Debug, Clone)]
pub struct Case {
    /// A short unique name (also part of the key).
    pub name: String,
    /// The limits checked at every step.
    pub limits: Vec<Limit>,
    /// The arrivals, in time order.
    pub steps: Vec<Step>,
}

/// A table entry with a zero is a mistake in the table: fail loudly, never substitute.
fn nz(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => panic!("conformance table: a limit, burst or cost of 0"),
    }
}

fn quota(limit: u32, period_ms: u64, burst: u32) -> Quota {
    match Quota::with_period(nz(limit), Duration::from_millis(period_ms))
        .and_then(|q| q.burst(nz(burst)))
    {
        Ok(q) => q,
        Err(e) => panic!("conformance table: {e}"),
    }
}

/// `(at_ms, cost, allowed, remaining, reset_ms, retry_ms)` for single-limit cases.
type Row = (u64, u32, bool, u32, u64, Option<u64>);

fn single(name: &str, limit: Limit, rows: &[Row]) -> Case {
    Case {
        name: name.to_owned(),
        limits: vec![limit],
        steps: rows
            .iter()
            .map(
                |&(at_ms, cost, allowed, remaining, reset_ms, retry_ms)| Step {
                    at_ms,
                    cost,
                    peek: false,
                    refund: None,
                    allowed,
                    binding: 0,
                    expect: vec![Expect {
                        allowed,
                        remaining,
                        reset_ms,
                        retry_ms,
                    }],
                },
            )
            .collect(),
    }
}

/// Every case.
pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    // The three bucket algorithms admit identical sequences: 4/s, burst 4, T = 250 ms.
    let bucket: [Row; 8] = [
        (0, 1, true, 3, 250, None),
        (0, 2, true, 1, 750, None),
        (0, 2, false, 1, 750, Some(250)),
        (100, 1, true, 0, 900, None),
        (100, 1, false, 0, 900, Some(150)),
        (250, 1, true, 0, 1000, None),
        (1250, 5, false, 4, 0, None),
        (1250, 4, true, 0, 1000, None),
    ];
    // 2/s with burst 4: T = 500 ms, a full bucket lasts 2 s.
    let big_burst: [Row; 3] = [
        (0, 4, true, 0, 2000, None),
        (0, 1, false, 0, 2000, Some(500)),
        (1000, 2, true, 0, 2000, None),
    ];
    for alg in [
        Algorithm::TokenBucket,
        Algorithm::LeakyBucket,
        Algorithm::Gcra,
    ] {
        cases.push(single(
            &format!("{alg}-basic"),
            Limit::new(quota(4, 1000, 4), alg),
            &bucket,
        ));
        cases.push(single(
            &format!("{alg}-burst"),
            Limit::new(quota(2, 1000, 4), alg),
            &big_burst,
        ));
    }
    cases.push(single(
        "fixed_window-basic",
        Limit::new(quota(4, 1000, 4), Algorithm::FixedWindow),
        &[
            (0, 1, true, 3, 1000, None),
            (500, 3, true, 0, 500, None),
            (999, 1, false, 0, 1, Some(1)),
            (1000, 1, true, 3, 1000, None),
            (1000, 5, false, 3, 1000, None),
            (1200, 3, true, 0, 800, None),
            (1200, 1, false, 0, 800, Some(800)),
        ],
    ));
    cases.push(single(
        "sliding_window_log-basic",
        Limit::new(quota(4, 1000, 4), Algorithm::SlidingWindowLog),
        &[
            (0, 1, true, 3, 1000, None),
            (500, 3, true, 0, 1000, None),
            (999, 1, false, 0, 501, Some(1)),
            (1000, 1, true, 0, 1000, None),
            (1000, 2, false, 0, 1000, Some(500)),
            (1500, 2, true, 1, 1000, None),
            (1500, 5, false, 1, 1000, None),
        ],
    ));
    cases.push(single(
        "sliding_window-basic",
        Limit::new(quota(4, 1000, 4), Algorithm::SlidingWindow),
        &[
            (0, 4, true, 0, 2000, None),
            (500, 1, false, 0, 1500, Some(750)),
            (1249, 1, false, 0, 751, Some(1)),
            (1250, 1, true, 0, 1750, None),
            (1500, 1, true, 0, 1500, None),
            (1500, 2, false, 0, 1500, Some(500)),
            (3000, 4, true, 0, 2000, None),
        ],
    ));
    // Several limits, mixed algorithms: 4/s token bucket and 6/min fixed window.
    let e = |allowed, remaining, reset_ms, retry_ms| Expect {
        allowed,
        remaining,
        reset_ms,
        retry_ms,
    };
    let step = |at_ms, cost, allowed, binding, expect: Vec<Expect>| Step {
        at_ms,
        cost,
        peek: false,
        refund: None,
        allowed,
        binding,
        expect,
    };
    cases.push(Case {
        name: "multi-mixed".to_owned(),
        limits: vec![
            Limit::new(quota(4, 1000, 4), Algorithm::TokenBucket),
            Limit::new(quota(6, 60_000, 6), Algorithm::FixedWindow),
        ],
        steps: vec![
            step(
                0,
                4,
                true,
                0,
                vec![e(true, 0, 1000, None), e(true, 2, 60_000, None)],
            ),
            // The bucket denies; the window must not be charged.
            step(
                0,
                1,
                false,
                0,
                vec![e(false, 0, 1000, Some(250)), e(true, 2, 60_000, None)],
            ),
            // The window denies; the (refilled) bucket must not be charged.
            step(
                1000,
                3,
                false,
                1,
                vec![e(true, 4, 0, None), e(false, 2, 59_000, Some(59_000))],
            ),
            step(
                1000,
                2,
                true,
                1,
                vec![e(true, 2, 500, None), e(true, 0, 59_000, None)],
            ),
        ],
    });
    // Several limits, one algorithm: 2/s (T = 500 ms) and 3/9s (T = 3 s) GCRA.
    cases.push(Case {
        name: "multi-gcra".to_owned(),
        limits: vec![
            Limit::new(quota(2, 1000, 2), Algorithm::Gcra),
            Limit::new(quota(3, 9000, 3), Algorithm::Gcra),
        ],
        steps: vec![
            step(
                0,
                2,
                true,
                0,
                vec![e(true, 0, 1000, None), e(true, 1, 6000, None)],
            ),
            // Both at 0 remaining: the longer reset binds.
            step(
                500,
                1,
                true,
                1,
                vec![e(true, 0, 1000, None), e(true, 0, 8500, None)],
            ),
            step(
                1500,
                1,
                false,
                1,
                vec![e(true, 2, 0, None), e(false, 0, 7500, Some(1500))],
            ),
        ],
    });
    // A peek reports without charging; the check after it sees the same state.
    let mut peeked = single(
        "peek",
        Limit::new(quota(2, 1000, 2), Algorithm::FixedWindow),
        &[
            (0, 1, true, 2, 0, None),
            (0, 2, true, 0, 1000, None),
            (10, 1, false, 0, 990, Some(990)),
        ],
    );
    peeked.steps[0].peek = true;
    peeked.steps[2].peek = true;
    cases.push(peeked);
    cases.extend(repeated());
    cases.extend(back_steps());
    cases.extend(refunds());
    cases
}

/// `case` with the steps at the given indexes made refunds, each of a charge made `since_ms`
/// before it.
fn refunding(mut case: Case, refunds: &[(usize, u64)]) -> Case {
    for &(i, since_ms) in refunds {
        case.steps[i].refund = Some(since_ms);
    }
    case
}

/// Refunds ([`Store::refund`]): at full (nothing to give back, never above capacity), after
/// the window rolled, on several limits at once (a limit listed twice given back once), and a
/// check admitted again after one. A refund's expectation is the peek of its cost it answers.
fn refunds() -> Vec<Case> {
    let q = quota(4, 1000, 4);
    let mut cases = Vec::new();
    // Buckets, 4/s (T = 250 ms): a refund at full gives nothing; 2 back at 100 (no refill yet)
    // let a check of 3 in; 4 back at 200 fill the bucket and no more: 4 pass, the 5th waits.
    let buckets: [Row; 8] = [
        (0, 2, true, 4, 0, None),
        (0, 3, true, 1, 750, None),
        (0, 2, false, 1, 750, Some(250)),
        (100, 2, true, 3, 150, None),
        (100, 3, true, 0, 900, None),
        (200, 4, true, 4, 0, None),
        (200, 4, true, 0, 1000, None),
        (200, 1, false, 0, 1000, Some(250)),
    ];
    for alg in [
        Algorithm::TokenBucket,
        Algorithm::LeakyBucket,
        Algorithm::Gcra,
    ] {
        let case = single(&format!("{alg}-refund"), Limit::new(q, alg), &buckets);
        cases.push(refunding(case, &[(0, 0), (3, 100), (5, 100)]));
    }
    // Fixed window: 2 of the 3 charged at 100 come back at 200; at 1100 a refund of a charge
    // of the window [0, 1000) gives nothing to [1000, 2000), nor does one at 1200 once that
    // window is stored.
    let fixed = single(
        "fixed_window-refund",
        Limit::new(q, Algorithm::FixedWindow),
        &[
            (0, 2, true, 4, 0, None),
            (100, 3, true, 1, 900, None),
            (200, 2, true, 3, 800, None),
            (300, 3, true, 0, 700, None),
            (300, 1, false, 0, 700, Some(700)),
            (1100, 3, true, 4, 0, None),
            (1100, 4, true, 0, 900, None),
            (1200, 1, false, 0, 800, Some(800)),
        ],
    );
    cases.push(refunding(fixed, &[(0, 0), (2, 100), (5, 800), (7, 1150)]));
    // Sliding window counter: a refund to the current window at 200; at 1250 one of a charge of
    // the window before goes to the previous count, which weighs 3/4 then: 2 of 4 carried, 2
    // fit; at 1300 another gives 1 more back to it.
    let counter = single(
        "sliding_window-refund",
        Limit::new(q, Algorithm::SlidingWindow),
        &[
            (0, 1, true, 4, 0, None),
            (100, 3, true, 1, 1900, None),
            (200, 2, true, 3, 1800, None),
            (300, 3, true, 0, 1700, None),
            (1250, 2, true, 2, 750, None),
            (1250, 2, true, 0, 1750, None),
            (1300, 1, true, 1, 1700, None),
        ],
    );
    cases.push(refunding(
        counter,
        &[(0, 0), (2, 100), (4, 1000), (6, 1300)],
    ));
    // Sliding window log: the oldest units logged since the charge time come back: at 500 one of
    // the 2 at 400; at 600 (charge time 0) the 2 at 0 and the one left at 400, so that the entry
    // at 500 sets the reset; at 1100 a charge time that has left the window gives nothing.
    let log = single(
        "sliding_window_log-refund",
        Limit::new(q, Algorithm::SlidingWindowLog),
        &[
            (0, 1, true, 4, 0, None),
            (0, 2, true, 2, 1000, None),
            (400, 2, true, 0, 1000, None),
            (500, 1, true, 1, 900, None),
            (500, 1, true, 0, 1000, None),
            (600, 3, true, 3, 900, None),
            (600, 3, true, 0, 1000, None),
            (1100, 2, false, 0, 500, Some(500)),
        ],
    );
    cases.push(refunding(log, &[(0, 0), (3, 100), (5, 600), (7, 1100)]));
    // Several limits: 4/s token bucket and 6/min fixed window, listed twice. A refund of 3
    // gives 3 back to the bucket and 3 (not 6) to the window; one of 4 fills both, no more.
    let e = |allowed, remaining, reset_ms, retry_ms| Expect {
        allowed,
        remaining,
        reset_ms,
        retry_ms,
    };
    let step = |at_ms, cost, refund, binding, expect: Vec<Expect>| Step {
        at_ms,
        cost,
        peek: false,
        refund,
        allowed: true,
        binding,
        expect,
    };
    let window = Limit::new(quota(6, 60_000, 6), Algorithm::FixedWindow);
    cases.push(Case {
        name: "multi-refund".to_owned(),
        limits: vec![Limit::new(q, Algorithm::TokenBucket), window, window],
        steps: vec![
            step(
                0,
                4,
                None,
                0,
                vec![
                    e(true, 0, 1000, None),
                    e(true, 2, 60_000, None),
                    e(true, 2, 60_000, None),
                ],
            ),
            step(
                100,
                3,
                Some(100),
                0,
                vec![
                    e(true, 3, 150, None),
                    e(true, 5, 59_900, None),
                    e(true, 5, 59_900, None),
                ],
            ),
            step(
                100,
                3,
                None,
                0,
                vec![
                    e(true, 0, 900, None),
                    e(true, 2, 59_900, None),
                    e(true, 2, 59_900, None),
                ],
            ),
            step(
                200,
                4,
                Some(200),
                0,
                vec![
                    e(true, 4, 0, None),
                    e(true, 6, 0, None),
                    e(true, 6, 0, None),
                ],
            ),
            step(
                200,
                4,
                None,
                0,
                vec![
                    e(true, 0, 1000, None),
                    e(true, 2, 59_800, None),
                    e(true, 2, 59_800, None),
                ],
            ),
        ],
    });
    cases
}

/// Time that steps back: a state written at t=1000 (by an instance whose clock is ahead, or
/// before a clock was stepped back) is checked at 900 or 950. No algorithm locks a client with
/// budget left out, and every wait is counted on the caller's clock.
fn back_steps() -> Vec<Case> {
    let q = quota(4, 1000, 4);
    // Token and leaky buckets count no refill before the state's time and admit from what the
    // state holds: 2 left at 1000 are still there at 900.
    let buckets: [Row; 4] = [
        (1000, 2, true, 2, 500, None),
        (900, 1, true, 1, 850, None),
        (900, 2, false, 1, 850, Some(350)),
        (1250, 2, true, 0, 1000, None),
    ];
    // GCRA measures its theoretical arrival time on the caller's clock: 100 ms behind, it
    // admits the same requests with the same waits, and reports the fraction of a unit those
    // 100 ms hold back as spent.
    let gcra: [Row; 4] = [
        (1000, 2, true, 2, 500, None),
        (900, 1, true, 0, 850, None),
        (900, 2, false, 0, 850, Some(350)),
        (1250, 2, true, 0, 1000, None),
    ];
    vec![
        single(
            "token_bucket-back",
            Limit::new(q, Algorithm::TokenBucket),
            &buckets,
        ),
        single(
            "leaky_bucket-back",
            Limit::new(q, Algorithm::LeakyBucket),
            &buckets,
        ),
        single("gcra-back", Limit::new(q, Algorithm::Gcra), &gcra),
        // The window [1000, 2000) is stored; at 950 the caller counts into it, not into the
        // window it thinks it is in, and waits until it ends.
        single(
            "fixed_window-back",
            Limit::new(q, Algorithm::FixedWindow),
            &[
                (1000, 1, true, 3, 1000, None),
                (950, 2, true, 1, 1050, None),
                (960, 2, false, 1, 1040, Some(1040)),
                (970, 1, true, 0, 1030, None),
                (2000, 4, true, 0, 1000, None),
            ],
        ),
        // The counter counts into the stored window as at its start (the previous window
        // weighs fully). At 960, 1 more fits once the weighted 4 drop to 3: 250 ms into the
        // next window, at 2250.
        single(
            "sliding_window-back",
            Limit::new(q, Algorithm::SlidingWindow),
            &[
                (1000, 2, true, 2, 2000, None),
                (950, 2, true, 0, 2050, None),
                (960, 1, false, 0, 2040, Some(1290)),
                (2250, 1, true, 0, 1750, None),
            ],
        ),
    ]
}

/// The same limit listed twice (two merged policies naming one quota): it counts once per
/// check, and a denial charges nothing. 3/min, cost 2: allowed (1 left), then denied with
/// nothing charged, then cost 1 still fits.
fn repeated() -> Vec<Case> {
    // (algorithm, reset after the first check, retry of the second, reset when spent).
    // Buckets: T = 20 s; windows: the one-minute window from BASE, whose weighted previous
    // window (sliding counter) lets 2 more in once 30 s of the next window have passed.
    let table = [
        (Algorithm::TokenBucket, 40_000, 20_000, 60_000),
        (Algorithm::LeakyBucket, 40_000, 20_000, 60_000),
        (Algorithm::Gcra, 40_000, 20_000, 60_000),
        (Algorithm::FixedWindow, 60_000, 60_000, 60_000),
        (Algorithm::SlidingWindowLog, 60_000, 60_000, 60_000),
        (Algorithm::SlidingWindow, 120_000, 90_000, 120_000),
    ];
    table
        .into_iter()
        .map(|(alg, first_reset, retry, spent_reset)| {
            let limit = Limit::new(quota(3, 60_000, 3), alg);
            let rows: [Row; 3] = [
                (0, 2, true, 1, first_reset, None),
                (0, 2, false, 1, first_reset, Some(retry)),
                (0, 1, true, 0, spent_reset, None),
            ];
            let mut case = single(&format!("{alg}-repeated"), limit, &rows);
            case.limits.push(limit);
            for step in &mut case.steps {
                let e = step.expect[0];
                step.expect.push(e);
            }
            case
        })
        .collect()
}

/// Runs every case against `store`, moving `clock` (which the store must read) to each
/// arrival. Keys are `"{key_prefix}:{case name}"`.
///
/// Returns the number of steps run.
///
/// # Errors
///
/// A report listing every step whose decision differed from the table.
pub async fn run<S: Store + ?Sized>(
    store: &S,
    clock: &ManualClock,
    key_prefix: &str,
) -> Result<usize, String> {
    let mut report = String::new();
    let mut steps = 0;
    for case in cases() {
        let key = format!("{key_prefix}:{}", case.name);
        for (i, step) in case.steps.iter().enumerate() {
            steps += 1;
            clock.set(BASE + Duration::from_millis(step.at_ms));
            let cost = nz(step.cost);
            let got = if let Some(since_ms) = step.refund {
                let charge = Charge::new(cost).elapsed(Duration::from_millis(since_ms));
                store.refund(&key, &case.limits, charge).await
            } else if step.peek {
                store.peek(&key, &case.limits, cost).await
            } else {
                store.check(&key, &case.limits, cost).await
            };
            match got {
                Ok(d) => {
                    if let Some(diff) = compare(&d, step) {
                        let _ = writeln!(
                            report,
                            "{} step {i} (t={}ms): {diff}",
                            case.name, step.at_ms
                        );
                    }
                }
                Err(e) => {
                    let _ = writeln!(report, "{} step {i}: store error: {e}", case.name);
                }
            }
        }
    }
    if report.is_empty() {
        Ok(steps)
    } else {
        Err(report)
    }
}

fn compare(d: &Decision, step: &Step) -> Option<String> {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let got: Vec<Expect> = d
        .snapshots()
        .iter()
        .map(|s| Expect {
            allowed: s.is_allowed(),
            remaining: s.remaining(),
            // Stores may count in finer ticks; the table is in whole milliseconds, rounded up.
            reset_ms: ms(s.reset_after() + Duration::from_nanos(999_999)),
            retry_ms: s
                .retry_after()
                .map(|r| ms(r + Duration::from_nanos(999_999))),
        })
        .collect();
    (d.is_allowed() != step.allowed || d.binding_index() != step.binding || got != step.expect)
        .then(|| {
            format!(
                "expected allowed={} binding={} {:?}, got allowed={} binding={} {:?}",
                step.allowed,
                step.binding,
                step.expect,
                d.is_allowed(),
                d.binding_index(),
                got
            )
        })
}

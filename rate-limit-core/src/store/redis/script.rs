//! The Lua script: one file per algorithm, each the twin of its Rust transition, and a
//! dispatcher that decides several limits all-or-nothing in one call.
//!
//! Ticks are microseconds: now since the epoch (about 1.8e15 µs) plus any span a [`Quota`] can
//! hold (at most [`MAX_SPAN`](crate::MAX_SPAN), about 3.2e15 µs) stays below 2^53, where Lua's
//! doubles are exact, until about the year 2140.

use std::sync::LazyLock;

use redis::{Script, ScriptInvocation};

use crate::algorithm::{Algorithm, Raw};
use crate::decision::Snapshot;
use crate::error::{StoreError, StoreErrorKind};
use crate::limit::Limit;
use crate::quota::Params;

/// Nanoseconds per tick in Redis.
pub(crate) const TICK_NANOS: u64 = 1_000;

/// Integers up to this are exact in a Lua number (a double).
pub(crate) const MAX_EXACT: u64 = 1 << 53;

/// Values per limit in the script's reply.
const REPLY_WIDTH: usize = 5;

/// The source: shared helpers, one function per algorithm, then the dispatcher.
pub(crate) const SOURCE: &str = concat!(
    include_str!("common.lua"),
    include_str!("token_bucket.lua"),
    include_str!("leaky_bucket.lua"),
    include_str!("fixed_window.lua"),
    include_str!("sliding_window_log.lua"),
    include_str!("sliding_window.lua"),
    include_str!("gcra.lua"),
    include_str!("decide.lua"),
);

/// The script, hashed once; invoked by `EVALSHA`, loaded on `NOSCRIPT`.
pub(crate) static DECIDE: LazyLock<Script> = LazyLock::new(|| Script::new(SOURCE));

/// The dispatcher's code for an algorithm (its index in `algorithms`, from 1).
fn code(algorithm: Algorithm) -> u8 {
    match algorithm {
        Algorithm::TokenBucket => 1,
        Algorithm::LeakyBucket => 2,
        Algorithm::FixedWindow => 3,
        Algorithm::SlidingWindowLog => 4,
        Algorithm::SlidingWindow => 5,
        Algorithm::Gcra => 6,
    }
}

/// The quota in microsecond ticks, if the script computes it exactly.
///
/// The sliding window counter multiplies counts (up to the limit) by ticks (up to the period):
/// `limit * period` must stay below 2^53.
pub(crate) fn params(limit: &Limit) -> Result<Params, StoreError> {
    let p = limit.quota().params(TICK_NANOS);
    if limit.algorithm() == Algorithm::SlidingWindow
        && u128::from(p.limit) * u128::from(p.period) >= u128::from(MAX_EXACT)
    {
        return Err(StoreError::new(
            StoreErrorKind::InvalidInput,
            format!(
                "{limit} needs limit x period in microseconds below 2^53 to be exact in Redis; \
                 use a shorter period, a smaller limit or another algorithm"
            ),
        ));
    }
    Ok(p)
}

/// Adds the script's arguments: now (empty for the server's `TIME`), cost, commit, then six
/// integers per limit.
pub(crate) fn push_args(
    inv: &mut ScriptInvocation<'_>,
    now_ticks: Option<u64>,
    cost: u32,
    commit: bool,
    limits: &[(Limit, Params)],
) {
    match now_ticks {
        Some(now) => inv.arg(now),
        None => inv.arg(""),
    };
    inv.arg(cost).arg(u8::from(commit));
    for (limit, p) in limits {
        inv.arg(code(limit.algorithm()))
            .arg(p.limit)
            .arg(p.burst)
            .arg(p.period)
            .arg(p.interval)
            .arg(p.tau);
    }
}

/// Reads the script's reply: five integers per limit.
pub(crate) fn parse_reply(
    reply: &[i64],
    limits: &[(Limit, Params)],
) -> Result<Vec<Snapshot>, StoreError> {
    if reply.len() != limits.len() * REPLY_WIDTH {
        return Err(malformed(format_args!(
            "{} values for {} limits",
            reply.len(),
            limits.len()
        )));
    }
    reply
        .chunks_exact(REPLY_WIDTH)
        .zip(limits)
        .map(|(r, (_, p))| {
            let ticks = |v: i64| u64::try_from(v).map_err(|_| malformed(format_args!("{v}")));
            let raw = Raw {
                allowed: r[0] == 1,
                capacity: ticks(r[1])?,
                remaining: ticks(r[2])?,
                reset_after: ticks(r[3])?,
                retry_after: if r[4] < 0 { None } else { Some(ticks(r[4])?) },
            };
            Ok(raw.snapshot(p))
        })
        .collect()
}

fn malformed(what: std::fmt::Arguments<'_>) -> StoreError {
    StoreError::new(
        StoreErrorKind::Backend,
        format!("malformed reply from the rate-limit script: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Quota;
    use std::num::NonZeroU32;
    use std::time::Duration;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn codes_follow_the_dispatcher_table() {
        let codes: Vec<u8> = Algorithm::ALL.into_iter().map(code).collect();
        assert_eq!(codes, [1, 2, 3, 4, 5, 6]);
        let table =
            "token_bucket, leaky_bucket, fixed_window, sliding_window_log, sliding_window, gcra,";
        assert!(SOURCE.contains(table));
        for a in Algorithm::ALL {
            assert!(SOURCE.contains(&format!("local function {}(", a.name())));
        }
    }

    #[test]
    fn sliding_window_products_must_stay_exact() {
        let ok = Limit::new(Quota::per_hour(nz(2_000_000)), Algorithm::SlidingWindow);
        assert!(params(&ok).is_ok());
        let day = Duration::from_secs(86_400);
        let big = Quota::with_period(nz(200_000), day).unwrap();
        let err = params(&Limit::new(big, Algorithm::SlidingWindow)).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput);
        // Other algorithms never multiply a count by a period.
        assert!(params(&Limit::new(big, Algorithm::SlidingWindowLog)).is_ok());
    }

    #[test]
    fn replies_convert_ticks_to_durations() {
        let l = Limit::new(Quota::per_second(nz(4)), Algorithm::Gcra);
        let limits = [(l, params(&l).unwrap())];
        let s = parse_reply(&[0, 4, 0, 1_000_000, 250_000], &limits).unwrap();
        assert_eq!(s[0].retry_after(), Some(Duration::from_millis(250)));
        assert_eq!(s[0].reset_after(), Duration::from_secs(1));
        let s = parse_reply(&[0, 4, 4, 0, -1], &limits).unwrap();
        assert!(s[0].is_never());
        let err = parse_reply(&[1, 2, 3], &limits).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Backend);
    }
}

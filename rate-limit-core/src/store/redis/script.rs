//! The Lua script: one file per algorithm, each the twin of its Rust transition, and an entry
//! point that decides a batch of checks in one call, each all-or-nothing across its limits.
//!
//! Ticks are microseconds: now since the epoch (about 1.8e15 µs) plus any span a [`Quota`] can
//! hold (at most [`MAX_SPAN`](crate::MAX_SPAN), about 3.2e15 µs) stays below 2^53, where Lua's
//! doubles are exact, until about the year 2140.

use std::sync::LazyLock;

use redis::{Script, ScriptInvocation, Value};

use super::keys;
use crate::algorithm::{Algorithm, Raw};
use crate::decision::{Decision, Snapshot};
use crate::error::{StoreError, StoreErrorKind};
use crate::limit::Limit;
use crate::quota::Params;

/// Nanoseconds per tick in Redis.
pub(crate) const TICK_NANOS: u64 = 1_000;

/// Integers up to this are exact in a Lua number (a double).
pub(crate) const MAX_EXACT: u64 = 1 << 53;

/// Values per limit in the script's reply.
const REPLY_WIDTH: usize = 5;

/// The source: shared helpers (the call's state cache), one function per algorithm, then the
/// entry point.
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

/// The entry point's code for an algorithm (its index in `algorithms`, from 1).
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

/// One check as the script reads it: its state keys (one per limit, all with the hash tag of
/// one client key) and the integers of its limits, prepared by the caller so that the call
/// itself only copies bytes.
pub(crate) struct Check {
    keys: Vec<String>,
    limits: Vec<(Algorithm, Params)>,
    cost: u32,
    commit: bool,
}

impl Check {
    /// The check of `limits` for the client `key`, with keys under `prefix`.
    ///
    /// # Errors
    ///
    /// `limits` is empty, or a limit cannot be decided exactly (see [`params`]).
    pub(crate) fn new(
        prefix: &str,
        key: &str,
        limits: &[Limit],
        cost: u32,
        commit: bool,
    ) -> Result<Self, StoreError> {
        if limits.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::InvalidInput,
                "no limits to check",
            ));
        }
        let tag = keys::tag(key);
        Ok(Self {
            keys: limits
                .iter()
                .map(|l| keys::state_key(prefix, &tag, l.id()))
                .collect(),
            limits: limits
                .iter()
                .map(|l| Ok((l.algorithm(), params(l)?)))
                .collect::<Result<_, StoreError>>()?,
            cost,
            commit,
        })
    }

    /// The Redis Cluster slot of its keys (they share one).
    pub(crate) fn slot(&self) -> u16 {
        self.keys.first().map_or(0, |k| keys::slot(k))
    }
}

/// The call that decides `checks` in order: every check's keys, then now (empty for the
/// server's `TIME`) and, per check, its number of limits, cost, commit and six integers per
/// limit.
pub(crate) fn invocation(now_ticks: Option<u64>, checks: &[&Check]) -> ScriptInvocation<'static> {
    let mut inv = DECIDE.prepare_invoke();
    for check in checks {
        for key in &check.keys {
            inv.key(key.as_str());
        }
    }
    match now_ticks {
        Some(now) => inv.arg(now),
        None => inv.arg(""),
    };
    for check in checks {
        inv.arg(check.limits.len())
            .arg(check.cost)
            .arg(u8::from(check.commit));
        for (algorithm, p) in &check.limits {
            inv.arg(code(*algorithm))
                .arg(p.limit)
                .arg(p.burst)
                .arg(p.period)
                .arg(p.interval)
                .arg(p.tau);
        }
    }
    inv
}

/// Reads the script's reply: one decision or error per check, in order. A reply that does not
/// fit `checks` is an error for each of them.
pub(crate) fn parse_batch(
    reply: Vec<Value>,
    checks: &[&Check],
) -> Vec<Result<Decision, StoreError>> {
    if reply.len() != checks.len() {
        let what = format!("{} answers for {} checks", reply.len(), checks.len());
        return checks
            .iter()
            .map(|_| Err(malformed(format_args!("{what}"))))
            .collect();
    }
    reply
        .into_iter()
        .zip(checks)
        .map(|(answer, check)| parse_answer(answer, check))
        .collect()
}

/// One check's answer: five integers per limit, or the error that check met, as text.
fn parse_answer(answer: Value, check: &Check) -> Result<Decision, StoreError> {
    match answer {
        Value::Array(values) => {
            let ints = values
                .into_iter()
                .map(|v| match v {
                    Value::Int(n) => Ok(n),
                    other => Err(malformed(format_args!("{other:?}"))),
                })
                .collect::<Result<Vec<i64>, StoreError>>()?;
            Ok(Decision::from_snapshots(parse_reply(&ints, &check.limits)?))
        }
        Value::BulkString(text) => Err(script_failed(&String::from_utf8_lossy(&text))),
        Value::SimpleString(text) => Err(script_failed(&text)),
        other => Err(malformed(format_args!("{other:?}"))),
    }
}

/// A check the script could not decide: a key holding another type (`WRONGTYPE`), a state it
/// cannot read.
fn script_failed(message: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Backend,
        format!("redis script failed: {message}"),
    )
}

/// Reads one check's part of the reply: five integers per limit.
fn parse_reply(reply: &[i64], limits: &[(Algorithm, Params)]) -> Result<Vec<Snapshot>, StoreError> {
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
    fn codes_follow_the_entry_point_table() {
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
        let limits = [(l.algorithm(), params(&l).unwrap())];
        let s = parse_reply(&[0, 4, 0, 1_000_000, 250_000], &limits).unwrap();
        assert_eq!(s[0].retry_after(), Some(Duration::from_millis(250)));
        assert_eq!(s[0].reset_after(), Duration::from_secs(1));
        let s = parse_reply(&[0, 4, 4, 0, -1], &limits).unwrap();
        assert!(s[0].is_never());
        let err = parse_reply(&[1, 2, 3], &limits).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Backend);
    }

    fn ints(v: &[i64]) -> Value {
        Value::Array(v.iter().map(|&n| Value::Int(n)).collect())
    }

    #[test]
    fn a_batch_reply_answers_each_check_on_its_own() {
        let l = Limit::new(Quota::per_second(nz(4)), Algorithm::Gcra);
        let a = Check::new("rl", "a", &[l], 1, true).unwrap();
        let b = Check::new("rl", "b", &[l, l], 1, true).unwrap();
        let checks = [&a, &b, &a];
        let reply = vec![
            ints(&[1, 4, 3, 250_000, -1]),
            Value::BulkString(b"WRONGTYPE Operation against a key".to_vec()),
            ints(&[0, 4, 0, 1_000_000, 250_000]),
        ];
        let answers = parse_batch(reply, &checks);
        assert_eq!(answers.len(), 3);
        assert_eq!(answers[0].as_ref().unwrap().remaining(), 3);
        let err = answers[1].as_ref().unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Backend);
        assert!(err.to_string().contains("WRONGTYPE"), "{err}");
        assert!(!answers[2].as_ref().unwrap().allowed());
        // Too few answers: every check gets an error, none a decision.
        let answers = parse_batch(vec![ints(&[1, 4, 3, 0, -1])], &checks);
        assert_eq!(answers.len(), 3);
        assert!(answers.iter().all(Result::is_err));
        // Five integers per limit, or the check's answer is malformed.
        let answers = parse_batch(vec![ints(&[1, 4, 3, 0, -1])], &[&b]);
        assert!(answers[0].is_err());
    }

    #[test]
    fn a_check_carries_one_key_per_limit_in_one_slot() {
        let l = Limit::new(Quota::per_second(nz(4)), Algorithm::Gcra);
        let m = Limit::new(Quota::per_hour(nz(4)), Algorithm::SlidingWindowLog);
        let c = Check::new("rl", "client-1", &[l, m], 2, false).unwrap();
        assert_eq!(c.keys.len(), 2);
        assert!(c.keys.iter().all(|k| k.starts_with("rl:{client-1}:")));
        assert_eq!(c.slot(), keys::slot("{client-1}"));
        let err = Check::new("rl", "k", &[], 1, true).err().unwrap();
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput);
    }
}

//! The Lua script: one file per algorithm, each the twin of its Rust transition, and an entry
//! point that decides a batch of checks in one call, each all-or-nothing across its limits.
//! It is a Redis Functions library ([`LIBRARY`], Redis 7.0 or later): loaded once per server,
//! so that a call runs only the entry point, not the definitions of every algorithm.
//!
//! Ticks are microseconds: now since the epoch (about 1.8e15 µs) plus any span a [`Quota`] can
//! hold (at most [`MAX_SPAN`](crate::MAX_SPAN), about 3.2e15 µs) stays below 2^53, where Lua's
//! doubles are exact, until about the year 2140. The bucket algorithms count their spans in
//! nanoseconds, as memory does (the script holds a span as microseconds and nanoseconds), so an
//! emission interval that is not a whole microsecond is used as it is, never rounded: the script
//! decides exactly as the in-memory transitions on the same microsecond arrivals, and its waits
//! are theirs rounded up to the microsecond. Windows are counted in ticks: their period must be a
//! whole number of microseconds.

use std::sync::LazyLock;

use redis::{Script, Value};

use super::keys;
use crate::algorithm::{Algorithm, Raw};
use crate::decision::{Decision, Snapshot};
use crate::error::{StoreError, StoreErrorKind};
use crate::limit::Limit;
use crate::quota::Params;
use crate::store::Charge;

/// Nanoseconds per tick in Redis.
pub(crate) const TICK_NANOS: u64 = 1_000;

/// Integers up to this are exact in a Lua number (a double).
pub(crate) const MAX_EXACT: u64 = 1 << 53;

/// Values per limit in the script's reply: remaining, reset after, retry after (or
/// [`ALLOWED`] or [`NEVER`]), each a little-endian double.
const REPLY_WIDTH: usize = 3;

/// Bytes of a limit's record.
const RECORD: usize = 8 * REPLY_WIDTH;

/// The last value of a record of an allowed check.
const ALLOWED: i64 = -1;

/// The last value of a record of a check denied for ever (its cost is above the capacity).
const NEVER: i64 = -2;

/// The first value of a failed check's record (a remaining count is never negative): then its
/// message's length as a double, and the message.
const FAILED: f64 = -1.0;

/// The library's code: shared helpers (the call's state cache), one function per algorithm,
/// then the entry point, `decide`.
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

/// The Redis Functions library that holds the script, loaded once per server (`FUNCTION
/// LOAD`): its code is defined then, and each call (`FCALL`) runs only the entry point.
pub(crate) struct Library {
    /// The library's name, which is also its one function's: `ratelimit_` and the SHA-1 of
    /// [`SOURCE`], so that a server holding another version's library (instances of two
    /// versions sharing it) never runs it with this version's arguments.
    pub(crate) name: String,
    /// What `FUNCTION LOAD` is given: the shebang naming the library, the source, and the
    /// registration of `decide` under the library's name.
    pub(crate) code: String,
}

/// The library of this version of the script.
pub(crate) static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    // The redis crate's script hash: the SHA-1 of the source, in hex.
    let name = format!("ratelimit_{}", Script::new(SOURCE).get_hash());
    let code = format!("#!lua name={name}\n{SOURCE}\nredis.register_function('{name}', decide)\n");
    Library { name, code }
});

/// `FUNCTION LOAD REPLACE` of [`LIBRARY`]: on Redis Cluster, the connection sends it to every
/// master. `REPLACE`, so that two clients loading it at once both succeed.
pub(crate) fn load_command() -> redis::Cmd {
    let mut cmd = redis::cmd("FUNCTION");
    cmd.arg("LOAD").arg("REPLACE").arg(LIBRARY.code.as_str());
    cmd
}

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
/// Windows (fixed, sliding log, sliding counter) are counted in ticks, so their period must be a
/// whole number of microseconds, or windows would not end where memory ends them. The sliding
/// window counter multiplies counts (up to the limit) by ticks (up to the period):
/// `limit * period` must stay below 2^53. Bucket algorithms count in nanoseconds (see
/// [`ScriptLimit`]) and are exact for every quota.
pub(crate) fn params(limit: &Limit) -> Result<Params, StoreError> {
    match refusal(limit) {
        Some(why) => Err(StoreError::new(StoreErrorKind::InvalidInput, why)),
        None => Ok(limit.quota().params(TICK_NANOS)),
    }
}

/// Why the script cannot decide `limit` exactly (see [`params`]), or `None` when it can.
pub(crate) fn refusal(limit: &Limit) -> Option<String> {
    let p = limit.quota().params(TICK_NANOS);
    if !limit.algorithm().is_bucket()
        && !limit.quota().period().subsec_nanos().is_multiple_of(1_000)
    {
        return Some(format!(
            "{limit} needs a period of whole microseconds in Redis, which counts windows in \
             microseconds; use a period of whole microseconds or a bucket algorithm"
        ));
    }
    if limit.algorithm() == Algorithm::SlidingWindow
        && u128::from(p.limit) * u128::from(p.period) >= u128::from(MAX_EXACT)
    {
        return Some(format!(
            "{limit} needs limit x period in microseconds below 2^53 to be exact in Redis; \
             use a shorter period, a smaller limit or another algorithm"
        ));
    }
    None
}

/// A limit as the script reads it: its algorithm, its quota in microsecond ticks, and its
/// emission interval in nanoseconds, the interval memory uses, which the script counts with as
/// whole microseconds and the nanoseconds left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScriptLimit {
    algorithm: Algorithm,
    p: Params,
    interval_nanos: u64,
    /// The limit's id, which its state key holds.
    id: u64,
}

impl ScriptLimit {
    /// `limit` for the script, if it computes it exactly (see [`params`]).
    pub(crate) fn new(limit: &Limit) -> Result<Self, StoreError> {
        Ok(Self {
            algorithm: limit.algorithm(),
            p: params(limit)?,
            interval_nanos: limit.nanos().interval,
            id: limit.id(),
        })
    }
}

/// A check as its caller asks it, before its [`Check`] is built: a caller whose check repeats
/// the one queued last (a hot key's callers) joins that one rather than build its own.
#[derive(Clone, Copy)]
pub(crate) struct Ask<'a> {
    pub(crate) prefix: &'a str,
    pub(crate) key: &'a str,
    pub(crate) limits: &'a [Limit],
    pub(crate) cost: u32,
    pub(crate) commit: bool,
}

impl Ask<'_> {
    /// The check asked for.
    ///
    /// # Errors
    ///
    /// As for [`Check::new`].
    pub(crate) fn check(&self) -> Result<Check, StoreError> {
        Check::new(self.prefix, self.key, self.limits, self.cost, self.commit)
    }
}

/// One value or several: a check's keys and limits, of which most checks have one, kept in
/// place rather than in a `Vec` of one.
#[derive(Debug)]
pub(crate) enum Few<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> std::ops::Deref for Few<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(many) => many,
        }
    }
}

/// One check as the script reads it: its state keys (one per limit, all with the hash tag of
/// one client key) and the integers of its limits, prepared by the caller so that the call
/// itself only copies bytes.
pub(crate) struct Check {
    keys: Few<String>,
    limits: Few<ScriptLimit>,
    cost: u32,
    commit: bool,
    /// A refund: how long before the call the charge was made, in ticks (rounded up, so that
    /// the charge time is never later than the one given). `None` for a check or a peek.
    refund: Option<u64>,
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
        let (keys, limits) = match limits {
            // Most checks have one limit: its key and limit are kept in place, not in two
            // `Vec`s (two allocations, about 300 client instructions a check).
            [limit] => (
                Few::One(keys::state_key(prefix, key, limit.id())),
                Few::One(ScriptLimit::new(limit)?),
            ),
            _ => (
                Few::Many(keys::state_keys(prefix, key, limits.iter().map(Limit::id))),
                Few::Many(
                    limits
                        .iter()
                        .map(ScriptLimit::new)
                        .collect::<Result<_, StoreError>>()?,
                ),
            ),
        };
        Ok(Self {
            keys,
            limits,
            cost,
            commit,
            refund: None,
        })
    }

    /// The refund of `charge` to `key` against `limits`: the script gives it back on every
    /// limit and answers a peek of its cost for each.
    ///
    /// # Errors
    ///
    /// As for [`new`](Self::new).
    pub(crate) fn refund(
        prefix: &str,
        key: &str,
        limits: &[Limit],
        charge: Charge,
    ) -> Result<Self, StoreError> {
        let mut check = Self::new(prefix, key, limits, charge.cost().get(), false)?;
        let since = u64::try_from(charge.since().as_nanos()).unwrap_or(u64::MAX);
        check.refund = Some(since.div_ceil(TICK_NANOS));
        Ok(check)
    }

    /// The entry's mode in the script: 0 a peek, 1 a check, 2 a refund.
    fn mode(&self) -> u64 {
        match self.refund {
            Some(_) => 2,
            None => u64::from(self.commit),
        }
    }

    /// Whether `other` asks the same: same keys, limits, cost and mode; at once for the very
    /// same check (a hot key's callers share one).
    fn same_as(&self, other: &Self) -> bool {
        std::ptr::eq(self, other) || (self.same_entry(other) && *self.keys == *other.keys)
    }

    /// Whether `ask` asks what this check asks (the same keys, limits, cost and mode), found
    /// without building its check. A limit is known by its id, the fingerprint of its
    /// algorithm and quota that its state key ends with (two limits of one id share one state
    /// in Redis whatever this answers). `false` for a client key that needs escaping: such a
    /// caller builds its own check.
    pub(crate) fn is_asked_by(&self, ask: &Ask<'_>) -> bool {
        self.refund.is_none()
            && self.cost == ask.cost
            && self.commit == ask.commit
            && self.limits.len() == ask.limits.len()
            && self
                .limits
                .iter()
                .zip(self.keys.iter())
                .zip(ask.limits)
                .all(|((l, key), asked)| {
                    l.id == asked.id() && keys::is_state_key_of(key, ask.prefix, ask.key)
                })
    }

    /// Whether `other` asks the same of its own keys: same limits, cost and mode.
    fn same_entry(&self, other: &Self) -> bool {
        self.cost == other.cost
            && self.commit == other.commit
            && self.refund == other.refund
            && *self.limits == *other.limits
    }

    /// Its first state key.
    #[cfg(test)]
    pub(crate) fn state_key(&self) -> &str {
        &self.keys[0]
    }

    /// The Redis Cluster slot of its keys (they share one).
    pub(crate) fn slot(&self) -> u16 {
        self.keys.first().map_or(0, |k| keys::slot(k))
    }
}

/// The command that decides `checks` in order: `FCALL` of [`LIBRARY`]'s function with every
/// run's keys, then now (empty for the server's `TIME`) and one argument per entry, its
/// integers separated by spaces: its number of limits, cost, mode (0 peek, 1 check, 2 refund),
/// repeat count, number of groups, for a refund how long ago the charge was made in ticks, and
/// six integers per limit. One argument, since Redis spends about a thousand instructions on
/// each argument of a call, and the script finds an entry it has read before by its text alone.
///
/// A run is identical checks in a row (the same keys, limits, cost and commit): a hot key's
/// checks in one batch are sent once, with a count, and the script decides each of them in
/// turn, so the reply still holds one answer per check. An entry is runs in a row of the same
/// length that differ only in their keys (the groups): checks of many keys under one limit share
/// one argument. Written straight into one [`redis::Cmd`], whose arguments share one buffer.
pub(crate) fn command(now_ticks: Option<u64>, checks: &[&Check]) -> redis::Cmd {
    let runs = runs(checks);
    let entries = entries(&runs);
    // Sized once: growing the buffers argument by argument cost a lone check more than a
    // tenth of its client instructions (callgrind, `bench/redis_client_instructions.sh`).
    let (args, bytes) = command_size(&runs, &entries);
    let mut cmd = redis::Cmd::with_capacity(args, bytes);
    cmd.arg("FCALL")
        .arg(LIBRARY.name.as_str())
        .arg(runs.iter().map(|(c, _)| c.keys.len()).sum::<usize>());
    for (check, _) in &runs {
        for key in check.keys.iter() {
            cmd.arg(key.as_str());
        }
    }
    match now_ticks {
        Some(now) => cmd.arg(now),
        None => cmd.arg(""),
    };
    let mut entry = Vec::with_capacity(
        ENTRY_HEAD + runs.first().map_or(0, |(c, _)| c.limits.len()) * ENTRY_LIMIT,
    );
    for (check, repeat, groups) in &entries {
        entry.clear();
        push_int(&mut entry, check.limits.len() as u64);
        for n in [
            u64::from(check.cost),
            check.mode(),
            *repeat as u64,
            *groups as u64,
        ]
        .into_iter()
        .chain(check.refund)
        {
            entry.push(b' ');
            push_int(&mut entry, n);
        }
        for l in check.limits.iter() {
            for n in [
                u64::from(code(l.algorithm)),
                l.p.limit,
                l.p.burst,
                l.p.period,
                l.interval_nanos / 1_000,
                l.interval_nanos % 1_000,
            ] {
                entry.push(b' ');
                push_int(&mut entry, n);
            }
        }
        cmd.arg(entry.as_slice());
    }
    cmd
}

/// Bytes of an entry's five integers (six for a refund), at most: each at its widest (20
/// digits), and a space.
const ENTRY_HEAD: usize = 6 * 21;

/// Bytes of a limit's six integers in an entry, at most.
const ENTRY_LIMIT: usize = 6 * 21;

/// Appends `n` in decimal, two digits per division (one digit at a time cost a lone check
/// about 950 client instructions over its eleven integers).
fn push_int(out: &mut Vec<u8>, mut n: u64) {
    // "00" to "99".
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    while n >= 100 {
        // Below 100, so its two digits are at 2 * pair.
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        digits[i..i + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        // A digit: below 10.
        digits[i] = b'0' + n as u8;
    }
    out.extend_from_slice(&digits[i..]);
}

/// Arguments, and bytes at most, of the command for `runs` sent as `entries`: every integer
/// counted at its widest (20 digits).
fn command_size(runs: &[(&Check, usize)], entries: &[(&Check, usize, usize)]) -> (usize, usize) {
    const INT: usize = 20;
    // FCALL, the function, the number of keys, now.
    let (mut args, mut bytes) = (4, "FCALL".len() + LIBRARY.name.len() + 3 * INT);
    for (check, _) in runs {
        args += check.keys.len();
        bytes += check.keys.iter().map(String::len).sum::<usize>();
    }
    for (check, _, _) in entries {
        args += 1;
        bytes += ENTRY_HEAD + check.limits.len() * ENTRY_LIMIT;
    }
    (args, bytes)
}

/// `runs` as entries: runs in a row of the same length whose checks differ only in their keys,
/// each with its first check, its runs' length and its number of runs (groups).
fn entries<'a>(runs: &[(&'a Check, usize)]) -> Vec<(&'a Check, usize, usize)> {
    let mut entries: Vec<(&Check, usize, usize)> = Vec::with_capacity(runs.len());
    for &(check, repeat) in runs {
        match entries.last_mut() {
            Some((first, r, groups)) if *r == repeat && first.same_entry(check) => *groups += 1,
            _ => entries.push((check, repeat, 1)),
        }
    }
    entries
}

/// `checks` as runs of identical checks in a row, each with its length.
fn runs<'a>(checks: &[&'a Check]) -> Vec<(&'a Check, usize)> {
    let mut runs: Vec<(&Check, usize)> = Vec::new();
    for &check in checks {
        match runs.last_mut() {
            Some((last, n)) if last.same_as(check) => *n += 1,
            _ => runs.push((check, 1)),
        }
    }
    runs
}

/// Reads the script's reply, one binary string: per check in order, one record per limit (three
/// little-endian doubles: remaining, reset after, and retry after, [`ALLOWED`] or [`NEVER`]), or
/// one record of the error that check met ([`FAILED`], the message's length as a double, the
/// message). The string is read in place: no value per integer is built. A reply that does not
/// line up with `checks` (too short, too long, an error record in the middle of a check's
/// records) is an error for every check: no answer in it can be trusted. A value that is not an
/// exact integer fails only its own check.
pub(crate) fn parse_batch(reply: Value, checks: &[&Check]) -> Vec<Result<Decision, StoreError>> {
    let read = match &reply {
        Value::BulkString(bytes) => read_records(bytes, checks),
        other => Err(format!("{other:?}, where one binary string was expected")),
    };
    match read {
        Ok(answers) => answers,
        Err(what) => checks
            .iter()
            .map(|_| Err(malformed(format_args!("{what}"))))
            .collect(),
    }
}

/// The answers in a reply's records, or what did not line up.
fn read_records(
    mut rest: &[u8],
    checks: &[&Check],
) -> Result<Vec<Result<Decision, StoreError>>, String> {
    let mut answers = Vec::with_capacity(checks.len());
    let mut ints = Vec::new();
    for (i, check) in checks.iter().enumerate() {
        let Some(first) = rest.get(..8) else {
            return Err(format!("{i} checks answered of {}", checks.len()));
        };
        let answer = if first == FAILED.to_le_bytes() {
            let length = rest
                .get(8..16)
                .and_then(exact_integer)
                .and_then(|n| usize::try_from(n).ok());
            let message = length.and_then(|n| rest.get(16..16 + n));
            let (Some(length), Some(message)) = (length, message) else {
                return Err(format!("check {i}: a torn error record"));
            };
            rest = &rest[16 + length..];
            Err(script_failed(&String::from_utf8_lossy(message)))
        } else {
            let n = check.limits.len();
            let Some((records, tail)) = rest.split_at_checked(n * RECORD) else {
                return Err(format!("check {i}: {} bytes for {n} limits", rest.len()));
            };
            if let Some(j) = records
                .chunks_exact(RECORD)
                .position(|r| r[..8] == FAILED.to_le_bytes())
            {
                return Err(format!("check {i}: an error record as limit {j}"));
            }
            rest = tail;
            // The records are whole, so the checks after this one still line up: a value
            // that is not an integer (a state corrupted out of band, read as infinity)
            // fails this check alone, as its own error would.
            let mut values = records.chunks_exact(RECORD).map(record_values);
            let decided = if n == 1 {
                // No `Vec` for the common case of one limit.
                values.next().flatten().map(|v| decision(&v, &check.limits))
            } else {
                ints.clear();
                values
                    .try_for_each(|v| v.map(|v| ints.extend_from_slice(&v)))
                    .map(|()| decision(&ints, &check.limits))
            };
            decided.unwrap_or_else(|| {
                Err(malformed(format_args!(
                    "check {i}: a value is not an integer"
                )))
            })
        };
        answers.push(answer);
    }
    if !rest.is_empty() {
        return Err(format!("{} bytes after the last check", rest.len()));
    }
    Ok(answers)
}

/// The three values of a limit's record, if each is an integer.
fn record_values(record: &[u8]) -> Option<[i64; REPLY_WIDTH]> {
    let mut values = [0; REPLY_WIDTH];
    for (value, bytes) in values.iter_mut().zip(record.chunks_exact(8)) {
        *value = exact_integer(bytes)?;
    }
    Some(values)
}

/// The integer that eight bytes hold as a little-endian double, if it is one the script can
/// send: a whole number from -2 ([`NEVER`]) up to 2^53, where doubles are exact.
fn exact_integer(bytes: &[u8]) -> Option<i64> {
    let v = f64::from_le_bytes(bytes.try_into().ok()?);
    // 2^53 is exact as a double, and every whole number from -2 to it is exact as an i64.
    if !(NEVER as f64..=MAX_EXACT as f64).contains(&v) {
        return None;
    }
    // Whole if it survives the round trip (cheaper than `fract`, a call to `trunc` on
    // x86-64's baseline): in range, `as` truncates toward zero, which only a fraction changes.
    let whole = v as i64;
    (whole as f64 == v).then_some(whole)
}

/// A check the script could not decide: a key holding another type (`WRONGTYPE`), a state it
/// cannot read.
fn script_failed(message: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Backend,
        format!("redis script failed: {message}"),
    )
}

/// One check's decision from its three values per limit; one limit needs no `Vec`.
fn decision(reply: &[i64], limits: &[ScriptLimit]) -> Result<Decision, StoreError> {
    match (limits, reply) {
        ([l], [_, _, _]) => Ok(Decision::single(snapshot(reply, l)?)),
        _ => parse_reply(reply, limits).map(Decision::from_snapshots),
    }
}

/// One limit's snapshot from its three values. Its capacity is the limit's: the burst of a
/// bucket, the limit of a window, as the algorithms answer.
fn snapshot(r: &[i64], l: &ScriptLimit) -> Result<Snapshot, StoreError> {
    let ticks = |v: i64| u64::try_from(v).map_err(|_| malformed(format_args!("{v}")));
    let capacity = if l.algorithm.is_bucket() {
        l.p.burst
    } else {
        l.p.limit
    };
    let raw = Raw {
        allowed: r[2] == ALLOWED,
        capacity,
        remaining: ticks(r[0])?,
        reset_after: ticks(r[1])?,
        retry_after: match r[2] {
            ALLOWED | NEVER => None,
            wait => Some(ticks(wait)?),
        },
    };
    Ok(raw.snapshot(&l.p))
}

/// One check's snapshots from its three values per limit.
fn parse_reply(reply: &[i64], limits: &[ScriptLimit]) -> Result<Vec<Snapshot>, StoreError> {
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
        .map(|(r, l)| snapshot(r, l))
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
    fn intervals_go_in_nanoseconds_and_window_periods_in_whole_microseconds() {
        // 3/s: 333,333,334 ns, sent as 333,333 µs and 334 ns.
        let l = Limit::new(Quota::per_second(nz(3)), Algorithm::TokenBucket);
        let c = Check::new("rl", "k", &[l], 1, true).unwrap();
        let a = args(&command(None, &[&c]));
        assert!(a[a.len() - 1].ends_with(" 333333 334"), "{a:?}");
        // 10^9/s: 1 ns.
        let l = Limit::new(Quota::per_second(nz(1_000_000_000)), Algorithm::Gcra);
        let c = Check::new("rl", "k", &[l], 1, true).unwrap();
        let a = args(&command(None, &[&c]));
        assert!(a[a.len() - 1].ends_with(" 0 1"), "{a:?}");
        // A window of 1.0000005 s cannot be counted in microseconds; a bucket on it can.
        let odd = Quota::with_period(nz(3), Duration::from_nanos(1_000_000_500)).unwrap();
        for a in Algorithm::ALL {
            let r = params(&Limit::new(odd, a));
            assert_eq!(r.is_ok(), a.is_bucket(), "{a}");
        }
    }

    #[test]
    fn replies_convert_ticks_to_durations() {
        let l = Limit::new(Quota::per_second(nz(4)), Algorithm::Gcra);
        let limits = [ScriptLimit::new(&l).unwrap()];
        let s = parse_reply(&[0, 1_000_000, 250_000], &limits).unwrap();
        assert!(!s[0].is_allowed());
        assert_eq!(s[0].retry_after(), Some(Duration::from_millis(250)));
        assert_eq!(s[0].reset_after(), Duration::from_secs(1));
        // The capacity is the limit's: a bucket's burst, a window's limit.
        assert_eq!(s[0].limit(), 4);
        let s = parse_reply(&[3, 250_000, ALLOWED], &limits).unwrap();
        assert!(s[0].is_allowed() && s[0].retry_after().is_none());
        assert_eq!(s[0].remaining(), 3);
        let s = parse_reply(&[4, 0, NEVER], &limits).unwrap();
        assert!(s[0].is_never());
        let w = Limit::new(
            Quota::per_second(nz(7)).burst(nz(9)).unwrap(),
            Algorithm::FixedWindow,
        );
        let s = parse_reply(&[7, 0, ALLOWED], &[ScriptLimit::new(&w).unwrap()]).unwrap();
        assert_eq!(s[0].limit(), 7);
        let err = parse_reply(&[1, 2], &limits).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Backend);
    }

    /// A limit's record, as the script packs it.
    fn record(values: [f64; 3]) -> Vec<u8> {
        let mut r = Vec::new();
        for v in values {
            r.extend_from_slice(&v.to_le_bytes());
        }
        r
    }

    /// A failed check's record, as the script packs it.
    fn failure(message: &str) -> Vec<u8> {
        let mut r = FAILED.to_le_bytes().to_vec();
        r.extend_from_slice(&f64::from(u32::try_from(message.len()).unwrap()).to_le_bytes());
        r.extend_from_slice(message.as_bytes());
        r
    }

    #[test]
    fn a_batch_reply_answers_each_check_on_its_own() {
        let l = Limit::new(Quota::per_second(nz(4)), Algorithm::Gcra);
        let a = Check::new("rl", "a", &[l], 1, true).unwrap();
        let b = Check::new("rl", "b", &[l, l], 1, true).unwrap();
        let checks = [&a, &b, &a, &b];
        let parts = [
            record([3.0, 250_000.0, -1.0]),
            failure("WRONGTYPE Operation against a key"),
            record([0.0, 1_000_000.0, 250_000.0]),
            record([2.0, 500_000.0, -1.0]),
            record([1.0, 750_000.0, -1.0]),
        ];
        let reply = parts.concat();
        let answers = parse_batch(Value::BulkString(reply.clone()), &checks);
        assert_eq!(answers.len(), 4);
        let first = answers[0].as_ref().unwrap();
        assert_eq!(first.remaining(), 3);
        assert_eq!(first.reset_after(), Duration::from_millis(250));
        let err = answers[1].as_ref().unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Backend);
        assert!(err.to_string().contains("WRONGTYPE"), "{err}");
        let third = answers[2].as_ref().unwrap();
        assert!(!third.is_allowed());
        assert_eq!(third.retry_after(), Some(Duration::from_millis(250)));
        // Two limits: two records, the binding one the tighter.
        let d = answers[3].as_ref().unwrap();
        assert_eq!(d.snapshots().len(), 2);
        assert_eq!(d.remaining(), 1);

        // Anything that does not line up: nothing is trusted.
        let mut long = reply.clone();
        long.push(b'D');
        // The failure's mark altered: read as records, what follows no longer lines up.
        let mut retagged = reply.clone();
        retagged[RECORD] = b'X';
        // The second limit of the last check marked as a failure.
        let mut mixed = reply.clone();
        let second = reply.len() - RECORD;
        mixed[second..second + 8].copy_from_slice(&FAILED.to_le_bytes());
        let mut torn_failure = parts.concat();
        torn_failure.truncate(RECORD + 12);
        let bad = [
            Value::BulkString(reply[..reply.len() - 1].to_vec()),
            Value::BulkString(long),
            Value::BulkString(retagged),
            Value::BulkString(mixed),
            Value::BulkString(torn_failure),
            Value::BulkString(Vec::new()),
            Value::Int(1),
            Value::Array(vec![Value::Int(1), Value::Int(4)]),
        ];
        for bad in bad {
            let answers = parse_batch(bad.clone(), &checks);
            assert_eq!(answers.len(), 4);
            for answer in &answers {
                let err = answer.as_ref().unwrap_err();
                assert!(
                    err.to_string().contains("malformed reply"),
                    "{bad:?}: {err}"
                );
            }
        }

        // A whole record holding a value that is not an integer (a corrupted state): only its
        // check fails, whether it is a check's only limit or the second of two.
        for v in [0.5, 2f64.powi(54), -3.0, f64::NAN, f64::INFINITY] {
            let first = [&[record([v, 0.0, -1.0])], &parts[1..]].concat();
            let last = [&parts[..4], &[record([1.0, v, -1.0])]].concat();
            for (reply, bad) in [(first, 0), (last, 3)] {
                let answers = parse_batch(Value::BulkString(reply.concat()), &checks);
                assert_eq!(answers.len(), 4);
                for (i, answer) in answers.iter().enumerate() {
                    match (i, answer) {
                        (i, Err(err)) if i == bad => {
                            assert!(err.to_string().contains("not an integer"), "{v}: {err}");
                        }
                        (1, Err(err)) => assert!(err.to_string().contains("WRONGTYPE")),
                        (_, Ok(_)) => {}
                        (i, other) => panic!("{v}: check {i}: {other:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn exact_integers_are_whole_numbers_from_minus_two_to_two_to_the_53() {
        let read = |v: f64| exact_integer(&v.to_le_bytes());
        assert_eq!(read(-2.0), Some(-2));
        assert_eq!(read(-1.0), Some(-1));
        assert_eq!(read(0.0), Some(0));
        assert_eq!(read(4_294_967_295.0), Some(4_294_967_295));
        assert_eq!(read(2f64.powi(53)), Some(1 << 53));
        for v in [
            -3.0,
            -1.5,
            0.25,
            2f64.powi(53) + 2.0,
            f64::NAN,
            f64::INFINITY,
        ] {
            assert_eq!(read(v), None, "{v}");
        }
        assert_eq!(exact_integer(&[0; 7]), None);
    }

    /// The command's arguments as text.
    fn args(cmd: &redis::Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "<not a plain argument>".to_owned(),
            })
            .collect()
    }

    #[test]
    fn identical_checks_in_a_row_are_sent_once_with_a_count() {
        let l = Limit::new(Quota::per_second(nz(4)), Algorithm::Gcra);
        let hot = Check::new("rl", "hot", &[l], 1, true).unwrap();
        let hot_again = Check::new("rl", "hot", &[l], 1, true).unwrap();
        let peek = Check::new("rl", "hot", &[l], 1, false).unwrap();
        let two = Check::new("rl", "hot", &[l], 2, true).unwrap();
        let other = Check::new("rl", "other", &[l], 1, true).unwrap();
        let checks = [&hot, &hot_again, &hot, &peek, &two, &other, &hot];
        let runs: Vec<usize> = runs(&checks).iter().map(|(_, n)| *n).collect();
        // Only neighbours merge: order is kept, and the last `hot` is a run of its own.
        assert_eq!(runs, [3, 1, 1, 1, 1]);

        let limit_args = |cost: &str, commit: &str, repeat: &str, groups: &str| {
            // 4/s: 1 s in microseconds, an interval of 250,000 µs and 0 ns.
            let v = [
                "1", cost, commit, repeat, groups, "6", "4", "4", "1000000", "250000", "0",
            ];
            v.join(" ")
        };
        let a = args(&command(Some(42), &checks));
        assert_eq!(a[0], "FCALL");
        assert_eq!(a[1], LIBRARY.name);
        // One key per entry, then now, then each entry's header and limit.
        assert_eq!(a[2], "5");
        let hot_key = hot.keys[0].as_str();
        let other_key = other.keys[0].as_str();
        assert_eq!(&a[3..8], [hot_key, hot_key, hot_key, other_key, hot_key]);
        assert_eq!(a[8], "42");
        // One argument per entry: the runs of `other` and the last `hot` differ only in their
        // keys, and share one, of two groups.
        let want = [
            limit_args("1", "1", "3", "1"),
            limit_args("1", "0", "1", "1"),
            limit_args("2", "1", "1", "1"),
            limit_args("1", "1", "1", "2"),
        ];
        assert_eq!(a[9..], want);
        // Runs of different lengths are entries of their own.
        let a = args(&command(Some(42), &[&hot, &other, &other, &hot]));
        assert_eq!(
            a[7..],
            [
                limit_args("1", "1", "1", "1"),
                limit_args("1", "1", "2", "1"),
                limit_args("1", "1", "1", "1"),
            ]
        );
        // Server time: now is sent empty.
        assert_eq!(args(&command(None, &[&hot]))[4], "");
    }

    #[test]
    fn integers_are_written_in_decimal() {
        let powers = (0..20).map(|e| 10u64.pow(e));
        let edges = powers.flat_map(|p| [p - 1, p, p + 1]);
        for n in (0..=100_000).chain(edges).chain([u64::MAX - 1, u64::MAX]) {
            let mut out = b"x".to_vec();
            push_int(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    #[test]
    fn a_command_fits_the_room_it_is_given() {
        let l = Limit::new(Quota::per_second(nz(4)), Algorithm::Gcra);
        let m = Limit::new(Quota::per_hour(nz(u32::MAX)), Algorithm::SlidingWindowLog);
        let long = "{%}".repeat(300);
        let a = Check::new("rl", "a", &[l], u32::MAX, true).unwrap();
        let b = Check::new("prefix", &long, &[l, m], 1, false).unwrap();
        for checks in [vec![&a], vec![&a, &a, &b, &a, &b, &b]] {
            let runs = runs(&checks);
            let (args, bytes) = command_size(&runs, &entries(&runs));
            let cmd = command(Some(u64::MAX), &checks);
            assert_eq!(cmd.args_iter().count(), args);
            let written: usize = cmd
                .args_iter()
                .map(|a| match a {
                    redis::Arg::Simple(b) => b.len(),
                    _ => 0,
                })
                .sum();
            assert!(written <= bytes, "{written} bytes written, {bytes} given");
        }
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

    #[test]
    fn a_refund_is_an_entry_of_mode_2_with_the_ticks_since_its_charge() {
        let l = Limit::new(Quota::per_second(nz(4)), Algorithm::Gcra);
        // 1.5 µs ago: rounded up to 2 ticks, so the charge time is never later than given.
        let charge = Charge::new(nz(3)).elapsed(Duration::from_nanos(1_500));
        let refund = Check::refund("rl", "k", &[l], charge).unwrap();
        let check = Check::new("rl", "k", &[l], 3, true).unwrap();
        let a = args(&command(Some(42), &[&refund, &refund, &check]));
        // The two refunds are one entry with a count; the check is not one of them.
        assert_eq!(a[2], "2");
        assert_eq!(a[6], "1 3 2 2 1 2 6 4 4 1000000 250000 0");
        assert_eq!(a[7], "1 3 1 1 1 6 4 4 1000000 250000 0");
        let runs = runs(&[&refund]);
        let (args_n, bytes) = command_size(&runs, &entries(&runs));
        let cmd = command(None, &[&refund]);
        assert_eq!(cmd.args_iter().count(), args_n);
        let written: usize = args(&cmd).iter().map(String::len).sum();
        assert!(written <= bytes);
        let err = Check::refund("rl", "k", &[], charge).err().unwrap();
        assert_eq!(err.kind(), StoreErrorKind::InvalidInput);
    }
}

//! Response headers: legacy `X-RateLimit-*`, the IETF `RateLimit` and `RateLimit-Policy` fields,
//! and `Retry-After`.

use std::cell::Cell;
use std::sync::LazyLock;
use std::time::Duration;

use http::header::{Entry, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue};
use rate_limit_core::{Decision, Limit};

use crate::policy::Policy;

/// `X-RateLimit-Limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Which rate-limit headers responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeaderStyle {
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`, for the binding limit.
    Legacy,
    /// The IETF draft's `RateLimit-Policy: "api";q=100;w=60` and `RateLimit: "api";r=42;t=17`,
    /// one list member per limit.
    Ietf,
    /// Both of the above.
    #[default]
    Both,
    /// No rate-limit headers (a 429 still carries `Retry-After`).
    None,
}

impl HeaderStyle {
    fn legacy(self) -> bool {
        matches!(self, Self::Legacy | Self::Both)
    }

    fn ietf(self) -> bool {
        matches!(self, Self::Ietf | Self::Both)
    }
}

/// How `X-RateLimit-Reset` is written. (The IETF `t` is always delta seconds.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ResetStyle {
    /// Seconds from now until the limit is full again, rounded up.
    #[default]
    DeltaSeconds,
    /// The Unix time, in seconds rounded up, at which the limit is full again.
    UnixSeconds,
}

/// Whole seconds, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A `Retry-After` value: whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    ceil_secs(d).max(1)
}

/// Sets `Retry-After` to `wait`, rounded up to whole seconds and never 0.
pub(crate) fn set_retry_after(headers: &mut HeaderMap, wait: Duration) {
    headers.insert(RETRY_AFTER, number(retry_after_secs(wait)));
}

/// Numbers below this are header values made once, so writing them allocates nothing.
const SMALL_NUMBERS: u64 = 1024;

/// `0`, `1`, ... `1023` written one after another: the text the small values point into.
static SMALL_TEXT: LazyLock<String> = LazyLock::new(|| {
    let mut text = Vec::new();
    for n in 0..SMALL_NUMBERS {
        push_decimal(&mut text, n);
    }
    String::from_utf8(text).unwrap_or_default()
});

/// The header value of every number below [`SMALL_NUMBERS`], each a slice of [`SMALL_TEXT`].
static SMALL_VALUES: LazyLock<Box<[HeaderValue]>> = LazyLock::new(|| {
    let text: &'static str = &SMALL_TEXT;
    let mut start = 0;
    (0..SMALL_NUMBERS)
        .map(|n| {
            let len = decimal_len(n);
            let value = HeaderValue::from_static(&text[start..start + len]);
            start += len;
            value
        })
        .collect()
});

/// `n` as a header value: shared for small numbers, formatted otherwise.
pub(crate) fn number(n: u64) -> HeaderValue {
    match usize::try_from(n) {
        Ok(i) if n < SMALL_NUMBERS => SMALL_VALUES[i].clone(),
        _ => HeaderValue::from(n),
    }
}

/// How many decimal digits `n` has.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

/// Appends `n` in decimal to `buf`, with no formatting machinery.
pub(crate) fn push_decimal(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        // `n % 10` is a digit: the cast cannot truncate.
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// `q` and `w` of a limit: the capacity and the seconds it takes to refill.
///
/// Window algorithms admit `limit` per `period`. Buckets hold `burst`, which refills in
/// `burst` emission intervals; with the default burst that is again `limit` per `period`.
pub(crate) fn quota_and_window(limit: &Limit) -> (u32, u64) {
    let quota = limit.quota();
    if limit.algorithm().is_bucket() && quota.burst_size() != quota.limit() {
        let burst = quota.burst_size().get();
        (burst, ceil_secs(quota.emission_interval() * burst))
    } else {
        (quota.limit().get(), ceil_secs(quota.period()))
    }
}

/// The `RateLimit-Policy` field for `limits`, the member named `members[i]` describing
/// `limits[i]`: `"api";q=100;w=60`, members joined by `, `.
pub(crate) fn policy_field(members: &[String], limits: &[Limit]) -> Option<HeaderValue> {
    let mut field = Vec::with_capacity(members.iter().map(|m| m.len() + 26).sum());
    for (member, limit) in members.iter().zip(limits) {
        let (q, w) = quota_and_window(limit);
        if !field.is_empty() {
            field.extend_from_slice(b", ");
        }
        field.extend_from_slice(member.as_bytes());
        field.extend_from_slice(b";q=");
        push_decimal(&mut field, u64::from(q));
        field.extend_from_slice(b";w=");
        push_decimal(&mut field, w);
    }
    HeaderValue::try_from(field).ok()
}

/// Writes the rate-limit headers the layer writes for `decision` under `policy`, in `style`,
/// with `X-RateLimit-Reset` in delta seconds: for endpoints that report a client's state
/// without going through the layer, such as a status page answering from
/// [`Store::peek`](rate_limit_core::Store::peek) with the layer's
/// [store key](Policy::store_key).
///
/// Legacy fields already present are kept (as when layers nest); IETF fields are appended.
///
/// ```
/// use std::time::Duration;
/// use http::HeaderMap;
/// use rate_limit_core::{Algorithm, Decision, Limit, Quota, Snapshot};
/// use tower_ratelimit::{HeaderStyle, Policy, headers};
///
/// let limit = Limit::new(Quota::per_minute(100), Algorithm::Gcra);
/// let policy = Policy::new("api", [limit])?;
/// let snapshot = Snapshot::allowed(100).with_remaining(42).with_reset_after(Duration::from_millis(16_500));
/// let decision = Decision::single(snapshot);
/// let mut map = HeaderMap::new();
/// headers::write_headers(&mut map, HeaderStyle::Both, &policy, &decision);
/// assert_eq!(map["x-ratelimit-remaining"], "42");
/// assert_eq!(map["x-ratelimit-reset"], "17");
/// assert_eq!(map["ratelimit"], "\"api\";r=42;t=17");
/// assert_eq!(map["ratelimit-policy"], "\"api\";q=100;w=60");
/// # Ok::<(), rate_limit_core::ConfigError>(())
/// ```
pub fn write_headers(
    headers: &mut HeaderMap,
    style: HeaderStyle,
    policy: &Policy,
    decision: &Decision,
) {
    let settings = HeaderSettings {
        style,
        reset: ResetStyle::DeltaSeconds,
    };
    set_rate_limit_headers(headers, settings, policy, decision, || Duration::ZERO);
}

/// What the header writer needs besides the decision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeaderSettings {
    pub(crate) style: HeaderStyle,
    pub(crate) reset: ResetStyle,
}

/// Writes the rate-limit headers for `decision` under `policy`.
///
/// When layers nest (a route layer inside a router layer), the response passes the inner one
/// first: the legacy headers it set are kept (the most specific policy, and the one that denied),
/// and the IETF fields, which are lists, get one more field line per layer.
///
/// Every field describes the limits that decided. When a local store decided on other limits
/// than the policy's ([`Decision::local_limits`]: a `Fallback`'s share while the shared store
/// is away), `RateLimit-Policy` gives their `q` and `w` under the policy's member names, as
/// `X-RateLimit-Limit` and `RateLimit` give their capacity and what is left of it.
///
/// `now` is the current Unix time, read only for [`ResetStyle::UnixSeconds`].
pub(crate) fn set_rate_limit_headers(
    headers: &mut HeaderMap,
    settings: HeaderSettings,
    policy: &Policy,
    decision: &Decision,
    now: impl FnOnce() -> Duration,
) {
    let ietf = settings.style.ietf();
    // One growth of the map for every field, rather than one per insert.
    headers.reserve(if settings.style.legacy() { 3 } else { 0 } + if ietf { 2 } else { 0 });
    if settings.style.legacy()
        && let Entry::Vacant(slot) = headers.entry(X_RATELIMIT_LIMIT)
    {
        let limit = decision.limit();
        slot.insert(match policy.limit_value(decision.binding_index()) {
            Some((n, value)) if *n == limit => value.clone(),
            _ => number(u64::from(limit)),
        });
        headers.insert(
            X_RATELIMIT_REMAINING,
            number(u64::from(decision.remaining())),
        );
        let reset = match settings.reset {
            ResetStyle::DeltaSeconds => ceil_secs(decision.reset_after()),
            ResetStyle::UnixSeconds => ceil_secs(now().saturating_add(decision.reset_after())),
        };
        headers.insert(X_RATELIMIT_RESET, number(reset));
    }
    if ietf {
        match decision.local_limits() {
            None => {
                if let Some(value) = policy.header() {
                    headers.append(RATELIMIT_POLICY, value.clone());
                }
            }
            Some(local) => {
                if let Some(value) = policy_field(policy.members(), local) {
                    headers.append(RATELIMIT_POLICY, value);
                }
            }
        }
        let members = policy.members();
        let mut field = take_field_buffer();
        for (member, snapshot) in members.iter().zip(decision.snapshots()) {
            if !field.is_empty() {
                field.extend_from_slice(b", ");
            }
            field.extend_from_slice(member.as_bytes());
            field.extend_from_slice(b";r=");
            push_decimal(&mut field, u64::from(snapshot.remaining()));
            field.extend_from_slice(b";t=");
            push_decimal(&mut field, ceil_secs(snapshot.reset_after()));
        }
        // Copied into a value of its own length: one allocation. (A `Vec` handed over with
        // room to spare would cost a second one, for the shared buffer it becomes.)
        if let Ok(value) = HeaderValue::from_bytes(&field) {
            headers.append(RATELIMIT, value);
        }
        return_field_buffer(field);
    }
}

thread_local! {
    /// Where this thread writes the `RateLimit` field before it is copied into its value.
    static FIELD_BUFFER: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// An empty field buffer: this thread's, or a new one.
fn take_field_buffer() -> Vec<u8> {
    FIELD_BUFFER.try_with(Cell::take).unwrap_or_default()
}

/// Gives `field` back to this thread, unless a field of many limits made it large.
fn return_field_buffer(mut field: Vec<u8>) {
    if field.capacity() <= 1024 {
        field.clear();
        // During the thread's teardown there is no buffer to give it back to.
        let _ = FIELD_BUFFER.try_with(|buffer| buffer.set(field));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_and_is_never_zero() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(
            retry_after_secs(Duration::from_secs(59) + Duration::from_nanos(1)),
            60
        );
    }

    #[test]
    fn numbers_are_written_in_decimal_shared_or_not() {
        for n in [0, 1, 9, 10, 99, 100, 1023, 1024, 4_294_967_295, u64::MAX] {
            assert_eq!(number(n).to_str().unwrap(), n.to_string(), "{n}");
            let mut buf = b"x".to_vec();
            push_decimal(&mut buf, n);
            assert_eq!(buf, format!("x{n}").into_bytes());
        }
        assert_eq!(decimal_len(0), 1);
        assert_eq!(decimal_len(1000), 4);
    }

    #[test]
    fn ceil_secs_keeps_zero() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
    }
}

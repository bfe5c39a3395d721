//! Response headers: legacy `X-RateLimit-*`, the IETF `RateLimit` and `RateLimit-Policy` fields,
//! and `Retry-After`.

use std::fmt::Write as _;
use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderName, HeaderValue};
use rate_limit_core::Decision;

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
    headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
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
/// `now` is the current Unix time, read only for [`ResetStyle::UnixSeconds`].
pub(crate) fn set_rate_limit_headers(
    headers: &mut HeaderMap,
    settings: HeaderSettings,
    policy: &Policy,
    decision: &Decision,
    now: impl FnOnce() -> Duration,
) {
    if settings.style.legacy() && !headers.contains_key(X_RATELIMIT_LIMIT) {
        headers.insert(X_RATELIMIT_LIMIT, HeaderValue::from(decision.limit()));
        headers.insert(
            X_RATELIMIT_REMAINING,
            HeaderValue::from(decision.remaining()),
        );
        let reset = match settings.reset {
            ResetStyle::DeltaSeconds => ceil_secs(decision.reset_after()),
            ResetStyle::UnixSeconds => ceil_secs(now().saturating_add(decision.reset_after())),
        };
        headers.insert(X_RATELIMIT_RESET, HeaderValue::from(reset));
    }
    if settings.style.ietf() {
        if let Some(value) = policy.header() {
            headers.append(RATELIMIT_POLICY, value.clone());
        }
        let mut field = String::with_capacity(32 * decision.snapshots().len());
        for (member, snapshot) in policy.members().iter().zip(decision.snapshots()) {
            if !field.is_empty() {
                field.push_str(", ");
            }
            // Writing to a String cannot fail.
            let _ = write!(
                field,
                "{member};r={};t={}",
                snapshot.remaining(),
                ceil_secs(snapshot.reset_after())
            );
        }
        if let Ok(value) = HeaderValue::try_from(field) {
            headers.append(RATELIMIT, value);
        }
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
    fn ceil_secs_keeps_zero() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
    }
}

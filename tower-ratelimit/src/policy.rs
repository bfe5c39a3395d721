//! [`Policy`]: a named set of limits, with its `RateLimit-Policy` field computed once.

use std::fmt;
use std::sync::{Arc, OnceLock};

use http::HeaderValue;
use rate_limit_core::{ConfigError, Limit};

use crate::headers::{number, policy_field, quota_and_window};
use crate::observe::{self, DecisionKeys, Outcome};

/// The longest policy name.
const MAX_NAME_LEN: usize = 64;

/// A named set of limits that are checked together (all-or-nothing).
///
/// The name labels metrics, prefixes store keys (two layers with the same name and key share a
/// budget) and names the IETF `RateLimit-Policy` members. A policy is cheap to clone; build the
/// ones a [policy hook](crate::RateLimitLayer::policy) picks from once, at start-up.
///
/// ```
/// use rate_limit_core::{Algorithm, Limit, Quota};
/// use tower_ratelimit::Policy;
///
/// let per_sec = Limit::new(Quota::per_second(10), Algorithm::Gcra);
/// let per_hour = Limit::new(Quota::per_hour(1000), Algorithm::Gcra);
/// let premium = Policy::new("premium", [per_sec, per_hour])?;
/// assert_eq!(premium.name(), "premium");
/// assert_eq!(premium.limits().len(), 2);
/// assert!(Policy::new("bad name", [per_sec]).is_err());
/// # Ok::<(), rate_limit_core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct Policy {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    /// `{name}:`, the start of every store key.
    prefix: Box<str>,
    limits: Box<[Limit]>,
    /// Each limit's IETF member name, already serialized as a structured-field string.
    members: Box<[String]>,
    /// The `RateLimit-Policy` field value.
    header: Option<HeaderValue>,
    /// Each limit's capacity (`q`) and its `X-RateLimit-Limit` value, made once.
    limit_values: Box<[(u32, HeaderValue)]>,
    /// The decision counters' metric keys, made on the first decision.
    metric_keys: OnceLock<DecisionKeys>,
}

impl Policy {
    /// A policy named `name` enforcing every one of `limits`.
    ///
    /// # Errors
    ///
    /// `name` is empty, longer than 64 bytes, or has characters other than ASCII letters, digits,
    /// `-`, `_` and `.`; or `limits` is empty.
    pub fn new(name: &str, limits: impl IntoIterator<Item = Limit>) -> Result<Self, ConfigError> {
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(ConfigError::new(
                "policy name",
                name,
                "must be 1 to 64 ASCII letters, digits, `-`, `_` or `.`",
            ));
        }
        let limits: Box<[Limit]> = limits.into_iter().collect();
        if limits.is_empty() {
            return Err(ConfigError::new(
                "limits",
                "[]",
                "a policy needs at least one limit",
            ));
        }
        let members = member_names(name, &limits);
        let limit_values = limits
            .iter()
            .map(|l| {
                let q = quota_and_window(l).0;
                (q, number(u64::from(q)))
            })
            .collect();
        let header = policy_field(&members, &limits);
        Ok(Self {
            inner: Arc::new(Inner {
                name: Arc::from(name),
                prefix: format!("{name}:").into_boxed_str(),
                limits,
                members,
                header,
                limit_values,
                metric_keys: OnceLock::new(),
            }),
        })
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The key the layer hands the store for the client key `key` (an extractor's key, compacted
    /// as the [key module](crate::key) describes): `{name}:{key}`. Layers whose policies share a
    /// name share one budget per key; a status page peeks the store with this key.
    ///
    /// ```
    /// # use rate_limit_core::{Algorithm, Limit, Quota};
    /// # let limit = Limit::new(Quota::per_second(1), Algorithm::Gcra);
    /// let api = tower_ratelimit::Policy::new("api", [limit])?;
    /// assert_eq!(api.store_key("client-1"), "api:client-1");
    /// # Ok::<(), rate_limit_core::ConfigError>(())
    /// ```
    pub fn store_key(&self, key: &str) -> String {
        let mut out = String::with_capacity(self.name().len() + 1 + key.len());
        self.push_store_key_prefix(&mut out);
        out.push_str(key);
        out
    }

    /// Appends the start of every [`store_key`](Self::store_key) of this policy, `{name}:`, to
    /// `out`: the client key is appended after it.
    pub(crate) fn push_store_key_prefix(&self, out: &mut String) {
        out.push_str(&self.inner.prefix);
    }

    /// Turns the client key in `key` into its [`store_key`](Self::store_key), in place.
    pub(crate) fn prefix_store_key(&self, key: &mut String) {
        key.insert_str(0, &self.inner.prefix);
    }

    /// The limits, in order.
    pub fn limits(&self) -> &[Limit] {
        &self.inner.limits
    }

    pub(crate) fn shared_name(&self) -> &Arc<str> {
        &self.inner.name
    }

    pub(crate) fn members(&self) -> &[String] {
        &self.inner.members
    }

    pub(crate) fn header(&self) -> Option<&HeaderValue> {
        self.inner.header.as_ref()
    }

    /// The capacity of limit `index` and its header value.
    pub(crate) fn limit_value(&self, index: usize) -> Option<&(u32, HeaderValue)> {
        self.inner.limit_values.get(index)
    }

    /// Counts one decision of this policy on `backend`.
    pub(crate) fn count(&self, backend: &'static str, outcome: Outcome) {
        observe::decision(&self.inner.metric_keys, &self.inner.name, backend, outcome);
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.name())
            .field("limits", &self.limits())
            .finish()
    }
}

/// `"api"` for a single limit; `"api-1s"`, `"api-3600s"` for several (by index if windows repeat).
fn member_names(name: &str, limits: &[Limit]) -> Box<[String]> {
    if limits.len() == 1 {
        return Box::new([format!("\"{name}\"")]);
    }
    let windows: Vec<u64> = limits.iter().map(|l| quota_and_window(l).1).collect();
    let distinct = windows
        .iter()
        .enumerate()
        .all(|(i, w)| !windows[..i].contains(w));
    windows
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if distinct {
                format!("\"{name}-{w}s\"")
            } else {
                format!("\"{name}-{i}\"")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rate_limit_core::{Algorithm, Quota};
    use std::num::NonZeroU32;

    fn limit(n: u32, q: fn(NonZeroU32) -> Quota) -> Limit {
        Limit::new(q(NonZeroU32::new(n).unwrap()), Algorithm::FixedWindow)
    }

    #[test]
    fn single_limit_field() {
        let p = Policy::new("api", [limit(100, Quota::per_minute)]).unwrap();
        assert_eq!(p.header().unwrap(), "\"api\";q=100;w=60");
    }

    #[test]
    fn several_limits_are_named_by_window() {
        let p = Policy::new(
            "api",
            [limit(10, Quota::per_second), limit(1000, Quota::per_hour)],
        )
        .unwrap();
        assert_eq!(
            p.header().unwrap(),
            "\"api-1s\";q=10;w=1, \"api-3600s\";q=1000;w=3600"
        );
        let same = Policy::new(
            "x",
            [limit(1, Quota::per_second), limit(2, Quota::per_second)],
        );
        assert_eq!(same.unwrap().members(), ["\"x-0\"", "\"x-1\""]);
    }

    #[test]
    fn bucket_burst_shows_in_quota() {
        let q = Quota::per_second(NonZeroU32::new(10).unwrap())
            .burst(NonZeroU32::new(25).unwrap())
            .unwrap();
        let p = Policy::new("b", [Limit::new(q, Algorithm::TokenBucket)]).unwrap();
        assert_eq!(p.header().unwrap(), "\"b\";q=25;w=3");
    }

    #[test]
    fn rejects_bad_names_and_no_limits() {
        assert_eq!(
            Policy::new("", [limit(1, Quota::per_second)])
                .unwrap_err()
                .setting(),
            "policy name"
        );
        assert!(Policy::new("a\"b", [limit(1, Quota::per_second)]).is_err());
        assert_eq!(Policy::new("ok", []).unwrap_err().setting(), "limits");
    }
}

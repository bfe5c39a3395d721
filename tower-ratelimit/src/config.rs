//! The settings a layer shares with its services, and what they decide before the store call.

use std::cell::RefCell;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::request::Parts;
use rate_limit_core::{Algorithm, BoxFuture, Clock, Decision, Store, StoreError};
use tracing::Instrument as _;

use crate::headers::{HeaderSettings, HeaderStyle};
use crate::key::{self, KeyExtractor};
use crate::observe::{self, LayerLog};
use crate::outcome::{Charged, CountIf};
use crate::policy::Policy;
use rate_limit_core::logging::Causes;

/// What to do with a request from which no key can be extracted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// Let it through, unlimited and without rate-limit headers.
    Skip,
    /// Answer `400 Bad Request` (the default): a missing key is more often a misconfigured
    /// server (no peer address, no proxy header) than a client to wave through. Counted as
    /// the outcome `missing_key`; when the extractor reads the peer address and the request
    /// has none, logged once at WARN with the fix.
    #[default]
    Reject,
    /// Charge it to this one key, shared by every such request.
    Shared(String),
}

/// What to do when the store cannot decide (timeout, lost connection, open circuit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FailureMode {
    /// Let the request through; its response carries a
    /// [`StoreFailure`](crate::StoreFailure) extension (the default).
    #[default]
    Open,
    /// Answer `503 Service Unavailable` with `Retry-After: 1`.
    Closed,
}

pub(crate) type PolicyFn = dyn Fn(&Parts, &str) -> Option<Policy> + Send + Sync;
pub(crate) type CostFn = dyn Fn(&Parts) -> u32 + Send + Sync;
pub(crate) type SkipFn = dyn Fn(&Parts) -> bool + Send + Sync;

/// Everything a layer and its services share, behind one `Arc`.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) backend: &'static str,
    pub(crate) key: Arc<dyn KeyExtractor>,
    /// Whether `key` is a built-in extractor whose keys are compact as written
    /// ([`key::writes_compact`]), so that they need no second look.
    pub(crate) key_compact: bool,
    pub(crate) algorithm: Algorithm,
    pub(crate) policy: Policy,
    pub(crate) policy_fn: Option<Arc<PolicyFn>>,
    pub(crate) cost: Option<Arc<CostFn>>,
    /// Requests that are not limited at all (preflights, health checks).
    pub(crate) skip: Option<Arc<SkipFn>>,
    pub(crate) headers: HeaderSettings,
    /// Whether the [`Decision`] goes into the request's and the response's extensions.
    pub(crate) decision_extensions: bool,
    pub(crate) missing: MissingKey,
    pub(crate) shadow: bool,
    pub(crate) failure: FailureMode,
    pub(crate) clock: Arc<dyn Clock>,
    /// The store latency histogram's metric key, made once.
    pub(crate) duration_key: Arc<metrics::Key>,
    /// What is logged once, or once per interval.
    pub(crate) log: Arc<LayerLog>,
    /// Which responses count ([`RateLimitLayer::count_if`](crate::RateLimitLayer::count_if)).
    pub(crate) count_if: Option<Arc<CountIf>>,
}

thread_local! {
    /// The store key buffer of the requests planned on this thread: a key decided in place
    /// (memory store, deny cache) is only borrowed by the store, so one buffer serves them all
    /// and a request allocates no key. One that goes to the store's future takes the buffer
    /// with it; the next request on the thread starts a new one.
    static KEY_BUFFER: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Room a new key buffer starts with: a policy name, `:` and a hashed key (33 bytes) fit.
const KEY_BUFFER_START: usize = 64;

/// A buffer larger than this is not kept for the next request (a long key, before hashing).
const KEY_BUFFER_KEEP: usize = 512;

/// Runs `f` with this thread's key buffer, empty, borrowed in place (no move in or out); with a
/// new buffer if this thread's is in use (a hook that sends a request through another layer on
/// the same thread) or gone (the thread's teardown).
fn with_key_buffer<T>(mut f: impl FnMut(&mut String) -> T) -> T {
    let done = KEY_BUFFER.try_with(|buffer| {
        let mut key = buffer.try_borrow_mut().ok()?;
        if key.capacity() == 0 {
            key.reserve(KEY_BUFFER_START);
        }
        let out = f(&mut key);
        if key.capacity() > KEY_BUFFER_KEEP {
            *key = String::new();
        } else {
            key.clear();
        }
        Some(out)
    });
    match done {
        Ok(Some(out)) => out,
        _ => f(&mut String::with_capacity(KEY_BUFFER_START)),
    }
}

/// What to do with a request, once planned and, if the store can answer in place, decided.
pub(crate) enum Planned {
    /// Not limited: call the inner service.
    Pass,
    /// No key and [`MissingKey::Reject`].
    MissingKey,
    /// Allowed in place, and already counted, with nothing to write on the response or give
    /// back: call the inner service.
    Admitted,
    /// The store answered in place ([`Store::try_check_now`]).
    Decided {
        picked: Option<Policy>,
        charge: Option<Box<Charged>>,
        result: Result<Decision, StoreError>,
    },
    /// The store answers through its future, for this store key.
    Ask {
        picked: Option<Policy>,
        cost: NonZeroU32,
        charge: Option<Box<Charged>>,
        key: String,
    },
}

/// What to do with a request, decided from its head before any I/O.
enum Plan {
    /// Not limited: call the inner service.
    Pass,
    /// No key and [`MissingKey::Reject`].
    MissingKey,
    /// Ask the store, with the store key written into the caller's buffer, under the policy a
    /// [policy hook](crate::RateLimitLayer::policy) picked (`None`: the layer's own, borrowed
    /// from the settings rather than cloned for each request).
    Check {
        picked: Option<Policy>,
        cost: NonZeroU32,
    },
}

impl Shared {
    /// Plans the request and asks the store for an answer in place, with the store key in this
    /// thread's buffer: a request decided in place allocates no key. The buffer goes with a
    /// request whose store answers through a future.
    pub(crate) fn plan_and_check(&self, parts: &Parts) -> Planned {
        with_key_buffer(|key| {
            let (picked, cost) = match self.plan(parts, key) {
                Plan::Check { picked, cost } => (picked, cost),
                Plan::Pass => return Planned::Pass,
                Plan::MissingKey => return Planned::MissingKey,
            };
            let charge = self.charge(key, cost);
            let policy = picked.as_ref().unwrap_or(&self.policy);
            match self.check_now(key, policy, cost) {
                // The decision goes no further: nothing carries it on (a copy of it at each step
                // out to the response future).
                Some(Ok(decision)) if decision.is_allowed() && self.quiet() => {
                    policy.count(self.backend, observe::Outcome::Allowed);
                    Planned::Admitted
                }
                Some(result) => Planned::Decided {
                    picked,
                    charge,
                    result,
                },
                None => Planned::Ask {
                    picked,
                    cost,
                    charge,
                    key: std::mem::take(key),
                },
            }
        })
    }

    /// Whether an allowed request's response gets nothing from the layer: no header, no
    /// decision in its extensions, no charge to give back (`count_if`).
    #[inline]
    pub(crate) fn quiet(&self) -> bool {
        self.headers.style == HeaderStyle::None
            && !self.decision_extensions
            && self.count_if.is_none()
    }

    /// Plans the request, writing its store key (`{policy}:{key}`) into `store_key`, which
    /// the caller passes empty: a buffer it reuses, so that a key costs no allocation.
    fn plan(&self, parts: &Parts, store_key: &mut String) -> Plan {
        if self.skip.as_ref().is_some_and(|skip| skip(parts)) {
            return Plan::Pass;
        }
        let Some(pick) = &self.policy_fn else {
            // The usual case: the key is written straight after the policy's prefix.
            self.policy.push_store_key_prefix(store_key);
            let start = store_key.len();
            if !self.extract_into(parts, store_key, start) {
                return self.missing_plan();
            }
            let Some(cost) = self.cost(parts) else {
                return Plan::Pass;
            };
            return Plan::Check { picked: None, cost };
        };
        if !self.extract_into(parts, store_key, 0) {
            return self.missing_plan();
        }
        let picked = pick(parts, store_key);
        let Some(cost) = self.cost(parts) else {
            return Plan::Pass;
        };
        picked
            .as_ref()
            .unwrap_or(&self.policy)
            .prefix_store_key(store_key);
        Plan::Check { picked, cost }
    }

    /// Appends the request's compacted key to `out`, or the shared key of
    /// [`MissingKey::Shared`]; `false` when there is neither.
    fn extract_into(&self, parts: &Parts, out: &mut String, start: usize) -> bool {
        if self.key.extract_into(parts, out)
            && ((self.key_compact && out.len() > start) || key::compact_tail(out, start))
        {
            return true;
        }
        out.truncate(start);
        match &self.missing {
            MissingKey::Shared(shared) => {
                out.push_str(shared);
                key::compact_tail(out, start)
            }
            MissingKey::Reject | MissingKey::Skip => false,
        }
    }

    /// The request's cost; `None` (not limited) for a cost of 0.
    fn cost(&self, parts: &Parts) -> Option<NonZeroU32> {
        match &self.cost {
            Some(cost) => NonZeroU32::new(cost(parts)),
            None => Some(NonZeroU32::MIN),
        }
    }

    /// A request rejected for want of a key: counted (outcome `missing_key`, under the default
    /// policy, as no policy hook ran), and logged at DEBUG, or once at WARN when an extractor
    /// that reads the peer address finds none in the request: a server set up wrong.
    pub(crate) fn missing_key(&self, parts: &Parts) {
        self.policy
            .count(self.backend, observe::Outcome::MissingKey);
        let no_peer = self.key.reads_peer_addr() && key::peer_ip(parts).is_none();
        if no_peer && !self.log.no_peer_address.swap(true, Ordering::Relaxed) {
            tracing::warn!(policy = self.policy.name(), "{}", key::NO_PEER_ADDRESS);
        } else {
            tracing::debug!(
                policy = self.policy.name(),
                no_peer_address = no_peer,
                "rate limit key missing: rejected"
            );
        }
    }

    /// The plan for a request with no key (and no usable shared key).
    fn missing_plan(&self) -> Plan {
        match &self.missing {
            MissingKey::Reject => Plan::MissingKey,
            MissingKey::Skip | MissingKey::Shared(_) => Plan::Pass,
        }
    }

    /// The store's answer without a future, if it can give one ([`Store::try_check_now`]).
    /// Not timed: such an answer waits for nothing (a memory store's check takes well under a
    /// microsecond, below the histogram's first bucket), and two clock reads would cost more
    /// than the decision; `ratelimit_store_duration_seconds` times the calls that wait. The key
    /// is never logged.
    #[inline]
    pub(crate) fn check_now(
        &self,
        key: &str,
        policy: &Policy,
        cost: NonZeroU32,
    ) -> Option<Result<Decision, StoreError>> {
        let result = self.store.try_check_now(key, policy.limits(), cost)?;
        if let Ok(d) = &result {
            tracing::debug!(
                policy = policy.name(),
                backend = self.backend,
                allowed = d.is_allowed(),
                remaining = d.remaining(),
                "rate limit decided in place"
            );
        }
        Some(result)
    }

    /// Logs a store failure at WARN, at most once per
    /// [`FAILURE_LOG_INTERVAL`](observe::FAILURE_LOG_INTERVAL), with the number of failures
    /// held back since the last one logged. The key is never logged.
    pub(crate) fn log_failure(&self, policy: &Policy, err: &StoreError) {
        let now = u64::try_from(self.clock.now().as_nanos()).unwrap_or(u64::MAX);
        if let Some(held) = self.log.failures.pass(now) {
            tracing::warn!(
                policy = policy.name(),
                backend = self.backend,
                failure_mode = ?self.failure,
                failures_not_logged = held,
                error = %err,
                cause = %Causes(err),
                "rate limit store failed"
            );
        }
    }

    /// The store call, owned, timed and traced. The key is never logged.
    pub(crate) fn check(
        &self,
        key: String,
        policy: Policy,
        cost: NonZeroU32,
    ) -> BoxFuture<'static, Result<Decision, StoreError>> {
        let store = Arc::clone(&self.store);
        let clock = Arc::clone(&self.clock);
        let backend = self.backend;
        let duration_key = Arc::clone(&self.duration_key);
        let span = tracing::debug_span!(
            "ratelimit.check",
            policy = policy.name(),
            backend,
            cost = cost.get()
        );
        Box::pin(
            async move {
                let start = clock.now();
                let result = store.check(&key, policy.limits(), cost).await;
                observe::store_duration(&duration_key, clock.now().saturating_sub(start));
                if let Ok(d) = &result {
                    tracing::debug!(
                        allowed = d.is_allowed(),
                        remaining = d.remaining(),
                        "rate limit decided"
                    );
                }
                result
            }
            .instrument(span),
        )
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitConfig")
            .field("backend", &self.backend)
            .field("policy", &self.policy)
            .field("policy_fn", &self.policy_fn.is_some())
            .field("cost", &self.cost.is_some())
            .field("skip", &self.skip.is_some())
            .field("headers", &self.headers)
            .field("decision_extensions", &self.decision_extensions)
            .field("missing", &self.missing)
            .field("shadow", &self.shadow)
            .field("failure", &self.failure)
            .field("count_if", &self.count_if.is_some())
            .finish_non_exhaustive()
    }
}

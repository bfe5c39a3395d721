//! The settings a layer shares with its services, and what they decide before the store call.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use http::request::Parts;
use rate_limit_core::{Algorithm, BoxFuture, Clock, Decision, Store, StoreError};
use tracing::Instrument as _;

use crate::headers::HeaderSettings;
use crate::key::{self, KeyExtractor};
use crate::observe;
use crate::policy::Policy;

/// What to do with a request from which no key can be extracted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissingKey {
    /// Let it through, unlimited and without rate-limit headers.
    Skip,
    /// Answer `400 Bad Request` (the default): a missing key is more often a misconfigured
    /// server (no peer address, no proxy header) than a client to wave through.
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

/// Everything a layer and its services share, behind one `Arc`.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) backend: &'static str,
    pub(crate) key: Arc<dyn KeyExtractor>,
    pub(crate) algorithm: Algorithm,
    pub(crate) policy: Policy,
    pub(crate) policy_fn: Option<Arc<PolicyFn>>,
    pub(crate) cost: Option<Arc<CostFn>>,
    pub(crate) headers: HeaderSettings,
    pub(crate) missing: MissingKey,
    pub(crate) shadow: bool,
    pub(crate) failure: FailureMode,
    pub(crate) clock: Arc<dyn Clock>,
}

/// What to do with a request, decided from its head before any I/O.
pub(crate) enum Plan {
    /// Not limited: call the inner service.
    Pass,
    /// No key and [`MissingKey::Reject`].
    MissingKey,
    /// Ask the store.
    Check {
        key: String,
        policy: Policy,
        cost: NonZeroU32,
    },
}

impl Shared {
    pub(crate) fn plan(&self, parts: &Parts) -> Plan {
        let key = match self.key.extract(parts).and_then(key::compact) {
            Some(key) => key,
            None => match &self.missing {
                MissingKey::Shared(shared) => match key::compact(shared.clone()) {
                    Some(key) => key,
                    None => return Plan::Pass,
                },
                MissingKey::Reject => return Plan::MissingKey,
                MissingKey::Skip => return Plan::Pass,
            },
        };
        let policy = self
            .policy_fn
            .as_ref()
            .and_then(|pick| pick(parts, &key))
            .unwrap_or_else(|| self.policy.clone());
        let cost = match &self.cost {
            Some(cost) => match NonZeroU32::new(cost(parts)) {
                Some(cost) => cost,
                None => return Plan::Pass,
            },
            None => NonZeroU32::MIN,
        };
        Plan::Check {
            key: policy.store_key(&key),
            policy,
            cost,
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
                observe::store_duration(backend, clock.now().saturating_sub(start));
                match &result {
                    Ok(d) => tracing::debug!(
                        allowed = d.allowed(),
                        remaining = d.remaining(),
                        "rate limit decided"
                    ),
                    Err(err) => tracing::warn!(error = %err, "rate limit store failed"),
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
            .field("headers", &self.headers)
            .field("missing", &self.missing)
            .field("shadow", &self.shadow)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

//! Metrics (decisions by outcome, store latency) and the logs of store failures, at most one
//! per [`FAILURE_LOG_INTERVAL`] per layer. Keys never become labels and are never logged.
//!
//! | name | kind | labels | meaning |
//! |------|------|--------|---------|
//! | `ratelimit_decisions_total` | counter | `policy`, `outcome`, `backend` | requests by outcome: `allowed`, `denied`, `shadow_denied`, `failed_open`, `failed_closed`, `missing_key` |
//! | `ratelimit_store_duration_seconds` | histogram | `backend` | time of each store call that waits (see below) |
//! | `ratelimit_refunds_total` | counter | `policy`, `result`, `backend` | with [`count_if`](crate::RateLimitLayer::count_if), charges given back for responses that do not count: `refunded`, or `failed` (the charge stays) |
//!
//! All are described when a layer is built (install the recorder first). Metric keys (name
//! and labels) are built once, when a policy first reports to a backend, and reused: a request
//! allocates nothing here. Handles are not cached, so a recorder installed later (or a
//! thread-local one in a test) still sees every decision.
//!
//! # Store latency
//!
//! The histogram times the store calls that wait for their answer (a Redis round trip, a
//! timeout). A decision the store makes in place ([`Store::try_check_now`]: every
//! `MemoryStore` check, a `RedisStore` deny-cache hit) waits for nothing, takes well under a
//! microsecond, and is not timed: its two clock reads would cost more than the decision.
//! Such decisions are counted in `ratelimit_decisions_total` like any other; a layer on a
//! `MemoryStore` has no latency series.
//!
//! [`Store::try_check_now`]: rate_limit_core::Store::try_check_now
//!
//! ## In Prometheus
//!
//! `metrics-exporter-prometheus` renders a histogram as a summary (quantiles over a sliding
//! window, which cannot be aggregated across instances) unless it is given buckets for it. Give
//! `ratelimit_store_duration_seconds` buckets, such as [`STORE_DURATION_BUCKETS`] (50 µs to
//! 1 s, around the 50 ms default budget of a store call), and it is a histogram whose
//! `_bucket` series sum over instances (here with a store that answers only through its
//! future, as a remote store does):
//!
//! ```
//! use http::Request;
//! use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
//! use rate_limit_core::{MemoryStore, Quota};
//! # use std::num::NonZeroU32;
//! # use rate_limit_core::{BoxFuture, Decision, Limit, Store, StoreError};
//! # /// A memory store that decides only through its future, as a remote store does.
//! # struct Remote(MemoryStore);
//! # impl Store for Remote {
//! #     fn check<'a>(&'a self, key: &'a str, limits: &'a [Limit], cost: NonZeroU32)
//! #         -> BoxFuture<'a, Result<Decision, StoreError>> { self.0.check(key, limits, cost) }
//! #     fn peek<'a>(&'a self, key: &'a str, limits: &'a [Limit], cost: NonZeroU32)
//! #         -> BoxFuture<'a, Result<Decision, StoreError>> { self.0.peek(key, limits, cost) }
//! #     fn backend(&self) -> &'static str { "remote" }
//! # }
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_ratelimit::RateLimitLayer;
//! use tower_ratelimit::observe::{STORE_DURATION_BUCKETS, STORE_DURATION_SECONDS};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let remote_store = Remote(MemoryStore::new());
//! let recorder = PrometheusBuilder::new()
//!     .set_buckets_for_metric(
//!         Matcher::Full(STORE_DURATION_SECONDS.to_owned()),
//!         &STORE_DURATION_BUCKETS,
//!     )?
//!     .build_recorder(); // an application calls `install_recorder()` instead
//! let handle = recorder.handle();
//! metrics::with_local_recorder(&recorder, || {
//!     let layer = RateLimitLayer::new(remote_store, Quota::per_second(1));
//!     let svc = ServiceBuilder::new().layer(layer).service(service_fn(|_: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(()))
//!     }));
//!     let rt = tokio::runtime::Builder::new_current_thread().build()?;
//!     rt.block_on(svc.oneshot(Request::new(())))?;
//!     Ok::<_, Box<dyn std::error::Error>>(())
//! })?;
//! let text = handle.render();
//! assert!(text.contains("# TYPE ratelimit_store_duration_seconds histogram"));
//! assert!(text.contains(r#"ratelimit_store_duration_seconds_bucket{backend="remote",le="0.00005"}"#));
//! assert!(text.contains(r#"ratelimit_store_duration_seconds_bucket{backend="remote",le="+Inf"} 1"#));
//! assert!(text.contains(r#"ratelimit_decisions_total{policy="default",outcome="allowed",backend="remote"} 1"#));
//! # Ok(())
//! # }
//! ```

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Key, Label, Level, Metadata};
use rate_limit_core::logging::Throttle;

/// Counter of decisions, labelled `policy`, `outcome` and `backend`.
pub const DECISIONS_TOTAL: &str = "ratelimit_decisions_total";
/// Histogram of store call latency in seconds, labelled `backend`: the calls that wait, not
/// the decisions a store makes in place (see [Store latency](self#store-latency)).
pub const STORE_DURATION_SECONDS: &str = "ratelimit_store_duration_seconds";

/// Bucket bounds, in seconds, for [`STORE_DURATION_SECONDS`] in a Prometheus exporter: an
/// in-memory check falls in the first, a Redis round trip in the middle ones, and a call that
/// times out at the default 50 ms budget in the `0.05` bucket or just above it. See
/// [Prometheus](self#store-latency-in-prometheus).
pub const STORE_DURATION_BUCKETS: [f64; 13] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Describes the layer's metrics to the recorder installed now.
pub(crate) fn describe() {
    metrics::describe_counter!(
        DECISIONS_TOTAL,
        "Rate-limited requests by policy, outcome and store backend"
    );
    metrics::describe_histogram!(
        STORE_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "Time of each rate-limit store call, by store backend"
    );
    metrics::describe_counter!(
        REFUNDS_TOTAL,
        "Charges given back for responses that do not count, by policy, result and backend"
    );
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// What happened to a request, as the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Allowed,
    Denied,
    ShadowDenied,
    FailedOpen,
    FailedClosed,
    MissingKey,
}

impl Outcome {
    const ALL: [Self; 6] = [
        Self::Allowed,
        Self::Denied,
        Self::ShadowDenied,
        Self::FailedOpen,
        Self::FailedClosed,
        Self::MissingKey,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::ShadowDenied => "shadow_denied",
            Self::FailedOpen => "failed_open",
            Self::FailedClosed => "failed_closed",
            Self::MissingKey => "missing_key",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A policy's decision counters for one backend, one key per outcome.
pub(crate) struct DecisionKeys {
    backend: &'static str,
    keys: [Key; 6],
}

impl DecisionKeys {
    fn new(policy: &Arc<str>, backend: &'static str) -> Self {
        Self {
            backend,
            keys: Outcome::ALL.map(|outcome| decision_key(policy, backend, outcome)),
        }
    }
}

fn decision_key(policy: &Arc<str>, backend: &'static str, outcome: Outcome) -> Key {
    Key::from_parts(
        DECISIONS_TOTAL,
        vec![
            Label::new("policy", Arc::clone(policy)),
            Label::new("outcome", outcome.as_str()),
            Label::new("backend", backend),
        ],
    )
}

/// Counts one decision of `policy` (whose keys are cached in `cache`) on `backend`.
pub(crate) fn decision(
    cache: &OnceLock<DecisionKeys>,
    policy: &Arc<str>,
    backend: &'static str,
    outcome: Outcome,
) {
    let keys = cache.get_or_init(|| DecisionKeys::new(policy, backend));
    // Backends are named by constants: the same name is almost always the same pointer.
    if std::ptr::eq(keys.backend, backend) || keys.backend == backend {
        increment(&keys.keys[outcome.index()]);
    } else {
        // A policy shared by layers on different backends: the first one's keys are cached.
        increment(&decision_key(policy, backend, outcome));
    }
}

fn increment(key: &Key) {
    metrics::with_recorder(|r| r.register_counter(key, &METADATA).increment(1));
}

/// The store latency histogram's key for `backend`.
pub(crate) fn store_duration_key(backend: &'static str) -> Key {
    Key::from_parts(STORE_DURATION_SECONDS, vec![Label::new("backend", backend)])
}

pub(crate) fn store_duration(key: &Key, elapsed: Duration) {
    metrics::with_recorder(|r| {
        r.register_histogram(key, &METADATA)
            .record(elapsed.as_secs_f64());
    });
}

/// The least time between two logged store failures of one layer.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What a layer logs once, or once per interval: shared by the layer and its services.
#[derive(Debug)]
pub(crate) struct LayerLog {
    pub(crate) failures: Throttle,
    /// Whether a request without a peer address was logged.
    pub(crate) no_peer_address: AtomicBool,
}

impl LayerLog {
    pub(crate) fn new() -> Self {
        Self {
            failures: Throttle::new(FAILURE_LOG_INTERVAL),
            no_peer_address: AtomicBool::new(false),
        }
    }
}

/// Counter of charges given back for responses that do not count
/// ([`count_if`](crate::RateLimitLayer::count_if)), labelled `policy`, `result` (`refunded` or
/// `failed`) and `backend`.
pub const REFUNDS_TOTAL: &str = "ratelimit_refunds_total";

/// Counts one refund of `policy` on `backend`. Off the hot path (a response that did not
/// count): its key is built each time.
pub(crate) fn refund(policy: &crate::Policy, backend: &'static str, refunded: bool) {
    let result = if refunded { "refunded" } else { "failed" };
    let key = Key::from_parts(
        REFUNDS_TOTAL,
        vec![
            Label::new("policy", Arc::clone(policy.shared_name())),
            Label::new("result", result),
            Label::new("backend", backend),
        ],
    );
    increment(&key);
}

//! Metrics: decisions by outcome and store latency. Keys never become labels.

use std::sync::Arc;
use std::time::Duration;

/// Counter of decisions, labelled `policy`, `outcome` and `backend`.
pub const DECISIONS_TOTAL: &str = "ratelimit_decisions_total";
/// Histogram of store call latency in seconds, labelled `backend`.
pub const STORE_DURATION_SECONDS: &str = "ratelimit_store_duration_seconds";

/// What happened to a request, as the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Allowed,
    Denied,
    ShadowDenied,
    FailedOpen,
    FailedClosed,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
            Self::ShadowDenied => "shadow_denied",
            Self::FailedOpen => "failed_open",
            Self::FailedClosed => "failed_closed",
        }
    }
}

pub(crate) fn decision(policy: &Arc<str>, backend: &'static str, outcome: Outcome) {
    metrics::counter!(
        DECISIONS_TOTAL,
        "policy" => Arc::clone(policy),
        "outcome" => outcome.as_str(),
        "backend" => backend,
    )
    .increment(1);
}

pub(crate) fn store_duration(backend: &'static str, elapsed: Duration) {
    metrics::histogram!(STORE_DURATION_SECONDS, "backend" => backend).record(elapsed.as_secs_f64());
}

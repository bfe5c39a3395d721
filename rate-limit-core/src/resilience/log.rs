//! What the wrappers log: an error's cause chain, and a throttle for events that repeat.

use std::error::Error;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// An error's sources, outermost first, joined by `: ` (empty when it has none): logged beside
/// the error, whose own text names only the kind of failure.
pub(super) struct Causes<'a>(pub(super) &'a (dyn Error + 'static));

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut next = self.0.source();
        let mut separator = "";
        while let Some(cause) = next {
            write!(f, "{separator}{cause}")?;
            separator = ": ";
            next = cause.source();
        }
        Ok(())
    }
}

/// A failure as logged: the error's text and its cause chain, kept for the events that follow
/// it (a breaker's half-open and closed events name the failure that opened it).
#[derive(Debug, Clone, Default)]
pub(super) struct Failure {
    pub(super) error: String,
    pub(super) cause: String,
}

impl Failure {
    pub(super) fn of(err: &(dyn Error + 'static)) -> Self {
        Self {
            error: err.to_string(),
            cause: Causes(err).to_string(),
        }
    }
}

/// Lets one event through per interval and counts the ones it holds back.
#[derive(Debug)]
pub(super) struct Throttle {
    /// Clock nanoseconds before which events are held back.
    next: AtomicU64,
    held: AtomicU64,
}

impl Throttle {
    pub(super) const fn new() -> Self {
        Self {
            next: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// At `now` (clock nanoseconds): `Some(events held back since the last one let through)`
    /// when this one may be logged, `None` when it is held back.
    pub(super) fn pass(&self, now: u64) -> Option<u64> {
        let next = self.next.load(Ordering::Acquire);
        let interval = u64::try_from(super::LOG_INTERVAL.as_nanos()).unwrap_or(u64::MAX);
        if now >= next
            && self
                .next
                .compare_exchange(
                    next,
                    now.saturating_add(interval),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            return Some(self.held.swap(0, Ordering::AcqRel));
        }
        self.held.fetch_add(1, Ordering::AcqRel);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StoreError, StoreErrorKind};

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn causes_list_the_sources_outermost_first() {
        let inner = StoreError::new(StoreErrorKind::Timeout, "inner")
            .with_source(std::io::Error::other("deep"));
        let outer = StoreError::new(StoreErrorKind::Backend, "outer").with_source(inner);
        let f = Failure::of(&outer);
        assert_eq!(f.error, "backend error: outer");
        assert_eq!(f.cause, "timed out: inner: deep");
        let none = StoreError::new(StoreErrorKind::Connection, "redis");
        assert_eq!(Causes(&none).to_string(), "");
    }

    #[test]
    fn a_throttle_lets_one_event_through_per_interval_and_counts_the_rest() {
        let t = Throttle::new();
        assert_eq!(t.pass(1_000 * SEC), Some(0));
        assert_eq!(t.pass(1_000 * SEC), None);
        assert_eq!(t.pass(1_059 * SEC), None);
        assert_eq!(t.pass(1_060 * SEC), Some(2));
        assert_eq!(t.pass(1_061 * SEC), None);
    }
}

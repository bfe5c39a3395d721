//! Helpers for logging failures: an error's cause chain, and a throttle for events that repeat.
//!
//! The resilience wrappers and the tower layer log through these, so that a failure is written
//! the same way everywhere and an outage never logs once per request.
//!
//! ```
//! use std::time::Duration;
//! use rate_limit_core::logging::{Causes, Throttle};
//! use rate_limit_core::{StoreError, StoreErrorKind};
//!
//! let tls = std::io::Error::other("invalid peer certificate: UnknownIssuer");
//! let err = StoreError::new(StoreErrorKind::Connection, "redis").with_source(tls);
//! assert_eq!(err.to_string(), "connection failed: redis");
//! assert_eq!(Causes(&err).to_string(), "invalid peer certificate: UnknownIssuer");
//!
//! let throttle = Throttle::new(Duration::from_secs(10));
//! assert_eq!(throttle.pass(0), Some(0));
//! assert_eq!(throttle.pass(1_000_000_000), None);
//! assert_eq!(throttle.pass(10_000_000_000), Some(1));
//! ```

use std::error::Error;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// An error's sources, outermost first, joined by `: ` (empty when it has none): logged beside
/// the error, whose own text names only the kind of failure. A refused TLS certificate, for
/// one, is `invalid peer certificate: UnknownIssuer` here and only `connection failed: redis`
/// in the error.
#[derive(Debug, Clone, Copy)]
pub struct Causes<'a>(pub &'a (dyn Error + 'static));

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

/// Lets one event through per interval and counts the ones it holds back. Lock-free: one
/// atomic load when an event is held back.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    /// Clock nanoseconds before which events are held back.
    next: AtomicU64,
    held: AtomicU64,
}

impl Throttle {
    /// A throttle that lets the first event through, then one per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            next: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// At `now` (clock nanoseconds): `Some(events held back since the last one let through)`
    /// when this one may be logged, `None` when it is held back.
    pub fn pass(&self, now: u64) -> Option<u64> {
        let next = self.next.load(Ordering::Acquire);
        if now >= next {
            let interval = u64::try_from(self.interval.as_nanos()).unwrap_or(u64::MAX);
            if self
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
        let none = StoreError::new(StoreErrorKind::Connection, "redis");
        assert_eq!(Causes(&none).to_string(), "");
        let inner = StoreError::new(StoreErrorKind::Timeout, "inner")
            .with_source(std::io::Error::other("deep"));
        let outer = StoreError::new(StoreErrorKind::Backend, "outer").with_source(inner);
        assert_eq!(Causes(&outer).to_string(), "timed out: inner: deep");
    }

    #[test]
    fn a_throttle_lets_one_event_through_per_interval_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_secs(60));
        assert_eq!(t.pass(1_000 * SEC), Some(0));
        assert_eq!(t.pass(1_000 * SEC), None);
        assert_eq!(t.pass(1_059 * SEC), None);
        assert_eq!(t.pass(1_060 * SEC), Some(2));
        assert_eq!(t.pass(1_061 * SEC), None);
    }
}

//! [`CircuitState`]: closed, open or half-open.

use std::fmt;

/// Where a [`CircuitBreaker`](super::CircuitBreaker) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CircuitState {
    /// Calls go through; consecutive infrastructure failures are counted.
    Closed,
    /// No call goes through: each fails at once with
    /// [`StoreErrorKind::CircuitOpen`](crate::StoreErrorKind::CircuitOpen).
    Open,
    /// The cool-down is over: one call at a time goes through as the probe, and the others
    /// fail at once with `CircuitOpen`, until the backend answers a probe (closed) or one fails
    /// (open).
    HalfOpen,
}

impl CircuitState {
    /// `closed`, `open` or `half_open`, for status pages and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The value of the `ratelimit_circuit_state` gauge: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }

    pub(super) fn from_phase(phase: u64) -> Self {
        match phase & 0b11 {
            0 => Self::Closed,
            1 => Self::Open,
            _ => Self::HalfOpen,
        }
    }

    pub(super) fn bits(self) -> u64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

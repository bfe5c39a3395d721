//! Error types: [`ConfigError`] for settings that can never work, [`StoreError`] for a store
//! that could not decide.

use std::error::Error as StdError;
use std::fmt;

/// A setting that can never work: a quota whose arithmetic would overflow, a zero period, a bad
/// value read from the environment or a file.
///
/// It names the setting and the value so that a start-up failure says what to fix.
///
/// ```
/// use std::time::Duration;
/// use rate_limit_core::Quota;
///
/// let err = Quota::with_period(1, Duration::ZERO).unwrap_err();
/// assert_eq!(err.setting(), "period");
/// assert_eq!(err.to_string(), "invalid period `0ns`: must be at least 1ns");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    setting: String,
    value: String,
    reason: String,
}

impl ConfigError {
    /// A new error for `setting` holding `value`, with the reason it cannot work.
    pub fn new(
        setting: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            setting: setting.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// The name of the setting, e.g. `burst` or `RATE_LIMIT_WINDOW_SEC`.
    pub fn setting(&self) -> &str {
        &self.setting
    }

    /// The offending value, as text.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Why the value cannot work.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} `{}`: {}",
            self.setting, self.value, self.reason
        )
    }
}

impl StdError for ConfigError {}

/// What kind of failure a [`StoreError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store did not answer within its time budget.
    Timeout,
    /// The connection was refused, dropped or could not be made.
    Connection,
    /// The backend answered with an error (a script error, a cluster that is down, ...).
    Backend,
    /// A circuit breaker is open and did not let the call through.
    CircuitOpen,
    /// The call itself cannot be served (no limits, a quota the backend cannot represent).
    InvalidInput,
}

impl StoreErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timed out",
            Self::Connection => "connection failed",
            Self::Backend => "backend error",
            Self::CircuitOpen => "circuit open",
            Self::InvalidInput => "invalid input",
        }
    }
}

/// A store could not make a decision.
///
/// A denial is never an error: it is a [`Decision`](crate::Decision) that is not allowed. This is
/// for infrastructure failures (see [`is_infrastructure`](Self::is_infrastructure)) and for calls
/// that can never be served.
#[derive(Debug)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl StoreError {
    /// A new error of `kind` with a short message.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying error.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The store did not answer in time.
    pub fn is_timeout(&self) -> bool {
        self.kind == StoreErrorKind::Timeout
    }

    /// The connection could not be made or was lost.
    pub fn is_connection(&self) -> bool {
        self.kind == StoreErrorKind::Connection
    }

    /// A circuit breaker refused the call.
    pub fn is_circuit_open(&self) -> bool {
        self.kind == StoreErrorKind::CircuitOpen
    }

    /// A failure of the infrastructure (timeout, connection, backend), as opposed to a call that
    /// can never be served. Circuit breakers count only these.
    pub fn is_infrastructure(&self) -> bool {
        matches!(
            self.kind,
            StoreErrorKind::Timeout | StoreErrorKind::Connection | StoreErrorKind::Backend
        )
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            f.write_str(self.kind.as_str())
        } else {
            write!(f, "{}: {}", self.kind.as_str(), self.message)
        }
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_error_names_setting_and_value() {
        let e = ConfigError::new("RATE_LIMIT", "abc", "not a positive integer");
        assert_eq!(
            e.to_string(),
            "invalid RATE_LIMIT `abc`: not a positive integer"
        );
        assert_eq!(e.setting(), "RATE_LIMIT");
        assert_eq!(e.value(), "abc");
    }

    #[test]
    fn store_error_predicates_follow_kind() {
        let t = StoreError::new(StoreErrorKind::Timeout, "after 50ms");
        assert!(t.is_timeout() && t.is_infrastructure() && !t.is_connection());
        assert_eq!(t.to_string(), "timed out: after 50ms");
        let o = StoreError::new(StoreErrorKind::CircuitOpen, "");
        assert!(o.is_circuit_open() && !o.is_infrastructure());
        assert_eq!(o.to_string(), "circuit open");
        let src = std::io::Error::other("refused");
        let c = StoreError::new(StoreErrorKind::Connection, "redis").with_source(src);
        assert_eq!(
            c.source().map(ToString::to_string).as_deref(),
            Some("refused")
        );
    }
}

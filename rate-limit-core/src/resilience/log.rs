//! What the wrappers log of a failure.

use std::error::Error;

use crate::logging::Causes;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{StoreError, StoreErrorKind};

    #[test]
    fn a_failure_keeps_the_error_and_its_causes() {
        let inner = StoreError::new(StoreErrorKind::Timeout, "inner")
            .with_source(std::io::Error::other("deep"));
        let outer = StoreError::new(StoreErrorKind::Backend, "outer").with_source(inner);
        let f = Failure::of(&outer);
        assert_eq!(f.error, "backend error: outer");
        assert_eq!(f.cause, "timed out: inner: deep");
    }
}

//! Resilience: stores that wrap stores, so that a slow or dead Redis never takes the API down.
//!
//! Each wrapper is a [`Store`](crate::Store) around a store, and they compose from the inside
//! out:
//!
//! ```text
//! Fallback<CircuitBreaker<Timeout<RedisStore>>, MemoryStore>
//!          │              └─ Timeout: no call waits longer than its budget (50 ms)
//!          └─ CircuitBreaker: after 3 failures in a row, stop calling; probe after a cool-down
//! └─ Fallback: while the primary fails, decide locally on this instance's share of the quota
//! ```
//!
//! - [`Timeout`] turns a hung call into a [`Timeout`](crate::StoreErrorKind::Timeout) error
//!   after its budget.
//! - [`CircuitBreaker`] counts consecutive infrastructure errors (timeouts, connection and
//!   backend errors, never denials) and, past its threshold, refuses every call at once with
//!   [`CircuitOpen`](crate::StoreErrorKind::CircuitOpen) for a cool-down that doubles while
//!   probes fail. Its [`state`](CircuitBreaker::state) is what a `/status` page shows.
//! - [`Fallback`] answers from a local store (a [`MemoryStore`](crate::MemoryStore)) on the
//!   quota divided by the number of instances ([`local_share`]; check the limits at start-up
//!   with [`Fallback::validate_limits`]) while the primary fails or its breaker is open, and
//!   goes back to the primary at its first answer. What a client can get across an outage is
//!   bounded per algorithm in [`Fallback`]'s docs.
//!
//! Without a `Fallback`, the middleware's failure mode decides what an error means: fail open
//! (let the request through, marked) or closed (503). With one, there are no store errors to
//! resolve while the local store works: that is the *local* failure mode.
//!
//! # Recovery does not flood Redis
//!
//! Nothing here queues or retries. A timed-out call is dropped, not retried (with Redis it may
//! or may not have been charged, and running the script again could charge twice). While the
//! breaker is open no call is sent at all; when the cool-down ends, one probe goes first, and
//! traffic returns only once it has been answered. At most the calls in flight when the breaker
//! opened, plus one probe per cool-down, can be waiting in a socket buffer for a paused server.
//!
//! How soon decisions come back after the store does: at the next probe, so at most one
//! cool-down (see [`CircuitBreaker::max_cool_down`]). With Redis through a `ConnectionManager`,
//! a probe that finds the manager's last reconnection attempt given up fails at once and
//! starts a new one, so it can take one more cool-down. Measured with a 250 ms cool-down
//! capped at 2 s, after a 3 s outage: 1 to 3 s (`tests/tests/resilience.rs`).
//!
//! # Metrics
//!
//! Through the [`metrics`](https://docs.rs/metrics) facade (nothing is recorded until the
//! application installs a recorder), labelled `backend` with the wrapped store's name. Each
//! metric is described, and each series created at 0, when its breaker or fallback is built,
//! so that they are in the first scrape: install the recorder first.
//!
//! | name | kind | meaning |
//! |------|------|---------|
//! | `ratelimit_circuit_state` | gauge | 0 closed, 1 open, 2 half-open |
//! | `ratelimit_circuit_transitions_total` | counter | transitions, label `to` (the new state) |
//! | `ratelimit_fallback_decisions_total` | counter | local checks, label `outcome` (`allowed`, `denied`) |
//!
//! # Logs
//!
//! Through [`tracing`](https://docs.rs/tracing): state changes only, never one event per call,
//! and never a client key.
//!
//! | level | message | when |
//! |-------|---------|------|
//! | WARN | `rate limit circuit breaker opened: the store is not called` | the breaker opens after its threshold of failures |
//! | INFO | `rate limit circuit breaker half-open: probing the store` | a cool-down is over and a probe goes |
//! | WARN | `rate limit circuit breaker probe failed: open again` | the probe failed |
//! | INFO | `rate limit circuit breaker closed: the store answers again` | the backend answered a probe |
//! | WARN | `rate limit store failed: deciding locally on this instance's share` | a [`Fallback`]'s local store starts deciding |
//! | INFO | `rate limit store answers again: local decisions stopped` | the primary answered again |
//!
//! Each names the `backend` and the failure: `error`, and `cause`, the chain of the error's
//! sources (a refused TLS certificate, for one, is `invalid peer certificate: UnknownIssuer`
//! there and only `connection failed: redis` in the error). Half-open and closed events name
//! the failure that opened the breaker, the fallback's stop event the one that started it.
//!
//! A breaker opening and closing is always logged. What repeats while the store stays down or
//! flaps is logged at most once per [`LOG_INTERVAL`] (a minute): a half-open event with its
//! probe's failure, a fallback's start with its stop. The next one logged counts those held
//! back (`probes_not_logged`, `episodes_not_logged`), and the closed event counts the probes
//! that failed (`failed_probes`).
//!
//! # Example
//!
//! A primary that is down, behind a breaker, with a local fallback for an app run as 4
//! instances:
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use rate_limit_core::resilience::{CircuitBreaker, CircuitState, Fallback, Timeout};
//! use rate_limit_core::{
//!     Algorithm, BoxFuture, Decision, Limit, ManualClock, MemoryStore, Quota, Store, StoreError,
//!     StoreErrorKind,
//! };
//!
//! /// A store whose server is gone.
//! struct Down;
//!
//! impl Store for Down {
//!     fn check<'a>(&'a self, _: &'a str, _: &'a [Limit], _: NonZeroU32)
//!         -> BoxFuture<'a, Result<Decision, StoreError>> {
//!         Box::pin(async { Err(StoreError::new(StoreErrorKind::Connection, "refused")) })
//!     }
//!     fn peek<'a>(&'a self, key: &'a str, limits: &'a [Limit], cost: NonZeroU32)
//!         -> BoxFuture<'a, Result<Decision, StoreError>> {
//!         self.check(key, limits, cost)
//!     }
//!     fn backend(&self) -> &'static str { "down" }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let clock = ManualClock::new(Duration::from_secs(1_700_000_000));
//! let guarded = CircuitBreaker::new(Timeout::new(Down, Duration::from_millis(50))).clock(clock.clone());
//! let local = MemoryStore::builder().clock(clock.clone()).build();
//! let store = Fallback::new(guarded, local, NonZeroU32::new(4).unwrap());
//!
//! // 100 per minute for the whole fleet: 25 per minute for this instance while Redis is away.
//! let limits = [Limit::new(Quota::per_minute(100), Algorithm::Gcra)];
//! let mut admitted = 0;
//! for _ in 0..40 {
//!     let d = store.check("client-1", &limits, NonZeroU32::MIN).await.unwrap();
//!     assert_eq!(d.limit(), 25);
//!     admitted += u32::from(d.is_allowed());
//! }
//! assert_eq!(admitted, 25);
//! assert_eq!(store.local_decisions(), 40);
//! // Three failures opened the breaker: the other 37 calls never reached the primary.
//! assert_eq!(store.primary().state(), CircuitState::Open);
//! assert_eq!(store.primary().state().as_str(), "open");
//! assert_eq!(store.backend(), "down");
//! # }
//! ```

mod breaker;
mod fallback;
mod log;
mod state;
#[cfg(test)]
mod testing;
mod timeout;

pub use breaker::CircuitBreaker;
pub use fallback::{DecidedBy, Fallback, local_share};
pub use state::CircuitState;
pub use timeout::Timeout;

/// Name of the gauge of a breaker's state: 0 closed, 1 open, 2 half-open.
pub const METRIC_CIRCUIT_STATE: &str = "ratelimit_circuit_state";
/// Name of the counter of a breaker's transitions (label `to`).
pub const METRIC_CIRCUIT_TRANSITIONS: &str = "ratelimit_circuit_transitions_total";
/// Name of the counter of checks decided by a [`Fallback`]'s local store (label `outcome`).
pub const METRIC_FALLBACK_DECISIONS: &str = "ratelimit_fallback_decisions_total";

/// Describes the breaker's metrics and creates its series for `backend`, at 0 (closed, no
/// transition), so that they exist from the first scrape.
fn register_breaker_series(backend: &'static str) {
    metrics::describe_gauge!(
        METRIC_CIRCUIT_STATE,
        "State of the circuit breaker around a rate-limit store: 0 closed, 1 open, 2 half-open"
    );
    metrics::describe_counter!(
        METRIC_CIRCUIT_TRANSITIONS,
        "Transitions of the circuit breaker around a rate-limit store, by the state entered"
    );
    metrics::gauge!(METRIC_CIRCUIT_STATE, "backend" => backend)
        .set(CircuitState::Closed.as_gauge());
    for to in [
        CircuitState::Open,
        CircuitState::HalfOpen,
        CircuitState::Closed,
    ] {
        // Registered, not incremented: a counter at 0.
        let _ = metrics::counter!(METRIC_CIRCUIT_TRANSITIONS, "backend" => backend, "to" => to.as_str());
    }
}

/// Describes the fallback's metric and creates its series for `backend`, at 0.
fn register_fallback_series(backend: &'static str) {
    metrics::describe_counter!(
        METRIC_FALLBACK_DECISIONS,
        "Rate-limit checks decided by the local fallback store while the shared store failed"
    );
    for outcome in ["allowed", "denied"] {
        let _ = metrics::counter!(METRIC_FALLBACK_DECISIONS, "backend" => backend, "outcome" => outcome);
    }
}

/// The least time between two logged events that repeat the same failure: a breaker's failing
/// probes, a fallback's local episodes. See [logs](self#logs).
pub const LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::sync::Arc;
    use std::time::Duration;

    use tracing::Level;

    use super::testing::{Capture, Script, Scripted, limits};
    use super::{CircuitBreaker, Fallback};
    use crate::{ManualClock, MemoryStore, Store, StoreErrorKind};

    const KEY: &str = "client-secret-key";

    #[test]
    fn an_outage_logs_each_state_change_once_and_repeated_failures_once_per_interval() {
        let clock = ManualClock::new(Duration::from_secs(1_000));
        let primary = Arc::new(Scripted::new(vec![
            Script::Fail(StoreErrorKind::Connection);
            5
        ]));
        let breaker = CircuitBreaker::new(Arc::clone(&primary))
            .cool_down(Duration::from_secs(1))
            .max_cool_down(Duration::from_secs(3))
            .clock(clock.clone());
        let local = MemoryStore::builder().clock(clock.clone()).build();
        let store = Fallback::new(breaker, local, NonZeroU32::new(2).unwrap());
        let capture = Capture::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let burst = |n: usize| {
            capture.during(|| {
                rt.block_on(async {
                    for _ in 0..n {
                        store
                            .check(KEY, &limits(1000), NonZeroU32::MIN)
                            .await
                            .unwrap();
                    }
                });
            });
        };
        // Three failures open the breaker; every call is decided locally.
        burst(20);
        // The first probe fails; so does the second, within a minute of the first.
        clock.advance(Duration::from_secs(1));
        burst(5);
        clock.advance(Duration::from_secs(2));
        burst(5);
        // The third probe is answered: closed, and the primary decides again.
        clock.advance(Duration::from_secs(3));
        burst(5);
        assert_eq!(primary.calls(), 10);
        let events = capture.events();
        let lines: Vec<_> = capture.lines();
        let expected = [
            (
                Level::WARN,
                "rate limit store failed: deciding locally on this instance's share",
            ),
            (
                Level::WARN,
                "rate limit circuit breaker opened: the store is not called",
            ),
            (
                Level::INFO,
                "rate limit circuit breaker half-open: probing the store",
            ),
            (
                Level::WARN,
                "rate limit circuit breaker probe failed: open again",
            ),
            (
                Level::INFO,
                "rate limit circuit breaker closed: the store answers again",
            ),
            (
                Level::INFO,
                "rate limit store answers again: local decisions stopped",
            ),
        ];
        let expected: Vec<_> = expected.iter().map(|(l, m)| (*l, m.to_string())).collect();
        assert_eq!(lines, expected, "{events:#?}");
        // Each carries the backend and the failure with its cause chain; none the key.
        for e in &events {
            assert_eq!(e.field("backend"), Some("scripted"), "{e:?}");
            assert_eq!(
                e.field("error"),
                Some("connection failed: scripted"),
                "{e:?}"
            );
            assert_eq!(e.field("cause"), Some("refused by the test"), "{e:?}");
            assert!(!format!("{e:?}").contains(KEY), "{e:?}");
        }
        assert_eq!(events[4].field("failed_probes"), Some("2"));
        assert_eq!(events[5].field("local_decisions"), Some("30"));
    }
}

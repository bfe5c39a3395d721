//! [`Decision`]: what a check decided, with everything response headers need.

use std::sync::Arc;
use std::time::Duration;

use crate::limit::Limit;

/// The state of one limit after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    allowed: bool,
    limit: u32,
    remaining: u32,
    reset_after: Duration,
    retry_after: Option<Duration>,
}

impl Snapshot {
    /// An admitting snapshot of a limit of capacity `limit`, full (`remaining == limit`, reset
    /// now) until [`with_remaining`](Self::with_remaining) and
    /// [`with_reset_after`](Self::with_reset_after) say otherwise. Stores build these.
    ///
    /// ```
    /// use std::time::Duration;
    /// use rate_limit_core::Snapshot;
    ///
    /// let s = Snapshot::allowed(10).with_remaining(9).with_reset_after(Duration::from_millis(100));
    /// assert!(s.is_allowed());
    /// assert_eq!((s.limit(), s.remaining()), (10, 9));
    ///
    /// let s = Snapshot::denied(10).with_remaining(0).with_retry_after(Some(Duration::from_secs(1)));
    /// assert!(!s.is_allowed() && !s.is_never());
    /// // Denied with no wait that would help: the cost is above the capacity.
    /// assert!(Snapshot::denied(10).is_never());
    /// ```
    pub fn allowed(limit: u32) -> Self {
        Self::new(true, limit, limit, Duration::ZERO, None)
    }

    /// A denying snapshot of a limit of capacity `limit`, with nothing remaining and no
    /// [`retry_after`](Self::retry_after) (so [`is_never`](Self::is_never)) until the `with_`
    /// setters say otherwise.
    pub fn denied(limit: u32) -> Self {
        Self::new(false, limit, 0, Duration::ZERO, None)
    }

    /// The same snapshot with `remaining` left (at most the capacity).
    #[must_use]
    pub fn with_remaining(self, remaining: u32) -> Self {
        Self {
            remaining: remaining.min(self.limit),
            ..self
        }
    }

    /// The same snapshot, full again after `reset_after`.
    #[must_use]
    pub fn with_reset_after(self, reset_after: Duration) -> Self {
        Self {
            reset_after,
            ..self
        }
    }

    /// The same snapshot with the time after which the request would be admitted; ignored on
    /// an admitting snapshot.
    #[must_use]
    pub fn with_retry_after(self, retry_after: Option<Duration>) -> Self {
        Self {
            retry_after: if self.allowed { None } else { retry_after },
            ..self
        }
    }

    /// A snapshot from its parts, as the stores of this crate build them; `retry_after` is
    /// ignored when `allowed`.
    pub(crate) fn new(
        allowed: bool,
        limit: u32,
        remaining: u32,
        reset_after: Duration,
        retry_after: Option<Duration>,
    ) -> Self {
        Self {
            allowed,
            limit,
            remaining: remaining.min(limit),
            reset_after,
            retry_after: if allowed { None } else { retry_after },
        }
    }

    /// Whether this limit admitted the request.
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// The capacity: the burst for bucket algorithms, the limit for window algorithms.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The largest cost that would be admitted right now (after this check).
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// Time until the limit is back to full capacity if nothing else is spent.
    pub fn reset_after(&self) -> Duration {
        self.reset_after
    }

    /// When denied: the exact time after which the same request would be admitted. `None` when
    /// allowed, and when the cost exceeds the capacity, so no wait would ever help.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Denied, and no wait will help: the cost is above the capacity.
    pub fn is_never(&self) -> bool {
        !self.allowed && self.retry_after.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Snapshots {
    One(Snapshot),
    Many(Box<[Snapshot]>),
}

/// The outcome of a check against one or more limits.
///
/// Several limits are all-or-nothing: the request is allowed only if every limit allows it, and
/// then every limit is charged. The accessors ([`limit`](Self::limit),
/// [`remaining`](Self::remaining), ...) describe the *binding* limit: when denied, the one that
/// makes the client wait longest; when allowed, the one with the least remaining.
/// [`snapshots`](Self::snapshots) lists every limit, in the order they were given.
///
/// ```
/// use std::time::Duration;
/// use rate_limit_core::{Decision, Snapshot};
///
/// let per_sec = Snapshot::allowed(10).with_remaining(9).with_reset_after(Duration::from_millis(100));
/// let per_hour = Snapshot::allowed(1000).with_remaining(5).with_reset_after(Duration::from_secs(17));
/// let d = Decision::from_snapshots(vec![per_sec, per_hour]);
/// assert!(d.is_allowed());
/// assert_eq!(d.remaining(), 5);
/// assert_eq!(d.binding_index(), 1);
/// assert_eq!(d.snapshots().len(), 2);
/// ```
///
/// # Where it was made
///
/// Most decisions are the backend's answer to this very check. Two are not, and say so:
/// [`is_cached`](Self::is_cached), a store's local copy of an earlier answer (a
/// [`RedisStore`](crate::RedisStore) deny-cache hit), and [`local_limits`](Self::local_limits),
/// a local store deciding on other limits while the backend is away (a `Fallback`). Neither
/// tells anything of the backend's health, so a circuit breaker counts neither as an answer
/// ([`is_backend_answer`](Self::is_backend_answer)). Equality compares what was decided, not
/// where.
#[derive(Debug, Clone)]
pub struct Decision {
    allowed: bool,
    cached: bool,
    binding: usize,
    snapshots: Snapshots,
    /// The limits a local store decided on instead of the ones asked for.
    local: Option<Arc<Vec<Limit>>>,
}

impl PartialEq for Decision {
    fn eq(&self, other: &Self) -> bool {
        self.allowed == other.allowed
            && self.binding == other.binding
            && self.snapshots == other.snapshots
    }
}

impl Eq for Decision {}

impl Decision {
    /// A decision for a single limit.
    pub fn single(snapshot: Snapshot) -> Self {
        Self {
            allowed: snapshot.allowed,
            cached: false,
            binding: 0,
            snapshots: Snapshots::One(snapshot),
            local: None,
        }
    }

    /// A decision across several limits, one snapshot each, in the order the limits were given.
    ///
    /// Allowed only if every snapshot is allowed.
    ///
    /// # Panics
    ///
    /// If `snapshots` is empty: a decision is about at least one limit.
    pub fn from_snapshots(snapshots: Vec<Snapshot>) -> Self {
        assert!(!snapshots.is_empty(), "a decision needs at least one limit");
        if snapshots.len() == 1 {
            return Self::single(snapshots[0]);
        }
        let allowed = snapshots.iter().all(Snapshot::is_allowed);
        let binding = binding_index(&snapshots, allowed);
        Self {
            allowed,
            cached: false,
            binding,
            snapshots: Snapshots::Many(snapshots.into_boxed_slice()),
            local: None,
        }
    }

    /// The same decision, marked as answered from a local cache of an earlier answer, without
    /// asking the backend (as a [`RedisStore`](crate::RedisStore) deny-cache hit is).
    #[must_use]
    pub fn mark_cached(mut self) -> Self {
        self.cached = true;
        self
    }

    /// Answered from a local cache of an earlier answer, without asking the backend.
    pub fn is_cached(&self) -> bool {
        self.cached
    }

    /// The same decision, marked as made by a local store on `limits` instead of the limits
    /// the caller asked for (as a `Fallback` decides on this instance's share while the shared
    /// store is away). Its snapshots are those of `limits`, in their order.
    #[must_use]
    pub fn mark_local(mut self, limits: Vec<Limit>) -> Self {
        self.local = Some(Arc::new(limits));
        self
    }

    /// When a local store decided instead of the backend: the limits it decided on, which the
    /// snapshots describe (response headers should describe these too). `None` otherwise.
    ///
    /// ```
    /// use std::time::Duration;
    /// use rate_limit_core::{Algorithm, Decision, Limit, Quota, Snapshot};
    ///
    /// let share = Limit::new(Quota::per_minute(25), Algorithm::Gcra);
    /// let d = Decision::single(Snapshot::allowed(25).with_remaining(24).with_reset_after(Duration::from_millis(2400)));
    /// assert!(d.is_backend_answer() && d.local_limits().is_none());
    /// let local = d.clone().mark_local(vec![share]);
    /// assert_eq!(local.local_limits(), Some(&[share][..]));
    /// assert!(!local.is_backend_answer());
    /// assert!(!d.clone().mark_cached().is_backend_answer());
    /// // What was decided is the same.
    /// assert_eq!(local, d);
    /// ```
    pub fn local_limits(&self) -> Option<&[Limit]> {
        self.local.as_deref().map(Vec::as_slice)
    }

    /// The backend decided this check now: neither [cached](Self::is_cached) nor
    /// [local](Self::local_limits). Only such an answer tells that the backend is up.
    pub fn is_backend_answer(&self) -> bool {
        !self.cached && self.local.is_none()
    }

    /// Whether the request was admitted (and charged against every limit).
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// Every limit's snapshot, in the order the limits were given.
    pub fn snapshots(&self) -> &[Snapshot] {
        match &self.snapshots {
            Snapshots::One(s) => std::slice::from_ref(s),
            Snapshots::Many(v) => v,
        }
    }

    /// Index in [`snapshots`](Self::snapshots) of the binding limit.
    pub fn binding_index(&self) -> usize {
        self.binding
    }

    /// The binding limit's snapshot.
    pub fn binding(&self) -> &Snapshot {
        &self.snapshots()[self.binding]
    }

    /// The binding limit's capacity.
    pub fn limit(&self) -> u32 {
        self.binding().limit
    }

    /// The binding limit's remaining capacity.
    pub fn remaining(&self) -> u32 {
        self.binding().remaining
    }

    /// Time until the binding limit is back to full.
    pub fn reset_after(&self) -> Duration {
        self.binding().reset_after
    }

    /// When denied, the exact wait after which the same request would pass every limit; `None`
    /// when allowed or when no wait would ever help.
    pub fn retry_after(&self) -> Option<Duration> {
        if self.allowed {
            None
        } else {
            self.binding().retry_after
        }
    }

    /// Denied, and no wait will help (the cost exceeds a limit's capacity).
    pub fn is_never(&self) -> bool {
        !self.allowed && self.retry_after().is_none()
    }
}

/// Denied: the denying limit with the longest wait (never beats any wait). Allowed: the least
/// remaining, ties broken by the longest reset.
fn binding_index(snapshots: &[Snapshot], allowed: bool) -> usize {
    let mut best = 0;
    for (i, s) in snapshots.iter().enumerate().skip(1) {
        let b = &snapshots[best];
        let better = if allowed {
            (s.remaining, std::cmp::Reverse(s.reset_after))
                < (b.remaining, std::cmp::Reverse(b.reset_after))
        } else {
            match (s.allowed, b.allowed) {
                (false, true) => true,
                (true, _) => false,
                (false, false) => wait_rank(s) > wait_rank(b),
            }
        };
        if better {
            best = i;
        }
    }
    best
}

fn wait_rank(s: &Snapshot) -> (bool, Duration) {
    match s.retry_after {
        None => (true, Duration::ZERO),
        Some(d) => (false, d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn denied_binding_is_longest_wait() {
        let a = Snapshot::new(false, 10, 0, ms(900), Some(ms(100)));
        let b = Snapshot::new(true, 100, 50, ms(500), None);
        let c = Snapshot::new(false, 1000, 0, ms(9000), Some(ms(3000)));
        let d = Decision::from_snapshots(vec![a, b, c]);
        assert!(!d.is_allowed());
        assert_eq!(d.binding_index(), 2);
        assert_eq!(d.retry_after(), Some(ms(3000)));
    }

    #[test]
    fn never_beats_any_wait() {
        let a = Snapshot::new(false, 10, 0, ms(900), Some(ms(100)));
        let b = Snapshot::new(false, 5, 5, ms(0), None);
        let d = Decision::from_snapshots(vec![a, b]);
        assert_eq!(d.binding_index(), 1);
        assert!(d.is_never());
    }

    #[test]
    fn allowed_binding_is_least_remaining() {
        let a = Snapshot::new(true, 10, 3, ms(900), None);
        let b = Snapshot::new(true, 100, 3, ms(5000), None);
        let c = Snapshot::new(true, 100, 7, ms(5000), None);
        let d = Decision::from_snapshots(vec![a, b, c]);
        assert!(d.is_allowed());
        assert_eq!(d.binding_index(), 1);
        assert_eq!(d.retry_after(), None);
    }

    #[test]
    fn snapshot_clamps_and_drops_retry_when_allowed() {
        let s = Snapshot::new(true, 5, 9, ms(1), Some(ms(4)));
        assert_eq!(s.remaining(), 5);
        assert_eq!(s.retry_after(), None);
    }
}

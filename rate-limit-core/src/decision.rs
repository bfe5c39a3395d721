//! [`Decision`]: what a check decided, with everything response headers need.

use std::time::Duration;

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
    /// A snapshot from its parts. Stores build these; `retry_after` is ignored when `allowed`.
    pub fn new(
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
    pub fn allowed(&self) -> bool {
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
/// let per_sec = Snapshot::new(true, 10, 9, Duration::from_millis(100), None);
/// let per_hour = Snapshot::new(true, 1000, 5, Duration::from_secs(17), None);
/// let d = Decision::from_snapshots(vec![per_sec, per_hour]);
/// assert!(d.allowed());
/// assert_eq!(d.remaining(), 5);
/// assert_eq!(d.binding_index(), 1);
/// assert_eq!(d.snapshots().len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    allowed: bool,
    binding: usize,
    snapshots: Snapshots,
}

impl Decision {
    /// A decision for a single limit.
    pub fn single(snapshot: Snapshot) -> Self {
        Self {
            allowed: snapshot.allowed,
            binding: 0,
            snapshots: Snapshots::One(snapshot),
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
        let allowed = snapshots.iter().all(Snapshot::allowed);
        let binding = binding_index(&snapshots, allowed);
        Self {
            allowed,
            binding,
            snapshots: Snapshots::Many(snapshots.into_boxed_slice()),
        }
    }

    /// Whether the request was admitted (and charged against every limit).
    pub fn allowed(&self) -> bool {
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
        assert!(!d.allowed());
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
        assert!(d.allowed());
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

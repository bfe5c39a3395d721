//! [`Clock`]: the one place that reads real time.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of time in nanoseconds since the Unix epoch.
///
/// Stores read time only through a `Clock`, so tests can drive them with a [`ManualClock`] and
/// never sleep.
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since the Unix epoch.
    fn now_nanos(&self) -> u64;

    /// [`now_nanos`](Clock::now_nanos) as a [`Duration`].
    fn now(&self) -> Duration {
        Duration::from_nanos(self.now_nanos())
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_nanos(&self) -> u64 {
        (**self).now_nanos()
    }
}

/// Wall-clock time that never goes backwards: the system time read once at creation, advanced
/// by a monotonic counter.
///
/// Epoch-based (so fixed windows line up across instances) and monotonic (so an NTP step does
/// not refill a bucket). The monotonic part reads the CPU's time-stamp counter through `quanta`
/// where it is invariant, and the OS monotonic clock elsewhere: in a profile of the in-memory
/// check (`cargo bench -p rate-limit-core --bench core`), the OS clock read was its largest cost.
#[derive(Debug, Clone)]
pub struct SystemClock {
    epoch_at_start: u64,
    clock: quanta::Clock,
    start: u64,
}

impl SystemClock {
    /// A clock anchored at the current system time.
    #[allow(clippy::disallowed_methods)] // the one place real time is read
    pub fn new() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let clock = quanta::Clock::new();
        let start = clock.raw();
        Self {
            epoch_at_start: u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX),
            clock,
            start,
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now_nanos(&self) -> u64 {
        let elapsed = self.clock.delta_as_nanos(self.start, self.clock.raw());
        self.epoch_at_start.saturating_add(elapsed)
    }
}

/// A clock that moves only when told to. Clones share one time.
///
/// ```
/// use std::time::Duration;
/// use rate_limit_core::{Clock, ManualClock};
///
/// let clock = ManualClock::new(Duration::from_secs(1_000));
/// let same = clock.clone();
/// clock.advance(Duration::from_millis(5));
/// assert_eq!(same.now(), Duration::from_millis(1_000_005));
/// ```
#[derive(Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at `since_epoch`.
    pub fn new(since_epoch: Duration) -> Self {
        let clock = Self::default();
        clock.set(since_epoch);
        clock
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::SeqCst);
    }

    /// Sets the clock to `since_epoch` (which may be earlier: tests of clocks that go back).
    pub fn set(&self, since_epoch: Duration) {
        let n = u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.store(n, Ordering::SeqCst);
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ManualClock").field(&self.now()).finish()
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> u64 {
        self.nanos.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_near_epoch_time_and_monotonic() {
        let c = SystemClock::new();
        let a = c.now_nanos();
        let b = c.now_nanos();
        assert!(b >= a);
        // After 2020-01-01.
        assert!(a > 1_577_836_800 * 1_000_000_000);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(Duration::from_secs(7));
        assert_eq!(c.now(), Duration::from_secs(7));
        c.advance(Duration::from_nanos(1));
        assert_eq!(c.now_nanos(), 7_000_000_001);
        c.set(Duration::from_secs(1));
        assert_eq!(c.now(), Duration::from_secs(1));
    }
}

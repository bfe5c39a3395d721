//! [`Quota`]: how much, over how long, and how much at once.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::error::ConfigError;

/// The longest span a quota may describe (a period, or a full bucket), about 100 years.
///
/// Bounding it keeps every sum of a timestamp and a span inside `u64` nanoseconds.
pub const MAX_SPAN: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A count given to a constructor: a plain `u32` (`Quota::per_minute(100)`) or a
/// [`NonZeroU32`].
///
/// Sealed: implemented for `u32` and `NonZeroU32` only. A plain zero has no meaning as a limit, a
/// burst or a number of instances: constructors that return a `Result` refuse it with a
/// [`ConfigError`]; the infallible ones (such as [`Quota::per_minute`]) panic, as documented
/// under their `# Panics`, and have a `try_` form for values read from configuration.
pub trait Count: sealed::Sealed {}

impl Count for u32 {}
impl Count for NonZeroU32 {}

pub(crate) mod sealed {
    use std::num::NonZeroU32;

    /// Keeps [`Count`](super::Count) to the two types it is implemented for.
    pub trait Sealed: Copy + std::fmt::Display {
        /// The count, `None` for zero.
        fn to_nonzero(self) -> Option<NonZeroU32>;
    }

    impl Sealed for u32 {
        fn to_nonzero(self) -> Option<NonZeroU32> {
            NonZeroU32::new(self)
        }
    }

    impl Sealed for NonZeroU32 {
        fn to_nonzero(self) -> Option<NonZeroU32> {
            Some(self)
        }
    }
}

/// `count` as a `NonZeroU32`, or a [`ConfigError`] naming `setting` when it is zero.
pub(crate) fn nonzero(setting: &str, count: impl Count) -> Result<NonZeroU32, ConfigError> {
    count
        .to_nonzero()
        .ok_or_else(|| ConfigError::new(setting, count, "must be at least 1"))
}

/// `count` as a `NonZeroU32`; panics naming `setting` when it is zero (the documented `# Panics`
/// of infallible constructors).
#[track_caller]
pub(crate) fn nonzero_or_panic(setting: &str, count: impl Count) -> NonZeroU32 {
    match nonzero(setting, count) {
        Ok(n) => n,
        Err(err) => panic!("{err}"),
    }
}

/// A rate: `limit` units of cost per `period`, with at most `burst` at once.
///
/// The burst defaults to the limit. Bucket algorithms (token bucket, leaky bucket, GCRA) refill
/// one unit every `period / limit` (the *emission interval*) up to `burst`; window algorithms
/// (fixed window, sliding window log, sliding window counter) admit `limit` per `period` and
/// ignore the burst.
///
/// A `Quota` cannot be invalid: the limit and burst are [`NonZeroU32`] inside. Constructors take
/// a plain `u32` or a `NonZeroU32` (see [`Count`]); the presets ([`per_second`](Self::per_second),
/// [`per_minute`](Self::per_minute), [`per_hour`](Self::per_hour)) panic on a plain zero, and
/// their `try_` forms, [`with_period`](Self::with_period) and [`burst`](Self::burst) return a
/// [`ConfigError`] for it (and for a span that could overflow).
///
/// ```
/// use std::time::Duration;
/// use rate_limit_core::Quota;
///
/// let q = Quota::per_minute(100);
/// assert_eq!(q.period(), Duration::from_secs(60));
/// assert_eq!(q.emission_interval(), Duration::from_millis(600));
/// assert_eq!(q.burst_size().get(), 100);
///
/// let q = q.burst(150)?;
/// assert_eq!(q.burst_size().get(), 150);
///
/// // A value from a configuration file: zero is an error naming the setting.
/// let from_config: u32 = 0;
/// assert_eq!(Quota::try_per_minute(from_config).unwrap_err().setting(), "limit");
/// # Ok::<(), rate_limit_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: NonZeroU32,
    period: Duration,
    burst: NonZeroU32,
}

impl Quota {
    /// `limit` per second, burst `limit`.
    ///
    /// # Panics
    ///
    /// If `limit` is a plain `0`; [`try_per_second`](Self::try_per_second) returns an error
    /// instead.
    #[track_caller]
    pub fn per_second(limit: impl Count) -> Self {
        Self::of(nonzero_or_panic("limit", limit), Duration::from_secs(1))
    }

    /// `limit` per minute, burst `limit`.
    ///
    /// # Panics
    ///
    /// If `limit` is a plain `0`; [`try_per_minute`](Self::try_per_minute) returns an error
    /// instead.
    #[track_caller]
    pub fn per_minute(limit: impl Count) -> Self {
        Self::of(nonzero_or_panic("limit", limit), Duration::from_secs(60))
    }

    /// `limit` per hour, burst `limit`.
    ///
    /// # Panics
    ///
    /// If `limit` is a plain `0`; [`try_per_hour`](Self::try_per_hour) returns an error
    /// instead.
    #[track_caller]
    pub fn per_hour(limit: impl Count) -> Self {
        Self::of(nonzero_or_panic("limit", limit), Duration::from_secs(3600))
    }

    /// `limit` per second, burst `limit`.
    ///
    /// # Errors
    ///
    /// `limit` is zero.
    pub fn try_per_second(limit: impl Count) -> Result<Self, ConfigError> {
        Ok(Self::of(nonzero("limit", limit)?, Duration::from_secs(1)))
    }

    /// `limit` per minute, burst `limit`.
    ///
    /// # Errors
    ///
    /// `limit` is zero.
    pub fn try_per_minute(limit: impl Count) -> Result<Self, ConfigError> {
        Ok(Self::of(nonzero("limit", limit)?, Duration::from_secs(60)))
    }

    /// `limit` per hour, burst `limit`.
    ///
    /// # Errors
    ///
    /// `limit` is zero.
    pub fn try_per_hour(limit: impl Count) -> Result<Self, ConfigError> {
        Ok(Self::of(
            nonzero("limit", limit)?,
            Duration::from_secs(3600),
        ))
    }

    const fn of(limit: NonZeroU32, period: Duration) -> Self {
        Self {
            limit,
            period,
            burst: limit,
        }
    }

    /// `limit` per `period`, burst `limit`.
    ///
    /// # Errors
    ///
    /// `limit` is zero, or the period is zero or longer than [`MAX_SPAN`].
    pub fn with_period(limit: impl Count, period: Duration) -> Result<Self, ConfigError> {
        let limit = nonzero("limit", limit)?;
        if period.is_zero() {
            return Err(ConfigError::new(
                "period",
                format_args!("{period:?}"),
                "must be at least 1ns",
            ));
        }
        if period > MAX_SPAN {
            return Err(ConfigError::new(
                "period",
                format_args!("{period:?}"),
                format!("must be at most {}s", MAX_SPAN.as_secs()),
            ));
        }
        Ok(Self::of(limit, period))
    }

    /// The same rate with a different burst (bucket capacity).
    ///
    /// # Errors
    ///
    /// `burst` is zero, or a full bucket (`burst` emission intervals) would last longer than
    /// [`MAX_SPAN`].
    pub fn burst(self, burst: impl Count) -> Result<Self, ConfigError> {
        let burst = nonzero("burst", burst)?;
        let span = u128::from(burst.get()) * u128::from(self.interval_nanos());
        if span > MAX_SPAN.as_nanos() {
            return Err(ConfigError::new(
                "burst",
                burst,
                format!(
                    "a full bucket at {} per {:?} would last longer than {}s",
                    self.limit,
                    self.period,
                    MAX_SPAN.as_secs()
                ),
            ));
        }
        Ok(Self { burst, ..self })
    }

    /// Units of cost per period.
    pub const fn limit(&self) -> NonZeroU32 {
        self.limit
    }

    /// The period the limit applies to.
    pub const fn period(&self) -> Duration {
        self.period
    }

    /// The most that can be spent at once (bucket algorithms).
    pub const fn burst_size(&self) -> NonZeroU32 {
        self.burst
    }

    /// The time one unit takes to refill: `period / limit`, rounded up to whole nanoseconds so
    /// that rounding can only make the limiter stricter.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.interval_nanos())
    }

    fn period_nanos(&self) -> u64 {
        // `period <= MAX_SPAN`, which fits in u64 nanoseconds.
        u64::try_from(self.period.as_nanos()).unwrap_or(u64::MAX)
    }

    fn interval_nanos(&self) -> u64 {
        self.period_nanos().div_ceil(u64::from(self.limit.get()))
    }

    /// The quota in whole ticks of `tick_nanos` nanoseconds (1 for in-process stores; 1000 for
    /// Redis's windows, whose Lua numbers are exact only up to 2^53: its buckets use the
    /// nanosecond interval).
    ///
    /// The period is rounded up to whole ticks and the emission interval is
    /// `ceil(period / limit)`, at least one tick.
    pub(crate) fn params(&self, tick_nanos: u64) -> Params {
        let tick = tick_nanos.max(1);
        let period = self.period_nanos().div_ceil(tick).max(1);
        let limit = u64::from(self.limit.get());
        let burst = u64::from(self.burst.get());
        let interval = period.div_ceil(limit).max(1);
        Params {
            limit,
            burst,
            period,
            interval,
            tau: burst.saturating_mul(interval),
            tick,
        }
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} per {:?}", self.limit, self.period)?;
        if self.burst != self.limit {
            write!(f, " (burst {})", self.burst)?;
        }
        Ok(())
    }
}

/// A quota in integer ticks, as the transitions use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Params {
    /// Units per period (window algorithms' capacity).
    pub(crate) limit: u64,
    /// Bucket capacity.
    pub(crate) burst: u64,
    /// The period, in ticks.
    pub(crate) period: u64,
    /// Ticks per unit of cost.
    pub(crate) interval: u64,
    /// `burst * interval`: how long a full bucket takes to refill.
    pub(crate) tau: u64,
    /// Nanoseconds per tick.
    pub(crate) tick: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn presets_set_period_and_burst() {
        assert_eq!(Quota::per_second(nz(5)).period(), Duration::from_secs(1));
        assert_eq!(Quota::per_hour(nz(5)).period(), Duration::from_secs(3600));
        assert_eq!(Quota::per_hour(nz(5)).burst_size(), nz(5));
    }

    #[test]
    fn rejects_zero_and_huge_periods() {
        assert!(Quota::with_period(nz(1), Duration::ZERO).is_err());
        let err = Quota::with_period(nz(1), MAX_SPAN + Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.setting(), "period");
        assert!(Quota::with_period(nz(1), MAX_SPAN).is_ok());
    }

    #[test]
    fn rejects_burst_that_overflows() {
        let q = Quota::per_hour(nz(1));
        let err = q.burst(nz(u32::MAX)).unwrap_err();
        assert_eq!(err.setting(), "burst");
        assert_eq!(err.value(), u32::MAX.to_string());
        assert!(Quota::per_second(nz(1000)).burst(nz(u32::MAX)).is_ok());
    }

    #[test]
    fn interval_rounds_up() {
        let q = Quota::per_second(nz(3));
        assert_eq!(q.emission_interval(), Duration::from_nanos(333_333_334));
        let p = q.params(1000);
        assert_eq!(
            (p.period, p.interval, p.tau),
            (1_000_000, 333_334, 1_000_002)
        );
    }

    #[test]
    fn sub_tick_periods_round_up_to_one_tick() {
        let q = Quota::with_period(nz(10), Duration::from_nanos(10)).unwrap();
        let p = q.params(1000);
        assert_eq!((p.period, p.interval), (1, 1));
    }

    #[test]
    fn plain_integers_and_nonzero_give_the_same_quota() {
        assert_eq!(Quota::per_minute(100), Quota::per_minute(nz(100)));
        assert_eq!(Quota::per_second(7), Quota::try_per_second(nz(7)).unwrap());
        assert_eq!(
            Quota::with_period(3, Duration::from_secs(2)).unwrap(),
            Quota::with_period(nz(3), Duration::from_secs(2)).unwrap()
        );
        assert_eq!(Quota::per_hour(5).burst(9), Quota::per_hour(5).burst(nz(9)));
    }

    #[test]
    fn a_plain_zero_is_a_config_error_in_fallible_forms() {
        for err in [
            Quota::try_per_second(0).unwrap_err(),
            Quota::try_per_minute(0).unwrap_err(),
            Quota::try_per_hour(0).unwrap_err(),
            Quota::with_period(0, Duration::from_secs(1)).unwrap_err(),
        ] {
            assert_eq!((err.setting(), err.value()), ("limit", "0"));
        }
        let err = Quota::per_second(1).burst(0).unwrap_err();
        assert_eq!((err.setting(), err.value()), ("burst", "0"));
    }

    #[test]
    #[should_panic(expected = "limit")]
    fn a_plain_zero_panics_in_a_preset() {
        let _ = Quota::per_minute(0);
    }

    #[test]
    fn display_mentions_burst_only_when_different() {
        let q = Quota::per_second(nz(10));
        assert_eq!(q.to_string(), "10 per 1s");
        assert_eq!(q.burst(nz(20)).unwrap().to_string(), "10 per 1s (burst 20)");
    }
}

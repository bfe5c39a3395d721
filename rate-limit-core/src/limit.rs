//! [`Limit`]: a quota enforced by an algorithm.

use std::fmt;

use crate::algorithm::Algorithm;
use crate::quota::{Params, Quota};

/// A [`Quota`] enforced by an [`Algorithm`]: the unit a store decides on.
///
/// Its [`id`](Limit::id) is a stable fingerprint of the pair, the same in every process and
/// version, so that instances sharing a store share one state per key and limit, and two limits
/// on the same key (10/s and 1000/h) keep separate states.
///
/// ```
/// use rate_limit_core::{Algorithm, Limit, Quota};
///
/// let q = Quota::per_second(10);
/// let a = Limit::new(q, Algorithm::Gcra);
/// assert_eq!(a.id(), Limit::new(q, Algorithm::Gcra).id());
/// assert_ne!(a.id(), Limit::new(q, Algorithm::FixedWindow).id());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    quota: Quota,
    algorithm: Algorithm,
    id: u64,
    params: Params,
}

impl Limit {
    /// `quota` enforced by `algorithm`.
    pub fn new(quota: Quota, algorithm: Algorithm) -> Self {
        let mut h = Fnv::default();
        h.write(algorithm.name().as_bytes());
        h.write(&quota.limit().get().to_le_bytes());
        h.write(&quota.period().as_nanos().to_le_bytes());
        h.write(&quota.burst_size().get().to_le_bytes());
        Self {
            quota,
            algorithm,
            id: h.0,
            params: quota.params(1),
        }
    }

    /// The quota.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// A stable 64-bit fingerprint of the algorithm and the quota.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The quota in nanosecond ticks, computed once.
    pub(crate) fn nanos(&self) -> &Params {
        &self.params
    }
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("quota", &self.quota)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.quota, self.algorithm)
    }
}

/// FNV-1a, 64-bit: fixed output across platforms and releases (unlike `std`'s hashers).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn id_is_stable_across_releases() {
        // Changing this value would split every deployed Redis state: do not.
        let q = Quota::per_minute(NonZeroU32::new(100).unwrap());
        assert_eq!(
            Limit::new(q, Algorithm::TokenBucket).id(),
            0x4877_b29f_e38d_c867
        );
    }

    #[test]
    fn id_depends_on_burst() {
        let q = Quota::per_minute(NonZeroU32::new(100).unwrap());
        let b = q.burst(NonZeroU32::new(200).unwrap()).unwrap();
        assert_ne!(
            Limit::new(q, Algorithm::Gcra).id(),
            Limit::new(b, Algorithm::Gcra).id()
        );
    }
}

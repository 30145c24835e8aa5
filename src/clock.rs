//! Monotonic time as a count of nanoseconds, for the per-statement
//! bookkeeping (statement durations, N+1 gaps).
//!
//! `std::time::Instant` is a `timespec`: every difference, sum or
//! comparison of two of them works on seconds and nanoseconds apart, and
//! made up a measurable share of the work per statement. A [`Mono`] is read
//! from the same clock (`CLOCK_MONOTONIC`, through the vDSO) and is a plain
//! `u64` afterwards.

use rustix::time::{clock_gettime, ClockId};
use std::ops::{Add, AddAssign};
use std::time::{Duration, Instant};

/// A point on the monotonic clock, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mono(u64);

impl Mono {
    /// Now.
    #[inline]
    pub fn now() -> Mono {
        let t = clock_gettime(ClockId::Monotonic);
        Mono((t.tv_sec as u64) * 1_000_000_000 + t.tv_nsec as u64)
    }

    /// The same point as an `Instant`, for timers (exact to the time
    /// between the two clock readings this takes).
    pub fn to_instant(self) -> Instant {
        let (now, mono) = (Instant::now(), Mono::now());
        if self >= mono {
            now + self.since(mono)
        } else {
            now.checked_sub(mono.since(self)).unwrap_or(now)
        }
    }

    /// Time from `earlier` to `self`; zero when `earlier` is later.
    #[inline]
    pub fn since(self, earlier: Mono) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Mono {
    type Output = Mono;

    #[inline]
    fn add(self, d: Duration) -> Mono {
        Mono(self.0.saturating_add(d.as_nanos() as u64))
    }
}

impl AddAssign<Duration> for Mono {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_sums_and_instants_agree_with_the_clock() {
        let a = Mono::now();
        let b = a + Duration::from_micros(1500);
        assert_eq!(b.since(a), Duration::from_micros(1500));
        assert_eq!(a.since(b), Duration::ZERO, "saturates");
        assert!(b > a);
        let mut c = a;
        c += Duration::from_micros(1500);
        assert_eq!(c, b);
        // the same clock as Instant's
        let before = Instant::now();
        let m = Mono::now();
        let after = Instant::now();
        let i = m.to_instant();
        assert!(i + Duration::from_millis(5) >= before && i <= after + Duration::from_millis(5));
        let later = (m + Duration::from_secs(2)).to_instant();
        let d = later.duration_since(i);
        assert!(
            d > Duration::from_millis(1990) && d < Duration::from_millis(2010),
            "{d:?}"
        );
        assert!(Mono::now() >= m);
    }
}

//! How long a recovering connection waits before each reconnection attempt, and when it gives
//! up (issue 14): exponential backoff from an initial delay, capped, with jitter so that many
//! clients cut off by one broker restart do not all come back in the same millisecond, and a
//! limit on attempts or on the time spent. Sans-IO: the caller supplies the attempt number,
//! the time spent and a random number; nothing here sleeps or reads a clock.

use std::time::Duration;

/// The delays between reconnection attempts, and when to stop.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Backoff {
    /// The delay before the first retry.
    pub(crate) initial: Duration,
    /// No delay is longer than this.
    pub(crate) max: Duration,
    /// The fraction of each delay that is random, from 0 (none) to 1 (anywhere from 0 to the
    /// delay); values outside 0..=1 are clamped.
    pub(crate) jitter: f64,
    /// Give up after this many attempts (`None`: never).
    pub(crate) max_attempts: Option<u32>,
    /// Give up once this long has been spent recovering (`None`: never).
    pub(crate) max_elapsed: Option<Duration>,
}

impl Default for Backoff {
    /// 100 ms doubling up to 10 s, a quarter of each delay random, no limit.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            jitter: 0.25,
            max_attempts: None,
            max_elapsed: None,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (1 for the first retry after the loss), given
    /// `random` uniform in `0.0..1.0`: `initial * 2^(attempt - 1)`, capped at `max`, minus up to
    /// `jitter` of it. Never panics, whatever the durations.
    pub(crate) fn delay(&self, attempt: u32, random: f64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(62);
        let full = self
            .initial
            .checked_mul(1u32 << doublings.min(31))
            .and_then(|d| d.checked_mul(1u32 << doublings.saturating_sub(31)))
            .unwrap_or(Duration::MAX)
            .min(self.max);
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        let random = if random.is_nan() {
            0.0
        } else {
            random.clamp(0.0, 1.0)
        };
        let factor = 1.0 - jitter * random;
        if factor >= 1.0 {
            return full;
        }
        // In f64 a huge duration may round up past Duration::MAX: keep within `full`.
        Duration::try_from_secs_f64(full.as_secs_f64() * factor).map_or(full, |d| d.min(full))
    }

    /// Whether to make attempt `attempt` after `elapsed` spent recovering.
    pub(crate) fn should_try(&self, attempt: u32, elapsed: Duration) -> bool {
        self.max_attempts.is_none_or(|max| attempt <= max)
            && self.max_elapsed.is_none_or(|max| elapsed < max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_jitter() -> Backoff {
        Backoff {
            jitter: 0.0,
            ..Backoff::default()
        }
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let b = no_jitter();
        let ms: Vec<u128> = (1..=10).map(|a| b.delay(a, 0.5).as_millis()).collect();
        assert_eq!(
            ms,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
        );
        assert_eq!(b.delay(0, 0.5), Duration::from_millis(100));
    }

    #[test]
    fn jitter_takes_at_most_its_fraction_off() {
        let b = Backoff::default();
        for attempt in 1..20 {
            let full = no_jitter().delay(attempt, 0.0);
            for r in [0.0, 0.3, 0.999] {
                let d = b.delay(attempt, r);
                assert!(d <= full && d >= full.mul_f64(0.75), "{attempt} {r}: {d:?}");
            }
        }
    }

    #[test]
    fn huge_and_odd_values_never_panic() {
        let b = Backoff {
            initial: Duration::MAX,
            max: Duration::MAX,
            jitter: f64::NAN,
            max_attempts: Some(u32::MAX),
            max_elapsed: Some(Duration::MAX),
        };
        for attempt in [0, 1, 2, 31, 32, 63, 64, u32::MAX] {
            assert_eq!(b.delay(attempt, f64::INFINITY), Duration::MAX);
        }
        let odd = Backoff {
            jitter: 7.0,
            ..Backoff::default()
        };
        assert_eq!(odd.delay(1, 1.0), Duration::ZERO);
        assert_eq!(odd.delay(1, -3.0), Duration::from_millis(100));
    }

    #[test]
    fn limits_stop_the_attempts() {
        let b = Backoff {
            max_attempts: Some(3),
            max_elapsed: Some(Duration::from_secs(60)),
            ..Backoff::default()
        };
        assert!(b.should_try(3, Duration::from_secs(59)));
        assert!(!b.should_try(4, Duration::ZERO));
        assert!(!b.should_try(1, Duration::from_secs(60)));
        assert!(Backoff::default().should_try(u32::MAX, Duration::MAX));
    }
}

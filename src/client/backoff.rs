//! The wait between reconnection attempts: exponential, with jitter.

use std::time::Duration;

/// Exponential backoff with jitter for reconnecting: the wait starts at `min`,
/// doubles with each failed attempt up to `max`, and is spread by ±25% (within
/// `min`..=`max`) so that clients cut off together do not all return at once.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A backoff from `min` to `max`, seeded from the system.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self::with_rng(min, max, fastrand::Rng::new())
    }

    /// A backoff with a given random number generator, for tests.
    pub fn with_rng(min: Duration, max: Duration, rng: fastrand::Rng) -> Self {
        Self {
            min,
            max,
            attempt: 0,
            rng,
        }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self
            .min
            .saturating_mul(1 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        base.mul_f64(0.75 + self.rng.f64() / 2.0)
            .clamp(self.min, self.max)
    }

    /// Starts again from `min`, after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(30));
        let mut backoff = Backoff::with_rng(min, max, fastrand::Rng::with_seed(7));
        let delays: Vec<_> = (0..12).map(|_| backoff.next_delay()).collect();
        for (i, delay) in delays.iter().enumerate() {
            let base = min.saturating_mul(1 << i).min(max);
            assert!(*delay >= base.mul_f64(0.75).max(min), "{i}: {delay:?}");
            assert!(*delay <= base.mul_f64(1.25).min(max), "{i}: {delay:?}");
        }
        assert!(delays[11] >= Duration::from_millis(22_500));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(625));
    }
}

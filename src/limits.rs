//! The per-client message rate limit: a token bucket, and the flood rule that
//! closes a client that stays over it.

use std::time::Duration;

use tokio::time::Instant;

/// A gap of this long between dropped messages ends a flood.
const FLOOD_GAP: Duration = Duration::from_secs(1);
/// Least time between two "slow down" notices to one client.
const NOTICE_EVERY: Duration = Duration::from_secs(1);

/// What to do with one incoming message.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// Within the rate: broadcast it.
    Pass,
    /// Over the rate: drop it, and when it is time to tell the sender, how many were
    /// dropped since the last notice and the notice's classic line.
    Drop(Option<(u64, String)>),
    /// Over the rate for the whole flood timeout: close the client with 1008.
    Close,
}

/// One client's rate limit state.
#[derive(Debug)]
pub(crate) struct RateLimit {
    /// Tokens added per second; 0 turns the limit off.
    rate: f64,
    /// Most tokens held.
    burst: f64,
    /// Tokens held now; a message costs one.
    tokens: f64,
    /// When `tokens` was last refilled.
    refilled: Instant,
    /// How long a flood may last before the client is closed.
    flood_timeout: Duration,
    /// When the current flood began and when its last message was dropped.
    flood: Option<(Instant, Instant)>,
    /// Messages dropped since the last notice, and when that notice went out.
    unreported: u64,
    noticed: Option<Instant>,
}

impl RateLimit {
    pub(crate) fn new(rate: f64, burst: u32, flood_timeout: Duration, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate,
            burst,
            tokens: burst,
            refilled: now,
            flood_timeout,
            flood: None,
            unreported: 0,
            noticed: None,
        }
    }

    /// How long until the next message passes, as of the last check.
    pub(crate) fn until_next(&self) -> Duration {
        if self.rate <= 0.0 || self.tokens >= 1.0 {
            return Duration::ZERO;
        }
        Duration::try_from_secs_f64((1.0 - self.tokens) / self.rate).unwrap_or(Duration::MAX)
    }

    /// Decides about a message that arrives at `now`.
    pub(crate) fn check(&mut self, now: Instant) -> Verdict {
        if self.rate <= 0.0 {
            return Verdict::Pass;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Pass;
        }

        let began = match self.flood {
            Some((began, last)) if now.saturating_duration_since(last) < FLOOD_GAP => began,
            _ => now,
        };
        self.flood = Some((began, now));
        if now.saturating_duration_since(began) >= self.flood_timeout {
            return Verdict::Close;
        }
        self.unreported += 1;
        if self
            .noticed
            .is_some_and(|at| now.saturating_duration_since(at) < NOTICE_EVERY)
        {
            return Verdict::Drop(None);
        }
        self.noticed = Some(now);
        let dropped = std::mem::take(&mut self.unreported);
        Verdict::Drop(Some((
            dropped,
            crate::protocol::classic::rate_notice(dropped, self.rate),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let t = Instant::now();
        let mut limit = RateLimit::new(10.0, 20, Duration::from_secs(10), t);
        // A paste of 20 lines at once.
        for _ in 0..20 {
            assert_eq!(limit.check(t), Verdict::Pass);
        }
        assert!(matches!(limit.check(t), Verdict::Drop(Some(_))));
        // 100 ms later one more token has come.
        assert_eq!(limit.check(at(t, 100)), Verdict::Pass);
    }

    #[test]
    fn a_steady_human_pace_is_never_limited() {
        let t = Instant::now();
        let mut limit = RateLimit::new(10.0, 30, Duration::from_secs(10), t);
        for i in 0..1000 {
            assert_eq!(limit.check(at(t, i * 200)), Verdict::Pass);
        }
    }

    #[test]
    fn notices_come_at_most_once_a_second_and_count_the_drops() {
        let t = Instant::now();
        let mut limit = RateLimit::new(1.0, 1, Duration::from_secs(60), t);
        assert_eq!(limit.check(t), Verdict::Pass);
        assert!(
            matches!(limit.check(t), Verdict::Drop(Some((1, n))) if n.contains("1 message dropped"))
        );
        assert_eq!(limit.check(at(t, 10)), Verdict::Drop(None));
        assert_eq!(limit.check(at(t, 20)), Verdict::Drop(None));
        // At 1000 ms a token is back, so that one passes; the next is dropped and reported.
        assert_eq!(limit.check(at(t, 1000)), Verdict::Pass);
        assert!(
            matches!(limit.check(at(t, 1001)), Verdict::Drop(Some((3, n))) if n.contains("3 messages dropped"))
        );
    }

    /// Sends every 100 ms from `from` to `to` and returns the first time it was closed.
    fn flood(limit: &mut RateLimit, t: Instant, from: u64, to: u64) -> Option<u64> {
        (from..to)
            .step_by(100)
            .find(|&ms| limit.check(at(t, ms)) == Verdict::Close)
    }

    #[test]
    fn a_flood_that_lasts_the_timeout_is_closed() {
        let t = Instant::now();
        let mut limit = RateLimit::new(1.0, 1, Duration::from_secs(3), t);
        let closed = flood(&mut limit, t, 0, 10_000).expect("closed");
        assert!((3000..=3200).contains(&closed), "closed after {closed} ms");
    }

    #[test]
    fn a_pause_of_a_second_ends_a_flood() {
        let t = Instant::now();
        let mut limit = RateLimit::new(1.0, 1, Duration::from_secs(3), t);
        assert_eq!(flood(&mut limit, t, 0, 2500), None);
        // 1.5 s of silence, then flooding again: a new flood, not a continuation.
        assert_eq!(flood(&mut limit, t, 4000, 6500), None);
    }

    #[test]
    fn zero_rate_means_no_limit() {
        let t = Instant::now();
        let mut limit = RateLimit::new(0.0, 1, Duration::from_secs(1), t);
        for _ in 0..10_000 {
            assert_eq!(limit.check(t), Verdict::Pass);
        }
    }
}

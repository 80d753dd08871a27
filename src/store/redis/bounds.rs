//! How long anything waits on Redis: the one bound on a session's wait, and the
//! connection settings and health checks it is built from.
//!
//! Why a bound of its own: the `redis` crate's `ConnectionManager` makes every
//! command issued while it reconnects wait for the whole reconnection, all its
//! retries and their backoff included (by default 6 retries, 0.1 s doubling with
//! jitter: 6 to 12 s when Redis refuses connections), and only then fails them all;
//! the next command starts another such round. Commands that time out on a
//! connection that answers nothing (a stopped Redis) do not replace it. Publishes
//! go to Redis one batch after another, so a line waited for the batch before it
//! as well as its own: lines sent in an outage were answered after 2.5 to 4 s
//! (stopped) and 9 to 17 s (killed). Now the connection retries nothing by itself
//! (the health check reconnects, often), and every wait a session has on Redis
//! ends within [`RedisBounds::wait`].

use std::time::Duration;

use redis::aio::ConnectionManagerConfig;

/// The waits on Redis and the checks that notice an outage and its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RedisBounds {
    /// The most a session waits on Redis for one thing: a join's read of where
    /// the room stands, its listing in the room's presence, `/who`, a resume's
    /// read, a publish through the API; and the most a batch of lines waits for
    /// Redis's answer. Past it the store takes Redis for away: reads are answered
    /// "out of reach" (and at once while it is away, without asking Redis), and a
    /// member's lines are held, unanswered and undelivered, until Redis is back.
    /// Redis answers in well under a millisecond here, and a batch of 256
    /// publishes in a few: one second is an outage, not a busy Redis.
    pub(crate) wait: Duration,
    /// How often the health check pings Redis while it answers.
    pub(crate) check_every: Duration,
    /// How often the health check pings Redis while it is away; each ping then
    /// tries one new connection, so Redis back is noticed within two of these.
    pub(crate) retry_every: Duration,
    /// The most lines this instance holds while Redis is out of reach
    /// (`--outage-queue`): past them a line is refused, and its sender told.
    pub(crate) outage_queue: usize,
    /// How many replicas must have a batch of lines before they are
    /// acknowledged (`--redis-replicas`, Redis's `WAIT`, within
    /// [`RedisBounds::wait`]); 0: the primary's answer is enough. While fewer
    /// are in step, Redis counts as out of reach: lines are held.
    pub(crate) replicas: u32,
    /// The most bytes each room's local copy of its log keeps (`--resume-bytes`),
    /// beside `--resume-window` messages: what a returning client is replayed
    /// from while Redis is away.
    pub(crate) resume_bytes: usize,
}

impl Default for RedisBounds {
    fn default() -> Self {
        Self {
            wait: Duration::from_secs(1),
            check_every: Duration::from_secs(1),
            retry_every: Duration::from_millis(200),
            outage_queue: crate::config::ServerConfig::default().outage_queue,
            replicas: 0,
            resume_bytes: crate::config::ServerConfig::default().resume_bytes,
        }
    }
}

impl RedisBounds {
    /// The connection manager's settings: one connection attempt per
    /// reconnection, no retries of its own, each attempt and each command within
    /// [`RedisBounds::wait`]. Retrying is the health check's, every
    /// [`RedisBounds::retry_every`], so that nothing waits on a round of retries
    /// and backoff, and Redis back is noticed promptly.
    pub(crate) fn manager_config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(self.wait))
            .set_response_timeout(Some(self.wait))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_manager_retries_nothing_and_waits_no_longer_than_the_bound() {
        let bounds = RedisBounds::default();
        let config = bounds.manager_config();
        assert_eq!(config.number_of_retries(), 0);
        assert_eq!(config.connection_timeout(), Some(bounds.wait));
        assert_eq!(config.response_timeout(), Some(bounds.wait));
        assert!(
            bounds.retry_every * 2 <= bounds.wait,
            "Redis back is noticed within the bound"
        );
    }
}

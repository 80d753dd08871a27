//! The limit on failed authentications per source address: a leaky bucket per IP
//! address that holds at most `per_minute` failures and drains at `per_minute` a
//! minute. While it is full, every attempt from that address (a right token
//! included) is answered 429 with `Retry-After`, before any token is checked.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Most addresses tracked at once; past it, drained buckets are forgotten, and if
/// every bucket is still filling, a new address is not tracked (the limit fails
/// open rather than using unbounded memory).
const MAX_TRACKED: usize = 65_536;

/// Failed authentications per source address.
#[derive(Debug)]
pub(crate) struct FailureLimit {
    /// Failures an address may make in a row, and per minute after; 0: no limit.
    per_minute: u32,
    /// Each address's bucket. std `Mutex`: held for a lookup, never across `.await`.
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// One address's failures.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures still counted, as of `at` (they drain continuously).
    level: f64,
    at: Instant,
}

impl FailureLimit {
    /// A limit of `per_minute` failures per address (0: none).
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn rate(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }

    fn level(&self, bucket: &Bucket, now: Instant) -> f64 {
        let drained = now.saturating_duration_since(bucket.at).as_secs_f64() * self.rate();
        (bucket.level - drained).max(0.0)
    }

    /// `Err(wait)` when `ip` has used up its failures: it may try again after `wait`
    /// (whole seconds, at least one).
    pub(crate) fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(bucket) = buckets.get(&ip) else {
            return Ok(());
        };
        let excess = self.level(bucket, now) - f64::from(self.per_minute) + 1.0;
        if excess <= 0.0 {
            return Ok(());
        }
        Err(Duration::from_secs(
            (excess / self.rate()).ceil().max(1.0) as u64
        ))
    }

    /// Counts a failed authentication from `ip`.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) {
        if self.per_minute == 0 {
            return;
        }
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&ip) {
            buckets.retain(|_, bucket| self.level(bucket, now) > 0.0);
            if buckets.len() >= MAX_TRACKED {
                return;
            }
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            level: 0.0,
            at: now,
        });
        *bucket = Bucket {
            level: self.level(bucket, now) + 1.0,
            at: now,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const BOB: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    #[test]
    fn the_limit_closes_after_its_failures_and_opens_as_they_drain() {
        let limit = FailureLimit::new(6);
        let start = Instant::now();
        for _ in 0..5 {
            limit.failed(ALICE, start);
            assert_eq!(limit.check(ALICE, start), Ok(()));
        }
        limit.failed(ALICE, start);
        // Six failures, draining one each 10 s: the next attempt waits 10 s.
        assert_eq!(limit.check(ALICE, start), Err(Duration::from_secs(10)));
        assert_eq!(
            limit.check(BOB, start),
            Ok(()),
            "other addresses are not affected"
        );
        assert_eq!(
            limit.check(ALICE, start + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
        assert_eq!(limit.check(ALICE, start + Duration::from_secs(10)), Ok(()));
        limit.failed(ALICE, start + Duration::from_secs(10));
        assert!(limit.check(ALICE, start + Duration::from_secs(10)).is_err());
        assert_eq!(limit.check(ALICE, start + Duration::from_secs(60)), Ok(()));
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limit = FailureLimit::new(0);
        let now = Instant::now();
        for _ in 0..100 {
            limit.failed(ALICE, now);
        }
        assert_eq!(limit.check(ALICE, now), Ok(()));
    }

    #[test]
    fn drained_addresses_are_forgotten_when_the_table_is_full() {
        let limit = FailureLimit::new(60);
        let start = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            limit.failed(IpAddr::V4(i.into()), start);
        }
        // A second later every bucket has drained: a new address finds room.
        let later = start + Duration::from_secs(1);
        limit.failed(ALICE, later);
        let buckets = limit.buckets.lock().expect("lock");
        assert_eq!(buckets.len(), 1);
        assert!(buckets.contains_key(&ALICE));
    }
}

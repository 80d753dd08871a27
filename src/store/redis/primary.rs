//! Which Redis this instance talks to: the one at `--redis-url`, or the primary
//! that Redis Sentinel names (`--redis-sentinel`, `--redis-master`), followed
//! through failovers.
//!
//! The `redis` crate's `ConnectionManager` reconnects to one fixed address, and its
//! `SentinelClient` finds the primary but does not reconnect. So [`Primary`] holds
//! the connection in use and swaps it: the health check asks the Sentinels for the
//! primary each time, and when they name another one (a replica they promoted), a
//! new connection to it replaces the old one. Each time, not only while Redis is
//! away: in a failover asked of Sentinel (`SENTINEL FAILOVER`), or one where only
//! Sentinel lost the primary, the old primary goes on answering as a primary until
//! Sentinel makes it a replica, up to 10 s later, and what is written to it
//! meanwhile is lost then.
//! Every user of the connection takes the current one each time it is used.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, IntoConnectionInfo, ProtocolVersion, RedisConnectionInfo};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tracing::warn;

use crate::config::RedisSentinel;

/// Where the Redis is: one address, or the primary some Sentinels name.
#[derive(Debug, Clone)]
pub(crate) enum RedisTarget {
    /// The Redis at this URL, always the same.
    Url(String),
    /// The primary these Sentinels name, whichever server it is now.
    Sentinel(RedisSentinel),
}

impl RedisTarget {
    /// The client for the Redis to connect to now: the URL's, or the primary the
    /// Sentinels name (they are asked, and its role checked, within `within`).
    async fn client(
        &self,
        sentinel: Option<&Mutex<SentinelClient>>,
        within: Duration,
    ) -> redis::RedisResult<Client> {
        let info = match (self, sentinel) {
            (_, Some(sentinel)) => {
                let asked = async { sentinel.lock().await.async_get_client().await };
                let client = tokio::time::timeout(within, asked)
                    .await
                    .map_err(|_| timed_out())??;
                client.get_connection_info().clone()
            }
            (RedisTarget::Url(url), None) => url.as_str().into_connection_info()?,
            (RedisTarget::Sentinel(_), None) => unreachable_sentinel()?,
        };
        // RESP3, so that published messages come on the same connection.
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        Client::open(info.set_redis_settings(settings))
    }
}

/// The connection to the Redis in use, and how to find the next one.
pub(crate) struct Primary {
    /// The connection in use; replaced when the Sentinels name another primary.
    /// A `watch`, so that the publishing and subscribing tasks take the new one.
    current: watch::Sender<ConnectionManager>,
    /// The address `current` is connected to, for telling a new primary apart.
    /// std `Mutex`: never held across an `.await`.
    address: std::sync::Mutex<String>,
    /// The Sentinels, when following a primary through them. tokio `Mutex`: its
    /// look-ups take `&mut` and go to the network; only the health check and
    /// the first connection ask.
    sentinel: Option<Mutex<SentinelClient>>,
    /// Where to connect.
    target: RedisTarget,
    /// The settings of every connection (the push sender, resubscription, bounds).
    config: ConnectionManagerConfig,
    /// The most a look-up of the primary, or a new connection to it, may take.
    wait: Duration,
}

impl std::fmt::Debug for Primary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Primary")
            .field("target", &self.target)
            .field("address", &self.address())
            .finish_non_exhaustive()
    }
}

impl Primary {
    /// Connects to `target` within `within`, trying again every `every` while it
    /// refuses (it may be starting, or the Sentinels may not know a primary yet);
    /// each later look-up or connection is bounded by `wait`.
    ///
    /// # Errors
    /// The `redis` crate's error when the target is invalid or cannot be reached.
    pub(crate) async fn connect(
        target: RedisTarget,
        config: ConnectionManagerConfig,
        within: Duration,
        every: Duration,
        wait: Duration,
    ) -> redis::RedisResult<Self> {
        let sentinel = match &target {
            RedisTarget::Url(_) => None,
            RedisTarget::Sentinel(sentinel) => Some(Mutex::new(sentinel_client(sentinel)?)),
        };
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = async {
                let client = target.client(sentinel.as_ref(), left).await?;
                let manager = client
                    .get_connection_manager_with_config(config.clone())
                    .await?;
                Ok::<_, redis::RedisError>((manager, address_of(&client)))
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok((manager, address))) => {
                    return Ok(Self {
                        current: watch::Sender::new(manager),
                        address: std::sync::Mutex::new(address),
                        sentinel,
                        target,
                        config,
                        wait,
                    });
                }
                Ok(Err(e)) if may_come(&e) && Instant::now() + every < deadline => {
                    tokio::time::sleep(every).await;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(timed_out()),
            }
        }
    }

    /// The connection in use now.
    pub(crate) fn manager(&self) -> ConnectionManager {
        self.current.borrow().clone()
    }

    /// Follows the connection in use, for a task that outlives a swap.
    pub(crate) fn follow(&self) -> watch::Receiver<ConnectionManager> {
        self.current.subscribe()
    }

    /// The address of the Redis in use, `host:port`.
    pub(crate) fn address(&self) -> String {
        crate::store::lock(&self.address).clone()
    }

    /// Whether the primary is found through Sentinel (and may move).
    pub(crate) fn follows_sentinel(&self) -> bool {
        self.sentinel.is_some()
    }

    /// Asks the Sentinels for the primary and, when they name another one than
    /// the one in use, connects to it and puts that connection in use, warning
    /// once (old and new address); says whether it did. Without Sentinels, does
    /// nothing. The new connection has no subscriptions: the caller takes Redis
    /// for away, so that coming back resubscribes and catches the rooms up.
    ///
    /// # Errors
    /// The Sentinels' error (none answers, or none knows a primary that answers
    /// as one, as during a failover), or the new primary's.
    pub(crate) async fn find_again(&self) -> redis::RedisResult<bool> {
        let Some(sentinel) = &self.sentinel else {
            return Ok(false);
        };
        let client = self.target.client(Some(sentinel), self.wait).await?;
        let address = address_of(&client);
        let old = self.address();
        if address == old {
            return Ok(false);
        }
        let connecting = client.get_connection_manager_with_config(self.config.clone());
        let manager = tokio::time::timeout(self.wait, connecting)
            .await
            .map_err(|_| timed_out())??;
        *crate::store::lock(&self.address) = address.clone();
        self.current.send_replace(manager);
        warn!(%old, new = %address, "the Redis primary changed: Sentinel names another; following it");
        Ok(true)
    }
}

/// A client asking `sentinel`'s Sentinels for its primary, which it connects to
/// over RESP3.
fn sentinel_client(sentinel: &RedisSentinel) -> redis::RedisResult<SentinelClient> {
    let urls: Vec<String> = sentinel.sentinels.iter().map(|s| sentinel_url(s)).collect();
    let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(
        RedisConnectionInfo::default().set_protocol(ProtocolVersion::RESP3),
    );
    SentinelClient::build(
        urls,
        sentinel.master.clone(),
        Some(node),
        SentinelServerType::Master,
    )
}

/// A Sentinel's URL: `host:port` as `redis://host:port`, a URL as it is.
fn sentinel_url(sentinel: &str) -> String {
    match sentinel.contains("://") {
        true => sentinel.to_owned(),
        false => format!("redis://{sentinel}"),
    }
}

/// The `host:port` a client connects to.
fn address_of(client: &Client) -> String {
    client.get_connection_info().addr().to_string()
}

/// Whether a first connection may work if tried again: Redis refusing (starting),
/// or the Sentinels not naming a primary yet.
fn may_come(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.kind() == redis::ErrorKind::MasterNameNotFoundBySentinel
}

/// The error for a look-up or connection that took too long.
fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
}

/// A Sentinel target always has its client: [`Primary::connect`] makes it.
fn unreachable_sentinel<T>() -> redis::RedisResult<T> {
    Err(redis::RedisError::from((
        redis::ErrorKind::InvalidClientConfig,
        "no Sentinel client",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_is_given_as_host_and_port_or_as_a_url() {
        assert_eq!(sentinel_url("127.0.0.1:26379"), "redis://127.0.0.1:26379");
        assert_eq!(
            sentinel_url("redis://:secret@s1:26379"),
            "redis://:secret@s1:26379"
        );
    }
}

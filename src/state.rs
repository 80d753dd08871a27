//! What every session shares with the accept loop: the configuration, the hub, the
//! metrics, the connection count. `server` builds it and starts a `session` per
//! connection; a session reads it here and never imports `server`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::auth::FailureLimit;
use crate::config::ServerConfig;
use crate::hub::{Hub, SenderId};
use crate::metrics::{Metrics, Now};
use crate::publish::Publishers;

/// The server's shared state, built once by `server::run` and read by every session.
pub(crate) struct Shared {
    /// The limits and timeouts.
    pub(crate) config: ServerConfig,
    /// The rooms and their fan-out channels.
    pub(crate) hub: Arc<Hub>,
    /// What is counted for `/metrics`.
    pub(crate) metrics: Arc<Metrics>,
    /// Accepts TLS connections when the server serves `wss://`.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    /// Where connection ids start: random, so that ids are unique across server
    /// instances sharing rooms through Redis (they tell a sender's own messages
    /// apart, and a connection's line ids apart).
    next_id: AtomicU64,
    /// Failed authentications per source address, for the 429 limit.
    pub(crate) auth_failures: FailureLimit,
    /// Each publisher's rate, for the publish API's 429.
    pub(crate) publishers: Publishers,
    /// Open connections, counted from accept to the end of their task. Changed only
    /// by [`ConnectionGuard`].
    connections: AtomicUsize,
}

impl Shared {
    /// The state for a server with `config`, its rooms `hub` and its `metrics`.
    pub(crate) fn new(config: ServerConfig, hub: Arc<Hub>, metrics: Arc<Metrics>) -> Self {
        Self {
            hub,
            metrics,
            tls: config.tls.clone().map(tokio_rustls::TlsAcceptor::from),
            auth_failures: FailureLimit::new(config.max_auth_failures),
            publishers: Publishers::default(),
            config,
            // Counting up from a random start in the lower half: never SERVER, never
            // wrapping, and two instances' ranges meet with odds of one in billions.
            next_id: AtomicU64::new(fastrand::u64(1..u64::MAX / 2)),
            connections: AtomicUsize::new(0),
        }
    }

    /// A new connection id, never `hub::SERVER` and never given out twice here.
    pub(crate) fn next_id(&self) -> SenderId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Connections open now, handshakes included.
    pub(crate) fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// The metrics exposition, with the figures of this moment.
    pub(crate) fn render_metrics(&self) -> String {
        let (rooms, log_bytes) = self.hub.stats();
        self.metrics.render(Now {
            open: self.open_connections(),
            rooms,
            log_bytes,
            store: self.hub.store_health(),
            flushes: self.hub.flushes(),
        })
    }

    /// Whether one more connection would go over `--max-connections`.
    pub(crate) fn is_full(&self) -> bool {
        self.open_connections() >= self.config.max_connections
    }
}

/// Counts one open connection for as long as it lives, and gives its session the
/// shared state.
pub(crate) struct ConnectionGuard(Arc<Shared>);

impl ConnectionGuard {
    /// Counts a new connection.
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        shared.connections.fetch_add(1, Ordering::Relaxed);
        Self(shared)
    }

    /// What every session shares.
    pub(crate) fn shared(&self) -> &Shared {
        &self.0
    }

    /// Open connections now, this one included.
    pub(crate) fn open(&self) -> usize {
        self.0.open_connections()
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

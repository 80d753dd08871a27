//! The accept loop: one task per connection, and a graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::ServerConfig;
use crate::handshake::{self, Reply};
use crate::hub::Hub;
use crate::{Error, Result, session};

/// Pause after an accept error such as running out of file descriptors, so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What every session shares.
pub(crate) struct Shared {
    /// The limits and timeouts.
    pub(crate) config: ServerConfig,
    /// The rooms and their fan-out channels.
    pub(crate) hub: Arc<Hub>,
    /// The next connection id, which tells a session its own messages apart.
    pub(crate) next_id: std::sync::atomic::AtomicU64,
    /// Accepts TLS connections when the server serves `wss://`.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    /// Open connections, counted from accept to the end of their task. Updated by
    /// [`ConnectionGuard`] only.
    pub(crate) connections: AtomicUsize,
}

/// Counts one open connection for as long as it lives.
pub(crate) struct ConnectionGuard(Arc<Shared>);

impl ConnectionGuard {
    fn new(shared: Arc<Shared>) -> Self {
        shared.connections.fetch_add(1, Ordering::Relaxed);
        Self(shared)
    }

    /// What every session shares.
    pub(crate) fn shared(&self) -> &Shared {
        &self.0
    }

    /// Open connections now, this one included.
    pub(crate) fn open(&self) -> usize {
        self.0.connections.load(Ordering::Relaxed)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves chat clients on `listener` until `shutdown` completes, then closes every
/// client with 1001 and waits at most `config.close_timeout` for them.
///
/// Shutdown uses tokio-util's `CancellationToken` (one child per session, so each
/// session sees the signal in its `select!`) and `TaskTracker` (to wait for the
/// sessions' close handshakes without keeping their `JoinHandle`s).
///
/// A connection's errors end that connection only; this returns an error only if
/// the listener itself fails.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let close_timeout = config.close_timeout;
    let shared = Arc::new(Shared {
        hub: Arc::new(Hub::new(
            config.buffer,
            config.history,
            config.max_rooms,
            config.presence,
        )),
        next_id: std::sync::atomic::AtomicU64::new(crate::hub::SERVER + 1),
        tls: config.tls.clone().map(tokio_rustls::TlsAcceptor::from),
        config,
        connections: AtomicUsize::new(0),
    });
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);

    let result = loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break Ok(()),
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, addr)) => {
                // Batches are flushed whole, so Nagle's delay would only add latency.
                let _ = stream.set_nodelay(true);
                if shared.connections.load(Ordering::Relaxed) >= shared.config.max_connections {
                    tracker.spawn(refuse_full(stream, addr, shared.config.close_timeout));
                    continue;
                }
                let guard = ConnectionGuard::new(Arc::clone(&shared));
                tracker.spawn(session::run(stream, addr, guard, cancel.child_token()));
            }
            Err(e) if is_fatal(&e) => {
                error!(error = %e, "listener failed");
                break Err(Error::Listener(e));
            }
            Err(e) => {
                warn!(error = %e, "accept failed; retrying");
                tokio::select! {
                    () = &mut shutdown => break Ok(()),
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    };

    drop(listener);
    info!(
        clients = shared.connections.load(Ordering::Relaxed),
        "shutting down"
    );
    cancel.cancel();
    tracker.close();
    // Each session bounds its own close handshake; this bounds everything else.
    if tokio::time::timeout(close_timeout + Duration::from_millis(500), tracker.wait())
        .await
        .is_err()
    {
        warn!(
            remaining = tracker.len(),
            "gave up waiting for clients to close"
        );
    }
    result
}

/// Answers a connection over `--max-connections` with 503 before any upgrade.
async fn refuse_full(mut stream: tokio::net::TcpStream, addr: SocketAddr, limit: Duration) {
    info!(%addr, "refused: too many connections");
    let reply = Reply::new(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "too many connections; try again later",
    );
    let _ = tokio::time::timeout(limit, handshake::reject(&mut stream, &reply)).await;
}

/// Whether an accept error means the listening socket itself is broken, as opposed
/// to a passing condition (a connection reset before accept, no file descriptors).
fn is_fatal(e: &io::Error) -> bool {
    // EBADF, EINVAL, ENOTSOCK, EOPNOTSUPP: the socket is not a listening socket.
    matches!(e.raw_os_error(), Some(9 | 22 | 88 | 95))
}

/// Pending connections the kernel queues before `accept`: enough for a crowd
/// arriving at once (the default of 128 makes the rest retry after a second).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `host:port` with a listen backlog sized for bursts of connections, and
/// `SO_REUSEADDR` so a restarted server can bind at once.
pub async fn bind(host: &str, port: u16) -> io::Result<TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            "the host resolved to no address",
        )
    }))
}

/// The address of `listener`, for the readiness line.
pub fn local_addr(listener: &TcpListener) -> Result<SocketAddr> {
    listener.local_addr().map_err(Error::Listener)
}

/// Completes on Ctrl-C or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        #[cfg(unix)]
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            term.recv().await;
            return;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// One line saying why binding `host:port` failed and what to do about it.
pub fn describe_bind_error(host: &str, port: u16, e: &io::Error) -> String {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => {
            "address already in use (is another server running? choose another --port)"
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need privileges; choose another --port)"
        }
        io::ErrorKind::AddrNotAvailable => {
            "address not available (is --host an address of this machine?)"
        }
        _ => return format!("cannot listen on {host}:{port}: {e}"),
    };
    format!("cannot listen on {host}:{port}: {hint}")
}

//! The accept loop: one task per connection, and a graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::ServerConfig;
pub use crate::error::describe_bind_error;
use crate::handshake::{self, Reply};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::route::{self, Listener, Route};
use crate::state::{ConnectionGuard, Shared};
use crate::store::{
    DiskBounds, DiskStore, MemoryStore, RedisBounds, RedisStore, RedisTarget, Store, window,
};
use crate::{Error, Result, session};

/// Pause after an accept error such as running out of file descriptors, so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Time to reach Redis at start, with `--redis-url`.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A server ready to serve: its rooms made, Redis reached if it uses Redis, and the
/// metrics address bound if it has one.
pub struct Server {
    shared: Arc<Shared>,
    /// With `--metrics-listen`: where `/metrics` is served instead of the chat port.
    metrics_listener: Option<TcpListener>,
}

impl Server {
    /// Makes the server's state; with `config.redis_url`, connects to Redis first;
    /// with `config.data_dir`, opens the data directory (and takes its lock); with
    /// `config.metrics_listen`, binds the metrics address.
    ///
    /// # Errors
    /// [`Error::Redis`] when the Redis URL is invalid or Redis cannot be reached;
    /// [`Error::DataDir`] when the data directory cannot be used;
    /// [`Error::MetricsListen`] when the metrics address cannot be bound.
    pub async fn start(config: ServerConfig) -> Result<Self> {
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::MetricsListen { addr, source })?,
            ),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        let redis = redis_target(&config);
        let store: Arc<dyn Store> = match (redis, &config.data_dir) {
            (None, None) => Arc::new(MemoryStore::for_config(&config)),
            (None, Some(dir)) => {
                let (dir, bounds) = (dir.clone(), DiskBounds::for_config(&config));
                // It reads the directory back, which may take a moment: off the runtime.
                let store = tokio::task::spawn_blocking(move || DiskStore::open(&dir, bounds))
                    .await
                    .map_err(|e| Error::DataDir(e.to_string()))?
                    .map_err(|e| Error::DataDir(e.to_string()))?;
                survive_file_size_limit();
                Arc::new(store)
            }
            (Some(target), _) => {
                let url = describe(&target);
                let store = RedisStore::connect(
                    target,
                    window(&config),
                    REDIS_CONNECT_TIMEOUT,
                    RedisBounds {
                        outage_queue: config.outage_queue,
                        replicas: config.redis_replicas,
                        resume_bytes: config.resume_bytes,
                        ..RedisBounds::default()
                    },
                    Arc::clone(&metrics),
                )
                .await
                .map_err(|source| Error::Redis {
                    url: url.clone(),
                    source,
                })?;
                info!(%url, "connected to Redis");
                Arc::new(store)
            }
        };
        let hub = Arc::new(Hub::new(&config, store));
        Ok(Self {
            shared: Arc::new(Shared::new(config, hub, metrics)),
            metrics_listener,
        })
    }

    /// Serves chat clients on `listener` until `shutdown` completes, then closes
    /// every client with 1001 and waits at most `config.close_timeout` for them.
    ///
    /// Shutdown uses tokio-util's `CancellationToken` (one child per session, so
    /// handshakes in progress stop at once) and `TaskTracker` (to wait for the
    /// sessions' close handshakes without keeping their `JoinHandle`s); chatting
    /// sessions learn of it from their room's channel, which the hub closes.
    ///
    /// # Errors
    /// A connection's errors end that connection only; this returns
    /// [`Error::Listener`] only if the listener itself fails.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let metrics = self
            .metrics_listener
            .map(|metrics| tokio::spawn(serve_metrics(metrics, Arc::clone(&self.shared))));
        let result = serve(self.shared, listener, shutdown).await;
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        result
    }

    /// The address `/metrics` is served on, with `--metrics-listen`.
    ///
    /// # Errors
    /// The operating system's error if the socket cannot tell.
    pub fn metrics_addr(&self) -> Option<io::Result<SocketAddr>> {
        self.metrics_listener.as_ref().map(TcpListener::local_addr)
    }
}

/// Has a write past the file-size limit (`ulimit -f`, RLIMIT_FSIZE) fail with
/// EFBIG, a write error the disk store holds lines through, instead of ending the
/// server: SIGXFSZ's default. tokio's handler, once installed, stays for good.
fn survive_file_size_limit() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let xfsz = SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw());
        if let Err(e) = signal(xfsz) {
            warn!(error = %e, "cannot catch SIGXFSZ: a file-size limit will end the server");
        }
    }
}

/// Serves `/metrics` (and nothing else) on the `--metrics-listen` address.
async fn serve_metrics(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((mut stream, addr)) = listener.accept().await else {
            tokio::time::sleep(ACCEPT_BACKOFF).await;
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let limit = shared.config.handshake_timeout;
            let read = match tokio::time::timeout(limit, handshake::read_request(&mut stream)).await
            {
                Ok(read) => read,
                Err(_) => return,
            };
            let reply = match read.map(|request| route::route(request, Listener::Metrics)) {
                Ok(Ok(Route::Plain(plain))) => route::answer(plain, &shared, addr.ip()),
                Ok(Err(refusal)) | Err(handshake::Failure::Refused(refusal)) => refusal,
                // `route` refuses upgrades and publishes here; a connection that broke is told
                // too, in case it still reads.
                Ok(Ok(Route::Chat(_) | Route::Publish(_))) | Err(handshake::Failure::Io(_)) => {
                    route::metrics_only()
                }
            };
            let _ = tokio::time::timeout(limit, handshake::respond(&mut stream, &reply)).await;
        });
    }
}

/// [`Server::start`], then [`Server::serve`].
///
/// # Errors
/// As those two.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    Server::start(config).await?.serve(listener, shutdown).await
}

/// The Redis to keep the rooms in, if any: Sentinel's primary, or the URL's.
fn redis_target(config: &ServerConfig) -> Option<RedisTarget> {
    match (&config.redis_sentinel, &config.redis_url) {
        (Some(sentinel), _) => Some(RedisTarget::Sentinel(sentinel.clone())),
        (None, Some(url)) => Some(RedisTarget::Url(url.clone())),
        (None, None) => None,
    }
}

/// Where `target` is, for the log and errors: the URL without its password, or
/// the primary's name and its Sentinels (without theirs).
fn describe(target: &RedisTarget) -> String {
    match target {
        RedisTarget::Url(url) => redact(url),
        RedisTarget::Sentinel(sentinel) => {
            let sentinels: Vec<String> = sentinel.sentinels.iter().map(|s| redact(s)).collect();
            format!(
                "the primary {:?} named by Sentinel {}",
                sentinel.master,
                sentinels.join(", ")
            )
        }
    }
}

/// A URL with its user and password, if any, left out: `redis://***@host:6379`.
fn redact(url: &str) -> String {
    match url
        .split_once("://")
        .and_then(|(scheme, rest)| Some((scheme, rest.split_once('@')?)))
    {
        Some((scheme, (_, host))) => format!("{scheme}://***@{host}"),
        None => url.to_owned(),
    }
}

async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let close_timeout = shared.config.close_timeout;
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
                if shared.is_full() {
                    shared.metrics.refused(503);
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
    info!(clients = shared.open_connections(), "shutting down");
    // Handshakes in progress stop at once; chatting sessions learn it from their
    // room's channel, after writing what it still holds.
    cancel.cancel();
    shared.hub.close();
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
    let _ = tokio::time::timeout(limit, handshake::respond(&mut stream, &reply)).await;
}

/// Whether an accept error means the listening socket itself is broken, as opposed
/// to a passing condition (a connection reset before accept, no file descriptors).
#[cfg(unix)]
fn is_fatal(e: &io::Error) -> bool {
    use rustix::io::Errno;
    // The socket is not (or no longer) a listening socket.
    matches!(
        Errno::from_io_error(e),
        Some(Errno::BADF | Errno::INVAL | Errno::NOTSOCK | Errno::OPNOTSUPP)
    )
}

/// Whether an accept error means the listening socket itself is broken.
#[cfg(not(unix))]
fn is_fatal(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidInput
}

/// Pending connections the kernel queues before `accept`: enough for a crowd
/// arriving at once (the default of 128 makes the rest retry after a second).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `host:port` with a listen backlog sized for bursts of connections, and
/// `SO_REUSEADDR` so a restarted server can bind at once.
///
/// # Errors
/// The operating system's error when the host does not resolve or no address can
/// be bound; [`describe_bind_error`] words it for people.
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
///
/// # Errors
/// [`Error::Listener`] if the socket cannot tell its address.
pub fn local_addr(listener: &TcpListener) -> Result<SocketAddr> {
    listener.local_addr().map_err(Error::Listener)
}

/// Completes on Ctrl-C (SIGINT) or, on Unix, SIGTERM. The handlers are installed
/// when this is called, not when the future is first polled: a caller that calls it
/// before printing its readiness line never dies of a signal sent right after it.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                // A handler that cannot be installed leaves the default: the signal ends
                // the process without the graceful close.
                (Ok(mut only), Err(_)) | (Err(_), Ok(mut only)) => {
                    only.recv().await;
                }
                (Err(_), Err(_)) => std::future::pending().await,
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_redis_url_keeps_the_redis_error_for_the_caller() {
        let config = ServerConfig {
            redis_url: Some("nonsense://x".to_owned()),
            ..ServerConfig::default()
        };
        let Err(Error::Redis { url, source }) = Server::start(config).await else {
            panic!("started with a bad Redis URL");
        };
        assert_eq!(url, "nonsense://x");
        assert_eq!(source.kind(), redis::ErrorKind::InvalidClientConfig);
    }
}

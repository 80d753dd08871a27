//! The library's error type: one enum, so tests can `matches!` on it.

use std::io;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the library. A connection's own trouble on the
/// server never surfaces here: it ends that connection and is logged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The listening socket failed.
    #[error("listener failed: {0}")]
    Listener(#[source] io::Error),

    /// The metrics address (`--metrics-listen`) cannot be bound.
    #[error("{}", describe_bind_error(&addr.ip().to_string(), addr.port(), source))]
    MetricsListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The operating system's answer.
        #[source]
        source: io::Error,
    },

    /// Redis (`--redis-url`) is unusable: an invalid URL, or unreachable at start.
    #[error("cannot use Redis at {url}: {source} (is it running, and is the URL right?)")]
    Redis {
        /// The URL, without its password.
        url: String,
        /// What the Redis client reported (its kind tells an invalid URL, a refused
        /// connection, a timeout apart).
        #[source]
        source: redis::RedisError,
    },

    /// The data directory (`--data-dir`) cannot be used: another program's, of an
    /// unknown format version, in use by another server, or unreadable.
    #[error("{0}")]
    DataDir(String),

    /// The URL is not a `ws://` or `wss://` URL the client can use.
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The TCP connection could not be opened.
    #[error("cannot connect to {url}: {}", describe_io(source))]
    Connect {
        /// The URL the client tried.
        url: String,
        /// The operating system's answer.
        #[source]
        source: io::Error,
    },

    /// The server's host name could not be resolved to an address.
    #[error("cannot connect to {url}: cannot resolve the host name {host} (check the URL's host)")]
    Resolve {
        /// The URL the client tried.
        url: String,
        /// The host name, as in the URL.
        host: String,
        /// The resolver's answer.
        #[source]
        source: io::Error,
    },

    /// Connecting or upgrading took longer than the connect timeout.
    #[error("cannot connect to {url}: timed out (is the host reachable and the port right?)")]
    ConnectTimeout {
        /// The URL the client tried.
        url: String,
    },

    /// The server answered the upgrade request with an HTTP status instead of
    /// switching to WebSocket.
    #[error("cannot connect to {url}: the server refused the upgrade with HTTP {status}{}", refusal_detail(*status, reason.as_deref()))]
    Refused {
        /// The URL the client tried.
        url: String,
        /// The HTTP status code of the answer.
        status: u16,
        /// The one-line reason the server gave in the body, if any.
        reason: Option<String>,
    },

    /// The WebSocket handshake failed for another reason.
    #[error("cannot connect to {url}: {source}")]
    Handshake {
        /// The URL the client tried.
        url: String,
        /// What tokio-websockets reported.
        #[source]
        source: tokio_websockets::Error,
    },

    /// The server chose a subprotocol the client did not offer.
    #[error(
        "cannot connect to {url}: the server chose the subprotocol {protocol:?}, which this client does not speak"
    )]
    UnexpectedProtocol {
        /// The URL the client tried.
        url: String,
        /// What the server chose.
        protocol: String,
    },

    /// An established connection broke without a close handshake.
    #[error("connection to {url} lost: {}", describe_ws(source))]
    ConnectionLost {
        /// The URL the client was connected to.
        url: String,
        /// What broke it.
        #[source]
        source: tokio_websockets::Error,
    },

    /// Certificates or keys could not be loaded or used.
    #[error("{reason}")]
    TlsSetup {
        /// One line saying what failed, naming the file, and why.
        reason: String,
        /// What failed underneath (reading the file, parsing the PEM, rustls), if
        /// anything did.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// The TLS handshake with the server failed (e.g. an untrusted certificate).
    #[error("cannot connect to {url}: TLS handshake failed: {reason}")]
    Tls {
        /// The URL the client tried.
        url: String,
        /// What went wrong, in words, with a hint where one helps.
        reason: String,
    },

    /// The key for signed tokens (`--auth-key`, `server token --key`) is unusable.
    #[error("cannot use the key in {path}: {reason}")]
    AuthKey {
        /// The key file, as given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The server wants a token and ours was missing, wrong or expired (HTTP 401).
    #[error("{}", unauthorized(*.sent, reason.as_deref()))]
    Unauthorized {
        /// Whether we sent a token.
        sent: bool,
        /// The server's one-line reason, when it says more than that the token is
        /// missing or wrong (`token expired: get a new one`).
        reason: Option<String>,
    },

    /// The token cannot be sent in an HTTP header.
    #[error("the token must be printable ASCII")]
    InvalidToken,

    /// The operating system's random source failed (the client's session id is
    /// drawn from it).
    #[error("cannot draw a random session id from the operating system: {0}")]
    Random(#[source] getrandom::Error),

    /// Writing to the local output (the terminal, a pipe) failed.
    #[error("cannot write output: {0}")]
    Output(#[source] io::Error),
}

/// The line for a 401: what the server said of a token we sent, when it said more
/// than `--token` servers do.
fn unauthorized(sent: bool, reason: Option<&str>) -> String {
    match (sent, reason) {
        (true, Some(reason)) => format!("the server refused the token (401): {reason}"),
        (true, None) => "the server refused the token (401)".into(),
        (false, _) => "the server requires a token (401): pass --token or set CHAT_TOKEN".into(),
    }
}

/// What follows the status of a refused upgrade: the server's own reason when it
/// gave one, with our hint for the statuses that have a specific one; the hint alone
/// otherwise.
fn refusal_detail(status: u16, reason: Option<&str>) -> String {
    let hint = match status {
        403 => Some("this origin is not allowed"),
        503 => Some("the server is full; try again later"),
        _ => None,
    };
    // The server's own reason says it best; the hints are for servers that give none.
    match (reason, hint) {
        (Some(reason), _) => format!(": {reason}"),
        (None, Some(hint)) => format!(" ({hint})"),
        (None, None) => " (is it a broadcast-chat server, and is the path right?)".to_owned(),
    }
}

/// Says what an I/O error means for a connection attempt, with a hint at the fix.
fn describe_io(e: &io::Error) -> String {
    let (what, hint) = match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            ("connection refused", "is the server running on that port?")
        }
        io::ErrorKind::TimedOut => ("timed out", "is the host reachable?"),
        io::ErrorKind::ConnectionReset => (
            "connection reset by the server",
            "is it a broadcast-chat server?",
        ),
        io::ErrorKind::UnexpectedEof => (
            "the server closed the connection during the handshake",
            "is it a broadcast-chat server, and is it full?",
        ),
        io::ErrorKind::AddrNotAvailable
        | io::ErrorKind::NetworkUnreachable
        | io::ErrorKind::HostUnreachable => ("address not reachable", "check the URL's host"),
        _ => return e.to_string(),
    };
    format!("{what} ({hint})")
}

/// Says what a WebSocket error means for an established connection.
fn describe_ws(e: &tokio_websockets::Error) -> String {
    match e {
        tokio_websockets::Error::Io(io) => match io.kind() {
            io::ErrorKind::UnexpectedEof => {
                "the server closed the connection without a close frame".into()
            }
            io::ErrorKind::ConnectionReset => "connection reset by the server".into(),
            io::ErrorKind::BrokenPipe => "the server went away".into(),
            _ => io.to_string(),
        },
        other => other.to_string(),
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

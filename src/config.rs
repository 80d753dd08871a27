//! Every limit and timeout of the server and the client, with their defaults.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The port the server listens on and the client connects to by default.
pub const DEFAULT_PORT: u16 = 2000;
/// The URL the client connects to by default: the server's default address.
pub const DEFAULT_URL: &str = "ws://127.0.0.1:2000";
/// The address the server binds by default: loopback only, so nobody else can join
/// until the operator says so with `--host`.
pub const DEFAULT_HOST: &str = "127.0.0.1";

/// The write delay of an instance that shares its rooms through Redis, unless one
/// is given. Through Redis every copy, the sender's own included, waits a round
/// trip, so a sender that waits for its copies paces the room; without a delay each
/// client then gets a write per few messages, and the instances spend their CPU on
/// writes. Measured in the benchmark's `crowd`: 10 ms gives each instance 0.43x a
/// single server's throughput, 20 ms 0.6-0.7x (README, Performance).
pub const SHARED_WRITE_DELAY: Duration = Duration::from_millis(20);

/// The broadcast channel's capacity on an instance that shares its rooms through
/// Redis, unless one is given. Through Redis a message reaches a session later (a
/// round trip, then the write delay), so more are on their way at once, and a
/// session that falls behind its channel catches up from Redis, a round trip per
/// read. Measured in the benchmark's `senders` through Redis: with 1,024, up to
/// half of the runs had sessions falling behind over and over, at a quarter of the
/// throughput; with 4,096, none (README, Performance). It costs memory per room,
/// not per connection.
pub const SHARED_BUFFER: usize = 4096;

/// The Redis Sentinels that name the primary to use (`--redis-sentinel`,
/// `--redis-master`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSentinel {
    /// The Sentinels' addresses, `host:port` (or `redis://` URLs, for a password);
    /// asked in this order.
    pub sentinels: Vec<String>,
    /// The name they monitor the primary under (`sentinel monitor NAME ...`).
    pub master: String,
}

/// The server's limits and timeouts. `Default` gives the values the binary uses
/// when no flag says otherwise.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Capacity of the broadcast channel, in messages. A session that falls
    /// further behind catches up from the room's log (its client is told how many
    /// messages the log no longer holds). The server's command line makes it
    /// [`SHARED_BUFFER`] with Redis.
    pub buffer: usize,
    /// Largest message a client may send, in bytes; a bigger one closes with 1009.
    pub max_message_size: usize,
    /// Time a new connection has to complete the HTTP upgrade.
    pub handshake_timeout: Duration,
    /// Time one write to a client may take before the client is considered stuck
    /// and dropped.
    pub write_timeout: Duration,
    /// A client quiet for this long is pinged; one that then stays silent for
    /// another interval is dropped.
    pub ping_interval: Duration,
    /// Time allowed for a close handshake, on shutdown or when closing one client.
    pub close_timeout: Duration,
    /// Most broadcast messages written to one client in one batch (one flush).
    pub max_batch: usize,
    /// A session that has just written to its client collects what arrives during
    /// this long before writing again (0: write at once). Fewer, larger writes cost
    /// less CPU, at up to this much latency while messages keep coming. A client's
    /// own line is never held: its copy is how a sender learns it went through.
    /// The server's command line makes it [`SHARED_WRITE_DELAY`] with Redis.
    pub write_delay: Duration,
    /// Most connections open at once, handshakes included; one more gets HTTP 503.
    pub max_connections: usize,
    /// Messages per second one client may send on average; 0 turns the limit off.
    pub max_rate: f64,
    /// Messages one client may send at once above the rate (a paste, a burst of typing).
    pub max_burst: u32,
    /// A client whose messages are dropped for exceeding the rate for this long
    /// without a break of a second is closed with 1008.
    pub flood_timeout: Duration,
    /// When set, clients must send `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
    /// When set, clients must present a JWT signed with this key (`--auth-key`):
    /// their name and rights come from its claims.
    pub auth: Option<crate::auth::VerifyingKey>,
    /// Failed authentications one source address may make per minute (and in a
    /// row) before its attempts get HTTP 429; 0 turns the limit off.
    pub max_auth_failures: u32,
    /// When not empty, an upgrade with an `Origin` header not in this list gets 403.
    /// Requests without `Origin` (non-browser clients) are not affected.
    pub allowed_origins: Vec<String>,
    /// When set, connections are TLS (`wss://`).
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Messages each room sends a newcomer after the welcome, from its log; 0 sends none.
    pub history: usize,
    /// Messages each room's log keeps for clients that resume or fall behind (at
    /// least `history`).
    pub resume_window: usize,
    /// Most bytes each room's log keeps (both encodings of each message); the
    /// oldest messages go first.
    pub resume_bytes: usize,
    /// Most rooms at once; joining a new room beyond it gets HTTP 503.
    pub max_rooms: usize,
    /// Whether joins and leaves are announced to the room.
    pub presence: bool,
    /// Whether a sender is spared its own messages.
    pub no_echo: bool,
    /// When set, `/metrics` is served on this address alone, not on the chat port.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// With a URL, the rooms' logs are in this Redis, shared with every instance
    /// that uses it; without, they are in this process.
    pub redis_url: Option<String>,
    /// With Sentinels, the rooms' logs are in the Redis primary they name, followed
    /// to the replica they promote when it fails; instead of `redis_url`.
    pub redis_sentinel: Option<RedisSentinel>,
    /// With Redis: acknowledge a line only once this many replicas have it
    /// (Redis's `WAIT`); 0 acknowledges it once the primary has it.
    pub redis_replicas: u32,
    /// With a directory, the rooms' logs are kept there (an SQLite database), and
    /// survive a restart and a crash.
    pub data_dir: Option<std::path::PathBuf>,
    /// With a data directory: how long an entry is kept; `None`, as long as
    /// `resume_window` and `resume_bytes` let.
    pub retention: Option<Duration>,
    /// With a data directory: most rooms kept; the ones written longest ago go.
    pub max_stored_rooms: usize,
    /// Most lines held while the data directory cannot be written, or Redis is
    /// out of reach; past them a line is refused, and its sender told.
    pub outage_queue: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            buffer: 1024,
            max_message_size: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            close_timeout: Duration::from_secs(2),
            max_batch: 64,
            write_delay: Duration::ZERO,
            max_connections: 10_000,
            max_rate: 10.0,
            max_burst: 30,
            flood_timeout: Duration::from_secs(10),
            token: None,
            auth: None,
            max_auth_failures: 10,
            allowed_origins: Vec::new(),
            tls: None,
            history: 0,
            resume_window: 4096,
            resume_bytes: 4 << 20,
            max_rooms: 100,
            presence: false,
            no_echo: false,
            redis_url: None,
            redis_sentinel: None,
            redis_replicas: 0,
            data_dir: None,
            retention: None,
            max_stored_rooms: 1000,
            outage_queue: 10_000,
            metrics_listen: None,
        }
    }
}

/// The client's settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server to connect to, `ws://host:port/path`.
    pub url: http::Uri,
    /// Time allowed to open the TCP connection and complete the upgrade.
    pub connect_timeout: Duration,
    /// Time to wait for the server's answer to our close frame.
    pub close_timeout: Duration,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub token: Option<Secret>,
    /// How `wss://` servers are verified; `None` trusts the bundled web PKI roots and
    /// the system's store.
    pub tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    /// Sent as the `name` query parameter, so the server tags us `name@address`.
    pub name: Option<String>,
    /// Whether to colour sender tags and notices with ANSI escape codes.
    pub color: bool,
    /// Whether to connect again when the server is not up or the connection is lost.
    pub reconnect: bool,
    /// The first wait before connecting again; it doubles with each failed attempt.
    pub reconnect_min: Duration,
    /// The longest wait before connecting again.
    pub reconnect_max: Duration,
    /// Whether to print the frames as they came, one JSON object a line, instead
    /// of `From server:` lines.
    pub json: bool,
    /// End the chat once this many chat messages are printed.
    pub count: Option<u64>,
    /// Give up when the chat has not ended this long after it began (connecting,
    /// acknowledgements, `count` included).
    pub timeout: Option<Duration>,
    /// Where to start in the room on the first connection.
    pub start: crate::client::Start,
}

impl ClientConfig {
    /// A configuration for `url` with default timeouts.
    pub fn new(url: http::Uri) -> Self {
        Self {
            url,
            connect_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(1),
            token: None,
            tls: None,
            name: None,
            color: false,
            reconnect: false,
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            json: false,
            count: None,
            timeout: None,
            start: crate::client::Start::Live,
        }
    }
}

/// A shared secret such as the access token: never shown by `Debug`, compared in
/// constant time.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for sending it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `candidate` equals the secret, in time that depends only on the
    /// lengths, so that timing does not reveal how much of a guess was right.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let secret = self.0.as_bytes();
        let mut diff = u8::from(secret.len() != candidate.len());
        for (i, &b) in secret.iter().enumerate() {
            diff |= b ^ candidate.get(i).copied().unwrap_or(!b);
        }
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Parses a duration as the command line takes it: `500ms`, `2s`, `1.5` (seconds),
/// `1m`, `2h`, `30d`.
///
/// # Errors
/// A one-line message when `s` is not a number with one of those units, or is
/// negative or too large.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else if let Some(n) = s.strip_suffix('d') {
        (n, 86_400.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (write e.g. 500ms, 2s, 1m, 2h or 30d)"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("{s:?} is not a valid duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_url_points_at_the_default_port() {
        assert!(DEFAULT_URL.ends_with(&format!(":{DEFAULT_PORT}")));
    }

    #[test]
    fn secrets_compare_exactly_and_never_show() {
        let secret = Secret::new("s3cret");
        assert!(secret.matches(b"s3cret"));
        assert!(!secret.matches(b"s3cre"));
        assert!(!secret.matches(b"s3cret!"));
        assert!(!secret.matches(b"S3cret"));
        assert!(!secret.matches(b""));
        assert!(!format!("{secret:?}").contains("s3cret"));
        let config = ServerConfig {
            token: Some(secret),
            ..ServerConfig::default()
        };
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}

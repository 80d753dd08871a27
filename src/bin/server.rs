//! `server`: parse flags, bind, print the readiness line, serve until Ctrl-C or SIGTERM.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use broadcast_chat::auth::{self, SigningKey};
use broadcast_chat::cli::Tool;
use broadcast_chat::config::parse_duration;
use broadcast_chat::{
    DEFAULT_HOST, DEFAULT_PORT, RedisSentinel, SHARED_BUFFER, SHARED_WRITE_DELAY, Secret,
    ServerConfig, server, tls,
};
use clap::builder::TypedValueParser;
use clap::{CommandFactory, Parser, Subcommand};

/// The server's allocator. Every WebSocket connection gets an 8 KiB read buffer
/// from tokio-websockets that an idle client never fills; glibc's malloc writes
/// chunk headers around it and so makes about half of it resident, jemalloc keeps
/// its metadata apart and leaves it untouched (idle RSS per connection: 7 kB with
/// glibc, 3 kB with jemalloc; see the README's Performance section).
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A WebSocket broadcast chat server: every text message goes to every client.
#[derive(Debug, Parser)]
#[command(name = "server", version, args_conflicts_with_subcommands = true)]
#[command(group(clap::ArgGroup::new("redis").args(["redis_url", "redis_sentinel"])))]
struct Cli {
    /// What to do instead of serving.
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, value_name = "ADDRESS", env = "CHAT_HOST", default_value = DEFAULT_HOST)]
    host: String,
    /// Port to listen on; 0 picks a free one (the readiness line tells which).
    #[arg(long, env = "CHAT_PORT", default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Broadcast channel capacity, in messages; a session further behind catches up
    /// from the room's log [default: 1024, or 4096 with --redis-url]
    #[arg(long, value_name = "MESSAGES",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|n| n as usize))]
    buffer: Option<usize>,
    /// Largest message accepted, in bytes; bigger ones close the sender with 1009.
    #[arg(long, value_name = "BYTES", default_value_t = ServerConfig::default().max_message_size)]
    max_message_size: usize,
    /// Most connections at once; one more gets HTTP 503.
    #[arg(long, value_name = "N", default_value_t = ServerConfig::default().max_connections)]
    max_connections: usize,
    /// Messages per second a client may send on average (0: no limit); over it they are dropped.
    #[arg(long, value_name = "PER_SECOND", default_value_t = ServerConfig::default().max_rate,
          value_parser = parse_rate)]
    max_rate: f64,
    /// Messages a client may send at once above the rate (a paste).
    #[arg(long, value_name = "MESSAGES", default_value_t = ServerConfig::default().max_burst)]
    max_burst: u32,
    /// A client kept over the rate this long is closed with 1008.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    flood_timeout: Duration,
    /// Time a client has to complete the WebSocket handshake.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// After a write to a client, collect what arrives for this long before writing
    /// again: fewer, larger writes at up to this much latency (0: write at once). A
    /// client's own lines are never held [default: 0, or 20ms with --redis-url]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    write_delay: Option<Duration>,
    /// Time a write to a client may take before the client is dropped as stuck.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    write_timeout: Duration,
    /// A quiet client is pinged after this long, and dropped if still silent after as long again.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    ping_interval: Duration,
    /// Time allowed for close handshakes, at shutdown and when closing one client.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    close_timeout: Duration,
    /// Require clients to send `Authorization: Bearer TOKEN`.
    #[arg(long, env = "CHAT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Require signed tokens (JWTs) checked with this key: an HMAC secret (a file of
    /// 32 bytes or more) or an Ed25519 or RSA public key in PEM. Names and rights
    /// come from the tokens' claims.
    #[arg(
        long,
        value_name = "FILE",
        env = "CHAT_AUTH_KEY",
        conflicts_with = "token"
    )]
    auth_key: Option<PathBuf>,
    /// Failed authentications one source address may make per minute before its
    /// attempts get HTTP 429 (0: no limit).
    #[arg(long, value_name = "PER_MINUTE", default_value_t = ServerConfig::default().max_auth_failures)]
    max_auth_failures: u32,
    /// Browser origins allowed to connect (repeatable); others get 403. Clients
    /// that send no Origin header are not affected.
    #[arg(long, value_name = "ORIGIN")]
    allow_origin: Vec<String>,
    /// Messages of the room's log each newcomer gets after the welcome (0: none).
    #[arg(long, value_name = "MESSAGES", default_value_t = ServerConfig::default().history,
          value_parser = clap::value_parser!(u32).range(0..=100_000).map(|n| n as usize))]
    history: usize,
    /// Messages each room's log keeps for clients that come back or fall behind.
    #[arg(long, value_name = "MESSAGES", default_value_t = ServerConfig::default().resume_window,
          value_parser = clap::value_parser!(u32).range(0..=1_000_000).map(|n| n as usize))]
    resume_window: usize,
    /// Most bytes each room's log keeps; the oldest messages go first.
    #[arg(long, value_name = "BYTES", default_value_t = ServerConfig::default().resume_bytes)]
    resume_bytes: usize,
    /// Most rooms at once (the URL path picks the room); a new room beyond it gets HTTP 503.
    #[arg(long, value_name = "N", default_value_t = ServerConfig::default().max_rooms)]
    max_rooms: usize,
    /// Announce joins and leaves to the room: `* alice@127.0.0.1:53422 joined (3 here)`.
    #[arg(long)]
    presence: bool,
    /// Do not send senders their own messages back.
    #[arg(long)]
    no_echo: bool,
    /// Serve /metrics on this address (e.g. 127.0.0.1:9102) instead of the chat port.
    #[arg(long, value_name = "ADDRESS", env = "CHAT_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Log format: human lines, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// Share rooms with every server using this Redis (redis://host:port): their
    /// logs, offsets and presence live there.
    #[arg(
        long,
        value_name = "URL",
        env = "CHAT_REDIS_URL",
        hide_env_values = true
    )]
    redis_url: Option<String>,
    /// Instead of --redis-url: ask these Redis Sentinels (HOST:PORT; repeat the
    /// flag, or separate with commas) for the primary named by --redis-master,
    /// and move to the replica they promote when it fails.
    #[arg(
        long,
        value_name = "HOST:PORT",
        env = "CHAT_REDIS_SENTINEL",
        value_delimiter = ',',
        conflicts_with = "redis_url",
        requires = "redis_master"
    )]
    redis_sentinel: Vec<String>,
    /// With --redis-sentinel: the name the Sentinels monitor the primary under
    /// (`sentinel monitor NAME ...` in their configuration).
    #[arg(
        long,
        value_name = "NAME",
        env = "CHAT_REDIS_MASTER",
        requires = "redis_sentinel"
    )]
    redis_master: Option<String>,
    /// With Redis: acknowledge a line only once N replicas have it too (Redis's
    /// WAIT), so that a failover cannot lose it; while fewer are in step, lines
    /// are held as in an outage.
    #[arg(
        long,
        value_name = "N",
        env = "CHAT_REDIS_REPLICAS",
        requires = "redis"
    )]
    redis_replicas: Option<u32>,
    /// Keep every room's log, epoch and offsets in this directory (an SQLite
    /// database made there), so that a restart or a crash loses nothing that was
    /// acknowledged. Without it, rooms live in memory.
    #[arg(
        long,
        value_name = "DIR",
        env = "CHAT_DATA_DIR",
        conflicts_with_all = ["redis_url", "redis_sentinel"]
    )]
    data_dir: Option<PathBuf>,
    /// With --data-dir: drop entries older than this (e.g. 7d); 0 keeps them as
    /// long as --resume-window and --resume-bytes let.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration,
          requires = "data_dir")]
    retention: Duration,
    /// With --data-dir: most rooms kept; beyond it, the ones written longest ago
    /// (and not open) are forgotten.
    #[arg(long, value_name = "N", default_value_t = ServerConfig::default().max_stored_rooms,
          requires = "data_dir")]
    max_stored_rooms: usize,
    /// Most lines held while the data directory cannot be written (a full disk)
    /// or Redis is out of reach; past them a line is refused and its sender told.
    #[arg(long, value_name = "LINES", default_value_t = ServerConfig::default().outage_queue,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    outage_queue: usize,
    /// Worker threads; 0 means one per CPU core.
    #[arg(long, value_name = "N", env = "CHAT_THREADS", default_value_t = 0)]
    threads: usize,
    /// How many tasks a worker runs between two looks at the network and the
    /// timers (tokio's `event_interval`) [default: 3; with Redis, 61, tokio's own]
    #[arg(long, value_name = "N", env = "CHAT_EVENT_INTERVAL",
          value_parser = clap::value_parser!(u32).range(1..))]
    event_interval: Option<u32>,
    /// PEM certificate chain: serve wss:// (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// The server's subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Print a signed token for one person (or a backend), for servers run with
    /// --auth-key.
    Token(TokenArgs),
    /// Copy a data directory's database to a new file, while the server runs: the
    /// copy, named chat.sqlite3 in an empty directory, is a data directory again.
    Backup(BackupArgs),
    /// `completions` and `man`, as every binary has them.
    #[command(flatten)]
    Tool(Tool),
}

/// `server token`: the claims of the token to sign, and the key.
#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The key to sign with: the server's HMAC secret file, or the private key (PEM,
    /// PKCS#8) of its Ed25519 or RSA public key.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The holder's name (the token's `sub`): their tag in the room.
    #[arg(long)]
    name: String,
    /// Rooms the holder may enter, comma-separated: names, `/` for the lobby,
    /// `team-*` for every room starting `team-`, `*` for all.
    #[arg(long, value_name = "ROOMS", value_delimiter = ',', required = true)]
    rooms: Vec<String>,
    /// How long the token is valid: e.g. 8h, 30d.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    expires: Duration,
    /// The holder may read but not send.
    #[arg(long)]
    read_only: bool,
    /// The holder may post through the publish API (POST /_/rooms/NAME/messages).
    #[arg(long)]
    publish: bool,
}

/// `server backup`: which data directory, and where the copy goes.
#[derive(Debug, clap::Args)]
struct BackupArgs {
    /// The data directory the server runs with.
    #[arg(long, value_name = "DIR", env = "CHAT_DATA_DIR")]
    data_dir: PathBuf,
    /// The copy: a new file.
    #[arg(value_name = "FILE")]
    to: PathBuf,
}

/// Copies the data directory `args` names; one line either way (exit code 1 on
/// failure).
fn backup(args: &BackupArgs) -> ExitCode {
    match broadcast_chat::backup(&args.data_dir, &args.to) {
        Ok(copy) => {
            println!(
                "backed up {} rooms, {} entries, to {} ({} bytes)",
                copy.rooms,
                copy.entries,
                args.to.display(),
                copy.bytes
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the token `args` describe; exit code 1 with one line if it cannot.
fn token(args: &TokenArgs) -> ExitCode {
    let minted = SigningKey::load(&args.key)
        .map_err(|e| e.to_string())
        .and_then(|key| {
            let claims = auth::Claims {
                sub: args.name.clone(),
                exp: auth::now_secs().saturating_add(args.expires.as_secs()),
                rooms: args.rooms.clone(),
                read_only: args.read_only,
                publish: args.publish,
            };
            auth::mint(&key, &claims)
        });
    match minted {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How the server writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// For people: `2026-11-24T08:00:00Z  INFO broadcast_chat::session: connected addr=...`.
    Human,
    /// For log collectors: one JSON object per line.
    Json,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if rate >= 0.0 && rate.is_finite() => Ok(rate),
        _ => Err(format!(
            "{s:?} is not a rate (messages per second, 0 or more)"
        )),
    }
}

impl Cli {
    /// The runtime's event interval: as given, or the default for the store.
    fn event_interval(&self) -> u32 {
        let shared =
            self.redis_url.as_deref().is_some_and(|u| !u.is_empty()) || self.redis_master.is_some();
        self.event_interval.unwrap_or(match shared {
            true => SHARED_EVENT_INTERVAL,
            false => EVENT_INTERVAL,
        })
    }

    fn config(&self) -> Result<ServerConfig, broadcast_chat::Error> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(tls::server_config(cert, key)?),
            _ => None,
        };
        let auth = self
            .auth_key
            .as_deref()
            .map(auth::VerifyingKey::load)
            .transpose()?;
        let redis_url = self.redis_url.clone().filter(|u| !u.is_empty());
        let redis_sentinel = self.redis_master.clone().map(|master| RedisSentinel {
            sentinels: self.redis_sentinel.clone(),
            master,
        });
        // Two defaults differ with Redis (see their constants; a third, the event
        // interval, in `event_interval`).
        let (buffer, write_delay) = match redis_url.is_some() || redis_sentinel.is_some() {
            true => (SHARED_BUFFER, SHARED_WRITE_DELAY),
            false => {
                let defaults = ServerConfig::default();
                (defaults.buffer, defaults.write_delay)
            }
        };
        Ok(ServerConfig {
            buffer: self.buffer.unwrap_or(buffer),
            max_message_size: self.max_message_size,
            max_connections: self.max_connections,
            max_rate: self.max_rate,
            max_burst: self.max_burst,
            flood_timeout: self.flood_timeout,
            handshake_timeout: self.handshake_timeout,
            write_timeout: self.write_timeout,
            write_delay: self.write_delay.unwrap_or(write_delay),
            ping_interval: self.ping_interval,
            close_timeout: self.close_timeout,
            token: self
                .token
                .clone()
                .filter(|t| !t.is_empty())
                .map(Secret::new),
            auth,
            max_auth_failures: self.max_auth_failures,
            allowed_origins: self.allow_origin.clone(),
            tls,
            history: self.history,
            resume_window: self.resume_window,
            resume_bytes: self.resume_bytes,
            max_rooms: self.max_rooms,
            presence: self.presence,
            no_echo: self.no_echo,
            redis_url,
            redis_sentinel,
            redis_replicas: self.redis_replicas.unwrap_or_default(),
            data_dir: self.data_dir.clone().filter(|d| !d.as_os_str().is_empty()),
            retention: Some(self.retention).filter(|r| !r.is_zero()),
            max_stored_rooms: self.max_stored_rooms,
            outage_queue: self.outage_queue,
            metrics_listen: self.metrics_listen,
            ..ServerConfig::default()
        })
    }
}

/// Tasks a worker runs between two looks at the network and the timers. Tokio's
/// default, 61, lets a busy room's fan-out run for up to 61 sessions' writes before
/// the next line from a sender is read; at 3 the sender's next line is read sooner,
/// so each member's write carries more messages. Measured (README, Performance):
/// 1.3-1.5x the deliveries per second in `crowd` and 1.5-1.8x in `burst` at 0.6-0.7x
/// the CPU per delivery, the open-loop scenarios' latency unchanged.
const EVENT_INTERVAL: u32 = 3;

/// The event interval with Redis: tokio's own. Through Redis each member's writes
/// are gathered by the write delay, and a lower interval only added CPU (burst per
/// instance 0.93-0.98x, in two invocations against 61).
const SHARED_EVENT_INTERVAL: u32 = 61;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Token(args)) => return token(args),
        Some(Command::Backup(args)) => return backup(args),
        Some(Command::Tool(tool)) => return tool.run(Cli::command()),
        None => {}
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if cli.threads > 0 {
        runtime.worker_threads(cli.threads);
    }
    runtime.event_interval(cli.event_interval());
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(serve(cli)),
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cli: Cli) -> ExitCode {
    // A log line that cannot be written (stderr a file on a full disk, or past a
    // file-size limit) is dropped: tracing-subscriber would report it with
    // `eprintln!`, which panics when stderr fails, in whatever task logged it.
    let logs = tracing_subscriber::fmt()
        .log_internal_errors(false)
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        );
    match cli.log_format {
        LogFormat::Human => logs
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
        // One object a line: timestamp, level, target, and the event's fields
        // (`message` among them), as tracing-subscriber's JSON formatter writes it.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }

    let config = match cli.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match server::bind(&cli.host, cli.port).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "error: {}",
                server::describe_bind_error(&cli.host, cli.port, &e)
            );
            return ExitCode::FAILURE;
        }
    };
    // Redis is reached before the readiness line: a server that says it listens serves.
    let server = match server::Server::start(config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Ok(addr)) = server.metrics_addr() {
        tracing::info!(%addr, "serving /metrics");
    }
    // Before the readiness line: a signal sent as soon as it is read is handled.
    let shutdown = server::shutdown_signal();
    match server::local_addr(&listener) {
        Ok(addr) => println!("Listening on port {}", addr.port()),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    match server.serve(listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_defaults_are_the_library_defaults() {
        let config = Cli::try_parse_from(["server"])
            .expect("parse")
            .config()
            .expect("config");
        assert_eq!(
            format!("{config:?}"),
            format!("{:?}", ServerConfig::default())
        );
    }

    #[test]
    fn the_event_interval_defaults_to_the_measured_one_for_each_store_and_is_at_least_one() {
        let interval = |args: &[&str]| {
            Cli::try_parse_from(["server"].iter().chain(args)).map(|cli| cli.event_interval())
        };
        assert_eq!(interval(&[]).expect("parse"), EVENT_INTERVAL);
        assert_eq!(interval(&["--event-interval", "61"]).expect("parse"), 61);
        assert!(interval(&["--event-interval", "0"]).is_err());
        let redis = ["--redis-url", "redis://127.0.0.1:1"];
        assert_eq!(interval(&redis).expect("parse"), SHARED_EVENT_INTERVAL);
        let given = [
            "--redis-url",
            "redis://127.0.0.1:1",
            "--event-interval",
            "3",
        ];
        assert_eq!(interval(&given).expect("parse"), 3);
    }

    /// The configuration the command line `server ARGS` gives.
    fn config_of(args: &[&str]) -> ServerConfig {
        let cli = Cli::try_parse_from(["server"].iter().chain(args)).expect("parse");
        cli.config().expect("config")
    }

    #[test]
    fn with_redis_the_write_delay_defaults_to_the_shared_one() {
        let delay = |args: &[&str]| config_of(args).write_delay;
        assert_eq!(delay(&[]), Duration::ZERO);
        assert_eq!(
            delay(&["--redis-url", "redis://127.0.0.1:1"]),
            SHARED_WRITE_DELAY
        );
        assert_eq!(
            delay(&["--redis-url", "redis://127.0.0.1:1", "--write-delay", "0"]),
            Duration::ZERO,
            "a delay given is kept"
        );
        assert_eq!(delay(&["--write-delay", "5ms"]), Duration::from_millis(5));
    }

    #[test]
    fn with_redis_the_channel_defaults_to_the_shared_size() {
        let buffer = |args: &[&str]| config_of(args).buffer;
        assert_eq!(buffer(&[]), ServerConfig::default().buffer);
        assert_eq!(
            buffer(&["--redis-url", "redis://127.0.0.1:1"]),
            SHARED_BUFFER
        );
        assert_eq!(
            buffer(&["--redis-url", "redis://127.0.0.1:1", "--buffer", "16"]),
            16,
            "a size given is kept"
        );
        assert!(Cli::try_parse_from(["server", "--buffer", "0"]).is_err());
    }

    #[test]
    fn sentinels_are_given_with_the_primary_s_name_instead_of_a_url() {
        let config = config_of(&[
            "--redis-sentinel",
            "s1:26379,s2:26379",
            "--redis-sentinel",
            "s3:26379",
            "--redis-master",
            "mymaster",
        ]);
        let sentinels = ["s1:26379", "s2:26379", "s3:26379"].map(String::from);
        assert_eq!(
            config.redis_sentinel,
            Some(RedisSentinel {
                sentinels: sentinels.to_vec(),
                master: "mymaster".to_owned(),
            })
        );
        assert_eq!(config.redis_url, None);
        assert_eq!(
            (config.buffer, config.write_delay),
            (SHARED_BUFFER, SHARED_WRITE_DELAY),
            "the defaults of shared rooms"
        );
        let refused = |args: &[&str]| Cli::try_parse_from(["server"].iter().chain(args)).is_err();
        assert!(
            refused(&["--redis-sentinel", "s1:26379"]),
            "no primary named"
        );
        assert!(refused(&["--redis-master", "mymaster"]), "no Sentinel");
        let both = ["--redis-sentinel", "s1:1", "--redis-master", "m"];
        assert!(refused(
            &[&both[..], &["--redis-url", "redis://x"]].concat()
        ));
        assert!(refused(&[&both[..], &["--data-dir", "d"]].concat()));
    }
}

//! Shared helpers for the integration tests: spawn the real binaries, wait for
//! their lines, and talk WebSocket to the server. Every wait has a timeout.
#![allow(dead_code)] // Each test file uses its own subset.

pub mod durable;
pub mod instances;
pub mod tokens;

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Notify;
use tokio::time::timeout;

mod proxy;
mod pty;
mod redis;
mod ws;

#[allow(unused_imports)] // As with dead code: each test file uses its own subset.
pub use {
    proxy::Proxy,
    pty::{PtyClient, Screen},
    redis::{RedisServer, SENTINEL_MASTER, SentinelSet},
    ws::*,
};

/// The bound on every single wait in the tests.
pub const WAIT: Duration = Duration::from_secs(15);

/// What the server says first to every classic client.
pub const WELCOME: &str = "Welcome to chat! Type a message";

/// Lines a child process printed on one stream, collected as they come.
#[derive(Clone, Default)]
pub struct Lines {
    lines: Arc<Mutex<Vec<String>>>,
    /// When each line was read, in the same order.
    arrived: Arc<Mutex<Vec<Instant>>>,
    changed: Arc<Notify>,
    ended: Arc<std::sync::atomic::AtomicBool>,
}

impl Lines {
    pub fn follow(reader: impl AsyncRead + Unpin + Send + 'static) -> Self {
        let lines = Lines::default();
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(reader).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let mut lines = sink.lines.lock().expect("lines lock");
                sink.arrived
                    .lock()
                    .expect("arrivals lock")
                    .push(Instant::now());
                lines.push(line);
                drop(lines);
                sink.changed.notify_waiters();
            }
            sink.ended.store(true, std::sync::atomic::Ordering::SeqCst);
            sink.changed.notify_waiters();
        });
        lines
    }

    /// Everything printed so far.
    pub fn all(&self) -> Vec<String> {
        self.lines.lock().expect("lines lock").clone()
    }

    /// When the first line equal to `line` was read (a moment after it was printed).
    pub fn arrival(&self, line: &str) -> Instant {
        let lines = self.lines.lock().expect("lines lock");
        let at = lines
            .iter()
            .position(|l| l == line)
            .expect("a line printed");
        self.arrived.lock().expect("arrivals lock")[at]
    }

    /// Everything printed, once the stream has ended (the process closed it).
    pub async fn complete(&self) -> Vec<String> {
        let ended = timeout(WAIT, async {
            loop {
                let notified = self.changed.notified();
                if self.ended.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        })
        .await;
        ended.expect("output stream ended in time");
        self.all()
    }

    /// Waits until a line containing `needle` has been printed, and returns it. Only
    /// for a needle no other line can hold (a quoted text, a whole phrase): a word
    /// inside other words wants [`Lines::wait_for_line`] or a log event.
    pub async fn wait_for(&self, needle: &str) -> String {
        let found = timeout(WAIT, async {
            loop {
                let notified = self.changed.notified();
                if let Some(line) = self.all().into_iter().find(|l| l.contains(needle)) {
                    return line;
                }
                notified.await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "no line containing {needle:?} within {WAIT:?}; got {:#?}",
                self.all()
            )
        })
    }

    /// Waits until the line `line` itself (not one containing it) has been printed.
    pub async fn wait_for_line(&self, line: &str) {
        self.wait_until(&format!("the line {line:?}"), |lines| {
            lines.iter().any(|l| l == line)
        })
        .await;
    }

    /// Waits until `count` lines containing `needle` have been printed.
    pub async fn wait_for_count(&self, needle: &str, count: usize) {
        self.wait_until(&format!("{count} lines containing {needle:?}"), |lines| {
            lines.iter().filter(|l| l.contains(needle)).count() >= count
        })
        .await;
    }

    /// Waits until the server has logged the event `event` (the log line's message,
    /// exactly: `connected` does not match `disconnected`) `count` times; returns
    /// those lines.
    pub async fn wait_for_events(&self, event: &str, count: usize) -> Vec<String> {
        let matching = |lines: &[String]| -> Vec<String> {
            lines
                .iter()
                .filter(|l| log_event(l) == Some(event))
                .cloned()
                .collect()
        };
        self.wait_until(&format!("{count} {event:?} events"), |lines| {
            matching(lines).len() >= count
        })
        .await;
        matching(&self.all())
    }

    /// Waits for the first log line whose event is exactly `event`, and returns it.
    pub async fn wait_for_event(&self, event: &str) -> String {
        self.wait_for_events(event, 1).await.remove(0)
    }

    /// Waits for the first log line of event `event` whose fields have the values
    /// in `fields` (`("reason", "write timed out")`: the value itself, unquoted),
    /// and returns it.
    pub async fn wait_for_event_with(&self, event: &str, fields: &[(&str, &str)]) -> String {
        let matches = |line: &String| {
            log_event(line) == Some(event)
                && fields
                    .iter()
                    .all(|(key, value)| log_field(line, key).as_deref() == Some(*value))
        };
        self.wait_until(&format!("a {event:?} event with {fields:?}"), |lines| {
            lines.iter().any(matches)
        })
        .await;
        self.all().into_iter().find(matches).expect("found above")
    }

    /// Waits until `done` holds for the lines printed so far; `what` names it for
    /// the panic message.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&[String]) -> bool) {
        let found = timeout(WAIT, async {
            loop {
                let notified = self.changed.notified();
                if done(&self.all()) {
                    return;
                }
                notified.await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("waited {WAIT:?} for {what}; got {:#?}", self.all()));
    }
}

/// The event of a server log line: its message, e.g. `connected` in
/// `2026-... INFO broadcast_chat::session: connected addr=127.0.0.1:5 ...`.
pub fn log_event(line: &str) -> Option<&str> {
    // The timestamp, the level, then the target and ": ".
    let (_, rest) = line.split_once(' ')?;
    let (level, rest) = rest.trim_start().split_once(' ')?;
    if !matches!(level, "TRACE" | "DEBUG" | "INFO" | "WARN" | "ERROR") {
        return None;
    }
    let (_, message) = rest.split_once(": ")?;
    // The message runs up to the first `key=value` field.
    let end = message
        .match_indices(' ')
        .map(|(i, _)| i)
        .find(|&i| {
            message[i + 1..]
                .split(' ')
                .next()
                .is_some_and(|word| word.contains('='))
        })
        .unwrap_or(message.len());
    Some(&message[..end])
}

/// The value of field `key` in a server log line (`reason="closed by client"` gives
/// `closed by client`, `status=401` gives `401`), after the event's message.
pub fn log_field(line: &str, key: &str) -> Option<String> {
    let message = log_event(line)?;
    // `message` is a slice of `line`: the fields follow it.
    let end = message.as_ptr() as usize - line.as_ptr() as usize + message.len();
    let fields = &line[end..];
    let at = fields.find(&format!(" {key}="))? + key.len() + 2;
    let value = &fields[at..];
    match value.strip_prefix('"') {
        // A quoted string, with `\"` and `\\` escaped.
        Some(quoted) => {
            let mut out = String::new();
            let mut chars = quoted.chars();
            while let Some(c) = chars.next() {
                match c {
                    '"' => return Some(out),
                    '\\' => out.push(chars.next()?),
                    c => out.push(c),
                }
            }
            None
        }
        None => Some(value.split(' ').next().unwrap_or_default().to_owned()),
    }
}

/// A running `server` binary, killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    pub stderr: Lines,
}

impl Server {
    /// Starts the server on `--port 0` with `args` and waits for its readiness line.
    pub async fn start(args: &[&str]) -> Server {
        Self::start_with_env(args, &[]).await
    }

    /// Like [`Server::start`], with extra environment variables.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::spawn(0, args, env).await
    }

    /// Starts the server on `port` (e.g. one from [`free_port`], to restart a server
    /// at the same address) and waits for its readiness line.
    pub async fn start_at(port: u16, args: &[&str]) -> Server {
        Self::spawn(port, args, &[]).await
    }

    async fn spawn(port: u16, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = server_command()
            .args(["--port", &port.to_string()])
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the server binary");
        let stderr = Lines::follow(child.stderr.take().expect("piped stderr"));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let first = timeout(WAIT, stdout.next_line())
            .await
            .expect("server printed no readiness line in time")
            .expect("read server stdout")
            .expect("server exited before its readiness line");
        let port = first
            .strip_prefix("Listening on port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected readiness line {first:?}"));
        Server {
            child,
            port,
            stderr,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("server running")
    }

    pub fn child_ref(&self) -> &Child {
        &self.child
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        signal(&self.child, "TERM");
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        wait_exit(&mut self.child).await
    }

    /// Kills it with SIGKILL, as a crash would (nothing flushed or closed on the
    /// way out), and waits until it is gone, so that its port and its data
    /// directory's lock are free.
    pub async fn kill(mut self) {
        use std::os::unix::process::ExitStatusExt;
        // On Unix, `start_kill` sends SIGKILL.
        self.child.start_kill().expect("send SIGKILL");
        let status = self.wait().await;
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
    }
}

/// The `server` binary, with none of this environment's `CHAT_*` settings: a test
/// passes what it means, as flags or with [`Command::env`].
pub fn server_command() -> Command {
    without_chat_settings(env!("CARGO_BIN_EXE_server"))
}

/// The `client` binary, with none of this environment's `CHAT_*` settings.
pub fn client_command() -> Command {
    without_chat_settings(env!("CARGO_BIN_EXE_client"))
}

/// A command for `program` with every `CHAT_*` variable of this environment removed
/// (`CHAT_REDIS_URL`, `CHAT_THREADS`, `CHAT_NAME`, ... would change what is tested).
fn without_chat_settings(program: &str) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CHAT_") {
            command.env_remove(key);
        }
    }
    command
}

pub fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("child still running");
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

pub async fn wait_exit(child: &mut Child) -> ExitStatus {
    timeout(WAIT, child.wait())
        .await
        .expect("process did not exit in time")
        .expect("wait for process")
}

/// A running `client` binary with piped stdin, stdout and stderr.
pub struct Client {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl Client {
    pub fn start(args: &[&str]) -> Client {
        Self::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Client {
        let mut child = client_command()
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the client binary");
        let stdout = Lines::follow(child.stdout.take().expect("piped stdout"));
        let stderr = Lines::follow(child.stderr.take().expect("piped stderr"));
        let stdin = child.stdin.take();
        Client {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    /// Waits until the client has printed the server's welcome.
    pub async fn welcomed(&self) {
        self.stdout
            .wait_for_line(&format!("From server: {WELCOME}"))
            .await;
    }

    pub async fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write client stdin");
        stdin.flush().await.expect("flush client stdin");
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub async fn wait(&mut self) -> ExitStatus {
        wait_exit(&mut self.child).await
    }
}

/// A port that nothing listens on, for a server that must come back at the same
/// address. It lies below the kernel's ephemeral range, which every `--port 0`
/// server and every outgoing connection of the parallel tests draw from, so none of
/// them can take it between this check and the server's bind; two tests picking the
/// same one is left to chance (1 in several thousand), and the bind check.
pub fn free_port() -> u16 {
    let (low, _) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| {
            let mut ends = range.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((ends.next()??, ends.next()??))
        })
        .unwrap_or((32768, 60999));
    let floor = 10_000.min(low / 2);
    for _ in 0..100 {
        let port = fastrand_port(floor, low);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {floor} and {low}");
}

/// A random port in `low..high`, from the standard library's randomly seeded hasher.
fn fastrand_port(low: u16, high: u16) -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let span = u64::from(high - low);
    low + (RandomState::new().hash_one(Instant::now()) % span) as u16
}

/// Sends a WebSocket upgrade request with `extra_headers` (each ending in `\r\n`)
/// over plain TCP and returns the status line of the answer.
pub async fn upgrade_status(addr: SocketAddr, path: &str, extra_headers: &str) -> String {
    let head = upgrade_head(addr, path, extra_headers).await;
    head.lines().next().unwrap_or_default().to_owned()
}

/// Sends a WebSocket upgrade request with `extra_headers` (each ending in `\r\n`)
/// over plain TCP and returns the head of the answer, up to the blank line.
pub async fn upgrade_head(addr: SocketAddr, path: &str, extra_headers: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut tcp = timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    tcp.write_all(upgrade_request(path, extra_headers).as_bytes())
        .await
        .expect("write request");
    let mut head = Vec::new();
    timeout(WAIT, async {
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.expect("read answer"));
        }
    })
    .await
    .expect("answer in time");
    String::from_utf8_lossy(&head).into_owned()
}

/// A WebSocket upgrade request for `target` with `extra_headers` (each ending in `\r\n`).
pub fn upgrade_request(target: &str, extra_headers: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra_headers}\r\n"
    )
}

/// Sends `request` over plain TCP and returns the whole answer, up to the
/// server's close.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::AsyncReadExt;
    let mut tcp = timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    tcp.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    timeout(WAIT, tcp.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .expect("read answer");
    String::from_utf8_lossy(&answer).into_owned()
}

/// The server's open connections, from its health check.
pub async fn open_connections(addr: SocketAddr) -> usize {
    let health = health(addr).await;
    health["connections"]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or_else(|| panic!("unexpected health answer {health}"))
}

/// The server's answer to `GET /healthz`, parsed.
pub async fn health(addr: SocketAddr) -> serde_json::Value {
    let answer = raw_exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    let (_, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body in {answer:?}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

/// The server process's resident memory, in kB.
pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

//! Shared helpers for the integration tests: spawn the real binaries, wait for
//! their lines, and talk WebSocket to the server. Every wait has a timeout.
#![allow(dead_code)] // Each test file uses its own subset.

pub mod tokens;

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Notify, mpsc};
use tokio::time::timeout;
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

/// The bound on every single wait in the tests.
pub const WAIT: Duration = Duration::from_secs(15);

pub type Ws = WebSocketStream<TcpStream>;

/// Lines a child process printed on one stream, collected as they come.
#[derive(Clone, Default)]
pub struct Lines {
    lines: Arc<Mutex<Vec<String>>>,
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
                sink.lines.lock().expect("lines lock").push(line);
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

    /// Waits until a line containing `needle` has been printed, and returns it.
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

    /// Waits until `done` holds for the lines printed so far; `what` names it for
    /// the panic message.
    async fn wait_until(&self, what: &str, done: impl Fn(&[String]) -> bool) {
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
        let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
            .args(["--port", &port.to_string()])
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("CHAT_HOST")
            .env_remove("CHAT_PORT")
            .env_remove("CHAT_TOKEN")
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
        let mut child = Command::new(env!("CARGO_BIN_EXE_client"))
            .args(args)
            .env_remove("CHAT_URL")
            .env_remove("CHAT_TOKEN")
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

/// Opens a WebSocket to `url` and returns it after reading the welcome message.
pub async fn connect(url: &str) -> Ws {
    let mut ws = connect_raw(url).await;
    assert_eq!(recv_text(&mut ws).await, "Welcome to chat! Type a message");
    ws
}

/// Opens a WebSocket to `url` without reading anything.
pub async fn connect_raw(url: &str) -> Ws {
    let uri: http::Uri = url.parse().expect("valid url");
    let addr = format!(
        "{}:{}",
        uri.host().expect("host"),
        uri.port_u16().expect("port")
    );
    timeout(WAIT, async {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        ClientBuilder::from_uri(uri)
            .connect_on(stream)
            .await
            .expect("upgrade")
            .0
    })
    .await
    .expect("connect in time")
}

/// The address the server sees for this client.
pub fn local_addr(ws: &Ws) -> SocketAddr {
    ws.get_ref().local_addr().expect("local address")
}

/// The line the server broadcasts when `ws` sends `text`.
pub fn tagged(ws: &Ws, text: &str) -> String {
    format!("{:?}: {text:?}", local_addr(ws))
}

pub async fn send(ws: &mut Ws, text: &str) {
    timeout(WAIT, ws.send(Message::text(text.to_owned())))
        .await
        .expect("send in time")
        .expect("send");
}

/// The next text message, skipping pings and pongs. Panics on close or timeout.
pub async fn recv_text(ws: &mut Ws) -> String {
    loop {
        let message = timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("connection open")
            .expect("no error");
        if let Some(text) = message.as_text() {
            return text.to_owned();
        }
        assert!(
            !message.is_close(),
            "unexpected close: {:?}",
            message.as_close()
        );
    }
}

/// Reads until the server's close frame and returns its code and reason, skipping
/// any text still in flight.
pub async fn recv_close(ws: &mut Ws) -> (u16, String) {
    loop {
        let message = timeout(WAIT, ws.next())
            .await
            .expect("a close frame in time")
            .expect("connection open until the close frame")
            .expect("no error before the close frame");
        if let Some((code, reason)) = message.as_close() {
            return (u16::from(code), reason.to_owned());
        }
    }
}

/// Closes `ws` properly and waits for the server's answer.
pub async fn close_and_read_to_end(mut ws: Ws) {
    let _ = ws.send(Message::close(None, "")).await;
    read_to_end(&mut ws).await;
}

/// Reads until the connection ends in any way; returns what text arrived first.
pub async fn read_to_end(ws: &mut Ws) -> Vec<String> {
    let mut texts = Vec::new();
    timeout(WAIT, async {
        while let Some(Ok(message)) = ws.next().await {
            if let Some(text) = message.as_text() {
                texts.push(text.to_owned());
            }
        }
    })
    .await
    .expect("connection ended in time");
    texts
}

/// A channel of every text message `ws` receives, read by a task of its own so
/// the socket is always drained (and pings answered).
pub fn reader(mut ws: Ws) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            if let Some(text) = message.as_text()
                && tx.send(text.to_owned()).is_err()
            {
                break;
            }
        }
    });
    rx
}

/// Puts a numbered line ("0", "1", ...) into `talk` every millisecond, until its
/// receiver is gone: steady traffic for the tests of a seam.
pub fn count_aloud(talk: mpsc::UnboundedSender<String>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for i in 0u32.. {
            tick.tick().await;
            if talk.send(format!("{i}")).is_err() {
                break;
            }
        }
    })
}

/// Like [`reader`], and also sends every text put into the returned sender: a
/// client that is always polled, so it answers pings.
pub fn chatter(
    mut ws: Ws,
) -> (
    mpsc::UnboundedSender<String>,
    mpsc::UnboundedReceiver<String>,
) {
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                outgoing = out_rx.recv() => match outgoing {
                    Some(text) => {
                        if ws.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                incoming = ws.next() => match incoming {
                    Some(Ok(message)) => {
                        if let Some(text) = message.as_text()
                            && in_tx.send(text.to_owned()).is_err()
                        {
                            break;
                        }
                    }
                    _ => break,
                },
            }
        }
    });
    (out_tx, in_rx)
}

/// The next message from a [`reader`] channel, under the test timeout.
pub async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    timeout(WAIT, rx.recv())
        .await
        .expect("a message in time")
        .expect("reader still running")
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
    low + (RandomState::new().hash_one(std::time::Instant::now()) % span) as u16
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
    use tokio::io::AsyncReadExt;
    let mut tcp = timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    timeout(WAIT, tcp.read_to_string(&mut answer))
        .await
        .expect("answer in time")
        .expect("read");
    let body = answer.split("\r\n\r\n").nth(1).expect("a body");
    body.split("\"connections\":")
        .nth(1)
        .and_then(|rest| rest.trim_end_matches(['}', '\n']).parse().ok())
        .unwrap_or_else(|| panic!("unexpected health answer {answer:?}"))
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

/// A `client` binary running in a pseudo-terminal, as a person would run it: its
/// stdin and stdout are the terminal, its stderr is piped. Killed when dropped.
pub struct PtyClient {
    pub child: Child,
    /// The terminal's master side: keys are written to it.
    master: std::fs::File,
    /// Everything the client drew on the terminal, escape codes included.
    pub screen: Screen,
    pub stderr: Lines,
}

impl PtyClient {
    /// Starts the client with `args` and `env` in a 24×120 terminal.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> PtyClient {
        use rustix::fs::{Mode, OFlags};
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};

        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
            .expect("open a pseudo-terminal");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let size = rustix::termios::Winsize {
            ws_row: 24,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&master, size).expect("set the terminal size");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let slave = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open the terminal's slave side");
        let slave = std::fs::File::from(slave);

        let mut command = Command::new(env!("CARGO_BIN_EXE_client"));
        command
            .args(args)
            .env_remove("CHAT_URL")
            .env_remove("CHAT_TOKEN")
            .env_remove("CHAT_NAME")
            .env_remove("NO_COLOR")
            .env("TERM", "xterm")
            .envs(env.iter().copied())
            .stdin(slave.try_clone().expect("dup the slave"))
            .stdout(slave)
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe system calls run between fork and exec. A
        // session of its own with this terminal as its controlling terminal, so that
        // the client's `/dev/tty` is this pseudo-terminal, never the one running the tests.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                rustix::process::setsid()?;
                let stdin = std::os::fd::BorrowedFd::borrow_raw(0);
                rustix::process::ioctl_tiocsctty(stdin)?;
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawn the client binary");
        drop(command); // Closes our copies of the slave side, so reads end when the client does.
        let stderr = Lines::follow(child.stderr.take().expect("piped stderr"));
        let master = std::fs::File::from(master);
        let screen = Screen::follow(master.try_clone().expect("dup the master"));
        PtyClient {
            child,
            master,
            screen,
            stderr,
        }
    }

    /// Types `keys` (`\r` is Enter) on the terminal.
    pub fn type_keys(&mut self, keys: &str) {
        use std::io::Write;
        self.master
            .write_all(keys.as_bytes())
            .expect("type on the terminal");
        self.master.flush().expect("flush the terminal");
    }

    /// Whether the terminal is in its normal (canonical, echoing) mode.
    pub fn terminal_is_cooked(&self) -> bool {
        use rustix::termios::LocalModes;
        let termios = rustix::termios::tcgetattr(&self.master).expect("tcgetattr");
        termios
            .local_modes
            .contains(LocalModes::ICANON | LocalModes::ECHO)
    }

    pub async fn wait(&mut self) -> ExitStatus {
        wait_exit(&mut self.child).await
    }
}

/// The bytes a program wrote to a terminal, collected as they come.
#[derive(Clone, Default)]
pub struct Screen {
    bytes: Arc<Mutex<Vec<u8>>>,
    changed: Arc<Notify>,
}

impl Screen {
    fn follow(mut master: std::fs::File) -> Screen {
        use std::io::Read;
        let screen = Screen::default();
        let sink = screen.clone();
        // A blocking thread: reading a pty master ends with EIO once the client exits.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = master.read(&mut buf) {
                sink.bytes
                    .lock()
                    .expect("screen lock")
                    .extend_from_slice(&buf[..n]);
                sink.changed.notify_waiters();
            }
        });
        screen
    }

    /// Everything drawn so far, as text (escape codes included).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().expect("screen lock")).into_owned()
    }

    /// Waits until `needle` has been drawn at or after byte `from`; returns the
    /// position just after it.
    pub async fn wait_for_after(&self, from: usize, needle: &str) -> usize {
        let found = timeout(WAIT, async {
            loop {
                let notified = self.changed.notified();
                let text = self.text();
                if let Some(at) = text.get(from..).and_then(|rest| rest.find(needle)) {
                    return from + at + needle.len();
                }
                notified.await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "{needle:?} not drawn after byte {from} within {WAIT:?}; screen: {:?}",
                self.text().get(from..).unwrap_or_default()
            )
        })
    }

    /// Waits until `needle` has been drawn; returns the position just after it.
    pub async fn wait_for(&self, needle: &str) -> usize {
        self.wait_for_after(0, needle).await
    }
}

/// A TCP proxy in front of a server that the test can cut, to play a flaky network:
/// [`Proxy::sever`] closes every connection through it, [`Proxy::set_down`] makes
/// it close new ones at once, and [`Proxy::hold_downstream`] stops passing on what
/// the server sends (it stays with the proxy until released, or lost in a cut).
pub struct Proxy {
    pub port: u16,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    /// Where new connections go.
    target: Mutex<SocketAddr>,
    /// Bumped by every cut; each connection ends when it changes.
    cuts: tokio::sync::watch::Sender<u64>,
    /// Whether server-to-client traffic is held back.
    hold: tokio::sync::watch::Sender<bool>,
    down: std::sync::atomic::AtomicBool,
}

impl Proxy {
    /// A proxy on a free port that forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(ProxyState {
            target: Mutex::new(target),
            cuts: tokio::sync::watch::channel(0).0,
            hold: tokio::sync::watch::channel(false).0,
            down: std::sync::atomic::AtomicBool::new(false),
        });
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if shared.down.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let target = *shared.target.lock().expect("target lock");
                tokio::spawn(Self::forward(client, target, Arc::clone(&shared)));
            }
        });
        Proxy { port, state, task }
    }

    async fn forward(client: TcpStream, target: SocketAddr, state: Arc<ProxyState>) {
        use tokio::io::AsyncReadExt;
        let mut cuts = state.cuts.subscribe();
        let Ok(server) = TcpStream::connect(target).await else {
            return;
        };
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let upstream = tokio::io::copy(&mut client_read, &mut server_write);
        let mut hold = state.hold.subscribe();
        let downstream = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match server_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                // Held: keep what was read until released (or the cut ends it all).
                if hold.wait_for(|held| !*held).await.is_err() {
                    return;
                }
                if client_write.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        // A cut comes first: what was held when it came is lost, as in a real cut.
        tokio::select! {
            biased;
            _ = cuts.changed() => {}
            _ = upstream => {}
            () = downstream => {}
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Closes every connection through the proxy, as a network that drops.
    pub fn sever(&self) {
        self.state.cuts.send_modify(|n| *n += 1);
    }

    /// Sends new connections to `target` from now on, as a load balancer whose
    /// first server went away.
    pub fn retarget(&self, target: SocketAddr) {
        *self.state.target.lock().expect("target lock") = target;
    }

    /// While down, new connections are closed as soon as they arrive.
    pub fn set_down(&self, down: bool) {
        self.state
            .down
            .store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// Holds back (or releases) what the servers send through the proxy.
    pub fn hold_downstream(&self, hold: bool) {
        self.state.hold.send_replace(hold);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.sever();
    }
}

/// A WebSocket to `url` that speaks the structured protocol; returns it with its
/// welcome frame, parsed.
pub async fn connect_structured(url: &str) -> (Ws, serde_json::Value) {
    let uri: http::Uri = url.parse().expect("valid url");
    let addr = format!(
        "{}:{}",
        uri.host().expect("host"),
        uri.port_u16().expect("port")
    );
    let (mut ws, response) = timeout(WAIT, async {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        ClientBuilder::from_uri(uri)
            .add_header(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static("broadcast-chat.v1"),
            )
            .expect("header")
            .connect_on(stream)
            .await
            .expect("upgrade")
    })
    .await
    .expect("connect in time");
    assert_eq!(
        response
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .map(|v| v.as_bytes()),
        Some(&b"broadcast-chat.v1"[..]),
        "the server chose the structured protocol"
    );
    let welcome = recv_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// The next text frame, parsed as JSON.
pub async fn recv_json(ws: &mut Ws) -> serde_json::Value {
    let text = recv_text(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A `redis-server` of the test's own, on a free port, without persistence; killed
/// when dropped. `None` (after saying so) when `redis-server` is not installed.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// Starts one, or says plainly why the calling test is skipped.
    pub async fn start(test: &str) -> Option<RedisServer> {
        if std::process::Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!(
                "skipping {test}: redis-server not found on PATH (apt-get install redis-server)"
            );
            return None;
        }
        Some(Self::start_at(free_port()).await)
    }

    /// Starts one on `port` (e.g. the port of one that was killed).
    pub async fn start_at(port: u16) -> RedisServer {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        let stdout = Lines::follow(child.stdout.take().expect("piped stdout"));
        stdout.wait_for("Ready to accept connections").await;
        RedisServer { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it at once, as a crash would, and waits until it is gone.
    pub async fn kill(mut self) {
        signal(&self.child, "KILL");
        wait_exit(&mut self.child).await;
    }
}

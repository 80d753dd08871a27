//! The Redis that instances of our server share in a two-instance run: found on PATH, started
//! on a free port without persistence, waited for, its CPU read, killed at the end.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::server;

/// The program started, looked up on PATH.
pub const PROGRAM: &str = "redis-server";
/// How long Redis may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// What Redis prints when it is.
const READY_LINE: &str = "Ready to accept connections";
/// Ports tried: another process may take a free port between our look and Redis's bind.
const PORT_ATTEMPTS: usize = 3;

/// Whether `redis-server` can be run: `Err` says plainly why not.
pub fn available() -> Result<(), String> {
    match Command::new(PROGRAM).arg("--version").output() {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!("`{PROGRAM} --version` failed ({})", output.status)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "{PROGRAM} not found on PATH (apt-get install redis-server)"
        )),
        Err(e) => Err(format!("cannot run {PROGRAM}: {e}")),
    }
}

/// The flags Redis is started with besides its port: loopback only, no persistence.
pub const FLAGS: [&str; 6] = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];

/// A running `redis-server`, killed when dropped.
pub struct RedisProcess {
    child: Child,
    pub port: u16,
}

impl RedisProcess {
    /// Starts one on a free port and waits until it accepts connections.
    pub fn spawn() -> Result<Self, String> {
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port()?;
            match Self::spawn_at(port) {
                Ok(redis) => return Ok(redis),
                // Taken since we looked: try another; anything else will not get better.
                Err(error) if error.contains("in use") => last_error = error,
                Err(error) => return Err(error),
            }
        }
        Err(last_error)
    }

    fn spawn_at(port: u16) -> Result<Self, String> {
        let mut child = Command::new(PROGRAM)
            .args(["--port", &port.to_string()])
            .args(FLAGS)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {PROGRAM}: {e}"))?;
        // The reader thread keeps draining Redis's log after the readiness line, so that it
        // never blocks on a full pipe; the lines before it explain a failure.
        let stdout = child.stdout.take().expect("stdout was piped");
        let (line_tx, line_rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = line_tx.send(line);
            }
        });
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = Vec::new();
        let why = loop {
            match line_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(READY_LINE) => return Ok(Self { child, port }),
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    break format!("no {READY_LINE:?} within {READY_TIMEOUT:?}");
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                    break format!("exited ({status})");
                }
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        let last = seen.iter().rev().take(2).rev().cloned().collect::<Vec<_>>();
        Err(format!(
            "{PROGRAM} on port {port}: {why}; its last lines: {}",
            last.join(" | ")
        ))
    }

    /// The URL our server's `--redis-url` takes.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Nanoseconds on CPU so far, every thread: [`server::cpu_ns`].
    pub fn cpu_ns(&self) -> Option<u64> {
        server::cpu_ns(self.child.id())
    }

    /// Whether the process has exited, with its status.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on now: the one the kernel picks for a listener we drop.
fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| format!("cannot find a free port for {PROGRAM}: {e}"))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|e| format!("cannot find a free port for {PROGRAM}: {e}"))
}

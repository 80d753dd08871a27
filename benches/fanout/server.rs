//! The server under test as a child process: spawn, readiness line, CPU, writes and memory
//! from /proc, its /metrics, SIGKILL; and building the example servers it is compared with.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stats;

/// How long the server may take to print its readiness line.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one plain HTTP request to the server (its /metrics).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// How many of the server's stderr lines are kept to show in the report.
const KEPT_LOG_LINES: usize = 3;

/// A server to start for every run: a binary, its flags and environment.
#[derive(Clone, Debug)]
pub struct ServerSpec {
    /// `ours`, a variant's label, or the other server's name.
    pub label: String,
    pub path: PathBuf,
    /// Its flags, `--port 0` among them.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl ServerSpec {
    /// The command line as a shell would take it (no quoting: nothing here needs it).
    pub fn command(&self) -> String {
        let env = self.env.iter().map(|(key, value)| format!("{key}={value}"));
        let path = self.path.display().to_string();
        env.chain([path])
            .chain(self.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A running server process, killed when dropped.
pub struct ServerProcess {
    child: Child,
    /// The port from the readiness line.
    pub port: u16,
    /// Stderr lines seen so far and the first few of them; written by a reader thread.
    log: Arc<Mutex<(u64, Vec<String>)>>,
}

impl ServerProcess {
    /// Starts `spec` with `RUST_LOG=warn` and waits for `Listening on port N`. The
    /// server gets none of this environment's `CHAT_*` settings (a `CHAT_TOKEN` or
    /// `CHAT_REDIS_URL` meant for a real server would change what is measured): only
    /// its flags and `spec`'s own variables.
    pub fn spawn(spec: &ServerSpec) -> Result<Self, String> {
        let path = &spec.path;
        let mut command = Command::new(path);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CHAT_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .args(&spec.args)
            .env("RUST_LOG", "warn")
            .envs(spec.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start server {}: {e}", path.display()))?;

        let log = Arc::new(Mutex::new((0, Vec::new())));
        let stderr = child.stderr.take().expect("stderr was piped");
        let log_writer = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // std Mutex: only the report reads it, never across an .await.
                let mut log = log_writer.lock().expect("log mutex poisoned");
                log.0 += 1;
                if log.1.len() < KEPT_LOG_LINES {
                    log.1.push(line);
                }
            }
        });

        // The reader thread keeps draining stdout after the first line so the server never
        // blocks on a full pipe.
        let stdout = child.stdout.take().expect("stdout was piped");
        let (line_tx, line_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next();
            let _ = line_tx.send(first);
            for _ in lines {}
        });
        let first = match line_rx.recv_timeout(READY_TIMEOUT) {
            Ok(Some(Ok(line))) => line,
            Ok(_) => {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                let log = log.lock().expect("log mutex poisoned").1.join(" | ");
                return Err(format!(
                    "server exited before its readiness line ({status}); stderr: {log}"
                ));
            }
            Err(_) => {
                let _ = child.kill();
                return Err(format!(
                    "server printed no readiness line within {READY_TIMEOUT:?}"
                ));
            }
        };
        let port = first
            .strip_prefix("Listening on port ")
            .and_then(|port| port.trim().parse().ok())
            .ok_or_else(|| format!("unexpected readiness line from server: {first:?}"))?;
        Ok(Self { child, port, log })
    }

    /// Nanoseconds on CPU so far, summed over the process's threads: [`cpu_ns`].
    pub fn cpu_ns(&self) -> Option<u64> {
        cpu_ns(self.child.id())
    }

    /// Write syscalls so far (`syscw` in `/proc/PID/io`).
    pub fn writes(&self) -> Option<u64> {
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.child.id())).ok()?;
        stats::proc_io_field(&io, "syscw")
    }

    /// User plus system CPU time so far, in clock ticks (`/proc/PID/stat`, every thread, those
    /// that exited included): the coarse cross-check of [`Self::cpu_ns`].
    pub fn cpu_ticks(&self) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
        let utime: u64 = fields.next()?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some(utime + stime)
    }

    /// Current resident set size in kB (`VmRSS`).
    pub fn rss_kb(&self) -> Option<u64> {
        self.status_kb("VmRSS:")
    }

    /// Peak resident set size in kB (`VmHWM`).
    pub fn peak_rss_kb(&self) -> Option<u64> {
        self.status_kb("VmHWM:")
    }

    fn status_kb(&self, key: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|line| line.starts_with(key))?;
        line[key.len()..].split_whitespace().next()?.parse().ok()
    }

    /// Whether the process has exited, with its status.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// How many lines the server wrote to stderr, and the first few.
    pub fn log(&self) -> (u64, Vec<String>) {
        self.log.lock().expect("log mutex poisoned").clone()
    }

    /// Sends the process SIGKILL (what `Child::kill` sends on Unix: no handler runs, nothing is
    /// flushed or closed by the server) and waits until it is gone.
    pub fn sigkill(&mut self) -> Result<(), String> {
        self.child
            .kill()
            .map_err(|e| format!("cannot kill the server: {e}"))?;
        self.child
            .wait()
            .map(drop)
            .map_err(|e| format!("cannot reap the server: {e}"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Nanoseconds process `pid` has been on CPU so far, summed over its threads (the first field of
/// each `/proc/PID/task/TID/schedstat`). A thread that exits takes its time with it; the servers'
/// threads live as long as they do.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks.flatten() {
        // A thread that exited since the listing has no file left to read.
        if let Ok(schedstat) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += stats::schedstat_ns(&schedstat)?;
        }
    }
    Some(total)
}

/// The body of `GET path` from the server at `addr` (plain HTTP/1.1, one request, the server
/// closes the connection after it); `Err` unless the status is 200.
pub async fn scrape(addr: SocketAddr, path: &str) -> Result<String, String> {
    let request = async {
        let mut tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        tcp.write_all(head.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| "no end of the headers".to_owned())?;
        let status = head.lines().next().unwrap_or_default();
        if status.split(' ').nth(1) != Some("200") {
            return Err(format!("{status:?}"));
        }
        Ok(body.to_owned())
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {SCRAPE_TIMEOUT:?}")))
        .map_err(|e| format!("GET {path} from {addr}: {e}"))
}

/// Clock ticks per second for /proc CPU times (`getconf CLK_TCK`, 100 if that fails).
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}

/// The soft limit on open files of this process, from /proc/self/limits.
pub fn open_files_soft_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    match line["Max open files".len()..].split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        soft => soft.parse().ok(),
    }
}

/// The kernel's count of connection attempts dropped because a listen queue was full
/// (`TcpExt ListenOverflows` in /proc/net/netstat; system-wide).
pub fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut tcp_ext = netstat.lines().filter(|line| line.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next()?, tcp_ext.next()?);
    let index = names
        .split_whitespace()
        .position(|name| name == "ListenOverflows")?;
    values.split_whitespace().nth(index)?.parse().ok()
}

/// Builds this crate's examples `names` with the profile the benchmark was built with, and
/// returns the directory they are in (`target/PROFILE/examples`, beside the benchmark's own
/// `deps` directory). Cargo does nothing if they are up to date.
pub fn build_examples(names: &[&str]) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the benchmark: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected benchmark path {}", exe.display()))?;
    // `cargo bench` builds with the bench profile, whose directory is `release`.
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some("release") => "bench",
        Some(other) => other,
        None => "bench",
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .args(["build", "--quiet", "--profile", profile])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for name in names {
        command.args(["--example", name]);
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !status.success() {
        return Err(format!(
            "building the examples {} failed ({status})",
            names.join(", ")
        ));
    }
    Ok(profile_dir.join("examples"))
}

//! A `redis-server` of the test's own.

use std::process::Stdio;

use tokio::process::{Child, Command};

use super::{Lines, free_port, signal, wait_exit};

/// A `redis-server` of the test's own, on a free port, without persistence; killed
/// when dropped. A test that uses one is ignored where `redis-server` is not on
/// `PATH`: `#[cfg_attr(not(has_redis), ignore = "needs redis-server ...")]`.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// Starts one on a free port.
    pub async fn start() -> RedisServer {
        Self::start_with(&[]).await
    }

    /// Starts one on a free port with extra `redis-server` arguments (e.g.
    /// `--requirepass`).
    pub async fn start_with(args: &[&str]) -> RedisServer {
        Self::start_at_with(free_port(), args).await
    }

    /// Starts one on `port` (e.g. the port of one that was killed).
    pub async fn start_at(port: u16) -> RedisServer {
        Self::start_at_with(port, &[]).await
    }

    /// Starts one on `port` with extra `redis-server` arguments.
    pub async fn start_at_with(port: u16, args: &[&str]) -> RedisServer {
        let (server, stdout) = Self::spawn(port, args);
        stdout.wait_for("Ready to accept connections").await;
        server
    }

    /// Starts one on `port` with extra arguments, without waiting; returns it with
    /// its log, to wait on.
    pub fn spawn(port: u16, args: &[&str]) -> (RedisServer, Lines) {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        let stdout = Lines::follow(child.stdout.take().expect("piped stdout"));
        (RedisServer { child, port }, stdout)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops it (`SIGSTOP`): its connections stay open but nothing is answered, as
    /// with a Redis that hangs or a network that drops packets.
    pub fn stop(&self) {
        signal(&self.child, "STOP");
    }

    /// Lets a stopped one go on (`SIGCONT`): it answers what waited meanwhile.
    pub fn resume(&self) {
        signal(&self.child, "CONT");
    }

    /// Kills it at once, as a crash would, and waits until it is gone.
    pub async fn kill(mut self) {
        signal(&self.child, "KILL");
        wait_exit(&mut self.child).await;
    }
}

/// The name the test's Sentinel monitors its primary under.
pub const SENTINEL_MASTER: &str = "mymaster";

/// A primary, its replica and one `redis-sentinel` watching them, on free ports,
/// the Sentinel's configuration (which it rewrites) in a temporary directory; all
/// killed when dropped. The Sentinel takes the primary for down after 1 s without
/// an answer and, being the only one (quorum 1), promotes the replica at once. A
/// test that uses it is ignored where `redis-server` or `redis-sentinel` is not
/// on `PATH`.
pub struct SentinelSet {
    pub primary: RedisServer,
    pub replica: RedisServer,
    /// Kept for its `kill_on_drop`.
    _sentinel: Child,
    /// The Sentinel's log (`+sdown`, `+switch-master`, ...).
    pub sentinel_log: Lines,
    pub sentinel_port: u16,
    _dir: tempfile::TempDir,
}

impl SentinelSet {
    /// Starts the primary, the replica (once it has copied the primary), then the
    /// Sentinel (once it knows the replica, so that it can promote it).
    pub async fn start() -> SentinelSet {
        let dir = tempfile::TempDir::new().expect("a temporary directory");
        let primary = RedisServer::start().await;
        let replica_port = free_port();
        let primary_port = primary.port.to_string();
        // The replica keeps the copy it is sent on disk: in the temporary directory.
        let replica_dir = dir.path().to_str().expect("a UTF-8 path");
        let (replica, replica_log) = RedisServer::spawn(
            replica_port,
            &[
                "--replicaof",
                "127.0.0.1",
                &primary_port,
                "--dir",
                replica_dir,
            ],
        );
        replica_log
            .wait_for("MASTER <-> REPLICA sync: Finished with success")
            .await;
        let sentinel_port = free_port();
        let conf = dir.path().join("sentinel.conf");
        let text = format!(
            "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {} 1\n\
             sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
             sentinel failover-timeout {SENTINEL_MASTER} 5000\n",
            dir.path().display(),
            primary.port
        );
        std::fs::write(&conf, text).expect("write sentinel.conf");
        let mut sentinel = Command::new("redis-sentinel")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-sentinel");
        let sentinel_log = Lines::follow(sentinel.stdout.take().expect("piped stdout"));
        sentinel_log
            .wait_for(&format!("+slave slave 127.0.0.1:{replica_port} "))
            .await;
        SentinelSet {
            primary,
            replica,
            _sentinel: sentinel,
            sentinel_log,
            sentinel_port,
            _dir: dir,
        }
    }

    /// The server's flags for following the primary through this Sentinel.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--redis-sentinel".to_owned(),
            format!("127.0.0.1:{}", self.sentinel_port),
            "--redis-master".to_owned(),
            SENTINEL_MASTER.to_owned(),
        ]
    }
}

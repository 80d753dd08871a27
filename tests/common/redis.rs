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
        stdout.wait_for("Ready to accept connections").await;
        RedisServer { child, port }
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

//! The `server` binary's own promises: Ctrl-C and SIGTERM alike end it with 0, a
//! usage error with 2, `--threads` sets the worker threads, `--host` the one
//! address it listens on.

mod common;

use common::*;
use tokio::time::timeout;

#[tokio::test]
async fn ctrl_c_closes_clients_with_1001_and_exits_zero() {
    let mut server = Server::start(&[]).await;
    let mut ws = connect(&server.url()).await;
    server.stderr.wait_for_event("connected").await;
    signal(server.child_ref(), "INT");
    assert_eq!(
        recv_close(&mut ws).await,
        (1001, "server shutting down".to_owned())
    );
    read_to_end(&mut ws).await;
    assert_eq!(server.wait().await.code(), Some(0));
}

#[tokio::test]
async fn a_usage_error_is_one_message_and_exit_2() {
    for args in [
        &["--port", "notaport"][..],
        &["--no-such-flag"],
        &["--max-rate", "-1"],
        &["--tls-cert", "cert.pem"],
        &["--redis-replicas", "1"],
    ] {
        let output = timeout(
            WAIT,
            tokio::process::Command::new(env!("CARGO_BIN_EXE_server"))
                .args(args)
                .env_remove("CHAT_PORT")
                .output(),
        )
        .await
        .expect("exit in time")
        .expect("run server");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty(), "no readiness line for {args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(
            stderr.contains("For more information, try '--help'."),
            "{args:?}: {stderr}"
        );
    }
}

/// The server's tokio worker threads, by their name in `/proc`.
fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("read /proc/PID/task")
        .filter(|task| {
            let comm = task.as_ref().expect("a task").path().join("comm");
            std::fs::read_to_string(comm).is_ok_and(|name| name.trim_end() == "tokio-rt-worker")
        })
        .count()
}

#[tokio::test]
async fn threads_sets_the_worker_threads() {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    // Another count than the default, from the environment.
    let other = (cores + 1).to_string();
    for (args, env, expected) in [
        (&["--threads", "1"][..], None, 1),
        (&["--threads", "3"], None, 3),
        (&[], Some(other.as_str()), cores + 1),
        (&[], None, cores),
    ] {
        let env: Vec<(&str, &str)> = env.map(|n| ("CHAT_THREADS", n)).into_iter().collect();
        let server = Server::start_with_env(args, &env).await;
        // Serving: a round trip through it.
        let mut ws = connect(&server.url()).await;
        send(&mut ws, "hi").await;
        assert_eq!(recv_text(&mut ws).await, tagged(&ws, "hi"));
        // A thread takes its name once it runs, which on a loaded machine can come
        // after the round trip: wait for the count, and never see more.
        let pid = server.pid();
        let counted = timeout(WAIT, async {
            loop {
                let now = worker_threads(pid);
                if now >= expected {
                    return now;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{args:?} with {env:?}: {} workers", worker_threads(pid)));
        assert_eq!(counted, expected, "{args:?} with {env:?}");
    }
}

#[tokio::test]
async fn host_is_the_only_address_it_listens_on() {
    for (host, elsewhere) in [("127.0.0.2", "127.0.0.1"), ("::1", "127.0.0.1")] {
        let server = Server::start(&["--host", host]).await;
        let url = match host.contains(':') {
            true => format!("ws://[{host}]:{}", server.port),
            false => format!("ws://{host}:{}", server.port),
        };
        let mut ws = connect(&url).await;
        send(&mut ws, "hi").await;
        assert_eq!(recv_text(&mut ws).await, tagged(&ws, "hi"));
        let refused = timeout(
            WAIT,
            tokio::net::TcpStream::connect((elsewhere, server.port)),
        )
        .await
        .expect("an answer in time");
        assert_eq!(
            refused.map(drop).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionRefused),
            "{elsewhere} with --host {host}"
        );
    }
}

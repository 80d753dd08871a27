//! `--redis-replicas`: a line acknowledged only once a replica has it too (Redis's
//! `WAIT`), against a real primary and replica: acknowledged at its offset while
//! the replica is in step; held, unacknowledged, with the members told, while the
//! replica is stopped (`SIGSTOP`); acknowledged once, at its offset, delivered
//! once, when it goes on. Ignored, saying so in the summary, where `redis-server`
//! is not on `PATH`.

mod common;

use std::time::Instant;

use common::instances::*;
use common::*;
use serde_json::{Value, json};

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn a_line_is_acknowledged_only_once_a_replica_has_it() {
    let dir = tempfile::TempDir::new().expect("a temporary directory");
    let primary = RedisServer::start().await;
    let primary_port = primary.port.to_string();
    let (replica, replica_log) = RedisServer::spawn(
        free_port(),
        &[
            "--replicaof",
            "127.0.0.1",
            &primary_port,
            "--dir",
            dir.path().to_str().expect("a UTF-8 path"),
        ],
    );
    replica_log
        .wait_for("MASTER <-> REPLICA sync: Finished with success")
        .await;
    let args = [
        "--redis-url",
        &primary.url(),
        "--redis-replicas",
        "1",
        "--max-rate",
        "0",
    ];
    let a = Server::start(&args).await;
    let (mut alice, _) = connect_structured(&format!("{}/r?name=alice&session=s1", a.url())).await;
    say(&mut alice, 1, "before").await;
    let frames = frames_until(&mut alice, "ack").await;
    assert_eq!(
        frames.last(),
        Some(&json!({"type": "ack", "id": 1, "offset": 1}))
    );

    // The replica stops: the next line is logged on the primary, but not
    // acknowledged; the members are told that lines wait.
    replica.stop();
    say(&mut alice, 2, "during").await;
    let mut seen: Vec<Value> = Vec::new();
    loop {
        let frame = recv_json(&mut alice).await;
        assert_ne!(
            frame["type"], "ack",
            "acknowledged without a replica: {frame}"
        );
        let done = frame["kind"] == "delayed";
        seen.push(frame);
        if done {
            break;
        }
    }
    a.stderr.wait_for_event(REDIS_DOWN).await;
    let health = health(a.addr()).await;
    assert_eq!(health["redis"], "down", "{health}");

    // It goes on: the line is acknowledged, at its offset, after that, and was
    // delivered once.
    let resumed = Instant::now();
    replica.resume();
    let mut copies = seen
        .iter()
        .filter(|f| f["type"] == "message" && f["text"] == "during")
        .count();
    let ack = loop {
        let frame = recv_json(&mut alice).await;
        if frame["type"] == "message" && frame["text"] == "during" {
            copies += 1;
        }
        if frame["type"] == "ack" {
            break frame;
        }
    };
    assert!(resumed.elapsed() < WAIT);
    assert_eq!(
        (&ack["id"], &ack["offset"]),
        (&json!(2), &json!(2)),
        "{ack}"
    );
    say(&mut alice, 3, "after").await;
    loop {
        let frame = recv_json(&mut alice).await;
        if frame["type"] == "message" && frame["text"] == "during" {
            copies += 1;
        }
        if frame["type"] == "ack" {
            assert_eq!(frame, json!({"type": "ack", "id": 3, "offset": 3}));
            break;
        }
    }
    assert_eq!(copies, 1, "\"during\" delivered once");
}

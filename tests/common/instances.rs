//! Helpers for the tests of several instances sharing a real Redis: structured
//! frames to send and read, and two instances started on one Redis.

use serde_json::{Value, json};

use super::{RedisServer, Server, Ws, recv_json, recv_text, send};

/// What an instance logs when it loses Redis.
pub const REDIS_DOWN: &str = "Redis is out of reach: members' lines are held until it is back";

/// What an instance logs when Redis is back.
pub const REDIS_BACK: &str = "Redis is back: the held lines go out, and rooms are shared again";

/// Sends a structured `send` frame.
pub async fn say(ws: &mut Ws, id: u64, text: &str) {
    send(
        ws,
        &json!({"type": "send", "id": id, "text": text}).to_string(),
    )
    .await;
}

/// The next `count` message frames' texts and offsets, passing over acks.
pub async fn messages(ws: &mut Ws, count: usize) -> Vec<(u64, String)> {
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        let frame: Value = recv_json(ws).await;
        if frame["type"] == "message" {
            let offset = frame["offset"].as_u64().expect("an offset");
            got.push((offset, frame["text"].as_str().expect("a text").to_owned()));
        }
    }
    got
}

/// The next text that is not a notice (a tagged line).
pub async fn next_line(ws: &mut Ws) -> String {
    loop {
        let line = recv_text(ws).await;
        if !line.starts_with("* ") {
            return line;
        }
    }
}

/// A Redis of the test's own and two instances sharing it, each started with
/// `flags` besides `--redis-url`.
pub async fn two_instances(flags: &[&str]) -> (RedisServer, Server, Server) {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args: Vec<&str> = ["--redis-url", url.as_str()]
        .into_iter()
        .chain(flags.iter().copied())
        .collect();
    let (a, b) = (Server::start(&args).await, Server::start(&args).await);
    (redis, a, b)
}

/// The frames up to and including the first of type `kind`, from `ws`.
pub async fn frames_until(ws: &mut Ws, kind: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = recv_json(ws).await;
        let done = frame["type"] == kind;
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// Sends `count` lines (ids 1 to `count`) without waiting for any answer, then
/// checks that each is acknowledged exactly once, in the order sent, at offsets
/// `first`, `first + 1`, ...: one more line sent after their acks began is acked
/// last, with nothing repeated before it.
pub async fn assert_acked_once_in_order(ws: &mut Ws, count: u64, first: u64) {
    for id in 1..=count {
        say(ws, id, &format!("m{id}")).await;
    }
    let mut acks = Vec::new();
    let last = count + 1;
    loop {
        let frame = recv_json(ws).await;
        if frame["type"] != "ack" {
            continue;
        }
        if acks.is_empty() {
            say(ws, last, "the last").await;
        }
        let done = frame["id"] == last;
        acks.push(frame);
        if done {
            break;
        }
    }
    let expected: Vec<Value> = (1..=last)
        .map(|id| json!({"type": "ack", "id": id, "offset": first + id - 1}))
        .collect();
    assert!(acks == expected, "acks {acks:?}");
}

//! The publish API, `POST /_/rooms/NAME/messages`: a backend's line reaches the
//! room's members tagged with its token's name, at the offset the `201` names;
//! every refusal has its status and one line; with Redis the line reaches every
//! instance, and with Redis killed nothing is published (503).

mod common;

use common::tokens::*;
use common::*;
use serde_json::{Value, json};

/// A publish of `body` (of `media`, if given) to `room` with `token`, if given.
fn post(room: &str, token: Option<&str>, media: Option<&str>, body: &str) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let media = media.map_or(String::new(), |m| format!("Content-Type: {m}\r\n"));
    format!(
        "POST /_/rooms/{room}/messages HTTP/1.1\r\nHost: localhost\r\n{auth}{media}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The next message frame, passing over anything else.
async fn next_message(ws: &mut Ws) -> Value {
    loop {
        let frame = recv_json(ws).await;
        if frame["type"] == "message" {
            return frame;
        }
    }
}

#[tokio::test]
async fn a_published_line_reaches_the_room_at_the_offset_it_is_answered_with() {
    let dir = key_dir("publish");
    let key = secret(&dir, "chat.key", SECRET);
    let forger = secret(
        &dir,
        "other.key",
        "another secret of at least 32 bytes, not ours",
    );
    let server = Server::start(&[
        "--auth-key",
        &key,
        "--max-message-size",
        "64",
        "--max-rate",
        "0.1",
        "--max-burst",
        "2",
    ])
    .await;
    let addr = server.addr();
    let member = mint(&[
        "--key",
        &key,
        "--name",
        "alice",
        "--rooms",
        "rust",
        "--expires",
        "1h",
    ]);
    let bot = mint(&[
        "--key",
        &key,
        "--name",
        "deploy-bot",
        "--rooms",
        "rust",
        "--expires",
        "1h",
        "--publish",
    ]);

    let mut alice = connect_with(&server, "/rust", &member, true).await;
    let welcome = recv_json(&mut alice).await;
    let mut classic = connect_with(&server, "/rust", &member, false).await;
    assert_eq!(
        recv_text(&mut classic).await,
        "Welcome to chat! Type a message"
    );

    let (status, head, body) =
        exchange(addr, &post("rust", Some(&bot), None, "deployed v1.2")).await;
    assert_eq!(status, "HTTP/1.1 201 Created", "{head}\n{body}");
    assert!(
        head.contains("\r\nContent-Type: application/json\r\n"),
        "{head}"
    );
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        answer,
        json!({"room": "rust", "epoch": welcome["epoch"], "offset": welcome["offset"].as_u64().expect("offset") + 1})
    );
    assert_eq!(
        next_message(&mut alice).await,
        json!({"type": "message", "room": "rust", "epoch": welcome["epoch"], "offset": answer["offset"],
               "from": "deploy-bot", "text": "deployed v1.2"})
    );
    assert_eq!(
        recv_text(&mut classic).await,
        "deploy-bot: \"deployed v1.2\""
    );
    let logged = server.stderr.wait_for_event("published").await;
    for field in [
        "from=deploy-bot",
        "room=/rust",
        &format!("offset={}", answer["offset"]),
    ] {
        assert!(logged.contains(field), "{field} in {logged}");
    }

    let json_body = r#"{"text": "rolled \"back\"\nto v1.1"}"#;
    let (status, _, body) = exchange(
        addr,
        &post("rust", Some(&bot), Some("application/json"), json_body),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 201 Created", "{body}");
    let frame = next_message(&mut alice).await;
    assert_eq!(
        (&frame["text"], frame["offset"].as_u64()),
        (
            &json!("rolled \"back\"\nto v1.1"),
            answer["offset"].as_u64().map(|o| o + 1)
        )
    );
    assert_eq!(
        recv_text(&mut classic).await,
        r#"deploy-bot: "rolled \"back\"\nto v1.1""#
    );

    let forged = mint(&[
        "--key",
        &forger,
        "--name",
        "deploy-bot",
        "--rooms",
        "*",
        "--expires",
        "1h",
        "--publish",
    ]);
    let scout = mint(&[
        "--key",
        &key,
        "--name",
        "scout",
        "--rooms",
        "*",
        "--expires",
        "1h",
        "--publish",
    ]);
    let refusals = [
        (
            post("rust", None, None, "x"),
            "401 Unauthorized",
            "missing token: send Authorization: Bearer TOKEN",
        ),
        (
            post("rust", Some(&forged), None, "x"),
            "401 Unauthorized",
            "invalid token: bad signature",
        ),
        (
            post("rust", Some(&member), None, "x"),
            "403 Forbidden",
            "the token does not allow publishing",
        ),
        (
            post("ops", Some(&bot), None, "x"),
            "403 Forbidden",
            "the token does not allow the room \"ops\"",
        ),
        (
            post("empty", Some(&scout), None, "x"),
            "404 Not Found",
            "no such room \"empty\": nobody is in it",
        ),
        (
            post("a%20b", Some(&scout), None, "x"),
            "400 Bad Request",
            "invalid room name \"a%20b\": use 1 to 32 letters, digits, '-', '_' or '.'",
        ),
        (
            post("rust", Some(&bot), None, &"x".repeat(65)),
            "413 Payload Too Large",
            "the body is 65 bytes; the limit is 64 (--max-message-size)",
        ),
        (
            post("rust", Some(&bot), Some("image/png"), "x"),
            "415 Unsupported Media Type",
            "send text/plain or application/json",
        ),
        (
            post("rust", Some(&bot), Some("application/json"), "\"x\""),
            "400 Bad Request",
            "a JSON body is an object with a string \"text\": {\"text\": \"...\"}",
        ),
        (
            post("rust", Some(&bot), None, "x")
                .replace("Content-Length: 1\r\n", "Transfer-Encoding: chunked\r\n"),
            "411 Length Required",
            "send the body with a Content-Length (chunked bodies are not taken)",
        ),
    ];
    for (request, status, reason) in refusals {
        let (got, _, body) = exchange(addr, &request).await;
        assert_eq!(
            (got.as_str(), body.as_str()),
            (format!("HTTP/1.1 {status}").as_str(), reason),
            "{request}"
        );
    }
    // The burst of 2 is spent (refusals cost nothing), and the rate is one per
    // 10 s: the publisher is told how long to wait.
    let (status, head, body) = exchange(addr, &post("rust", Some(&bot), None, "again")).await;
    assert_eq!(status, "HTTP/1.1 429 Too Many Requests", "{body}");
    let wait = head
        .lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .and_then(|s| s.parse::<u64>().ok())
        .expect("a Retry-After in seconds");
    assert!((9..=10).contains(&wait), "{head}");
    assert_eq!(
        body,
        format!("too many messages: the limit is 0.1 per second; try again in {wait} s")
    );
    // Nothing refused reached the room: the next line there is alice's.
    send(&mut classic, "after all that").await;
    assert_eq!(recv_text(&mut classic).await, "alice: \"after all that\"");
    assert_eq!(next_message(&mut alice).await["text"], "after all that");
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn with_redis_a_line_published_on_one_instance_reaches_the_members_of_another() {
    let redis = RedisServer::start().await;
    let dir = key_dir("publish-redis");
    let key = secret(&dir, "chat.key", SECRET);
    let url = redis.url();
    let args = ["--redis-url", url.as_str(), "--auth-key", &key];
    let (a, b) = (Server::start(&args).await, Server::start(&args).await);
    let member = mint(&[
        "--key",
        &key,
        "--name",
        "alice",
        "--rooms",
        "ops",
        "--expires",
        "1h",
    ]);
    let bot = mint(&[
        "--key",
        &key,
        "--name",
        "alert",
        "--rooms",
        "ops",
        "--expires",
        "1h",
        "--publish",
    ]);

    let mut on_a = connect_with(&a, "/ops", &member, true).await;
    let welcome = recv_json(&mut on_a).await;
    // Nobody is in the room on b: its log is shared, so the line goes there anyway.
    let (status, _, body) = exchange(
        b.addr(),
        &post("ops", Some(&bot), None, "disk full on db-1"),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 201 Created", "{body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["epoch"], welcome["epoch"]);
    let frame = next_message(&mut on_a).await;
    assert_eq!(
        (&frame["from"], &frame["text"], &frame["offset"]),
        (
            &json!("alert"),
            &json!("disk full on db-1"),
            &answer["offset"]
        )
    );
    // A newcomer on b that asks for what it missed finds it in the log.
    let mut on_b = connect_with(
        &b,
        &format!(
            "/ops?epoch={}&after=0",
            welcome["epoch"].as_str().expect("epoch")
        ),
        &member,
        true,
    )
    .await;
    assert_eq!(recv_json(&mut on_b).await["type"], "welcome");
    assert_eq!(next_message(&mut on_b).await["text"], "disk full on db-1");

    // Redis gone: nothing is published, and the publisher is told to try again.
    let port = redis.port;
    redis.kill().await;
    let (status, _, body) = exchange(b.addr(), &post("ops", Some(&bot), None, "lost?")).await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        (
            "HTTP/1.1 503 Service Unavailable",
            "the shared log is out of reach; nothing was published, try again"
        )
    );
    let delayed = "* the chat's shared log is out of reach: messages are held, and delivered to everyone once it is back";
    let notice = loop {
        let frame = recv_json(&mut on_b).await;
        if frame["type"] == "notice" {
            break frame;
        }
    };
    assert_eq!(
        (&notice["kind"], &notice["text"]),
        (&json!("delayed"), &json!(delayed))
    );
    // A member's line waits for Redis; once it is back, the next thing b's member
    // hears is that line, not "lost?".
    send(
        &mut on_b,
        &json!({"type": "send", "id": 1, "text": "anyone?"}).to_string(),
    )
    .await;
    let _redis = RedisServer::start_at(port).await;
    assert_eq!(next_message(&mut on_b).await["text"], "anyone?");
}

//! Several server instances sharing rooms through a real Redis (`redis-server`, run
//! by each test on a free port without persistence): one order for everyone,
//! presence across instances, an outage and a Redis restart, an instance that dies
//! under its clients. Ignored, saying so in the summary, where `redis-server` is not
//! on `PATH`.

mod common;

use common::*;
use serde_json::{Value, json};

/// What an instance logs when it loses Redis.
const REDIS_DOWN: &str = "Redis is out of reach: rooms go on locally, unlogged, until it is back";

/// Sends a structured `send` frame.
async fn say(ws: &mut Ws, id: u64, text: &str) {
    send(
        ws,
        &json!({"type": "send", "id": id, "text": text}).to_string(),
    )
    .await;
}

/// The next `count` message frames' texts and offsets, passing over acks.
async fn messages(ws: &mut Ws, count: usize) -> Vec<(u64, String)> {
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
async fn next_line(ws: &mut Ws) -> String {
    loop {
        let line = recv_text(ws).await;
        if !line.starts_with("* ") {
            return line;
        }
    }
}

/// A Redis of the test's own and two instances sharing it, each started with
/// `flags` besides `--redis-url`.
async fn two_instances(flags: &[&str]) -> (RedisServer, Server, Server) {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args: Vec<&str> = ["--redis-url", url.as_str()]
        .into_iter()
        .chain(flags.iter().copied())
        .collect();
    let (a, b) = (Server::start(&args).await, Server::start(&args).await);
    (redis, a, b)
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn two_instances_deliver_every_message_once_in_one_order() {
    let (_redis, a, b) = two_instances(&["--max-rate", "0"]).await;
    let (mut a1, _) = connect_structured(&format!("{}/rust?name=a1", a.url())).await;
    let (mut a2, _) = connect_structured(&format!("{}/rust", a.url())).await;
    let (mut b1, _) = connect_structured(&format!("{}/rust?name=b1", b.url())).await;
    let mut classic = connect(&format!("{}/rust", b.url())).await;

    // Two senders on two instances at once.
    let talk = |mut ws: Ws, who: &'static str| {
        tokio::spawn(async move {
            for i in 1..=50 {
                say(&mut ws, i, &format!("{who} {i}")).await;
            }
            ws
        })
    };
    let (a1_talk, b1_talk) = (talk(a1, "a1"), talk(b1, "b1"));
    a1 = a1_talk.await.expect("a1 talks");
    b1 = b1_talk.await.expect("b1 talks");

    let seen = [
        messages(&mut a1, 100).await,
        messages(&mut a2, 100).await,
        messages(&mut b1, 100).await,
    ];
    let offsets: Vec<u64> = seen[0].iter().map(|(offset, _)| *offset).collect();
    assert_eq!(
        offsets,
        (1..=100).collect::<Vec<u64>>(),
        "one numbering, no gap"
    );
    assert_eq!(seen[0], seen[1], "the same order on the same instance");
    assert_eq!(seen[0], seen[2], "the same order on the other instance");
    for who in ["a1", "b1"] {
        let theirs: Vec<&String> = seen[0]
            .iter()
            .map(|(_, t)| t)
            .filter(|t| t.starts_with(who))
            .collect();
        let expected: Vec<String> = (1..=50).map(|i| format!("{who} {i}")).collect();
        assert_eq!(
            theirs,
            expected.iter().collect::<Vec<_>>(),
            "each sender's own order kept"
        );
    }
    // The classic client on the other instance gets the same lines, same order,
    // tagged as ever.
    for (_, text) in &seen[0] {
        let line = recv_text(&mut classic).await;
        assert!(line.ends_with(&format!(": {text:?}")), "{line} for {text}");
        let name = text.split(' ').next().expect("a name");
        assert!(line.starts_with(&format!("{name}@127.0.0.1:")), "{line}");
    }
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn who_and_presence_span_instances() {
    let (_redis, a, b) = two_instances(&["--presence"]).await;
    let mut alice = connect(&format!("{}/rust?name=alice", a.url())).await;
    let alice_who = format!("alice@{:?}", local_addr(&alice));
    assert_eq!(
        recv_text(&mut alice).await,
        format!("* {alice_who} joined (1 here)")
    );
    let bob = connect(&format!("{}/rust?name=bob", b.url())).await;
    let bob_who = format!("bob@{:?}", local_addr(&bob));
    assert_eq!(
        recv_text(&mut alice).await,
        format!("* {bob_who} joined (2 here)")
    );

    send(&mut alice, "/who").await;
    let mut everyone = [alice_who.clone(), bob_who.clone()];
    everyone.sort();
    assert_eq!(
        recv_text(&mut alice).await,
        format!("* 2 here: {}", everyone.join(", "))
    );

    drop(bob);
    assert_eq!(
        recv_text(&mut alice).await,
        format!("* {bob_who} left (1 here)")
    );
    send(&mut alice, "/who").await;
    assert_eq!(
        recv_text(&mut alice).await,
        format!("* 1 here: {alice_who}")
    );
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn a_redis_outage_keeps_local_chat_going_and_a_restart_is_said() {
    let (redis, a, b) = two_instances(&["--max-rate", "0"]).await;
    let port = redis.port;
    let mut alice = connect(&format!("{}/r?name=alice", a.url())).await;
    let mut ann = connect(&format!("{}/r?name=ann", a.url())).await;
    let mut bob = connect(&format!("{}/r?name=bob", b.url())).await;
    send(&mut alice, "before").await;
    for ws in [&mut alice, &mut ann, &mut bob] {
        assert!(next_line(ws).await.ends_with(": \"before\""));
    }

    redis.kill().await;
    let degraded = "* the chat's shared log is out of reach: messages now reach only the people on this server, and are not kept";
    for ws in [&mut alice, &mut ann, &mut bob] {
        assert_eq!(recv_text(ws).await, degraded);
    }
    a.stderr.wait_for_event(REDIS_DOWN).await;
    let health = raw_exchange(a.addr(), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        health.ends_with("{\"status\":\"degraded\",\"connections\":2,\"redis\":\"down\"}\n"),
        "{health}"
    );

    // The same instance's members keep chatting; the other instance's do not hear it.
    send(&mut alice, "during").await;
    assert!(next_line(&mut ann).await.ends_with(": \"during\""));
    assert!(next_line(&mut alice).await.ends_with(": \"during\""));

    // Redis comes back empty (no persistence): the log begins again, and everyone
    // is told both that it is back and that it was lost.
    let _redis = RedisServer::start_at(port).await;
    let restored = "* the chat's shared log is back: messages reach everyone and are kept again";
    for ws in [&mut alice, &mut ann, &mut bob] {
        assert_eq!(recv_text(ws).await, restored);
    }
    send(&mut alice, "after").await;
    let lost = "* the room's log was lost and began again: messages sent meanwhile may be lost";
    for ws in [&mut alice, &mut ann, &mut bob] {
        assert_eq!(recv_text(ws).await, lost);
        assert!(recv_text(ws).await.ends_with(": \"after\""));
    }
    let health = raw_exchange(a.addr(), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        health.ends_with("{\"status\":\"ok\",\"connections\":2,\"redis\":\"up\"}\n"),
        "{health}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn clients_of_a_dead_instance_resume_on_the_other_and_lose_nothing() {
    let (_redis, a, b) = two_instances(&["--max-rate", "0"]).await;
    // The proxy plays the load balancer in front of both.
    let proxy = Proxy::start(a.addr()).await;
    let mut client = Client::start(&["--url", &proxy.url(), "--reconnect"]);
    client.welcomed().await;
    let mut talker = connect(&b.url()).await;
    let tag = format!("{:?}", local_addr(&talker));
    let say_all = |range: std::ops::Range<u32>| range.map(|i| format!("m{i}"));
    for text in say_all(0..50) {
        send(&mut talker, &text).await;
        assert_eq!(recv_text(&mut talker).await, tagged(&talker, &text));
    }
    client.stdout.wait_for("\"m49\"").await;

    // Instance A dies; the balancer sends new connections to B.
    signal(a.child_ref(), "KILL");
    proxy.retarget(b.addr());
    for text in say_all(50..100) {
        send(&mut talker, &text).await;
        assert_eq!(recv_text(&mut talker).await, tagged(&talker, &text));
    }
    client.stdout.wait_for("\"m99\"").await;
    client
        .stderr
        .wait_for_line(&format!("reconnected to {}", proxy.url()))
        .await;
    client.close_stdin();
    assert_eq!(client.wait().await.code(), Some(0));

    let printed = client.stdout.complete().await;
    let prefix = format!("From server: {tag}: ");
    let got: Vec<String> = printed
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|q| q.trim_matches('"').to_owned())
        .collect();
    assert_eq!(
        got,
        say_all(0..100).collect::<Vec<_>>(),
        "each once, in order"
    );
    assert!(
        !printed.iter().any(|l| l.starts_with("From server: * ")),
        "{printed:#?}"
    );
}

#[tokio::test]
async fn an_unusable_redis_url_is_a_one_line_error_and_exit_1() {
    let unreachable = format!("redis://127.0.0.1:{}", free_port());
    for url in [unreachable.as_str(), "not-a-url"] {
        let output = tokio::time::timeout(
            WAIT,
            server_command()
                .args(["--port", "0", "--redis-url", url])
                .output(),
        )
        .await
        .expect("exit in time")
        .expect("run server");
        assert_eq!(output.status.code(), Some(1), "{url}");
        assert!(output.stdout.is_empty(), "no readiness line for {url}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.contains(" INFO ")).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].starts_with(&format!("error: cannot use Redis at {url}: ")),
            "{stderr}"
        );
        assert!(
            lines[0].ends_with("(is it running, and is the URL right?)"),
            "{stderr}"
        );
    }
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn a_room_everyone_joined_during_an_outage_delivers_once_redis_is_back() {
    let (redis, a, b) = two_instances(&["--max-rate", "0"]).await;
    let port = redis.port;
    redis.kill().await;
    a.stderr.wait_for_event(REDIS_DOWN).await;
    b.stderr.wait_for_event(REDIS_DOWN).await;

    // A room nobody was in before the outage, with a member on each instance.
    let mut alice = connect(&format!("{}/fresh?name=alice", a.url())).await;
    let mut bob = connect(&format!("{}/fresh?name=bob", b.url())).await;
    let _redis = RedisServer::start_at(port).await;
    let restored = "* the chat's shared log is back: messages reach everyone and are kept again";
    for ws in [&mut alice, &mut bob] {
        assert_eq!(recv_text(ws).await, restored);
    }

    // Once Redis is back the room is shared again, both ways.
    let (from_alice, from_bob) = (
        format!("alice@{}: \"from a\"", local_addr(&alice)),
        format!("bob@{}: \"from b\"", local_addr(&bob)),
    );
    send(&mut alice, "from a").await;
    send(&mut bob, "from b").await;
    let mut seen = Vec::new();
    for ws in [&mut alice, &mut bob] {
        seen.push([next_line(ws).await, next_line(ws).await]);
    }
    assert_eq!(seen[0], seen[1], "one order for both");
    let mut lines = seen[0].clone();
    lines.sort();
    assert_eq!(lines, [from_alice, from_bob]);
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn a_joiner_during_an_outage_gets_the_epoch_the_room_follows() {
    let redis = RedisServer::start().await;
    let args = ["--redis-url", &redis.url(), "--max-rate", "0"];
    let a = Server::start(&args).await;
    let (mut first, welcome) = connect_structured(&format!("{}/rust", a.url())).await;
    say(&mut first, 1, "before").await;
    assert_eq!(
        messages(&mut first, 1).await,
        vec![(1, "before".to_owned())]
    );

    redis.kill().await;
    a.stderr.wait_for_event(REDIS_DOWN).await;
    // A newcomer during the outage is told the epoch of the room's log in Redis,
    // the one its members' offsets count in, so it can resume there later.
    let (_second, joined) = connect_structured(&format!("{}/rust", a.url())).await;
    assert_eq!(
        joined["epoch"], welcome["epoch"],
        "{joined} against {welcome}"
    );
    assert_eq!(joined["offset"], 1, "{joined}");
}

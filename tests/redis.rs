//! Several server instances sharing rooms through a real Redis (`redis-server`, run
//! by each test on a free port without persistence): one order for everyone, a
//! line sent again recognised on another instance, `/who` and presence across
//! instances, an instance that dies under its clients, the Redis URL's password
//! kept out of every output. Outages are in `tests/redis_outage.rs`. Ignored,
//! saying so in the summary, where `redis-server` is not on `PATH`.

mod common;

use common::instances::*;
use common::*;
use serde_json::json;

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
async fn a_line_resent_on_another_instance_is_acked_duplicate_and_delivered_once() {
    let (_redis, a, b) = two_instances(&["--max-rate", "0"]).await;
    let (mut watcher, _) = connect_structured(&format!("{}/rust", b.url())).await;
    let (mut on_a, welcome) = connect_structured(&format!("{}/rust?session=k3j4", a.url())).await;
    say(&mut on_a, 1, "once").await;
    let acked = frames_until(&mut on_a, "ack").await.pop();
    assert_eq!(acked, Some(json!({"type": "ack", "id": 1, "offset": 1})));
    assert_eq!(messages(&mut watcher, 1).await, [(1, "once".to_owned())]);
    drop(on_a);

    // The same session moves to B and sends the line again, as a client does that
    // did not see the ack before its connection dropped.
    let epoch = welcome["epoch"].as_str().expect("an epoch");
    let (mut on_b, _) = connect_structured(&format!(
        "{}/rust?session=k3j4&epoch={epoch}&after=0",
        b.url()
    ))
    .await;
    say(&mut on_b, 1, "once").await;
    say(&mut on_b, 2, "twice?").await;
    let frames = frames_until(&mut on_b, "recovered").await;
    assert_eq!(frames.len(), 2, "the replay of offset 1, then: {frames:?}");
    let mut acks = Vec::new();
    while acks.len() < 2 {
        let frame = recv_json(&mut on_b).await;
        if frame["type"] == "ack" {
            acks.push(frame);
        }
    }
    assert_eq!(
        acks,
        [
            json!({"type": "ack", "id": 1, "offset": 1, "duplicate": true}),
            json!({"type": "ack", "id": 2, "offset": 2}),
        ]
    );
    assert_eq!(
        messages(&mut watcher, 1).await,
        [(2, "twice?".to_owned())],
        "the resent line is not delivered again"
    );
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn a_dead_instances_members_leave_who_within_15_s() {
    let (_redis, a, mut b) = two_instances(&["--presence"]).await;
    let mut alice = connect(&format!("{}/rust?name=alice", a.url())).await;
    let alice_who = format!("alice@{:?}", local_addr(&alice));
    let bob = connect(&format!("{}/rust?name=bob", b.url())).await;
    let bob_who = format!("bob@{:?}", local_addr(&bob));
    let mut everyone = [alice_who.clone(), bob_who.clone()];
    everyone.sort();
    assert_eq!(
        recv_text(&mut alice).await,
        format!("* {alice_who} joined (1 here)")
    );
    assert_eq!(
        recv_text(&mut alice).await,
        format!("* {bob_who} joined (2 here)")
    );
    send(&mut alice, "/who").await;
    assert_eq!(
        recv_text(&mut alice).await,
        format!("* 2 here: {}", everyone.join(", "))
    );

    // B dies without a word; A's /who drops bob once his listing expires.
    signal(b.child_ref(), "KILL");
    b.wait().await;
    let killed = std::time::Instant::now();
    let alone = format!("* 1 here: {alice_who}");
    let promised = std::time::Duration::from_secs(15);
    // Asked four times a second (within the default --max-rate): each answer is an
    // exact event, and the bound is the promise plus one question's time.
    let mut ask = tokio::time::interval(std::time::Duration::from_millis(250));
    let answered = tokio::time::timeout(promised + std::time::Duration::from_secs(5), async {
        loop {
            ask.tick().await;
            send(&mut alice, "/who").await;
            if recv_text(&mut alice).await == alone {
                return killed.elapsed();
            }
        }
    })
    .await
    .expect("bob left /who in time");
    assert!(
        answered <= promised + std::time::Duration::from_secs(1),
        "bob was listed {answered:?} after his instance died"
    );
}

/// Runs `server` with `args` and `env` to its exit, and returns its output.
async fn run_server(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_server"))
            .args(args)
            .env_remove("CHAT_REDIS_URL")
            .envs(env.iter().copied())
            .output(),
    )
    .await
    .expect("exit in time")
    .expect("run server")
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn a_password_in_the_redis_url_is_never_printed() {
    // Redis with a password for the default user and a user of its own.
    let auth = [
        "--requirepass",
        "s3cret",
        "--user",
        "user",
        "on",
        ">s3cret",
        "~*",
        "&*",
        "+@all",
    ];
    let redis = RedisServer::start_with(&auth).await;
    let port = redis.port;
    let urls = [
        format!("redis://:s3cret@127.0.0.1:{port}"),
        format!("redis://user:s3cret@127.0.0.1:{port}"),
    ];
    let hidden = format!("redis://***@127.0.0.1:{port}");
    let mut printed = Vec::new();
    let mut servers = Vec::new();
    for url in &urls {
        // Debug logs too, the Redis crate's included.
        let server = Server::start_with_env(&["--redis-url", url], &[("RUST_LOG", "debug")]).await;
        let connected = server.stderr.wait_for_event("connected to Redis").await;
        assert!(connected.ends_with(&format!("url={hidden}")), "{connected}");
        let _ws = connect(&server.url()).await;
        for path in ["/healthz", "/metrics"] {
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            let answer = raw_exchange(server.addr(), request.as_bytes()).await;
            assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
            printed.push(answer);
        }
        servers.push((server, _ws));
    }
    // An outage and the way back, logged with their causes.
    redis.kill().await;
    for (server, _) in &servers {
        server.stderr.wait_for_event(REDIS_DOWN).await;
    }
    let _redis = RedisServer::start_at_with(port, &auth).await;
    for (server, _) in &servers {
        server.stderr.wait_for_event(REDIS_BACK).await;
    }
    for (mut server, ws) in servers {
        drop(ws);
        server.terminate();
        assert_eq!(server.wait().await.code(), Some(0));
        printed.extend(server.stderr.complete().await);
    }

    // Errors at start: a wrong password, a Redis that is not there, a bad URL.
    let unreachable = free_port();
    for (url, shown) in [
        (
            format!("redis://:n0t-s3cret@127.0.0.1:{port}"),
            hidden.clone(),
        ),
        (
            format!("redis://user:s3cret@127.0.0.1:{unreachable}"),
            format!("redis://***@127.0.0.1:{unreachable}"),
        ),
        (
            "redis://user:s3cret@127.0.0.1:notaport".to_owned(),
            "redis://***@127.0.0.1:notaport".to_owned(),
        ),
    ] {
        let output = run_server(&["--port", "0", "--redis-url", &url], &[]).await;
        assert_eq!(output.status.code(), Some(1), "{url}");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            stderr.contains(&format!("error: cannot use Redis at {shown}: ")),
            "{stderr}"
        );
        printed.push(stderr);
    }
    // The help, with the URL in the environment.
    let help = run_server(&["--help"], &[("CHAT_REDIS_URL", &urls[1])]).await;
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    assert!(help.contains("CHAT_REDIS_URL"), "{help}");
    printed.push(help);

    for text in &printed {
        assert!(!text.contains("s3cret"), "the password in:\n{text}");
    }
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn who_spans_instances_without_presence_too() {
    let (_redis, a, b) = two_instances(&[]).await;
    let mut alice = connect(&format!("{}/rust?name=alice", a.url())).await;
    let alice_who = format!("alice@{:?}", local_addr(&alice));
    let bob = connect(&format!("{}/rust?name=bob", b.url())).await;
    let bob_who = format!("bob@{:?}", local_addr(&bob));
    // Listed as soon as they are in, not at the next heartbeat.
    send(&mut alice, "/who").await;
    let mut everyone = [alice_who.clone(), bob_who];
    everyone.sort();
    assert_eq!(
        recv_text(&mut alice).await,
        format!("* 2 here: {}", everyone.join(", "))
    );

    // Bob leaves: without a notice to wait for, ask until he is gone, well within
    // the 15 s an entry lives without its instance renewing it.
    drop(bob);
    b.stderr.wait_for_event("disconnected").await;
    let left = std::time::Instant::now();
    let alone = format!("* 1 here: {alice_who}");
    let mut ask = tokio::time::interval(std::time::Duration::from_millis(100));
    tokio::time::timeout(WAIT, async {
        loop {
            ask.tick().await;
            send(&mut alice, "/who").await;
            if recv_text(&mut alice).await == alone {
                return;
            }
        }
    })
    .await
    .expect("bob left /who in time");
    assert!(
        left.elapsed() < std::time::Duration::from_secs(5),
        "bob was listed {:?} after he left",
        left.elapsed()
    );
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn sends_in_flight_through_redis_are_acked_once_each_in_order() {
    let (_redis, a, _b) = two_instances(&["--max-rate", "0"]).await;
    let (mut ws, _) = connect_structured(&format!("{}/rust?session=s1", a.url())).await;
    // More than a session keeps on their way to Redis at once (64).
    assert_acked_once_in_order(&mut ws, 200, 1).await;
}

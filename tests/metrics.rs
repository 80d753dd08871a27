//! What operators watch: `/metrics` in the Prometheus text format, checked by
//! `promtool` and scraped by a real Prometheus (both from Debian's `prometheus`
//! package; ignored, saying so in the summary, where they are not on `PATH`),
//! counters that move exactly as promised (each disconnection reason, the log's
//! counters, the rate limit's, Redis's through an outage of one instance), and
//! JSON logs.

mod common;

use std::time::Duration;

use common::instances::{REDIS_BACK, REDIS_DOWN};
use common::*;
use tokio::io::AsyncWriteExt;

/// The server's metrics, through the chat port.
async fn scrape(server: &Server) -> String {
    raw_exchange(server.addr(), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await
}

/// The value of the sample `name` (labels included, as written) in `exposition`.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
#[cfg_attr(
    not(has_promtool),
    ignore = "needs promtool (apt-get install prometheus)"
)]
async fn the_exposition_passes_promtool() {
    let server = Server::start(&["--max-rate", "0"]).await;
    passes_promtool(&server).await;
}

#[tokio::test]
#[cfg_attr(
    not(has_promtool),
    ignore = "needs promtool (apt-get install prometheus)"
)]
async fn the_disk_stores_exposition_passes_promtool_and_times_its_flushes() {
    let dir = tempfile::TempDir::new().expect("a temporary directory");
    let data_dir = dir.path().join("data");
    let data_dir = data_dir.to_str().expect("a UTF-8 path");
    let server = Server::start(&["--max-rate", "0", "--data-dir", data_dir]).await;
    let body = passes_promtool(&server).await;
    // Each line is flushed before it comes back, so the counters hold it already.
    let flushes = sample(&body, "chat_disk_flushes_total").expect("the flushes");
    let lines = sample(&body, "chat_disk_lines_total").expect("the lines");
    let seconds = sample(&body, "chat_disk_flush_seconds_total").expect("the flush time");
    assert!(flushes >= 1.0 && lines >= 1.0, "{body}");
    // A flush takes some time, and one took less than the test has run.
    assert!(seconds > 0.0 && seconds < 60.0, "{body}");
}

/// Sends a line, waits for its copy, and checks the exposition with `promtool`;
/// returns the exposition.
async fn passes_promtool(server: &Server) -> String {
    let mut ws = connect(&server.url()).await;
    send(&mut ws, "hello").await;
    recv_text(&mut ws).await;
    let answer = scrape(server).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{answer}"
    );
    let body = answer.split_once("\r\n\r\n").expect("a body").1;
    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    let mut stdin = promtool.stdin.take().expect("stdin");
    stdin
        .write_all(body.as_bytes())
        .await
        .expect("feed promtool");
    drop(stdin);
    let output = tokio::time::timeout(WAIT, promtool.wait_with_output())
        .await
        .expect("promtool in time")
        .expect("promtool output");
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    body.to_owned()
}

#[tokio::test]
async fn counters_move_exactly_as_promised() {
    let server = Server::start(&["--token", "s3cret", "--max-rate", "0"]).await;
    let addr = server.addr();
    let auth = "Authorization: Bearer s3cret\r\n";
    // Two chatters, a refused token, a plain request, a health check.
    let mut alice = connect_with(&server.url(), auth).await;
    let mut bob = connect_with(&server.url(), auth).await;
    assert!(
        upgrade_status(addr, "/", "")
            .await
            .starts_with("HTTP/1.1 401")
    );
    let plain = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(plain.starts_with("HTTP/1.1 426"), "{plain}");
    open_connections(addr).await;
    // Three lines, each to both.
    for text in ["one", "two", "secret-words"] {
        send(&mut alice, text).await;
        assert!(recv_text(&mut alice).await.ends_with(&format!("{text:?}")));
        assert!(recv_text(&mut bob).await.ends_with(&format!("{text:?}")));
    }
    // Alice closes properly; Bob's connection just drops.
    close_and_read_to_end(alice).await;
    drop(bob);
    server.stderr.wait_for_events("disconnected", 2).await;

    let scrapes = std::sync::atomic::AtomicU32::new(0);
    // A connection is counted open until its task has quite ended, a moment after
    // its last log line: wait until only the scrape itself is open (so
    // `chat_connections_open` is 1, or this times out).
    let metrics = tokio::time::timeout(WAIT, async {
        loop {
            let metrics = scrape(&server).await;
            scrapes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if sample(&metrics, "chat_connections_open") == Some(1.0) {
                return metrics;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the connections closed in time");
    // The health check, and every scrape but the last (which is counted once it
    // is answered, after it was rendered).
    let answered = f64::from(scrapes.load(std::sync::atomic::Ordering::Relaxed));
    for (name, value) in [
        ("chat_connections_total{outcome=\"upgraded\"}", 2.0),
        ("chat_connections_total{outcome=\"refused\"}", 2.0),
        ("chat_connections_total{outcome=\"answered\"}", answered),
        ("chat_refusals_total{status=\"401\"}", 1.0),
        ("chat_refusals_total{status=\"426\"}", 1.0),
        ("chat_messages_received_total", 3.0),
        ("chat_deliveries_total", 6.0),
        ("chat_disconnections_total{reason=\"client_closed\"}", 1.0),
        ("chat_disconnections_total{reason=\"lost\"}", 1.0),
        ("chat_disconnections_total{reason=\"flood\"}", 0.0),
        ("chat_rooms_open", 0.0),
        ("chat_delivery_latency_seconds_count", 6.0),
    ] {
        assert_eq!(sample(&metrics, name), Some(value), "{name} in\n{metrics}");
    }
    let log = server.stderr.all().join("\n");
    for secret in ["s3cret", "secret-words"] {
        assert!(!metrics.contains(secret), "{secret} in the metrics");
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

/// Opens a WebSocket with extra request headers and reads the welcome.
async fn connect_with(url: &str, headers: &str) -> Ws {
    let uri: http::Uri = url.parse().expect("url");
    let mut builder = tokio_websockets::ClientBuilder::from_uri(uri.clone());
    for header in headers.split("\r\n").filter(|h| !h.is_empty()) {
        let (name, value) = header.split_once(": ").expect("a header");
        builder = builder
            .add_header(
                http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                http::HeaderValue::from_str(value).expect("value"),
            )
            .expect("header");
    }
    let tcp = tokio::net::TcpStream::connect(format!(
        "{}:{}",
        uri.host().expect("host"),
        uri.port_u16().expect("port")
    ))
    .await
    .expect("connect");
    let (mut ws, _) = tokio::time::timeout(WAIT, builder.connect_on(tcp))
        .await
        .expect("upgrade in time")
        .expect("upgrade");
    assert_eq!(recv_text(&mut ws).await, "Welcome to chat! Type a message");
    ws
}

#[tokio::test]
async fn a_separate_metrics_address_serves_the_metrics_and_the_chat_port_does_not() {
    let server = Server::start(&["--metrics-listen", "127.0.0.1:0"]).await;
    let metrics_addr = metrics_addr(&server).await;
    let here = raw_exchange(metrics_addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(here.starts_with("HTTP/1.1 200 OK\r\n"), "{here}");
    assert!(
        here.contains("# TYPE chat_connections_total counter"),
        "{here}"
    );
    let other = raw_exchange(metrics_addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(other.starts_with("HTTP/1.1 404 "), "{other}");
    let chat_port = scrape(&server).await;
    assert!(chat_port.starts_with("HTTP/1.1 404 "), "{chat_port}");
    assert!(
        chat_port.ends_with("the metrics are served on the --metrics-listen address\n"),
        "{chat_port}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(has_prometheus),
    ignore = "needs prometheus (apt-get install prometheus)"
)]
async fn a_real_prometheus_scrapes_the_server() {
    let server = Server::start(&[]).await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for Prometheus");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: chat\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            server.port
        ),
    )
    .expect("write the config");
    let web = free_port();
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");
    let log = Lines::follow(prometheus.stderr.take().expect("stderr"));
    log.wait_for("Server is ready to receive web requests.")
        .await;

    // Three chatters: Prometheus must read the count back, from a scrape made
    // after all three had connected.
    let _chatters = [
        connect(&server.url()).await,
        connect(&server.url()).await,
        connect(&server.url()).await,
    ];
    let connected = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    let prometheus_addr = std::net::SocketAddr::from(([127, 0, 0, 1], web));
    let query = "GET /api/v1/query?query=chat_connections_total%7Boutcome%3D%22upgraded%22%7D HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let value = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let answer = raw_exchange(prometheus_addr, query.as_bytes()).await;
            let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
            // The newest sample: [its scrape's time in seconds, "value"].
            let sample = &json["data"]["result"][0]["value"];
            if let (Some(scraped), Some(value)) = (sample[0].as_f64(), sample[1].as_str())
                && scraped > connected
            {
                return value.to_owned();
            }
            // Prometheus scrapes each second; ask again a little later.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("Prometheus scraped the server within 30 s");
    assert_eq!(value, "3");
    let _ = prometheus.start_kill();
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_documented_fields() {
    let mut server = Server::start(&["--log-format", "json", "--token", "t0ken"]).await;
    let mut ws = connect_with(&server.url(), "Authorization: Bearer t0ken\r\n").await;
    send(&mut ws, "never-logged").await;
    recv_text(&mut ws).await;
    close_and_read_to_end(ws).await;
    server.stderr.wait_for("\"message\":\"disconnected\"").await;
    server.terminate();
    assert_eq!(server.wait().await.code(), Some(0));
    let lines = server.stderr.complete().await;
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let connected = events
        .iter()
        .find(|e| e["message"] == "connected")
        .expect("a connected event");
    for field in [
        "timestamp",
        "level",
        "target",
        "addr",
        "who",
        "room",
        "clients",
    ] {
        assert!(!connected[field].is_null(), "no {field} in {connected}");
    }
    assert_eq!(connected["level"], "INFO");
    assert_eq!(connected["room"], "/");
    let disconnected = events
        .iter()
        .find(|e| e["message"] == "disconnected")
        .expect("a disconnected event");
    assert_eq!(disconnected["reason"], "closed by client");
    let all = lines.join("\n");
    assert!(
        !all.contains("t0ken") && !all.contains("never-logged"),
        "{all}"
    );
}

/// The reasons `chat_disconnections_total` counts.
const REASONS: [&str; 7] = [
    "client_closed",
    "lost",
    "write_timeout",
    "keepalive",
    "flood",
    "shutdown",
    "protocol",
];

/// The disconnections the metrics count, by reason, as `(reason, count)`.
fn disconnections(metrics: &str) -> Vec<(&'static str, Option<f64>)> {
    REASONS
        .into_iter()
        .map(|reason| {
            let name = format!("chat_disconnections_total{{reason=\"{reason}\"}}");
            (reason, sample(metrics, &name))
        })
        .collect()
}

/// Every reason 0 but `reason`, 1.
fn only(reason: &str) -> Vec<(&'static str, Option<f64>)> {
    REASONS
        .into_iter()
        .map(|r| (r, Some(if r == reason { 1.0 } else { 0.0 })))
        .collect()
}

#[tokio::test]
async fn each_disconnection_reason_is_counted() {
    // Protocol: a binary frame.
    let server = Server::start(&[]).await;
    let mut ws = connect(&server.url()).await;
    futures_util::SinkExt::send(&mut ws, tokio_websockets::Message::binary(&b"\x00"[..]))
        .await
        .expect("send");
    assert_eq!(recv_close(&mut ws).await.0, 1003);
    server.stderr.wait_for_event("disconnected").await;
    assert_eq!(disconnections(&scrape(&server).await), only("protocol"));

    // Flood: over the rate until closed.
    let server = Server::start(&[
        "--max-rate",
        "1",
        "--max-burst",
        "1",
        "--flood-timeout",
        "200ms",
    ])
    .await;
    let (flood, mut heard) = chatter(connect(&server.url()).await);
    let closed = server.stderr.wait_for_event("disconnected");
    tokio::pin!(closed);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = &mut closed => break,
            _ = tick.tick() => { let _ = flood.send("flood".to_owned()); }
            Some(_) = heard.recv() => {}
        }
    }
    assert_eq!(disconnections(&scrape(&server).await), only("flood"));

    // Keepalive: a client that answers nothing, not even pings.
    let server = Server::start(&["--ping-interval", "200ms"]).await;
    let _silent = connect(&server.url()).await;
    server.stderr.wait_for_event("disconnected").await;
    assert_eq!(disconnections(&scrape(&server).await), only("keepalive"));

    // Write timeout: a client that stops reading while others talk.
    let server = Server::start(&["--write-timeout", "300ms", "--max-rate", "0"]).await;
    let _stuck = connect(&server.url()).await;
    let mut talker = connect(&server.url()).await;
    let big = "x".repeat(60_000);
    let dropped = server.stderr.wait_for_event("disconnected");
    tokio::pin!(dropped);
    loop {
        tokio::select! {
            _ = &mut dropped => break,
            () = async {
                send(&mut talker, &big).await;
                recv_text(&mut talker).await;
            } => {}
        }
    }
    assert_eq!(
        disconnections(&scrape(&server).await),
        only("write_timeout")
    );
}

#[tokio::test]
async fn a_shutdown_is_counted_while_the_close_handshakes_are_awaited() {
    let server =
        Server::start(&["--metrics-listen", "127.0.0.1:0", "--close-timeout", "10s"]).await;
    let metrics_addr = metrics_addr(&server).await;
    // Never polled: the server waits for its close handshake, and serves the
    // metrics meanwhile.
    let _deaf = connect(&server.url()).await;
    server.stderr.wait_for_event("connected").await;
    server.terminate();
    server.stderr.wait_for_event("shutting down").await;
    let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let counted = tokio::time::timeout(WAIT, async {
        loop {
            let metrics = raw_exchange(metrics_addr, request).await;
            if disconnections(&metrics) == only("shutdown") {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(counted.is_ok(), "no shutdown counted alone");
}

#[tokio::test]
async fn the_log_counters_move_exactly() {
    let server =
        Server::start(&["--max-rate", "0", "--history", "2", "--resume-window", "3"]).await;
    let room = format!("{}/rust", server.url());
    let (mut watcher, welcome) = connect_structured(&room).await;
    let epoch = welcome["epoch"].as_str().expect("an epoch").to_owned();
    let mut talker = connect(&room).await;
    // Five lines; the log keeps the last three. Their two encodings, as sent.
    let (mut classic, mut structured) = (Vec::new(), Vec::new());
    for i in 1..=5 {
        send(&mut talker, &format!("m{i}")).await;
        classic.push(recv_text(&mut talker).await);
        structured.push(recv_text(&mut watcher).await);
    }
    let metrics = scrape(&server).await;
    let kept: usize = classic[2..]
        .iter()
        .chain(&structured[2..])
        .map(String::len)
        .sum();
    let log_bytes = sample(&metrics, "chat_log_bytes").expect("chat_log_bytes") as usize;
    // Both encodings of each message kept, and the same bookkeeping for each.
    assert!(log_bytes > kept, "{log_bytes} bytes for {kept} of text");
    assert_eq!(
        (log_bytes - kept) % 3,
        0,
        "{log_bytes} bytes for {kept} of text"
    );
    assert!(
        (log_bytes - kept) / 3 < 256,
        "{log_bytes} bytes for {kept} of text"
    );

    // A newcomer gets two (--history); a return after offset 3 gets two; a
    // return from the start gets the three the log holds and is told of two lost.
    let mut newcomer = connect(&room).await;
    assert_eq!(recv_text(&mut newcomer).await, classic[3]);
    let (mut back, _) = connect_structured(&format!("{room}?epoch={epoch}&after=3")).await;
    assert_eq!(recv_json(&mut back).await["offset"], 4);
    assert_eq!(recv_json(&mut back).await["offset"], 5);
    assert_eq!(recv_json(&mut back).await["complete"], true);
    let mut far = connect(&format!("{room}?epoch={epoch}&after=0")).await;
    assert_eq!(recv_text(&mut far).await, classic[2]);
    assert_eq!(recv_text(&mut far).await, classic[3]);
    assert_eq!(recv_text(&mut far).await, classic[4]);
    assert_eq!(
        recv_text(&mut far).await,
        "* you missed 2 messages while you were away"
    );
    let metrics = scrape(&server).await;
    assert_eq!(sample(&metrics, "chat_messages_replayed_total"), Some(7.0));
    assert_eq!(sample(&metrics, "chat_messages_missed_total"), Some(2.0));

    // The room goes with its last member, and its log with it.
    for ws in [watcher, talker, newcomer, back, far] {
        close_and_read_to_end(ws).await;
    }
    server.stderr.wait_for_events("disconnected", 5).await;
    let metrics = scrape(&server).await;
    assert_eq!(sample(&metrics, "chat_rooms_open"), Some(0.0));
    assert_eq!(sample(&metrics, "chat_log_bytes"), Some(0.0));
}

#[tokio::test]
async fn lines_over_the_rate_are_counted() {
    // A burst of 5 and no new allowance within the test.
    let server = Server::start(&["--max-rate", "0.01", "--max-burst", "5"]).await;
    let mut flooder = connect(&server.url()).await;
    for i in 1..=8 {
        send(&mut flooder, &format!("f{i}")).await;
    }
    // Every frame before the close has been taken when the close is answered.
    close_and_read_to_end(flooder).await;
    server.stderr.wait_for_event("disconnected").await;
    let metrics = scrape(&server).await;
    assert_eq!(sample(&metrics, "chat_messages_received_total"), Some(5.0));
    assert_eq!(
        sample(&metrics, "chat_messages_rate_limited_total"),
        Some(3.0)
    );
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn the_redis_metrics_follow_an_outage_of_one_instance() {
    let redis = RedisServer::start().await;
    // B reaches Redis through a proxy the test cuts: only B is cut off.
    let proxy = Proxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
    let a = Server::start(&["--redis-url", &redis.url(), "--max-rate", "0"]).await;
    let through = format!("redis://127.0.0.1:{}", proxy.port);
    let b = Server::start(&["--redis-url", &through, "--max-rate", "0"]).await;
    let (mut watcher, _) = connect_structured(&format!("{}/rust", b.url())).await;
    let mut talker = connect(&format!("{}/rust", a.url())).await;
    let message = |frame: &serde_json::Value| frame["type"] == "message";
    send(&mut talker, "m1").await;
    recv_text(&mut talker).await;
    assert_eq!(recv_json(&mut watcher).await["text"], "m1");
    let before = scrape(&b).await;
    for (name, value) in [
        ("chat_redis_up", 1.0),
        ("chat_redis_errors_total", 0.0),
        ("chat_redis_recovered_messages_total", 0.0),
    ] {
        assert_eq!(sample(&before, name), Some(value), "{name} in\n{before}");
    }

    proxy.set_down(true);
    proxy.sever();
    b.stderr.wait_for_event(REDIS_DOWN).await;
    let during = scrape(&b).await;
    assert_eq!(sample(&during, "chat_redis_up"), Some(0.0), "{during}");
    let errors = sample(&during, "chat_redis_errors_total").expect("errors");
    assert!(errors >= 1.0, "{during}");
    // Five lines on A while B is cut off: B fetches them from the stream once back.
    for i in 2..=6 {
        send(&mut talker, &format!("m{i}")).await;
        recv_text(&mut talker).await;
    }
    proxy.set_down(false);
    b.stderr.wait_for_event(REDIS_BACK).await;
    let mut caught_up = Vec::new();
    while caught_up.len() < 5 {
        let frame = recv_json(&mut watcher).await;
        if message(&frame) {
            caught_up.push(frame["text"].as_str().expect("a text").to_owned());
        }
    }
    assert_eq!(caught_up, ["m2", "m3", "m4", "m5", "m6"]);
    let after = scrape(&b).await;
    assert_eq!(sample(&after, "chat_redis_up"), Some(1.0), "{after}");
    assert_eq!(
        sample(&after, "chat_redis_recovered_messages_total"),
        Some(5.0),
        "{after}"
    );
    assert_eq!(
        sample(&scrape(&a).await, "chat_redis_errors_total"),
        Some(0.0),
        "A was never cut off"
    );
}

/// The `--metrics-listen` address the server logged it serves `/metrics` on.
async fn metrics_addr(server: &Server) -> std::net::SocketAddr {
    let line = server.stderr.wait_for_event("serving /metrics").await;
    line.split("addr=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"))
}

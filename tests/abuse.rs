//! Bad input and bad peers: each gets its defined outcome and nobody else notices.

mod common;

use bytes::Bytes;
use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_websockets::{ClientBuilder, Message};

/// A WebSocket whose receive buffer is tiny, so that the server's writes to it
/// back up as soon as it stops reading.
async fn connect_small_window(server: &Server) -> Ws {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("set SO_RCVBUF");
    let stream = timeout(WAIT, socket.connect(server.addr()))
        .await
        .expect("connect in time")
        .expect("connect");
    let uri: http::Uri = server.url().parse().expect("url");
    let (ws, _) = timeout(WAIT, ClientBuilder::from_uri(uri).connect_on(stream))
        .await
        .expect("upgrade in time")
        .expect("upgrade");
    ws
}

/// Sends `count` messages of `size` bytes, each only after the previous one came
/// back, so the sender itself never falls behind.
async fn send_paced(sender: &mut Ws, count: usize, size: usize) {
    for i in 0..count {
        let text = format!("{i:06}{}", "x".repeat(size));
        send(sender, &text).await;
        assert_eq!(recv_text(sender).await, tagged(sender, &text));
    }
}

/// What a laggard read until `until`: the message numbers in order, and the sum of
/// the counts in missed-count notices.
async fn read_as_laggard(laggard: &mut Ws, until: &str) -> (Vec<u64>, u64) {
    let (mut received, mut missed) = (Vec::new(), 0u64);
    loop {
        let text = recv_text(laggard).await;
        if text == until {
            return (received, missed);
        }
        if let Some(rest) = text.strip_prefix("* you missed ") {
            missed += rest
                .split(' ')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .expect("a count");
        } else {
            let number = text.split(": \"").nth(1).and_then(|t| t.get(..6));
            received.push(
                number
                    .and_then(|n| n.parse().ok())
                    .expect("a numbered message"),
            );
        }
    }
}

/// A laggard that stops reading while a sender sends 200 messages of 32 KiB (more
/// than the kernel buffers between server and laggard hold, so the laggard's
/// session blocks and its channel overflows), then "after"; returns the laggard
/// and what it read up to "after" (see [`read_as_laggard`]).
async fn fall_behind(server: &Server) -> (Ws, Vec<u64>, u64) {
    let mut laggard = connect_small_window(server).await;
    assert_eq!(
        recv_text(&mut laggard).await,
        "Welcome to chat! Type a message"
    );
    let mut sender = connect(&server.url()).await;
    send_paced(&mut sender, 200, 32 * 1024).await;
    send(&mut sender, "after").await;
    let (received, missed) = read_as_laggard(&mut laggard, &tagged(&sender, "after")).await;
    (laggard, received, missed)
}

#[tokio::test]
async fn a_lagging_classic_client_gets_every_message_from_the_log_and_stays() {
    // A channel of 16 overflows at once; a log of 32 MiB holds all 200 x 32 KiB
    // messages (both encodings of each).
    let server = Server::start_with_env(
        &[
            "--buffer",
            "16",
            "--max-rate",
            "0",
            "--resume-bytes",
            "33554432",
        ],
        &[("RUST_LOG", "info,broadcast_chat::session=debug")],
    )
    .await;
    let (mut laggard, received, missed) = fall_behind(&server).await;
    // It did fall behind the channel (the session says so at debug level) ...
    server.stderr.wait_for("catching up from the log").await;
    // ... and lost nothing.
    assert_eq!(missed, 0, "nothing was reported missed");
    assert_eq!(
        received,
        (0..200).collect::<Vec<u64>>(),
        "every one, in order"
    );
    // The metrics say so: a lag or more, messages sent from the log, none missed.
    let metrics = metrics(&server).await;
    assert!(metrics("chat_lag_events_total") >= 1.0);
    assert!(metrics("chat_messages_replayed_total") >= 1.0);
    assert_eq!(metrics("chat_messages_missed_total"), 0.0);

    // Still connected: it goes on receiving.
    send(&mut laggard, "still here").await;
    assert_eq!(
        recv_text(&mut laggard).await,
        tagged(&laggard, "still here")
    );
}

#[tokio::test]
async fn a_client_further_behind_than_the_log_is_told_the_exact_count() {
    let server =
        Server::start(&["--buffer", "16", "--max-rate", "0", "--resume-window", "32"]).await;
    let (_laggard, received, missed) = fall_behind(&server).await;
    assert!(missed > 0, "the laggard was never told it missed anything");
    assert_eq!(
        received.len() as u64 + missed,
        200,
        "every message is either delivered or counted as missed"
    );
    assert!(received.is_sorted(), "in order: {received:?}");
    // The metrics count what it was told it missed, exactly.
    let metrics = metrics(&server).await;
    assert!(metrics("chat_lag_events_total") >= 1.0);
    assert_eq!(metrics("chat_messages_missed_total"), missed as f64);
}

/// The server's metrics, as a function from a sample's name to its value.
async fn metrics(server: &Server) -> impl Fn(&str) -> f64 {
    let text = raw_exchange(server.addr(), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    move |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }
}

#[tokio::test]
async fn client_that_never_reads_does_not_stop_others_and_is_dropped() {
    let server = Server::start(&["--write-timeout", "1s", "--max-rate", "0"]).await;
    let mut stuck = connect_small_window(&server).await;
    let mut sender = connect(&server.url()).await;
    let mut healthy = reader(connect(&server.url()).await);

    send_paced(&mut sender, 200, 32 * 1024).await;
    for i in 0..200 {
        let text = next(&mut healthy).await;
        assert!(
            text.contains(&format!("\"{i:06}x")),
            "message {i} out of order: {}",
            &text[..40]
        );
    }
    server.stderr.wait_for("write timed out").await;
    // The stuck client's connection was cut: reading on ends without a close handshake.
    read_to_end(&mut stuck).await;

    send(&mut sender, "life goes on").await;
    assert_eq!(next(&mut healthy).await, tagged(&sender, "life goes on"));
}

/// Connects a client that misbehaves with `bad`, checks it is closed with `code`,
/// and that two bystanders chat on undisturbed.
async fn misbehave_and_expect_close(args: &[&str], bad: Message, code: u16) {
    let server = Server::start(args).await;
    let mut alice = connect(&server.url()).await;
    let mut bob = connect(&server.url()).await;
    let mut bad_client = connect(&server.url()).await;

    let _ = bad_client.send(bad).await;
    let (got, _reason) = recv_close(&mut bad_client).await;
    assert_eq!(got, code);

    send(&mut alice, "still chatting").await;
    let expected = tagged(&alice, "still chatting");
    assert_eq!(
        recv_text(&mut bob).await,
        expected,
        "bob got something else first"
    );
    assert_eq!(recv_text(&mut alice).await, expected);
}

#[tokio::test]
async fn oversized_message_gets_1009_while_others_keep_chatting() {
    misbehave_and_expect_close(
        &["--max-message-size", "1024"],
        Message::text("x".repeat(2000)),
        1009,
    )
    .await;
}

#[tokio::test]
async fn binary_message_gets_1003_while_others_keep_chatting() {
    misbehave_and_expect_close(&[], Message::binary(Bytes::from_static(b"\x00\x01")), 1003).await;
}

#[tokio::test]
async fn invalid_utf8_gets_1007_while_others_keep_chatting() {
    // `Message::text` does not check its payload, so this sends a text frame of bad UTF-8.
    misbehave_and_expect_close(&[], Message::text(Bytes::from_static(b"ok \xff\xfe")), 1007).await;
}

#[tokio::test]
async fn binary_close_reason_says_to_send_text() {
    let server = Server::start(&[]).await;
    let mut ws = connect(&server.url()).await;
    ws.send(Message::binary(Bytes::from_static(b"x")))
        .await
        .expect("send");
    assert_eq!(
        recv_close(&mut ws).await,
        (
            1003,
            "binary messages are not supported; send text".to_owned()
        )
    );
}

#[tokio::test]
async fn plain_http_garbage_and_stalled_handshakes_do_not_disturb_the_server() {
    let server = Server::start(&["--handshake-timeout", "500ms"]).await;
    let mut alice = connect(&server.url()).await;

    let stalled = TcpStream::connect(server.addr()).await.expect("connect");
    let mut stalled = stalled;
    stalled
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");

    let http = raw_exchange(server.addr(), b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(
        http.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
        "{http}"
    );
    assert!(
        http.ends_with("connect with a WebSocket client such as `cargo run --bin client`\n"),
        "{http}"
    );

    let garbage = raw_exchange(server.addr(), b"\x16\x03\x01\x00\xa5garbage\r\n\r\n").await;
    assert!(
        garbage.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{garbage}"
    );

    // The stalled handshake is cut once the handshake timeout passes.
    let mut rest = Vec::new();
    timeout(WAIT, stalled.read_to_end(&mut rest))
        .await
        .expect("stalled connection closed in time")
        .expect("read");
    assert!(
        rest.is_empty(),
        "a stalled handshake gets no answer: {rest:?}"
    );
    server.stderr.wait_for("handshake timed out").await;

    // Meanwhile chat goes on, for old and new clients.
    let mut bob = connect(&server.url()).await;
    send(&mut alice, "unbothered").await;
    assert_eq!(recv_text(&mut bob).await, tagged(&alice, "unbothered"));
}

#[tokio::test]
async fn silent_peer_is_dropped_by_keepalive_and_live_ones_stay() {
    let server = Server::start(&["--ping-interval", "300ms"]).await;
    // Never polled, so it never answers a ping: a half-open peer as far as the server can tell.
    let mut silent = connect(&server.url()).await;
    // Always polled, so it answers pings, but never says anything itself.
    let listener = connect(&server.url()).await;
    let listener_addr = local_addr(&listener);
    let mut heard = reader(listener);
    let talker = connect(&server.url()).await;
    let talker_line = tagged(&talker, "are you there?");
    let (talk, _talker_rx) = chatter(talker);

    server.stderr.wait_for("keepalive timed out").await;
    let texts = read_to_end(&mut silent).await;
    assert_eq!(
        texts,
        Vec::<String>::new(),
        "only pings reached the silent peer after the welcome"
    );

    // Several more intervals pass while the live clients stay: the server's pings
    // went out and came back, and they are still here.
    for round in 0..5 {
        talk.send("are you there?".to_owned())
            .expect("talker alive");
        assert_eq!(next(&mut heard).await, talker_line, "round {round}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert_eq!(
        server
            .stderr
            .all()
            .iter()
            .filter(|l| l.contains("keepalive timed out"))
            .count(),
        1,
        "only the silent peer was dropped"
    );
    assert!(
        !server
            .stderr
            .all()
            .iter()
            .any(|l| l.contains(&listener_addr.to_string()) && log_event(l) == Some("disconnected"))
    );
}

#[tokio::test]
async fn an_oversized_request_head_gets_431_and_others_keep_chatting() {
    let server = Server::start(&[]).await;
    let mut alice = connect(&server.url()).await;
    let mut bob = connect(&server.url()).await;

    let big = upgrade_request("/", &format!("X-Padding: {}\r\n", "x".repeat(9000)));
    let answer = raw_exchange(server.addr(), big.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with("\r\n\r\nrequest head too large\n"),
        "{answer}"
    );

    let many: String = (0..40).map(|i| format!("X-Header-{i}: {i}\r\n")).collect();
    let answer = raw_exchange(server.addr(), upgrade_request("/", &many).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\ntoo many header lines\n"),
        "{answer}"
    );

    send(&mut alice, "unbothered").await;
    assert_eq!(recv_text(&mut bob).await, tagged(&alice, "unbothered"));
}

#[tokio::test]
async fn a_protocol_violation_gets_1002_and_others_keep_chatting() {
    let server = Server::start(&[]).await;
    let mut alice = connect(&server.url()).await;
    let mut bob = connect(&server.url()).await;

    // A text frame with a reserved bit set (RSV1, no extension agreed): a violation.
    let mut tcp = TcpStream::connect(server.addr()).await.expect("connect");
    tcp.write_all(upgrade_request("/", "").as_bytes())
        .await
        .expect("upgrade request");
    let mut head = Vec::new();
    timeout(WAIT, async {
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.expect("read the answer"));
        }
    })
    .await
    .expect("an answer in time");
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    tcp.write_all(&[0xc1, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2])
        .await
        .expect("the bad frame");
    let mut rest = Vec::new();
    timeout(WAIT, tcp.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("read");
    // The welcome frame, then a close frame with 1002.
    let close = rest
        .windows(4)
        .position(|w| w[0] == 0x88 && w[2..4] == 1002u16.to_be_bytes())
        .unwrap_or_else(|| panic!("no close frame with 1002 in {rest:?}"));
    assert!(close > 0, "the welcome came first: {rest:?}");

    send(&mut alice, "unbothered").await;
    assert_eq!(recv_text(&mut bob).await, tagged(&alice, "unbothered"));
}

#[tokio::test]
async fn sigterm_exits_zero_even_when_a_client_never_answers_the_close() {
    let mut server = Server::start(&["--close-timeout", "500ms"]).await;
    // Never polled: it neither reads the close frame nor answers it.
    let _deaf = connect(&server.url()).await;
    server.stderr.wait_for_event("connected").await;
    server.terminate();
    // Its exact timing is checked with a paused clock in tests/timeouts.rs.
    assert_eq!(server.wait().await.code(), Some(0));
}

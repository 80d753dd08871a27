//! Bad input and bad peers: each gets its defined outcome and nobody else notices.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_websockets::Message;

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
    server
        .stderr
        .wait_for_event("fell behind the channel; catching up from the log")
        .await;
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
async fn a_client_that_never_reads_costs_bounded_memory_stops_nobody_and_is_dropped() {
    const TIMEOUT: Duration = Duration::from_secs(3);
    // A close handshake, which it would never answer, would take --close-timeout
    // more: long, so that trying one shows in the timing.
    let server = Server::start(&[
        "--buffer",
        "64",
        "--write-timeout",
        "3s",
        "--close-timeout",
        "30s",
        "--max-rate",
        "0",
    ])
    .await;
    let mut stuck = connect_small_window(&server).await;
    let stuck_addr = local_addr(&stuck).to_string();
    let mut sender = connect(&server.url()).await;
    let mut healthy = reader(connect(&server.url()).await);
    let before = rss_kb(server.pid());

    // 1000 x 32 KiB = 32 MiB goes through while the stuck client reads nothing.
    let started = Instant::now();
    send_paced(&mut sender, 1000, 32 * 1024).await;
    let sent = Instant::now();
    let grown = rss_kb(server.pid()).saturating_sub(before);
    // The channel holds 64 messages (2 MiB); the stuck session at most its write buffer.
    assert!(
        grown < 16 * 1024,
        "server memory grew by {grown} kB while 32 MiB went past a stuck client"
    );
    for i in 0..1000 {
        let text = next(&mut healthy).await;
        assert!(
            text.contains(&format!("\"{i:06}x")),
            "message {i} out of order: {}",
            &text[..40]
        );
    }

    // Dropped once a write to it waited the write timeout (timed exactly on a paused
    // clock by a_client_that_stops_reading_is_dropped_at_the_write_timeout in
    // tests/timeouts.rs): its writes stalled after `started` and before `sent`. The
    // upper bound leaves a loaded machine seconds to spare.
    let line = server
        .stderr
        .wait_for_event_with(
            "disconnected",
            &[("addr", &stuck_addr), ("reason", "write timed out")],
        )
        .await;
    let dropped = server.stderr.arrival(&line);
    assert!(
        dropped >= started + TIMEOUT,
        "dropped {:?} after the first write",
        dropped - started
    );
    assert!(
        dropped < sent + TIMEOUT + Duration::from_secs(5),
        "dropped {:?} after the last write",
        dropped.saturating_duration_since(sent)
    );
    // Its connection was cut: what the kernel held, then the end, no close frame.
    assert_eq!(read_to_end(&mut stuck).await.close, None);

    send(&mut sender, "life goes on").await;
    assert_eq!(next(&mut healthy).await, tagged(&sender, "life goes on"));
}

/// Connects a client that misbehaves with `bad`, checks it is closed with `code`,
/// and that two bystanders chat on undisturbed; returns the close frame's reason.
async fn misbehave_and_expect_close(args: &[&str], bad: Message, code: u16) -> String {
    let server = Server::start(args).await;
    let mut alice = connect(&server.url()).await;
    let mut bob = connect(&server.url()).await;
    let mut bad_client = connect(&server.url()).await;

    let _ = bad_client.send(bad).await;
    let (got, reason) = recv_close(&mut bad_client).await;
    assert_eq!(got, code);

    send(&mut alice, "still chatting").await;
    let expected = tagged(&alice, "still chatting");
    assert_eq!(
        recv_text(&mut bob).await,
        expected,
        "bob got something else first"
    );
    assert_eq!(recv_text(&mut alice).await, expected);
    reason
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
async fn binary_message_gets_1003_saying_to_send_text_while_others_keep_chatting() {
    let reason =
        misbehave_and_expect_close(&[], Message::binary(Bytes::from_static(b"\x00\x01")), 1003)
            .await;
    assert_eq!(reason, "binary messages are not supported; send text");
}

#[tokio::test]
async fn invalid_utf8_gets_1007_while_others_keep_chatting() {
    // `Message::text` does not check its payload, so this sends a text frame of bad UTF-8.
    misbehave_and_expect_close(&[], Message::text(Bytes::from_static(b"ok \xff\xfe")), 1007).await;
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
    server.stderr.wait_for_event("handshake timed out").await;

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
    let silent_addr = local_addr(&silent).to_string();
    // Always polled, so it answers pings, but never says anything itself: it counts
    // the server's pings as they come.
    let mut listener = connect(&server.url()).await;
    let (pings_tx, mut pings) = tokio::sync::watch::channel(0u32);
    let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = listener.next().await {
            if message.is_ping() {
                pings_tx.send_modify(|n| *n += 1);
            } else if let Some(text) = message.as_text() {
                let _ = heard_tx.send(text.to_owned());
            }
        }
    });
    let talker = connect(&server.url()).await;
    let talker_line = tagged(&talker, "are you there?");
    let (talk, _talker_rx) = chatter(talker);

    server
        .stderr
        .wait_for_event_with(
            "disconnected",
            &[("addr", &silent_addr), ("reason", "keepalive timed out")],
        )
        .await;
    // Only pings reached it after the welcome, and no close frame: it would not read one.
    assert_eq!(read_to_end(&mut silent).await, Ended::default());

    // Five more intervals pass (five more pings to the quiet listener, each
    // answered) while the live clients stay.
    let seen = *pings.borrow();
    timeout(WAIT, pings.wait_for(|n| *n >= seen + 5))
        .await
        .expect("pings in time")
        .expect("listener alive");
    talk.send("are you there?".to_owned())
        .expect("talker alive");
    assert_eq!(next(&mut heard).await, talker_line);
    let log = server.stderr.all();
    let dropped: Vec<_> = log
        .iter()
        .filter(|l| log_event(l) == Some("disconnected"))
        .filter_map(|l| log_field(l, "addr"))
        .collect();
    assert_eq!(
        dropped,
        [silent_addr],
        "only the silent peer was dropped: {log:#?}"
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
    // The welcome frame (FIN, text, unmasked), then a close frame with 1002 and
    // nothing after it.
    let welcome = [&[0x81, WELCOME.len() as u8][..], WELCOME.as_bytes()].concat();
    let close = rest
        .strip_prefix(&welcome[..])
        .unwrap_or_else(|| panic!("the welcome did not come first: {rest:?}"));
    assert!(
        close.len() >= 4
            && close[0] == 0x88
            && usize::from(close[1]) == close.len() - 2
            && close[2..4] == 1002u16.to_be_bytes(),
        "not one close frame with 1002 after the welcome: {close:?}"
    );

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
    // Its exact timing is checked on a paused clock in tests/timeouts.rs
    // (shutdown_ends_within_the_close_timeout_when_a_client_never_answers).
    assert_eq!(server.wait().await.code(), Some(0));
}

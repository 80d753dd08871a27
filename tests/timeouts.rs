//! The server's timeouts, exactly: the library runs in this process on tokio's
//! paused clock, which jumps ahead whenever everything waits, so a 60-second
//! keepalive takes no real time and is measured to the millisecond. (The flood
//! rule's timing is checked the same way, on the rate limit itself, in
//! `src/limits.rs`.)

mod common;

use std::time::Duration;

use broadcast_chat::ServerConfig;
use broadcast_chat::server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A server from the library on a free port, and what stops it.
struct InProcess {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<broadcast_chat::Result<()>>,
}

impl InProcess {
    async fn start(config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, config, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    /// Asks the server to shut down, as SIGTERM does.
    fn shut_down(&mut self) {
        let _ = self.stop.take().expect("not stopped yet").send(());
    }
}

/// Opens a connection and upgrades it by hand, reading the answer's head and the
/// welcome frame; returns the raw TCP stream, which nobody polls unless the test does.
async fn raw_client(addr: std::net::SocketAddr) -> TcpStream {
    upgraded(TcpStream::connect(addr).await.expect("connect"), "").await
}

/// Upgrades `tcp` by hand with the extra header lines `headers`, reading the
/// answer's head and the welcome frame.
async fn upgraded(mut tcp: TcpStream, headers: &str) -> TcpStream {
    tcp.write_all(common::upgrade_request("/", headers).as_bytes())
        .await
        .expect("request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.expect("answer"));
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    let welcome = read_frame(&mut tcp).await.expect("the welcome");
    assert_eq!(welcome, (0x81, b"Welcome to chat! Type a message".to_vec()));
    tcp
}

/// Reads one unmasked frame (as servers send them): its first byte and payload;
/// `None` at the end of the stream.
async fn read_frame(tcp: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let first = tcp.read_u8().await.ok()?;
    let len = match tcp.read_u8().await.ok()? {
        126 => u64::from(tcp.read_u16().await.ok()?),
        127 => tcp.read_u64().await.ok()?,
        n => u64::from(n),
    };
    let mut payload = vec![0; usize::try_from(len).ok()?];
    tcp.read_exact(&mut payload).await.ok()?;
    Some((first, payload))
}

/// Reads frames until the server ends the connection; returns their first bytes.
async fn frames_until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut kinds = Vec::new();
    while let Some((first, _)) = read_frame(tcp).await {
        kinds.push(first);
    }
    kinds
}

const PING: u8 = 0x89;
const CLOSE: u8 = 0x88;

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_pinged_after_one_interval_and_dropped_after_two() {
    let server = InProcess::start(ServerConfig::default()).await;
    let mut silent = raw_client(server.addr).await;
    let start = Instant::now();
    let (first, _) = read_frame(&mut silent).await.expect("a ping");
    assert_eq!(first, PING);
    assert_eq!(start.elapsed().as_secs(), 30, "pinged after one interval");
    // It never answers, so the next tick drops it without a close frame.
    assert_eq!(frames_until_closed(&mut silent).await, Vec::<u8>::new());
    assert_eq!(start.elapsed().as_secs(), 60, "dropped after two intervals");
}

#[tokio::test(start_paused = true)]
async fn a_stalled_handshake_is_cut_at_the_handshake_timeout() {
    let server = InProcess::start(ServerConfig {
        handshake_timeout: Duration::from_secs(10),
        ..ServerConfig::default()
    })
    .await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a request");
    let start = Instant::now();
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).await.expect("read");
    assert!(rest.is_empty(), "a stalled handshake gets no answer");
    assert_eq!(start.elapsed().as_secs(), 10);
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_within_the_close_timeout_when_a_client_never_answers() {
    let mut server = InProcess::start(ServerConfig {
        close_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    })
    .await;
    let mut deaf = raw_client(server.addr).await;
    let start = Instant::now();
    server.shut_down();
    let (first, payload) = read_frame(&mut deaf).await.expect("a close frame");
    assert_eq!(first, CLOSE);
    assert_eq!(&payload[..2], &1001u16.to_be_bytes());
    assert_eq!(&payload[2..], b"server shutting down");
    // The client never answers the close; the server gives up on it and returns.
    let result = server.task.await.expect("server task");
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(start.elapsed().as_secs(), 2, "{:?}", start.elapsed());
}

/// Sends a text frame over a raw client connection (masked, as clients must).
async fn send_raw(tcp: &mut TcpStream, text: &str) {
    tcp.write_all(&text_frame(text)).await.expect("send");
}

/// A text frame of at most 64 KiB as a client sends it: masked, with a zero mask.
fn text_frame(text: &str) -> Vec<u8> {
    let mut frame = vec![0x81];
    match u8::try_from(text.len()) {
        Ok(len) if len < 126 => frame.push(0x80 | len),
        _ => {
            frame.push(0x80 | 126);
            let len = u16::try_from(text.len()).expect("at most 64 KiB");
            frame.extend_from_slice(&len.to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(text.as_bytes());
    frame
}

/// A server with `config` and no rate limit (the timing tests send in bursts), and
/// two raw clients: the one whose writes are watched, then the one that talks.
async fn delayed(config: ServerConfig) -> (InProcess, TcpStream, TcpStream) {
    let server = InProcess::start(ServerConfig {
        max_rate: 0.0,
        ..config
    })
    .await;
    let watched = raw_client(server.addr).await;
    let talker = raw_client(server.addr).await;
    (server, watched, talker)
}

#[tokio::test(start_paused = true)]
async fn the_write_delay_holds_a_message_no_longer_than_the_delay() {
    let delay = Duration::from_millis(10);
    let (_server, mut reader, mut sender) = delayed(ServerConfig {
        write_delay: delay,
        ..ServerConfig::default()
    })
    .await;

    // Messages further apart than the delay go out at once: nothing to gather.
    for text in ["first", "second"] {
        tokio::time::sleep(Duration::from_millis(15)).await;
        let start = Instant::now();
        send_raw(&mut sender, text).await;
        expect_line(&mut reader, text).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "{text} written at once");
    }

    // One within the delay of the last write goes at once too, and starts a rest:
    // what follows within the delay waits for the rest's end, no longer ...
    tokio::time::sleep(Duration::from_millis(2)).await;
    let start = Instant::now();
    send_raw(&mut sender, "third").await;
    expect_line(&mut reader, "third").await;
    assert_eq!(start.elapsed(), Duration::ZERO, "third written at once");
    tokio::time::sleep(Duration::from_millis(2)).await;
    send_raw(&mut sender, "fourth").await;
    expect_line(&mut reader, "fourth").await;
    assert_eq!(
        start.elapsed(),
        delay,
        "held until the delay after the last write"
    );

    // ... and after a quiet spell longer than the delay, the next goes at once again.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let quiet = Instant::now();
    send_raw(&mut sender, "fifth").await;
    expect_line(&mut reader, "fifth").await;
    assert_eq!(quiet.elapsed(), Duration::ZERO, "written at once");
}

/// Two lines from `sender` that `reader` gets in quick succession: the second write
/// comes within any delay of the first, so `reader`'s session rests after it.
async fn start_a_rest(sender: &mut TcpStream, reader: &mut TcpStream) {
    for text in ["warm 1", "warm 2"] {
        send_raw(sender, text).await;
        expect_line(reader, text).await;
    }
}

/// Reads one frame and checks that its text ends with `quoted` (`"text"`, as the
/// classic tag quotes it).
async fn expect_line(tcp: &mut TcpStream, text: &str) {
    let (_, payload) = read_frame(tcp).await.expect(text);
    let quoted = format!("\"{text}\"");
    assert!(
        payload.ends_with(quoted.as_bytes()),
        "expected {quoted}, got {:?}",
        String::from_utf8_lossy(&payload)
    );
}

#[tokio::test(start_paused = true)]
async fn the_write_delay_never_holds_a_clients_own_line() {
    let (_server, mut member, mut other) = delayed(ServerConfig {
        write_delay: Duration::from_secs(1),
        ..ServerConfig::default()
    })
    .await;

    // The member's session rests; what the other says meanwhile waits ...
    start_a_rest(&mut other, &mut member).await;
    expect_line(&mut other, "warm 1").await;
    expect_line(&mut other, "warm 2").await;
    let start = Instant::now();
    send_raw(&mut other, "second").await;
    expect_line(&mut other, "second").await;
    // ... until the member says something: its own copy goes out at once, after
    // what came before it, in order.
    send_raw(&mut member, "mine").await;
    expect_line(&mut member, "second").await;
    expect_line(&mut member, "mine").await;
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "nothing waited for the delay"
    );
}

#[tokio::test(start_paused = true)]
async fn the_write_delay_does_not_rest_after_a_full_batch() {
    let (_server, mut reader, mut sender) = delayed(ServerConfig {
        write_delay: Duration::from_secs(1),
        max_batch: 2,
        ..ServerConfig::default()
    })
    .await;

    // Five lines in one TCP write reach the reader's session while it rests. At
    // the rest's end two batches are full, so more is waiting already and resting
    // again would only delay it: all five go out together.
    start_a_rest(&mut sender, &mut reader).await;
    let delay = Duration::from_secs(1);
    let lines: Vec<u8> = (1..=5)
        .flat_map(|n| text_frame(&format!("line {n}")))
        .collect();
    let start = Instant::now();
    sender.write_all(&lines).await.expect("send");
    for n in 1..=5 {
        expect_line(&mut reader, &format!("line {n}")).await;
    }
    assert_eq!(start.elapsed(), delay, "no rest between full batches");

    // The last batch was not full: the next line waits for another delay.
    send_raw(&mut sender, "later").await;
    expect_line(&mut reader, "later").await;
    assert_eq!(start.elapsed(), 2 * delay, "rested after the last batch");
}

#[tokio::test(start_paused = true)]
async fn the_write_delay_does_not_rest_after_catching_up_from_the_log() {
    let delay = Duration::from_secs(1);
    let (_server, mut reader, mut sender) = delayed(ServerConfig {
        write_delay: delay,
        buffer: 2,
        ..ServerConfig::default()
    })
    .await;

    // The reader rests; five more lines overflow its channel of two meanwhile, so
    // at the rest's end it catches up from the room's log.
    start_a_rest(&mut sender, &mut reader).await;
    let start = Instant::now();
    for n in 1..=5 {
        send_raw(&mut sender, &format!("line {n}")).await;
    }
    for n in 1..=5 {
        expect_line(&mut reader, &format!("line {n}")).await;
    }
    assert_eq!(
        start.elapsed(),
        delay,
        "held for the rest, caught up after it"
    );

    // Having fallen behind, it does not rest again before the next line.
    send_raw(&mut sender, "after").await;
    expect_line(&mut reader, "after").await;
    assert_eq!(start.elapsed(), delay, "no rest after a catch-up");
}

/// The body of the answer to `GET path`.
async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.expect("answer");
    let (_, body) = answer.split_once("\r\n\r\n").expect("a body");
    body.to_owned()
}

/// The open connections the health check counts (not its own).
async fn open_connections(addr: std::net::SocketAddr) -> u64 {
    let health: serde_json::Value =
        serde_json::from_str(&get(addr, "/healthz").await).expect("JSON");
    health["connections"].as_u64().expect("a count")
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_dropped_at_the_write_timeout() {
    let write_timeout = Duration::from_secs(5);
    let server = InProcess::start(ServerConfig {
        write_timeout,
        max_rate: 0.0,
        ..ServerConfig::default()
    })
    .await;
    let mut sender = raw_client(server.addr).await;
    // A client with a small receive window that reads nothing after its welcome.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    let mut stuck = upgraded(socket.connect(server.addr).await.expect("connect"), "").await;
    assert_eq!(open_connections(server.addr).await, 2);

    // 8 MiB, twice what the kernel buffers for it: its session's write waits.
    // No time passes while it goes through.
    let start = Instant::now();
    let payload = "x".repeat(60 * 1024);
    for i in 0..140 {
        let text = format!("{i} {payload}");
        send_raw(&mut sender, &text).await;
        expect_line(&mut sender, &text).await;
    }
    assert_eq!(start.elapsed(), Duration::ZERO);

    // The write waits out the write timeout, to the millisecond, and no longer.
    tokio::time::sleep(write_timeout - Duration::from_millis(1)).await;
    assert_eq!(open_connections(server.addr).await, 2, "dropped too early");
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(open_connections(server.addr).await, 1, "not dropped");
    assert_eq!(start.elapsed(), write_timeout);
    let metrics = get(server.addr, "/metrics").await;
    for line in [
        "chat_disconnections_total{reason=\"write_timeout\"} 1",
        "chat_disconnections_total{reason=\"keepalive\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }

    // Dropped, not closed: what reached its buffer is chat lines, then the end,
    // with no close frame (the stream stops, a frame cut short perhaps).
    let kinds = frames_until_closed(&mut stuck).await;
    assert!(!kinds.is_empty(), "it was sent the lines it did not read");
    assert!(kinds.iter().all(|kind| *kind == 0x81), "{kinds:x?}");
}

#[tokio::test(start_paused = true)]
async fn a_signed_token_closes_its_session_exactly_when_it_expires() {
    use broadcast_chat::auth::{self, Claims, SigningKey, VerifyingKey};
    let secret = b"an HMAC secret of at least 32 bytes, for the tests";
    let server = InProcess::start(ServerConfig {
        auth: Some(VerifyingKey::from_bytes(secret).expect("key")),
        // No keepalive in the hour this takes: the client here answers no ping.
        ping_interval: Duration::from_secs(7200),
        ..ServerConfig::default()
    })
    .await;
    let claims = Claims {
        sub: "alice".into(),
        exp: auth::now_secs() + 3600,
        rooms: vec!["*".into()],
        read_only: false,
        publish: false,
    };
    let token = auth::mint(&SigningKey::from_bytes(secret).expect("key"), &claims).expect("token");
    let header = format!("Authorization: Bearer {token}\r\n");
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let mut tcp = upgraded(tcp, &header).await;
    let start = Instant::now();
    let told = read_frame(&mut tcp).await.expect("the notice");
    assert_eq!(
        told,
        (
            0x81,
            b"* your token expired: get a new one to come back".to_vec()
        )
    );
    // `exp` is in whole seconds, so an hour less what of this second has gone.
    let waited = start.elapsed();
    assert!(
        (Duration::from_secs(3599)..=Duration::from_secs(3600)).contains(&waited),
        "{waited:?}"
    );
    let (first, payload) = read_frame(&mut tcp).await.expect("a close frame");
    assert_eq!(first, CLOSE);
    assert_eq!(&payload[..2], &4001u16.to_be_bytes());
    assert_eq!(&payload[2..], b"token expired");
}

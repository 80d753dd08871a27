//! The data directory failing under a running server, with the real fault: the
//! server's file-size limit (RLIMIT_FSIZE) set to one byte with util-linux's
//! `prlimit`, so that every write to its database fails with EFBIG as on a full
//! disk, then lifted. Lines are held, undelivered and unacknowledged, members are
//! told, `/healthz` and `/metrics` say so; past `--outage-queue` a line is refused
//! and its sender told; once writes succeed the held lines follow, once, in order.
//! Also what the same fault must not do: end a server whose log is a file, drop a
//! sender whose pong goes unread behind its held lines, or leave a quiet server
//! degraded after a failed trim. Ignored, saying so in the summary, where
//! `prlimit` is not on `PATH`.

mod common;

use std::fs::File;
use std::process::Stdio;
use std::time::Duration;

use broadcast_chat::protocol::classic::{DELAYED_NOTICE, NOT_ACCEPTED_TEXT, STORED_NOTICE};
use common::instances::say;
use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::{Instant, timeout, timeout_at};

/// The file-size limit under which no write to the database succeeds: soft one
/// byte (a write at any offset past it fails), hard unlimited, so it can be lifted.
const UNWRITABLE: &str = "1:unlimited";
/// No file-size limit.
const LIFTED: &str = "unlimited:unlimited";
/// How long held lines are watched for not arriving. Short: waiting for an absence
/// is the point here, and the lines go out within a commit once they can.
const HELD_FOR: Duration = Duration::from_millis(1500);
/// What the server logs when a write to the data directory fails.
const WENT_DOWN: &str = "cannot write to the data directory: lines are held, undelivered and unacknowledged, until it can";
/// The writer's longest pause between two tries (1 s) and a commit, with room for
/// a loaded machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(2);

/// Sets the file-size limit of `server`'s process to `limits` (`SOFT:HARD`).
fn limit_file_size(server: &Server, limits: &str) {
    limit_file_size_of(server.pid(), limits);
}

/// Sets the file-size limit of process `pid` to `limits` (`SOFT:HARD`).
fn limit_file_size_of(pid: u32, limits: &str) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string()])
        .arg(format!("--fsize={limits}"))
        .status()
        .expect("run prlimit");
    assert!(
        status.success(),
        "prlimit --fsize={limits} failed: {status}"
    );
}

/// A server keeping its rooms in `dir`, with `flags`.
async fn disk_server(dir: &TempDir, flags: &[&str]) -> Server {
    let data = dir.path().join("data");
    let mut args = vec!["--data-dir", data.to_str().expect("a UTF-8 path")];
    args.extend(["--max-rate", "0"]);
    args.extend_from_slice(flags);
    Server::start(&args).await
}

/// The body of `server`'s answer to `GET path`.
async fn get(server: &Server, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = raw_exchange(server.addr(), request.as_bytes()).await;
    let (_, body) = answer.split_once("\r\n\r\n").expect("a body");
    body.to_owned()
}

/// `/healthz`, parsed.
async fn health(server: &Server) -> Value {
    serde_json::from_str(&get(server, "/healthz").await).expect("JSON")
}

/// The value of the sample `name` (without labels) in `/metrics`.
async fn sample(server: &Server, name: &str) -> f64 {
    let text = get(server, "/metrics").await;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// The health check of a disk-store server with `connections` open.
fn health_of(connections: usize, disk_ok: bool) -> Value {
    let (status, disk) = if disk_ok {
        ("ok", "ok")
    } else {
        ("degraded", "failing")
    };
    json!({"status": status, "connections": connections, "store": "disk", "disk": disk})
}

/// A notice frame of `kind` with only its text.
fn notice(kind: &str, text: &str) -> Value {
    json!({"type": "notice", "kind": kind, "text": text})
}

/// The error frame that answers a refused line.
fn not_accepted() -> Value {
    json!({"type": "error", "code": "not-accepted", "text": NOT_ACCEPTED_TEXT})
}

/// An ack frame.
fn ack(id: u64, offset: u64) -> Value {
    json!({"type": "ack", "id": id, "offset": offset})
}

/// The lines of one structured sender in room `r`, as the room's members get them.
struct Sender {
    epoch: Value,
    from: String,
}

impl Sender {
    /// The sender whose welcome frame is `welcome`.
    fn of(welcome: &Value) -> Self {
        let from = welcome["you"].as_str().expect("you").to_owned();
        Self {
            epoch: welcome["epoch"].clone(),
            from,
        }
    }

    /// Its line `text` at `offset`, as a structured member gets it.
    fn message(&self, offset: u64, text: &str) -> Value {
        json!({"type": "message", "room": "r", "epoch": self.epoch,
               "offset": offset, "from": self.from, "text": text})
    }

    /// Its line `text`, as a classic member gets it.
    fn line(&self, text: &str) -> String {
        format!("{}: {text:?}", self.from)
    }
}

/// Every text frame `ws` gets until `deadline`.
async fn texts_until(ws: &mut Ws, deadline: Instant) -> Vec<String> {
    let mut texts = Vec::new();
    while let Ok(message) = timeout_at(deadline, ws.next()).await {
        let message = message.expect("connection open").expect("no error");
        if let Some(text) = message.as_text() {
            texts.push(text.to_owned());
        }
    }
    texts
}

/// Every frame `ws` gets until `deadline`, parsed.
async fn frames_until(ws: &mut Ws, deadline: Instant) -> Vec<Value> {
    let texts = texts_until(ws, deadline).await;
    texts
        .iter()
        .map(|t| serde_json::from_str(t).expect("JSON"))
        .collect()
}

/// The next `count` frames of `ws`, parsed.
async fn next_frames(ws: &mut Ws, count: usize) -> Vec<Value> {
    let mut frames = Vec::with_capacity(count);
    for _ in 0..count {
        frames.push(recv_json(ws).await);
    }
    frames
}

/// The sender's own frames split into its messages and the rest (acks, errors),
/// each in the order they came: the two may interleave, each keeps its order.
fn split(frames: &[Value]) -> (Vec<Value>, Vec<Value>) {
    frames.iter().cloned().partition(|f| f["type"] == "message")
}

/// Waits until `/metrics` says `name` is `value`.
async fn wait_for_sample(server: &Server, name: &str, value: f64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = sample(server, name).await;
        if now == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed {now}, not {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two structured members of room `r` (alice, who speaks, and bob) and a classic
/// one (carol), once alice's first line went through.
struct Members {
    alice: Ws,
    bob: Ws,
    carol: Ws,
    from_alice: Sender,
}

impl Members {
    /// Joins them to `server`'s room `r`; alice says `before` (id 1, offset 1).
    async fn join(server: &Server) -> Self {
        let room = format!("{}/r", server.url());
        let (mut alice, welcome) = connect_structured(&room).await;
        let (mut bob, _) = connect_structured(&room).await;
        let mut carol = connect(&room).await;
        let from_alice = Sender::of(&welcome);
        say(&mut alice, 1, "before").await;
        let (messages, acks) = split(&next_frames(&mut alice, 2).await);
        assert_eq!(messages, [from_alice.message(1, "before")]);
        assert_eq!(acks, [ack(1, 1)]);
        assert_eq!(recv_json(&mut bob).await, from_alice.message(1, "before"));
        assert_eq!(recv_text(&mut carol).await, from_alice.line("before"));
        Self {
            alice,
            bob,
            carol,
            from_alice,
        }
    }

    /// Checks that for a while each is told of the delay once, and gets nothing
    /// else: no line, no ack.
    async fn assert_only_told_of_the_delay(&mut self) {
        let deadline = Instant::now() + HELD_FOR;
        let (to_alice, to_bob, to_carol) = tokio::join!(
            frames_until(&mut self.alice, deadline),
            frames_until(&mut self.bob, deadline),
            texts_until(&mut self.carol, deadline),
        );
        let delayed = [notice("delayed", DELAYED_NOTICE)];
        assert_eq!(to_alice, delayed, "alice");
        assert_eq!(to_bob, delayed, "bob");
        assert_eq!(to_carol, [DELAYED_NOTICE], "carol");
    }

    /// Checks that carol gets the restored notice, then alice's `lines`.
    async fn assert_carol_gets(&mut self, lines: &[&str]) {
        let mut expected = vec![STORED_NOTICE.to_owned()];
        expected.extend(lines.iter().map(|t| self.from_alice.line(t)));
        for line in expected {
            assert_eq!(recv_text(&mut self.carol).await, line);
        }
    }
}

/// Checks that nothing in the server panicked.
fn assert_no_panic(server: &Server) {
    let logs = server.stderr.all();
    assert!(!logs.iter().any(|l| l.contains("panicked")), "{logs:#?}");
}

#[tokio::test]
#[cfg_attr(
    not(has_prlimit),
    ignore = "needs prlimit (apt-get install util-linux)"
)]
async fn a_write_failure_holds_lines_and_chat_goes_on_when_writes_succeed() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = disk_server(&dir, &[]).await;
    let mut room = Members::join(&server).await;

    limit_file_size(&server, UNWRITABLE);
    let held = ["held 1", "held 2", "held 3"];
    for (id, text) in (2..).zip(held) {
        say(&mut room.alice, id, text).await;
    }
    room.assert_only_told_of_the_delay().await;
    assert_eq!(health(&server).await, health_of(3, false));
    assert_eq!(sample(&server, "chat_disk_up").await, 0.0);
    server.stderr.wait_for_event(WENT_DOWN).await;
    assert_no_panic(&server);

    limit_file_size(&server, LIFTED);
    let lifted = Instant::now();
    let restored = notice("restored", STORED_NOTICE);
    assert_eq!(recv_json(&mut room.bob).await, restored);
    let first = recv_json(&mut room.bob).await;
    let recovery = lifted.elapsed();
    eprintln!("recovery (limit lifted -> first held line delivered): {recovery:?}");
    let from = &room.from_alice;
    assert_eq!(first, from.message(2, "held 1"));
    assert!(recovery < RECOVERY_BOUND, "recovery took {recovery:?}");
    // Then the rest, in order, each once: the next line comes right after them.
    say(&mut room.alice, 5, "after").await;
    let lines = ["held 1", "held 2", "held 3", "after"];
    let expected: Vec<Value> = (2..).zip(lines).map(|(o, t)| from.message(o, t)).collect();
    assert_eq!(next_frames(&mut room.bob, 3).await, expected[1..]);

    let to_alice = next_frames(&mut room.alice, 9).await;
    assert_eq!(to_alice[0], restored);
    let (messages, acks) = split(&to_alice[1..]);
    assert_eq!(messages, expected);
    assert_eq!(acks, [ack(2, 2), ack(3, 3), ack(4, 4), ack(5, 5)]);
    room.assert_carol_gets(&lines).await;
    assert_eq!(health(&server).await, health_of(3, true));
    assert_eq!(sample(&server, "chat_disk_up").await, 1.0);
    assert_no_panic(&server);
}

#[tokio::test]
#[cfg_attr(
    not(has_prlimit),
    ignore = "needs prlimit (apt-get install util-linux)"
)]
async fn past_the_outage_queue_a_line_is_refused_and_its_sender_told() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = disk_server(&dir, &["--outage-queue", "2"]).await;
    let mut room = Members::join(&server).await;

    limit_file_size(&server, UNWRITABLE);
    // Two lines fill the queue; the next two are refused, and answered in order:
    // after the held lines' acks.
    let lines = ["held 1", "held 2", "refused 1", "refused 2"];
    for (id, text) in (2..).zip(lines) {
        say(&mut room.alice, id, text).await;
    }
    room.assert_only_told_of_the_delay().await;
    // A structured sender with nothing held is told at once, for each line.
    say(&mut room.bob, 1, "from bob 1").await;
    say(&mut room.bob, 2, "from bob 2").await;
    let refused = [not_accepted(), not_accepted()];
    assert_eq!(next_frames(&mut room.bob, 2).await, refused);
    // A classic one is told once for both lines (a second notice would come
    // before the restored one).
    send(&mut room.carol, "from carol 1").await;
    send(&mut room.carol, "from carol 2").await;
    wait_for_sample(&server, "chat_messages_not_accepted_total", 4.0).await;
    let told = recv_text(&mut room.carol).await;
    assert_eq!(told, format!("* {NOT_ACCEPTED_TEXT}"));

    limit_file_size(&server, LIFTED);
    let restored = notice("restored", STORED_NOTICE);
    let to_alice = next_frames(&mut room.alice, 7).await;
    assert_eq!(to_alice[0], restored);
    let (messages, answers) = split(&to_alice[1..]);
    let from = &room.from_alice;
    let held = [from.message(2, "held 1"), from.message(3, "held 2")];
    assert_eq!(messages, held);
    let [refused_3, refused_4] = refused;
    assert_eq!(answers, [ack(2, 2), ack(3, 3), refused_3, refused_4]);
    // Only the held lines were kept: the next line has the offset after them.
    say(&mut room.alice, 6, "after").await;
    let mut expected = vec![restored];
    expected.extend(held);
    expected.push(from.message(4, "after"));
    assert_eq!(next_frames(&mut room.bob, 4).await, expected);
    room.assert_carol_gets(&["held 1", "held 2", "after"]).await;
    assert_eq!(health(&server).await, health_of(3, true));
    let refusals = sample(&server, "chat_messages_not_accepted_total").await;
    assert_eq!(refusals, 6.0);
    assert_no_panic(&server);
}

#[tokio::test]
#[cfg_attr(
    not(has_prlimit),
    ignore = "needs prlimit (apt-get install util-linux)"
)]
async fn the_client_exits_4_naming_the_line_the_server_did_not_accept() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = disk_server(&dir, &["--outage-queue", "1"]).await;
    let room = format!("{}/r", server.url());
    let (mut alice, _) = connect_structured(&room).await;
    limit_file_size(&server, UNWRITABLE);
    say(&mut alice, 1, "held").await;
    let delayed = recv_json(&mut alice).await;
    assert_eq!(delayed, notice("delayed", DELAYED_NOTICE));

    // The queue is full: the client's line is refused.
    let args = [
        "--url",
        &room,
        "--json",
        "--send",
        "deploy done",
        "--timeout",
        "10s",
    ];
    let mut client = Client::start(&args);
    let status = client.wait().await;
    let stdout = client.stdout.complete().await;
    let stderr = client.stderr.complete().await;
    assert_eq!(status.code(), Some(4), "{stdout:#?} {stderr:#?}");
    let frames: Vec<Value> = stdout
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(frames.len(), 3, "{stdout:#?}");
    assert_eq!(frames[0]["type"], "welcome");
    assert_eq!(
        frames[1],
        notice("delayed", DELAYED_NOTICE),
        "told on its way in"
    );
    assert_eq!(frames[2], not_accepted());
    let why = format!("error: the server refused line 1 (\"deploy done\"): {NOT_ACCEPTED_TEXT}");
    assert_eq!(stderr, [why]);
    limit_file_size(&server, LIFTED);
    let restored = recv_json(&mut alice).await;
    assert_eq!(restored, notice("restored", STORED_NOTICE));
}

#[tokio::test]
#[cfg_attr(
    not(has_prlimit),
    ignore = "needs prlimit (apt-get install util-linux)"
)]
async fn a_server_logging_to_a_file_keeps_serving_while_its_files_take_no_writes() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("data");
    // Its log is a file under the same limit: no log line can be written either.
    let log = File::create(dir.path().join("server.log")).expect("a log file");
    let mut child = server_command()
        .args(["--port", "0", "--data-dir", data.to_str().expect("UTF-8")])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the server binary");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let ready = timeout(WAIT, stdout.next_line())
        .await
        .expect("a readiness line in time");
    let ready = ready.expect("read stdout").expect("a readiness line");
    let port = ready
        .strip_prefix("Listening on port ")
        .expect("a readiness line");
    let pid = child.id().expect("running");

    let (mut alice, welcome) = connect_structured(&format!("ws://127.0.0.1:{port}/r")).await;
    limit_file_size_of(pid, UNWRITABLE);
    say(&mut alice, 1, "held").await;
    let delayed = recv_json(&mut alice).await;
    assert_eq!(delayed, notice("delayed", DELAYED_NOTICE));
    limit_file_size_of(pid, LIFTED);
    let frames = next_frames(&mut alice, 3).await;
    assert_eq!(frames[0], notice("restored", STORED_NOTICE));
    let (messages, acks) = split(&frames[1..]);
    assert_eq!(messages, [Sender::of(&welcome).message(1, "held")]);
    assert_eq!(acks, [ack(1, 1)]);
    let status = child.try_wait().expect("the server's status");
    assert!(status.is_none(), "the server ended: {status:?}");
}

#[tokio::test]
#[cfg_attr(
    not(has_prlimit),
    ignore = "needs prlimit (apt-get install util-linux)"
)]
async fn a_sender_whose_lines_are_held_is_not_dropped_as_silent() {
    /// More lines than a session keeps pending (64): past them it stops reading
    /// its client's frames, the pong to its ping among them.
    const LINES: u64 = 70;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = disk_server(&dir, &["--ping-interval", "300ms"]).await;
    let (mut alice, welcome) = connect_structured(&format!("{}/r", server.url())).await;
    limit_file_size(&server, UNWRITABLE);
    for id in 1..=LINES {
        say(&mut alice, id, &format!("line {id}")).await;
    }
    // Five ping intervals: a client taken for silent would be dropped after two.
    let deadline = Instant::now() + HELD_FOR;
    let frames = frames_until(&mut alice, deadline).await;
    assert_eq!(frames, [notice("delayed", DELAYED_NOTICE)]);
    limit_file_size(&server, LIFTED);
    let frames = next_frames(&mut alice, 1 + 2 * LINES as usize).await;
    assert_eq!(frames[0], notice("restored", STORED_NOTICE));
    let (messages, acks) = split(&frames[1..]);
    let from = Sender::of(&welcome);
    let sent: Vec<Value> = (1..=LINES)
        .map(|id| from.message(id, &format!("line {id}")))
        .collect();
    assert_eq!(messages, sent);
    assert_eq!(acks, (1..=LINES).map(|id| ack(id, id)).collect::<Vec<_>>());
    let logs = server.stderr.all();
    assert!(
        logs.iter().all(|l| log_event(l) != Some("disconnected")),
        "{logs:#?}"
    );
}

#[tokio::test]
#[cfg_attr(
    not(has_prlimit),
    ignore = "needs prlimit (apt-get install util-linux)"
)]
async fn a_failed_trim_of_a_quiet_room_ends_when_writes_succeed() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = disk_server(&dir, &["--history", "0", "--resume-window", "1"]).await;
    let (mut alice, _) = connect_structured(&format!("{}/r", server.url())).await;
    for id in 1..=3 {
        say(&mut alice, id, "x").await;
    }
    let (_, acks) = split(&next_frames(&mut alice, 6).await);
    assert_eq!(acks, [ack(1, 1), ack(2, 2), ack(3, 3)]);
    // The log in memory keeps one line; the writer drops the disk's two older ones
    // a second after its last commit (these came within a second of its start, so
    // none was due right after a commit): a write, and nothing to hold.
    limit_file_size(&server, UNWRITABLE);
    let delayed = recv_json(&mut alice).await;
    assert_eq!(delayed, notice("delayed", DELAYED_NOTICE));
    assert_eq!(health(&server).await, health_of(1, false));
    limit_file_size(&server, LIFTED);
    let restored = recv_json(&mut alice).await;
    assert_eq!(restored, notice("restored", STORED_NOTICE));
    assert_eq!(health(&server).await, health_of(1, true));
}

#[tokio::test]
#[cfg_attr(
    not(has_prlimit),
    ignore = "needs prlimit (apt-get install util-linux)"
)]
async fn a_newcomer_while_writes_fail_is_told_on_its_way_in() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = disk_server(&dir, &[]).await;
    let room = format!("{}/r", server.url());
    let (mut alice, welcome) = connect_structured(&room).await;
    limit_file_size(&server, UNWRITABLE);
    say(&mut alice, 1, "held").await;
    assert_eq!(
        recv_json(&mut alice).await,
        notice("delayed", DELAYED_NOTICE)
    );
    let (mut bob, _) = connect_structured(&room).await;
    assert_eq!(recv_json(&mut bob).await, notice("delayed", DELAYED_NOTICE));
    limit_file_size(&server, LIFTED);
    let frames = next_frames(&mut bob, 2).await;
    assert_eq!(frames[0], notice("restored", STORED_NOTICE));
    assert_eq!(frames[1], Sender::of(&welcome).message(1, "held"));
}

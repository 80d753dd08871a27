//! The disk store through the real binaries (`server --data-dir`), on real files in
//! a temporary directory, with real crashes (SIGKILL): what was acknowledged is
//! there after a restart, in the same epoch at the same offsets; clients resume
//! across it without loss or repeats; history comes from the disk; a torn last
//! write is cut back and said once; a room that empties keeps its log; a data
//! directory that cannot be used is refused in one line.

mod common;

use common::durable::*;
use common::*;
use serde_json::json;

/// What a returning client is told when nothing it missed was lost.
fn complete() -> serde_json::Value {
    json!({"type": "recovered", "complete": true})
}

#[tokio::test]
async fn acknowledged_lines_survive_a_sigkill_under_traffic() {
    let data = DataDir::new(&["--max-rate", "0"]);
    let mut server = data.start(0).await;
    let (port, room) = (server.port, format!("{}/r", server.url()));
    let mut members = Vec::new();
    for session in ["ann", "bob", "cat"] {
        members.push(Member::join(&room, session).await.0);
    }
    // Three crashes, each with lines on their way: some flushed and not
    // acknowledged, some not flushed, some not even received.
    for _ in 0..3 {
        members = crash_under_traffic(server, members, 600).await;
        // Back on the same data directory: each resumes and sends what was not acked.
        server = data.start(port).await;
        for member in &mut members {
            assert_eq!(member.rejoin(&room).await, complete(), "{}", member.session);
            member.resend_unacked();
        }
    }
    for member in &mut members {
        member
            .until("every line acknowledged", |m| m.unacked() == 0)
            .await;
    }
    // A last line: who has it has everything before it.
    members[0].say_next();
    let last = members[0].sent.last().cloned().expect("a line");
    for member in &mut members {
        let has_last = |m: &Member| m.seen.iter().any(|(_, text)| *text == last);
        member.until("the last line", has_last).await;
    }
    let log = whole_log(&room, &members[0].epoch).await;
    assert_each_line_once(&members, &log);
}

#[tokio::test]
async fn the_command_line_client_resumes_across_a_restart() {
    let data = DataDir::new(&[]);
    let server = data.start(0).await;
    let (port, room) = (server.port, format!("{}/r", server.url()));
    // Through a proxy, so that the crash can take an ack on its way to the client.
    let proxy = Proxy::start(server.addr()).await;
    let url = format!("{}/r", proxy.url());
    let mut client = Client::start(&["--url", &url, "--reconnect", "--json"]);
    let (mut watcher, _) = Member::join(&room, "watcher").await;
    let typed = ["before 1", "before 2", "ack lost", "while down", "after"];
    for line in &typed[..2] {
        client.send_line(line).await;
    }
    wait_for_frames(&client.stdout, "ack", 2).await;
    // Logged (the watcher has it), its ack held back, then lost with the server.
    proxy.hold_downstream(true);
    client.send_line(typed[2]).await;
    watcher.until("the line", |m| m.last_seen() == 3).await;
    proxy.set_down(true);
    proxy.sever();
    server.kill().await;
    proxy.hold_downstream(false);
    client.stderr.wait_for("reconnecting in").await;
    client.send_line(typed[3]).await;

    let _server = data.start(port).await;
    proxy.set_down(false);
    client
        .stderr
        .wait_for_line(&format!("reconnected to {url}"))
        .await;
    client.send_line(typed[4]).await;
    client.close_stdin();
    let code = client.wait().await.code();
    assert_eq!(code, Some(0), "every line acknowledged");
    let frames = frames_of(&client.stdout.complete().await);
    let of = |kind: &'static str| frames.iter().filter(move |f| f["type"] == kind);
    let epochs: Vec<&str> = of("welcome")
        .map(|w| w["epoch"].as_str().expect("an epoch"))
        .collect();
    assert!(epochs.len() == 2 && epochs[0] == epochs[1], "{frames:#?}");
    assert_eq!(of("recovered").collect::<Vec<_>>(), [&complete()]);
    let repeat = json!({"type": "ack", "id": 3, "offset": 3, "duplicate": true});
    assert!(of("ack").any(|ack| *ack == repeat), "{frames:#?}");
    let shown: Vec<(u64, String)> = of("message").map(offset_and_text).collect();
    let expected: Vec<(u64, String)> = (1..).zip(typed.map(String::from)).collect();
    assert_eq!(shown, expected, "each line shown once, in order");
    let logged = whole_log(&room, epochs[0]).await;
    assert_eq!(logged, expected, "each line logged once");
}

#[tokio::test]
async fn history_is_served_from_disk_after_a_restart() {
    let data = DataDir::new(&["--history", "5", "--max-rate", "0"]);
    let server = data.start(0).await;
    let (port, room) = (server.port, format!("{}/r", server.url()));
    let (mut alice, _) = Member::join(&room, "alice").await;
    for _ in 0..8 {
        alice.say_next();
    }
    alice.until("8 acks", |m| m.acked.len() == 8).await;
    server.kill().await;

    let _server = data.start(port).await;
    let (mut newcomer, welcome) = Member::join(&room, "newcomer").await;
    assert_eq!(
        (&welcome["epoch"], &welcome["offset"]),
        (&json!(alice.epoch), &json!(8))
    );
    // Its own line comes after the history, and nothing between.
    newcomer.say_next();
    newcomer.until("its own line", |m| m.last_seen() >= 9).await;
    let history = (4..=8).map(|i| (i, format!("alice line {i}")));
    let expected: Vec<_> = history.chain([(9, "newcomer line 1".to_owned())]).collect();
    assert_eq!(newcomer.seen, expected);
}

#[tokio::test]
async fn a_torn_last_write_is_cut_back_and_reported_once() {
    let data = DataDir::new(&["--max-rate", "0"]);
    let server = data.start(0).await;
    let (port, room) = (server.port, format!("{}/r", server.url()));
    let (mut alice, _) = Member::join(&room, "alice").await;
    // One at a time: each line its own write.
    for n in 1..=20 {
        alice.say_next();
        alice.until("its ack", |m| m.acked.len() == n).await;
    }
    server.kill().await;
    // The crash cut the last write: the write-ahead log (a 32-byte header, frames
    // of a 24-byte header and a 4096-byte page) ends inside a frame.
    let wal = data.path().join("chat.sqlite3-wal");
    let length = std::fs::metadata(&wal).expect("the write-ahead log").len();
    assert!(
        length > 32 + 2 * 4120 && (length - 32).is_multiple_of(4120),
        "{length}"
    );
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .expect("open");
    file.set_len(length - 1000).expect("cut it");
    drop(file);

    let server = data.start(port).await;
    let warning = server.stderr.wait_for(CUT_SHORT).await;
    assert_eq!(
        log_event(&warning).map(|e| e.starts_with(CUT_SHORT)),
        Some(true)
    );
    let log = whole_log(&room, &alice.epoch).await;
    let head = log.len() as u64;
    let lines: Vec<_> = (1..=head).map(|i| (i, format!("alice line {i}"))).collect();
    assert!(
        log == lines && head < 20,
        "the cut write (the last line's) is gone: {log:?}"
    );
    let (mut bob, _) = Member::join(&room, "bob").await;
    bob.say_next();
    bob.until("its ack", |m| m.unacked() == 0).await;
    assert_eq!(bob.acked[&1], Some(head + 1));
    let said = |s: &Server| {
        s.stderr
            .all()
            .iter()
            .filter(|l| l.contains(CUT_SHORT))
            .count()
    };
    assert_eq!(said(&server), 1);
    // Said once: the next start, after a crash on whole writes, has nothing to say.
    server.kill().await;
    let again = data.start(port).await;
    again
        .stderr
        .wait_for_event("rooms are kept in the data directory")
        .await;
    assert_eq!(said(&again), 0, "{:#?}", again.stderr.all());
}

#[tokio::test]
async fn a_data_dir_of_a_later_version_is_refused() {
    let data = DataDir::new(&[]);
    data.start(0).await.kill().await;
    let conn = rusqlite::Connection::open(data.path().join("chat.sqlite3")).expect("open");
    conn.pragma_update(None, "user_version", 2)
        .expect("a later version");
    drop(conn);
    assert_eq!(
        data.refusal().await,
        "its format is version 2, and this server knows version 1: \
         run the server that wrote it, or a newer one"
    );
}

#[tokio::test]
async fn a_data_dir_that_is_not_ours_is_refused() {
    let stranger = DataDir::new(&[]);
    std::fs::create_dir(stranger.path()).expect("the directory");
    std::fs::write(stranger.path().join("notes.txt"), "mine").expect("a file");
    assert_eq!(
        stranger.refusal().await,
        "it holds \"notes.txt\", which is not a broadcast-chat file: give an empty or new directory"
    );

    let other_program = DataDir::new(&[]);
    std::fs::create_dir(other_program.path()).expect("the directory");
    let file = other_program.path().join("chat.sqlite3");
    let conn = rusqlite::Connection::open(&file).expect("a database");
    conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (42);")
        .expect("a table");
    drop(conn);
    let before = std::fs::read(&file).expect("its bytes");
    assert_eq!(
        other_program.refusal().await,
        "chat.sqlite3 is an SQLite database of another program: give an empty or new directory"
    );
    assert!(
        std::fs::read(&file).expect("its bytes") == before,
        "its file left byte for byte as it was"
    );

    let not_sqlite = DataDir::new(&[]);
    std::fs::create_dir(not_sqlite.path()).expect("the directory");
    let file = not_sqlite.path().join("chat.sqlite3");
    let text = "not a database at all, but long enough to be read as one";
    std::fs::write(&file, text).expect("a file");
    assert_eq!(
        not_sqlite.refusal().await,
        "chat.sqlite3 is not a broadcast-chat database (not SQLite at all)"
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        text,
        "left as it was"
    );
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let data = DataDir::new(&[]);
    let first = data.start(0).await;
    assert_eq!(
        data.refusal().await,
        "another server is using it (its lock file is held): one server per data directory"
    );
    // The lock goes with the process, a killed one too: no stale lock to clear.
    first.kill().await;
    data.start(0).await;
}

#[tokio::test]
async fn a_room_that_empties_and_fills_again_keeps_its_epoch_and_log() {
    let data = DataDir::new(&["--max-rate", "0"]);
    let server = data.start(0).await;
    let room = format!("{}/r", server.url());
    let (mut alice, _) = Member::join(&room, "alice").await;
    for _ in 0..3 {
        alice.say_next();
    }
    alice.until("3 acks", |m| m.acked.len() == 3).await;
    let epoch = alice.epoch.clone();
    drop(alice);
    // Its last member gone, the room closes.
    server.stderr.wait_for_event("disconnected").await;

    let (mut bob, welcome) = Member::join(&room, "bob").await;
    assert_eq!(
        (&welcome["epoch"], &welcome["offset"]),
        (&json!(epoch), &json!(3))
    );
    bob.say_next();
    bob.until("its ack", |m| m.unacked() == 0).await;
    assert_eq!(bob.acked[&1], Some(4), "offsets go on");
    let alice_said = (1..=3).map(|i| (i, format!("alice line {i}")));
    let expected: Vec<_> = alice_said.chain([(4, "bob line 1".to_owned())]).collect();
    assert_eq!(whole_log(&room, &epoch).await, expected);
}

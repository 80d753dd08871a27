//! Nothing lost across a reconnect: a client whose connection is cut comes back
//! where it left off, shows every message once and in order, and a line it typed
//! just before the cut is shown once, everywhere. The network is a proxy in the
//! test that the test cuts.

mod common;

use common::*;

/// Sends `texts` from `talker`, each after the previous came back to it, so that
/// every one has been published when this returns.
async fn say(talker: &mut Ws, texts: impl IntoIterator<Item = String>) {
    for text in texts {
        send(talker, &text).await;
        assert_eq!(recv_text(talker).await, tagged(talker, &text));
    }
}

/// The messages from `tag` that the client printed, in the order printed.
fn printed_from(lines: &[String], tag: &str) -> Vec<String> {
    let prefix = format!("From server: {tag}: ");
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|quoted| quoted.trim_matches('"').to_owned())
        .collect()
}

#[tokio::test]
async fn a_cut_connection_resumes_and_every_message_shows_once_in_order() {
    let server = Server::start(&["--max-rate", "0"]).await;
    let proxy = Proxy::start(server.addr()).await;
    let mut client = Client::start(&["--url", &proxy.url(), "--reconnect"]);
    client.welcomed().await;
    let mut talker = connect(&server.url()).await;
    let tag = format!("{:?}", local_addr(&talker));
    let numbered = |range: std::ops::Range<u32>| range.map(|i| format!("m{i}"));

    say(&mut talker, numbered(0..100)).await;
    client.stdout.wait_for("\"m99\"").await;

    // The network drops and stays down while a hundred more are said.
    proxy.set_down(true);
    proxy.sever();
    client.stderr.wait_for("reconnecting in").await;
    say(&mut talker, numbered(100..200)).await;

    // Back up: the client returns while the talk goes on.
    proxy.set_down(false);
    say(&mut talker, numbered(200..300)).await;
    client.stdout.wait_for("\"m299\"").await;
    client
        .stderr
        .wait_for_line(&format!("reconnected to {}", proxy.url()))
        .await;

    client.close_stdin();
    assert_eq!(client.wait().await.code(), Some(0));
    let lines = client.stdout.complete().await;
    let expected: Vec<String> = numbered(0..300).collect();
    assert_eq!(printed_from(&lines, &tag), expected, "each once, in order");
    assert!(
        !lines.iter().any(|l| l.starts_with("From server: * ")),
        "nothing to report: {lines:#?}"
    );
    let welcomes = lines
        .iter()
        .filter(|l| **l == format!("From server: {WELCOME}"))
        .count();
    assert_eq!(welcomes, 1, "the welcome is not shown again on a reconnect");
}

/// Every text in the room's log, oldest first: what a structured client resuming
/// from before the first offset is replayed.
async fn logged(server: &Server) -> Vec<String> {
    let (_, welcome) = connect_structured(&server.url()).await;
    let epoch = welcome["epoch"].as_str().expect("an epoch");
    let head = welcome["offset"].as_u64().expect("an offset");
    let resume = format!("{}/?epoch={epoch}&after=0", server.url());
    let (mut replay, _) = connect_structured(&resume).await;
    let mut texts = Vec::new();
    for _ in 0..head {
        let frame = recv_json(&mut replay).await;
        assert_eq!(frame["type"], "message", "{frame}");
        texts.push(frame["text"].as_str().expect("a text").to_owned());
    }
    texts
}

/// Where a cut catches a line typed just before it.
#[derive(Clone, Copy, PartialEq)]
enum Cut {
    /// Still on its way to the server: only the client's resend can bring it.
    BeforeTheServer,
    /// Taken by the server, its acknowledgement and echo on their way back: the
    /// server must recognise the resend.
    BeforeTheAck,
}

/// A client types a line just before its connection is cut where `cut` says, comes
/// back and types "after": the line is in the room's log once, reached Bob once and
/// was shown once.
async fn type_just_before_the_cut(cut: Cut) {
    const LINE: &str = "just before the cut";
    let server = Server::start(&["--max-rate", "0"]).await;
    let proxy = Proxy::start(server.addr()).await;
    let mut client = Client::start(&["--url", &proxy.url(), "--reconnect", "--name", "alice"]);
    client.welcomed().await;
    let mut bob = connect(&server.url()).await;

    let mut heard = Vec::new();
    if cut == Cut::BeforeTheServer {
        proxy.hold_upstream(true);
        client.send_line(LINE).await;
        proxy.wait_holding_upstream(LINE.len()).await;
    } else {
        proxy.hold_downstream(true);
        client.send_line(LINE).await;
        heard.push(recv_text(&mut bob).await);
    }
    // What the proxy held is lost in the cut.
    proxy.sever();
    proxy.hold_upstream(false);
    proxy.hold_downstream(false);
    client
        .stderr
        .wait_for_line(&format!("reconnected to {}", proxy.url()))
        .await;
    client.send_line("after").await;
    client.stdout.wait_for("\"after\"").await;
    assert_eq!(logged(&server).await, [LINE, "after"]);
    while heard.len() < 2 {
        heard.push(recv_text(&mut bob).await);
    }
    assert!(heard[0].ends_with(&format!(": {LINE:?}")), "{heard:?}");
    assert!(
        heard[1].ends_with(": \"after\""),
        "the line came again: {heard:?}"
    );

    client.close_stdin();
    assert_eq!(client.wait().await.code(), Some(0));
    let lines = client.stdout.complete().await;
    let shown = lines
        .iter()
        .filter(|l| l.ends_with(&format!(": {LINE:?}")))
        .count();
    assert_eq!(shown, 1, "{lines:#?}");
}

#[tokio::test]
async fn a_line_the_server_never_got_before_the_cut_is_sent_again_and_arrives_once() {
    type_just_before_the_cut(Cut::BeforeTheServer).await;
}

#[tokio::test]
async fn a_line_whose_acknowledgement_the_cut_lost_is_recognised_and_arrives_once() {
    type_just_before_the_cut(Cut::BeforeTheAck).await;
}

#[tokio::test]
async fn a_client_away_longer_than_the_log_reaches_is_told_how_many_it_missed() {
    let server = Server::start(&["--max-rate", "0", "--resume-window", "20"]).await;
    let proxy = Proxy::start(server.addr()).await;
    let mut client = Client::start(&["--url", &proxy.url(), "--reconnect"]);
    client.welcomed().await;
    let mut talker = connect(&server.url()).await;
    say(&mut talker, ["before".to_owned()]).await;
    client.stdout.wait_for("\"before\"").await;

    proxy.set_down(true);
    proxy.sever();
    client.stderr.wait_for("reconnecting in").await;
    say(&mut talker, (0..50).map(|i| format!("away {i}"))).await;
    proxy.set_down(false);

    // 50 were said; the log keeps the last 20: 30 are lost, and the client says so.
    client
        .stdout
        .wait_for_line("From server: * you missed 30 messages while you were away")
        .await;
    client.stdout.wait_for("\"away 49\"").await;
    client.close_stdin();
    assert_eq!(client.wait().await.code(), Some(0));
    let lines = client.stdout.complete().await;
    let tag = format!("{:?}", local_addr(&talker));
    let expected: Vec<String> = std::iter::once("before".to_owned())
        .chain((30..50).map(|i| format!("away {i}")))
        .collect();
    assert_eq!(printed_from(&lines, &tag), expected);
}

#[tokio::test]
async fn a_classic_client_resumes_with_epoch_and_after() {
    let server = Server::start(&["--max-rate", "0", "--resume-window", "3"]).await;
    let (_watcher, welcome) = connect_structured(&format!("{}/rust", server.url())).await;
    let epoch = welcome["epoch"].as_str().expect("an epoch").to_owned();
    let mut talker = connect(&format!("{}/rust", server.url())).await;
    say(&mut talker, (1..=5).map(|i| format!("m{i}"))).await;
    // The log holds offsets 3 to 5.
    let lines = |range: std::ops::RangeInclusive<u32>| -> Vec<String> {
        range.map(|i| tagged(&talker, &format!("m{i}"))).collect()
    };
    let missed = "* you missed 2 messages while you were away".to_owned();
    let restarted =
        "* the room was restarted while you were away: messages sent meanwhile may be lost"
            .to_owned();
    let cases = [
        (format!("epoch={epoch}&after=3"), lines(4..=5)),
        (format!("epoch={epoch}&after=5"), vec![]),
        (
            format!("epoch={epoch}&after=0"),
            [lines(3..=5), vec![missed]].concat(),
        ),
        (
            "epoch=0000000000000001&after=4".to_owned(),
            [lines(3..=5), vec![restarted]].concat(),
        ),
    ];
    let mut returning = Vec::new();
    for (query, expected) in cases {
        returning.push((
            connect(&format!("{}/rust?{query}", server.url())).await,
            query,
            expected,
        ));
    }
    // Each replay read whole first: a line said sooner would push the oldest out
    // of the three the log keeps while a replay is still reading it.
    let mut replayed = Vec::new();
    for (back, query, expected) in &mut returning {
        let mut got = Vec::new();
        for _ in 0..expected.len() {
            got.push(recv_text(back).await);
        }
        assert_eq!(&got, expected, "{query}");
        replayed.push(back);
    }
    // Then live traffic: a line said now is the first after each replay.
    let live = "live".to_owned();
    say(&mut talker, [live.clone()]).await;
    for back in replayed {
        assert_eq!(recv_text(back).await, tagged(&talker, &live));
    }
}

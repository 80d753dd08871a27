//! `client --reconnect`: it waits for a server that is not up yet or full, comes back
//! after a restart (a crash or a shutdown with 1001) with what was typed meanwhile,
//! and still exits 0 at once when asked.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test]
async fn reconnects_across_a_server_restart_and_sends_what_was_typed_meanwhile() {
    let port = free_port();
    let server = Server::start_at(port, &[]).await;
    let url = server.url();
    let mut client = Client::start(&["--url", &url, "--reconnect", "--name", "alice"]);
    client.welcomed().await;

    signal(server.child_ref(), "KILL");
    drop(server);
    let retry = client.stderr.wait_for("reconnecting in").await;
    assert!(
        retry.starts_with(&format!("connection to {url} lost: ")),
        "{retry}"
    );
    assert!(retry.ends_with(" s"), "{retry}");
    client.send_line("typed while away").await;

    let server = Server::start_at(port, &[]).await;
    client
        .stderr
        .wait_for_line(&format!("reconnected to {url}"))
        .await;
    // The new server's room is not the one the client left: it says so, once.
    client.stdout.wait_for(RESTARTED).await;
    // The line typed while away went out on the new connection: the server echoes it.
    client.stdout.wait_for("\"typed while away\"").await;

    let mut other = connect(&server.url()).await;
    server.stderr.wait_for_events("connected", 2).await;
    client.send_line("typed now").await;
    let line = loop {
        let line = recv_text(&mut other).await;
        if !line.starts_with("* ") {
            break line;
        }
    };
    assert!(line.ends_with(": \"typed now\""), "{line}");

    client.close_stdin();
    assert_eq!(client.wait().await.code(), Some(0));
    let printed = client.stdout.complete().await;
    let count = |line: &str| printed.iter().filter(|l| *l == line).count();
    assert_eq!(
        count("From server: Welcome to chat! Type a message"),
        1,
        "{printed:#?}"
    );
    assert_eq!(count(RESTARTED), 1, "{printed:#?}");
}

/// What the client prints when the room it comes back to is not the one it left.
const RESTARTED: &str = "From server: * the room was restarted while you were away: messages sent meanwhile may be lost";

#[tokio::test]
async fn reconnects_after_the_server_shuts_down_with_1001() {
    let port = free_port();
    let mut server = Server::start_at(port, &[]).await;
    let url = server.url();
    let mut client = Client::start(&["--url", &url, "--reconnect"]);
    client.welcomed().await;
    server.stderr.wait_for_event("connected").await;

    server.terminate();
    let retry = client.stderr.wait_for("reconnecting in").await;
    assert!(
        retry.starts_with(
            "the server closed the connection: 1001 (server shutting down); reconnecting in "
        ),
        "{retry}"
    );
    assert_eq!(server.wait().await.code(), Some(0));
    drop(server);

    let _server = Server::start_at(port, &[]).await;
    client
        .stderr
        .wait_for_line(&format!("reconnected to {url}"))
        .await;
    client.stdout.wait_for(RESTARTED).await;
    client.close_stdin();
    assert_eq!(client.wait().await.code(), Some(0));
}

#[tokio::test]
async fn retries_a_full_server_and_gets_in_when_a_place_frees_up() {
    let server = Server::start(&["--max-connections", "1"]).await;
    let url = server.url();
    let occupant = connect(&url).await;
    let mut client = Client::start(&["--url", &url, "--reconnect"]);
    let retry = client.stderr.wait_for("retrying in").await;
    assert!(
        retry.starts_with(&format!(
            "cannot connect to {url}: the server refused the upgrade with HTTP 503: \
             too many connections; try again later; retrying in "
        )),
        "{retry}"
    );

    drop(occupant);
    // The whole line: "reconnected to ..." holds "connected to ...".
    client
        .stderr
        .wait_for_line(&format!("connected to {url}"))
        .await;
    client.welcomed().await;
    client.close_stdin();
    assert_eq!(client.wait().await.code(), Some(0));
}

#[tokio::test]
async fn waits_for_a_server_that_is_not_up_yet() {
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}");
    let mut client = Client::start(&["--url", &url, "--reconnect"]);
    let retry = client.stderr.wait_for("retrying in").await;
    assert!(
        retry.starts_with(&format!("cannot connect to {url}: connection refused")),
        "{retry}"
    );

    let server = Server::start_at(port, &[]).await;
    client
        .stderr
        .wait_for_line(&format!("connected to {url}"))
        .await;
    client.welcomed().await;
    let mut other = connect(&server.url()).await;
    server.stderr.wait_for_events("connected", 2).await;
    client.send_line("made it").await;
    assert!(recv_text(&mut other).await.ends_with(": \"made it\""));

    client.close_stdin();
    assert_eq!(client.wait().await.code(), Some(0));
}

#[tokio::test]
async fn input_end_or_ctrl_c_while_waiting_exits_zero_at_once() {
    let url = format!("ws://127.0.0.1:{}", free_port());
    let stops = ["input end", "SIGINT"].map(|stop| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut client = Client::start(&["--url", &url, "--reconnect"]);
            // After three attempts (0.5 s, 1 s, 2 s) the wait is 3 to 5 s long.
            client.stderr.wait_for_count("retrying in", 4).await;
            let asked = Instant::now();
            let wait = retry_delay(&client.stderr.all()[3]);
            match stop {
                "input end" => client.close_stdin(),
                _ => signal(&client.child, "INT"),
            }
            assert_eq!(client.wait().await.code(), Some(0), "{stop}");
            // Waiting the wait out would take all of it; a second is ample for
            // exiting, even on a loaded machine.
            let took = asked.elapsed();
            assert!(
                took < wait - Duration::from_secs(1),
                "{stop}: {took:?} of {wait:?}"
            );
            let attempts = client.stderr.complete().await.len();
            assert_eq!(attempts, 4, "{stop}: no attempt after it");
        })
    });
    for stop in stops {
        stop.await.expect("the client stopped at once");
    }
}

/// The wait a `...; retrying in 3.1 s` line announces.
fn retry_delay(line: &str) -> Duration {
    line.rsplit_once("retrying in ")
        .and_then(|(_, wait)| wait.strip_suffix(" s"))
        .and_then(|secs| secs.parse().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or_else(|| panic!("no wait in {line:?}"))
}

//! The client in a terminal: the prompt survives incoming messages, commands stay
//! local, tags are coloured, and the terminal is given back on exit.

mod common;

use common::*;

/// The client under a pseudo-terminal, connected to `server`, with its prompt up.
async fn alice_at_the_prompt(server: &Server) -> PtyClient {
    let alice = PtyClient::start(&["--url", &server.url()], &[]);
    alice.screen.wait_for(WELCOME).await;
    alice.screen.wait_for("> ").await;
    alice
}

#[tokio::test]
async fn half_typed_line_survives_incoming_messages_and_commands_stay_local() {
    let server = Server::start(&[]).await;
    let (bob_tx, mut bob_rx) = chatter(connect(&server.url()).await);
    let mut alice = alice_at_the_prompt(&server).await;
    assert!(
        !alice.terminal_is_cooked(),
        "raw mode while the prompt is up"
    );

    alice.type_keys("half-typ");
    let typed = alice.screen.wait_for("half-typ").await;
    bob_tx.send("news from bob".into()).expect("bob sends");
    let shown = alice
        .screen
        .wait_for_after(typed, "\"news from bob\"")
        .await;
    // The prompt and the half-typed line are drawn again below the message.
    alice.screen.wait_for_after(shown, "> half-typ").await;
    assert!(next(&mut bob_rx).await.ends_with(": \"news from bob\""));

    alice.type_keys("ed line\r");
    assert!(
        next(&mut bob_rx).await.ends_with(": \"half-typed line\""),
        "the whole line arrives"
    );

    let before = alice.screen.text().len();
    alice.type_keys("/help\r");
    let help = alice.screen.wait_for_after(before, "/quit").await;
    alice.type_keys("/foo bar\r");
    alice
        .screen
        .wait_for_after(help, "unknown command /foo")
        .await;
    alice.type_keys("//x\r");
    // Messages from one sender arrive in order: had /help or /foo gone out, they
    // would come first.
    assert!(next(&mut bob_rx).await.ends_with(": \"/x\""));

    // Up recalls the last line from the history.
    alice.type_keys("\x1b[A");
    alice.screen.wait_for_after(help, "> //x").await;
    alice.type_keys("\r");
    assert!(next(&mut bob_rx).await.ends_with(": \"/x\""));

    alice.type_keys("/quit\r");
    assert_eq!(alice.wait().await.code(), Some(0));
    assert!(
        alice.terminal_is_cooked(),
        "raw mode is switched off on exit"
    );
    assert!(alice.stderr.complete().await.is_empty());
    // /quit closes cleanly: the server saw a close frame, not a lost peer.
    let log = server.stderr.wait_for_event("disconnected").await;
    assert_eq!(
        log_field(&log, "reason").as_deref(),
        Some("closed by client"),
        "{log}"
    );
    drop(bob_tx);
}

#[tokio::test]
async fn who_goes_to_the_server_and_ctrl_d_exits_zero() {
    let server = Server::start(&[]).await;
    let (_bob_tx, mut bob_rx) = chatter(connect(&server.url()).await);
    let mut alice = alice_at_the_prompt(&server).await;

    // The server answers /who to alice alone; bob's next message is the one after it.
    alice.type_keys("/who\r");
    alice.screen.wait_for("* 2 here: ").await;
    alice.type_keys("after who\r");
    let first = next(&mut bob_rx).await;
    assert!(first.ends_with(": \"after who\""), "{first}");
    alice.screen.wait_for("\"after who\"").await;

    alice.type_keys("\x04");
    assert_eq!(alice.wait().await.code(), Some(0));
    assert!(alice.terminal_is_cooked());
}

#[tokio::test]
async fn tags_are_coloured_on_a_terminal_unless_no_color_is_set() {
    let server = Server::start(&[]).await;
    let mut bob = connect(&server.url()).await;
    let mut colour = PtyClient::start(&["--url", &server.url()], &[]);
    let mut plain = PtyClient::start(&["--url", &server.url()], &[("NO_COLOR", "1")]);
    colour.screen.wait_for(WELCOME).await;
    plain.screen.wait_for(WELCOME).await;

    send(&mut bob, "in colour?").await;
    let line = tagged(&bob, "in colour?");
    let sender = format!("{}", local_addr(&bob));
    let end = colour.screen.wait_for("\"in colour?\"").await;
    let screen = colour.screen.text();
    let start = screen[..end]
        .rfind("From server: ")
        .expect("the line's start");
    let drawn = &screen[start..end];
    assert!(drawn.starts_with("From server: \x1b["), "{drawn:?}");
    assert!(
        drawn.contains(&format!("m{sender}\x1b[0m: \"in colour?\"")),
        "{drawn:?}"
    );

    plain.screen.wait_for(&format!("From server: {line}")).await;
    assert!(!plain.screen.text().contains("\x1b[0m"));

    colour.type_keys("/quit\r");
    plain.type_keys("/quit\r");
    assert_eq!(colour.wait().await.code(), Some(0));
    assert_eq!(plain.wait().await.code(), Some(0));
}

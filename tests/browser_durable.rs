//! The page across a crash of a server with `--data-dir`: headless Chromium, driven
//! through chromedriver, stays in a room while the server is killed with SIGKILL
//! and started again on the same port and data directory, and shows everything
//! said before, during and after, once each, with no notice of a restart. Without
//! chromium and chromedriver on `PATH` the test is ignored, and the summary says why.

mod common;
#[path = "browser/page.rs"]
mod page;
#[allow(dead_code)] // Screenshots and dialogs are for tests/browser.rs.
#[path = "browser/webdriver.rs"]
mod webdriver;

use common::durable::{DataDir, Member};
use page::*;
use serde_json::json;
use webdriver::{Browser, Driver};

/// Has `member` say `lines` more lines and waits until the server acknowledged
/// them all (each is then in the room's log).
async fn say_and_wait_acks(member: &mut Member, lines: usize) {
    for _ in 0..lines {
        member.say_next();
    }
    let sent = member.sent.len();
    member
        .until("every line acknowledged", |m| m.acked.len() == sent)
        .await;
}

/// The connection's state the page shows now (`connected`, `waiting`, ...).
async fn state(page: &Browser) -> String {
    let state = page
        .run("return document.getElementById('state').dataset.state", &[])
        .await;
    state.as_str().expect("a state").to_owned()
}

#[tokio::test]
#[cfg_attr(
    not(all(has_chromium, has_chromedriver)),
    ignore = "needs chromium and chromedriver (apt-get install chromium chromium-driver)"
)]
async fn the_page_gets_everything_said_while_the_server_restarted() {
    let _one = ONE_AT_A_TIME.lock().await;
    let driver = Driver::start().await;
    let data = DataDir::new(&[]);
    let server = data.start(0).await;
    let port = server.port;
    let room = format!("{}/durable", server.url());
    let alice = driver.browser(1024, 700).await;
    join(&alice, &format!("http://127.0.0.1:{port}/durable"), "alice").await;
    let (mut carol, _) = Member::join(&room, "carol").await;
    say_and_wait_acks(&mut carol, 3).await;
    wait_message(&alice, &carol.sent[2]).await;

    // A crash: nothing flushed or closed on the way out. The page must have found
    // the server gone (one failed try, so its next is a backoff away) before it
    // comes back, so that what follows is said while the page is still away.
    server.kill().await;
    alice
        .wait_for(
            "the page to find the server unreachable",
            "const s = document.getElementById('state');
             return s.dataset.state === 'waiting' && s.title.startsWith('Server unreachable')",
            &[],
        )
        .await;
    let _server = data.start(port).await;
    let recovered = carol.rejoin(&room).await;
    assert_eq!(recovered, json!({"type": "recovered", "complete": true}));
    say_and_wait_acks(&mut carol, 3).await;
    let page_then = state(&alice).await;

    // And once the page is back, live.
    wait_state(&alice, "connected").await;
    say_and_wait_acks(&mut carol, 2).await;
    let shown = wait_message(&alice, &carol.sent[7]).await;
    eprintln!("the page was {page_then:?} when the lines said while it was away were logged");

    let said: Vec<&str> = carol.sent.iter().map(String::as_str).collect();
    for before in &said[..3] {
        assert_eq!(
            count(&shown, before),
            1,
            "{before:?} shown again: {shown:#?}"
        );
    }
    assert_eq!(texts(&shown), said, "every line once, in order: {shown:#?}");
    // The same epoch: nothing may be lost, so nothing says so.
    let alarms: Vec<&Shown> = shown
        .iter()
        .filter(|s| s.warn || s.text.contains("restarted") || s.text.contains("may be lost"))
        .collect();
    assert!(alarms.is_empty(), "a notice of loss: {alarms:#?}");
    let pending = alice
        .run(
            "return document.querySelectorAll('#pending > li').length",
            &[],
        )
        .await;
    assert_eq!(pending, 0);
}

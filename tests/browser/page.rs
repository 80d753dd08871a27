//! What the browser tests read from the page and do in it: the log as a reader
//! sees it (each item's kind, sender, text and marks), waits on it under the tests'
//! `WAIT`, joining a room by the name prompt, and saying a line. Shared by
//! `tests/browser.rs` and `tests/browser_durable.rs`.
#![allow(dead_code)] // Each browser test file uses its own subset.

use serde_json::{Value, json};
use tokio::time::timeout;

use crate::common::{Client, Server, WAIT};
use crate::webdriver::{Browser, ENTER};

/// One browser test at a time: each starts Chromiums, and the machine is small.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A line in the page's log, as a reader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    /// `message` or `notice`.
    pub kind: String,
    /// The sender's tag (`alice@127.0.0.1:5000`), for messages.
    pub from: Option<String>,
    /// What it says, as text.
    pub text: String,
    /// Marked as the reader's own line.
    pub own: bool,
    /// A notice shown as a warning (something could not be recovered).
    pub warn: bool,
}

/// Reads the log as it is shown: every item's kind, sender, text and marks.
pub const READ_LOG: &str =
    "return Array.from(document.querySelectorAll('#messages > li')).map(li => ({
    kind: li.classList.contains('message') ? 'message' : 'notice',
    from: li.dataset.from || null,
    text: li.querySelector('.text').textContent,
    own: li.classList.contains('own'),
    warn: li.classList.contains('warn'),
}))";

/// The page's log as it is shown now.
pub async fn log(page: &Browser) -> Vec<Shown> {
    parse_log(&page.run(READ_LOG, &[]).await)
}

/// The log from what [`READ_LOG`] returned.
pub fn parse_log(value: &Value) -> Vec<Shown> {
    value
        .as_array()
        .expect("a list")
        .iter()
        .map(|item| Shown {
            kind: item["kind"].as_str().expect("kind").to_owned(),
            from: item["from"].as_str().map(str::to_owned),
            text: item["text"].as_str().expect("text").to_owned(),
            own: item["own"].as_bool().expect("own"),
            warn: item["warn"].as_bool().expect("warn"),
        })
        .collect()
}

/// Waits until the page's log satisfies `done`; returns it.
pub async fn wait_log(page: &Browser, what: &str, done: impl Fn(&[Shown]) -> bool) -> Vec<Shown> {
    let mut last = Vec::new();
    let found = timeout(WAIT, async {
        loop {
            last = log(page).await;
            if done(&last) {
                return last.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("waited {WAIT:?} for {what}; the log shows {last:#?}"))
}

/// Waits until a message whose text is exactly `text` is in the page's log.
pub async fn wait_message(page: &Browser, text: &str) -> Vec<Shown> {
    wait_log(page, &format!("the message {text:?}"), |log| {
        log.iter().any(|s| s.kind == "message" && s.text == text)
    })
    .await
}

/// Waits until the connection's state shown is `state`; returns its text.
pub async fn wait_state(page: &Browser, state: &str) -> String {
    let text = page
        .wait_for(
            &format!("the state {state:?}"),
            "const s = document.getElementById('state');
             return s.dataset.state === arguments[0] ? s.textContent : null",
            &[json!(state)],
        )
        .await;
    text.as_str().expect("a text").to_owned()
}

/// Opens `url` and joins as `name`, typed into the name prompt that has the focus.
pub async fn join(page: &Browser, url: &str, name: &str) {
    page.open(url).await;
    page.wait_for(
        "the name prompt, with the focus",
        "return document.activeElement === document.getElementById('name-input')",
        &[],
    )
    .await;
    page.type_keys(&format!("{name}{ENTER}")).await;
    wait_state(page, "connected").await;
}

/// The command-line client in `room` of `server` (with `extra` flags), once it has
/// been welcomed.
pub async fn command_line_client(server: &Server, room: &str, extra: &[&str]) -> Client {
    let url = format!("{}{room}", server.url());
    let mut args = vec!["--url", url.as_str()];
    args.extend_from_slice(extra);
    let client = Client::start(&args);
    client.welcomed().await;
    client
}

/// Types `line` and Enter on whatever has the focus: the message input, if the
/// page keeps it there.
pub async fn say(page: &Browser, line: &str) {
    page.type_keys(&format!("{line}{ENTER}")).await;
}

/// How many messages in `log` say exactly `text`.
pub fn count(log: &[Shown], text: &str) -> usize {
    log.iter()
        .filter(|s| s.kind == "message" && s.text == text)
        .count()
}

/// The texts of the messages in `log`, in order.
pub fn texts(log: &[Shown]) -> Vec<&str> {
    log.iter()
        .filter(|s| s.kind == "message")
        .map(|s| s.text.as_str())
        .collect()
}

//! The tests' own footing: every program some tests need is installed where `CI`
//! is set, and the helpers read the server's log lines exactly.
//!
//! A test that needs a program (Redis, Prometheus, Chromium, openssl, jq, zsh,
//! fish, util-linux's prlimit) is ignored, with the reason in the summary, where `build.rs` did not find
//! it on `PATH`; on CI the first test here fails naming it, so a green CI run is one
//! where every test ran.

mod common;

use common::{log_event, log_field};

#[test]
fn every_program_the_tests_use_is_installed_on_ci() {
    let missing = env!("MISSING_TEST_PROGRAMS");
    let on_ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    assert!(
        !on_ci || missing.is_empty(),
        "CI is set, and these programs are not on PATH, so their tests were ignored: \
         {missing} (.ci/run installs them)"
    );
}

#[test]
fn log_events_and_fields_are_read_exactly() {
    let line = "2026-11-24T08:00:00.000000Z  INFO broadcast_chat::session: disconnected addr=127.0.0.1:5 reason=\"closed \\\"by\\\" client\" clients=1";
    assert_eq!(log_event(line), Some("disconnected"));
    assert_eq!(log_field(line, "addr").as_deref(), Some("127.0.0.1:5"));
    assert_eq!(
        log_field(line, "reason").as_deref(),
        Some("closed \"by\" client")
    );
    assert_eq!(log_field(line, "clients").as_deref(), Some("1"));
    assert_eq!(log_field(line, "client"), None);
    let line = "2026-11-24T08:00:00.000000Z  WARN broadcast_chat::server: gave up waiting for clients to close remaining=1";
    assert_eq!(
        log_event(line),
        Some("gave up waiting for clients to close")
    );
    assert_eq!(log_event("Listening on port 5"), None);
    assert_eq!(log_field("Listening on port 5", "port"), None);
}

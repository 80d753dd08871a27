//! How a received text is printed: `From server: {text}`, with colours on a terminal.

use std::ffi::OsStr;

use crate::protocol;

/// Ends an ANSI colour.
const RESET: &str = "\x1b[0m";
/// The colour of notices (lines starting `* `): bold yellow.
const NOTICE_COLOR: &str = "\x1b[1;33m";
/// Colours for sender tags, chosen by the sender's name (or address).
const SENDER_COLORS: [&str; 5] = [
    "\x1b[1;32m",
    "\x1b[1;34m",
    "\x1b[1;35m",
    "\x1b[1;36m",
    "\x1b[1;31m",
];

/// The line printed for a received text: `From server: {text}`, with the sender
/// tag or the whole notice in colour when `color` is set. The text is otherwise
/// unchanged.
pub fn render(text: &str, color: bool) -> String {
    if !color {
        return format!("From server: {text}");
    }
    if text.starts_with("* ") {
        return format!("From server: {NOTICE_COLOR}{text}{RESET}");
    }
    match protocol::classic::untag(text) {
        Some((sender, _)) => {
            let rest = &text[sender.len()..];
            // A sender keeps its colour across reconnections: the name decides, not the port.
            let who = sender.split('@').next().unwrap_or(sender);
            let hash = who.bytes().fold(0x811c_9dc5_u32, |h, b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            });
            let paint = SENDER_COLORS[hash as usize % SENDER_COLORS.len()];
            format!("From server: {paint}{sender}{RESET}{rest}")
        }
        None => format!("From server: {text}"),
    }
}

/// Whether to colour the output: only on a terminal, and not when the `NO_COLOR`
/// environment variable is set to anything but the empty string (no-color.org).
pub fn use_color(stdout_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stdout_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_marks_only_the_tag_and_notices() {
        let tagged = r#"alice@127.0.0.1:5: "hi: \"x\"""#;
        assert_eq!(render(tagged, false), format!("From server: {tagged}"));
        let line = render(tagged, true);
        assert!(line.starts_with("From server: \x1b[1;"), "{line:?}");
        assert!(
            line.ends_with("alice@127.0.0.1:5\x1b[0m: \"hi: \\\"x\\\"\""),
            "{line:?}"
        );
        let stripped = line.replace(RESET, "").replace(&line[13..20], "");
        assert_eq!(stripped, format!("From server: {tagged}"));
        // The name picks the colour, so a reconnected sender keeps it.
        assert_eq!(
            render(r#"alice@127.0.0.1:6: "x""#, true)[..20],
            render(r#"alice@127.0.0.1:7: "y""#, true)[..20]
        );

        let notice = "* you missed 3 messages: your connection fell behind";
        assert_eq!(
            render(notice, true),
            format!("From server: {NOTICE_COLOR}{notice}{RESET}")
        );
        assert_eq!(
            render(protocol::WELCOME, true),
            format!("From server: {}", protocol::WELCOME)
        );
    }

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        assert!(use_color(true, None));
        assert!(use_color(true, Some(OsStr::new(""))));
        assert!(!use_color(true, Some(OsStr::new("1"))));
        assert!(!use_color(false, None));
    }
}

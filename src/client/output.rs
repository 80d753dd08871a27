//! What `--json` prints for a classic server's line: one documented object a line.

use serde::Serialize;

/// A classic server's line as a JSON object: `{"type":"line","text":"..."}`.
#[derive(Serialize)]
struct ClassicLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'a str,
}

/// The JSON line for a classic server's `text` (without the newline).
pub(super) fn classic_json(text: &str) -> String {
    let line = ClassicLine { kind: "line", text };
    // Serialising two strings cannot fail.
    serde_json::to_string(&line).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_classic_line_is_wrapped_with_its_text_as_sent() {
        assert_eq!(
            classic_json(r#"127.0.0.1:5: "hi \"you\"""#),
            r#"{"type":"line","text":"127.0.0.1:5: \"hi \\\"you\\\"\""}"#
        );
        assert_eq!(
            classic_json("Welcome to chat! Type a message"),
            r#"{"type":"line","text":"Welcome to chat! Type a message"}"#
        );
    }
}

//! The wire format: how a broadcast line is tagged, the notices the server sends,
//! and the close reasons. Pure functions, tested beside them.

use std::net::SocketAddr;

/// The first message every client gets.
pub const WELCOME: &str = "Welcome to chat! Type a message";

/// Close reason sent to every client when the server shuts down (code 1001).
pub const REASON_SHUTDOWN: &str = "server shutting down";
/// Close reason for a binary message (code 1003).
pub const REASON_BINARY: &str = "binary messages are not supported; send text";
/// Close reason for a client that kept sending over the rate limit (code 1008).
pub const REASON_FLOOD: &str = "too many messages for too long";
/// Close reason sent by the client when its input ends (code 1000).
pub const REASON_BYE: &str = "bye";

/// Tags a message with its sender's address, exactly as `format!("{addr:?}: {text:?}")`
/// writes it: `127.0.0.1:53422: "hello"`. The Debug quoting escapes control
/// characters, so no terminal escape sequence reaches other people's terminals.
pub fn tag(addr: SocketAddr, text: &str) -> String {
    format!("{addr:?}: {text:?}")
}

/// The notice a client gets when it fell `missed` messages behind the channel.
/// Notices start with `* `, which no tagged message can.
pub fn missed_notice(missed: u64) -> String {
    let s = if missed == 1 { "" } else { "s" };
    format!("* you missed {missed} message{s}: your connection fell behind")
}

/// The notice a client gets when `dropped` of its messages went over the rate limit.
pub fn rate_notice(dropped: u64, rate: f64) -> String {
    let s = if dropped == 1 { "" } else { "s" };
    format!("* slow down: {dropped} message{s} dropped (the limit is {rate} per second)")
}

/// Splits a broadcast line into its sender tag and the original text: the inverse
/// of [`tag`]. Returns `None` for lines that are not tagged messages (notices).
pub fn untag(line: &str) -> Option<(&str, String)> {
    let (sender, quoted) = line.split_once(": \"")?;
    let body = quoted.strip_suffix('"')?;
    Some((sender, unescape_debug(body)?))
}

/// Reverses the escaping of `str`'s `Debug` output (without the outer quotes).
fn unescape_debug(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            '0' => '\0',
            c @ ('\\' | '"' | '\'') => c,
            'u' => {
                let rest = chars.as_str().strip_prefix('{')?;
                let end = rest.find('}')?;
                let c = char::from_u32(u32::from_str_radix(&rest[..end], 16).ok()?)?;
                chars = rest[end + 1..].chars();
                c
            }
            _ => return None,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:53422".parse().expect("valid address")
    }

    #[test]
    fn tag_matches_the_classic_format() {
        assert_eq!(tag(addr(), "hello"), r#"127.0.0.1:53422: "hello""#);
    }

    #[test]
    fn tag_escapes_terminal_control_sequences() {
        let line = tag(addr(), "\x1b[2Jgotcha\r\n\u{7}");
        assert_eq!(line, r#"127.0.0.1:53422: "\u{1b}[2Jgotcha\r\n\u{7}""#);
        assert!(!line.chars().any(char::is_control));
    }

    #[test]
    fn tag_escapes_quotes_and_keeps_unicode() {
        assert_eq!(
            tag(addr(), r#"say "hi" \o/ ünï"#),
            r#"127.0.0.1:53422: "say \"hi\" \\o/ ünï""#
        );
    }

    #[test]
    fn ipv6_addresses_are_tagged_with_brackets() {
        let v6: SocketAddr = "[::1]:9".parse().expect("valid address");
        assert_eq!(tag(v6, "x"), r#"[::1]:9: "x""#);
    }

    #[test]
    fn untag_inverts_tag() {
        for text in [
            "",
            "hello",
            "a: \"b\"",
            "\x1b[31m\t\0\u{200b}\u{301}",
            "\\u{41}",
            "日本語",
        ] {
            let line = tag(addr(), text);
            assert_eq!(
                untag(&line),
                Some(("127.0.0.1:53422", text.to_string())),
                "{line}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_tagged_without_control_characters_and_round_trips(text in proptest::prelude::any::<String>(), port: u16) {
            let from: SocketAddr = ([10, 0, 0, 1], port).into();
            let line = tag(from, &text);
            proptest::prop_assert!(!line.chars().any(char::is_control), "{:?}", line);
            let expected_sender = from.to_string();
            proptest::prop_assert_eq!(untag(&line), Some((expected_sender.as_str(), text)));
        }

        #[test]
        fn control_heavy_text_round_trips(text in "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}\"\\\\'a-z\\u{300}-\\u{36f}\\u{202e}]{0,40}") {
            let line = tag(addr(), &text);
            proptest::prop_assert!(!line.chars().any(char::is_control), "{:?}", line);
            proptest::prop_assert_eq!(untag(&line).map(|(_, t)| t), Some(text));
        }
    }

    #[test]
    fn notices_are_not_tagged_messages() {
        assert_eq!(untag(&missed_notice(3)), None);
        assert!(missed_notice(3).starts_with("* "));
        assert_eq!(
            missed_notice(1),
            "* you missed 1 message: your connection fell behind"
        );
        assert_eq!(
            missed_notice(12),
            "* you missed 12 messages: your connection fell behind"
        );
    }
}

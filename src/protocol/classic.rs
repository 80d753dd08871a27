//! The classic wire format, byte for byte the exercise's: one text frame per line,
//! a broadcast tagged `127.0.0.1:53422: "hello"`, notices starting `* `. Pure
//! functions, tested beside them.

use std::net::SocketAddr;

/// Who a client is in tags and notices: `alice@127.0.0.1:53422` for a named client,
/// the address alone otherwise.
pub fn sender(name: Option<&str>, addr: SocketAddr) -> String {
    match name {
        Some(name) => format!("{name}@{addr:?}"),
        None => format!("{addr:?}"),
    }
}

/// Tags a message with its sender as [`sender`] writes it:
/// `alice@127.0.0.1:53422: "hello"`, or for an unnamed sender exactly the classic
/// exercise's `format!("{addr:?}: {text:?}")`: `127.0.0.1:53422: "hello"`. The
/// `Debug` quoting escapes control characters, so no terminal escape sequence
/// reaches other people's terminals.
pub fn tag_from(sender: &str, text: &str) -> String {
    format!("{sender}: {text:?}")
}

/// What a read-only token holder is told of each line it sends (classic: after `* `).
pub const READ_ONLY_TEXT: &str = "your token is read-only: your lines do not reach the room";

/// What a client is told just before the server closes it because its token expired.
pub const EXPIRED_NOTICE: &str = "* your token expired: get a new one to come back";

/// A room's presence notice: `* alice@127.0.0.1:53422 joined (3 here)`.
pub fn presence_notice(who: &str, joined: bool, here: usize) -> String {
    let what = if joined { "joined" } else { "left" };
    format!("* {who} {what} ({here} here)")
}

/// The answer to [`super::WHO_COMMAND`]: `* 3 here: alice@..., bob@..., 127.0.0.1:5`.
pub fn who_notice(members: &[String]) -> String {
    format!("* {} here: {}", members.len(), members.join(", "))
}

/// The notice a client gets when it fell `missed` messages behind the channel.
/// Notices start with `* `, which no tagged message can.
pub fn missed_notice(missed: u64) -> String {
    let s = if missed == 1 { "" } else { "s" };
    format!("* you missed {missed} message{s}: your connection fell behind")
}

/// The notice a returning client gets when `missed` messages said while it was away
/// are no longer in the room's log.
pub fn away_notice(missed: u64) -> String {
    let s = if missed == 1 { "" } else { "s" };
    format!("* you missed {missed} message{s} while you were away")
}

/// The notice a returning client gets when the room it left is gone (the server
/// restarted, or everyone left and the room began again): what was said in between
/// may be lost, and how much is not known.
pub const RESTARTED_NOTICE: &str =
    "* the room was restarted while you were away: messages sent meanwhile may be lost";

/// The notice a client gets when the room's log began again under it (a Redis that
/// restarted without its data): what was said meanwhile may be lost.
pub const LOG_LOST_NOTICE: &str =
    "* the room's log was lost and began again: messages sent meanwhile may be lost";

/// The notice every member gets when the shared log (Redis) goes out of reach.
pub const DEGRADED_NOTICE: &str = "* the chat's shared log is out of reach: messages are held, and delivered to everyone once it is back";

/// The notice every member gets when the shared log (Redis) is back.
pub const RESTORED_NOTICE: &str = "* the chat's shared log is back: the held messages follow";

/// The notice every member gets when the data directory cannot be written.
pub const DELAYED_NOTICE: &str =
    "* the server cannot store messages now: they are held, and delivered once it can";

/// The notice every member gets when the data directory takes writes again.
pub const STORED_NOTICE: &str = "* the server stores messages again: the held ones follow";

/// What a sender is told when its line was refused: the server holds as many
/// lines as it may while it cannot store them (a classic client gets it as a
/// `* ` notice, a structured one in an error frame).
pub const NOT_ACCEPTED_TEXT: &str = "your line was not accepted: the server cannot store messages now, and holds as many as it may; send it again later";

/// The notice a returning client gets when the log (Redis) is out of reach, so
/// nothing can be replayed.
pub const UNAVAILABLE_NOTICE: &str =
    "* the chat's shared log is out of reach: what was said while you were away cannot be replayed";

/// The notice a client gets when `dropped` of its messages went over the rate limit.
pub fn rate_notice(dropped: u64, rate: f64) -> String {
    let s = if dropped == 1 { "" } else { "s" };
    format!("* slow down: {dropped} message{s} dropped (the limit is {rate} per second)")
}

/// Splits a broadcast line into its sender tag and the original text: the inverse
/// of [`tag_from`]. Returns `None` for lines that are not tagged messages (notices).
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

    /// What the server broadcasts for an unnamed sender at `addr`.
    fn tag(addr: SocketAddr, text: &str) -> String {
        tag_from(&sender(None, addr), text)
    }

    #[test]
    fn tag_matches_the_classic_format() {
        assert_eq!(tag(addr(), "hello"), r#"127.0.0.1:53422: "hello""#);
    }

    #[test]
    fn tag_escapes_terminal_control_sequences() {
        let line = tag(addr(), "\x1b[2Jgotcha\r\n\u{7}");
        assert_eq!(line, r#"127.0.0.1:53422: "\u{1b}[2Jgotcha\r\n\u{7}""#);
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
    fn named_senders_are_tagged_name_at_address() {
        let alice = sender(Some("alice"), addr());
        assert_eq!(
            tag_from(&alice, "hello"),
            r#"alice@127.0.0.1:53422: "hello""#
        );
        assert_eq!(
            tag_from(&sender(None, addr()), "hello"),
            r#"127.0.0.1:53422: "hello""#
        );
        assert_eq!(
            untag(&tag_from(&alice, "a: \"b\"")),
            Some(("alice@127.0.0.1:53422", "a: \"b\"".into()))
        );
    }

    #[test]
    fn presence_and_who_notices() {
        assert_eq!(
            presence_notice("alice@127.0.0.1:1", true, 3),
            "* alice@127.0.0.1:1 joined (3 here)"
        );
        assert_eq!(
            presence_notice("127.0.0.1:2", false, 2),
            "* 127.0.0.1:2 left (2 here)"
        );
        assert_eq!(
            who_notice(&["a@1".into(), "b@2".into()]),
            "* 2 here: a@1, b@2"
        );
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
        assert_eq!(away_notice(1), "* you missed 1 message while you were away");
        for notice in [away_notice(2), RESTARTED_NOTICE.to_owned()] {
            assert!(notice.starts_with("* "), "{notice}");
            assert_eq!(untag(&notice), None);
        }
    }
}

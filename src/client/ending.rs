//! How a chat ends (and the exit code that says so), and what it reports on the side.

use std::fmt;
use std::time::Duration;

use crate::Error;
use crate::Result;

/// What the client says once when the server chose no subprotocol: it cannot know
/// whether the server took a line.
pub const CLASSIC_PROMISE: &str = "the server does not speak broadcast-chat.v1: lines are sent without acknowledgement, so the client exits 0 once they are written, not once the server took them, and --history and --after are not understood";

/// How a chat ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Our input ended (or we were asked to quit) and we closed with 1000.
    InputClosed,
    /// The server closed the connection with this code and reason.
    ServerClosed {
        /// The close code, if the server sent one.
        code: Option<u16>,
        /// The close reason, possibly empty.
        reason: String,
    },
    /// The `--count` messages were received, and our lines acknowledged.
    Counted,
    /// `--timeout` passed first; says what was still awaited.
    TimedOut {
        /// How long the timeout was.
        after: Duration,
        /// What the client was waiting for: `the acknowledgement of line 2 ("hi")`.
        waiting: String,
    },
    /// The server refused a line of ours (over its rate limit, or an `error`
    /// frame); the first such line.
    Refused(Refusal),
}

/// A line the server did not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Which line: 1 for the first one sent.
    pub line: u64,
    /// The line's text.
    pub text: String,
    /// What the server said: `* slow down: ...`, or an `error` frame's text.
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the server refused line {} ({:?}): {}",
            self.line, self.text, self.reason
        )
    }
}

impl Ending {
    /// The process's exit code for this ending (see the README's exit code table):
    /// 0 when the chat ended as asked or by the server, 3 for a timeout, 4 for a
    /// refused line.
    pub fn exit_code(&self) -> u8 {
        match self {
            Ending::InputClosed | Ending::ServerClosed { .. } | Ending::Counted => 0,
            Ending::TimedOut { .. } => 3,
            Ending::Refused(_) => 4,
        }
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::InputClosed => f.write_str("the input ended"),
            Ending::ServerClosed { code, reason } => {
                f.write_str("the server closed the connection: ")?;
                match code {
                    Some(code) => write!(f, "{code}")?,
                    None => f.write_str("no code")?,
                }
                if !reason.is_empty() {
                    write!(f, " ({reason})")?;
                }
                Ok(())
            }
            Ending::Counted => f.write_str("the messages counted were received"),
            Ending::TimedOut { after, waiting } => {
                write!(f, "timed out after {after:?} waiting for {waiting}")
            }
            Ending::Refused(refusal) => refusal.fmt(f),
        }
    }
}

/// What [`chat`](super::chat()) reports while it reconnects, for the user to see.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The connection failed or was lost; the next attempt comes after `delay`.
    Retrying {
        /// Why, as one line.
        cause: String,
        /// How long until the next attempt.
        delay: Duration,
        /// Whether a connection had been up before (reconnecting, not retrying).
        again: bool,
    },
    /// The server did not take a frame of ours, or sent one we cannot read.
    Server(String),
    /// The server speaks no subprotocol: what the client can promise then.
    Classic,
    /// An attempt after a failure succeeded.
    Connected {
        /// The server's URL, as people write it.
        url: String,
        /// Whether a connection had been up before.
        again: bool,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Retrying {
                cause,
                delay,
                again,
            } => {
                let what = if *again { "reconnecting" } else { "retrying" };
                write!(f, "{cause}; {what} in {:.1} s", delay.as_secs_f64())
            }
            Event::Server(text) => f.write_str(text),
            Event::Classic => f.write_str(CLASSIC_PROMISE),
            Event::Connected { url, again: true } => write!(f, "reconnected to {url}"),
            Event::Connected { url, again: false } => write!(f, "connected to {url}"),
        }
    }
}

/// Whether `result` of a connection attempt or a chat is worth another attempt:
/// the server was not reachable, the connection was lost, the server (or a proxy in
/// front of it: 502, 504) was unavailable, or it closed with a code that says "come
/// back later".
pub fn is_transient(result: &Result<Ending>) -> bool {
    match result {
        Ok(Ending::ServerClosed { code, .. }) => matches!(code, Some(1001 | 1011 | 1012 | 1013)),
        Ok(_) => false,
        Err(
            Error::Resolve { .. }
            | Error::Connect { .. }
            | Error::ConnectTimeout { .. }
            | Error::ConnectionLost { .. },
        ) => true,
        Err(Error::Refused { status, .. }) => matches!(status, 502..=504),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_endings_are_retried() {
        let url = String::from("ws://h");
        let closed = |code| {
            Ok(Ending::ServerClosed {
                code,
                reason: String::new(),
            })
        };
        assert!(is_transient(&closed(Some(1001))));
        assert!(is_transient(&closed(Some(1012))));
        assert!(!is_transient(&closed(Some(1000))));
        assert!(!is_transient(&closed(Some(1008))));
        assert!(!is_transient(&closed(None)));
        assert!(!is_transient(&Ok(Ending::InputClosed)));
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_transient(&Err(Error::Connect {
            url: url.clone(),
            source: io
        })));
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(is_transient(&Err(Error::Resolve {
            url: url.clone(),
            host: "h".into(),
            source: io
        })));
        assert!(is_transient(&Err(Error::ConnectTimeout {
            url: url.clone()
        })));
        let refused = |status| {
            Err(Error::Refused {
                url: url.clone(),
                status,
                reason: None,
            })
        };
        assert!(is_transient(&refused(502)));
        assert!(is_transient(&refused(503)));
        assert!(is_transient(&refused(504)));
        assert!(!is_transient(&refused(500)));
        assert!(!is_transient(&refused(400)));
        assert!(!is_transient(&Err(Error::Unauthorized {
            sent: true,
            reason: None
        })));
        // A token the server said has expired is not tried again.
        assert!(!is_transient(&closed(Some(crate::auth::CLOSE_EXPIRED))));
    }

    #[test]
    fn each_ending_has_its_exit_code_and_a_line() {
        let refused = Ending::Refused(Refusal {
            line: 2,
            text: "b \"x\"".into(),
            reason: "* slow down: 1 messages dropped (the limit is 1 per second)".into(),
        });
        assert_eq!(refused.exit_code(), 4);
        assert_eq!(
            refused.to_string(),
            r#"the server refused line 2 ("b \"x\""): * slow down: 1 messages dropped (the limit is 1 per second)"#
        );
        let timed_out = Ending::TimedOut {
            after: Duration::from_millis(1500),
            waiting: "2 more messages (--count 3)".into(),
        };
        assert_eq!(timed_out.exit_code(), 3);
        assert_eq!(
            timed_out.to_string(),
            "timed out after 1.5s waiting for 2 more messages (--count 3)"
        );
        assert_eq!(Ending::Counted.exit_code(), 0);
        assert_eq!(Ending::InputClosed.exit_code(), 0);
        let closed = Ending::ServerClosed {
            code: Some(1001),
            reason: "server shutting down".into(),
        };
        assert_eq!(closed.exit_code(), 0);
        assert!(!is_transient(&Ok(Ending::Counted)));
    }
}

//! The structured subprotocol, `broadcast-chat.v1`: one JSON object per text frame,
//! each with a `type`. The server's frames carry the room's epoch and each message's
//! offset, so a client can resume where it left off; the client's lines carry an id,
//! so a line sent again after a reconnect is shown once. The README's "Structured
//! protocol" section describes every frame with an example.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Epoch;

/// The subprotocol's name in `Sec-WebSocket-Protocol`.
pub const SUBPROTOCOL: &str = "broadcast-chat.v1";

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerFrame<'a> {
    /// The first frame: where the room stands.
    Welcome(#[serde(borrow)] Welcome<'a>),
    /// A chat line, from the room's log.
    Message(#[serde(borrow)] ChatMessage<'a>),
    /// Something the server says: presence (from the log), or to this client alone.
    Notice(#[serde(borrow)] Notice<'a>),
    /// How a resumption went, after the replayed messages.
    Recovered(#[serde(borrow)] Recovered<'a>),
    /// A line of this client's was accepted (or was a repeat).
    Ack(Ack),
    /// A frame of this client's was not understood; the connection stays open.
    Error(#[serde(borrow)] ErrorFrame<'a>),
}

/// The first frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome<'a> {
    /// `Welcome to chat! Type a message`.
    #[serde(borrow)]
    pub text: Cow<'a, str>,
    /// The room's name; `""` is the lobby.
    #[serde(borrow)]
    pub room: Cow<'a, str>,
    /// The room's epoch.
    pub epoch: Epoch,
    /// The room's last offset when this client joined; 0 when nothing was said yet.
    pub offset: u64,
    /// How this client is tagged: `alice@127.0.0.1:53422`.
    #[serde(borrow)]
    pub you: Cow<'a, str>,
    /// Whether this client's own lines come back to it (false with `--no-echo`).
    pub echo: bool,
}

/// A chat line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage<'a> {
    /// The room's name.
    #[serde(borrow)]
    pub room: Cow<'a, str>,
    /// The room's epoch.
    pub epoch: Epoch,
    /// Its place in the room's log: 1, 2, 3, ...; absent for a line said while the
    /// log was out of reach (a Redis outage), which cannot be replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The sender's tag: `alice@127.0.0.1:53422`.
    #[serde(borrow)]
    pub from: Cow<'a, str>,
    /// The text as the sender wrote it (JSON escaping only).
    #[serde(borrow)]
    pub text: Cow<'a, str>,
}

/// What a notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NoticeKind {
    /// Someone joined the room (with `--presence`; in the log).
    Joined,
    /// Someone left the room (with `--presence`; in the log).
    Left,
    /// The answer to `who`: everyone in the room.
    Who,
    /// This client fell further behind than the room's log reaches.
    Missed,
    /// This client's lines went over the rate limit and were dropped.
    SlowDown,
    /// The room's log began again (a new epoch): messages may have been lost.
    Restarted,
    /// Sent by earlier servers only, whose members' lines reached only their own
    /// server while Redis was out of reach; kept so that a client still reads it.
    Degraded,
    /// The log takes messages again (Redis is back, or the data directory takes
    /// writes): the held ones follow, in order.
    Restored,
    /// The log cannot take messages now (Redis is out of reach, or the data
    /// directory cannot be written): they are held, neither delivered nor
    /// acknowledged, until it can.
    Delayed,
    /// The client's signed token expired: the server closes the connection next
    /// (close code 4001).
    Expired,
}

/// A notice. `text` is always the classic line (`* ...`); the other fields depend on
/// the kind and are left out when they do not apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice<'a> {
    /// What it is about.
    pub kind: NoticeKind,
    /// The classic line: `* alice@127.0.0.1:53422 joined (3 here)`.
    #[serde(borrow)]
    pub text: Cow<'a, str>,
    /// The room's name (joined, left).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub room: Option<Cow<'a, str>>,
    /// The room's epoch (joined, left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<Epoch>,
    /// Its place in the room's log (joined, left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Who joined or left.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub who: Option<Cow<'a, str>>,
    /// How many are in the room now (joined, left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub here: Option<usize>,
    /// Everyone in the room, sorted (who).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<Cow<'a, str>>>,
    /// How many messages were missed or dropped (missed, slow-down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl<'a> Notice<'a> {
    /// A notice of `kind` with its classic line and no other field.
    pub fn new(kind: NoticeKind, text: impl Into<Cow<'a, str>>) -> Self {
        Self {
            kind,
            text: text.into(),
            room: None,
            epoch: None,
            offset: None,
            who: None,
            here: None,
            members: None,
            count: None,
        }
    }
}

/// How a resumption went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recovered<'a> {
    /// Whether every message since the client's offset was replayed.
    pub complete: bool,
    /// How many messages are lost, when that is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<u64>,
    /// Whether the room the client left is gone (a new epoch), so that what was said
    /// in between may be lost and how much is not known.
    #[serde(default, skip_serializing_if = "is_false")]
    pub restarted: bool,
    /// The classic line to show when the recovery is not complete.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Cow<'a, str>>,
}

/// A line of the client's was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The id the client gave the line.
    pub id: u64,
    /// Its place in the room's log, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The id had been accepted before, so the line was not sent again.
    #[serde(default, skip_serializing_if = "is_false")]
    pub duplicate: bool,
}

/// Why a frame of the client's was not understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// Not a JSON object of the form the protocol describes.
    BadFrame,
    /// A `type` the server does not know.
    UnknownType,
    /// A `send` whose `id` is missing or 0.
    BadId,
    /// A resumption from an offset the room never reached.
    BadOffset,
    /// A `send` from a client whose signed token is read-only: it never reaches
    /// the room.
    ReadOnly,
    /// A `send` the server did not accept: it cannot store messages now and holds
    /// as many as it may. The line reached no one; the client may send it again.
    NotAccepted,
}

/// A frame the server did not understand, or a resumption it could not honour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorFrame<'a> {
    /// What kind of error.
    pub code: ErrorCode,
    /// One line for people.
    #[serde(borrow)]
    pub text: Cow<'a, str>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference.
fn is_false(value: &bool) -> bool {
    !*value
}

impl Serialize for Epoch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Epoch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<'de, str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl<'a> ServerFrame<'a> {
    /// Reads a frame the server sent.
    ///
    /// # Errors
    /// serde_json's error when `json` is not a frame of this protocol.
    pub fn parse(json: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every key is a string and every value
        // a string, number, bool or list of strings.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A frame the client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// `{"type":"send","id":7,"text":"hello"}`: a line for the room. Ids are the
    /// client's own, greater than 0 and increasing within its session.
    Send {
        /// The client's id for the line.
        id: u64,
        /// The line.
        text: Cow<'a, str>,
    },
    /// `{"type":"who"}`: who is in the room? The answer comes to this client alone.
    Who,
}

/// What [`ClientFrame::parse`] reads before it knows the type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// A client frame that was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFrame {
    /// What kind of error, for the error frame.
    pub code: ErrorCode,
    /// One line for people.
    pub text: String,
}

impl fmt::Display for BadFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'a> ClientFrame<'a> {
    /// Reads a client frame.
    ///
    /// # Errors
    /// A [`BadFrame`] saying what is wrong: not JSON of the right form, an unknown
    /// `type`, a `send` without text or without an id greater than 0.
    pub fn parse(json: &'a str) -> Result<Self, BadFrame> {
        let bad = |code, text: String| BadFrame { code, text };
        let raw: RawClientFrame<'a> = serde_json::from_str(json).map_err(|e| {
            bad(
                ErrorCode::BadFrame,
                format!("not a frame of {SUBPROTOCOL}: {e}"),
            )
        })?;
        match raw.kind.as_ref() {
            "send" => {
                let text = raw.text.ok_or_else(|| {
                    bad(ErrorCode::BadFrame, "a send frame needs a text".to_owned())
                })?;
                match raw.id {
                    Some(id @ 1..) => Ok(ClientFrame::Send { id, text }),
                    _ => Err(bad(
                        ErrorCode::BadId,
                        "a send frame needs an id, a whole number greater than 0".to_owned(),
                    )),
                }
            }
            "who" => Ok(ClientFrame::Who),
            other => Err(bad(
                ErrorCode::UnknownType,
                format!("unknown frame type {other:?}: use \"send\" or \"who\""),
            )),
        }
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        match self {
            ClientFrame::Send { id, text } => {
                #[derive(Serialize)]
                struct Send<'a> {
                    #[serde(rename = "type")]
                    kind: &'static str,
                    id: u64,
                    text: &'a str,
                }
                let send = Send {
                    kind: "send",
                    id: *id,
                    text,
                };
                serde_json::to_string(&send).unwrap_or_default()
            }
            ClientFrame::Who => r#"{"type":"who"}"#.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: &ServerFrame<'_>, json: &str) {
        assert_eq!(frame.to_json(), json);
        assert_eq!(
            &serde_json::from_str::<ServerFrame<'_>>(json).expect(json),
            frame
        );
    }

    #[test]
    fn server_frames_have_the_documented_form() {
        let epoch = Epoch(0x3f9a_0c12_d4e5_b678);
        round_trip(
            &ServerFrame::Welcome(Welcome {
                text: super::super::WELCOME.into(),
                room: "rust".into(),
                epoch,
                offset: 41,
                you: "alice@127.0.0.1:53422".into(),
                echo: true,
            }),
            r#"{"type":"welcome","text":"Welcome to chat! Type a message","room":"rust","epoch":"3f9a0c12d4e5b678","offset":41,"you":"alice@127.0.0.1:53422","echo":true}"#,
        );
        round_trip(
            &ServerFrame::Message(ChatMessage {
                room: "rust".into(),
                epoch,
                offset: Some(42),
                from: "alice@127.0.0.1:53422".into(),
                text: "say \"hi\"\n".into(),
            }),
            r#"{"type":"message","room":"rust","epoch":"3f9a0c12d4e5b678","offset":42,"from":"alice@127.0.0.1:53422","text":"say \"hi\"\n"}"#,
        );
        round_trip(
            &ServerFrame::Notice(Notice {
                room: Some("rust".into()),
                epoch: Some(epoch),
                offset: Some(43),
                who: Some("bob@127.0.0.1:53430".into()),
                here: Some(2),
                ..Notice::new(NoticeKind::Joined, "* bob@127.0.0.1:53430 joined (2 here)")
            }),
            r#"{"type":"notice","kind":"joined","text":"* bob@127.0.0.1:53430 joined (2 here)","room":"rust","epoch":"3f9a0c12d4e5b678","offset":43,"who":"bob@127.0.0.1:53430","here":2}"#,
        );
        round_trip(
            &ServerFrame::Notice(Notice {
                count: Some(3),
                ..Notice::new(NoticeKind::SlowDown, "* slow down")
            }),
            r#"{"type":"notice","kind":"slow-down","text":"* slow down","count":3}"#,
        );
        round_trip(
            &ServerFrame::Recovered(Recovered {
                complete: true,
                missed: None,
                restarted: false,
                text: None,
            }),
            r#"{"type":"recovered","complete":true}"#,
        );
        round_trip(
            &ServerFrame::Ack(Ack {
                id: 7,
                offset: Some(42),
                duplicate: true,
            }),
            r#"{"type":"ack","id":7,"offset":42,"duplicate":true}"#,
        );
        round_trip(
            &ServerFrame::Error(ErrorFrame {
                code: ErrorCode::UnknownType,
                text: "unknown".into(),
            }),
            r#"{"type":"error","code":"unknown-type","text":"unknown"}"#,
        );
    }

    #[test]
    fn client_frames_parse_and_print() {
        for frame in [
            ClientFrame::Send {
                id: 7,
                text: "hello \"you\"".into(),
            },
            ClientFrame::Who,
        ] {
            assert_eq!(ClientFrame::parse(&frame.to_json()), Ok(frame));
        }
        assert_eq!(
            ClientFrame::parse(r#"{"type":"send","id":1,"text":"x"}"#),
            Ok(ClientFrame::Send {
                id: 1,
                text: "x".into()
            })
        );
    }

    #[test]
    fn bad_client_frames_say_what_is_wrong() {
        for (json, code, start) in [
            (
                "hello",
                ErrorCode::BadFrame,
                "not a frame of broadcast-chat.v1: ",
            ),
            (
                "{}",
                ErrorCode::BadFrame,
                "not a frame of broadcast-chat.v1: missing field `type`",
            ),
            (
                r#"{"type":"send","id":1,"extra":2}"#,
                ErrorCode::BadFrame,
                "not a frame",
            ),
            (
                r#"{"type":"send","id":1}"#,
                ErrorCode::BadFrame,
                "a send frame needs a text",
            ),
            (
                r#"{"type":"send","text":"x"}"#,
                ErrorCode::BadId,
                "a send frame needs an id",
            ),
            (
                r#"{"type":"send","id":0,"text":"x"}"#,
                ErrorCode::BadId,
                "a send frame needs an id",
            ),
            (
                r#"{"type":"send","id":-1,"text":"x"}"#,
                ErrorCode::BadFrame,
                "not a frame",
            ),
            (
                r#"{"type":"dance"}"#,
                ErrorCode::UnknownType,
                "unknown frame type \"dance\"",
            ),
        ] {
            let err = ClientFrame::parse(json).expect_err(json);
            assert_eq!(err.code, code, "{json}: {err}");
            assert!(err.text.starts_with(start), "{json}: {err}");
            assert!(!err.text.contains('\n'), "{err}");
        }
    }
}

//! What is said in a room, and its one encoding into each wire format: a
//! [`Record`] (a chat line, someone joining or leaving) at its place in a log is
//! what stores keep and instances tell each other ([`Logged`]); [`Record::classic`]
//! and [`Record::structured`] are the only encoders, used once per format for an
//! [`Entry`] (both formats, for fan-out) or a [`Delivery`] (one, for a reader).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use tokio_websockets::Message;

use super::{Format, SERVER, SenderId};
use crate::protocol::structured::{ChatMessage, Notice, NoticeKind, ServerFrame};
use crate::protocol::{Epoch, classic};

/// When the server accepted a message: nanoseconds since the process began, for
/// the delivery latency metric (8 bytes a message, where an `Instant` takes 16).
pub(crate) fn stamp() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    /// A chat line.
    #[serde(rename = "m")]
    Chat,
    /// Someone joined the room.
    #[serde(rename = "j")]
    Joined,
    /// Someone left the room.
    #[serde(rename = "l")]
    Left,
}

/// One thing said in a room; it borrows its text until a store keeps it. Field
/// names are short: every message carries them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record<'a> {
    /// What it is.
    #[serde(rename = "k")]
    pub(crate) kind: Kind,
    /// Who sent it (the server itself for joins and leaves), for no-echo.
    #[serde(rename = "f")]
    pub(crate) from: SenderId,
    /// The sender's tag, or who joined or left.
    #[serde(rename = "w")]
    pub(crate) who: Cow<'a, str>,
    /// The line (chat only).
    #[serde(rename = "t", default, skip_serializing_if = "str::is_empty")]
    pub(crate) text: Cow<'a, str>,
    /// How many are in the room now (joins and leaves only).
    #[serde(rename = "h", default, skip_serializing_if = "is_zero")]
    pub(crate) here: usize,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference.
fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A record with its place in a room's log, as the Redis log keeps it and
/// publishes it: `{"e":"3f9a0c12d4e5b678","o":42,"k":"m","f":7,"w":"alice@...","t":"hi"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Logged {
    /// The room's epoch.
    #[serde(rename = "e")]
    pub(crate) epoch: Epoch,
    /// Its offset in that epoch.
    #[serde(rename = "o")]
    pub(crate) offset: u64,
    /// What was said.
    #[serde(flatten)]
    pub(crate) record: Record<'static>,
}

/// One message, encoded once in each wire format: what a room's channels carry and
/// what the memory log keeps.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Its place in the room's log; 0 for a message that is not in it.
    pub(crate) offset: u64,
    /// The epoch of the log it is in.
    pub(crate) epoch: Epoch,
    /// Who sent it, so that a session with no-echo leaves out its own.
    pub(crate) from: SenderId,
    /// When this server accepted it (from a client, or from Redis): a [`stamp`].
    pub(crate) accepted: u64,
    /// The classic line: `127.0.0.1:53422: "hello"` or `* ... joined (2 here)`.
    pub(crate) classic: Message,
    /// The structured frame: `{"type":"message",...}`.
    pub(crate) structured: Message,
}

/// One message on a room's channel (offset 0: not in the log). Cloning it is cheap: the frame is a
/// reference-counted `Message` encoded once, whatever the number of receivers.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// Its offset in the room's log; 0 for a message that is not in it (a notice
    /// of the server's to this instance's members), which every session writes
    /// as it comes.
    pub(crate) offset: u64,
    /// The epoch of the log it is in: a new one means the log began again.
    pub(crate) epoch: Epoch,
    /// When this server accepted it, for the latency metric.
    pub(crate) accepted: u64,
    /// Who sent it, so a session can leave out its own messages (`--no-echo`).
    pub(crate) from: SenderId,
    /// The frame as it goes on the wire.
    pub(crate) message: Message,
}

impl Record<'_> {
    /// A chat line `text` from member `from`, tagged `who`.
    pub(crate) fn chat<'a>(from: SenderId, who: &'a str, text: &'a str) -> Record<'a> {
        Record {
            kind: Kind::Chat,
            from,
            who: Cow::Borrowed(who),
            text: Cow::Borrowed(text),
            here: 0,
        }
    }

    /// `who` joined (or left), leaving `here` in the room.
    pub(crate) fn presence(who: &str, joined: bool, here: usize) -> Record<'_> {
        Record {
            kind: if joined { Kind::Joined } else { Kind::Left },
            from: SERVER,
            who: Cow::Borrowed(who),
            text: Cow::Borrowed(""),
            here,
        }
    }

    /// The record in both wire formats, at `offset` of `epoch` in `room`; an offset
    /// of 0 means not in the log.
    pub(crate) fn encode(&self, room: &str, epoch: Epoch, offset: u64) -> Entry {
        self.encode_with(self.classic(), room, epoch, offset)
    }

    /// As [`Record::encode`], with its [`Record::classic`] line made already: it
    /// does not depend on the place in the log, so a log makes it before its lock.
    pub(crate) fn encode_with(
        &self,
        classic: Message,
        room: &str,
        epoch: Epoch,
        offset: u64,
    ) -> Entry {
        Entry {
            offset,
            epoch,
            from: self.from,
            accepted: stamp(),
            classic,
            structured: self.structured(room, epoch, offset),
        }
    }

    /// The classic line.
    pub(crate) fn classic(&self) -> Message {
        match self.kind {
            Kind::Chat => Message::text(classic::tag_from(&self.who, &self.text)),
            kind => Message::text(classic::presence_notice(
                &self.who,
                kind == Kind::Joined,
                self.here,
            )),
        }
    }

    /// The structured frame at `offset` of `epoch` in `room`.
    pub(crate) fn structured(&self, room: &str, epoch: Epoch, offset: u64) -> Message {
        let text;
        let frame = match self.kind {
            Kind::Chat => ServerFrame::Message(ChatMessage {
                room: room.into(),
                epoch,
                offset: (offset > 0).then_some(offset),
                from: self.who.as_ref().into(),
                text: self.text.as_ref().into(),
            }),
            kind => {
                let joined = kind == Kind::Joined;
                text = classic::presence_notice(&self.who, joined, self.here);
                ServerFrame::Notice(Notice {
                    room: Some(room.into()),
                    epoch: Some(epoch),
                    offset: (offset > 0).then_some(offset),
                    who: Some(self.who.as_ref().into()),
                    here: Some(self.here),
                    ..Notice::new(
                        if joined {
                            NoticeKind::Joined
                        } else {
                            NoticeKind::Left
                        },
                        text.as_str(),
                    )
                })
            }
        };
        Message::text(frame.to_json())
    }

    /// A copy that owns its text, for keeping.
    pub(crate) fn owned(&self) -> Record<'static> {
        Record {
            kind: self.kind,
            from: self.from,
            who: Cow::Owned(self.who.clone().into_owned()),
            text: Cow::Owned(self.text.clone().into_owned()),
            here: self.here,
        }
    }
}

impl Logged {
    /// What a reader of `format` in `room` is sent for this record.
    pub(crate) fn delivery(&self, format: Format, room: &str) -> Delivery {
        let record = &self.record;
        Delivery {
            offset: self.offset,
            epoch: self.epoch,
            from: record.from,
            accepted: stamp(),
            message: match format {
                Format::Classic => record.classic(),
                Format::Structured => record.structured(room, self.epoch, self.offset),
            },
        }
    }
}

impl Entry {
    /// Bytes this entry keeps alive: both encodings and the entry itself.
    pub(crate) fn size(&self) -> usize {
        self.classic.as_payload().len() + self.structured.as_payload().len() + size_of::<Self>()
    }

    /// What a session of `format` is sent for this entry.
    pub(crate) fn delivery(&self, format: Format) -> Delivery {
        Delivery {
            offset: self.offset,
            epoch: self.epoch,
            from: self.from,
            accepted: self.accepted,
            message: match format {
                Format::Classic => self.classic.clone(),
                Format::Structured => self.structured.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_record_is_short_json_and_reads_back() {
        let logged = Logged {
            epoch: Epoch(0xab),
            offset: 42,
            record: Record::chat(7, "alice@x", "hi \"you\"").owned(),
        };
        let json = serde_json::to_string(&logged).expect("encodes");
        assert_eq!(
            json,
            r#"{"e":"00000000000000ab","o":42,"k":"m","f":7,"w":"alice@x","t":"hi \"you\""}"#
        );
        assert_eq!(
            serde_json::from_str::<Logged>(&json).expect("decodes"),
            logged
        );
        let join = serde_json::to_string(&Record::presence("bob@y", true, 2)).expect("encodes");
        assert_eq!(join, r#"{"k":"j","f":0,"w":"bob@y","h":2}"#);
    }

    #[test]
    fn records_encode_as_the_classic_line_and_the_structured_frame() {
        let entry = Record::chat(7, "alice@x", "hi").encode("r", Epoch(1), 5);
        assert_eq!(entry.classic.as_text(), Some(r#"alice@x: "hi""#));
        assert_eq!(
            entry.structured.as_text(),
            Some(
                r#"{"type":"message","room":"r","epoch":"0000000000000001","offset":5,"from":"alice@x","text":"hi"}"#
            )
        );
        let unlogged = Record::chat(7, "alice@x", "hi").encode("r", Epoch(1), 0);
        assert_eq!(
            unlogged.structured.as_text(),
            Some(
                r#"{"type":"message","room":"r","epoch":"0000000000000001","from":"alice@x","text":"hi"}"#
            )
        );
        let left = Record::presence("bob@y", false, 1).encode("r", Epoch(1), 6);
        assert_eq!(left.classic.as_text(), Some("* bob@y left (1 here)"));
        assert_eq!(
            left.structured.as_text(),
            Some(
                r#"{"type":"notice","kind":"left","text":"* bob@y left (1 here)","room":"r","epoch":"0000000000000001","offset":6,"who":"bob@y","here":1}"#
            )
        );
        assert_eq!(left.from, SERVER);
    }
}

//! What is said in a room before it is encoded: a chat line, or someone joining or
//! leaving. A record is what the Redis log keeps and what instances tell each other;
//! each instance encodes it once into the two wire formats ([`Record::encode`]), or
//! into one for a reader catching up ([`Record::delivery`]).

use serde::{Deserialize, Serialize};
use tokio_websockets::Message;

use super::log::Entry;
use super::{Delivery, Format, SenderId};
use crate::protocol::structured::{ChatMessage, Notice, NoticeKind, ServerFrame};
use crate::protocol::{Epoch, classic};

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

/// One thing said in a room. Field names are short: every message carries them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// What it is.
    #[serde(rename = "k")]
    pub(crate) kind: Kind,
    /// Who sent it (the server itself for joins and leaves), for no-echo.
    #[serde(rename = "f")]
    pub(crate) from: SenderId,
    /// The sender's tag, or who joined or left.
    #[serde(rename = "w")]
    pub(crate) who: String,
    /// The line (chat only).
    #[serde(rename = "t", default, skip_serializing_if = "String::is_empty")]
    pub(crate) text: String,
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
    pub(crate) record: Record,
}

impl Record {
    /// A chat line `text` from member `from`, tagged `who`.
    pub(crate) fn chat(from: SenderId, who: &str, text: &str) -> Self {
        Self {
            kind: Kind::Chat,
            from,
            who: who.to_owned(),
            text: text.to_owned(),
            here: 0,
        }
    }

    /// `who` joined (or left), leaving `here` in the room.
    pub(crate) fn presence(who: &str, joined: bool, here: usize) -> Self {
        Self {
            kind: if joined { Kind::Joined } else { Kind::Left },
            from: super::SERVER,
            who: who.to_owned(),
            text: String::new(),
            here,
        }
    }

    /// The record in both wire formats, at `offset` of `epoch` in `room`; an offset
    /// of 0 means not in the log (said while the log was out of reach).
    pub(crate) fn encode(&self, room: &str, epoch: Epoch, offset: u64) -> Entry {
        Entry {
            offset,
            epoch,
            from: self.from,
            accepted: super::log::stamp(),
            classic: self.message(Format::Classic, room, epoch, offset),
            structured: self.message(Format::Structured, room, epoch, offset),
        }
    }

    /// What a session of `format` is sent for the record at `offset` of `epoch` in
    /// `room`: one wire format only, for a reader catching up from Redis.
    pub(crate) fn delivery(
        &self,
        format: Format,
        room: &str,
        epoch: Epoch,
        offset: u64,
    ) -> Delivery {
        Delivery {
            offset,
            epoch,
            from: self.from,
            accepted: super::log::stamp(),
            message: self.message(format, room, epoch, offset),
        }
    }

    /// The record in `format`.
    fn message(&self, format: Format, room: &str, epoch: Epoch, offset: u64) -> Message {
        let joined = match (self.kind, format) {
            (Kind::Chat, Format::Classic) => {
                return Message::text(classic::tag_from(&self.who, &self.text));
            }
            (Kind::Chat, Format::Structured) => {
                return chat_structured(room, epoch, offset, &self.who, &self.text);
            }
            (kind, _) => kind == Kind::Joined,
        };
        let text = classic::presence_notice(&self.who, joined, self.here);
        if format == Format::Classic {
            return Message::text(text);
        }
        let structured = ServerFrame::Notice(Notice {
            room: Some(room.into()),
            epoch: Some(epoch),
            offset: (offset > 0).then_some(offset),
            who: Some(self.who.as_str().into()),
            here: Some(self.here),
            ..Notice::new(
                if joined {
                    NoticeKind::Joined
                } else {
                    NoticeKind::Left
                },
                text.as_str(),
            )
        });
        Message::text(structured.to_json())
    }
}

/// Chat line `text` from member `from` (tagged `who`) in both wire formats, at
/// `offset` of `epoch` in `room`, its `classic` line made already: the classic line
/// does not depend on the offset, so a room makes it before taking its lock.
pub(crate) fn chat_entry(
    room: &str,
    epoch: Epoch,
    offset: u64,
    from: SenderId,
    who: &str,
    text: &str,
    classic: Message,
) -> Entry {
    Entry {
        offset,
        epoch,
        from,
        accepted: super::log::stamp(),
        classic,
        structured: chat_structured(room, epoch, offset, who, text),
    }
}

/// A chat line as a structured frame.
fn chat_structured(room: &str, epoch: Epoch, offset: u64, who: &str, text: &str) -> Message {
    let frame = ServerFrame::Message(ChatMessage {
        room: room.into(),
        epoch,
        offset: (offset > 0).then_some(offset),
        from: who.into(),
        text: text.into(),
    });
    Message::text(frame.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logged_record_is_short_json_and_reads_back() {
        let logged = Logged {
            epoch: Epoch(0xab),
            offset: 42,
            record: Record::chat(7, "alice@x", "hi \"you\""),
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
        assert_eq!(left.from, super::super::SERVER);
    }

    #[test]
    fn a_delivery_in_one_format_is_that_format_of_the_full_encoding() {
        let records = [
            Record::chat(7, "alice@x", "hi"),
            Record::presence("bob@y", true, 2),
            Record::presence("bob@y", false, 1),
        ];
        for record in &records {
            for offset in [0, 5] {
                let entry = record.encode("r", Epoch(1), offset);
                for format in [Format::Classic, Format::Structured] {
                    let one = record.delivery(format, "r", Epoch(1), offset);
                    let both = entry.delivery(format);
                    assert_eq!(
                        one.message.as_text(),
                        both.message.as_text(),
                        "{record:?} {offset}"
                    );
                    assert_eq!(
                        (one.offset, one.epoch, one.from),
                        (both.offset, both.epoch, both.from)
                    );
                }
            }
        }
    }
}

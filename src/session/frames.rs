//! The frames a session writes to its client alone, in the client's wire format:
//! the welcome, answers, notices, acknowledgements and errors. (The room's messages
//! are encoded once for everyone, in the hub.)

use tokio_websockets::Message;

use crate::hub::{Format, Published, Recovery};
use crate::protocol::structured::{
    Ack, ErrorCode, ErrorFrame, Notice, NoticeKind, Recovered, ServerFrame, Welcome,
};
use crate::protocol::{Epoch, WELCOME, classic};

/// Builds the frames for one session's format.
#[derive(Debug, Clone, Copy)]
pub(super) struct Frames(pub(super) Format);

impl Frames {
    fn structured(frame: &ServerFrame<'_>) -> Message {
        Message::text(frame.to_json())
    }

    /// The first frame: the classic welcome line, or where the room stands.
    pub(super) fn welcome(
        self,
        room: &str,
        epoch: Epoch,
        head: u64,
        you: &str,
        echo: bool,
    ) -> Message {
        match self.0 {
            Format::Classic => Message::text(WELCOME),
            Format::Structured => Self::structured(&ServerFrame::Welcome(Welcome {
                text: WELCOME.into(),
                room: room.into(),
                epoch,
                offset: head,
                you: you.into(),
                echo,
            })),
        }
    }

    /// The answer to "who is here?".
    pub(super) fn who(self, members: &[String]) -> Message {
        let text = classic::who_notice(members);
        match self.0 {
            Format::Classic => Message::text(text),
            Format::Structured => Self::structured(&ServerFrame::Notice(Notice {
                members: Some(members.iter().map(|m| m.as_str().into()).collect()),
                ..Notice::new(NoticeKind::Who, text)
            })),
        }
    }

    /// This client fell `missed` messages further behind than the room's log reaches.
    pub(super) fn missed(self, missed: u64) -> Message {
        let text = classic::missed_notice(missed);
        match self.0 {
            Format::Classic => Message::text(text),
            Format::Structured => Self::structured(&ServerFrame::Notice(Notice {
                count: Some(missed),
                ..Notice::new(NoticeKind::Missed, text)
            })),
        }
    }

    /// The room's log began again (its store lost it): what was said meanwhile may be
    /// lost.
    pub(super) fn restarted(self) -> Message {
        let text = classic::LOG_LOST_NOTICE;
        match self.0 {
            Format::Classic => Message::text(text),
            Format::Structured => Self::structured(&ServerFrame::Notice(Notice::new(
                NoticeKind::Restarted,
                text,
            ))),
        }
    }

    /// `dropped` of this client's lines went over the rate limit (`text` says so).
    pub(super) fn slowed_down(self, dropped: u64, text: String) -> Message {
        match self.0 {
            Format::Classic => Message::text(text),
            Format::Structured => Self::structured(&ServerFrame::Notice(Notice {
                count: Some(dropped),
                ..Notice::new(NoticeKind::SlowDown, text)
            })),
        }
    }

    /// The client's token expired; the close (4001) follows.
    pub(super) fn expired(self) -> Message {
        let text = classic::EXPIRED_NOTICE;
        match self.0 {
            Format::Classic => Message::text(text),
            Format::Structured => {
                Self::structured(&ServerFrame::Notice(Notice::new(NoticeKind::Expired, text)))
            }
        }
    }

    /// A notice of `kind` with its classic line `text`, and nothing else.
    pub(super) fn notice(self, kind: NoticeKind, text: &str) -> Message {
        match self.0 {
            Format::Classic => Message::text(text.to_owned()),
            Format::Structured => Self::structured(&ServerFrame::Notice(Notice::new(kind, text))),
        }
    }

    /// How a resumption went, after the replay; `None` when there is nothing to say
    /// (a classic client that lost nothing).
    pub(super) fn recovered(self, recovery: Recovery) -> Option<Message> {
        let (missed, restarted, text) = match recovery {
            Recovery::Complete => (None, false, None),
            Recovery::Missed(n) => (Some(n), false, Some(classic::away_notice(n))),
            Recovery::Restarted => (None, true, Some(classic::RESTARTED_NOTICE.to_owned())),
            Recovery::Unavailable => (None, false, Some(classic::UNAVAILABLE_NOTICE.to_owned())),
            Recovery::Ahead(head) => {
                let text = format!(
                    "the offset to resume from is beyond the room's last one ({head}); going on from there"
                );
                return Some(self.error(ErrorCode::BadOffset, &text));
            }
        };
        match self.0 {
            Format::Classic => text.map(Message::text),
            Format::Structured => Some(Self::structured(&ServerFrame::Recovered(Recovered {
                complete: text.is_none(),
                missed,
                restarted,
                text: text.map(Into::into),
            }))),
        }
    }

    /// The acknowledgement of the client's line `id` (structured only).
    pub(super) fn ack(self, id: u64, published: Published) -> Option<Message> {
        (self.0 == Format::Structured).then(|| {
            Self::structured(&ServerFrame::Ack(Ack {
                id,
                offset: published.offset,
                duplicate: published.duplicate,
            }))
        })
    }

    /// A frame of the client's was not understood. Classic clients send no frames
    /// that can be misread, so they only ever get this as a `* ` notice.
    pub(super) fn error(self, code: ErrorCode, text: &str) -> Message {
        match self.0 {
            Format::Classic => Message::text(format!("* {text}")),
            Format::Structured => Self::structured(&ServerFrame::Error(ErrorFrame {
                code,
                text: text.into(),
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(message: &Message) -> &str {
        message.as_text().expect("a text frame")
    }

    #[test]
    fn classic_clients_get_the_classic_lines() {
        let classic = Frames(Format::Classic);
        assert_eq!(
            text(&classic.welcome("r", Epoch(1), 5, "a@x", true)),
            WELCOME
        );
        assert_eq!(text(&classic.who(&["a@x".into()])), "* 1 here: a@x");
        assert_eq!(
            text(&classic.missed(3)),
            "* you missed 3 messages: your connection fell behind"
        );
        assert!(classic.recovered(Recovery::Complete).is_none());
        assert_eq!(
            classic.recovered(Recovery::Missed(2)).as_ref().map(text),
            Some("* you missed 2 messages while you were away")
        );
        let published = Published {
            offset: Some(1),
            duplicate: false,
        };
        assert!(classic.ack(1, published).is_none());
        assert_eq!(
            text(&classic.expired()),
            "* your token expired: get a new one to come back"
        );
        assert_eq!(
            text(&classic.error(ErrorCode::ReadOnly, classic::READ_ONLY_TEXT)),
            "* your token is read-only: your lines do not reach the room"
        );
    }

    #[test]
    fn token_frames_for_structured_clients() {
        let structured = Frames(Format::Structured);
        assert_eq!(
            text(&structured.expired()),
            r#"{"type":"notice","kind":"expired","text":"* your token expired: get a new one to come back"}"#
        );
        assert_eq!(
            text(&structured.error(ErrorCode::ReadOnly, classic::READ_ONLY_TEXT)),
            r#"{"type":"error","code":"read-only","text":"your token is read-only: your lines do not reach the room"}"#
        );
    }

    #[test]
    fn structured_clients_get_json_frames() {
        let structured = Frames(Format::Structured);
        assert_eq!(
            text(&structured.welcome("rust", Epoch(0xab), 5, "a@x", false)),
            r#"{"type":"welcome","text":"Welcome to chat! Type a message","room":"rust","epoch":"00000000000000ab","offset":5,"you":"a@x","echo":false}"#
        );
        assert_eq!(
            text(&structured.missed(3)),
            r#"{"type":"notice","kind":"missed","text":"* you missed 3 messages: your connection fell behind","count":3}"#
        );
        assert_eq!(
            structured.recovered(Recovery::Complete).as_ref().map(text),
            Some(r#"{"type":"recovered","complete":true}"#)
        );
        assert_eq!(
            structured.recovered(Recovery::Restarted).as_ref().map(text),
            Some(
                r#"{"type":"recovered","complete":false,"restarted":true,"text":"* the room was restarted while you were away: messages sent meanwhile may be lost"}"#
            )
        );
        assert_eq!(
            structured.recovered(Recovery::Ahead(4)).as_ref().map(text),
            Some(
                r#"{"type":"error","code":"bad-offset","text":"the offset to resume from is beyond the room's last one (4); going on from there"}"#
            )
        );
        let duplicate = Published {
            offset: Some(9),
            duplicate: true,
        };
        assert_eq!(
            structured.ack(7, duplicate).as_ref().map(text),
            Some(r#"{"type":"ack","id":7,"offset":9,"duplicate":true}"#)
        );
    }
}

//! What the client keeps across its connections when it speaks the structured
//! protocol: its session id, where it is in the room (epoch and offset), and the
//! lines the server has not acknowledged yet, which it sends again after a
//! reconnect (the server recognises them by id and shows each once).

use std::collections::VecDeque;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use super::ending::Refusal;
use crate::protocol::structured::{ClientFrame, ErrorCode, NoticeKind, ServerFrame};
use crate::protocol::{
    AFTER_PARAM, EPOCH_PARAM, Epoch, HISTORY_PARAM, NAME_PARAM, SESSION_PARAM, WELCOME,
    WHO_COMMAND, classic,
};
use crate::{Error, Result};

/// What to do with a frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Shown {
    /// Print this classic line (`From server: ` is added by the printer).
    Line(String),
    /// Tell the user this on the side (stderr): the server did not take a frame.
    Report(String),
    /// Nothing to show.
    Nothing,
}

/// Where the client starts in its room on its first connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Start {
    /// Where the room is (plus the server's `--history`, if it has one).
    #[default]
    Live,
    /// The room's last N logged messages first (`--history N`, sent as `?history=N`).
    History(u64),
    /// Everything after this offset of this epoch (`--epoch`, `--after`): the
    /// protocol's resume, as if the client had been there.
    After(Epoch, u64),
}

/// The client's side of the structured protocol, kept across connections.
#[derive(Debug)]
pub(super) struct ResumeState {
    /// Names this client to the server across its reconnections.
    id: String,
    /// The room's epoch and the last offset shown, once welcomed.
    position: Option<(Epoch, u64)>,
    /// The id of the next line.
    next_line: u64,
    /// Lines sent and not yet acknowledged, oldest first, with their ids.
    unacked: VecDeque<(u64, String)>,
    /// The highest offset the server gave one of our lines.
    acked_offset: u64,
    /// Whether the welcome was shown (it is shown once, not on every reconnect).
    welcomed: bool,
    /// Whether our own lines come back to us.
    echo: bool,
    /// The history to ask for while the client has no position yet.
    history: Option<u64>,
    /// The first line the server refused, if any.
    refused: Option<Refusal>,
}

impl ResumeState {
    /// A new state with a random session id: 96 bits from the operating system's
    /// random source, so that no two clients' ids meet (lines are recognised by
    /// session and id, a collision would hide one client's lines as repeats of
    /// another's), in 16 characters of base64url.
    ///
    /// # Errors
    /// [`Error::Random`] when the random source fails.
    pub(super) fn new(start: Start) -> Result<Self> {
        let mut bytes = [0u8; 12];
        getrandom::fill(&mut bytes).map_err(Error::Random)?;
        Ok(Self {
            id: URL_SAFE_NO_PAD.encode(bytes),
            position: match start {
                Start::After(epoch, after) => Some((epoch, after)),
                _ => None,
            },
            next_line: 1,
            unacked: VecDeque::new(),
            acked_offset: 0,
            welcomed: false,
            echo: true,
            history: match start {
                Start::History(n) => Some(n),
                _ => None,
            },
            refused: None,
        })
    }

    /// The query parameters of the next upgrade: the name, the session id, and where
    /// to resume once there is somewhere.
    pub(super) fn params(&self, name: Option<&str>) -> Vec<(&'static str, String)> {
        let mut params = Vec::with_capacity(4);
        if let Some(name) = name {
            params.push((NAME_PARAM, name.to_owned()));
        }
        params.push((SESSION_PARAM, self.id.clone()));
        match (self.position, self.history) {
            (Some((epoch, after)), _) => {
                params.push((EPOCH_PARAM, epoch.to_string()));
                params.push((AFTER_PARAM, after.to_string()));
            }
            (None, Some(history)) => params.push((HISTORY_PARAM, history.to_string())),
            (None, None) => {}
        }
        params
    }

    /// The frame for an input line: `/who` asks who is here; anything else is a line
    /// for the room, kept until the server acknowledges it.
    pub(super) fn send(&mut self, line: &str) -> String {
        if line == WHO_COMMAND {
            return ClientFrame::Who.to_json();
        }
        let id = self.next_line;
        self.next_line += 1;
        self.unacked.push_back((id, line.to_owned()));
        frame(id, line)
    }

    /// The frames of the lines not yet acknowledged, to send again on a new connection.
    pub(super) fn unacknowledged(&self) -> Vec<String> {
        self.unacked
            .iter()
            .map(|(id, line)| frame(*id, line))
            .collect()
    }

    /// Whether every line was acknowledged and, when our lines come back to us, has
    /// come back: then nothing of ours is in flight, and closing loses nothing.
    pub(super) fn settled(&self) -> bool {
        let seen = self.position.map_or(0, |(_, last)| last);
        self.unacked.is_empty() && (!self.echo || seen >= self.acked_offset)
    }

    /// The first line the server refused, if it refused one.
    pub(super) fn refusal(&self) -> Option<&Refusal> {
        self.refused.as_ref()
    }

    /// The oldest line not acknowledged yet, as `line 2 ("hi")`.
    pub(super) fn first_unacknowledged(&self) -> Option<String> {
        let (id, text) = self.unacked.front()?;
        Some(format!("line {id} ({text:?})"))
    }

    /// Notes that the server refused a line for `reason`. The protocol does not say
    /// which: the server answers a connection's frames in order, so it is the oldest
    /// one not acknowledged.
    fn refuse(&mut self, reason: &str) {
        if self.refused.is_none()
            && let Some((id, text)) = self.unacked.front()
        {
            self.refused = Some(Refusal {
                line: *id,
                text: text.clone(),
                reason: reason.to_owned(),
            });
        }
    }

    /// Takes a frame from the server and says what to show of it.
    pub(super) fn receive(&mut self, frame: ServerFrame<'_>) -> Shown {
        match frame {
            ServerFrame::Welcome(welcome) => {
                self.echo = welcome.echo;
                // In the same room as before, we go on from our own position (the
                // server replays what we missed); otherwise from where the room is.
                if self
                    .position
                    .is_none_or(|(epoch, _)| epoch != welcome.epoch)
                {
                    self.position = Some((welcome.epoch, welcome.offset));
                    self.acked_offset = 0;
                }
                if std::mem::replace(&mut self.welcomed, true) {
                    Shown::Nothing
                } else {
                    Shown::Line(WELCOME.to_owned())
                }
            }
            ServerFrame::Message(message) => {
                if let Some(offset) = message.offset {
                    self.seen(message.epoch, offset);
                }
                Shown::Line(classic::tag_from(&message.from, &message.text))
            }
            ServerFrame::Notice(notice) => {
                if let (Some(epoch), Some(offset)) = (notice.epoch, notice.offset) {
                    self.seen(epoch, offset);
                }
                if notice.kind == NoticeKind::SlowDown {
                    self.refuse(&notice.text);
                }
                Shown::Line(notice.text.into_owned())
            }
            ServerFrame::Recovered(recovered) => match recovered.text {
                Some(text) if !recovered.complete => Shown::Line(text.into_owned()),
                _ => Shown::Nothing,
            },
            ServerFrame::Ack(ack) => {
                // Acks come in order: an older line still waiting was dropped.
                if self.unacked.front().is_some_and(|(id, _)| *id < ack.id) {
                    self.refuse("the server dropped it");
                }
                while self.unacked.front().is_some_and(|(id, _)| *id <= ack.id) {
                    self.unacked.pop_front();
                }
                if let Some(offset) = ack.offset.filter(|_| !ack.duplicate) {
                    self.acked_offset = self.acked_offset.max(offset);
                }
                Shown::Nothing
            }
            ServerFrame::Error(error) => {
                // Our frames are well formed: an error answers a send (a read-only
                // token, say), except the one about where we asked to resume.
                if error.code != ErrorCode::BadOffset {
                    self.refuse(&error.text);
                }
                Shown::Report(format!("the server says: {}", error.text))
            }
        }
    }

    /// Moves our position to `offset` if it is of our room and ahead of it.
    fn seen(&mut self, epoch: Epoch, offset: u64) {
        if let Some((ours, last)) = &mut self.position
            && *ours == epoch
        {
            *last = (*last).max(offset);
        }
    }
}

/// The send frame for line `id`.
fn frame(id: u64, line: &str) -> String {
    ClientFrame::Send {
        id,
        text: line.into(),
    }
    .to_json()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::structured::ErrorCode;
    use crate::protocol::structured::{Ack, ChatMessage, Recovered, Welcome};

    fn welcome(epoch: u64, offset: u64) -> ServerFrame<'static> {
        ServerFrame::Welcome(Welcome {
            text: WELCOME.into(),
            room: "".into(),
            epoch: Epoch(epoch),
            offset,
            you: "me@x".into(),
            echo: true,
        })
    }

    fn message(epoch: u64, offset: u64, text: &str) -> ServerFrame<'_> {
        ServerFrame::Message(ChatMessage {
            room: "".into(),
            epoch: Epoch(epoch),
            offset: Some(offset),
            from: "a@x".into(),
            text: text.into(),
        })
    }

    fn ack(id: u64, offset: u64) -> ServerFrame<'static> {
        ServerFrame::Ack(Ack {
            id,
            offset: Some(offset),
            duplicate: false,
        })
    }

    #[test]
    fn session_ids_are_random_and_pass_the_servers_rule() {
        let ids: Vec<String> = (0..2)
            .map(|_| ResumeState::new(Start::Live).expect("a random id").id)
            .collect();
        for id in &ids {
            assert_eq!(id.len(), 16, "{id}");
            let query = format!("session={id}");
            let params = crate::protocol::Params::parse(Some(&query)).expect("a valid id");
            assert_eq!(params.client_id, Some(id.as_str()));
        }
        assert_ne!(ids[0], ids[1]);
    }

    #[test]
    fn the_welcome_shows_once_and_the_position_follows_the_messages() {
        let mut resume = ResumeState::new(Start::Live).expect("a random id");
        let params = resume.params(Some("alice"));
        assert_eq!(params[0], ("name", "alice".to_owned()));
        assert_eq!(params[1].0, "session");
        assert_eq!(params.len(), 2, "nowhere to resume yet");

        assert_eq!(resume.receive(welcome(7, 40)), Shown::Line(WELCOME.into()));
        assert_eq!(
            resume.receive(message(7, 41, "hi \"you\"")),
            Shown::Line(r#"a@x: "hi \"you\"""#.into())
        );
        let params = resume.params(None);
        assert_eq!(
            &params[1..],
            [
                ("epoch", "0000000000000007".to_owned()),
                ("after", "41".to_owned())
            ]
        );

        // Back on a new connection to the same room: no second welcome, same position.
        assert_eq!(resume.receive(welcome(7, 45)), Shown::Nothing);
        assert_eq!(resume.params(None)[2].1, "41");
        // A new epoch: the room began again; we go on from where it is.
        assert_eq!(resume.receive(welcome(8, 3)), Shown::Nothing);
        assert_eq!(resume.params(None)[2].1, "3");
        resume.receive(message(7, 99, "stale"));
        assert_eq!(
            resume.params(None)[2].1,
            "3",
            "another epoch's offsets are not ours"
        );
    }

    #[test]
    fn lines_are_kept_until_acknowledged_and_sent_again_with_their_ids() {
        let mut resume = ResumeState::new(Start::Live).expect("a random id");
        resume.receive(welcome(1, 0));
        assert_eq!(resume.send("one"), r#"{"type":"send","id":1,"text":"one"}"#);
        assert_eq!(
            resume.send("/who"),
            r#"{"type":"who"}"#,
            "not a line for the room"
        );
        assert_eq!(resume.send("two"), r#"{"type":"send","id":2,"text":"two"}"#);
        assert!(!resume.settled());
        assert_eq!(resume.receive(ack(1, 1)), Shown::Nothing);
        assert_eq!(
            resume.unacknowledged(),
            [r#"{"type":"send","id":2,"text":"two"}"#]
        );
        resume.receive(ack(2, 2));
        assert!(resume.unacknowledged().is_empty());
        assert!(!resume.settled(), "our own line has not come back yet");
        resume.receive(message(1, 1, "one"));
        resume.receive(message(1, 2, "two"));
        assert!(resume.settled());
    }

    fn error(code: ErrorCode, text: &str) -> ServerFrame<'_> {
        ServerFrame::Error(crate::protocol::structured::ErrorFrame {
            code,
            text: text.into(),
        })
    }

    #[test]
    fn a_refusal_names_the_oldest_line_not_acknowledged() {
        let mut resume = ResumeState::new(Start::Live).expect("a random id");
        resume.receive(welcome(1, 0));
        resume.send("one");
        resume.send("two");
        resume.receive(ack(1, 1));
        assert_eq!(resume.refusal(), None);
        resume.receive(error(ErrorCode::BadOffset, "beyond the room's last one"));
        assert_eq!(resume.refusal(), None, "about where we resumed, not a line");
        resume.receive(error(ErrorCode::BadFrame, "read-only"));
        assert_eq!(
            resume.refusal(),
            Some(&Refusal {
                line: 2,
                text: "two".into(),
                reason: "read-only".into()
            })
        );

        // A line acknowledged past an older one means the older one was dropped.
        let mut resume = ResumeState::new(Start::Live).expect("a random id");
        resume.receive(welcome(1, 0));
        resume.send("one");
        resume.send("two");
        assert_eq!(
            resume.first_unacknowledged().as_deref(),
            Some("line 1 (\"one\")")
        );
        resume.receive(ack(2, 1));
        assert_eq!(resume.refusal().map(|r| r.line), Some(1));
        assert_eq!(resume.first_unacknowledged(), None);
    }

    #[test]
    fn the_start_asks_for_history_or_resumes_from_the_given_offset() {
        let resume = ResumeState::new(Start::History(50)).expect("a random id");
        assert_eq!(resume.params(None)[1..], [("history", "50".to_owned())]);
        let mut resume = ResumeState::new(Start::History(50)).expect("a random id");
        resume.receive(welcome(7, 40));
        assert_eq!(
            resume.params(None)[1..],
            [
                ("epoch", "0000000000000007".to_owned()),
                ("after", "40".to_owned())
            ],
            "once welcomed, a reconnect resumes instead"
        );
        let mut resume = ResumeState::new(Start::After(Epoch(7), 12)).expect("a random id");
        assert_eq!(resume.params(None)[2].1, "12");
        resume.receive(welcome(7, 40));
        assert_eq!(resume.params(None)[2].1, "12", "the server replays from 12");
    }

    #[test]
    fn only_an_incomplete_recovery_is_shown() {
        let mut resume = ResumeState::new(Start::Live).expect("a random id");
        let recovered = |complete, text: Option<&'static str>| {
            ServerFrame::Recovered(Recovered {
                complete,
                missed: None,
                restarted: false,
                text: text.map(Into::into),
            })
        };
        assert_eq!(resume.receive(recovered(true, None)), Shown::Nothing);
        assert_eq!(
            resume.receive(recovered(
                false,
                Some("* you missed 2 messages while you were away")
            )),
            Shown::Line("* you missed 2 messages while you were away".into())
        );
    }
}

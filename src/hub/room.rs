//! One room: its members, its log, the ids of lines already accepted, and one
//! broadcast channel per wire format that its members' sessions subscribe to.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::broadcast;
use tokio_websockets::Message;

use super::log::{Entry, MemoryLog, RoomLog};
use super::{Delivery, Format, SERVER, SenderId};
use crate::protocol::structured::{ChatMessage, Notice, NoticeKind, ServerFrame};
use crate::protocol::{Epoch, classic};

/// Locks `mutex`, going on with the data if a panic poisoned it: every change
/// under these locks is a single insert, remove or push, never left half done.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One room.
#[derive(Debug)]
pub(crate) struct Room {
    /// Its name; `""` is the lobby.
    pub(super) name: String,
    /// Everything that changes. Publishing takes this lock, so offsets, the log and
    /// the channels agree on one order, and a join that subscribes under it meets
    /// the log without a gap or an overlap.
    pub(super) state: Mutex<RoomState>,
}

/// What a room's lock guards.
#[derive(Debug)]
pub(super) struct RoomState {
    /// Members by connection id, with the label tags and notices use for them.
    pub(super) members: HashMap<SenderId, String>,
    /// The room's last messages, numbered.
    pub(super) log: MemoryLog,
    /// The last line id accepted from each client session, with its offset, so
    /// that a line sent again after a reconnect is recognised.
    accepted: HashMap<Box<str>, Accepted>,
    /// Channel capacity, for the channels made on first use.
    capacity: usize,
    /// The fan-out to classic sessions, made when the first one joins.
    classic_tx: Option<broadcast::Sender<Delivery>>,
    /// The fan-out to structured sessions, made when the first one joins.
    structured_tx: Option<broadcast::Sender<Delivery>>,
}

/// The last line accepted from a client session.
#[derive(Debug, Clone, Copy)]
struct Accepted {
    id: u64,
    offset: u64,
}

/// What publishing a line did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Published {
    /// The line's offset; for a repeat, the first time's if it is still known.
    pub(crate) offset: Option<u64>,
    /// The line's id had been accepted before, so it was not sent again.
    pub(crate) duplicate: bool,
}

impl Room {
    /// A new, empty room with a log of at most `max_entries` and `max_bytes`.
    pub(super) fn new(name: &str, capacity: usize, max_entries: usize, max_bytes: usize) -> Self {
        Self {
            name: name.to_owned(),
            state: Mutex::new(RoomState {
                members: HashMap::new(),
                log: MemoryLog::new(max_entries, max_bytes),
                accepted: HashMap::new(),
                capacity,
                classic_tx: None,
                structured_tx: None,
            }),
        }
    }

    /// Logs a chat line from `from` (tagged `who`) and sends it to the room. With a
    /// client `session` and line `id`, a line whose id is not above the last one
    /// accepted from that session is a repeat and is not sent again.
    pub(super) fn publish(
        &self,
        from: SenderId,
        who: &str,
        text: &str,
        line: Option<(&str, u64)>,
    ) -> Published {
        let classic = Message::text(classic::tag_from(who, text));
        let mut state = lock(&self.state);
        if let Some((session, id)) = line
            && let Some(last) = state.accepted.get(session)
            && id <= last.id
        {
            return Published {
                offset: (id == last.id).then_some(last.offset),
                duplicate: true,
            };
        }
        let epoch = state.log.epoch();
        let offset = state.log.head() + 1;
        let structured = ServerFrame::Message(ChatMessage {
            room: self.name.as_str().into(),
            epoch,
            offset,
            from: who.into(),
            text: text.into(),
        });
        state.append(Entry {
            offset,
            from,
            classic,
            structured: Message::text(structured.to_json()),
        });
        if let Some((session, id)) = line {
            state.remember(session, id, offset);
        }
        Published {
            offset: Some(offset),
            duplicate: false,
        }
    }
}

impl RoomState {
    /// Subscribes a session of `format`, making the channel on first use.
    pub(super) fn subscribe(&mut self, format: Format) -> broadcast::Receiver<Delivery> {
        let capacity = self.capacity;
        let tx = match format {
            Format::Classic => &mut self.classic_tx,
            Format::Structured => &mut self.structured_tx,
        };
        tx.get_or_insert_with(|| broadcast::channel(capacity).0)
            .subscribe()
    }

    /// Drops the channels: their receivers get what they hold, then "closed".
    pub(super) fn close(&mut self) {
        self.classic_tx = None;
        self.structured_tx = None;
    }

    /// Logs `entry` and sends it to every subscribed session, each in its format.
    pub(super) fn append(&mut self, entry: Entry) {
        // An error means nobody is subscribed in that format: nobody to tell.
        if let Some(tx) = &self.classic_tx {
            let _ = tx.send(entry.delivery(Format::Classic));
        }
        if let Some(tx) = &self.structured_tx {
            let _ = tx.send(entry.delivery(Format::Structured));
        }
        self.log.push(entry);
    }

    /// Logs and sends a presence notice: `who` joined or left, `here` now in the room.
    pub(super) fn announce(&mut self, room: &str, who: &str, joined: bool) {
        let here = self.members.len();
        let text = classic::presence_notice(who, joined, here);
        let epoch = self.log.epoch();
        let offset = self.log.head() + 1;
        let kind = if joined {
            NoticeKind::Joined
        } else {
            NoticeKind::Left
        };
        let structured = ServerFrame::Notice(Notice {
            room: Some(room.into()),
            epoch: Some(epoch),
            offset: Some(offset),
            who: Some(who.into()),
            here: Some(here),
            ..Notice::new(kind, text.as_str())
        })
        .to_json();
        self.append(Entry {
            offset,
            from: SERVER,
            classic: Message::text(text),
            structured: Message::text(structured),
        });
    }

    /// Notes that `session`'s line `id` went out at `offset`. Sessions whose last line
    /// has left the log are forgotten once they outnumber the log's entries: a line
    /// sent again that late cannot be told from a new one anyway.
    fn remember(&mut self, session: &str, id: u64, offset: u64) {
        match self.accepted.get_mut(session) {
            Some(last) => *last = Accepted { id, offset },
            None => {
                let first = self.log.first();
                if self.accepted.len() >= 64 + 2 * (self.log.head() + 1 - first) as usize {
                    self.accepted.retain(|_, last| last.offset >= first);
                }
                self.accepted
                    .insert(session.into(), Accepted { id, offset });
            }
        }
    }

    /// Appends to `out` up to `limit` logged messages after `after`, in `format`;
    /// returns how many messages after `after` the log no longer holds.
    pub(super) fn read(
        &self,
        after: u64,
        limit: usize,
        format: Format,
        out: &mut Vec<Delivery>,
    ) -> u64 {
        let gone = (self.log.first() - 1).saturating_sub(after);
        let mut entries = Vec::with_capacity(limit.min(64));
        self.log.read(after, limit, &mut entries);
        out.extend(entries.iter().map(|e| e.delivery(format)));
        gone
    }

    /// The room's epoch.
    pub(super) fn epoch(&self) -> Epoch {
        self.log.epoch()
    }
}

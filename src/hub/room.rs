//! One room: its members, its log, the ids of lines already accepted, and one
//! broadcast channel per wire format that its members' sessions subscribe to. With
//! Redis, the log is Redis's stream, and the room only keeps how far this instance
//! has delivered it.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::{broadcast, watch};
use tokio_websockets::Message;

use super::log::{Entry, MemoryLog, RoomLog};
use super::record::{Logged, Record, chat_entry};
use super::{Delivery, Format, SenderId};
use crate::protocol::{Epoch, classic};

/// Locks `mutex`, going on with the data if a panic poisoned it: nothing under
/// these locks panics between two changes that must go together (a message is
/// logged and sent before its line's id is remembered).
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
    /// With Redis: whether this instance's subscription to the room's channel is
    /// confirmed; joiners wait for it before they read where the room stands.
    pub(super) subscribed: watch::Sender<bool>,
}

/// What a room's lock guards.
#[derive(Debug)]
pub(super) struct RoomState {
    /// Members by connection id, with the label tags and notices use for them.
    pub(super) members: HashMap<SenderId, String>,
    /// The room's last messages, numbered. With Redis it keeps none: the stream is
    /// the log.
    pub(super) log: MemoryLog,
    /// With Redis: the epoch and the last offset this instance delivered, once a
    /// joiner has read where the room stands (until then, what Redis publishes is
    /// left to the joiner's replay).
    pub(super) synced: Option<(Epoch, u64)>,
    /// The last line id accepted from each client id, with its offset, so
    /// that a line sent again after a reconnect is recognised.
    accepted: HashMap<Box<str>, Accepted>,
    /// Channel capacity, for the channels made on first use.
    capacity: usize,
    /// The fan-out to classic sessions, made when the first one joins.
    classic_tx: Option<broadcast::Sender<Delivery>>,
    /// The fan-out to structured sessions, made when the first one joins.
    structured_tx: Option<broadcast::Sender<Delivery>>,
}

/// The last line accepted under a client id.
#[derive(Debug, Clone, Copy)]
struct Accepted {
    id: u64,
    offset: u64,
}

/// What to do after [`Room::take_logged`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Intake {
    /// Nothing more.
    Done,
    /// Messages after this offset are missing here: fetch them from the log, then
    /// take the message again.
    GapAfter(u64),
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
                synced: None,
                accepted: HashMap::new(),
                capacity,
                classic_tx: None,
                structured_tx: None,
            }),
            subscribed: watch::channel(false).0,
        }
    }

    /// With Redis: delivers a message Redis published if it is the next one. Says
    /// what to do otherwise: nothing (delivered already, or not synced yet), or fill
    /// the gap after an offset first.
    pub(super) fn take_logged(&self, logged: &Logged) -> Intake {
        let mut state = lock(&self.state);
        let Some((epoch, delivered)) = state.synced else {
            return Intake::Done;
        };
        if logged.epoch != epoch {
            // The log began again (Redis lost it): from the start of the new one.
            state.synced = Some((logged.epoch, 0));
            if logged.offset > 1 {
                return Intake::GapAfter(0);
            }
        } else if logged.offset <= delivered {
            return Intake::Done;
        } else if logged.offset > delivered + 1 {
            return Intake::GapAfter(delivered);
        }
        let entry = logged
            .record
            .encode(&self.name, logged.epoch, logged.offset);
        state.deliver(&entry);
        state.synced = Some((logged.epoch, logged.offset));
        Intake::Done
    }

    /// With Redis: sets where this instance starts delivering (`head` of `epoch`),
    /// unless it already has; returns the last offset delivered.
    pub(super) fn baseline(&self, epoch: Epoch, head: u64) -> (Epoch, u64) {
        *lock(&self.state).synced.get_or_insert((epoch, head))
    }

    /// Sends a message that is not in the log (offset 0) to this instance's members.
    pub(super) fn deliver_unlogged(&self, record: &Record) {
        let state = lock(&self.state);
        let entry = record.encode(&self.name, state.epoch(), 0);
        state.deliver(&entry);
    }

    /// Sends a notice that is not in the log to this instance's members.
    pub(super) fn notify(&self, entry: &Entry) {
        lock(&self.state).deliver(entry);
    }

    /// Logs a chat line from `from` (tagged `who`) and sends it to the room. With a
    /// `client_id` and line `id`, a line whose id is not above the last one
    /// accepted under that client id is a repeat and is not sent again.
    pub(super) fn publish(
        &self,
        from: SenderId,
        who: &str,
        text: &str,
        line: Option<(&str, u64)>,
    ) -> Published {
        // Made before the lock: the classic line does not depend on the offset.
        let classic = Message::text(classic::tag_from(who, text));
        let mut state = lock(&self.state);
        if let Some((client_id, id)) = line
            && let Some(last) = state.accepted.get(client_id)
            && id <= last.id
        {
            return Published {
                offset: (id == last.id).then_some(last.offset),
                duplicate: true,
            };
        }
        let offset = state.log.head() + 1;
        let entry = chat_entry(
            &self.name,
            state.log.epoch(),
            offset,
            from,
            who,
            text,
            classic,
        );
        state.append(entry);
        if let Some((client_id, id)) = line {
            state.remember(client_id, id, offset);
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
        self.deliver(&entry);
        self.log.push(entry);
    }

    /// Sends `entry` to every subscribed session, each in its format.
    fn deliver(&self, entry: &Entry) {
        // An error means nobody is subscribed in that format: nobody to tell.
        if let Some(tx) = &self.classic_tx {
            let _ = tx.send(entry.delivery(Format::Classic));
        }
        if let Some(tx) = &self.structured_tx {
            let _ = tx.send(entry.delivery(Format::Structured));
        }
    }

    /// Logs and sends a presence notice: `who` joined or left, `here` now in the room.
    pub(super) fn announce(&mut self, room: &str, who: &str, joined: bool) {
        let record = Record::presence(who, joined, self.members.len());
        let entry = record.encode(room, self.log.epoch(), self.log.head() + 1);
        self.append(entry);
    }

    /// Notes that `session`'s line `id` went out at `offset`. Sessions whose last line
    /// has left the log are forgotten once they outnumber the log's entries: a line
    /// sent again that late cannot be told from a new one anyway.
    fn remember(&mut self, client_id: &str, id: u64, offset: u64) {
        match self.accepted.get_mut(client_id) {
            Some(last) => *last = Accepted { id, offset },
            None => {
                let first = self.log.first();
                if self.accepted.len() >= 64 + 2 * (self.log.head() + 1 - first) as usize {
                    self.accepted.retain(|_, last| last.offset >= first);
                }
                self.accepted
                    .insert(client_id.into(), Accepted { id, offset });
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
        out.extend(self.log.read(after, limit).map(|e| e.delivery(format)));
        gone
    }

    /// The room's epoch: its log's, or with Redis the one this instance follows.
    pub(super) fn epoch(&self) -> Epoch {
        self.position().0
    }

    /// Where the room stands here: its log's epoch and head, or with Redis the
    /// epoch this instance follows and the last offset it delivered.
    pub(super) fn position(&self) -> (Epoch, u64) {
        self.synced
            .unwrap_or_else(|| (self.log.epoch(), self.log.head()))
    }
}

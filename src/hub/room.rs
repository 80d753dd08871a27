//! One room here: its log (behind the store's [`RoomLog`]) and what this instance
//! keeps of it, [`Local`]: the members, one broadcast channel per wire format that
//! their sessions subscribe to, and how far the log has been delivered to them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio_websockets::Message;

use super::{Delivery, Format, SERVER, SenderId};
use crate::protocol::Epoch;
use crate::protocol::structured::{Notice, NoticeKind, ServerFrame};
use crate::store::{Entry, Fanout, Intake, RoomLog, lock, stamp};

/// One room.
#[derive(Debug)]
pub(crate) struct Room {
    /// Its name; `""` is the lobby.
    pub(super) name: String,
    /// What this instance keeps of it; its log hands it what is logged.
    pub(super) local: Arc<Local>,
    /// Its log and sequencer.
    pub(super) log: Arc<dyn RoomLog>,
}

/// A room's members and channels here.
#[derive(Debug)]
pub(crate) struct Local {
    /// The epoch a room is said to have before it follows a log (its log was out
    /// of reach when it was made).
    epoch: Epoch,
    /// Everything that changes. Delivering takes this lock, so the channels carry
    /// one order, and a join subscribes under it. Never held while calling the log.
    pub(super) state: Mutex<LocalState>,
}

/// What a room's local lock guards.
#[derive(Debug)]
pub(super) struct LocalState {
    /// Members by connection id, with the label tags and notices use for them.
    pub(super) members: HashMap<SenderId, String>,
    /// The epoch and the last offset delivered here, once a joiner has read where
    /// the log stands (until then, what is logged is left to the joiner's replay).
    synced: Option<(Epoch, u64)>,
    /// Channel capacity, for the channels made on first use.
    capacity: usize,
    /// The fan-out to classic sessions, made when the first one joins.
    classic_tx: Option<broadcast::Sender<Delivery>>,
    /// The fan-out to structured sessions, made when the first one joins.
    structured_tx: Option<broadcast::Sender<Delivery>>,
}

impl Local {
    /// A room with no members yet, channels of `capacity`.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            epoch: Epoch::random(),
            state: Mutex::new(LocalState {
                members: HashMap::new(),
                synced: None,
                capacity,
                classic_tx: None,
                structured_tx: None,
            }),
        }
    }

    /// Where the room stands here: the epoch it follows and the last offset
    /// delivered.
    pub(super) fn position(&self) -> (Epoch, u64) {
        lock(&self.state).position(self.epoch)
    }
}

impl Fanout for Local {
    fn take(&self, entry: &Entry) -> Intake {
        let mut state = lock(&self.state);
        let Some((epoch, delivered)) = state.synced else {
            return Intake::Done;
        };
        if entry.epoch != epoch {
            // The log began again: from the start of the new one.
            state.synced = Some((entry.epoch, 0));
            if entry.offset > 1 {
                return Intake::GapAfter(0);
            }
        } else if entry.offset <= delivered {
            return Intake::Done;
        } else if entry.offset > delivered + 1 {
            return Intake::GapAfter(delivered);
        }
        state.deliver(entry);
        state.synced = Some((entry.epoch, entry.offset));
        Intake::Done
    }

    fn baseline(&self, epoch: Epoch, head: u64) -> (Epoch, u64) {
        *lock(&self.state).synced.get_or_insert((epoch, head))
    }

    fn skip_to(&self, epoch: Epoch, offset: u64) {
        lock(&self.state).synced = Some((epoch, offset));
    }

    fn notify(&self, kind: NoticeKind, text: &str) {
        let state = lock(&self.state);
        let structured = ServerFrame::Notice(Notice::new(kind, text)).to_json();
        state.deliver(&Entry {
            offset: 0,
            epoch: state.position(self.epoch).0,
            from: SERVER,
            accepted: stamp(),
            classic: Message::text(text.to_owned()),
            structured: Message::text(structured),
        });
    }

    fn members(&self) -> Vec<(SenderId, String)> {
        lock(&self.state)
            .members
            .iter()
            .map(|(id, who)| (*id, who.clone()))
            .collect()
    }
}

impl LocalState {
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

    /// The epoch followed (or `fallback` before any) and the last offset delivered.
    fn position(&self, fallback: Epoch) -> (Epoch, u64) {
        self.synced.unwrap_or((fallback, 0))
    }
}

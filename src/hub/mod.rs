//! The fan-out: rooms, each with its log (from the [`Store`]) and its broadcast
//! channels, and the memberships through which sessions join, publish, catch up and
//! leave.
//!
//! Lock order: the rooms map, then a room's log (the store's), then the room's local
//! state. All are std `Mutex`es, never held across an `.await`.

mod join;
mod membership;
mod publish;
mod room;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::config::ServerConfig;
use crate::protocol::{Epoch, Resume};
use crate::store::{Store, StoreKind, lock};
use room::Room;

pub(crate) use crate::protocol::Format;
pub(crate) use crate::store::{CatchUp, Delivery, Published, SERVER, SenderId, stamp};
pub(crate) use membership::{NotAccepted, Submitted};
pub(crate) use publish::PublishError;

/// Why a client could not join.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum JoinError {
    /// The server has `max_rooms` rooms already.
    TooManyRooms,
    /// The server is shutting down: its rooms are closed.
    ShuttingDown,
}

/// The rooms.
#[derive(Debug)]
pub(crate) struct Hub {
    /// Rooms by name (`""` is the lobby); a room exists while it has members.
    pub(super) rooms: Mutex<HashMap<String, Arc<Room>>>,
    /// Channel capacity of every room, in messages.
    capacity: usize,
    /// Messages of history a newcomer gets.
    history: usize,
    /// Most rooms at once.
    max_rooms: usize,
    /// Whether joins and leaves are announced to the room.
    presence: bool,
    /// Set once, under the rooms lock, when the server shuts down.
    closed: AtomicBool,
    /// Where the rooms' logs are kept.
    store: Arc<dyn Store>,
}

/// Who is joining, and how.
#[derive(Debug)]
pub(crate) struct Newcomer<'a> {
    /// The room's name; `""` is the lobby.
    pub(crate) room: &'a str,
    /// The connection's id.
    pub(crate) id: SenderId,
    /// How it is tagged: `alice@127.0.0.1:53422`.
    pub(crate) who: String,
    /// The wire format it speaks.
    pub(crate) format: Format,
    /// The client's id (`session=` in the query), the same across its
    /// reconnections, if it gave one.
    pub(crate) client_id: Option<&'a str>,
    /// Where a returning client left off.
    pub(crate) resume: Option<Resume>,
    /// How many of the room's last logged messages a newcomer asked for, instead
    /// of the server's `--history`.
    pub(crate) history: Option<u64>,
}

/// How a resumption went, decided at the join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// Everything after the client's offset is replayed.
    Complete,
    /// This many messages after the client's offset are no longer in the log.
    Missed(u64),
    /// The client's epoch is not the room's: the room it left is gone.
    Restarted,
    /// The log (Redis) is out of reach: nothing can be replayed now.
    Unavailable,
    /// The client's offset is beyond the room's last one, which is this.
    Ahead(u64),
}

impl Recovery {
    /// The recovery once `lost` more messages went missing during the replay (the
    /// log let them go before the session read them).
    pub(crate) fn and_missed(self, lost: u64) -> Self {
        match self {
            _ if lost == 0 => self,
            Recovery::Complete => Recovery::Missed(lost),
            Recovery::Missed(before) => Recovery::Missed(before + lost),
            other => other,
        }
    }
}

/// What joining gives a session.
#[derive(Debug)]
pub(crate) struct Joined {
    /// The session's place in the room; dropping it leaves the room.
    pub(crate) membership: Membership,
    /// Sees every message published to the room after `head`.
    pub(crate) rx: broadcast::Receiver<Delivery>,
    /// The room's epoch.
    pub(crate) epoch: Epoch,
    /// The room's last offset at the join.
    pub(crate) head: u64,
    /// The session replays the logged messages after this offset (history, or what
    /// a returning client missed) before live traffic.
    pub(crate) replay_after: u64,
    /// How the resumption went, for a client that asked to resume.
    pub(crate) recovery: Option<Recovery>,
}

/// A session's place in a room. Dropping it leaves the room.
#[derive(Debug)]
pub(crate) struct Membership {
    hub: Arc<Hub>,
    room: Arc<Room>,
    id: SenderId,
    /// How this member is tagged: `alice@127.0.0.1:53422` or the address alone.
    who: String,
    format: Format,
    /// The client's id, for recognising lines sent again; without one, the
    /// connection's own key (`#` and its id, which no client id can be).
    client_id: Box<str>,
}

impl Hub {
    /// The rooms of a server with `config`'s limits, their logs in `store`; none
    /// exists yet.
    pub(crate) fn new(config: &ServerConfig, store: Arc<dyn Store>) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            capacity: config.buffer.max(1),
            history: config.history,
            max_rooms: config.max_rooms.max(1),
            presence: config.presence,
            closed: AtomicBool::new(false),
            store,
        }
    }

    /// The rooms that exist now, to go through without holding the rooms' lock.
    fn rooms(&self) -> Vec<Arc<Room>> {
        lock(&self.rooms).values().cloned().collect()
    }

    /// The rooms that exist, and the bytes their logs in memory hold.
    pub(crate) fn stats(&self) -> (usize, usize) {
        let rooms = self.rooms();
        let bytes = rooms.iter().map(|r| r.log.bytes()).sum();
        (rooms.len(), bytes)
    }

    /// Where the rooms' logs are kept (`memory`, `disk`, `redis`), and whether that
    /// store answered (Redis) or wrote (disk) lately; `None` for memory.
    pub(crate) fn store_health(&self) -> (StoreKind, Option<bool>) {
        (self.store.kind(), self.store.up())
    }

    /// With Redis: what it keeps across its restarts (see `Store::persistence`).
    pub(crate) fn store_persistence(&self) -> Option<&'static str> {
        self.store.persistence()
    }

    /// With a data directory: its flushes so far, the lines they held, their time.
    pub(crate) fn flushes(&self) -> Option<crate::store::Flushes> {
        self.store.flushes()
    }

    /// Closes every room's channels, so that each session, once it has written what
    /// they still hold, learns that the server is shutting down (its channel says
    /// closed); nobody can join after this. The cheapest signal there is: sessions
    /// poll their channel anyway.
    pub(crate) fn close(&self) {
        let rooms = lock(&self.rooms);
        self.closed.store(true, Ordering::Relaxed);
        for room in rooms.values() {
            lock(&room.local.state).close();
        }
    }

    /// Rooms that exist now.
    #[cfg(test)]
    fn room_count(&self) -> usize {
        lock(&self.rooms).len()
    }
}

#[cfg(test)]
mod tests;

//! The fan-out: rooms, each with its log (offsets and an epoch) and its broadcast
//! channels, and the memberships through which sessions join, publish, catch up and
//! leave.
//!
//! Lock order: the rooms map, then a room's state. Both are std `Mutex`es, never
//! held across an `.await`.

mod join;
mod log;
mod membership;
mod publish;
mod record;
pub(crate) mod redis;
mod remote;
mod room;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio_websockets::Message;

use crate::config::ServerConfig;
/// The wire format a session speaks; each has its own channel in a room.
pub(crate) use crate::protocol::Format;
use crate::protocol::{Epoch, Resume};
use redis::RedisLog;
use remote::Remote;
use room::{Room, lock};

pub(crate) use log::stamp;
pub(crate) use membership::Submitted;
pub(crate) use publish::PublishError;
pub(crate) use room::Published;

/// Who sent a delivery: a member's connection id, or [`SERVER`].
pub(crate) type SenderId = u64;
/// The sender of the server's own notices (presence), which no-echo never hides.
pub(crate) const SERVER: SenderId = 0;

/// One message on a room's channel (offset 0: not in the log). Cloning it is cheap: the frame is a
/// reference-counted `Message` encoded once, whatever the number of receivers.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// Its offset in the room's log; 0 for a message that is not in it (said while
    /// the log was out of reach), which every session writes as it comes.
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
    /// Most messages each room's log keeps.
    log_entries: usize,
    /// Most bytes each room's log keeps.
    log_bytes: usize,
    /// Most rooms at once.
    max_rooms: usize,
    /// Whether joins and leaves are announced to the room.
    presence: bool,
    /// Set once, under the rooms lock, when the server shuts down.
    closed: AtomicBool,
    /// With Redis: the connection and this instance's part in it.
    remote: Option<Remote>,
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

/// What a session reads from the log when it catches up.
#[derive(Debug, Default)]
pub(crate) struct CatchUp {
    /// How many messages after the asked offset the log no longer holds.
    pub(crate) missed: u64,
    /// The messages it holds, oldest first.
    pub(crate) deliveries: Vec<Delivery>,
}

impl Hub {
    /// The rooms of a server with `config`'s limits, each with its log in memory;
    /// none exists yet.
    pub(crate) fn new(config: &ServerConfig) -> Self {
        Self::build(config, None)
    }

    /// The rooms of a server with `config`'s limits, their logs in Redis (through
    /// `log`) and shared with every instance connected to the same Redis; what
    /// Redis publishes arrives through `pushes`.
    pub(crate) fn with_redis(
        config: &ServerConfig,
        log: RedisLog,
        pushes: tokio::sync::mpsc::UnboundedReceiver<::redis::PushInfo>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        let hub = Arc::new(Self::build(config, Some(Remote::new(log, metrics))));
        remote::start(&hub, pushes);
        hub
    }

    fn build(config: &ServerConfig, remote: Option<Remote>) -> Self {
        // With Redis, the stream is the log: rooms keep none in memory.
        let (log_entries, log_bytes) = match remote {
            None => (
                config.resume_window.max(config.history),
                config.resume_bytes,
            ),
            Some(_) => (0, 0),
        };
        Self {
            rooms: Mutex::new(HashMap::new()),
            capacity: config.buffer.max(1),
            history: config.history,
            log_entries,
            log_bytes,
            max_rooms: config.max_rooms.max(1),
            presence: config.presence,
            closed: AtomicBool::new(false),
            remote,
        }
    }

    /// The rooms that exist now, to go through without holding the rooms' lock.
    fn rooms(&self) -> Vec<Arc<Room>> {
        lock(&self.rooms).values().cloned().collect()
    }

    /// The rooms that exist, and the bytes their logs in memory hold.
    pub(crate) fn stats(&self) -> (usize, usize) {
        let rooms = self.rooms();
        let bytes = rooms.iter().map(|r| lock(&r.state).log.bytes()).sum();
        (rooms.len(), bytes)
    }

    /// With Redis, whether it answered lately; `None` without Redis.
    pub(crate) fn redis_up(&self) -> Option<bool> {
        self.remote.as_ref().map(Remote::is_up)
    }

    /// Closes every room's channels, so that each session, once it has written what
    /// they still hold, learns that the server is shutting down (its channel says
    /// closed); nobody can join after this. The cheapest signal there is: sessions
    /// poll their channel anyway.
    pub(crate) fn close(&self) {
        let rooms = lock(&self.rooms);
        self.closed.store(true, Ordering::Relaxed);
        for room in rooms.values() {
            lock(&room.state).close();
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

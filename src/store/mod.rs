//! The rooms' logs behind one seam: a [`Store`] opens a [`RoomLog`] for each room
//! this instance serves, which numbers what is said there, keeps the last of it and
//! tells the room's local [`Fanout`] what was logged, in offset order. The hub holds
//! only these traits; [`MemoryStore`] keeps each log in this process,
//! [`DiskStore`] in an SQLite database in the data directory, [`RedisStore`] in a
//! Redis shared by every instance.
//!
//! # The promises every store keeps
//! - **Offsets.** Within one epoch, a room's logged messages get offsets 1, 2, 3, ...
//!   without gaps, in the order the store accepted them; every instance sees that
//!   one order.
//! - **Epoch.** Chosen at random when a room's log begins; it stays while the log
//!   lives. A new epoch means the log began again and offsets start over: memory
//!   begins again when the room empties here; Redis when it lost the room's keys
//!   (a restart without persistence, `FLUSHALL`, or a day without traffic).
//! - **The repeated-id rule.** A line sent with its client id and line id is
//!   logged only if the id is above the last one logged under that client id in
//!   that room; otherwise it is a duplicate, answered with the first time's offset when
//!   the id is that last one, without one when it is older ([`repeat_of`]). The
//!   last id is remembered at least while that line is in the log (memory), or for
//!   an hour (Redis).
//! - **Bounds.** A log drops its oldest messages first, beyond `--resume-window`
//!   messages (at least `--history`) and, where the store counts bytes (memory),
//!   beyond `--resume-bytes`, the newest kept however big. Redis trims by count
//!   only, and approximately (whole stream nodes), so it may keep more. What a
//!   log dropped is gone from reads; [`Head::first`] only rises within an epoch.
//! - **Delivery.** Every logged message is handed to the room's [`Fanout`] once per
//!   instance, oldest first: at once in memory, under the log's lock; from Redis as
//!   it publishes them, the store filling a gap from the log before what follows
//!   it, or moving the fan-out past what the log no longer has (the sessions then
//!   tell their clients what they missed).
//! - **Errors.** [`Unavailable::OutOfReach`] means the store is out of reach: a
//!   failed append logged nothing, or (Redis) it is not known whether it did; when
//!   it did, the message reaches every member through the log like any other.
//!   [`Unavailable::Refused`] means the append logged nothing and the line is to go
//!   nowhere (the disk store, past its bound while it cannot write). A failed read
//!   changes nothing. A store that cannot write for a while (a full disk) holds
//!   its appends, unanswered and undelivered, until it can.
//! - **Durable** means that what an append acknowledged survives a restart of this
//!   server. Memory keeps nothing durable: a log lives while its room has members
//!   here. Redis keeps what its own persistence keeps. A store that writes to disk
//!   acknowledges an append, and hands it to the fan-out, only once it is flushed
//!   ([`DiskStore`]): its logs, epochs and repeated-id state survive a restart and
//!   a crash.

pub(crate) mod disk;
mod memory;
mod record;
pub(crate) mod redis;
#[cfg(test)]
mod suite;

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::protocol::structured::NoticeKind;
use crate::protocol::{Epoch, Format};

pub(crate) use disk::{DiskBounds, DiskStore};
pub(crate) use memory::MemoryStore;
pub(crate) use record::{Delivery, Entry, Logged, Record, stamp};
pub(crate) use redis::{RedisBounds, RedisStore, RedisTarget};

/// Who sent a delivery: a member's connection id, or [`SERVER`].
pub(crate) type SenderId = u64;
/// The sender of the server's own notices (presence), which no-echo never hides.
pub(crate) const SERVER: SenderId = 0;

/// Why a store did not do what it was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// It cannot be reached now (Redis is away): a failed append may or may not
    /// have logged the line.
    OutOfReach,
    /// It did not take the line, and logged nothing: it holds as many lines as it
    /// may while it cannot write them (a full disk), or the room's log could not
    /// be read. The line goes nowhere; its sender is told.
    Refused,
}

/// Which store keeps the rooms' logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreKind {
    /// In this process.
    Memory,
    /// In the data directory.
    Disk,
    /// In Redis.
    Redis,
}

impl StoreKind {
    /// What `/healthz` calls it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Disk => "disk",
            StoreKind::Redis => "redis",
        }
    }
}

/// A future a store answers with later.
pub(crate) type Later<T> = Pin<Box<dyn Future<Output = Result<T, Unavailable>> + Send>>;

/// Where a room's log stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    /// The log's epoch.
    pub(crate) epoch: Epoch,
    /// Its last offset; 0 before the first message.
    pub(crate) head: u64,
    /// The oldest offset it still holds; `head + 1` when it holds none.
    pub(crate) first: u64,
}

/// What appending a line did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Published {
    /// The line's offset; for a repeat, the first time's if it is still known.
    pub(crate) offset: Option<u64>,
    /// The line's id had been accepted before, so it was not logged again.
    pub(crate) duplicate: bool,
}

/// An append, answered at once (in memory) or later (when Redis answers).
pub(crate) enum Appending {
    /// Done already.
    Done(Result<Published, Unavailable>),
    /// Its place is fixed; what became of it is known when this completes.
    Later(Later<Published>),
}

/// A member joining or leaving, for a store that keeps presence across instances
/// (Redis); the store that keeps none ignores it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Presence<'a> {
    /// Connection `id`, labelled `who`, joined.
    Join(SenderId, &'a str),
    /// Connection `id`, labelled `who`, left.
    Leave(SenderId, &'a str),
}

/// What a session reads from the log when it catches up.
#[derive(Debug, Default)]
pub(crate) struct CatchUp {
    /// How many messages after the asked offset the log no longer holds.
    pub(crate) missed: u64,
    /// The messages it holds, oldest first.
    pub(crate) deliveries: Vec<Delivery>,
}

/// What to do after [`Fanout::take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Intake {
    /// Nothing more.
    Done,
    /// Messages after this offset are missing here: fetch them from the log, then
    /// hand the message over again.
    GapAfter(u64),
}

/// The hub's side of one room, as its store sees it: this instance's members and
/// channels, and how far the log has been delivered to them.
pub(crate) trait Fanout: Send + Sync + Debug {
    /// Delivers `entry` to the local members if it is the next logged message;
    /// says what to do otherwise: nothing (delivered already, or not following the
    /// log yet), or fill the gap after an offset first.
    fn take(&self, entry: &Entry) -> Intake;
    /// Starts following the log at `head` of `epoch` unless following it already;
    /// returns the epoch and last offset delivered.
    fn baseline(&self, epoch: Epoch, head: u64) -> (Epoch, u64);
    /// Moves delivery on to `offset` of `epoch`, over messages that cannot be had:
    /// each session sees the gap and tells its client how many it missed.
    fn skip_to(&self, epoch: Epoch, offset: u64);
    /// Tells every local member `text`, outside the log.
    fn notify(&self, kind: NoticeKind, text: &str);
    /// The local members: connection ids and labels.
    fn members(&self) -> Vec<(SenderId, String)>;
}

/// Where rooms' logs are kept: opens one for each room this instance serves.
pub(crate) trait Store: Send + Sync + Debug {
    /// Opens `room`'s log, whose logged messages go to `fanout` in offset order.
    /// Called when the room appears here (under the hub's rooms lock, so opens and
    /// closes of one name happen in order); [`RoomLog::close`] when it vanishes.
    fn open(&self, room: &str, fanout: Arc<dyn Fanout>) -> Arc<dyn RoomLog>;
    /// Logs `record` in `room` from outside it (the publish API), open here or not,
    /// for a store whose logs outlive their rooms' members here (Redis), and
    /// answers with the log's epoch and the record's place; open rooms everywhere
    /// get it as any other. `None` from a store whose logs live only while their
    /// rooms have members here (memory): only an open room's log can take it.
    fn append_to(&self, room: &str, record: &Record<'_>) -> Option<Later<(Epoch, Published)>>;
    /// Whether the store answered (Redis) or wrote (disk) lately; `None` for one
    /// that cannot fail (memory).
    fn up(&self) -> Option<bool>;
    /// Which store it is.
    fn kind(&self) -> StoreKind;
    /// For a store kept by another service (Redis): what that service keeps across
    /// its own restart, as `/healthz` says it (`none`, `aof`, `rdb`, `aof+rdb`,
    /// `unknown`). `None` for a store that is its own persistence (memory, disk).
    fn persistence(&self) -> Option<&'static str> {
        None
    }
    /// For a store that flushes to disk: its flushes so far, the lines they held
    /// (lines per flush shows the group commit at work) and the time they took.
    fn flushes(&self) -> Option<Flushes> {
        None
    }
}

/// A disk store's commits so far, each one flush (`fsync`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flushes {
    /// Commits that succeeded.
    pub(crate) count: u64,
    /// The entries they held.
    pub(crate) lines: u64,
    /// The time they took, write and flush, in nanoseconds: over the count, what
    /// every line waits at least before anyone gets it.
    pub(crate) nanos: u64,
}

/// One room's log and sequencer. Nothing here is called with a hub lock held other
/// than the rooms lock, and a store never takes a hub lock other than the one
/// [`Fanout`] takes, so its own lock may be held while it delivers.
pub(crate) trait RoomLog: Send + Sync + Debug {
    /// Logs `record`, which the room's [`Fanout`] then gets. With `line` (a client
    /// id and line id) the repeated-id rule applies; with `presence`, the store
    /// updates the room's members and may put their count in the record. The place
    /// in the room is fixed when this returns, whatever the caller awaits.
    fn append(
        &self,
        record: &Record<'_>,
        line: Option<(&str, u64)>,
        presence: Option<Presence<'_>>,
    ) -> Appending;
    /// Where the log stands, beginning it (with a new epoch) if it has not begun.
    /// A store that hands entries to the fan-out under its own lock (memory, disk)
    /// also has the fan-out follow the log from there ([`Fanout::baseline`]) under
    /// that lock, so that nothing logged meanwhile falls between the two.
    fn head(&self) -> Later<Head>;
    /// Up to `limit` logged messages after `after`, oldest first, in `format`.
    fn read(&self, after: u64, limit: usize, format: Format) -> Later<CatchUp>;
    /// Everyone in the room on every instance, sorted; `None` when this instance's
    /// members are everyone.
    fn members(&self) -> Later<Option<Vec<String>>>;
    /// Lists a member who joined (or unlists one who left) without a notice, for a
    /// store that keeps the room's members across instances; `None` when there is
    /// nothing to wait for.
    fn list(&self, change: Presence<'_>) -> Option<Later<()>>;
    /// The room vanished here; `last` is the leaving of its last member, for a store
    /// that keeps the members across instances, to log as a notice if `notice`.
    fn close(&self, last: Option<Presence<'_>>, notice: bool);
    /// Bytes this log holds in this process.
    fn bytes(&self) -> usize;
}

/// Messages each room's log keeps, at most (memory) or about (Redis): the
/// resume window, or the history if that is longer.
pub(crate) fn window(config: &crate::config::ServerConfig) -> usize {
    config.resume_window.max(config.history)
}

/// Locks `mutex`, going on with the data if a panic poisoned it: nothing under
/// these locks panics between two changes that must go together.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The repeated-id rule, for a line `id` under a client id whose last logged line
/// was `last` (its id and offset): `None` to log it, or the answer to a repeat.
/// Redis keeps the same rule in its publish script, where it must be atomic.
pub(crate) fn repeat_of(last: Option<(u64, u64)>, id: u64) -> Option<Published> {
    let (last_id, last_offset) = last?;
    (id <= last_id).then_some(Published {
        offset: (id == last_id).then_some(last_offset),
        duplicate: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_new_only_above_the_last_id() {
        assert_eq!(repeat_of(None, 1), None);
        assert_eq!(repeat_of(Some((5, 9)), 6), None);
        let again = Some(Published {
            offset: Some(9),
            duplicate: true,
        });
        assert_eq!(repeat_of(Some((5, 9)), 5), again);
        let older = Some(Published {
            offset: None,
            duplicate: true,
        });
        assert_eq!(repeat_of(Some((5, 9)), 4), older);
    }
}

//! The store in this process: each room's log a ring of its last entries, bounded
//! by count and by bytes, that begins again (a new epoch) when the room empties.
//! Appending is synchronous, under the room's log lock, which also hands the entry
//! to the room's fan-out, so offsets and deliveries agree on one order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::{
    Appending, CatchUp, Entry, Fanout, Format, Head, Later, Presence, Published, Record, RoomLog,
    Store, lock, repeat_of,
};
use crate::config::ServerConfig;
use crate::protocol::Epoch;

/// Rooms' logs in memory, each bounded by `max_entries` and `max_bytes`.
#[derive(Debug)]
pub(crate) struct MemoryStore {
    /// Most entries each log keeps.
    max_entries: usize,
    /// Most bytes each log keeps.
    max_bytes: usize,
}

impl MemoryStore {
    /// A store whose logs keep at most `max_entries` and `max_bytes` each.
    pub(crate) fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            max_entries,
            max_bytes,
        }
    }

    /// A store whose logs keep what `config` says.
    pub(crate) fn for_config(config: &ServerConfig) -> Self {
        Self::new(super::window(config), config.resume_bytes)
    }
}

impl Store for MemoryStore {
    fn open(&self, room: &str, fanout: Arc<dyn Fanout>) -> Arc<dyn RoomLog> {
        Arc::new(MemoryRoom {
            name: room.to_owned(),
            fanout,
            state: Mutex::new(RoomState {
                log: MemoryLog::new(self.max_entries, self.max_bytes),
                accepted: HashMap::new(),
            }),
        })
    }

    fn append_to(&self, _room: &str, _record: &Record<'_>) -> Option<Later<(Epoch, Published)>> {
        None
    }

    fn up(&self) -> Option<bool> {
        None
    }

    fn kind(&self) -> super::StoreKind {
        super::StoreKind::Memory
    }
}

/// One room's log in memory.
#[derive(Debug)]
struct MemoryRoom {
    /// The room's name; `""` is the lobby.
    name: String,
    /// Where logged entries go, under `state`'s lock so they go in offset order.
    fanout: Arc<dyn Fanout>,
    /// The log and the ids already accepted. std `Mutex`: never held across an
    /// `.await`; the fan-out's lock is taken under it, never the other way round.
    state: Mutex<RoomState>,
}

/// What a room log's lock guards (here, and in the disk store's rooms).
#[derive(Debug)]
pub(super) struct RoomState {
    /// The log's last entries.
    pub(super) log: MemoryLog,
    /// The last line id accepted under each client id, with its offset, so
    /// that a line sent again after a reconnect is recognised.
    pub(super) accepted: HashMap<Box<str>, (u64, u64)>,
}

impl RoomLog for MemoryRoom {
    fn append(
        &self,
        record: &Record<'_>,
        line: Option<(&str, u64)>,
        _presence: Option<Presence<'_>>,
    ) -> Appending {
        // Made before the lock: the classic line does not depend on the offset.
        let classic = record.classic();
        let mut state = lock(&self.state);
        if let Some((client_id, id)) = line
            && let Some(repeat) = repeat_of(state.accepted.get(client_id).copied(), id)
        {
            return Appending::Done(Ok(repeat));
        }
        let offset = state.log.head() + 1;
        let entry = record.encode_with(classic, &self.name, state.log.epoch(), offset);
        self.fanout.take(&entry);
        state.log.push(entry);
        if let Some((client_id, id)) = line {
            state.remember(client_id, id, offset);
        }
        Appending::Done(Ok(Published {
            offset: Some(offset),
            duplicate: false,
        }))
    }

    fn head(&self) -> Later<Head> {
        let state = lock(&self.state);
        let head = state.log.where_it_stands();
        self.fanout.baseline(head.epoch, head.head);
        Box::pin(std::future::ready(Ok(head)))
    }

    fn read(&self, after: u64, limit: usize, format: Format) -> Later<CatchUp> {
        let read = lock(&self.state).log.catch_up(after, limit, format);
        Box::pin(std::future::ready(Ok(read)))
    }

    fn members(&self) -> Later<Option<Vec<String>>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn list(&self, _change: Presence<'_>) -> Option<Later<()>> {
        None
    }

    fn close(&self, _last: Option<Presence<'_>>, _notice: bool) {}

    fn bytes(&self) -> usize {
        lock(&self.state).log.bytes()
    }
}

impl RoomState {
    /// Notes that line `id` under `client_id` went out at `offset`. Client ids whose
    /// last line has left the log are forgotten once they outnumber the log's
    /// entries: a line sent again that late cannot be told from a new one anyway.
    pub(super) fn remember(&mut self, client_id: &str, id: u64, offset: u64) {
        match self.accepted.get_mut(client_id) {
            Some(last) => *last = (id, offset),
            None => {
                let first = self.log.first();
                if self.accepted.len() >= 64 + 2 * (self.log.head() + 1 - first) as usize {
                    self.accepted.retain(|_, last| last.1 >= first);
                }
                self.accepted.insert(client_id.into(), (id, offset));
            }
        }
    }
}

/// A log in memory: a ring of the last entries, bounded by count and by bytes.
/// The disk store keeps one for each open room too, of the entries on disk.
#[derive(Debug)]
pub(super) struct MemoryLog {
    epoch: Epoch,
    head: u64,
    entries: VecDeque<Entry>,
    /// Bytes the kept entries hold, by [`Entry::size`].
    bytes: usize,
    /// Most entries kept.
    max_entries: usize,
    /// Most bytes kept; the newest entry is kept even if it alone is larger.
    max_bytes: usize,
}

impl MemoryLog {
    /// An empty log with a new random epoch.
    fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self::resume(Epoch::random(), 0, max_entries, max_bytes, Vec::new())
    }

    /// A log of `epoch` whose last offset was `head`, holding `kept`: its last
    /// entries, oldest first, consecutive and ending at `head` (the disk store's,
    /// read back).
    pub(super) fn resume(
        epoch: Epoch,
        head: u64,
        max_entries: usize,
        max_bytes: usize,
        kept: Vec<Entry>,
    ) -> Self {
        let mut log = Self {
            epoch,
            head: kept.first().map_or(head, |e| e.offset - 1),
            entries: VecDeque::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        };
        for entry in kept {
            log.push(entry);
        }
        log.head = log.head.max(head);
        log
    }

    /// Where the log stands.
    pub(super) fn where_it_stands(&self) -> Head {
        Head {
            epoch: self.epoch,
            head: self.head,
            first: self.first(),
        }
    }

    /// What a session catching up after `after` reads: up to `limit` entries in
    /// `format`, and how many after `after` are no longer held.
    pub(super) fn catch_up(&self, after: u64, limit: usize, format: Format) -> CatchUp {
        CatchUp {
            missed: (self.first() - 1).saturating_sub(after),
            deliveries: self
                .read(after, limit)
                .map(|e| e.delivery(format))
                .collect(),
        }
    }

    /// Drops every entry below `offset` (retention by age).
    pub(super) fn drop_before(&mut self, offset: u64) {
        while self.entries.front().is_some_and(|e| e.offset < offset) {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.size();
            }
        }
    }

    /// Entries kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes the kept entries hold.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl MemoryLog {
    /// The log's epoch: chosen at random when the log began.
    pub(super) fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The last offset kept or given out; 0 before the first message.
    pub(super) fn head(&self) -> u64 {
        self.head
    }

    /// The oldest offset still kept; `head() + 1` when none is.
    pub(super) fn first(&self) -> u64 {
        self.entries.front().map_or(self.head + 1, |e| e.offset)
    }

    /// Keeps `entry`, whose offset must be `head() + 1`, dropping the oldest entries
    /// beyond the bounds.
    pub(super) fn push(&mut self, entry: Entry) {
        debug_assert_eq!(entry.offset, self.head + 1, "offsets have no gaps");
        self.head = entry.offset;
        if self.max_entries == 0 {
            return;
        }
        self.bytes += entry.size();
        self.entries.push_back(entry);
        while self.entries.len() > self.max_entries
            || (self.bytes > self.max_bytes && self.entries.len() > 1)
        {
            if let Some(old) = self.entries.pop_front() {
                self.bytes -= old.size();
            }
        }
    }

    /// Up to `limit` entries with offsets above `after`, oldest first.
    fn read(&self, after: u64, limit: usize) -> impl Iterator<Item = &Entry> {
        // Offsets are consecutive, so the position of `after + 1` is arithmetic.
        let skip = after.saturating_sub(self.first() - 1);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        self.entries.iter().skip(skip).take(limit)
    }
}

/// A memory store for the shared suite.
#[cfg(test)]
pub(super) async fn subject(bounds: super::suite::Bounds) -> super::suite::Subject {
    super::suite::Subject {
        store: Arc::new(MemoryStore::new(bounds.entries, bounds.bytes)),
        _keep: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_websockets::Message;

    fn entry(offset: u64, text: &str) -> Entry {
        Entry {
            offset,
            epoch: Epoch(1),
            from: 1,
            accepted: 0,
            classic: Message::text(text.to_owned()),
            structured: Message::text(format!("{{\"text\":{text:?}}}")),
        }
    }

    fn offsets(log: &MemoryLog, after: u64, limit: usize) -> Vec<u64> {
        log.read(after, limit).map(|e| e.offset).collect()
    }

    #[test]
    fn offsets_count_from_one_and_reads_start_after_the_given_one() {
        let mut log = MemoryLog::new(100, usize::MAX);
        assert_eq!((log.head(), log.first()), (0, 1));
        for offset in 1..=5 {
            log.push(entry(offset, "x"));
        }
        assert_eq!((log.head(), log.first()), (5, 1));
        assert_eq!(offsets(&log, 0, 10), [1, 2, 3, 4, 5]);
        assert_eq!(offsets(&log, 2, 2), [3, 4]);
        assert_eq!(offsets(&log, 5, 10), Vec::<u64>::new());
        assert_eq!(offsets(&log, 9, 10), Vec::<u64>::new());
    }

    #[test]
    fn the_oldest_go_first_beyond_the_count() {
        let mut log = MemoryLog::new(3, usize::MAX);
        for offset in 1..=5 {
            log.push(entry(offset, "x"));
        }
        assert_eq!((log.first(), log.head(), log.len()), (3, 5, 3));
        // From before the first kept: what is kept, nothing older.
        assert_eq!(offsets(&log, 0, 10), [3, 4, 5]);
        assert_eq!(offsets(&log, 3, 10), [4, 5]);
    }

    #[test]
    fn the_oldest_go_first_beyond_the_bytes_but_the_newest_stays() {
        let one = entry(1, "0123456789").size();
        let mut log = MemoryLog::new(100, 2 * one);
        for offset in 1..=4 {
            log.push(entry(offset, "0123456789"));
        }
        assert_eq!(offsets(&log, 0, 10), [3, 4]);
        assert_eq!(log.bytes(), 2 * one);
        log.push(entry(5, &"x".repeat(10 * one)));
        assert_eq!(offsets(&log, 0, 10), [5], "the newest is kept however big");
    }

    #[test]
    fn a_log_that_keeps_nothing_still_counts() {
        let mut log = MemoryLog::new(0, usize::MAX);
        log.push(entry(1, "x"));
        log.push(entry(2, "x"));
        assert_eq!((log.head(), log.first(), log.bytes()), (2, 3, 0));
    }

    #[test]
    fn every_log_has_its_own_epoch() {
        assert_ne!(MemoryLog::new(1, 1).epoch(), MemoryLog::new(1, 1).epoch());
    }
}

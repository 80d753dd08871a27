//! A room's log: every message broadcast in the room gets the next offset (1, 2, 3,
//! ...), and the last ones are kept, up to a count and a size in bytes, for
//! newcomers (history), returning clients (resume) and sessions that fell behind.

use std::collections::VecDeque;

use tokio_websockets::Message;

use super::{Delivery, Format, SenderId};
use crate::protocol::Epoch;

/// When the server accepted a message: nanoseconds since the process began, for
/// the delivery latency metric (8 bytes a message, where an `Instant` takes 16).
pub(crate) fn stamp() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One message of the log, encoded once in each wire format.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Its place in the room's log; 0 for a message that is not in it.
    pub(crate) offset: u64,
    /// The epoch of the log it is in.
    pub(crate) epoch: Epoch,
    /// Who sent it, so that a session with no-echo leaves out its own.
    pub(crate) from: SenderId,
    /// When this server accepted it (from a client, or from Redis): a [`stamp`].
    pub(crate) accepted: u64,
    /// The classic line: `127.0.0.1:53422: "hello"` or `* ... joined (2 here)`.
    pub(crate) classic: Message,
    /// The structured frame: `{"type":"message",...}`.
    pub(crate) structured: Message,
}

impl Entry {
    /// Bytes this entry keeps alive: both encodings and the entry itself.
    pub(crate) fn size(&self) -> usize {
        self.classic.as_payload().len() + self.structured.as_payload().len() + size_of::<Self>()
    }

    /// What a session of `format` is sent for this entry.
    pub(crate) fn delivery(&self, format: Format) -> Delivery {
        Delivery {
            offset: self.offset,
            epoch: self.epoch,
            from: self.from,
            accepted: self.accepted,
            message: match format {
                Format::Classic => self.classic.clone(),
                Format::Structured => self.structured.clone(),
            },
        }
    }
}

/// Where a room's messages are numbered and kept, and the promises any storage
/// keeps: offsets without gaps in one epoch, oldest dropped first. [`MemoryLog`]
/// is the embedded one. Redis (`super::redis`) keeps the same promises, but
/// asynchronously and shared by every instance, so it is reached through
/// [`super::Membership`] rather than through this trait.
pub(crate) trait RoomLog: Send {
    /// The log's epoch: chosen at random when the log began.
    fn epoch(&self) -> Epoch;
    /// The last offset given out; 0 before the first message.
    fn head(&self) -> u64;
    /// The oldest offset still kept; `head() + 1` when none is.
    fn first(&self) -> u64;
    /// Keeps `entry`, whose offset must be `head() + 1`, dropping the oldest entries
    /// beyond the bounds.
    fn push(&mut self, entry: Entry);
    /// Up to `limit` entries with offsets above `after`, oldest first.
    fn read(&self, after: u64, limit: usize) -> impl Iterator<Item = &Entry>;
}

/// A log in memory: a ring of the last entries, bounded by count and by bytes.
#[derive(Debug)]
pub(crate) struct MemoryLog {
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
    pub(crate) fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            epoch: Epoch::random(),
            head: 0,
            entries: VecDeque::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    /// Entries kept now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes the kept entries hold.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

impl RoomLog for MemoryLog {
    fn epoch(&self) -> Epoch {
        self.epoch
    }

    fn head(&self) -> u64 {
        self.head
    }

    fn first(&self) -> u64 {
        self.entries.front().map_or(self.head + 1, |e| e.offset)
    }

    fn push(&mut self, entry: Entry) {
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

    fn read(&self, after: u64, limit: usize) -> impl Iterator<Item = &Entry> {
        // Offsets are consecutive, so the position of `after + 1` is arithmetic.
        let skip = after.saturating_sub(self.first() - 1);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        self.entries.iter().skip(skip).take(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

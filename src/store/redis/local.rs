//! What this instance holds of a room it follows, for the reads that go on while
//! Redis is out of reach: the last of the room's log as it was delivered here, and
//! the room's members on the other instances as Redis last listed them.
//!
//! The copy of the log is what the memory store keeps ([`MemoryLog`]), bounded the
//! same way (`--resume-window`, `--resume-bytes`), fed by the dispatcher in offset
//! order: a run of consecutive entries of one epoch, begun again at a gap or a new
//! epoch. While Redis answers it is never read.

use std::sync::Mutex;

use crate::store::memory::MemoryLog;
use crate::store::{CatchUp, Entry, Format, Head, lock};

/// One room's local copy.
#[derive(Debug)]
pub(super) struct Local {
    /// The last entries delivered here, consecutive; `None` before the first.
    log: Mutex<Option<MemoryLog>>,
    /// The members of other instances, as Redis last listed them (the presence
    /// set's raw members: `instance/connection label`).
    others: Mutex<Vec<String>>,
    /// Most entries and bytes kept.
    bounds: (usize, usize),
}

impl Local {
    /// An empty copy keeping at most `entries` entries and `bytes` bytes.
    pub(super) fn new(entries: usize, bytes: usize) -> Self {
        Self {
            log: Mutex::new(None),
            others: Mutex::new(Vec::new()),
            bounds: (entries, bytes),
        }
    }

    /// Keeps `entry`, delivered here: after the last if it follows it, passed over
    /// if it is kept already, the start of a new run otherwise.
    pub(super) fn keep(&self, entry: &Entry) {
        let mut log = lock(&self.log);
        match log.as_mut() {
            Some(kept) if kept.epoch() == entry.epoch && entry.offset <= kept.head() => {}
            Some(kept) if kept.epoch() == entry.epoch && entry.offset == kept.head() + 1 => {
                kept.push(entry.clone());
            }
            _ => {
                let (entries, bytes) = self.bounds;
                let mut run =
                    MemoryLog::resume(entry.epoch, entry.offset - 1, entries, bytes, Vec::new());
                run.push(entry.clone());
                *log = Some(run);
            }
        }
    }

    /// Where the copy stands, if it holds anything.
    pub(super) fn head(&self) -> Option<Head> {
        lock(&self.log).as_ref().map(MemoryLog::where_it_stands)
    }

    /// Up to `limit` entries after `after`, from the copy, and how many after
    /// `after` it does not hold; `None` if it holds nothing.
    pub(super) fn read(&self, after: u64, limit: usize, format: Format) -> Option<CatchUp> {
        lock(&self.log)
            .as_ref()
            .map(|log| log.catch_up(after, limit, format))
    }

    /// Remembers the room's members as Redis listed them (every instance's),
    /// keeping those not of `instance`.
    pub(super) fn listed(&self, members: &[String], instance: &str) {
        *lock(&self.others) = members
            .iter()
            .filter(|m| !m.starts_with(instance))
            .cloned()
            .collect();
    }

    /// The labels of the other instances' members as last listed.
    pub(super) fn others(&self) -> Vec<String> {
        lock(&self.others)
            .iter()
            .filter_map(|m| m.split_once(' ').map(|(_, label)| label.to_owned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Epoch;
    use crate::store::Record;

    fn entry(epoch: Epoch, offset: u64) -> Entry {
        Record::chat(1, "alice", &offset.to_string()).encode("r", epoch, offset)
    }

    #[test]
    fn the_copy_is_a_run_of_consecutive_entries_begun_again_at_a_gap() {
        let local = Local::new(3, usize::MAX);
        assert_eq!(local.head(), None);
        let epoch = Epoch::random();
        for offset in [5, 6, 6, 7, 8] {
            local.keep(&entry(epoch, offset));
        }
        let head = local.head().expect("a head");
        assert_eq!((head.epoch, head.first, head.head), (epoch, 6, 8));
        let read = local.read(6, 10, Format::Structured).expect("a copy");
        assert_eq!((read.missed, read.deliveries.len()), (0, 2));
        let read = local.read(3, 10, Format::Structured).expect("a copy");
        assert_eq!((read.missed, read.deliveries.len()), (2, 3));
        // A gap, then a new epoch: each begins a new run.
        local.keep(&entry(epoch, 10));
        let head = local.head().expect("a head");
        assert_eq!((head.first, head.head), (10, 10));
        let other = Epoch::random();
        local.keep(&entry(other, 1));
        assert_eq!(local.head().map(|h| (h.epoch, h.head)), Some((other, 1)));
    }

    #[test]
    fn the_others_are_the_members_not_of_this_instance() {
        let local = Local::new(1, 1);
        let listed = [
            "00000000000000aa/0000000000000001 alice@1".to_owned(),
            "00000000000000bb/0000000000000002 bob@2".to_owned(),
        ];
        local.listed(&listed, "00000000000000aa/");
        assert_eq!(local.others(), ["bob@2"]);
    }
}

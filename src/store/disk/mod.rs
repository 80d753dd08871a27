//! The store on disk (`--data-dir`): each room's log, epoch and head, and the last
//! line id logged under each client id, in an SQLite database in the data
//! directory (`db.rs`), so that a restart or a crash keeps every room as it was.
//!
//! Appending gives the line its offset at once, under the room's lock, as memory
//! does, and hands it to the writer thread (`writer.rs`), which commits what has
//! gathered in one flush. Only then does the line reach the room's fan-out and its
//! sender's ack: what one member saw, every member can get after a crash. Each open
//! room keeps the entries of its log in memory too (the memory store's
//! [`MemoryLog`], of flushed entries only), so history, resumes and catch-ups never
//! read the disk; a room is read back when it opens.
//!
//! A room's state lives in a [`Core`] while the room is open here or a write of
//! its is on the way, so that a room that closes and opens again at once goes on
//! from what it gave out, not from what the disk has so far.

pub(crate) mod backup;
mod db;
mod writer;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use super::memory::{MemoryLog, RoomState};
use super::{
    Appending, CatchUp, Fanout, Format, Head, Later, Presence, Published, Record, RoomLog, Store,
    Unavailable, lock, repeat_of,
};
use crate::config::ServerConfig;
use crate::protocol::Epoch;
use writer::{Append, Job};

/// Why the data directory cannot be used: said in one line, and the server does
/// not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DataDirError {
    /// The directory.
    pub(crate) dir: PathBuf,
    /// What is wrong with it.
    pub(crate) reason: String,
}

impl fmt::Display for DataDirError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot use the data directory {}: {}",
            self.dir.display(),
            self.reason
        )
    }
}

/// What the disk store keeps, at most.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DiskBounds {
    /// Entries per room (`--resume-window`, at least `--history`).
    pub(crate) entries: usize,
    /// Bytes per room, counted as memory counts them (`--resume-bytes`).
    pub(crate) bytes: usize,
    /// How long an entry is kept (`--retention`); `None`: as long as the bounds let.
    pub(crate) retention: Option<Duration>,
    /// Rooms kept (`--max-stored-rooms`); the ones written longest ago go first.
    pub(crate) rooms: usize,
    /// Lines on their way to the disk at once (`--outage-queue`): past it, a line
    /// is refused and its sender told.
    pub(crate) waiting: usize,
}

impl DiskBounds {
    /// The bounds `config` sets.
    pub(crate) fn for_config(config: &ServerConfig) -> Self {
        Self {
            entries: super::window(config),
            bytes: config.resume_bytes,
            retention: config.retention,
            rooms: config.max_stored_rooms,
            waiting: config.outage_queue,
        }
    }
}

/// Rooms' logs in an SQLite database in the data directory.
#[derive(Debug)]
pub(crate) struct DiskStore {
    shared: Arc<Shared>,
    /// The data directory's lock, held while the store lives.
    _lock: File,
}

/// What the store and its writer share.
pub(super) struct Shared {
    bounds: DiskBounds,
    /// The rooms whose state is in memory (open here, or with a write on the way).
    rooms: Mutex<HashMap<String, Weak<Core>>>,
    /// Reads rooms back when they open. Its own connection: WAL lets it read while
    /// the writer writes.
    reader: Mutex<Connection>,
    /// To the writer thread.
    jobs: Sender<Job>,
    /// Appends given to the writer and not yet committed.
    waiting: AtomicUsize,
    /// Whether the last commit failed.
    failing: AtomicBool,
    /// Commits (each one flush) and the lines they held, for lines per flush, and
    /// the nanoseconds the commits that succeeded took.
    flushes: AtomicU64,
    lines: AtomicU64,
    flush_nanos: AtomicU64,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("bounds", &self.bounds)
            .field("failing", &self.failing)
            .finish_non_exhaustive()
    }
}

/// One room's state, while it is open or being written.
pub(super) struct Core {
    name: String,
    epoch: Epoch,
    /// Its flushed entries and client ids' last lines, the offsets given out, and
    /// the fan-out of the room open here. The fan-out's lock is taken under it.
    state: Mutex<CoreState>,
    /// The last offset flushed, for a line sent again while its first copy is still
    /// on the way: its answer waits for the flush.
    durable: watch::Sender<u64>,
    /// Offsets below this are gone from the disk too (the writer's).
    trimmed: Mutex<u64>,
}

struct CoreState {
    /// The flushed entries, within the bounds, and the repeated-id state.
    room: RoomState,
    /// The last offset given out (flushed or not).
    given: u64,
    /// The fan-out of the room open here, if it is.
    fanout: Option<Arc<dyn Fanout>>,
}

impl DiskStore {
    /// Opens the data directory `dir` (making it if need be) with `bounds`: checks
    /// that it is ours and of a known format, takes its lock, reads back what a
    /// crash left (reporting a last write it cut short), and starts the writer.
    ///
    /// # Errors
    /// [`DataDirError`] when the directory is another program's, of an unknown
    /// format version, in use by another server, or cannot be read or written.
    pub(crate) fn open(dir: &Path, bounds: DiskBounds) -> Result<Self, DataDirError> {
        let had_lock = dir.join(db::LOCK).exists();
        let (lock, path) = db::claim(dir)?;
        let opened = Self::start(dir, &path, lock, bounds);
        if opened.is_err() && !had_lock {
            // A directory refused keeps nothing of ours.
            let _ = std::fs::remove_file(dir.join(db::LOCK));
        }
        opened
    }

    /// Opens the claimed directory's database at `path` and starts the writer.
    fn start(
        dir: &Path,
        path: &Path,
        lock: File,
        bounds: DiskBounds,
    ) -> Result<Self, DataDirError> {
        let refuse = |reason: String| DataDirError {
            dir: dir.to_owned(),
            reason,
        };
        let wal = std::fs::metadata(dir.join(format!("{}-wal", db::FILE))).map_or(0, |m| m.len());
        let conn = db::open_writer(path).map_err(&refuse)?;
        let cut = db::cut_short(&conn, wal).map_err(|e| refuse(e.to_string()))?;
        if cut > 0 {
            warn!(
                dir = %dir.display(),
                bytes = cut,
                "the last write before the server stopped was cut short: every room is as of its last whole write"
            );
        }
        let reader = db::open_reader(path).map_err(&refuse)?;
        let (jobs, queue) = mpsc::channel();
        let shared = Arc::new(Shared {
            bounds,
            rooms: Mutex::new(HashMap::new()),
            reader: Mutex::new(reader),
            jobs,
            waiting: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            flushes: AtomicU64::new(0),
            lines: AtomicU64::new(0),
            flush_nanos: AtomicU64::new(0),
        });
        let for_writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("chat-disk".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| writer::run(conn, &for_writer, &queue));
                if std::panic::catch_unwind(run).is_err() {
                    // Lines would wait forever: a restart reads back what was flushed.
                    error!("the disk writer failed: stopping the server");
                    std::process::abort();
                }
            })
            .map_err(|e| refuse(format!("cannot start its writer thread: {e}")))?;
        info!(dir = %dir.display(), "rooms are kept in the data directory");
        Ok(Self {
            shared,
            _lock: lock,
        })
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        // The writer commits what it was given, then stops.
        let _ = self.shared.jobs.send(Job::Stop);
    }
}

impl Store for DiskStore {
    fn open(&self, room: &str, fanout: Arc<dyn Fanout>) -> Arc<dyn RoomLog> {
        let core = self.shared.core(room);
        if let Ok(core) = &core {
            lock(&core.state).fanout = Some(Arc::clone(&fanout));
        }
        Arc::new(DiskRoom {
            core,
            shared: Arc::clone(&self.shared),
            fanout,
        })
    }

    fn append_to(&self, room: &str, record: &Record<'_>) -> Option<Later<(Epoch, Published)>> {
        let Ok(core) = self.shared.core(room) else {
            return Some(Box::pin(std::future::ready(Err(Unavailable::Refused))));
        };
        let epoch = core.epoch;
        Some(match self.shared.append(&core, record, None, false) {
            Appending::Done(done) => Box::pin(std::future::ready(done.map(|p| (epoch, p)))),
            Appending::Later(later) => Box::pin(async move { later.await.map(|p| (epoch, p)) }),
        })
    }

    fn up(&self) -> Option<bool> {
        Some(!self.shared.failing.load(Ordering::Relaxed))
    }

    fn kind(&self) -> super::StoreKind {
        super::StoreKind::Disk
    }

    fn flushes(&self) -> Option<super::Flushes> {
        Some(super::Flushes {
            count: self.shared.flushes.load(Ordering::Relaxed),
            lines: self.shared.lines.load(Ordering::Relaxed),
            nanos: self.shared.flush_nanos.load(Ordering::Relaxed),
        })
    }
}

impl Shared {
    /// `room`'s state: the one in memory, or read back from the disk (a room new
    /// to the data directory begins with a new epoch, which the writer keeps).
    fn core(&self, room: &str) -> Result<Arc<Core>, rusqlite::Error> {
        let mut rooms = lock(&self.rooms);
        if let Some(core) = rooms.get(room).and_then(Weak::upgrade) {
            return Ok(core);
        }
        let since = self.bounds.retention.map_or(i64::MIN, |age| {
            db::now().saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX))
        });
        let loaded = db::load(&lock(&self.reader), room, self.bounds.entries, since).inspect_err(
            |e| warn!(room, error = %e, "cannot read a room back from the data directory"),
        )?;
        let (epoch, head) = loaded.room.unwrap_or((Epoch::random(), 0));
        let kept = loaded
            .entries
            .into_iter()
            .map(|(offset, record)| record.encode(room, epoch, offset))
            .collect();
        let mut state = RoomState {
            log: MemoryLog::resume(epoch, head, self.bounds.entries, self.bounds.bytes, kept),
            accepted: HashMap::new(),
        };
        for (client, id, offset) in loaded.lines {
            state.accepted.insert(client, (id, offset));
        }
        let core = Arc::new(Core {
            name: room.to_owned(),
            epoch,
            state: Mutex::new(CoreState {
                room: state,
                given: head,
                fanout: None,
            }),
            durable: watch::Sender::new(head),
            trimmed: Mutex::new(0),
        });
        if loaded.room.is_none() {
            // Sent under the rooms lock: before anything of the room's.
            let _ = self.jobs.send(Job::Begin(Arc::clone(&core)));
        }
        if rooms.len() >= 64 && rooms.len().is_power_of_two() {
            rooms.retain(|_, core| core.strong_count() > 0);
        }
        rooms.insert(room.to_owned(), Arc::downgrade(&core));
        Ok(core)
    }

    /// The rooms whose state is in memory now.
    fn open_cores(&self) -> Vec<Arc<Core>> {
        lock(&self.rooms)
            .values()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// `room`'s state, if it is in memory.
    fn open_core(&self, room: &str) -> Option<Arc<Core>> {
        lock(&self.rooms).get(room).and_then(Weak::upgrade)
    }

    /// Gives `record` its offset in `core`'s room and hands it to the writer; the
    /// answer comes once it is flushed. A presence record is answered at once: no
    /// one waits on it.
    fn append(
        &self,
        core: &Arc<Core>,
        record: &Record<'_>,
        line: Option<(&str, u64)>,
        presence: bool,
    ) -> Appending {
        let classic = record.classic();
        let Ok(json) = serde_json::to_string(record) else {
            return Appending::Done(Err(Unavailable::Refused));
        };
        let mut state = lock(&core.state);
        if let Some((client_id, id)) = line
            && let Some(repeat) = repeat_of(state.room.accepted.get(client_id).copied(), id)
        {
            return match repeat.offset {
                // Its first copy is still on the way: answered once it is flushed.
                Some(offset) if offset > state.room.log.head() => {
                    let mut durable = core.durable.subscribe();
                    drop(state);
                    Appending::Later(Box::pin(async move {
                        let _ = durable.wait_for(|flushed| *flushed >= offset).await;
                        Ok(repeat)
                    }))
                }
                _ => Appending::Done(Ok(repeat)),
            };
        }
        if self.waiting.load(Ordering::Relaxed) >= self.bounds.waiting {
            return Appending::Done(Err(Unavailable::Refused));
        }
        let offset = state.given + 1;
        let entry = record.encode_with(classic, &core.name, core.epoch, offset);
        let (done, answer) = match presence {
            true => (None, None),
            false => {
                let (done, answer) = oneshot::channel();
                (Some(done), Some(answer))
            }
        };
        // Sent under the room's lock, so that the writer has the room's entries in
        // offset order.
        let job = Job::Append(Append {
            core: Arc::clone(core),
            entry,
            record: json,
            at: db::now(),
            line: line.map(|(client_id, id)| (client_id.into(), id)),
            done,
        });
        self.waiting.fetch_add(1, Ordering::Relaxed);
        if self.jobs.send(job).is_err() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Appending::Done(Err(Unavailable::Refused));
        }
        state.given = offset;
        if let Some((client_id, id)) = line {
            state.room.remember(client_id, id, offset);
        }
        drop(state);
        let published = Published {
            offset: Some(offset),
            duplicate: false,
        };
        match answer {
            None => Appending::Done(Ok(published)),
            Some(answer) => Appending::Later(Box::pin(async move {
                match answer.await {
                    Ok(published) => Ok(published),
                    // The store is gone (the server is stopping) before the line
                    // was flushed: it is not acknowledged, so the client sends it
                    // again to the next server.
                    Err(_) => std::future::pending().await,
                }
            })),
        }
    }
}

impl Core {
    /// `entry` is flushed: it joins the room's log in memory (reads, history and a
    /// room opened again find it there) and may be answered as a repeat.
    fn keep(&self, entry: &super::Entry) {
        lock(&self.state).room.log.push(entry.clone());
        self.durable.send_replace(entry.offset);
    }

    /// `entry`, kept, goes to the room's fan-out, under the room's lock, so in
    /// offset order. A fan-out that began following the log after the entry was
    /// kept has it already (its joiner's replay reads it): it passes over it.
    fn deliver(&self, entry: &super::Entry) {
        let state = lock(&self.state);
        if let Some(fanout) = &state.fanout {
            fanout.take(entry);
        }
    }
}

/// A room open here, as the hub holds it.
struct DiskRoom {
    /// Its state; an error when it could not be read back (then nothing is logged
    /// in it, and nothing read: a log begun again would overwrite the disk's).
    core: Result<Arc<Core>, rusqlite::Error>,
    shared: Arc<Shared>,
    fanout: Arc<dyn Fanout>,
}

impl fmt::Debug for DiskRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.core.as_ref().map(|c| c.name.as_str());
        f.debug_struct("DiskRoom")
            .field("room", &name)
            .finish_non_exhaustive()
    }
}

impl RoomLog for DiskRoom {
    fn append(
        &self,
        record: &Record<'_>,
        line: Option<(&str, u64)>,
        presence: Option<Presence<'_>>,
    ) -> Appending {
        match &self.core {
            Ok(core) => self.shared.append(core, record, line, presence.is_some()),
            Err(_) => Appending::Done(Err(Unavailable::Refused)),
        }
    }

    fn head(&self) -> Later<Head> {
        let head = self
            .core
            .as_ref()
            .map_err(|_| Unavailable::Refused)
            .map(|core| {
                let state = lock(&core.state);
                let head = state.room.log.where_it_stands();
                self.fanout.baseline(head.epoch, head.head);
                head
            });
        Box::pin(std::future::ready(head))
    }

    fn read(&self, after: u64, limit: usize, format: Format) -> Later<CatchUp> {
        let read = self
            .core
            .as_ref()
            .map_err(|_| Unavailable::Refused)
            .map(|core| lock(&core.state).room.log.catch_up(after, limit, format));
        Box::pin(std::future::ready(read))
    }

    fn members(&self) -> Later<Option<Vec<String>>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    fn list(&self, _change: Presence<'_>) -> Option<Later<()>> {
        None
    }

    fn close(&self, _last: Option<Presence<'_>>, _notice: bool) {
        if let Ok(core) = &self.core {
            let mut state = lock(&core.state);
            // A room of the same name opened since has its own fan-out.
            if state
                .fanout
                .as_ref()
                .is_some_and(|f| std::ptr::addr_eq(Arc::as_ptr(f), Arc::as_ptr(&self.fanout)))
            {
                state.fanout = None;
            }
        }
    }

    fn bytes(&self) -> usize {
        self.core
            .as_ref()
            .map_or(0, |core| lock(&core.state).room.log.bytes())
    }
}

/// A disk store in a directory of its own, for the shared suite.
#[cfg(test)]
pub(in crate::store) async fn subject(bounds: super::suite::Bounds) -> super::suite::Subject {
    let dir = super::suite::TempDir::new().expect("a directory");
    let store = DiskStore::open(dir.path(), test_bounds(bounds)).expect("a new data directory");
    super::suite::Subject {
        store: Arc::new(store),
        _keep: Some(super::suite::Keep::Dir(dir)),
    }
}

#[cfg(test)]
fn test_bounds(bounds: super::suite::Bounds) -> DiskBounds {
    DiskBounds {
        entries: bounds.entries,
        bytes: bounds.bytes,
        retention: None,
        rooms: 1000,
        waiting: 10_000,
    }
}

#[cfg(test)]
mod tests;

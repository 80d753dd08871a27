//! The writer thread: it owns the database's write connection and commits every
//! append in the order the rooms gave them out. What gathered while it flushed goes
//! in the next commit (group commit: one flush for many lines). Only after a commit
//! returns does each line reach its room's fan-out and its sender's ack. When a
//! commit fails (a full disk, an I/O error), it keeps the lines and tries again,
//! after a pause that grows to a second, until it succeeds; meanwhile members are
//! told once, and `/healthz` says degraded. Between commits it trims the rooms'
//! logs to their bounds and drops what `--retention` expired.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{Core, Shared, db};
use crate::protocol::classic;
use crate::protocol::structured::NoticeKind;
use crate::store::{Entry, Published, lock};

/// Most appends in one commit: past it, the rest wait for the next.
const MAX_COMMIT: usize = 4096;
/// The first pause after a failed commit; it doubles up to [`MAX_RETRY_PAUSE`].
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// The longest pause between two tries of a failed commit.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How often the logs are trimmed to their bounds on disk.
const TRIM_EVERY: Duration = Duration::from_secs(1);
/// How often expired entries and rooms beyond the bound are looked for.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// What the writer is given to do.
pub(super) enum Job {
    /// A room's log began (a room new to the data directory): keep its epoch.
    Begin(Arc<Core>),
    /// Keep an entry, then hand it over.
    Append(Append),
    /// Commit what came before, and stop: the store is gone.
    Stop,
}

/// An entry on its way to the disk.
pub(super) struct Append {
    /// Its room.
    pub(super) core: Arc<Core>,
    /// The entry, in both wire formats, for the fan-out.
    pub(super) entry: Entry,
    /// Its record as the database keeps it (JSON).
    pub(super) record: String,
    /// When it was logged, in seconds since the Unix epoch.
    pub(super) at: i64,
    /// The client id and line id it was sent with.
    pub(super) line: Option<(Box<str>, u64)>,
    /// Its sender, waiting for the answer (none for presence).
    pub(super) done: Option<oneshot::Sender<Published>>,
}

/// Runs the writer until the store is dropped.
pub(super) fn run(mut conn: Connection, shared: &Arc<Shared>, jobs: &Receiver<Job>) {
    let mut batch = Vec::new();
    let mut trimmed = Instant::now();
    let mut expired = Instant::now();
    loop {
        let mut stop = false;
        match jobs.recv_timeout(TRIM_EVERY) {
            Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => stop = true,
            Ok(job) => batch.push(job),
            Err(RecvTimeoutError::Timeout) => {}
        }
        while !stop && batch.len() < MAX_COMMIT {
            match jobs.try_recv() {
                Ok(Job::Stop) => stop = true,
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            commit(&mut conn, shared, &mut batch);
        } else if shared.failing.load(Ordering::Relaxed) {
            // Failing with nothing to commit (an upkeep write failed in a quiet
            // server): a write of our own says when the disk takes writes again.
            match db::probe(&conn) {
                Ok(()) => shared.came_back(),
                Err(e) => shared.went_down(&e.to_string()),
            }
        }
        if stop {
            return;
        }
        if trimmed.elapsed() >= TRIM_EVERY {
            trimmed = Instant::now();
            trim(&mut conn, shared);
        }
        if expired.elapsed() >= EXPIRE_EVERY {
            expired = Instant::now();
            expire(&mut conn, shared);
        }
    }
}

/// Commits `batch`, trying until it succeeds, then hands each entry over in order.
fn commit(conn: &mut Connection, shared: &Shared, batch: &mut Vec<Job>) {
    let mut pause = RETRY_PAUSE;
    loop {
        let writes: Vec<db::Write<'_>> = batch
            .iter()
            .filter_map(|job| match job {
                Job::Begin(core) => Some(db::Write::Begin {
                    room: &core.name,
                    epoch: core.epoch,
                }),
                Job::Append(append) => Some(db::Write::Entry {
                    room: &append.core.name,
                    epoch: append.core.epoch,
                    offset: append.entry.offset,
                    at: append.at,
                    record: &append.record,
                    line: append.line.as_ref().map(|(client, id)| (&**client, *id)),
                }),
                Job::Stop => None,
            })
            .collect();
        let began = Instant::now();
        match db::commit(conn, &writes) {
            Ok(()) => {
                let took = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
                shared.flush_nanos.fetch_add(took, Ordering::Relaxed);
                break;
            }
            Err(e) => {
                shared.went_down(&e.to_string());
                std::thread::sleep(pause);
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
        }
    }
    shared.came_back();
    let lines = batch.iter().filter(|j| matches!(j, Job::Append(_))).count();
    shared.flushes.fetch_add(1, Ordering::Relaxed);
    shared.lines.fetch_add(lines as u64, Ordering::Relaxed);
    // Each entry joins its room's log in memory first, so that a sender answered
    // next finds its line there (a read, a room opened again). Then the senders
    // are woken, before the room's members are, so that each sender's session
    // writes its own copy (and ack) at once and its client sends on while the
    // members' sessions write; woken after them, it would wait behind every
    // member's write. Then the fan-out, in offset order, before those sessions run.
    let mut flushed = Vec::with_capacity(batch.len());
    for job in batch.drain(..) {
        if let Job::Append(append) = job {
            shared.waiting.fetch_sub(1, Ordering::Relaxed);
            append.core.keep(&append.entry);
            flushed.push(append);
        }
    }
    for append in &mut flushed {
        if let Some(done) = append.done.take() {
            // A sender that went away needs no answer.
            let _ = done.send(Published {
                offset: Some(append.entry.offset),
                duplicate: false,
            });
        }
    }
    for append in flushed {
        append.core.deliver(&append.entry);
    }
}

/// Drops from disk what each open room's log no longer holds (its bounds).
fn trim(conn: &mut Connection, shared: &Shared) {
    for core in shared.open_cores() {
        let first = lock(&core.state).room.log.first();
        let done = *lock(&core.trimmed);
        if first > done {
            match db::trim(conn, &core.name, first) {
                Ok(dropped) => {
                    *lock(&core.trimmed) = first;
                    // It wrote: after a failed trim (a quiet room, so no commit to
                    // say so), the disk takes writes again.
                    if dropped > 0 {
                        shared.came_back();
                    }
                }
                Err(e) => shared.went_down(&e.to_string()),
            }
        }
    }
}

/// Drops entries older than `--retention`, and rooms beyond `--max-stored-rooms`.
fn expire(conn: &mut Connection, shared: &Shared) {
    if let Some(retention) = shared.bounds.retention {
        let age = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
        match db::expire(conn, db::now().saturating_sub(age)) {
            Ok(expired) => {
                if !expired.is_empty() {
                    shared.came_back();
                }
                for (room, first) in expired {
                    if let Some(core) = shared.open_core(&room) {
                        lock(&core.state).room.log.drop_before(first);
                    }
                }
            }
            Err(e) => shared.went_down(&e.to_string()),
        }
    }
    let open: Vec<String> = shared.open_cores().iter().map(|c| c.name.clone()).collect();
    match db::forget_rooms(conn, shared.bounds.rooms, &open) {
        Ok(0) => {}
        Ok(forgotten) => {
            shared.came_back();
            info!(
                forgotten,
                kept = shared.bounds.rooms,
                "forgot the rooms written longest ago (--max-stored-rooms)"
            );
        }
        Err(e) => shared.went_down(&e.to_string()),
    }
}

impl Shared {
    /// Notes a failed write: logged and told to every open room once per outage.
    fn went_down(&self, why: &str) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            warn!(
                error = %why,
                "cannot write to the data directory: lines are held, undelivered and unacknowledged, until it can"
            );
            self.notify_all(NoticeKind::Delayed, classic::DELAYED_NOTICE);
        }
    }

    /// Tells every open room's members `text`.
    fn notify_all(&self, kind: NoticeKind, text: &str) {
        for core in self.open_cores() {
            let fanout = lock(&core.state).fanout.clone();
            if let Some(fanout) = fanout {
                fanout.notify(kind, text);
            }
        }
    }

    /// Notes a write that succeeded: after a failed one, logged and told.
    fn came_back(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            info!("the data directory takes writes again: held lines follow");
            self.notify_all(NoticeKind::Restored, classic::STORED_NOTICE);
        }
    }
}

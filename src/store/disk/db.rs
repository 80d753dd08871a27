//! The data directory's database: SQLite (through `rusqlite`, built in), in WAL mode
//! with `synchronous=FULL`, so that a commit returns only once the write-ahead log
//! is flushed (`fsync`). Three tables:
//!
//! - `rooms`: each room's epoch, last offset (`head`) and when it was last written;
//! - `entries`: each room's logged records (the [`Record`] as JSON), by offset, with
//!   the time they were logged (for `--retention`);
//! - `lines`: the last line id logged under each client id in each room, with its
//!   offset (the repeated-id rule).
//!
//! The file says it is ours in its header (`application_id`) and which layout it
//! has (`user_version`): a file of another program, or of a later layout, is refused.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::DataDirError;
use crate::protocol::Epoch;
use crate::store::Record;

/// The database's file in the data directory.
pub(super) const FILE: &str = "chat.sqlite3";
/// The lock a running server holds on its data directory.
pub(super) const LOCK: &str = "lock";
/// What SQLite keeps beside the database in WAL mode.
const BESIDE: [&str; 2] = ["chat.sqlite3-wal", "chat.sqlite3-shm"];
/// `PRAGMA application_id`: "chat" in ASCII, so that `file(1)` and we can tell.
const APPLICATION_ID: i64 = 0x6368_6174;
/// `PRAGMA user_version`: the layout of the tables. A server refuses a later one.
pub(super) const VERSION: i64 = 1;

const SCHEMA: &str = "
    CREATE TABLE rooms (
        name TEXT PRIMARY KEY,
        epoch INTEGER NOT NULL,
        head INTEGER NOT NULL,
        touched INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE entries (
        room TEXT NOT NULL,
        offset INTEGER NOT NULL,
        at INTEGER NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (room, offset)
    ) WITHOUT ROWID;
    CREATE TABLE lines (
        room TEXT NOT NULL,
        client TEXT NOT NULL,
        id INTEGER NOT NULL,
        offset INTEGER NOT NULL,
        PRIMARY KEY (room, client)
    ) WITHOUT ROWID;
";

/// Seconds since the Unix epoch, as the `at` and `touched` columns keep time.
pub(super) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// SQLite keeps integers signed: an epoch (random 64 bits) is kept as its bits.
#[allow(clippy::cast_possible_wrap)]
fn epoch_to_sql(epoch: Epoch) -> i64 {
    epoch.0 as i64
}

#[allow(clippy::cast_sign_loss)]
fn epoch_from_sql(bits: i64) -> Epoch {
    Epoch(bits as u64)
}

/// Offsets and ids fit in SQLite's signed integers for any log that can be written.
fn to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_sql(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Checks that `dir` is a data directory of ours, or makes one, and takes its lock.
/// Returns the lock (held while the file is open) and the database's path.
pub(super) fn claim(dir: &Path) -> Result<(File, PathBuf), DataDirError> {
    let refuse = |reason: String| DataDirError {
        dir: dir.to_owned(),
        reason,
    };
    fs::create_dir_all(dir).map_err(|e| refuse(format!("cannot create it: {e}")))?;
    let listing = fs::read_dir(dir).map_err(|e| refuse(format!("cannot read it: {e}")))?;
    let mut names = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| refuse(format!("cannot read it: {e}")))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    let ours = |name: &String| name == FILE || name == LOCK || BESIDE.contains(&name.as_str());
    if let Some(stranger) = names.iter().find(|name| !ours(name)) {
        return Err(refuse(format!(
            "it holds {stranger:?}, which is not a broadcast-chat file: give an empty or new directory"
        )));
    }
    if !names.iter().any(|name| name == FILE) && names.iter().any(|n| BESIDE.contains(&n.as_str()))
    {
        return Err(refuse(format!(
            "it has SQLite's side files without {FILE}: restore the whole directory, or empty it"
        )));
    }
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK))
        .map_err(|e| refuse(format!("cannot open its lock file: {e}")))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(refuse(
                "another server is using it (its lock file is held): one server per data directory"
                    .to_owned(),
            ));
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(refuse(format!("cannot lock it: {e}")));
        }
    }
    Ok((lock, dir.join(FILE)))
}

/// Opens the database at `path` for writing, making its tables if it is new, and
/// checks that it is ours and of a layout this server knows.
pub(super) fn open_writer(path: &Path) -> Result<Connection, String> {
    let conn = Connection::open(path).map_err(|e| e.to_string())?;
    // Checked before anything is set: another program's file is left as it was.
    let new = match check(&conn) {
        Ok(()) => false,
        Err(reason) if reason == NEW => true,
        Err(reason) => return Err(reason),
    };
    // WAL: readers (room loads) never wait for the writer. FULL: a commit is on
    // disk when it returns. journal_size_limit 0: the log file is cut back when it
    // starts over, so that its length tells where its last whole write ends.
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
        .map_err(|e| describe(&e))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| e.to_string())?;
    conn.pragma_update(None, "journal_size_limit", 0)
        .map_err(|e| e.to_string())?;
    if new {
        conn.execute_batch(&format!(
            "BEGIN; {SCHEMA} PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {VERSION}; COMMIT;"
        ))
        .map_err(|e| e.to_string())?;
    }
    Ok(conn)
}

/// What [`check`] says of an empty database: one to make the tables in.
const NEW: &str = "a new database";

/// Checks that the database `conn` is ours, of a layout this server knows; an
/// empty one is [`NEW`].
pub(super) fn check(conn: &Connection) -> Result<(), String> {
    let application: i64 = conn
        .pragma_query_value(None, "application_id", |row| row.get(0))
        .map_err(|e| describe(&e))?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| e.to_string())?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
        .map_err(|e| e.to_string())?;
    match (application, version) {
        (0, 0) if tables == 0 => Err(NEW.to_owned()),
        (APPLICATION_ID, VERSION) => Ok(()),
        (APPLICATION_ID, later) => Err(format!(
            "its format is version {later}, and this server knows version {VERSION}: run the server that wrote it, or a newer one"
        )),
        _ => Err(format!(
            "{FILE} is an SQLite database of another program: give an empty or new directory"
        )),
    }
}

/// Opens a second connection for reading rooms back.
pub(super) fn open_reader(path: &Path) -> Result<Connection, String> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    Connection::open_with_flags(path, flags).map_err(|e| e.to_string())
}

/// SQLite's error, said for people ("file is not a database" is what a stranger's
/// file gives).
fn describe(error: &rusqlite::Error) -> String {
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => {
            format!("{FILE} is not a broadcast-chat database (not SQLite at all)")
        }
        _ => error.to_string(),
    }
}

/// How many bytes at the end of the write-ahead log of length `before` (as it was
/// before the database was opened) SQLite left out when it read the log back: the
/// part of a write that a crash cut short. 0 when the log ended on a whole write.
pub(super) fn cut_short(conn: &Connection, before: u64) -> rusqlite::Result<u64> {
    if before == 0 {
        return Ok(0);
    }
    // A passive checkpoint reports how many frames the log holds once read back.
    let frames: i64 = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))?;
    let page: i64 = conn.pragma_query_value(None, "page_size", |row| row.get(0))?;
    // The log: a 32-byte header, then frames of a 24-byte header and a page each.
    let whole = if frames > 0 {
        32 + from_sql(frames) * (from_sql(page) + 24)
    } else {
        32
    };
    Ok(before.saturating_sub(whole))
}

/// A room as the database has it.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    /// Its epoch and last offset, if it is in the database.
    pub(super) room: Option<(Epoch, u64)>,
    /// Its last entries, oldest first: offset and record.
    pub(super) entries: Vec<(u64, Record<'static>)>,
    /// The last line id under each client id, with its offset.
    pub(super) lines: Vec<(Box<str>, u64, u64)>,
}

/// Reads `room` back: its epoch and head, up to `limit` of its last entries logged
/// at or after `since` (seconds), and its client ids' last lines from `first` on.
pub(super) fn load(
    conn: &Connection,
    room: &str,
    limit: usize,
    since: i64,
) -> rusqlite::Result<Loaded> {
    let found = conn
        .prepare_cached("SELECT epoch, head FROM rooms WHERE name = ?1")?
        .query_row([room], |row| {
            Ok((epoch_from_sql(row.get(0)?), from_sql(row.get(1)?)))
        })
        .optional()?;
    let Some((epoch, head)) = found else {
        return Ok(Loaded::default());
    };
    let mut entries = Vec::new();
    let mut newest = conn.prepare_cached(
        "SELECT offset, record FROM entries WHERE room = ?1 AND offset <= ?2 AND at >= ?3
         ORDER BY offset DESC LIMIT ?4",
    )?;
    let rows = newest.query_map(
        params![room, to_sql(head), since, to_sql(limit as u64)],
        |row| Ok((from_sql(row.get(0)?), row.get::<_, String>(1)?)),
    )?;
    for row in rows {
        let (offset, json) = row?;
        // A record this server cannot read ends what it reads back: the log it
        // keeps must be consecutive.
        let Ok(record) = serde_json::from_str::<Record<'_>>(&json) else {
            break;
        };
        if entries
            .last()
            .is_some_and(|(after, _): &(u64, _)| *after != offset + 1)
        {
            break;
        }
        entries.push((offset, record.owned()));
    }
    entries.reverse();
    if entries.last().is_some_and(|(offset, _)| *offset != head) {
        // The newest are missing: nothing older can be served consecutively.
        entries.clear();
    }
    let first = entries.first().map_or(head + 1, |(offset, _)| *offset);
    let lines = conn
        .prepare_cached("SELECT client, id, offset FROM lines WHERE room = ?1 AND offset >= ?2")?
        .query_map(params![room, to_sql(first)], |row| {
            Ok((
                row.get::<_, String>(0)?.into_boxed_str(),
                from_sql(row.get(1)?),
                from_sql(row.get(2)?),
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Loaded {
        room: Some((epoch, head)),
        entries,
        lines,
    })
}

/// What a commit writes.
pub(super) enum Write<'a> {
    /// A room's log began: its epoch.
    Begin { room: &'a str, epoch: Epoch },
    /// An entry, and the line id it was sent with.
    Entry {
        room: &'a str,
        epoch: Epoch,
        offset: u64,
        at: i64,
        record: &'a str,
        line: Option<(&'a str, u64)>,
    },
}

/// Writes `writes` in one transaction, flushed when this returns `Ok`.
pub(super) fn commit(conn: &mut Connection, writes: &[Write<'_>]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let now = now();
    {
        let mut room_row = tx.prepare_cached(
            "INSERT INTO rooms (name, epoch, head, touched) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET head = max(head, excluded.head), touched = excluded.touched",
        )?;
        let mut entry = tx.prepare_cached(
            "INSERT OR REPLACE INTO entries (room, offset, at, record) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut line = tx.prepare_cached(
            "INSERT INTO lines (room, client, id, offset) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (room, client) DO UPDATE SET id = excluded.id, offset = excluded.offset",
        )?;
        for (i, write) in writes.iter().enumerate() {
            match *write {
                Write::Begin { room, epoch } => {
                    room_row.execute(params![room, epoch_to_sql(epoch), 0, now])?;
                }
                Write::Entry {
                    room,
                    epoch,
                    offset,
                    at,
                    record,
                    line: id,
                } => {
                    entry.execute(params![room, to_sql(offset), at, record])?;
                    if let Some((client, id)) = id {
                        line.execute(params![room, client, to_sql(id), to_sql(offset)])?;
                    }
                    // The room's head once, after its last entry in this commit.
                    let later = writes[i + 1..]
                        .iter()
                        .any(|w| matches!(w, Write::Entry { room: r, .. } if *r == room));
                    if !later {
                        room_row.execute(params![
                            room,
                            epoch_to_sql(epoch),
                            to_sql(offset),
                            now
                        ])?;
                    }
                }
            }
        }
    }
    tx.commit()
}

/// A write that changes nothing (the layout's version, written again), to learn
/// whether the database takes writes.
pub(super) fn probe(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "user_version", VERSION)
}

/// Drops `room`'s entries below `first`, and the line ids of clients whose last
/// line is among them; returns how many rows went (none: nothing was written).
pub(super) fn trim(conn: &mut Connection, room: &str, first: u64) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    let entries = tx
        .prepare_cached("DELETE FROM entries WHERE room = ?1 AND offset < ?2")?
        .execute(params![room, to_sql(first)])?;
    let lines = tx
        .prepare_cached("DELETE FROM lines WHERE room = ?1 AND offset < ?2")?
        .execute(params![room, to_sql(first)])?;
    tx.commit()?;
    Ok(entries + lines)
}

/// Drops every entry logged before `cutoff` (seconds), in every room; returns the
/// rooms that lost some, each with its oldest offset kept now.
pub(super) fn expire(conn: &mut Connection, cutoff: i64) -> rusqlite::Result<Vec<(String, u64)>> {
    let tx = conn.transaction()?;
    let mut expired = Vec::new();
    {
        let rooms: Vec<(String, u64)> = tx
            .prepare_cached("SELECT name, head FROM rooms")?
            .query_map([], |row| Ok((row.get(0)?, from_sql(row.get(1)?))))?
            .collect::<rusqlite::Result<_>>()?;
        // Per room, from its oldest entry on: what is expired is all that is read.
        let mut oldest = tx.prepare_cached(
            "SELECT offset, at FROM entries WHERE room = ?1 AND offset >= ?2 ORDER BY offset LIMIT 1",
        )?;
        let mut kept_from = tx.prepare_cached(
            "SELECT offset FROM entries WHERE room = ?1 AND at >= ?2 ORDER BY offset LIMIT 1",
        )?;
        for (room, head) in rooms {
            let Some((_, at)) = oldest
                .query_row(params![room, 0], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))
                })
                .optional()?
            else {
                continue;
            };
            if at >= cutoff {
                continue;
            }
            let first = kept_from
                .query_row(params![room, cutoff], |row| row.get::<_, i64>(0))
                .optional()?
                .map_or(head + 1, from_sql);
            expired.push((room, first));
        }
    }
    for (room, first) in &expired {
        tx.prepare_cached("DELETE FROM entries WHERE room = ?1 AND offset < ?2")?
            .execute(params![room, to_sql(*first)])?;
        tx.prepare_cached("DELETE FROM lines WHERE room = ?1 AND offset < ?2")?
            .execute(params![room, to_sql(*first)])?;
    }
    tx.commit()?;
    Ok(expired)
}

/// Forgets the rooms written longest ago beyond `keep` rooms, other than `open`
/// ones; returns how many it forgot.
pub(super) fn forget_rooms(
    conn: &mut Connection,
    keep: usize,
    open: &[String],
) -> rusqlite::Result<usize> {
    let count: i64 = conn.query_row("SELECT count(*) FROM rooms", [], |row| row.get(0))?;
    let over = from_sql(count).saturating_sub(keep as u64);
    if over == 0 {
        return Ok(0);
    }
    let tx = conn.transaction()?;
    let oldest: Vec<String> = tx
        .prepare_cached("SELECT name FROM rooms ORDER BY touched, name")?
        .query_map([], |row| row.get(0))?
        .filter_map(Result::ok)
        .filter(|name: &String| !open.contains(name))
        .take(usize::try_from(over).unwrap_or(usize::MAX))
        .collect();
    for room in &oldest {
        tx.prepare_cached("DELETE FROM entries WHERE room = ?1")?
            .execute([room])?;
        tx.prepare_cached("DELETE FROM lines WHERE room = ?1")?
            .execute([room])?;
        tx.prepare_cached("DELETE FROM rooms WHERE name = ?1")?
            .execute([room])?;
    }
    tx.commit()?;
    Ok(oldest.len())
}

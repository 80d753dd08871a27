//! `server backup`: a consistent copy of a data directory's database, taken while
//! the server runs (SQLite's online backup reads a snapshot; the server goes on
//! writing meanwhile). Restoring is putting the copy, named `chat.sqlite3`, in an
//! empty directory and starting a server there.

use std::path::Path;
use std::time::Duration;

use rusqlite::backup::Backup;
use rusqlite::{Connection, OpenFlags};

use super::db;
use crate::Error;

/// Pages copied per step; between steps the server may write.
const PAGES_PER_STEP: std::ffi::c_int = 1024;
/// The pause between steps, so that a big copy does not hold the server's writer up.
const PAUSE: Duration = Duration::from_millis(2);

/// What a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackedUp {
    /// Rooms in the copy.
    pub rooms: u64,
    /// Entries (messages, joins, leaves) in the copy.
    pub entries: u64,
    /// The copy's size in bytes.
    pub bytes: u64,
}

/// Copies the database of the data directory `dir` to the new file `to`.
///
/// # Errors
/// [`Error::DataDir`] when `dir` holds no database of ours, `to` exists already,
/// or the copy cannot be read or written.
pub fn backup(dir: &Path, to: &Path) -> Result<BackedUp, Error> {
    let fail = |what: String| Error::DataDir(format!("cannot back up {}: {what}", dir.display()));
    let from = dir.join(db::FILE);
    if !from.is_file() {
        return Err(fail(format!(
            "it holds no {}: is it a data directory?",
            db::FILE
        )));
    }
    if to.exists() {
        return Err(fail(format!(
            "{} exists already: give a new file",
            to.display()
        )));
    }
    let source = Connection::open_with_flags(&from, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| fail(e.to_string()))?;
    db::check(&source).map_err(fail)?;
    let mut copy = Connection::open(to).map_err(|e| fail(format!("{}: {e}", to.display())))?;
    Backup::new(&source, &mut copy)
        .and_then(|backup| backup.run_to_completion(PAGES_PER_STEP, PAUSE, None))
        .map_err(|e| fail(e.to_string()))?;
    let count = |table: &str| -> Result<u64, Error> {
        copy.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
            row.get::<_, i64>(0)
        })
        .map(|n| u64::try_from(n).unwrap_or(0))
        .map_err(|e| fail(e.to_string()))
    };
    let (rooms, entries) = (count("rooms")?, count("entries")?);
    drop(copy);
    let bytes = std::fs::metadata(to).map_or(0, |m| m.len());
    Ok(BackedUp {
        rooms,
        entries,
        bytes,
    })
}

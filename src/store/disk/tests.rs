//! What only the disk store promises: what it acknowledged is there after it is
//! opened again (a restart), and the data directory is checked and locked.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::store::suite::{self, Bounds, Subject, TempDir};

const BOUNDS: Bounds = Bounds {
    entries: 100,
    bytes: usize::MAX,
};

fn store(dir: &Path) -> Subject {
    let store = DiskStore::open(dir, test_bounds(BOUNDS)).expect("the data directory opens");
    Subject {
        store: Arc::new(store),
        _keep: None,
    }
}

#[tokio::test]
async fn a_store_opened_again_has_every_room_as_it_was() {
    let dir = TempDir::new().expect("a directory");
    let (epoch, other_epoch) = {
        let subject = store(dir.path());
        let (log, _) = suite::open(&subject, "r").await;
        for id in 1..=5 {
            suite::append(&*log, &format!("line {id}"), Some(("s", id)))
                .await
                .expect("append");
        }
        let (other, _) = suite::open(&subject, "other").await;
        suite::append(&*other, "x", None).await.expect("append");
        let epoch = log.head().await.expect("head").epoch;
        (epoch, other.head().await.expect("head").epoch)
    };
    let subject = store(dir.path());
    let (log, recorder) = suite::open(&subject, "r").await;
    let head = log.head().await.expect("head");
    assert_eq!((head.epoch, head.head, head.first), (epoch, 5, 1));
    let read = log.read(0, 10, Format::Classic).await.expect("read");
    let texts: Vec<_> = read
        .deliveries
        .iter()
        .map(|d| d.message.as_text().expect("text").to_owned())
        .collect();
    assert_eq!(
        texts,
        (1..=5)
            .map(|id| format!("alice: \"line {id}\""))
            .collect::<Vec<_>>()
    );
    // The repeated-id rule survived: the last line again is a duplicate with its
    // offset, an older one without, the next one is new.
    let again = suite::append(&*log, "line 5", Some(("s", 5))).await;
    assert_eq!(
        again,
        Ok(Published {
            offset: Some(5),
            duplicate: true
        })
    );
    let older = suite::append(&*log, "line 2", Some(("s", 2))).await;
    assert_eq!(older.map(|p| (p.offset, p.duplicate)), Ok((None, true)));
    let next = suite::append(&*log, "line 6", Some(("s", 6))).await;
    assert_eq!(next.map(|p| p.offset), Ok(Some(6)));
    assert_eq!(
        recorder.offsets(1).await,
        [6],
        "only the new line is handed over"
    );
    let (other, _) = suite::open(&subject, "other").await;
    let head = other.head().await.expect("head");
    assert_eq!((head.epoch, head.head), (other_epoch, 1));
}

#[tokio::test]
async fn a_room_that_empties_and_fills_again_keeps_its_epoch_and_log() {
    let dir = TempDir::new().expect("a directory");
    let subject = store(dir.path());
    let (log, recorder) = suite::open(&subject, "r").await;
    let epoch = log.head().await.expect("head").epoch;
    // Asked without waiting: the room closes with its lines still on the way.
    let asked: Vec<_> = (0..50)
        .map(|_| log.append(&Record::chat(1, "alice", "x"), None, None))
        .collect();
    log.close(None, false);
    drop(log);
    let (again, reopened) = suite::open(&subject, "r").await;
    for (offset, appending) in (1..).zip(asked) {
        let Appending::Later(later) = appending else {
            panic!("a line is answered once flushed");
        };
        assert_eq!(later.await.map(|p| p.offset), Ok(Some(offset)));
    }
    let appended = suite::append(&*again, "y", None).await;
    assert_eq!(
        appended.map(|p| p.offset),
        Ok(Some(51)),
        "after what it gave out"
    );
    let head = again.head().await.expect("head");
    assert_eq!((head.epoch, head.head, head.first), (epoch, 51, 1));
    let new = reopened.until(51).await;
    assert_eq!(
        new.last().map(|e| e.offset),
        Some(51),
        "the room open now gets it"
    );
    let old = recorder.wait(0).await;
    assert!(
        old.iter().all(|e| e.offset <= 50),
        "the closed room's fan-out gets no more"
    );
}

#[test]
fn a_second_store_on_the_same_directory_is_refused_while_the_first_runs() {
    let dir = TempDir::new().expect("a directory");
    let first = DiskStore::open(dir.path(), test_bounds(BOUNDS)).expect("the first opens");
    let second = DiskStore::open(dir.path(), test_bounds(BOUNDS)).expect_err("refused");
    assert!(
        second.reason.contains("another server is using it"),
        "{second}"
    );
    drop(first);
    DiskStore::open(dir.path(), test_bounds(BOUNDS)).expect("free again");
}

#[test]
fn a_directory_that_is_not_ours_is_refused() {
    let dir = TempDir::new().expect("a directory");
    std::fs::write(dir.path().join("notes.txt"), "mine").expect("write");
    let refused = DiskStore::open(dir.path(), test_bounds(BOUNDS)).expect_err("refused");
    assert!(refused.reason.contains("\"notes.txt\""), "{refused}");
    assert_eq!(refused.to_string().lines().count(), 1);

    let dir = TempDir::new().expect("a directory");
    std::fs::write(
        dir.path().join(db::FILE),
        "not a database at all, but long enough to be read as one",
    )
    .expect("write");
    let refused = DiskStore::open(dir.path(), test_bounds(BOUNDS)).expect_err("refused");
    assert!(
        refused.reason.contains("not a broadcast-chat database"),
        "{refused}"
    );

    let dir = TempDir::new().expect("a directory");
    let other = Connection::open(dir.path().join(db::FILE)).expect("sqlite");
    other.execute_batch("CREATE TABLE t (x)").expect("a table");
    drop(other);
    let refused = DiskStore::open(dir.path(), test_bounds(BOUNDS)).expect_err("refused");
    assert!(refused.reason.contains("another program"), "{refused}");
    assert!(!dir.path().join(db::LOCK).exists(), "nothing of ours left");
}

#[test]
fn a_later_format_version_is_refused() {
    let dir = TempDir::new().expect("a directory");
    drop(DiskStore::open(dir.path(), test_bounds(BOUNDS)).expect("a new one"));
    let conn = Connection::open(dir.path().join(db::FILE)).expect("sqlite");
    conn.pragma_update(None, "user_version", db::VERSION + 1)
        .expect("set the version");
    drop(conn);
    let refused = DiskStore::open(dir.path(), test_bounds(BOUNDS)).expect_err("refused");
    assert!(
        refused
            .reason
            .contains(&format!("version {}", db::VERSION + 1)),
        "{refused}"
    );
}

#[tokio::test]
async fn the_bounds_hold_on_disk_and_expired_entries_go() {
    let dir = TempDir::new().expect("a directory");
    {
        let subject = store(dir.path());
        let (log, _) = suite::open(&subject, "r").await;
        for _ in 0..250 {
            suite::append(&*log, "x", None).await.expect("append");
        }
        let head = log.head().await.expect("head");
        assert_eq!((head.head, head.first), (250, 151));
    }
    let mut conn = Connection::open(dir.path().join(db::FILE)).expect("sqlite");
    let stored = |conn: &Connection| -> i64 {
        conn.query_row("SELECT count(*) FROM entries", [], |row| row.get(0))
            .expect("count")
    };
    // Trimmed in the background, once a second: at most that second's lines more.
    assert!(stored(&conn) <= 250, "{}", stored(&conn));
    db::trim(&mut conn, "r", 151).expect("trim");
    assert_eq!(stored(&conn), 100);
    // Everything logged before a minute from now is expired.
    let expired = db::expire(&mut conn, db::now() + 60).expect("expire");
    assert_eq!(expired, [("r".to_owned(), 251)]);
    assert_eq!(stored(&conn), 0);
    drop(conn);
    let subject = store(dir.path());
    let (log, _) = suite::open(&subject, "r").await;
    let head = log.head().await.expect("head");
    assert_eq!((head.head, head.first), (250, 251), "the offsets go on");
}

#[test]
fn rooms_beyond_the_bound_go_oldest_first_but_not_open_ones() {
    let dir = TempDir::new().expect("a directory");
    drop(DiskStore::open(dir.path(), test_bounds(BOUNDS)).expect("a new one"));
    let mut conn = Connection::open(dir.path().join(db::FILE)).expect("sqlite");
    for (i, room) in ["a", "b", "c", "d"].into_iter().enumerate() {
        let writes = [db::Write::Begin {
            room,
            epoch: Epoch(1),
        }];
        db::commit(&mut conn, &writes).expect("commit");
        conn.execute(
            "UPDATE rooms SET touched = ?1 WHERE name = ?2",
            rusqlite::params![i as i64, room],
        )
        .expect("touch");
    }
    let forgotten = db::forget_rooms(&mut conn, 2, &["a".to_owned()]).expect("forget");
    assert_eq!(forgotten, 2);
    let kept: Vec<String> = conn
        .prepare("SELECT name FROM rooms ORDER BY name")
        .expect("select")
        .query_map([], |row| row.get(0))
        .expect("rows")
        .collect::<rusqlite::Result<_>>()
        .expect("names");
    assert_eq!(kept, ["a", "d"]);
}

//! The promises of [`Store`] (see the module's doc), checked the same way against
//! every store: each function here takes a [`Subject`], and [`stores!`] runs every
//! one against each store listed at the bottom. A new store is its file, with a
//! `subject` maker under `#[cfg(test)]`, and one line there.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{
    Appending, Entry, Fanout, Format, Intake, Presence, Published, Record, RoomLog, SenderId,
    Store, Unavailable, lock,
};
use crate::protocol::Epoch;
use crate::protocol::structured::NoticeKind;

/// How long a store may take to hand over what it logged (Redis publishes it).
const WAIT: Duration = Duration::from_secs(5);

/// The bounds every subject's logs are made with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// `--resume-window`: messages kept.
    pub(crate) entries: usize,
    /// `--resume-bytes`: bytes kept, where the store counts them.
    pub(crate) bytes: usize,
}

const BOUNDS: Bounds = Bounds {
    entries: 3,
    bytes: usize::MAX,
};

/// A store under test, and whatever it needs kept alive.
pub(crate) struct Subject {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) _keep: Option<Keep>,
}

/// What a store under test needs kept alive (never read: dropping it stops it).
#[expect(dead_code, reason = "kept alive, never read")]
pub(crate) enum Keep {
    /// Its `redis-server`.
    Redis(RedisServer),
    /// Its data directory, removed when dropped.
    Dir(TempDir),
}

pub(crate) use tempfile::TempDir;

/// A fan-out that keeps what it is handed, in order, as a hub following the log
/// from its start would deliver it: once each (what it has is passed over), and
/// saying where it is when asked to follow (a store catching it up reads from
/// there).
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    entries: Mutex<Vec<Entry>>,
    arrived: tokio::sync::Notify,
}

impl Fanout for Recorder {
    fn take(&self, entry: &Entry) -> Intake {
        let mut entries = lock(&self.entries);
        let had = entries
            .last()
            .is_some_and(|last| last.epoch == entry.epoch && last.offset >= entry.offset);
        if !had {
            entries.push(entry.clone());
            self.arrived.notify_waiters();
        }
        Intake::Done
    }

    fn baseline(&self, epoch: Epoch, head: u64) -> (Epoch, u64) {
        lock(&self.entries)
            .last()
            .map_or((epoch, head), |last| (last.epoch, last.offset))
    }

    fn skip_to(&self, _epoch: Epoch, _offset: u64) {}

    fn notify(&self, _kind: NoticeKind, _text: &str) {}

    fn members(&self) -> Vec<(SenderId, String)> {
        Vec::new()
    }
}

impl Recorder {
    /// The offsets handed over, once there are `count`, within [`WAIT`].
    pub(crate) async fn offsets(&self, count: usize) -> Vec<u64> {
        self.wait(count).await.iter().map(|e| e.offset).collect()
    }

    /// The entries handed over, once `offset` is among them, within [`WAIT`].
    pub(crate) async fn until(&self, offset: u64) -> Vec<Entry> {
        let waited = tokio::time::timeout(WAIT, async {
            loop {
                let arrived = self.arrived.notified();
                {
                    let entries = lock(&self.entries);
                    if entries.iter().any(|e| e.offset == offset) {
                        return entries.clone();
                    }
                }
                arrived.await;
            }
        });
        waited.await.expect("the store hands over what it logged")
    }

    /// The entries handed over, once there are `count`, within [`WAIT`].
    pub(crate) async fn wait(&self, count: usize) -> Vec<Entry> {
        let waited = tokio::time::timeout(WAIT, async {
            loop {
                let arrived = self.arrived.notified();
                {
                    let entries = lock(&self.entries);
                    if entries.len() >= count {
                        return entries.clone();
                    }
                }
                arrived.await;
            }
        });
        waited.await.expect("the store hands over what it logged")
    }
}

/// Opens `room` in `subject`'s store with a [`Recorder`], and reads where it
/// stands (which begins it) so that what follows is handed over.
pub(crate) async fn open(subject: &Subject, room: &str) -> (Arc<dyn RoomLog>, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let log = subject.store.open(room, Arc::clone(&recorder) as _);
    log.head().await.expect("head");
    (log, recorder)
}

/// Appends and waits for the answer.
pub(crate) async fn append(
    log: &dyn RoomLog,
    text: &str,
    line: Option<(&str, u64)>,
) -> Result<Published, Unavailable> {
    match log.append(&Record::chat(1, "alice", text), line, None) {
        Appending::Done(done) => done,
        Appending::Later(later) => later.await,
    }
}

fn logged(offset: u64) -> Result<Published, Unavailable> {
    Ok(Published {
        offset: Some(offset),
        duplicate: false,
    })
}

async fn read(log: &dyn RoomLog, after: u64, limit: usize) -> (u64, Vec<u64>) {
    let read = log.read(after, limit, Format::Classic).await.expect("read");
    (
        read.missed,
        read.deliveries.iter().map(|d| d.offset).collect(),
    )
}

pub(crate) async fn offsets_count_from_one_without_gaps(subject: Subject) {
    let (log, recorder) = open(&subject, "r").await;
    let before = log.head().await.expect("head");
    assert_eq!((before.head, before.first), (0, 1));
    // As many as the bounds keep.
    for offset in 1..=3 {
        assert_eq!(append(&*log, "x", None).await, logged(offset));
    }
    let after = log.head().await.expect("head");
    assert_eq!((after.epoch, after.head, after.first), (before.epoch, 3, 1));
    assert_eq!(recorder.offsets(3).await, [1, 2, 3]);
}

pub(crate) async fn appends_from_many_tasks_are_handed_over_in_offset_order(subject: Subject) {
    let (log, recorder) = open(&subject, "r").await;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut offsets = Vec::new();
                for _ in 0..100 {
                    let published = append(&*log, "x", None).await.expect("append");
                    offsets.push(published.offset.expect("an offset"));
                }
                offsets
            })
        })
        .collect();
    let mut given = Vec::new();
    for task in tasks {
        let offsets = task.await.expect("the task ends");
        assert!(offsets.is_sorted(), "a task's lines in its order");
        given.extend(offsets);
    }
    given.sort_unstable();
    assert_eq!(given, (1..=400).collect::<Vec<_>>(), "each offset once");
    assert_eq!(recorder.offsets(400).await, given, "handed over in order");
}

pub(crate) async fn a_line_from_outside_goes_to_the_log_open_or_not(subject: Subject) {
    let (log, recorder) = open(&subject, "open").await;
    let record = Record::chat(0, "bot", "x");
    let Some(appended) = subject.store.append_to("open", &record) else {
        // Logs that live only while their room is open here: through the room.
        assert!(subject.store.append_to("closed", &record).is_none());
        return;
    };
    let (epoch, published) = appended.await.expect("append");
    assert_eq!(Ok(published), logged(1));
    assert_eq!(epoch, log.head().await.expect("head").epoch);
    assert_eq!(recorder.offsets(1).await, [1], "the open room gets it");
    let appended = subject
        .store
        .append_to("closed", &record)
        .expect("the same store");
    let (epoch, published) = appended.await.expect("append");
    assert_eq!(Ok(published), logged(1));
    let (closed, _) = open(&subject, "closed").await;
    let head = closed.head().await.expect("head");
    assert_eq!(
        (head.epoch, head.head),
        (epoch, 1),
        "kept for when it opens"
    );
}

pub(crate) async fn reads_start_after_the_offset_and_stop_at_the_limit(subject: Subject) {
    let (log, _recorder) = open(&subject, "r").await;
    assert_eq!(read(&*log, 0, 10).await, (0, vec![]));
    for _ in 1..=3 {
        append(&*log, "x", None).await.expect("append");
    }
    assert_eq!(read(&*log, 0, 10).await, (0, vec![1, 2, 3]));
    assert_eq!(read(&*log, 1, 1).await, (0, vec![2]));
    assert_eq!(read(&*log, 3, 10).await, (0, vec![]));
    assert_eq!(read(&*log, 9, 10).await, (0, vec![]));
}

pub(crate) async fn the_oldest_go_first_beyond_the_bounds(subject: Subject) {
    let (log, recorder) = open(&subject, "r").await;
    // Asked all at once: Redis trims whole stream nodes (100 entries), so it
    // takes more than a node to see the oldest go.
    let asked: Vec<Appending> = (0..250)
        .map(|_| log.append(&Record::chat(1, "alice", "x"), None, None))
        .collect();
    for (offset, appending) in (1..).zip(asked) {
        let published = match appending {
            Appending::Done(done) => done,
            Appending::Later(later) => later.await,
        };
        assert_eq!(published, logged(offset));
    }
    let head = log.head().await.expect("head");
    assert_eq!(head.head, 250);
    assert!(head.first > 1, "the oldest went: {head:?}");
    let kept = head.head + 1 - head.first;
    assert!(kept >= BOUNDS.entries as u64, "the newest stay: {head:?}");
    let (missed, offsets) = read(&*log, 0, 1000).await;
    assert_eq!(missed, head.first - 1);
    assert_eq!(offsets, (head.first..=250).collect::<Vec<_>>());
    // Everything was handed over, whatever the log still keeps.
    assert_eq!(recorder.offsets(250).await, (1..=250).collect::<Vec<_>>());
}

pub(crate) async fn a_repeated_line_id_is_a_duplicate(subject: Subject) {
    let (log, recorder) = open(&subject, "r").await;
    let again = |offset| {
        Ok(Published {
            offset,
            duplicate: true,
        })
    };
    assert_eq!(append(&*log, "a", Some(("s", 1))).await, logged(1));
    assert_eq!(append(&*log, "b", Some(("s", 2))).await, logged(2));
    assert_eq!(append(&*log, "b", Some(("s", 2))).await, again(Some(2)));
    assert_eq!(append(&*log, "a", Some(("s", 1))).await, again(None));
    assert_eq!(append(&*log, "c", Some(("s", 3))).await, logged(3));
    // Another client id's ids are its own, and a line without an id is always new.
    assert_eq!(append(&*log, "d", Some(("t", 1))).await, logged(4));
    assert_eq!(append(&*log, "e", None).await, logged(5));
    assert_eq!(log.head().await.expect("head").head, 5);
    assert_eq!(recorder.offsets(5).await, [1, 2, 3, 4, 5]);
    // Ids are per room.
    let (other, _) = open(&subject, "other").await;
    assert_eq!(append(&*other, "a", Some(("s", 1))).await, logged(1));
}

pub(crate) async fn the_epoch_stays_while_the_log_lives(subject: Subject) {
    let (log, recorder) = open(&subject, "r").await;
    let epoch = log.head().await.expect("head").epoch;
    for _ in 0..3 {
        append(&*log, "x", None).await.expect("append");
    }
    assert_eq!(log.head().await.expect("head").epoch, epoch);
    let live = recorder.wait(3).await;
    assert!(live.iter().all(|e| e.epoch == epoch), "{live:?}");
    let read = log.read(0, 10, Format::Structured).await.expect("read");
    assert!(read.deliveries.iter().all(|d| d.epoch == epoch));
    let (other, _) = open(&subject, "other").await;
    assert_ne!(other.head().await.expect("head").epoch, epoch);
}

pub(crate) async fn what_is_read_is_what_was_delivered(subject: Subject) {
    let (log, recorder) = open(&subject, "r").await;
    append(&*log, "hi", None).await.expect("append");
    let joined = Record::presence("bob", true, 1);
    match log.append(&joined, None, Some(Presence::Join(2, "bob"))) {
        Appending::Done(done) => done,
        Appending::Later(later) => later.await,
    }
    .expect("append");
    let live = recorder.wait(2).await;
    assert_eq!(live[0].classic.as_text(), Some(r#"alice: "hi""#));
    assert_eq!(live[1].classic.as_text(), Some("* bob joined (1 here)"));
    for format in [Format::Classic, Format::Structured] {
        let read = log.read(0, 10, format).await.expect("read");
        let read: Vec<_> = read
            .deliveries
            .iter()
            .map(|d| d.message.as_text().map(str::to_owned))
            .collect();
        let delivered: Vec<_> = live
            .iter()
            .map(|e| e.delivery(format).message.as_text().map(str::to_owned))
            .collect();
        assert_eq!(read, delivered, "{format:?}");
    }
}

/// A `redis-server` of the test's own, on a free port, without persistence;
/// killed when dropped.
pub(crate) struct RedisServer {
    _child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts one on a free port, once it accepts connections.
    pub(crate) async fn start() -> Self {
        Self::start_at(free_port()).await
    }

    /// Starts one on `port` (that of one killed before), once it accepts
    /// connections.
    pub(crate) async fn start_at(port: u16) -> Self {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let ready = async {
            while let Some(line) = lines.next_line().await.expect("redis-server's output") {
                if line.contains("Ready to accept connections") {
                    return;
                }
            }
            panic!("redis-server ended before it was ready");
        };
        tokio::time::timeout(WAIT, ready)
            .await
            .expect("redis-server ready");
        // Its output is not read again: a full pipe must not stop it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            _child: child,
            port,
        }
    }

    /// Its URL.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its port.
    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Sends it `signal` (`STOP`: its connections stay open and answer nothing;
    /// `CONT`: it goes on, and runs what waited; `KILL`).
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self._child.id().expect("redis-server running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }
}

/// A port below the kernel's ephemeral range that nothing listens on (see
/// `tests/common`'s `free_port`).
fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let floor = 10_000.min(low / 2);
    for _ in 0..100 {
        let span = u64::from(low - floor);
        let port = floor + (RandomState::new().hash_one(std::time::Instant::now()) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {floor} and {low}");
}

/// Runs every function of the suite against the store `$make(BOUNDS)` makes, each
/// as its own test, with `$attr`s (an ignore where a program is missing).
macro_rules! stores {
    ($store:ident, $make:path $(, #[$attr:meta])*) => {
        mod $store {
            use super::*;
            stores!(@each $make, [$(#[$attr])*],
                offsets_count_from_one_without_gaps,
                appends_from_many_tasks_are_handed_over_in_offset_order,
                reads_start_after_the_offset_and_stop_at_the_limit,
                the_oldest_go_first_beyond_the_bounds,
                a_repeated_line_id_is_a_duplicate,
                the_epoch_stays_while_the_log_lives,
                a_line_from_outside_goes_to_the_log_open_or_not,
                what_is_read_is_what_was_delivered,
            );
        }
    };
    (@each $make:path, $attrs:tt, $($test:ident,)*) => {
        $(stores!(@one $make, $attrs, $test);)*
    };
    (@one $make:path, [$(#[$attr:meta])*], $test:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])*
        async fn $test() {
            super::$test($make(BOUNDS).await).await;
        }
    };
}

stores!(memory, super::super::memory::subject);
stores!(disk, super::super::disk::subject);
stores!(
    redis,
    super::super::redis::subject,
    #[cfg_attr(
        not(has_redis),
        ignore = "needs redis-server (apt-get install redis-server)"
    )]
);

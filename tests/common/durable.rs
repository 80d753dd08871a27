//! Helpers for the tests of the disk store (`--data-dir`): a data directory of the
//! test's own with servers started, killed and started again on it; a structured
//! member that keeps what it sent, what was acknowledged and what it saw across
//! its connections; the room's whole log read back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::{mpsc, watch};
use tokio::time::{Duration, timeout};

use super::{Lines, Server, WAIT, chatter, connect_structured, recv_json, server_command};

/// What the server logs at start when a crash cut its last write short.
pub const CUT_SHORT: &str = "the last write before the server stopped was cut short";

/// A data directory in a temporary directory of the test's own, and the flags
/// every server on it gets.
pub struct DataDir {
    /// Removed with everything in it when the test ends.
    temp: TempDir,
    flags: Vec<String>,
}

impl DataDir {
    /// A data directory not made yet (the server makes it), for servers started
    /// with `flags` besides `--data-dir`.
    pub fn new(flags: &[&str]) -> DataDir {
        DataDir {
            temp: TempDir::new().expect("a temporary directory"),
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
        }
    }

    /// The directory given to `--data-dir`.
    pub fn path(&self) -> PathBuf {
        self.temp.path().join("data")
    }

    /// The args of a server on it: `--data-dir` and the flags.
    fn args(&self) -> Vec<String> {
        let dir = self.path().to_str().expect("a UTF-8 path").to_owned();
        [vec!["--data-dir".to_owned(), dir], self.flags.clone()].concat()
    }

    /// Starts a server on it at `port` (0: any free one), up to its readiness line.
    pub async fn start(&self, port: u16) -> Server {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_at(port, &args).await
    }

    /// Runs a server on it that must refuse it: exit code 1, nothing on stdout, and
    /// on stderr exactly one line, `error: cannot use the data directory DIR: `
    /// and the reason, which this returns.
    pub async fn refusal(&self) -> String {
        refusal(&self.path(), &self.args()).await
    }
}

/// Runs a server with `args` (a `--data-dir` of `dir` among them) that must refuse
/// its data directory; returns the reason it gave.
pub async fn refusal(dir: &Path, args: &[String]) -> String {
    let run = server_command()
        .args(["--port", "0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = timeout(WAIT, run)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the server took {} (still running after {WAIT:?})",
                dir.display()
            )
        })
        .expect("run the server");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty(), "no readiness line: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    let prefix = format!("error: cannot use the data directory {}: ", dir.display());
    let reason = lines[0].strip_prefix(&prefix);
    reason.unwrap_or_else(|| panic!("{stderr}")).to_owned()
}

/// A structured member of a room that keeps, across its connections, the lines it
/// sent (numbered from 1), the server's acks and every message it received.
pub struct Member {
    /// Its client id (`?session=`), kept across its connections.
    pub session: String,
    /// The room's epoch, from the first welcome.
    pub epoch: String,
    /// The texts it sent, the line of id N at N - 1.
    pub sent: Vec<String>,
    /// Each acknowledged line's id and the offset the ack gave (`None`: a
    /// duplicate's ack without one).
    pub acked: BTreeMap<u64, Option<u64>>,
    /// Every message received, offset and text, in the order received.
    pub seen: Vec<(u64, String)>,
    out: mpsc::UnboundedSender<String>,
    frames: mpsc::UnboundedReceiver<String>,
}

impl Member {
    /// Joins `room` (a URL) as client id `session`; returns it with its welcome.
    pub async fn join(room: &str, session: &str) -> (Member, Value) {
        let (ws, welcome) = connect_structured(&format!("{room}?session={session}")).await;
        let (out, frames) = chatter(ws);
        let epoch = welcome["epoch"].as_str().expect("an epoch").to_owned();
        let member = Member {
            session: session.to_owned(),
            epoch,
            sent: Vec::new(),
            acked: BTreeMap::new(),
            seen: Vec::new(),
            out,
            frames,
        };
        (member, welcome)
    }

    /// Comes back to `room` with its client id, epoch and the last offset it saw;
    /// checks that the welcome names the same epoch and returns the frame that
    /// ends the replay (`recovered`), having kept the replay's messages.
    pub async fn rejoin(&mut self, room: &str) -> Value {
        let query = format!(
            "session={}&epoch={}&after={}",
            self.session,
            self.epoch,
            self.last_seen()
        );
        let (ws, welcome) = connect_structured(&format!("{room}?{query}")).await;
        assert_eq!(welcome["epoch"], self.epoch.as_str(), "{welcome}");
        (self.out, self.frames) = chatter(ws);
        loop {
            let frame = self.next().await.expect("the replay, then `recovered`");
            if frame["type"] == "recovered" {
                return frame;
            }
        }
    }

    /// The offset of the last message it saw (0 before any).
    pub fn last_seen(&self) -> u64 {
        self.seen.last().map_or(0, |(offset, _)| *offset)
    }

    /// Lines sent and not acknowledged.
    pub fn unacked(&self) -> usize {
        self.sent.len() - self.acked.len()
    }

    /// Sends its next line, `SESSION line N`.
    pub fn say_next(&mut self) {
        let id = self.sent.len() as u64 + 1;
        let text = format!("{} line {id}", self.session);
        self.send(id, &text);
        self.sent.push(text);
    }

    /// Sends every line not acknowledged again, with its id, oldest first.
    pub fn resend_unacked(&mut self) {
        for id in 1..=self.sent.len() as u64 {
            if !self.acked.contains_key(&id) {
                let text = self.sent[id as usize - 1].clone();
                self.send(id, &text);
            }
        }
    }

    fn send(&self, id: u64, text: &str) {
        let frame = json!({"type": "send", "id": id, "text": text});
        // Gone only with the connection: the line is unacknowledged, and sent again.
        let _ = self.out.send(frame.to_string());
    }

    /// The next frame, kept if it is a message or an ack; `None` once the
    /// connection has ended. Panics after [`WAIT`].
    pub async fn next(&mut self) -> Option<Value> {
        let text = timeout(WAIT, self.frames.recv())
            .await
            .expect("a frame or the end in time")?;
        Some(self.keep(&text))
    }

    /// Parses a frame and keeps it if it is a message or an ack. Panics on an
    /// `error` frame and on a line acknowledged twice.
    fn keep(&mut self, text: &str) -> Value {
        let frame: Value = serde_json::from_str(text).expect("a JSON frame");
        match frame["type"].as_str() {
            Some("message") => self.seen.push(offset_and_text(&frame)),
            Some("ack") => {
                let id = frame["id"].as_u64().expect("an id");
                let first = self.acked.insert(id, frame["offset"].as_u64());
                assert!(first.is_none(), "line {id} acknowledged twice: {frame}");
            }
            Some("error") => panic!("{frame}"),
            _ => {}
        }
        frame
    }

    /// Reads frames until `done` holds (`what` names it for the panic message),
    /// within [`WAIT`].
    pub async fn until(&mut self, what: &str, done: impl Fn(&Member) -> bool) {
        let reached = timeout(WAIT, async {
            while !done(self) {
                let Some(text) = self.frames.recv().await else {
                    return false;
                };
                self.keep(&text);
            }
            true
        })
        .await;
        let (seen, acked) = (self.last_seen(), self.acked.len());
        match reached {
            Ok(true) => {}
            Ok(false) => panic!("{}: the connection ended before {what}", self.session),
            Err(_) => panic!(
                "{}: waited {WAIT:?} for {what}; saw up to offset {seen}, {acked} of {} lines acknowledged",
                self.session,
                self.sent.len()
            ),
        }
    }

    /// Keeps `window` lines unacknowledged, topped up every millisecond,
    /// and counts acks into `acks`, until the connection ends (the server died).
    pub async fn talk_until_cut(mut self, window: usize, acks: &watch::Sender<usize>) -> Member {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        loop {
            tokio::select! {
                frame = self.frames.recv() => {
                    let Some(text) = frame else { return self };
                    if self.keep(&text)["type"] == "ack" {
                        acks.send_modify(|n| *n += 1);
                    }
                }
                _ = tick.tick() => while self.unacked() < window {
                    self.say_next();
                },
            }
        }
    }
}

/// The room's whole log on `server`: a client resuming `room` (a URL) from offset
/// 0 of `epoch` is replayed every message, offsets and texts, and told the
/// recovery is complete. Checks the epoch is the room's.
pub async fn whole_log(room: &str, epoch: &str) -> Vec<(u64, String)> {
    let (ws, welcome) = connect_structured(&format!("{room}?epoch={epoch}&after=0")).await;
    assert_eq!(welcome["epoch"], epoch, "{welcome}");
    let mut ws = ws;
    let mut log = Vec::new();
    loop {
        let frame = recv_json(&mut ws).await;
        match frame["type"].as_str() {
            Some("message") => log.push(offset_and_text(&frame)),
            Some("recovered") => {
                assert_eq!(frame, json!({"type": "recovered", "complete": true}));
                return log;
            }
            _ => panic!("not in a replay: {frame}"),
        }
    }
}

/// Every line a `--json` client printed, parsed.
pub fn frames_of(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

/// Waits until a `--json` client has printed `count` frames of type `kind`.
pub async fn wait_for_frames(stdout: &Lines, kind: &str, count: usize) {
    let what = format!("{count} {kind:?} frames");
    stdout
        .wait_until(&what, |lines| {
            frames_of(lines)
                .iter()
                .filter(|f| f["type"] == kind)
                .count()
                >= count
        })
        .await;
}

/// A message frame's offset and text.
pub fn offset_and_text(message: &Value) -> (u64, String) {
    let offset = message["offset"].as_u64().expect("an offset");
    (offset, message["text"].as_str().expect("a text").to_owned())
}

/// Lets `members` talk (see [`Member::talk_until_cut`]) until `acks` of their lines
/// are acknowledged, kills `server` with SIGKILL in the middle of it, and returns
/// them once their connections have ended.
pub async fn crash_under_traffic(server: Server, members: Vec<Member>, acks: usize) -> Vec<Member> {
    let counter = Arc::new(watch::Sender::new(0));
    let talking: Vec<_> = members
        .into_iter()
        .map(|member| {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move { member.talk_until_cut(16, &counter).await })
        })
        .collect();
    let mut counted = counter.subscribe();
    let enough = timeout(WAIT, counted.wait_for(|n| *n >= acks)).await;
    drop(
        enough
            .expect("enough acks in time")
            .expect("still counting"),
    );
    server.kill().await;
    let mut members = Vec::new();
    for talk in talking {
        let member = timeout(WAIT, talk).await.expect("cut in time");
        members.push(member.expect("talked"));
    }
    members
}

/// Checks `log` (a room's whole log, from [`whole_log`]) against what `members`,
/// who were there from its start, sent and saw: offsets 1, 2, ... without a gap;
/// each member saw all of it once, in offset order; each ack's offset holds the
/// line acknowledged; every line sent is in it once, and nothing else is.
pub fn assert_each_line_once(members: &[Member], log: &[(u64, String)]) {
    let offsets: Vec<u64> = log.iter().map(|(offset, _)| *offset).collect();
    assert!(
        offsets == (1..=log.len() as u64).collect::<Vec<_>>(),
        "gaps: {offsets:?}"
    );
    for member in members {
        let differs = member.seen.iter().zip(log).position(|(a, b)| a != b);
        let (seen, logged) = (member.seen.len(), log.len());
        assert!(
            member.seen == log,
            "{} saw {seen} messages of {logged}, the first different at {differs:?}",
            member.session
        );
        for (id, offset) in member.acked.iter().filter_map(|(i, o)| Some((i, (*o)?))) {
            let text = &member.sent[*id as usize - 1];
            assert_eq!(&log[offset as usize - 1].1, text, "the ack of {text:?}");
        }
    }
    let mut logged: Vec<&String> = log.iter().map(|(_, text)| text).collect();
    let mut sent: Vec<&String> = members.iter().flat_map(|m| &m.sent).collect();
    logged.sort();
    sent.sort();
    assert!(
        logged == sent,
        "every line sent is in the log once, and nothing else"
    );
}

//! One client of the `crash` scenario: connects with `broadcast-chat.v1` and a session, sends
//! lines with ids and keeps a window of them unacknowledged, books every copy and ack, and after
//! the kill comes back with `epoch` and `after` and sends again what was not acknowledged; and the
//! log read back at the end as a newcomer asking for all of it.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::Uri;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_websockets::{ClientBuilder, Message};

use crate::ledger::{ClientRecord, Copy, Sent};
use crate::load::Ws;
use crate::parse::{self, Frame};

/// Bound on one connection attempt (TCP connect, upgrade and welcome), and on reading the log
/// back.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one crash run does.
#[derive(Clone, Debug)]
pub struct CrashPlan {
    /// Connections, senders included (every client receives every line).
    pub clients: usize,
    pub senders: usize,
    /// Lines per sender.
    pub lines: usize,
    /// Lines a sender may have sent and not yet seen acknowledged.
    pub window: usize,
    /// The server is killed once this share of all lines is acknowledged.
    pub kill_at: f64,
    /// Between a client's attempts to reconnect while the server is down.
    pub retry: Duration,
    /// Connections being opened at once.
    pub concurrency: usize,
    /// Bound on the run from the first line sent.
    pub timeout: Duration,
}

impl Default for CrashPlan {
    fn default() -> Self {
        Self {
            clients: 100,
            senders: 10,
            lines: 300,
            window: 8,
            kill_at: 0.5,
            retry: Duration::from_millis(20),
            concurrency: 200,
            timeout: Duration::from_secs(30),
        }
    }
}

/// State every client of one run shares.
pub struct Shared {
    pub plan: CrashPlan,
    pub addr: SocketAddr,
    pub uri: Uri,
    /// Prefix of this run's lines and session ids.
    pub tag: String,
    /// Acks received so far, every sender: the kill's trigger.
    pub acks: AtomicU64,
    /// When the server was killed; set by the run just before the signal.
    pub killed_at: OnceLock<Instant>,
    /// Fired once every client is connected: the senders begin.
    pub start: CancellationToken,
    /// Fired at the deadline: every client hands in its record.
    pub cancel: CancellationToken,
    /// Connections being opened at once.
    pub connect_limit: Semaphore,
}

/// Where a client stands in the room, and its lines if it sends.
struct Client {
    id: usize,
    record: ClientRecord,
    /// The room's epoch and the last offset received: where it resumes.
    epoch: String,
    last_offset: u64,
    /// A sender's next line never sent, and its lines sent on this connection and not yet
    /// acknowledged.
    next: usize,
    in_flight: usize,
    /// Lines received at least once (by sender and seq), and how many.
    seen: Vec<bool>,
    distinct: u64,
}

/// Connection `id` (the last `senders` ids send): connects, reports ready, and receives (and
/// sends) across the kill until it has every line and every ack, having resumed once; then
/// hands in its record.
pub async fn client(
    id: usize,
    shared: Arc<Shared>,
    ready_tx: mpsc::UnboundedSender<Result<(), String>>,
) -> (usize, ClientRecord) {
    let plan = &shared.plan;
    let receivers = plan.clients - plan.senders;
    let mut me = Client {
        id,
        record: ClientRecord {
            sent: (id >= receivers).then(|| Sent {
                sender: id - receivers,
                acked_on: vec![None; plan.lines],
                ..Sent::default()
            }),
            ..ClientRecord::default()
        },
        epoch: String::new(),
        last_offset: 0,
        next: 0,
        in_flight: 0,
        seen: vec![false; plan.senders * plan.lines],
        distinct: 0,
    };
    let first = {
        let _permit = shared.connect_limit.acquire().await;
        me.open(&shared, false).await
    };
    let mut ws = match first {
        Ok((ws, epoch, offset)) => {
            (me.epoch, me.last_offset) = (epoch, offset);
            let _ = ready_tx.send(Ok(()));
            ws
        }
        Err(why) => {
            let _ = ready_tx.send(Err(why));
            return (id, me.record);
        }
    };
    tokio::select! {
        () = shared.start.cancelled() => {}
        () = shared.cancel.cancelled() => return (id, me.record),
    }
    loop {
        me.record.connections += 1;
        let done = me.converse(&shared, &mut ws).await;
        if done || shared.cancel.is_cancelled() {
            break;
        }
        // The server is gone: back as soon as it is, where this client left off.
        let back = loop {
            match me.open(&shared, true).await {
                Ok(opened) => break Some(opened),
                Err(_) if !shared.cancel.is_cancelled() => {
                    tokio::time::sleep(plan.retry).await;
                }
                Err(why) => {
                    me.record.ended = Some(format!("reconnecting: {why}"));
                    break None;
                }
            }
        };
        let Some((new_ws, epoch, _)) = back else {
            break;
        };
        ws = new_ws;
        me.epoch = epoch;
        me.in_flight = 0;
    }
    (id, me.record)
}

impl Client {
    /// Whether this client has every line, every ack of its own, and has resumed once.
    fn done(&self) -> bool {
        self.distinct == self.seen.len() as u64
            && self.record.resumed_after.is_some()
            && self
                .record
                .sent
                .as_ref()
                .is_none_or(|s| s.acked_on.iter().all(Option::is_some))
    }

    /// One connection's traffic: a sender first sends again what is not acknowledged (after a
    /// restart), then keeps its window full; every frame is booked. Returns whether the client
    /// is done; `false` when the connection ended (or the run was cancelled).
    async fn converse(&mut self, shared: &Shared, ws: &mut Ws) -> bool {
        let plan = &shared.plan;
        let connection = self.record.connections - 1;
        let mut replaying = connection > 0;
        let mut cancelled = pin!(shared.cancel.cancelled());
        if let Some(sent) = &mut self.record.sent {
            let again: Vec<usize> = (0..self.next)
                .filter(|&s| sent.acked_on[s].is_none())
                .collect();
            sent.resent += again.len() as u64;
            for seq in again {
                if send(ws, &shared.tag, sent.sender, seq).await.is_err() {
                    return false;
                }
                self.in_flight += 1;
            }
        }
        loop {
            if let Some(sent) = &self.record.sent {
                let sender = sent.sender;
                while self.in_flight < plan.window && self.next < plan.lines {
                    if send(ws, &shared.tag, sender, self.next).await.is_err() {
                        return false;
                    }
                    self.next += 1;
                    self.in_flight += 1;
                }
            }
            if self.done() {
                return true;
            }
            let message = tokio::select! {
                biased;
                message = ws.next() => message,
                () = &mut cancelled => return false,
            };
            let Some(Ok(message)) = message else {
                return false;
            };
            let Some(text) = message.as_text() else {
                continue;
            };
            match parse::frame(text, shared.tag.as_bytes()) {
                Frame::Message { offset, copy } => {
                    self.last_offset = offset;
                    let Some(copy) = copy.filter(|c| c.sender < plan.senders && c.seq < plan.lines)
                    else {
                        self.book_other(text);
                        continue;
                    };
                    if replaying {
                        self.record.replayed += 1;
                    }
                    let seen = &mut self.seen[copy.sender * plan.lines + copy.seq];
                    if !*seen {
                        *seen = true;
                        self.distinct += 1;
                    }
                    self.record.copies.push(Copy {
                        sender: copy.sender,
                        seq: copy.seq,
                        offset,
                        connection,
                    });
                }
                Frame::Ack { id, duplicate } => self.book_ack(shared, id, duplicate, connection),
                Frame::Recovered {
                    complete,
                    restarted,
                    ..
                } if replaying => {
                    replaying = false;
                    if !complete || restarted {
                        self.record.incomplete += 1;
                    }
                    let killed = shared.killed_at.get().copied();
                    self.record.resumed_after = killed.map(|at| at.elapsed());
                }
                _ => self.book_other(text),
            }
        }
    }

    /// A sender's ack for line `id` (seq + 1) on connection `connection`.
    fn book_ack(&mut self, shared: &Shared, id: u64, duplicate: bool, connection: u32) {
        let Some(sent) = &mut self.record.sent else {
            return self.book_other("an ack to a client that sent nothing");
        };
        let Some(slot) = usize::try_from(id)
            .ok()
            .and_then(|id| id.checked_sub(1))
            .and_then(|seq| sent.acked_on.get_mut(seq))
        else {
            return self.book_other("an ack for a line never sent");
        };
        if slot.is_some() {
            sent.acked_twice += 1;
            return;
        }
        *slot = Some(connection);
        if duplicate && connection > 0 {
            sent.duplicate_acks += 1;
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        shared.acks.fetch_add(1, Ordering::Relaxed);
    }

    fn book_other(&mut self, text: &str) {
        self.record.other += 1;
        if self.record.first_other.is_none() {
            let shown: String = text.chars().take(160).collect();
            self.record.first_other = Some(format!("client {}: {shown}", self.id));
        }
    }
}

/// Sends line `seq` of `sender` as a `send` frame with id `seq + 1`.
async fn send(ws: &mut Ws, tag: &str, sender: usize, seq: usize) -> Result<(), ()> {
    let frame = serde_json::json!({
        "type": "send",
        "id": seq + 1,
        "text": format!("{tag} {sender} {seq} 0"),
    });
    ws.send(Message::text(frame.to_string()))
        .await
        .map_err(drop)
}

impl Client {
    /// One attempt to connect this client, resuming from its epoch and last offset if `resume`.
    async fn open(&self, shared: &Shared, resume: bool) -> Result<(Ws, String, u64), String> {
        let session = format!("{}c{}", shared.tag, self.id);
        let from = resume.then_some((self.epoch.as_str(), self.last_offset));
        open(shared, "/", &session, from).await
    }
}

/// Reads the room's log back from the server as a newcomer asking for all of it (`history`):
/// every line in it, in order.
pub async fn audit(shared: &Shared) -> Result<Vec<Copy>, String> {
    let plan = &shared.plan;
    let path = format!("/?history={}", plan.senders * plan.lines);
    let session = format!("{}audit", shared.tag);
    let (mut ws, _, head) = open(shared, &path, &session, None).await?;
    let mut log = Vec::new();
    let read = async {
        let mut last = 0;
        while last < head {
            let message = match ws.next().await {
                Some(Ok(message)) => message,
                Some(Err(e)) => return Err(format!("reading the history: {e}")),
                None => return Err("closed during the history".to_owned()),
            };
            let text = message.as_text().unwrap_or_default();
            if let Frame::Message { offset, copy } = parse::frame(text, shared.tag.as_bytes()) {
                last = offset;
                log.extend(copy.map(|c| Copy {
                    sender: c.sender,
                    seq: c.seq,
                    offset,
                    connection: 0,
                }));
            }
        }
        Ok(())
    };
    tokio::time::timeout(CONNECT_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(format!("the history took over {CONNECT_TIMEOUT:?}")))?;
    Ok(log)
}

/// One attempt to connect to `path` with `broadcast-chat.v1` and `session`, resuming `from` an
/// epoch and offset if given; the welcome's epoch and offset.
async fn open(
    shared: &Shared,
    path: &str,
    session: &str,
    from: Option<(&str, u64)>,
) -> Result<(Ws, String, u64), String> {
    let attempt = async {
        let tcp = TcpStream::connect(shared.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("set_nodelay: {e}"))?;
        let target = parse::session_target(path, session, from);
        let mut parts = shared.uri.clone().into_parts();
        parts.path_and_query = Some(target.parse().map_err(|e| format!("{target:?}: {e}"))?);
        let uri = Uri::from_parts(parts).map_err(|e| format!("{target:?}: {e}"))?;
        let (mut ws, _) = ClientBuilder::from_uri(uri)
            .add_header(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static(parse::SUBPROTOCOL),
            )
            .map_err(|e| format!("header: {e}"))?
            .connect_on(tcp)
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        let first = match ws.next().await {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(format!("reading the welcome: {e}")),
            None => return Err("closed before the welcome".to_owned()),
        };
        match parse::frame(first.as_text().unwrap_or_default(), b"") {
            Frame::Welcome { epoch, offset } => Ok((ws, epoch, offset)),
            _ => Err(format!("the first frame was not the welcome: {first:?}")),
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no welcome within {CONNECT_TIMEOUT:?}")))
}

//! The load generator: what a run does, the state its tasks share, tallies, and the senders.
//! Each connection's task is in `connection.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use http::Uri;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

use crate::report::Headline;
use crate::stats;

/// A closed-loop sender that waits this long for a window slot sends anyway (and counts a stall).
const WINDOW_STALL: Duration = Duration::from_secs(1);

pub type Ws = WebSocketStream<TcpStream>;
pub type Sink = SplitSink<Ws, Message>;

/// Where the server listens.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub uri: Uri,
}

/// How senders pace their messages.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// At most this many of a sender's own messages in flight.
    Closed { window: usize },
    /// A fixed rate per sender, whatever comes back; messages carry the time they were due.
    Open { per_second: u32 },
}

/// What one scenario run does.
#[derive(Clone, Debug)]
pub struct Plan {
    pub scenario: &'static str,
    /// All connections, senders included.
    pub connections: usize,
    pub senders: usize,
    /// Messages per sender.
    pub messages: usize,
    pub pace: Pace,
    /// The figure that picks the median of several runs.
    pub headline: Headline,
    /// Receivers that drop their connection mid-run and come back, if any.
    pub reconnect: Option<Reconnect>,
}

/// Receivers that drop their connection abruptly mid-run, stay away a while, and reconnect:
/// with `broadcast-chat.v1` they resume after the last offset they received, otherwise they come
/// back as new classic clients and lose what was said while they were away.
#[derive(Clone, Copy, Debug)]
pub struct Reconnect {
    /// One receiver in this many (ids 0, `every`, 2 × `every`, ...); the others stay classic.
    pub every: usize,
    /// They drop after receiving these seqs of the first sender's, spread evenly in id order.
    pub first_seq: usize,
    pub last_seq: usize,
    /// How long each stays away before reconnecting.
    pub away: Duration,
}

impl Plan {
    pub fn receivers(&self) -> usize {
        self.connections - self.senders
    }

    /// After which seq connection `id` drops and reconnects, if it is one that does.
    pub fn reconnect_after(&self, id: usize) -> Option<usize> {
        let r = self.reconnect?;
        stats::reconnect_after(id, self.receivers(), r.every, r.first_seq, r.last_seq)
    }

    /// How many receivers drop and reconnect.
    pub fn reconnecting(&self) -> usize {
        (0..self.receivers())
            .filter(|&id| self.reconnect_after(id).is_some())
            .count()
    }
}

/// What one connection received, over all its connections when it reconnected; merged by the
/// scenario.
#[derive(Default)]
pub struct Tally {
    /// Copies of this run's messages, duplicates included.
    pub copies: u64,
    /// Distinct (sender, seq) copies.
    pub unique: u64,
    pub duplicates: u64,
    /// Copies with a lower seq than one already seen from the same sender.
    pub out_of_order: u64,
    pub notices: u64,
    /// Sum of the numbers in lag notices.
    pub missed: u64,
    /// Messages that are neither copies nor notices (other traffic, bad format).
    pub other: u64,
    /// Latency of each copy in microseconds.
    pub latencies_us: Vec<u32>,
    /// Nanoseconds since the epoch of the last copy.
    pub last_copy_ns: u64,
    /// Why the connection ended before the scenario did, if it did.
    pub ended: Option<String>,
    /// Times this client dropped its connection on purpose, and came back.
    pub drops: u64,
    pub reconnects: u64,
    /// Of the reconnects, those that resumed with `broadcast-chat.v1`.
    pub resumed: u64,
    /// Copies a resumption replayed (between the welcome and `recovered`).
    pub replayed: u64,
    /// Copies received live on a connection opened after a drop.
    pub live_after: u64,
    /// Resumptions the server called incomplete.
    pub incomplete: u64,
    /// Messages a structured connection was told it lost: by `recovered` and by lag notices.
    pub announced_lost: u64,
    /// Offsets that message frames jumped over, and times one came back to an earlier offset.
    pub skipped_offsets: u64,
    pub repeated_offsets: u64,
    /// Where the first of those happened.
    pub first_offset_skip: Option<String>,
    /// Where the first duplicate or out-of-order copy arrived.
    pub first_disorder: Option<String>,
}

/// One per-connection progress counter, on its own cache line.
#[repr(align(64))]
#[derive(Default)]
pub struct Progress(pub AtomicU64);

/// State shared by every task of one scenario run.
pub struct Shared {
    pub plan: Plan,
    /// The server's instances, and a client builder for each: connection `id` uses
    /// [`Shared::instance_of`]'s.
    pub targets: Vec<Target>,
    pub builders: Vec<ClientBuilder<'static>>,
    /// Payload prefix unique to this run, so other traffic is not counted.
    pub tag: String,
    /// Latencies and timestamps are nanoseconds since this instant.
    pub epoch: Instant,
    /// Connections being opened at once.
    pub connect_limit: Semaphore,
    /// Window slots per sender, released by the sender's own receive side.
    pub acks: Vec<Semaphore>,
    /// Distinct copies per connection so far, polled to see when traffic has stopped.
    pub progress: Vec<Progress>,
    /// Fired when the delivery phase ends: receive loops and senders stop.
    pub cancel: CancellationToken,
    pub ready_tx: mpsc::UnboundedSender<Result<Option<(usize, Sink)>, String>>,
    pub tally_tx: mpsc::UnboundedSender<Tally>,
}

/// The receiving ends a scenario reads from.
pub struct Channels {
    /// One per connection: its sink if it is a sender, or why it failed.
    pub ready_rx: mpsc::UnboundedReceiver<Result<Option<(usize, Sink)>, String>>,
    /// One per connected connection, when its receive loop ends.
    pub tally_rx: mpsc::UnboundedReceiver<Tally>,
}

impl Shared {
    /// State for one run of `plan` against `targets` (one per instance, at least one); at most
    /// `concurrency` connections are opened at once.
    pub fn new(
        plan: Plan,
        targets: Vec<Target>,
        tag: String,
        epoch: Instant,
        concurrency: usize,
    ) -> (Arc<Self>, Channels) {
        let (ready_tx, ready_rx) = mpsc::unbounded_channel();
        let (tally_tx, tally_rx) = mpsc::unbounded_channel();
        let window = match plan.pace {
            Pace::Closed { window } => window,
            Pace::Open { .. } => 0,
        };
        let shared = Self {
            builders: targets
                .iter()
                .map(|t| ClientBuilder::from_uri(t.uri.clone()))
                .collect(),
            targets,
            tag,
            epoch,
            connect_limit: Semaphore::new(concurrency),
            acks: (0..plan.senders).map(|_| Semaphore::new(window)).collect(),
            progress: (0..plan.connections).map(|_| Progress::default()).collect(),
            cancel: CancellationToken::new(),
            ready_tx,
            tally_tx,
            plan,
        };
        (Arc::new(shared), Channels { ready_rx, tally_rx })
    }

    /// The instance connection `id` talks to: [`stats::instance_of`].
    pub fn instance_of(&self, id: usize) -> usize {
        let plan = &self.plan;
        stats::instance_of(id, plan.receivers(), plan.senders, self.targets.len())
    }

    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// What a sender did.
#[derive(Default)]
pub struct SendReport {
    pub sent: u64,
    /// Nanoseconds since the epoch of the first message's stamp.
    pub first_send_ns: Option<u64>,
    /// Times a closed-loop sender gave up waiting for a window slot.
    pub stalls: u64,
    pub error: Option<String>,
}

/// Sends sender `sender`'s messages at its pace until done or cancelled. Open-loop senders
/// share `start` and each sends at its own offset, so the room gets an even stream.
pub async fn send(
    mut sink: Sink,
    sender: usize,
    shared: Arc<Shared>,
    start: Instant,
) -> SendReport {
    let mut report = SendReport::default();
    let plan = &shared.plan;
    let work = async {
        for seq in 0..plan.messages {
            // The stamp latency is measured from: when the message was sent (closed loop), or
            // when it was due (open loop), so that a sender that falls behind its schedule is
            // charged for the wait rather than hiding it (coordinated omission).
            let ts = match plan.pace {
                Pace::Closed { .. } => {
                    match tokio::time::timeout(WINDOW_STALL, shared.acks[sender].acquire()).await {
                        Ok(Ok(permit)) => permit.forget(),
                        Ok(Err(_)) => unreachable!("window semaphores are never closed"),
                        Err(_) => report.stalls += 1,
                    }
                    shared.now_ns()
                }
                Pace::Open { per_second } => {
                    let due = start + stats::open_loop_due(seq, sender, plan.senders, per_second);
                    tokio::time::sleep_until(due.into()).await;
                    due.saturating_duration_since(shared.epoch).as_nanos() as u64
                }
            };
            let text = format!("{} {sender} {seq} {ts}", shared.tag);
            if let Err(e) = sink.send(Message::text(text)).await {
                report.error = Some(format!("send: {e}"));
                return;
            }
            report.first_send_ns.get_or_insert(ts);
            report.sent += 1;
        }
    };
    tokio::select! {
        () = work => {}
        () = shared.cancel.cancelled() => {}
    }
    report
}

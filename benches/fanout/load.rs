//! The load generator: one task per connection reading copies, sender tasks writing, tallies.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{SplitSink, Stream};
use futures_util::{SinkExt, StreamExt};
use http::Uri;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

use crate::parse::{self, Incoming, Payload};
use crate::report::Headline;
use crate::stats;

/// The first message the server sends every client.
pub const WELCOME: &str = "Welcome to chat! Type a message";
/// Bound on one connection's TCP connect, upgrade and welcome message.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
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
}

impl Plan {
    pub fn receivers(&self) -> usize {
        self.connections - self.senders
    }
}

/// What one connection received; merged by the scenario.
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
}

/// One per-connection progress counter, on its own cache line.
#[repr(align(64))]
#[derive(Default)]
pub struct Progress(pub AtomicU64);

/// State shared by every task of one scenario run.
pub struct Shared {
    pub plan: Plan,
    pub target: Target,
    pub builder: ClientBuilder<'static>,
    /// Payload prefix unique to this run, so other traffic is not counted.
    pub tag: String,
    /// Latencies and timestamps are nanoseconds since this instant.
    pub epoch: Instant,
    connect_limit: Semaphore,
    /// Window slots per sender, released by the sender's own receive side.
    acks: Vec<Semaphore>,
    /// Distinct copies per connection so far, polled to see when traffic has stopped.
    pub progress: Vec<Progress>,
    /// Fired when the delivery phase ends: receive loops and senders stop.
    pub cancel: CancellationToken,
    ready_tx: mpsc::UnboundedSender<Result<Option<(usize, Sink)>, String>>,
    tally_tx: mpsc::UnboundedSender<Tally>,
}

/// The receiving ends a scenario reads from.
pub struct Channels {
    /// One per connection: its sink if it is a sender, or why it failed.
    pub ready_rx: mpsc::UnboundedReceiver<Result<Option<(usize, Sink)>, String>>,
    /// One per connected connection, when its receive loop ends.
    pub tally_rx: mpsc::UnboundedReceiver<Tally>,
}

impl Shared {
    /// State for one run of `plan`; at most `concurrency` connections are opened at once.
    pub fn new(
        plan: Plan,
        target: Target,
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
            builder: ClientBuilder::from_uri(target.uri.clone()),
            target,
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

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// Opens connection `id` (the last `senders` ids are senders), reports it ready, receives until
/// done or cancelled, reports its tally, then holds the socket open until aborted.
pub async fn connection(id: usize, shared: Arc<Shared>) {
    let opened = {
        let _permit = shared.connect_limit.acquire().await;
        tokio::time::timeout(CONNECT_TIMEOUT, open(&shared))
            .await
            .unwrap_or_else(|_| Err(format!("no welcome within {CONNECT_TIMEOUT:?}")))
    };
    let ws = match opened {
        Ok(ws) => ws,
        Err(error) => {
            let _ = shared.ready_tx.send(Err(error));
            return;
        }
    };
    let receivers = shared.plan.receivers();
    if id >= receivers {
        let sender = id - receivers;
        let (sink, mut stream) = ws.split();
        let _ = shared.ready_tx.send(Ok(Some((sender, sink))));
        let tally = receive(&mut stream, &shared, id, Some(sender)).await;
        let _ = shared.tally_tx.send(tally);
        std::future::pending::<()>().await;
    } else {
        let mut ws = ws;
        let _ = shared.ready_tx.send(Ok(None));
        let tally = receive(&mut ws, &shared, id, None).await;
        let _ = shared.tally_tx.send(tally);
        std::future::pending::<()>().await;
    }
}

async fn open(shared: &Shared) -> Result<Ws, String> {
    let tcp = TcpStream::connect(shared.target.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("set_nodelay: {e}"))?;
    let (mut ws, _response) = shared
        .builder
        .connect_on(tcp)
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    match ws.next().await {
        Some(Ok(message)) if message.as_text() == Some(WELCOME) => Ok(ws),
        Some(Ok(message)) => Err(format!("first message was not the welcome: {message:?}")),
        Some(Err(e)) => Err(format!("reading welcome: {e}")),
        None => Err("closed before the welcome".to_string()),
    }
}

/// Reads copies until every expected one arrived, the connection ends, or the run is cancelled.
/// `own` is the sender id whose window this connection's own copies release.
async fn receive<S>(stream: &mut S, shared: &Shared, id: usize, own: Option<usize>) -> Tally
where
    S: Stream<Item = Result<Message, tokio_websockets::Error>> + Unpin,
{
    let plan = &shared.plan;
    let expected = (plan.senders * plan.messages) as u64;
    let tag = shared.tag.as_bytes();
    let mut tally = Tally {
        latencies_us: Vec::with_capacity(expected as usize),
        ..Tally::default()
    };
    // Copies seen per (sender, seq), and the highest seq seen per sender.
    let mut seen = vec![0u8; plan.senders * plan.messages];
    let mut highest = vec![None::<usize>; plan.senders];
    // Own copies released so far: copies come back in send order, so seeing seq s also
    // releases the slots of earlier own messages that were lost.
    let mut acked = 0usize;
    let mut cancelled = pin!(shared.cancel.cancelled());
    while tally.unique < expected {
        let message = tokio::select! {
            biased;
            message = stream.next() => message,
            () = &mut cancelled => break,
        };
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                tally.ended = Some(format!("read error: {e}"));
                break;
            }
            None => {
                tally.ended = Some("closed by the server".to_string());
                break;
            }
        };
        if !message.is_text() {
            if message.is_close() {
                tally.ended = Some(format!("close frame: {:?}", message.as_close()));
                break;
            }
            continue;
        }
        match parse::classify(message.as_payload(), tag) {
            Incoming::Copy(Payload { sender, seq, ts })
                if sender < plan.senders && seq < plan.messages =>
            {
                let now = shared.now_ns();
                tally.copies += 1;
                tally.last_copy_ns = now;
                tally
                    .latencies_us
                    .push(u32::try_from(now.saturating_sub(ts) / 1000).unwrap_or(u32::MAX));
                let count = &mut seen[sender * plan.messages + seq];
                if *count > 0 {
                    tally.duplicates += 1;
                } else {
                    tally.unique += 1;
                    shared.progress[id].0.store(tally.unique, Ordering::Relaxed);
                }
                *count = count.saturating_add(1);
                match highest[sender] {
                    Some(high) if seq < high => tally.out_of_order += 1,
                    _ => highest[sender] = Some(seq),
                }
                if own == Some(sender) && seq >= acked {
                    shared.acks[sender].add_permits(seq + 1 - acked);
                    acked = seq + 1;
                }
            }
            Incoming::Notice { missed } => {
                tally.notices += 1;
                tally.missed += missed.unwrap_or(0);
            }
            Incoming::Copy(_) | Incoming::Other => tally.other += 1,
        }
    }
    tally
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

//! One connection of the load generator: connect (classic, or with `broadcast-chat.v1` and a
//! session for a client that will reconnect), count every copy, and for a reconnecting client,
//! drop abruptly mid-run, stay away, and resume where it left off.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::Stream;
use http::Uri;
use tokio::net::TcpStream;
use tokio_websockets::{ClientBuilder, Message};

use crate::load::{Shared, Tally, Ws};
use crate::parse::{self, Frame, Incoming, Payload};

/// The first message the server sends every client.
pub const WELCOME: &str = "Welcome to chat! Type a message";
/// Bound on one connection's TCP connect, upgrade and welcome message.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a connection's copies arrive.
enum Wire {
    /// Classic lines, parsed by byte scanning.
    Classic,
    /// `broadcast-chat.v1` frames with offsets.
    Structured(Position),
}

/// Where a structured connection stands in its room.
struct Position {
    /// The room's epoch, from the welcome.
    epoch: String,
    /// The last offset received; `None` after resuming into another epoch, until a message.
    last: Option<u64>,
    /// Between a resuming welcome and its `recovered` frame: messages come from the replay.
    replaying: bool,
}

/// A reconnecting client's session: its id, and where it resumes.
struct Session {
    id: String,
    resume: Option<(String, u64)>,
}

/// Opens connection `id` (the last `senders` ids are senders), reports it ready, receives until
/// done or cancelled (dropping and reconnecting once if the plan says so), reports its tally,
/// then holds the socket open until aborted.
pub async fn connection(id: usize, shared: Arc<Shared>) {
    let drop_after = shared.plan.reconnect_after(id);
    // A client that will drop speaks broadcast-chat.v1 if the server does, to resume.
    let mut session = drop_after.map(|_| Session {
        id: format!("{}c{id}", shared.tag),
        resume: None,
    });
    let opened = {
        let _permit = shared.connect_limit.acquire().await;
        open(&shared, id, session.as_ref()).await
    };
    let (ws, wire) = match opened {
        Ok(opened) => opened,
        Err(error) => {
            let _ = shared.ready_tx.send(Err(error));
            return;
        }
    };
    let receivers = shared.plan.receivers();
    let mut receiver = Receiver::new(&shared, id, drop_after);
    if id >= receivers {
        let sender = id - receivers;
        let (sink, mut stream) = ws.split();
        let _ = shared.ready_tx.send(Ok(Some((sender, sink))));
        receiver.own = Some(sender);
        receiver.receive(&mut stream, &mut Wire::Classic).await;
        let _ = shared.tally_tx.send(receiver.tally);
        std::future::pending::<()>().await;
    } else {
        let (mut ws, mut wire) = (ws, wire);
        let _ = shared.ready_tx.send(Ok(None));
        while let Stop::Drop = receiver.receive(&mut ws, &mut wire).await {
            // SO_LINGER 0 (set at connect): the close is a reset, with no close frame.
            drop(ws);
            receiver.tally.drops += 1;
            if let (Some(session), Wire::Structured(position)) = (&mut session, &wire) {
                session.resume = position.last.map(|last| (position.epoch.clone(), last));
            }
            let away = shared.plan.reconnect.map_or(Duration::ZERO, |r| r.away);
            let back = async {
                tokio::time::sleep(away).await;
                open(&shared, id, session.as_ref()).await
            };
            let reopened = tokio::select! {
                reopened = back => reopened,
                () = shared.cancel.cancelled() => Err("cancelled while away".to_owned()),
            };
            match reopened {
                Ok(reopened) => {
                    (ws, wire) = reopened;
                    receiver.tally.reconnects += 1;
                    receiver.back = true;
                    if matches!(wire, Wire::Structured(_)) {
                        receiver.tally.resumed += 1;
                    }
                }
                Err(error) => {
                    receiver.tally.ended = Some(format!("reconnecting: {error}"));
                    break;
                }
            }
        }
        let _ = shared.tally_tx.send(receiver.tally);
        std::future::pending::<()>().await;
    }
}

/// Connects connection `id` to its instance (the same every time), upgrades and reads the
/// welcome within [`CONNECT_TIMEOUT`]: as a classic client, or with `session` asking for
/// `broadcast-chat.v1` (and resuming where the session says), classic again if the server does
/// not answer with the subprotocol.
async fn open(shared: &Shared, id: usize, session: Option<&Session>) -> Result<(Ws, Wire), String> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect(shared, id, session))
        .await
        .unwrap_or_else(|_| Err(format!("no welcome within {CONNECT_TIMEOUT:?}")))
}

async fn connect(
    shared: &Shared,
    id: usize,
    session: Option<&Session>,
) -> Result<(Ws, Wire), String> {
    let instance = shared.instance_of(id);
    let target = &shared.targets[instance];
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("set_nodelay: {e}"))?;
    let upgraded = match session {
        None => shared.builders[instance].connect_on(tcp).await,
        Some(session) => {
            // Zero linger never blocks (the deprecation is about a positive one): dropping
            // this connection resets it, as a client that vanishes does.
            #[allow(deprecated)]
            tcp.set_linger(Some(Duration::ZERO))
                .map_err(|e| format!("set_linger: {e}"))?;
            structured_builder(&target.uri, session)?
                .connect_on(tcp)
                .await
        }
    };
    let (mut ws, response) = upgraded.map_err(|e| format!("upgrade: {e}"))?;
    let first = match ws.next().await {
        Some(Ok(message)) => message,
        Some(Err(e)) => return Err(format!("reading welcome: {e}")),
        None => return Err("closed before the welcome".to_string()),
    };
    let text = first.as_text().unwrap_or_default();
    let answered = response
        .headers()
        .get(http::header::SEC_WEBSOCKET_PROTOCOL)
        .is_some_and(|v| v.as_bytes() == parse::SUBPROTOCOL.as_bytes());
    let Some(session) = session.filter(|_| answered) else {
        return if text == WELCOME {
            Ok((ws, Wire::Classic))
        } else {
            Err(format!("first message was not the welcome: {first:?}"))
        };
    };
    let Frame::Welcome { epoch, offset } = parse::frame(text, b"") else {
        return Err(format!("first frame was not the welcome: {first:?}"));
    };
    let position = match &session.resume {
        // The replay follows, from the offset after ours.
        Some((ours, after)) if *ours == epoch => Position {
            epoch,
            last: Some(*after),
            replaying: true,
        },
        // The room is not the one we left: the replay starts wherever its log does.
        Some(_) => Position {
            epoch,
            last: None,
            replaying: true,
        },
        None => Position {
            epoch,
            last: Some(offset),
            replaying: false,
        },
    };
    Ok((ws, Wire::Structured(position)))
}

/// The upgrade of a client that asks for `broadcast-chat.v1` with `session`'s id, resuming where
/// the session says: `base` with the session's query.
fn structured_builder(base: &Uri, session: &Session) -> Result<ClientBuilder<'static>, String> {
    let target = parse::session_target(
        base.path_and_query().map_or("/", |p| p.as_str()),
        &session.id,
        session
            .resume
            .as_ref()
            .map(|(epoch, after)| (epoch.as_str(), *after)),
    );
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(target.parse().map_err(|e| format!("{target:?}: {e}"))?);
    let uri = Uri::from_parts(parts).map_err(|e| format!("{target:?}: {e}"))?;
    ClientBuilder::from_uri(uri)
        .add_header(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(parse::SUBPROTOCOL),
        )
        .map_err(|e| format!("header: {e}"))
}

/// Why a receive loop returned.
enum Stop {
    /// Every expected copy arrived, the connection ended, or the run was cancelled.
    Finished,
    /// The plan's drop point was reached: this client drops its connection now.
    Drop,
}

/// One client's count of copies, kept across its connections so that loss, duplicates and
/// order are judged over all of them.
struct Receiver<'a> {
    shared: &'a Shared,
    id: usize,
    /// The sender id whose window this connection's own copies release.
    own: Option<usize>,
    expected: u64,
    tally: Tally,
    /// Copies seen per (sender, seq), and the highest seq seen per sender.
    seen: Vec<u8>,
    highest: Vec<Option<usize>>,
    /// Own copies released so far: copies come back in send order, so seeing seq s also
    /// releases the slots of earlier own messages that were lost.
    acked: usize,
    /// Drop the connection once a copy with this seq or a later one arrived (once).
    drop_after: Option<usize>,
    /// Whether this client dropped and came back: its copies since are "live after".
    back: bool,
}

impl<'a> Receiver<'a> {
    fn new(shared: &'a Shared, id: usize, drop_after: Option<usize>) -> Self {
        let plan = &shared.plan;
        let expected = (plan.senders * plan.messages) as u64;
        Self {
            shared,
            id,
            own: None,
            expected,
            tally: Tally {
                latencies_us: Vec::with_capacity(expected as usize),
                ..Tally::default()
            },
            seen: vec![0u8; plan.senders * plan.messages],
            highest: vec![None; plan.senders],
            acked: 0,
            drop_after,
            back: false,
        }
    }

    /// Reads copies until every expected one arrived, the connection ends, the run is
    /// cancelled, or the drop point is reached.
    async fn receive<S>(&mut self, stream: &mut S, wire: &mut Wire) -> Stop
    where
        S: Stream<Item = Result<Message, tokio_websockets::Error>> + Unpin,
    {
        let shared = self.shared;
        let tag = shared.tag.as_bytes();
        let mut cancelled = pin!(shared.cancel.cancelled());
        while self.tally.unique < self.expected {
            let message = tokio::select! {
                biased;
                message = stream.next() => message,
                () = &mut cancelled => break,
            };
            let message = match message {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    self.tally.ended = Some(format!("read error: {e}"));
                    break;
                }
                None => {
                    self.tally.ended = Some("closed by the server".to_string());
                    break;
                }
            };
            if !message.is_text() {
                if message.is_close() {
                    self.tally.ended = Some(format!("close frame: {:?}", message.as_close()));
                    break;
                }
                continue;
            }
            let copy = match wire {
                Wire::Classic => match parse::classify(message.as_payload(), tag) {
                    Incoming::Copy(copy) => Some(copy),
                    Incoming::Notice { missed } => {
                        self.tally.notices += 1;
                        self.tally.missed += missed.unwrap_or(0);
                        None
                    }
                    Incoming::Other => {
                        self.tally.other += 1;
                        None
                    }
                },
                Wire::Structured(position) => {
                    let text = message.as_text().unwrap_or_default();
                    self.structured(parse::frame(text, tag), position)
                }
            };
            let Some(copy) = copy else { continue };
            if !self.count(copy, matches!(wire, Wire::Structured(p) if p.replaying)) {
                continue;
            }
            if self.drop_after.is_some_and(|after| copy.seq >= after) {
                self.drop_after = None;
                return Stop::Drop;
            }
        }
        Stop::Finished
    }

    /// Acts on a structured frame; returns the bench copy a message frame carries.
    fn structured(&mut self, frame: Frame, position: &mut Position) -> Option<Payload> {
        let tally = &mut self.tally;
        match frame {
            Frame::Message { offset, copy } => {
                if let Some(last) = position.last
                    && offset != last + 1
                {
                    if offset > last {
                        tally.skipped_offsets += offset - last - 1;
                    } else {
                        tally.repeated_offsets += 1;
                    }
                    tally.first_offset_skip.get_or_insert_with(|| {
                        format!(
                            "connection {} ({}) got offset {offset} after {last}",
                            self.id,
                            where_(self.back, position.replaying)
                        )
                    });
                }
                position.last = Some(offset);
                if copy.is_none() {
                    tally.other += 1;
                }
                copy
            }
            Frame::Recovered {
                complete,
                missed,
                restarted,
            } => {
                position.replaying = false;
                if !complete || restarted {
                    tally.incomplete += 1;
                    tally.announced_lost += missed;
                }
                None
            }
            Frame::Notice { count } => {
                tally.notices += 1;
                tally.missed += count.unwrap_or(0);
                tally.announced_lost += count.unwrap_or(0);
                None
            }
            Frame::Welcome { .. } | Frame::Ack { .. } | Frame::Other => {
                tally.other += 1;
                None
            }
        }
    }

    /// Counts a copy; `false` if it is not one of this run's messages.
    fn count(&mut self, copy: Payload, replayed: bool) -> bool {
        let plan = &self.shared.plan;
        let Payload { sender, seq, ts } = copy;
        if sender >= plan.senders || seq >= plan.messages {
            self.tally.other += 1;
            return false;
        }
        let tally = &mut self.tally;
        let now = self.shared.now_ns();
        tally.copies += 1;
        tally.last_copy_ns = now;
        tally
            .latencies_us
            .push(u32::try_from(now.saturating_sub(ts) / 1000).unwrap_or(u32::MAX));
        if replayed {
            tally.replayed += 1;
        } else if self.back {
            tally.live_after += 1;
        }
        let count = &mut self.seen[sender * plan.messages + seq];
        let disorder = if *count > 0 {
            tally.duplicates += 1;
            Some("a second time")
        } else {
            tally.unique += 1;
            self.shared.progress[self.id]
                .0
                .store(tally.unique, Ordering::Relaxed);
            None
        };
        *count = count.saturating_add(1);
        let disorder = match self.highest[sender] {
            Some(high) if seq < high => {
                tally.out_of_order += 1;
                disorder.or(Some("after a later one"))
            }
            _ => {
                self.highest[sender] = Some(seq);
                disorder
            }
        };
        if let Some(how) = disorder {
            tally.first_disorder.get_or_insert_with(|| {
                format!(
                    "connection {} ({}) got seq {seq} of sender {sender} {how}",
                    self.id,
                    where_(self.back, replayed)
                )
            });
        }
        if self.own == Some(sender) && seq >= self.acked {
            self.shared.acks[sender].add_permits(seq + 1 - self.acked);
            self.acked = seq + 1;
        }
        true
    }
}

/// Where a copy arrived, for the notes: on which connection of a client, replayed or live.
fn where_(back: bool, replaying: bool) -> &'static str {
    match (back, replaying) {
        (false, _) => "first connection",
        (true, true) => "after reconnecting, replayed",
        (true, false) => "after reconnecting, live",
    }
}

//! The chat loop: the client's frames go to the hub (through the rate limit), the
//! hub's messages to the client (with the write delay, `write_delay.rs`), a quiet
//! client is pinged (`keepalive.rs`). Shutdown arrives through the room's channel,
//! which the hub closes: nothing else to poll on every wake-up.

use std::future::Future;
use std::pin::{Pin, pin};

use futures_util::stream::FuturesOrdered;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;
use tokio_websockets::{CloseCode, Message, WebSocketStream};

use super::frames::Frames;
use super::keepalive::{Keepalive, Tick};
use super::outbox::{self, Outbox};
use super::write_delay::WriteDelay;
use super::{Dropped, End, bounded};
use crate::hub::{Delivery, Format, Membership, NotAccepted, Published, Submitted};
use crate::limits::{RateLimit, Verdict};
use crate::protocol::structured::{ClientFrame, ErrorCode};
use crate::protocol::{self, WHO_COMMAND, classic};
use crate::state::ConnectionGuard;

/// Most lines a session has on their way to the room (with Redis) before it reads
/// no more of its client's frames until one is through.
const MAX_PENDING: usize = 64;

/// Lines on their way to the room, in the order sent, with their ids.
type Pending = FuturesOrdered<
    Pin<Box<dyn Future<Output = (Option<u64>, Result<Published, NotAccepted>)> + Send>>,
>;

/// What the client's signed token lets it do, decided at the upgrade: the token
/// is never looked at again.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rights {
    /// Whether its lines reach the room (false: read-only).
    pub(super) may_send: bool,
    /// When its token expires; the session is closed with 4001 then.
    pub(super) expires: Option<Instant>,
}

impl Rights {
    /// Everything, for good: no signed token.
    pub(super) const ALL: Rights = Rights {
        may_send: true,
        expires: None,
    };
}

/// One session's chat.
pub(super) struct Chat<'a> {
    /// The session's place in its room.
    pub(super) membership: &'a Membership,
    /// The server's shared state and this connection's count.
    pub(super) guard: &'a ConnectionGuard,
    /// Frames in the client's format.
    pub(super) frames: Frames,
    /// What its token lets it do.
    rights: Rights,
    /// The client's rate limit.
    rate: RateLimit,
    /// Lines on their way to the room (with Redis), oldest first: the session
    /// reads on meanwhile, up to a bound, and acknowledges each in order.
    pending: Pending,
    /// Whether a classic client was told that its line was not accepted, since
    /// its last line that was: it is told once, not once a line.
    told_not_accepted: bool,
}

impl<'a> Chat<'a> {
    /// The chat of the client that `membership` and `guard` stand for, in `frames`,
    /// with its token's `rights`.
    pub(super) fn new(
        membership: &'a Membership,
        guard: &'a ConnectionGuard,
        frames: Frames,
        rights: Rights,
    ) -> Self {
        let config = &guard.shared().config;
        Self {
            membership,
            guard,
            frames,
            rights,
            rate: RateLimit::new(
                config.max_rate,
                config.max_burst,
                config.flood_timeout,
                Instant::now(),
            ),
            pending: Pending::new(),
            told_not_accepted: false,
        }
    }

    /// Runs until the client leaves, breaks the rules, or the server shuts down.
    pub(super) async fn run<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        rx: &mut broadcast::Receiver<Delivery>,
        outbox: &mut Outbox<'_>,
    ) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = &self.guard.shared().config;
        let mut keepalive = pin!(Keepalive::new(config.ping_interval));
        let mut delay = WriteDelay::new(config.write_delay);
        // One timer for the token's expiry, never reset; boxed, and only with a
        // signed token, so that other sessions' tasks are no bigger for it.
        let mut expiry = self
            .rights
            .expires
            .map(|at| Box::pin(tokio::time::sleep_until(at)));
        loop {
            // A rest does not keep back the client's own line: its copy is how a
            // sender learns it went through, and a sender waiting on it waits the
            // whole room.
            let listen = !delay.resting() || outbox.echo_due();
            // What each branch then does is boxed: the largest of them (a batch
            // written, a frame taken) would otherwise take room in every session's
            // task for good, idle ones' too (about 1 kB each; `idle` in the
            // benchmark). A box costs tens of nanoseconds; the write it goes with,
            // microseconds.
            //
            // The client's frames first: a sender's line goes out before the session
            // writes what it has for its client, which keeps a busy room moving.
            // The channel cannot starve the client's frames (they come first), and
            // the frames cannot starve the channel: the rate limit ends a flood.
            let result = tokio::select! {
                biased;
                frame = ws.next(), if self.pending.len() < MAX_PENDING => {
                    keepalive.as_mut().heard();
                    Box::pin(self.frame(ws, frame, outbox)).await
                }
                received = rx.recv(), if listen => match received {
                    Err(RecvError::Closed) => return outbox::channel_closed(),
                    received => Box::pin(outbox.deliver(ws, rx, received, self.membership))
                        .await
                        .map(|wrote| delay.wrote(wrote)),
                },
                () = delay.rest(), if delay.resting() => Ok(()),
                Some((id, published)) = self.pending.next(), if !self.pending.is_empty() => {
                    Box::pin(self.published(ws, id, published)).await
                }
                () = async {
                    match expiry.as_mut() {
                        Some(expiry) => expiry.await,
                        None => std::future::pending().await,
                    }
                }, if expiry.is_some() => {
                    // Told first, so that the client knows not to come back with it.
                    let expired = pin!(ws.send(self.frames.expired()));
                    let _ = Box::pin(bounded(config.write_timeout, expired)).await;
                    return End::Expired;
                }
                tick = keepalive.as_mut().tick() => match tick {
                    Tick::Heard => Ok(()),
                    Tick::Ping => {
                        let ping = Some(Message::ping(bytes::Bytes::new()));
                        Box::pin(self.reply(ws, ping)).await
                    }
                    // Its frames, the pong among them, go unread while its lines
                    // wait on the store (a data directory taking no writes): the
                    // silence is ours, not the client's.
                    Tick::Silent if self.pending.len() >= MAX_PENDING => Ok(()),
                    Tick::Silent => return End::Dropped(Dropped::Keepalive),
                },
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    /// Acts on what the client sent: a text frame goes through the rate limit; a
    /// binary frame, a close or a broken connection ends the chat; pings and pongs
    /// only prove the client alive (the library answers pings).
    async fn frame<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        frame: Option<Result<Message, tokio_websockets::Error>>,
        outbox: &mut Outbox<'_>,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let message = match frame {
            Some(Ok(message)) => message,
            Some(Err(tokio_websockets::Error::Io(_))) | None => {
                return Err(End::Dropped(Dropped::Lost));
            }
            Some(Err(e)) => return Err(End::ProtocolError(e)),
        };
        let Some(text) = message.as_text() else {
            return if message.is_binary() {
                Err(End::Close(
                    CloseCode::UNSUPPORTED_DATA,
                    protocol::REASON_BINARY,
                ))
            } else if message.is_close() {
                Err(End::ClosedByClient)
            } else {
                Ok(())
            };
        };
        match self.rate.check(Instant::now()) {
            Verdict::Pass => self.take(ws, text, outbox).await,
            Verdict::Drop(notice) => {
                self.guard.shared().metrics.rate_limited.increment(1);
                let notice =
                    notice.map(|(dropped, notice)| self.frames.slowed_down(dropped, notice));
                self.reply(ws, notice).await
            }
            Verdict::Close => Err(End::Close(
                CloseCode::POLICY_VIOLATION,
                protocol::REASON_FLOOD,
            )),
        }
    }

    /// Acts on a text frame the rate limit let through: a line for the room, a
    /// question, or (structured) a frame that was not understood.
    async fn take<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        text: &str,
        outbox: &mut Outbox<'_>,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let line = match self.frames.0 {
            Format::Classic if text == WHO_COMMAND => {
                let who = self.frames.who(&self.membership.members().await);
                return self.reply(ws, Some(who)).await;
            }
            Format::Classic if !self.rights.may_send => Err(self
                .frames
                .error(ErrorCode::ReadOnly, classic::READ_ONLY_TEXT)),
            Format::Classic => Ok((None, std::borrow::Cow::Borrowed(text))),
            Format::Structured => match ClientFrame::parse(text) {
                Ok(ClientFrame::Send { .. }) if !self.rights.may_send => Err(self
                    .frames
                    .error(ErrorCode::ReadOnly, classic::READ_ONLY_TEXT)),
                Ok(ClientFrame::Send { id, text }) => Ok((Some(id), text)),
                Ok(ClientFrame::Who) => Err(self.frames.who(&self.membership.members().await)),
                Err(bad) => Err(self.frames.error(bad.code, &bad.text)),
            },
        };
        let (id, text) = match line {
            Ok(line) => line,
            Err(reply) => return self.reply(ws, Some(reply)).await,
        };
        outbox.expect_echo();
        match self.membership.submit(&text, id) {
            // While earlier lines are on their way, this one waits its turn.
            Submitted::Done(published) if self.pending.is_empty() => {
                self.published(ws, id, published).await
            }
            Submitted::Done(published) => {
                self.pending
                    .push_back(Box::pin(std::future::ready((id, published))));
                Ok(())
            }
            Submitted::Later(published) => {
                self.pending
                    .push_back(Box::pin(async move { (id, published.await) }));
                Ok(())
            }
        }
    }

    /// A line reached the room: counts it and, for a structured client, says so.
    /// A line the room's log refused: the client is told (a classic one once until
    /// a line of its is accepted again; a structured one, in order, for each).
    async fn published<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        id: Option<u64>,
        published: Result<Published, NotAccepted>,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let reply = match published {
            Ok(published) => {
                if !published.duplicate {
                    self.guard.shared().metrics.received.increment(1);
                }
                self.told_not_accepted = false;
                id.and_then(|id| self.frames.ack(id, published))
            }
            Err(NotAccepted) => {
                self.guard.shared().metrics.not_accepted.increment(1);
                match self.frames.0 {
                    Format::Classic if std::mem::replace(&mut self.told_not_accepted, true) => None,
                    _ => Some(
                        self.frames
                            .error(ErrorCode::NotAccepted, classic::NOT_ACCEPTED_TEXT),
                    ),
                }
            }
        };
        self.reply(ws, reply).await
    }

    /// Writes `reply` to the client, if there is one.
    async fn reply<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        reply: Option<Message>,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match reply {
            Some(reply) => {
                let limit = self.guard.shared().config.write_timeout;
                bounded(limit, pin!(ws.send(reply))).await
            }
            None => Ok(()),
        }
    }
}

//! The chat loop: the client's frames go to the hub, the hub's messages to the
//! client, a quiet client is pinged. Shutdown arrives through the room's channel,
//! which the hub closes: nothing else to poll on every wake-up.

use std::pin::pin;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::time::Instant;
use tokio_websockets::{CloseCode, Message, WebSocketStream};

use super::frames::Frames;
use super::outbox::{self, Outbox};
use super::{Dropped, End, bounded};
use crate::hub::{Delivery, Format, Membership};
use crate::limits::{RateLimit, Verdict};
use crate::protocol::structured::ClientFrame;
use crate::protocol::{self, WHO_COMMAND};
use crate::state::ConnectionGuard;

/// One session's chat.
pub(super) struct Chat<'a> {
    /// The session's place in its room.
    pub(super) membership: &'a Membership,
    /// The server's shared state and this connection's count.
    pub(super) guard: &'a ConnectionGuard,
    /// Frames in the client's format.
    pub(super) frames: Frames,
}

impl Chat<'_> {
    /// Runs until the client leaves, breaks the rules, or the server shuts down.
    pub(super) async fn run<S>(
        &self,
        ws: &mut WebSocketStream<S>,
        rx: &mut broadcast::Receiver<Delivery>,
        outbox: &mut Outbox<'_>,
    ) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let config = &self.guard.shared().config;
        let metrics = &self.guard.shared().metrics;
        // One timer, made once and moved on at each tick.
        let mut keepalive = pin!(tokio::time::sleep(config.ping_interval));
        // Whether the client sent anything since the last tick, and whether a ping
        // is waiting for an answer.
        let (mut heard, mut ping_sent) = (false, false);
        let mut rate = RateLimit::new(
            config.max_rate,
            config.max_burst,
            config.flood_timeout,
            Instant::now(),
        );
        // With a write delay, after each write the channel is left alone until the
        // delay is over: what arrives meanwhile waits in it, and goes in one write.
        let delay = config.write_delay;
        let mut resting = pin!(tokio::time::sleep_until(Instant::now()));
        let mut rest = false;

        loop {
            // The client's frames first: a sender's line goes out before the session
            // writes what it has for its client, which keeps a busy room moving.
            // The channel cannot starve the client's frames (they come first), and
            // the frames cannot starve the channel: the rate limit ends a flood.
            let result = tokio::select! {
                biased;
                frame = ws.next() => {
                    heard = true;
                    match frame {
                        Some(Ok(message)) => match message.as_text() {
                            Some(text) => match rate.check(Instant::now()) {
                                Verdict::Pass => self.take(ws, text).await,
                                Verdict::Drop(Some((dropped, notice))) => {
                                    metrics.rate_limited.increment(1);
                                    let notice = self.frames.slowed_down(dropped, notice);
                                    bounded(config.write_timeout, ws.send(notice)).await
                                }
                                Verdict::Drop(None) => {
                                    metrics.rate_limited.increment(1);
                                    Ok(())
                                }
                                Verdict::Close => return End::Close(CloseCode::POLICY_VIOLATION, protocol::REASON_FLOOD),
                            },
                            None if message.is_binary() => return End::Close(CloseCode::UNSUPPORTED_DATA, protocol::REASON_BINARY),
                            None if message.is_close() => return End::ClosedByClient,
                            // Pings and pongs only prove the client alive; the library answers pings.
                            None => Ok(()),
                        },
                        Some(Err(tokio_websockets::Error::Io(_))) | None => return End::Dropped(Dropped::Lost),
                        Some(Err(e)) => return End::ProtocolError(e),
                    }
                }
                received = rx.recv(), if !rest => match received {
                    Err(RecvError::Closed) => return outbox::channel_closed(),
                    received => {
                        let delivered = outbox.deliver(ws, rx, received, self.membership).await;
                        if !delay.is_zero() {
                            resting.as_mut().reset(Instant::now() + delay);
                            rest = true;
                        }
                        delivered
                    }
                },
                () = &mut resting, if rest => {
                    rest = false;
                    Ok(())
                }
                () = &mut keepalive => {
                    keepalive.as_mut().reset(Instant::now() + config.ping_interval);
                    if heard {
                        (heard, ping_sent) = (false, false);
                        Ok(())
                    } else if ping_sent {
                        return End::Dropped(Dropped::Keepalive);
                    } else {
                        ping_sent = true;
                        bounded(config.write_timeout, ws.send(Message::ping(bytes::Bytes::new()))).await
                    }
                }
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    /// Acts on a text frame the rate limit let through: a line for the room, a
    /// question, or (structured) a frame that was not understood.
    async fn take<S>(&self, ws: &mut WebSocketStream<S>, text: &str) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let reply = match self.frames.0 {
            Format::Classic if text == WHO_COMMAND => {
                Some(self.frames.who(&self.membership.members().await))
            }
            Format::Classic => {
                self.membership.publish(text, None).await;
                self.guard.shared().metrics.received.increment(1);
                None
            }
            Format::Structured => match ClientFrame::parse(text) {
                Ok(ClientFrame::Send { id, text }) => {
                    let published = self.membership.publish(&text, Some(id)).await;
                    if !published.duplicate {
                        self.guard.shared().metrics.received.increment(1);
                    }
                    self.frames.ack(id, published)
                }
                Ok(ClientFrame::Who) => Some(self.frames.who(&self.membership.members().await)),
                Err(bad) => Some(self.frames.error(bad.code, &bad.text)),
            },
        };
        match reply {
            Some(reply) => {
                let limit = self.guard.shared().config.write_timeout;
                bounded(limit, ws.send(reply)).await
            }
            None => Ok(()),
        }
    }
}

//! The room's messages on their way to one client: each once, in offset order, live
//! from the channel, and from the room's log when the session fell behind the
//! channel or a returning client has something to catch up on. A burst costs one
//! write, not one per message.

use std::pin::pin;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_websockets::{CloseCode, Message, WebSocketStream};

use tracing::debug;

use super::frames::Frames;
use super::{End, bounded};
use crate::hub::{Delivery, Membership, Recovery, SenderId, stamp};
use crate::metrics::Metrics;
use crate::protocol::structured::NoticeKind;
use crate::protocol::{self, Epoch};

/// What to do with one delivery.
#[derive(Debug)]
enum Step {
    /// Write it: it is the next one.
    Write(Message),
    /// Pass it over: delivered already, or our own with no-echo.
    Skip,
    /// Messages before it are missing here: catch up from the log first.
    Gap(Delivery),
}

/// What one batch wrote, and why it stopped.
#[derive(Debug)]
struct Batch {
    /// Messages written.
    written: u64,
    /// It stopped at the most messages in one write, with more waiting.
    full: bool,
    /// It stopped at a message that cannot be written yet.
    behind: Option<Behind>,
}

/// Why a batch stopped short of the channel's end.
#[derive(Debug)]
enum Behind {
    /// A message came before the ones it follows.
    Gap(Delivery),
    /// A message of a new epoch: the room's log began again.
    NewEpoch(Delivery),
}

/// What a call to [`Outbox::deliver`] wrote, for the write delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wrote {
    /// Nothing: every message was passed over.
    Nothing,
    /// Everything the channel held: a rest may gather what comes next.
    Emptied,
    /// A full batch, or a catch-up from the log: more is waiting already.
    MoreWaiting,
}

/// One session's position in its room, and how it writes.
#[derive(Debug)]
pub(super) struct Outbox<'a> {
    /// The epoch of the room's log that `last` counts in.
    epoch: Epoch,
    /// The last offset delivered (or passed over).
    last: u64,
    /// Our own id, whether our own messages are passed over (no-echo), and whether
    /// a line of ours is on its way back to us: the echo is a sender's
    /// acknowledgement, so it is not kept back by a write delay.
    me: SenderId,
    no_echo: bool,
    echo_due: bool,
    /// Most messages in one write.
    max_batch: usize,
    /// Most messages read from the log at once: what the room's channel holds.
    read_batch: usize,
    /// Time one write may take.
    write_timeout: Duration,
    /// Frames in the client's format, for the missed-count notice.
    frames: Frames,
    /// What is counted: deliveries, their latency, lags, replays, misses.
    metrics: &'a Metrics,
}

impl<'a> Outbox<'a> {
    /// An outbox that has delivered everything up to `last` of `epoch`.
    pub(super) fn new(
        epoch: Epoch,
        last: u64,
        me: SenderId,
        config: &crate::ServerConfig,
        frames: Frames,
        metrics: &'a Metrics,
    ) -> Self {
        Self {
            metrics,
            epoch,
            last,
            me,
            no_echo: config.no_echo,
            echo_due: false,
            max_batch: config.max_batch.max(1),
            read_batch: config.buffer.max(config.max_batch).max(1),
            write_timeout: config.write_timeout,
            frames,
        }
    }

    /// Decides about `delivery` and moves the position past it unless it is a gap.
    /// A message that is not in the log (offset 0) is written as it comes.
    fn step(&mut self, delivery: Delivery) -> Step {
        let ours = delivery.from == self.me;
        if ours {
            self.echo_due = false;
        }
        if delivery.offset == 0 {
            return match ours && self.no_echo {
                true => Step::Skip,
                false => Step::Write(delivery.message),
            };
        }
        if delivery.offset <= self.last {
            return Step::Skip;
        }
        if delivery.offset > self.last + 1 {
            return Step::Gap(delivery);
        }
        self.last = delivery.offset;
        if ours && self.no_echo {
            Step::Skip
        } else {
            Step::Write(delivery.message)
        }
    }

    /// Writes what the channel gave (`first`) and whatever else it already holds, a
    /// batch per flush. A lag or a gap is filled from the log on the way. Returns
    /// what it wrote: whether a write delay may rest the session now depends on it
    /// (after a full batch or a catch-up more is waiting already, and after nothing
    /// there is nothing to wait after).
    pub(super) async fn deliver<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        rx: &mut broadcast::Receiver<Delivery>,
        first: Result<Delivery, RecvError>,
        membership: &Membership,
    ) -> Result<Wrote, End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let batch = self.write_batch(ws, rx, first).await?;
        let Some(behind) = batch.behind else {
            return Ok(match batch {
                Batch { full: true, .. } => Wrote::MoreWaiting,
                Batch { written: 0, .. } => Wrote::Nothing,
                _ => Wrote::Emptied,
            });
        };
        // Boxed: a session falls behind rarely, and its catch-up (a read of the log,
        // through Redis a round trip) would otherwise take room in every session's
        // task for good, whether it ever falls behind or not.
        Box::pin(self.recover(ws, membership, behind)).await?;
        // Caught up, it writes one more batch of what the channel holds now and says
        // that more is waiting: a rest right after a catch-up would only let the
        // session fall behind again.
        let Some(next) = try_next(rx) else {
            return Ok(Wrote::MoreWaiting);
        };
        if let Some(behind) = self.write_batch(ws, rx, next).await?.behind {
            Box::pin(self.recover(ws, membership, behind)).await?;
        }
        Ok(Wrote::MoreWaiting)
    }

    /// Writes `first` and what the channel already holds after it, up to a batch,
    /// with one flush; stops short at a message that cannot be written yet.
    async fn write_batch<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        rx: &mut broadcast::Receiver<Delivery>,
        first: Result<Delivery, RecvError>,
    ) -> Result<Batch, End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut next = first;
        let mut batch = Batch {
            written: 0,
            full: false,
            behind: None,
        };
        let mut oldest = 0;
        let limit = self.write_timeout;
        let write = async {
            loop {
                match next {
                    Ok(delivery) if delivery.offset > 0 && delivery.epoch != self.epoch => {
                        batch.behind = Some(Behind::NewEpoch(delivery));
                        break;
                    }
                    Ok(delivery) => {
                        let accepted = delivery.accepted;
                        match self.step(delivery) {
                            Step::Write(message) => {
                                ws.feed(message).await?;
                                if batch.written == 0 {
                                    oldest = accepted;
                                }
                                batch.written += 1;
                            }
                            Step::Skip => {}
                            Step::Gap(delivery) => {
                                batch.behind = Some(Behind::Gap(delivery));
                                break;
                            }
                        }
                    }
                    // The channel moved on without us: the next message it holds
                    // shows the gap, and what is missing comes from the log then,
                    // no more than the channel lost.
                    Err(RecvError::Lagged(_)) => {
                        self.metrics.lags.increment(1);
                        debug!(
                            after = self.last,
                            "fell behind the channel; catching up from the log"
                        );
                    }
                    Err(RecvError::Closed) => break,
                }
                if batch.written >= self.max_batch as u64 {
                    batch.full = true;
                    break;
                }
                next = match try_next(rx) {
                    Some(next) => next,
                    None => break,
                };
            }
            ws.flush().await
        };
        bounded(limit, pin!(write)).await?;
        if batch.written > 0 {
            self.metrics.deliveries.add(batch.written);
            let waited = Duration::from_nanos(stamp().saturating_sub(oldest));
            self.metrics.latency.record(waited);
        }
        Ok(batch)
    }

    /// Writes a message that could not be written in its batch: first, for a new
    /// epoch, that the room's log began again; then what the log holds before it and
    /// the count of what it no longer holds; then the message.
    async fn recover<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        membership: &Membership,
        behind: Behind,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let delivery = match behind {
            // The room's log began again (its store lost it): say so, and go on from
            // the start of the new one.
            Behind::NewEpoch(delivery) => {
                bounded(self.write_timeout, pin!(ws.send(self.frames.restarted()))).await?;
                (self.epoch, self.last) = (delivery.epoch, 0);
                delivery
            }
            Behind::Gap(delivery) => delivery,
        };
        // What comes before the message that arrived, first, then it.
        if delivery.offset > self.last + 1 {
            self.catch_up(ws, membership, delivery.offset - 1, true)
                .await?;
        }
        // What the log could not give (it was out of reach) is counted and said.
        if delivery.offset > self.last + 1 {
            let missed = delivery.offset - self.last - 1;
            self.last += missed;
            self.metrics.missed.increment(missed);
            bounded(
                self.write_timeout,
                pin!(ws.send(self.frames.missed(missed))),
            )
            .await?;
        }
        if let Step::Write(message) = self.step(delivery) {
            bounded(self.write_timeout, pin!(ws.send(message))).await?;
            self.metrics.deliveries.add(1);
        }
        Ok(())
    }

    /// Greets a client that just joined: the welcome, then what the log holds for
    /// it after `replay_after` up to `head` (history, or what a returning client
    /// missed), then how its resumption went, if it asked to resume. Live traffic
    /// follows.
    pub(super) async fn greet<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        membership: &Membership,
        head: u64,
        recovery: Option<Recovery>,
        no_echo: bool,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let welcome = self.frames.welcome(
            membership.room(),
            self.epoch,
            head,
            membership.who(),
            !no_echo,
        );
        bounded(self.write_timeout, pin!(ws.send(welcome))).await?;
        // What the log let go while we replayed is part of what the returning client
        // missed (for a newcomer, a gap in the history, which it was not there for).
        let lost = self.catch_up(ws, membership, head, false).await?;
        // What the log no longer held at the join is counted here, what it let go
        // during the replay by the catch-up.
        if let Some(Recovery::Missed(missed)) = recovery {
            self.metrics.missed.increment(missed);
        }
        if let Some(recovered) = recovery
            .map(|r| r.and_missed(lost))
            .and_then(|r| self.frames.recovered(r))
        {
            bounded(self.write_timeout, pin!(ws.send(recovered))).await?;
        }
        // A newcomer while the store cannot log (a data directory that takes no
        // writes, Redis out of reach) learns it as the members did: its lines
        // will wait.
        if let Some(text) = membership.store_delaying() {
            let notice = self.frames.notice(NoticeKind::Delayed, text);
            bounded(self.write_timeout, pin!(ws.send(notice))).await?;
        }
        Ok(())
    }

    /// Writes what the room's log holds after our position, up to `until`, reading
    /// as much at once as the room's channel holds (with Redis each read is a round
    /// trip) and writing it a batch per flush. Messages the log no longer holds
    /// are counted exactly, and reported to the client if `report` (otherwise the
    /// caller says it its own way); returns how many there were.
    pub(super) async fn catch_up<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        membership: &Membership,
        until: u64,
        report: bool,
    ) -> Result<u64, End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut missed = 0;
        while self.last < until {
            let wanted = usize::try_from(until - self.last)
                .map_or(self.read_batch, |n| n.min(self.read_batch));
            // The log out of reach (Redis): go on live; a gap is counted when it shows.
            let Some(read) = membership.read_after(self.last, wanted).await else {
                break;
            };
            let more = !read.deliveries.is_empty();
            let limit = self.write_timeout;
            self.last += read.missed;
            missed += read.missed;
            self.metrics.missed.increment(read.missed);
            let mut notice = (report && read.missed > 0).then(|| self.frames.missed(read.missed));
            // Written a batch per flush, each within the write timeout, as live
            // traffic is: a read can be large.
            let mut deliveries = read.deliveries.into_iter().peekable();
            while notice.is_some() || deliveries.peek().is_some() {
                let mut written = 0;
                let write = async {
                    if let Some(notice) = notice.take() {
                        ws.feed(notice).await?;
                    }
                    while written < self.max_batch as u64 {
                        let Some(delivery) = deliveries.next() else {
                            break;
                        };
                        if let Step::Write(message) = self.step(delivery) {
                            ws.feed(message).await?;
                            written += 1;
                        }
                    }
                    ws.flush().await
                };
                bounded(limit, pin!(write)).await?;
                self.metrics.replayed.increment(written);
                self.metrics.deliveries.add(written);
            }
            if !more {
                break;
            }
        }
        Ok(missed)
    }

    /// A line of ours went to the room: its copy is due back.
    pub(super) fn expect_echo(&mut self) {
        self.echo_due = true;
    }

    /// Whether a line of ours is on its way back to us.
    pub(super) fn echo_due(&self) -> bool {
        self.echo_due
    }

    /// The last offset delivered.
    #[cfg(test)]
    fn last(&self) -> u64 {
        self.last
    }
}

/// What the channel already holds next, without waiting: `None` when it is empty,
/// or closed (which the next `recv` reports).
fn try_next(rx: &mut broadcast::Receiver<Delivery>) -> Option<Result<Delivery, RecvError>> {
    match rx.try_recv() {
        Ok(delivery) => Some(Ok(delivery)),
        Err(TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
        Err(TryRecvError::Empty | TryRecvError::Closed) => None,
    }
}

/// How a session ends when its room's channel closes: only at shutdown.
pub(super) fn channel_closed() -> End {
    End::Close(CloseCode::GOING_AWAY, protocol::REASON_SHUTDOWN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Format;

    fn delivery(offset: u64, from: SenderId) -> Delivery {
        Delivery {
            offset,
            epoch: Epoch(1),
            from,
            accepted: 0,
            message: Message::text(format!("m{offset}")),
        }
    }

    /// The id of the session whose outbox these tests drive.
    const ME: SenderId = 99;

    fn outbox(last: u64, no_echo: bool) -> Outbox<'static> {
        static METRICS: std::sync::LazyLock<Metrics> = std::sync::LazyLock::new(Metrics::new);
        Outbox::new(
            Epoch(1),
            last,
            ME,
            &crate::ServerConfig {
                no_echo,
                ..crate::ServerConfig::default()
            },
            Frames(Format::Classic),
            &METRICS,
        )
    }

    /// What a step did, as text: `write m4`, `skip`, `gap`.
    fn step(outbox: &mut Outbox<'_>, offset: u64, from: SenderId) -> String {
        match outbox.step(delivery(offset, from)) {
            Step::Write(message) => format!("write {}", message.as_text().unwrap_or("?")),
            Step::Skip => "skip".to_owned(),
            Step::Gap(_) => "gap".to_owned(),
        }
    }

    #[test]
    fn each_offset_is_written_once_and_in_order() {
        let mut outbox = outbox(3, false);
        assert_eq!(step(&mut outbox, 2, 1), "skip", "delivered already");
        assert_eq!(step(&mut outbox, 3, 1), "skip", "delivered already");
        assert_eq!(step(&mut outbox, 5, 1), "gap", "4 is missing");
        assert_eq!(outbox.last(), 3, "a gap does not move the position");
        assert_eq!(step(&mut outbox, 4, 1), "write m4");
        assert_eq!(step(&mut outbox, 5, 1), "write m5");
        assert_eq!(step(&mut outbox, 5, 1), "skip", "no repeats");
        assert_eq!(outbox.last(), 5);
    }

    #[test]
    fn a_message_outside_the_log_is_written_as_it_comes() {
        let mut outbox = outbox(3, true);
        assert_eq!(step(&mut outbox, 0, 8), "write m0");
        assert_eq!(step(&mut outbox, 0, ME), "skip", "our own, with no-echo");
        assert_eq!(outbox.last(), 3, "the position stays");
    }

    #[test]
    fn an_echo_is_due_until_a_copy_of_our_own_passes() {
        let mut outbox = outbox(0, false);
        outbox.expect_echo();
        assert_eq!(step(&mut outbox, 1, 8), "write m1");
        assert!(
            outbox.echo_due(),
            "another member's message is not our echo"
        );
        assert_eq!(step(&mut outbox, 2, ME), "write m2");
        assert!(!outbox.echo_due(), "our own came back");
        // With no-echo our copy is passed over, and still ends the wait.
        let mut outbox = Outbox {
            no_echo: true,
            ..outbox
        };
        outbox.expect_echo();
        assert_eq!(step(&mut outbox, 3, ME), "skip");
        assert!(!outbox.echo_due());
    }

    #[test]
    fn no_echo_passes_over_our_own_but_moves_on() {
        let mut outbox = outbox(0, true);
        assert_eq!(step(&mut outbox, 1, ME), "skip");
        assert_eq!(outbox.last(), 1);
        assert_eq!(step(&mut outbox, 2, 8), "write m2");
    }
}

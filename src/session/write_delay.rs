//! The write delay (`--write-delay`): a write that comes within the delay of the
//! session's last write (or of the end of its last rest) is followed by a rest, in
//! which the room's channel is left alone until the delay is over, so that what
//! arrives meanwhile goes in one write. Writes further apart than the delay (a
//! quiet chat) go at once and cost no timer. Timed exactly on a paused clock by
//! `tests/timeouts.rs` (`the_write_delay_holds_a_message_no_longer_than_the_delay`,
//! `..._never_holds_a_clients_own_line`, `..._does_not_rest_after_a_full_batch`,
//! `..._does_not_rest_after_catching_up_from_the_log`).

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::outbox::Wrote;

/// One session's write delay: whether it rests, until when, and when it was last
/// free to write.
#[derive(Debug)]
pub(super) struct WriteDelay {
    // Made at the first rest and kept: a session that never rests (a quiet
    // member, or no delay) has no timer in its task.
    timer: Option<Pin<Box<Sleep>>>,
    delay: Duration,
    // Whether the session rests now (until the timer).
    resting: bool,
    // When the session was last free to write: its last write, or its rest's end.
    free: Option<Instant>,
}

impl WriteDelay {
    /// A write delay of `delay`; zero for none.
    pub(super) fn new(delay: Duration) -> Self {
        Self {
            timer: None,
            delay,
            resting: false,
            free: None,
        }
    }

    /// Whether the session rests: it reads no more of the room's channel until
    /// [`rest`](Self::rest) is over (except for its client's own line, which the
    /// caller lets through).
    pub(super) fn resting(&self) -> bool {
        self.resting
    }

    /// Notes what a delivery wrote and starts a rest if it came within the delay of
    /// the last one and emptied the channel (after a full batch or a catch-up more
    /// is waiting already, and after nothing there is nothing to wait after).
    pub(super) fn wrote(&mut self, wrote: Wrote) {
        if wrote == Wrote::Nothing || self.delay.is_zero() {
            return;
        }
        let now = Instant::now();
        let delay = self.delay;
        self.resting = wrote == Wrote::Emptied && self.free.is_some_and(|free| now < free + delay);
        if self.resting {
            match self.timer.as_mut() {
                Some(timer) => timer.as_mut().reset(now + delay),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(now + delay))),
            }
        }
        self.free = Some(if self.resting { now + delay } else { now });
    }

    /// Waits for the rest's end. Cancel-safe: nothing changes until it has come.
    pub(super) async fn rest(&mut self) {
        if let Some(timer) = self.timer.as_mut() {
            timer.as_mut().await;
        }
        self.resting = false;
    }
}

//! The keepalive: a client that sends nothing for a ping interval is pinged, and
//! one that answers nothing, not even the ping, by the next tick is dropped.
//! Timed exactly on a paused clock by `tests/timeouts.rs`
//! (`a_silent_peer_is_pinged_after_one_interval_and_dropped_after_two`).

use std::pin::Pin;
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// What to do at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tick {
    /// The client was heard from since the last tick: nothing.
    Heard,
    /// It was quiet: send it a ping.
    Ping,
    /// It was quiet since the ping too: drop it.
    Silent,
}

pin_project! {
    /// One connection's keepalive: a timer made once and moved on at each tick
    /// (a timer per frame would cost more than the frame), and what was heard.
    #[derive(Debug)]
    pub(super) struct Keepalive {
        #[pin]
        timer: Sleep,
        interval: Duration,
        // Whether the client sent anything since the last tick.
        heard: bool,
        // Whether a ping is waiting for an answer.
        ping_sent: bool,
    }
}

impl Keepalive {
    /// A keepalive that ticks every `interval`, the first tick one interval from now.
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            timer: tokio::time::sleep(interval),
            interval,
            heard: false,
            ping_sent: false,
        }
    }

    /// Notes that the client sent a frame, of any kind: it is alive.
    pub(super) fn heard(self: Pin<&mut Self>) {
        *self.project().heard = true;
    }

    /// Waits for the next tick and says what to do. Cancel-safe: nothing changes
    /// until the tick has come.
    pub(super) async fn tick(mut self: Pin<&mut Self>) -> Tick {
        self.as_mut().project().timer.await;
        let this = self.project();
        this.timer.reset(Instant::now() + *this.interval);
        if *this.heard {
            (*this.heard, *this.ping_sent) = (false, false);
            Tick::Heard
        } else if *this.ping_sent {
            Tick::Silent
        } else {
            *this.ping_sent = true;
            Tick::Ping
        }
    }
}

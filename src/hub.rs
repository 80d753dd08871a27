//! The fan-out: one `tokio::sync::broadcast` channel that every session subscribes to.

use tokio::sync::broadcast;
use tokio_websockets::Message;

/// The hub every session publishes to and receives from. Cloning it is cheap: all
/// clones share one channel.
#[derive(Debug, Clone)]
pub(crate) struct Hub {
    /// Sending side of the channel. Each message is a `Message` built once; a
    /// receiver's copy is a reference-counted clone of the same bytes.
    tx: broadcast::Sender<Message>,
}

impl Hub {
    /// A hub whose channel holds `capacity` messages before slow receivers lag.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity.max(1)).0,
        }
    }

    /// A new receiver, which sees every message published from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Message> {
        self.tx.subscribe()
    }

    /// Sends `message` to every subscriber, the publisher included.
    pub(crate) fn publish(&self, message: Message) {
        // An error means nobody is subscribed, so there is nobody to tell.
        let _ = self.tx.send(message);
    }
}

//! A line from outside the room (the publish API): logged and sent as a member's
//! line is, through the room's log; with a store whose logs outlive their members
//! (Redis), even to a room nobody is in here.

use super::{Hub, SERVER};
use crate::protocol::Epoch;
use crate::store::{Appending, Record, lock};

/// Why a line could not be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublishError {
    /// Without Redis, nobody is in the room: it does not exist.
    NoSuchRoom,
    /// Redis (the shared log) did not answer; nothing was published.
    Unavailable,
}

impl Hub {
    /// Logs `text`, tagged `who`, in `room` and sends it to its members; says where
    /// it is in the room's log. In memory the room must exist (someone is in it);
    /// with Redis the room's log is shared and outlives its members, so the line is
    /// logged even if nobody is in the room now, and reaches every instance's
    /// members. Nothing is sent when Redis does not answer: the caller may try
    /// again without making a copy.
    pub(crate) async fn publish(
        &self,
        room: &str,
        who: &str,
        text: &str,
    ) -> Result<(Epoch, u64), PublishError> {
        let record = Record::chat(SERVER, who, text);
        let (epoch, published) = match self.store.append_to(room, &record) {
            Some(appended) => appended.await.map_err(|_| PublishError::Unavailable)?,
            None => {
                let room = lock(&self.rooms)
                    .get(room)
                    .cloned()
                    .ok_or(PublishError::NoSuchRoom)?;
                let published = match room.log.append(&record, None, None) {
                    Appending::Done(done) => done,
                    Appending::Later(later) => later.await,
                };
                let published = published.map_err(|_| PublishError::Unavailable)?;
                let head = room.log.head().await;
                (
                    head.map_err(|_| PublishError::Unavailable)?.epoch,
                    published,
                )
            }
        };
        Ok((epoch, published.offset.unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::ServerConfig;
    use crate::hub::{Format, Newcomer};
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn a_published_line_is_logged_and_reaches_the_members_of_its_room_only() {
        let config = ServerConfig::default();
        let store = Arc::new(MemoryStore::for_config(&config));
        let hub = Arc::new(Hub::new(&config, store));
        assert_eq!(
            hub.publish("rust", "bot", "deployed").await,
            Err(PublishError::NoSuchRoom)
        );
        let newcomer = |room, id| Newcomer {
            room,
            id,
            who: format!("m{id}"),
            format: Format::Classic,
            client_id: None,
            resume: None,
            history: None,
        };
        let mut rust = hub.join(newcomer("rust", 1)).await.expect("join");
        let mut lobby = hub.join(newcomer("", 2)).await.expect("join");
        let (epoch, offset) = hub
            .publish("rust", "bot", "deployed")
            .await
            .expect("published");
        assert_eq!((epoch, offset), (rust.epoch, 1));
        let delivery = rust.rx.recv().await.expect("a delivery");
        assert_eq!(delivery.offset, 1);
        assert_eq!(delivery.from, SERVER);
        assert_eq!(delivery.message.as_text(), Some("bot: \"deployed\""));
        assert!(lobby.rx.try_recv().is_err(), "the lobby hears nothing");
    }
}

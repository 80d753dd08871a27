//! A session's place in a room: publishing to it, reading its log, who is in it,
//! and leaving it (on drop). Each goes to the room in memory, or through Redis.

use std::future::Future;
use std::sync::Arc;

use super::record::Record;
use super::redis::Presence;
use super::remote;
use super::room::{Published, lock};
use super::{CatchUp, Membership, SenderId};

/// A line on its way to the room.
pub(crate) enum Submitted {
    /// Published already (the log is in memory).
    Done(Published),
    /// Published once Redis answers.
    Later(std::pin::Pin<Box<dyn Future<Output = Published> + Send>>),
}

impl Membership {
    /// Sends `text` to everyone in the room and waits until it is there (tests).
    #[cfg(test)]
    pub(crate) async fn publish(&self, text: &str, id: Option<u64>) -> Published {
        match self.submit(text, id) {
            Submitted::Done(published) => published,
            Submitted::Later(published) => published.await,
        }
    }

    /// Sends `text` to everyone in the room, this member included (sessions with
    /// no-echo leave their own out). A line with the client's `id` is sent once,
    /// however often it is submitted under the client's id. In memory it is
    /// published at once; with Redis its place in the room is fixed now and what
    /// became of it is known when Redis answers, so a session can have many lines
    /// on their way, in order. With Redis out of reach, it goes to this
    /// instance's members only, unlogged.
    pub(crate) fn submit(&self, text: &str, id: Option<u64>) -> Submitted {
        let line = id.map(|id| (&*self.client_id, id));
        let Some(remote) = &self.hub.remote else {
            return Submitted::Done(self.room.publish(self.id, &self.who, text, line));
        };
        let record = Record::chat(self.id, &self.who, text);
        let asked = remote.log.submit(&self.room.name, &record, line, None);
        let (hub, room) = (Arc::clone(&self.hub), Arc::clone(&self.room));
        Submitted::Later(Box::pin(async move {
            match asked.await {
                Ok((_, published)) => published,
                Err(e) => {
                    remote::went_down(&hub, &e.to_string());
                    room.deliver_unlogged(&record);
                    Published {
                        offset: None,
                        duplicate: false,
                    }
                }
            }
        }))
    }

    /// Up to `limit` logged messages after `after`, in this member's format; `None`
    /// when the log (Redis) is out of reach.
    pub(crate) async fn read_after(&self, after: u64, limit: usize) -> Option<CatchUp> {
        let Some(remote) = &self.hub.remote else {
            let mut deliveries = Vec::new();
            let missed = lock(&self.room.state).read(after, limit, self.format, &mut deliveries);
            return Some(CatchUp { missed, deliveries });
        };
        match remote.log.read(&self.room.name, after, limit).await {
            Ok(logged) => {
                let first = logged.first().map_or(after + 1, |l| l.offset);
                let deliveries = logged
                    .iter()
                    .map(|l| {
                        l.record
                            .delivery(self.format, &self.room.name, l.epoch, l.offset)
                    })
                    .collect();
                Some(CatchUp {
                    missed: first.saturating_sub(after + 1),
                    deliveries,
                })
            }
            Err(e) => {
                remote::went_down(&self.hub, &e.to_string());
                None
            }
        }
    }

    /// The labels of everyone in the room (with Redis: on every instance), sorted.
    pub(crate) async fn members(&self) -> Vec<String> {
        if let Some(remote) = &self.hub.remote {
            match remote.log.who(&self.room.name).await {
                Ok(members) => return members,
                Err(e) => remote::went_down(&self.hub, &e.to_string()),
            }
        }
        let mut members: Vec<String> = lock(&self.room.state).members.values().cloned().collect();
        members.sort();
        members
    }

    /// The room's name; `""` is the lobby.
    pub(crate) fn room(&self) -> &str {
        &self.room.name
    }

    /// How this member is tagged: `alice@127.0.0.1:53422` or the address alone.
    pub(crate) fn who(&self) -> &str {
        &self.who
    }

    /// This member's id, as it appears in [`Delivery::from`](super::Delivery::from).
    pub(crate) fn id(&self) -> SenderId {
        self.id
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut rooms = lock(&self.hub.rooms);
        let mut state = lock(&self.room.state);
        let who = state.members.remove(&self.id);
        let emptied = state.members.is_empty();
        if emptied {
            drop(state);
            // Only our room goes: a room of the same name created after ours was
            // removed is someone else's.
            if rooms
                .get(&self.room.name)
                .is_some_and(|r| Arc::ptr_eq(r, &self.room))
            {
                rooms.remove(&self.room.name);
                if let Some(remote) = &self.hub.remote {
                    remote.log.unsubscribe(&self.room.name);
                }
            }
        } else if self.hub.presence
            && self.hub.remote.is_none()
            && let Some(who) = &who
        {
            state.announce(&self.room.name, who, false);
        }
        // With Redis, leaving is said through Redis, to every instance (without
        // presence, only `/who`'s list hears of it): it takes a round trip, so it
        // happens after the session is gone.
        if let (Some(who), Some(_), Ok(runtime)) =
            (who, &self.hub.remote, tokio::runtime::Handle::try_current())
        {
            let hub = Arc::clone(&self.hub);
            let (room, id) = (self.room.name.clone(), self.id);
            runtime.spawn(async move {
                let Some(remote) = &hub.remote else { return };
                let member = remote.member(id, &who);
                let unlisted = if hub.presence {
                    let record = Record::presence(&who, false, 0);
                    let presence = Some(Presence::Leave(&member));
                    remote
                        .log
                        .publish(&room, &record, None, presence)
                        .await
                        .map(drop)
                } else {
                    remote.log.unlist(&room, &member).await
                };
                if let Err(e) = unlisted {
                    remote::went_down(&hub, &e.to_string());
                }
            });
        }
    }
}

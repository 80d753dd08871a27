//! A session's place in a room: publishing to it, reading its log, who is in it,
//! and leaving it (on drop). Each goes through the room's log, whatever the store.

use std::future::Future;
use std::sync::Arc;

use super::{CatchUp, Membership, SenderId};
use crate::protocol::classic;
use crate::store::{Appending, Presence, Published, Record, StoreKind, lock};

/// A line on its way to the room.
pub(crate) enum Submitted {
    /// Published already (the log answered at once), or refused.
    Done(Result<Published, NotAccepted>),
    /// Published (or refused) once the log answers.
    Later(std::pin::Pin<Box<dyn Future<Output = Result<Published, NotAccepted>> + Send>>),
}

/// A line the room's log refused: it went nowhere, and its sender is to be told
/// (the store holds as many lines as it may while it cannot log them: a data
/// directory that takes no writes, Redis out of reach). A line is never delivered
/// unlogged: a room has one history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotAccepted;

impl Membership {
    /// Sends `text` to everyone in the room and waits until it is there (tests).
    #[cfg(test)]
    pub(crate) async fn publish(&self, text: &str, id: Option<u64>) -> Published {
        let published = match self.submit(text, id) {
            Submitted::Done(published) => published,
            Submitted::Later(published) => published.await,
        };
        published.expect("the memory store takes every line")
    }

    /// Sends `text` to everyone in the room, this member included (sessions with
    /// no-echo leave their own out). A line with the client's `id` is sent once,
    /// however often it is submitted under the client's id. Its place in the room
    /// is fixed now; what became of it is known at once (memory) or when the log
    /// answers (Redis), so a session can have many lines on their way, in order.
    /// While the store cannot log (Redis out of reach, a disk that takes no
    /// writes) the line waits; a line the log refused goes nowhere.
    pub(crate) fn submit(&self, text: &str, id: Option<u64>) -> Submitted {
        let line = id.map(|id| (&*self.client_id, id));
        let record = Record::chat(self.id, &self.who, text);
        match self.room.log.append(&record, line, None) {
            Appending::Done(Ok(published)) => Submitted::Done(Ok(published)),
            Appending::Done(Err(_)) => Submitted::Done(Err(NotAccepted)),
            Appending::Later(asked) => {
                Submitted::Later(Box::pin(
                    async move { asked.await.map_err(|_| NotAccepted) },
                ))
            }
        }
    }

    /// Up to `limit` logged messages after `after`, in this member's format; `None`
    /// when the log is out of reach.
    pub(crate) async fn read_after(&self, after: u64, limit: usize) -> Option<CatchUp> {
        self.room.log.read(after, limit, self.format).await.ok()
    }

    /// The labels of everyone in the room (with Redis: on every instance), sorted.
    pub(crate) async fn members(&self) -> Vec<String> {
        if let Ok(Some(members)) = self.room.log.members().await {
            return members;
        }
        let mut members: Vec<String> = lock(&self.room.local.state)
            .members
            .values()
            .cloned()
            .collect();
        members.sort();
        members
    }

    /// How the room's store tells a newcomer that lines wait now (a disk that
    /// takes no writes, Redis out of reach), if they do.
    pub(crate) fn store_delaying(&self) -> Option<&'static str> {
        match self.hub.store_health() {
            (StoreKind::Disk, Some(false)) => Some(classic::DELAYED_NOTICE),
            (StoreKind::Redis, Some(false)) => Some(classic::DEGRADED_NOTICE),
            _ => None,
        }
    }

    /// The room's name; `""` is the lobby.
    pub(crate) fn room(&self) -> &str {
        &self.room.name
    }

    /// How this member is tagged: `alice@127.0.0.1:53422` or the address alone.
    pub(crate) fn who(&self) -> &str {
        &self.who
    }

    /// This member's id, as it appears in [`Delivery::from`].
    ///
    /// [`Delivery::from`]: super::Delivery::from
    pub(crate) fn id(&self) -> SenderId {
        self.id
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut rooms = lock(&self.hub.rooms);
        let mut state = lock(&self.room.local.state);
        let who = state.members.remove(&self.id);
        let here = state.members.len();
        drop(state);
        let leaving = who.as_deref().map(|who| Presence::Leave(self.id, who));
        if here == 0 {
            // Only our room goes: a room of the same name created after ours was
            // removed is someone else's.
            if rooms
                .get(&self.room.name)
                .is_some_and(|r| Arc::ptr_eq(r, &self.room))
            {
                rooms.remove(&self.room.name);
                self.room.log.close(leaving, self.hub.presence);
            }
        } else if let Some(leave @ Presence::Leave(_, who)) = leaving {
            // Answered later (Redis): it takes a round trip, so it happens after the
            // session is gone; its place in the room is fixed already. Without
            // presence, only `/who`'s list hears of it.
            let runtime = tokio::runtime::Handle::try_current();
            if self.hub.presence {
                let record = Record::presence(who, false, here);
                let appended = self.room.log.append(&record, None, Some(leave));
                if let (Appending::Later(done), Ok(runtime)) = (appended, &runtime) {
                    runtime.spawn(done);
                }
            } else if let (Some(unlisted), Ok(runtime)) = (self.room.log.list(leave), &runtime) {
                runtime.spawn(unlisted);
            }
        }
    }
}

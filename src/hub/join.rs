//! Joining a room: the local part under the locks (the room made and its log opened
//! if new, the membership, the subscription to the room's channel), then where the
//! room's log stands, and what the newcomer is to be replayed.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::broadcast;

use super::room::{Local, Room};
use super::{Delivery, Hub, JoinError, Joined, Membership, Newcomer, Recovery};
use crate::store::{Appending, Fanout, Head, Presence, Record, lock};

impl Hub {
    /// Joins `newcomer.room`, making it if it does not exist.
    ///
    /// The session subscribes to the room's channel first, then learns where the
    /// room's log stands, so the replay up to that head and live traffic after it
    /// meet by offset, without a gap (an overlap is passed over by offset).
    pub(crate) async fn join(
        self: &Arc<Self>,
        newcomer: Newcomer<'_>,
    ) -> Result<Joined, JoinError> {
        let (room, rx, here) = self.enter(&newcomer)?;
        let membership = Membership {
            hub: Arc::clone(self),
            room,
            id: newcomer.id,
            who: newcomer.who,
            format: newcomer.format,
            client_id: match newcomer.client_id {
                Some(client_id) => client_id.into(),
                None => format!("#{}", newcomer.id).into(),
            },
        };
        let room = &membership.room;
        let Ok(Head { epoch, head, first }) = room.log.head().await else {
            // The log is out of reach: no replay, and a returning client is told. The
            // newcomer starts where this instance has delivered the room's log to,
            // so what is logged later follows on without replaying older messages.
            let (epoch, head) = room.local.position();
            let recovery = newcomer.resume.map(|_| Recovery::Unavailable);
            return Ok(Joined {
                membership,
                rx,
                epoch,
                head,
                replay_after: head,
                recovery,
            });
        };
        room.local.baseline(epoch, head);
        // Listed at once, so `/who` names the newcomer before the next heartbeat;
        // with presence the join's notice lists it. Subscribed first, so the
        // newcomer hears its own join, live. An error is the store's to report;
        // the join goes on.
        let joined = Presence::Join(membership.id, &membership.who);
        if self.presence {
            let record = Record::presence(&membership.who, true, here);
            if let Appending::Later(done) = room.log.append(&record, None, Some(joined)) {
                let _ = done.await;
            }
        } else if let Some(listed) = room.log.list(joined) {
            let _ = listed.await;
        }
        let history = newcomer.history.unwrap_or(self.history as u64);
        let history_from = head.saturating_sub(history);
        let (replay_after, recovery) = match newcomer.resume {
            None => (history_from.max(first - 1), None),
            Some(resume) if resume.epoch != epoch => (first - 1, Some(Recovery::Restarted)),
            Some(resume) if resume.after > head => (head, Some(Recovery::Ahead(head))),
            Some(resume) if resume.after + 1 >= first => (resume.after, Some(Recovery::Complete)),
            Some(resume) => (first - 1, Some(Recovery::Missed(first - 1 - resume.after))),
        };
        Ok(Joined {
            membership,
            rx,
            epoch,
            head,
            replay_after,
            recovery,
        })
    }

    /// The local part of a join, under the locks: the room (made, its log opened,
    /// if new), the membership, the subscription; and how many are here now.
    fn enter(
        self: &Arc<Self>,
        newcomer: &Newcomer<'_>,
    ) -> Result<(Arc<Room>, broadcast::Receiver<Delivery>, usize), JoinError> {
        let mut rooms = lock(&self.rooms);
        if self.closed.load(Ordering::Relaxed) {
            return Err(JoinError::ShuttingDown);
        }
        let room = match rooms.get(newcomer.room) {
            Some(room) => Arc::clone(room),
            None if rooms.len() >= self.max_rooms => return Err(JoinError::TooManyRooms),
            None => {
                let local = Arc::new(Local::new(self.capacity));
                let fanout: Arc<dyn Fanout> = Arc::clone(&local) as _;
                let room = Arc::new(Room {
                    name: newcomer.room.to_owned(),
                    log: self.store.open(newcomer.room, fanout),
                    local,
                });
                rooms.insert(newcomer.room.to_owned(), Arc::clone(&room));
                room
            }
        };
        let mut state = lock(&room.local.state);
        let rx = state.subscribe(newcomer.format);
        state.members.insert(newcomer.id, newcomer.who.clone());
        let here = state.members.len();
        drop(state);
        drop(rooms);
        Ok((room, rx, here))
    }
}

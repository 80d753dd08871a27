//! Joining a room: the local part under the locks (the room made if new, the
//! membership, the subscription to the room's channel), then where the room's log
//! stands (in memory at once; with Redis once this instance's subscription is
//! confirmed), and what the newcomer is to be replayed.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::broadcast;

use super::log::RoomLog;
use super::record::Record;
use super::redis::{self, Presence};
use super::remote::{self, Remote};
use super::room::{Room, lock};
use super::{Delivery, Hub, JoinError, Joined, Membership, Newcomer, Recovery};
use crate::protocol::Epoch;

impl Hub {
    /// Joins `newcomer.room`, making it if it does not exist.
    ///
    /// The session subscribes to the room's channel first, then learns where the
    /// room's log stands (under the room's lock in memory; from Redis once the
    /// instance's subscription is confirmed), so the replay up to that head and live
    /// traffic after it meet by offset, without a gap or an overlap.
    pub(crate) async fn join(
        self: &Arc<Self>,
        newcomer: Newcomer<'_>,
    ) -> Result<Joined, JoinError> {
        let (room, rx, local) = self.enter(&newcomer)?;
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
        let view = match (&self.remote, local) {
            (None, view) => view,
            (Some(remote), _) => membership.enter_remote(remote).await,
        };
        let Some((epoch, head, first)) = view else {
            // Redis is out of reach: no replay, and a returning client is told. The
            // newcomer starts where this instance has delivered the room's log to,
            // so what Redis logs later follows on without replaying older messages.
            let (epoch, head) = lock(&membership.room.state).position();
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

    /// The local part of a join, under the locks: the room (made if new), the
    /// membership, the subscription; in memory also where the log stands and the
    /// join notice.
    #[allow(clippy::type_complexity)]
    fn enter(
        self: &Arc<Self>,
        newcomer: &Newcomer<'_>,
    ) -> Result<
        (
            Arc<Room>,
            broadcast::Receiver<Delivery>,
            Option<(Epoch, u64, u64)>,
        ),
        JoinError,
    > {
        let mut rooms = lock(&self.rooms);
        if self.closed.load(Ordering::Relaxed) {
            return Err(JoinError::ShuttingDown);
        }
        let room = match rooms.get(newcomer.room) {
            Some(room) => Arc::clone(room),
            None if rooms.len() >= self.max_rooms => return Err(JoinError::TooManyRooms),
            None => {
                let room = Arc::new(Room::new(
                    newcomer.room,
                    self.capacity,
                    self.log_entries,
                    self.log_bytes,
                ));
                rooms.insert(newcomer.room.to_owned(), Arc::clone(&room));
                if let Some(remote) = &self.remote {
                    // Asked under the rooms lock, so subscriptions and their ends are
                    // carried out in the order rooms appear and vanish.
                    let confirmed = remote.log.subscribe(newcomer.room);
                    let subscribed = room.subscribed.clone();
                    tokio::spawn(async move {
                        let _ = confirmed.await;
                        subscribed.send_replace(true);
                    });
                }
                room
            }
        };
        let mut state = lock(&room.state);
        let rx = state.subscribe(newcomer.format);
        state.members.insert(newcomer.id, newcomer.who.clone());
        let view = self
            .remote
            .is_none()
            .then(|| (state.epoch(), state.log.head(), state.log.first()));
        // Subscribed first, so the newcomer hears its own join, live.
        if self.presence && self.remote.is_none() {
            state.announce(&room.name, &newcomer.who, true);
        }
        drop(state);
        drop(rooms);
        Ok((room, rx, view))
    }
}

impl Membership {
    /// The Redis part of a join: wait for the instance's subscription to the room,
    /// read where the room's log stands, start delivering from there if this
    /// instance had not yet, and announce the join. `None` if Redis is out of reach.
    async fn enter_remote(&self, remote: &Remote) -> Option<(Epoch, u64, u64)> {
        let mut subscribed = self.room.subscribed.subscribe();
        let _ = tokio::time::timeout(redis::RESPONSE_TIMEOUT, subscribed.wait_for(|s| *s)).await;
        let head = match remote.log.head(&self.room.name).await {
            Ok(head) => head,
            Err(e) => {
                remote::went_down(&self.hub, &e.to_string());
                return None;
            }
        };
        self.room.baseline(head.epoch, head.head);
        // Listed at once, so `/who` names the newcomer before the next heartbeat;
        // with presence the join's notice lists it.
        let member = remote.member(self.id, &self.who);
        let listed = if self.hub.presence {
            let record = Record::presence(&self.who, true, 0);
            let presence = Some(Presence::Join(&member));
            remote
                .log
                .publish(&self.room.name, &record, None, presence)
                .await
                .map(drop)
        } else {
            remote.log.heartbeat(&self.room.name, &[member]).await
        };
        if let Err(e) = listed {
            remote::went_down(&self.hub, &e.to_string());
        }
        Some((head.epoch, head.head, head.first))
    }
}

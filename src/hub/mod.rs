//! The fan-out: rooms, each with its log (offsets and an epoch) and its broadcast
//! channels, and the memberships through which sessions join, publish, catch up and
//! leave.
//!
//! Lock order: the rooms map, then a room's state. Both are std `Mutex`es, never
//! held across an `.await`.

mod log;
mod record;
pub(crate) mod redis;
mod remote;
mod room;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio_websockets::Message;

use crate::config::ServerConfig;
use crate::protocol::{Epoch, Resume};
use log::RoomLog;
use record::Record;
use redis::RedisLog;
use remote::Remote;
use room::{Room, lock};

pub(crate) use log::stamp;
pub(crate) use room::Published;

/// Who sent a delivery: a member's connection id, or [`SERVER`].
pub(crate) type SenderId = u64;
/// The sender of the server's own notices (presence), which no-echo never hides.
pub(crate) const SERVER: SenderId = 0;

/// The wire format a session speaks; each has its own channel in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// The classic text lines.
    Classic,
    /// The `broadcast-chat.v1` JSON frames.
    Structured,
}

/// One logged message on a room's channel. Cloning it is cheap: the frame is a
/// reference-counted `Message` encoded once, whatever the number of receivers.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// Its offset in the room's log; 0 for a message that is not in it (said while
    /// the log was out of reach), which every session writes as it comes.
    pub(crate) offset: u64,
    /// The epoch of the log it is in: a new one means the log began again.
    pub(crate) epoch: Epoch,
    /// When this server accepted it, for the latency metric.
    pub(crate) accepted: u64,
    /// Who sent it, so a session can leave out its own messages (`--no-echo`).
    pub(crate) from: SenderId,
    /// The frame as it goes on the wire.
    pub(crate) message: Message,
}

/// Why a client could not join.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum JoinError {
    /// The server has `max_rooms` rooms already.
    TooManyRooms,
    /// The server is shutting down: its rooms are closed.
    ShuttingDown,
}

/// The rooms.
#[derive(Debug)]
pub(crate) struct Hub {
    /// Rooms by name (`""` is the lobby); a room exists while it has members.
    pub(super) rooms: Mutex<HashMap<String, Arc<Room>>>,
    /// Channel capacity of every room, in messages.
    capacity: usize,
    /// Messages of history a newcomer gets.
    history: usize,
    /// Most messages each room's log keeps.
    log_entries: usize,
    /// Most bytes each room's log keeps.
    log_bytes: usize,
    /// Most rooms at once.
    max_rooms: usize,
    /// Whether joins and leaves are announced to the room.
    presence: bool,
    /// Set once, under the rooms lock, when the server shuts down.
    closed: AtomicBool,
    /// With Redis: the connection and this instance's part in it.
    remote: Option<Remote>,
}

/// Who is joining, and how.
#[derive(Debug)]
pub(crate) struct Newcomer<'a> {
    /// The room's name; `""` is the lobby.
    pub(crate) room: &'a str,
    /// The connection's id.
    pub(crate) id: SenderId,
    /// How it is tagged: `alice@127.0.0.1:53422`.
    pub(crate) who: String,
    /// The wire format it speaks.
    pub(crate) format: Format,
    /// The client's session id, the same across its reconnections, if it gave one.
    pub(crate) session: Option<&'a str>,
    /// Where a returning client left off.
    pub(crate) resume: Option<Resume>,
}

/// How a resumption went, decided at the join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// Everything after the client's offset is replayed.
    Complete,
    /// This many messages after the client's offset are no longer in the log.
    Missed(u64),
    /// The client's epoch is not the room's: the room it left is gone.
    Restarted,
    /// The log (Redis) is out of reach: nothing can be replayed now.
    Unavailable,
    /// The client's offset is beyond the room's last one, which is this.
    Ahead(u64),
}

impl Recovery {
    /// The recovery once `lost` more messages went missing during the replay (the
    /// log let them go before the session read them).
    pub(crate) fn and_missed(self, lost: u64) -> Self {
        match self {
            _ if lost == 0 => self,
            Recovery::Complete => Recovery::Missed(lost),
            Recovery::Missed(before) => Recovery::Missed(before + lost),
            other => other,
        }
    }
}

/// What joining gives a session.
#[derive(Debug)]
pub(crate) struct Joined {
    /// The session's place in the room; dropping it leaves the room.
    pub(crate) membership: Membership,
    /// Sees every message published to the room after `head`.
    pub(crate) rx: broadcast::Receiver<Delivery>,
    /// The room's epoch.
    pub(crate) epoch: Epoch,
    /// The room's last offset at the join.
    pub(crate) head: u64,
    /// The session replays the logged messages after this offset (history, or what
    /// a returning client missed) before live traffic.
    pub(crate) replay_after: u64,
    /// How the resumption went, for a client that asked to resume.
    pub(crate) recovery: Option<Recovery>,
}

/// A session's place in a room. Dropping it leaves the room.
#[derive(Debug)]
pub(crate) struct Membership {
    hub: Arc<Hub>,
    room: Arc<Room>,
    id: SenderId,
    /// How this member is tagged: `alice@127.0.0.1:53422` or the address alone.
    who: String,
    format: Format,
    /// The client's session id, for recognising lines sent again; without one, the
    /// connection's own key (`#` and its id, which no session id can be).
    session: Box<str>,
}

/// What a session reads from the log when it catches up.
#[derive(Debug, Default)]
pub(crate) struct CatchUp {
    /// How many messages after the asked offset the log no longer holds.
    pub(crate) missed: u64,
    /// The messages it holds, oldest first.
    pub(crate) deliveries: Vec<Delivery>,
}

impl Hub {
    /// The rooms of a server with `config`'s limits, each with its log in memory;
    /// none exists yet.
    pub(crate) fn new(config: &ServerConfig) -> Self {
        Self::build(config, None)
    }

    /// The rooms of a server with `config`'s limits, their logs in Redis (through
    /// `log`) and shared with every instance connected to the same Redis; what
    /// Redis publishes arrives through `pushes`.
    pub(crate) fn with_redis(
        config: &ServerConfig,
        log: RedisLog,
        pushes: tokio::sync::mpsc::UnboundedReceiver<::redis::PushInfo>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        let hub = Arc::new(Self::build(config, Some(Remote::new(log, metrics))));
        remote::start(&hub, pushes);
        hub
    }

    fn build(config: &ServerConfig, remote: Option<Remote>) -> Self {
        // With Redis, the stream is the log: rooms keep none in memory.
        let (log_entries, log_bytes) = match remote {
            None => (
                config.resume_window.max(config.history),
                config.resume_bytes,
            ),
            Some(_) => (0, 0),
        };
        Self {
            rooms: Mutex::new(HashMap::new()),
            capacity: config.buffer.max(1),
            history: config.history,
            log_entries,
            log_bytes,
            max_rooms: config.max_rooms.max(1),
            presence: config.presence,
            closed: AtomicBool::new(false),
            remote,
        }
    }

    /// The rooms that exist, and the bytes their logs in memory hold.
    pub(crate) fn stats(&self) -> (usize, usize) {
        let rooms: Vec<Arc<Room>> = lock(&self.rooms).values().cloned().collect();
        let bytes = rooms.iter().map(|r| lock(&r.state).log.bytes()).sum();
        (rooms.len(), bytes)
    }

    /// With Redis, whether it answered lately; `None` without Redis.
    pub(crate) fn redis_up(&self) -> Option<bool> {
        self.remote.as_ref().map(Remote::is_up)
    }

    /// Closes every room's channels, so that each session, once it has written what
    /// they still hold, learns that the server is shutting down (its channel says
    /// closed); nobody can join after this. The cheapest signal there is: sessions
    /// poll their channel anyway.
    pub(crate) fn close(&self) {
        let rooms = lock(&self.rooms);
        self.closed.store(true, Ordering::Relaxed);
        for room in rooms.values() {
            lock(&room.state).close();
        }
    }

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
        let (room, rx, created, local) = self.enter(&newcomer)?;
        let membership = Membership {
            hub: Arc::clone(self),
            room,
            id: newcomer.id,
            who: newcomer.who,
            format: newcomer.format,
            session: match newcomer.session {
                Some(session) => session.into(),
                None => format!("#{}", newcomer.id).into(),
            },
        };
        let view = match (&self.remote, local) {
            (None, view) => view,
            (Some(remote), _) => membership.enter_remote(remote, created).await,
        };
        let Some((epoch, head, first)) = view else {
            // Redis is out of reach: no replay, and a returning client is told.
            let epoch = lock(&membership.room.state).log.epoch();
            let recovery = newcomer.resume.map(|_| Recovery::Unavailable);
            return Ok(Joined {
                membership,
                rx,
                epoch,
                head: 0,
                replay_after: 0,
                recovery,
            });
        };
        let history_from = head.saturating_sub(self.history as u64);
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
    /// join notice. Says whether the room was made.
    #[allow(clippy::type_complexity)]
    fn enter(
        self: &Arc<Self>,
        newcomer: &Newcomer<'_>,
    ) -> Result<
        (
            Arc<Room>,
            broadcast::Receiver<Delivery>,
            bool,
            Option<(Epoch, u64, u64)>,
        ),
        JoinError,
    > {
        let mut rooms = lock(&self.rooms);
        if self.closed.load(Ordering::Relaxed) {
            return Err(JoinError::ShuttingDown);
        }
        let (room, created) = match rooms.get(newcomer.room) {
            Some(room) => (Arc::clone(room), false),
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
                (room, true)
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
        Ok((room, rx, created, view))
    }

    /// Rooms that exist now.
    #[cfg(test)]
    fn room_count(&self) -> usize {
        lock(&self.rooms).len()
    }
}

impl Membership {
    /// The Redis part of a join: wait for the instance's subscription to the room,
    /// read where the room's log stands, start delivering from there if this
    /// instance had not yet, and announce the join. `None` if Redis is out of reach.
    async fn enter_remote(&self, remote: &Remote, _created: bool) -> Option<(Epoch, u64, u64)> {
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
        if self.hub.presence {
            let record = Record::presence(&self.who, true, 0);
            let member = remote.member(self.id, &self.who);
            let presence = Some(redis::Presence::Join(&member));
            if let Err(e) = remote
                .log
                .publish(&self.room.name, &record, None, presence)
                .await
            {
                remote::went_down(&self.hub, &e.to_string());
            }
        }
        Some((head.epoch, head.head, head.first))
    }

    /// Sends `text` to everyone in the room, this member included (sessions with
    /// no-echo leave their own out). A line with the client's `id` is sent once,
    /// however often it is published in the client's session. With Redis out of
    /// reach, it goes to this instance's members only, unlogged.
    pub(crate) async fn publish(&self, text: &str, id: Option<u64>) -> Published {
        let line = id.map(|id| (&*self.session, id));
        let Some(remote) = &self.hub.remote else {
            return self.room.publish(self.id, &self.who, text, line);
        };
        let record = Record::chat(self.id, &self.who, text);
        match remote
            .log
            .publish(&self.room.name, &record, line, None)
            .await
        {
            Ok((_, published)) => published,
            Err(e) => {
                remote::went_down(&self.hub, &e.to_string());
                self.room.deliver_unlogged(&record);
                Published {
                    offset: None,
                    duplicate: false,
                }
            }
        }
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
                            .encode(&self.room.name, l.epoch, l.offset)
                            .delivery(self.format)
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

    /// This member's id, as it appears in [`Delivery::from`].
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
        // With Redis, leaving is said through Redis, to every instance: it takes a
        // round trip, so it happens after the session is gone.
        if let (Some(who), Some(_), Ok(runtime)) = (
            who.filter(|_| self.hub.presence),
            &self.hub.remote,
            tokio::runtime::Handle::try_current(),
        ) {
            let hub = Arc::clone(&self.hub);
            let (room, id) = (self.room.name.clone(), self.id);
            runtime.spawn(async move {
                let Some(remote) = &hub.remote else { return };
                let member = remote.member(id, &who);
                let record = Record::presence(&who, false, 0);
                let presence = Some(redis::Presence::Leave(&member));
                if let Err(e) = remote.log.publish(&room, &record, None, presence).await {
                    remote::went_down(&hub, &e.to_string());
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Resume;

    fn hub(config: ServerConfig) -> Arc<Hub> {
        Arc::new(Hub::new(&config))
    }

    /// Joins at once: in memory, joining never waits.
    fn now(hub: &Arc<Hub>, newcomer: Newcomer<'_>) -> Result<Joined, JoinError> {
        futures_util::FutureExt::now_or_never(hub.join(newcomer)).expect("ready at once")
    }

    fn join(hub: &Arc<Hub>, room: &str, id: SenderId, resume: Option<Resume>) -> Joined {
        now(
            hub,
            Newcomer {
                room,
                id,
                who: format!("m{id}"),
                format: Format::Classic,
                session: Some("s"),
                resume,
            },
        )
        .expect("join")
    }

    fn publish(joined: &Joined, text: &str) -> Published {
        futures_util::FutureExt::now_or_never(joined.membership.publish(text, None))
            .expect("ready at once")
    }

    fn text(d: &Delivery) -> &str {
        d.message.as_text().expect("text")
    }

    fn next(joined: &mut Joined) -> (u64, String) {
        let d = joined.rx.try_recv().expect("a delivery");
        (d.offset, text(&d).to_owned())
    }

    fn read(joined: &Joined, after: u64) -> (u64, Vec<u64>) {
        let read = futures_util::FutureExt::now_or_never(joined.membership.read_after(after, 100))
            .expect("ready at once")
            .expect("a log in memory");
        (
            read.missed,
            read.deliveries.iter().map(|d| d.offset).collect(),
        )
    }

    #[test]
    fn rooms_appear_on_first_join_and_vanish_when_empty() {
        let hub = hub(ServerConfig::default());
        let a = join(&hub, "rust", 1, None);
        let b = join(&hub, "rust", 2, None);
        let c = join(&hub, "", 3, None);
        assert_eq!(hub.room_count(), 2);
        drop(a);
        assert_eq!(hub.room_count(), 2);
        drop(b);
        assert_eq!(hub.room_count(), 1);
        drop(c);
        assert_eq!(hub.room_count(), 0);
    }

    #[test]
    fn messages_get_consecutive_offsets_and_stay_in_their_room() {
        let hub = hub(ServerConfig::default());
        let mut rust = join(&hub, "rust", 1, None);
        let mut lobby = join(&hub, "", 2, None);
        assert_eq!(publish(&rust, "one").offset, Some(1));
        assert_eq!(publish(&rust, "two").offset, Some(2));
        assert_eq!(next(&mut rust), (1, r#"m1: "one""#.to_owned()));
        assert_eq!(next(&mut rust), (2, r#"m1: "two""#.to_owned()));
        assert!(lobby.rx.try_recv().is_err());
        assert_eq!(
            publish(&lobby, "hi").offset,
            Some(1),
            "each room counts alone"
        );
        assert!(rust.rx.try_recv().is_err());
    }

    #[test]
    fn max_rooms_is_enforced_but_existing_rooms_can_be_joined() {
        let hub = hub(ServerConfig {
            max_rooms: 1,
            ..ServerConfig::default()
        });
        let _a = join(&hub, "one", 1, None);
        let refused = now(
            &hub,
            Newcomer {
                room: "two",
                id: 2,
                who: "b".into(),
                format: Format::Classic,
                session: None,
                resume: None,
            },
        );
        assert_eq!(refused.err(), Some(JoinError::TooManyRooms));
        let _c = join(&hub, "one", 3, None);
    }

    #[test]
    fn history_and_live_messages_meet_without_gap_or_overlap() {
        let hub = hub(ServerConfig {
            history: 3,
            ..ServerConfig::default()
        });
        let speaker = join(&hub, "", 1, None);
        for i in 0..5 {
            publish(&speaker, &format!("m{i}"));
        }
        let mut newcomer = join(&hub, "", 2, None);
        publish(&speaker, "m5");
        assert_eq!((newcomer.head, newcomer.replay_after), (5, 2));
        assert_eq!(
            read(&newcomer, newcomer.replay_after),
            (0, vec![3, 4, 5, 6])
        );
        assert_eq!(next(&mut newcomer).0, 6, "live from the head on");
        assert!(newcomer.rx.try_recv().is_err());
    }

    #[test]
    fn a_returning_client_learns_what_can_be_recovered() {
        let hub = hub(ServerConfig {
            resume_window: 4,
            ..ServerConfig::default()
        });
        let speaker = join(&hub, "", 1, None);
        let epoch = speaker.epoch;
        for i in 0..10 {
            publish(&speaker, &format!("m{i}"));
        }
        let back = |after| join(&hub, "", 2, Some(Resume { epoch, after }));
        let whole = back(8);
        assert_eq!(
            (whole.replay_after, whole.recovery),
            (8, Some(Recovery::Complete))
        );
        let edge = back(6);
        assert_eq!(
            (edge.replay_after, edge.recovery),
            (6, Some(Recovery::Complete))
        );
        let partial = back(3);
        assert_eq!(
            (partial.replay_after, partial.recovery),
            (6, Some(Recovery::Missed(3))),
            "7 to 10 are kept; 4, 5 and 6 are lost"
        );
        let ahead = back(12);
        assert_eq!(
            (ahead.replay_after, ahead.recovery),
            (10, Some(Recovery::Ahead(10)))
        );
        let other = join(
            &hub,
            "",
            3,
            Some(Resume {
                epoch: Epoch(epoch.0 ^ 1),
                after: 3,
            }),
        );
        assert_eq!(
            (other.replay_after, other.recovery),
            (6, Some(Recovery::Restarted))
        );
        assert_eq!(
            read(&partial, 3),
            (3, vec![7, 8, 9, 10]),
            "the exact count is known"
        );
    }

    #[test]
    fn what_the_log_lets_go_during_a_replay_counts_as_missed() {
        assert_eq!(Recovery::Complete.and_missed(0), Recovery::Complete);
        assert_eq!(Recovery::Complete.and_missed(2), Recovery::Missed(2));
        assert_eq!(Recovery::Missed(3).and_missed(2), Recovery::Missed(5));
        assert_eq!(Recovery::Restarted.and_missed(2), Recovery::Restarted);
    }

    #[test]
    fn closing_ends_every_channel_after_what_it_holds_and_refuses_newcomers() {
        let hub = hub(ServerConfig::default());
        let mut a = join(&hub, "r", 1, None);
        publish(&a, "last words");
        hub.close();
        assert_eq!(next(&mut a).0, 1, "what was sent is still delivered");
        assert_eq!(
            a.rx.try_recv().err(),
            Some(broadcast::error::TryRecvError::Closed)
        );
        let refused = now(
            &hub,
            Newcomer {
                room: "r",
                id: 2,
                who: "b".into(),
                format: Format::Classic,
                session: None,
                resume: None,
            },
        );
        assert_eq!(refused.err(), Some(JoinError::ShuttingDown));
    }

    #[test]
    fn a_room_that_empties_begins_again_with_a_new_epoch() {
        let hub = hub(ServerConfig::default());
        let first = join(&hub, "r", 1, None);
        publish(&first, "x");
        let epoch = first.epoch;
        drop(first);
        let again = join(&hub, "r", 2, Some(Resume { epoch, after: 1 }));
        assert_ne!(again.epoch, epoch);
        assert_eq!((again.head, again.recovery), (0, Some(Recovery::Restarted)));
    }

    #[test]
    fn a_line_sent_again_by_the_same_session_goes_out_once() {
        let hub = hub(ServerConfig::default());
        let mut a = join(&hub, "", 1, None);
        let once = |id| {
            futures_util::FutureExt::now_or_never(a.membership.publish("hi", Some(id)))
                .expect("ready")
        };
        assert_eq!(
            once(1),
            Published {
                offset: Some(1),
                duplicate: false
            }
        );
        assert_eq!(
            once(2),
            Published {
                offset: Some(2),
                duplicate: false
            }
        );
        assert_eq!(
            once(2),
            Published {
                offset: Some(2),
                duplicate: true
            }
        );
        assert_eq!(
            once(1),
            Published {
                offset: None,
                duplicate: true
            }
        );
        // The same session on a new connection (a reconnect) is recognised too.
        let b = join(&hub, "", 2, None);
        let again = futures_util::FutureExt::now_or_never(b.membership.publish("hi", Some(2)));
        assert_eq!(
            again,
            Some(Published {
                offset: Some(2),
                duplicate: true
            })
        );
        assert_eq!(next(&mut a).0, 1);
        assert_eq!(next(&mut a).0, 2);
        assert!(a.rx.try_recv().is_err(), "nothing sent twice");
    }

    #[test]
    fn presence_notices_are_logged_with_offsets() {
        let hub = hub(ServerConfig {
            presence: true,
            ..ServerConfig::default()
        });
        let mut a = join(&hub, "", 1, None);
        assert_eq!(next(&mut a), (1, "* m1 joined (1 here)".to_owned()));
        let b = join(&hub, "", 2, None);
        assert_eq!(next(&mut a), (2, "* m2 joined (2 here)".to_owned()));
        assert_eq!(
            futures_util::FutureExt::now_or_never(a.membership.members()),
            Some(vec!["m1".to_owned(), "m2".to_owned()])
        );
        drop(b);
        let left = a.rx.try_recv().expect("leave");
        assert_eq!((left.offset, text(&left)), (3, "* m2 left (1 here)"));
        assert_eq!(left.from, SERVER);
    }

    #[test]
    fn each_format_has_its_own_encoding_of_the_same_offsets() {
        let hub = hub(ServerConfig::default());
        let classic = join(&hub, "r", 1, None);
        let mut structured = now(
            &hub,
            Newcomer {
                room: "r",
                id: 2,
                who: "m2".into(),
                format: Format::Structured,
                session: None,
                resume: None,
            },
        )
        .expect("join");
        publish(&classic, "hello");
        let (offset, json) = next(&mut structured);
        assert_eq!(offset, 1);
        assert_eq!(
            json,
            format!(
                r#"{{"type":"message","room":"r","epoch":"{}","offset":1,"from":"m1","text":"hello"}}"#,
                structured.epoch
            )
        );
    }
}

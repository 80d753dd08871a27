//! The fan-out: rooms, each with one `tokio::sync::broadcast` channel that its
//! members' sessions subscribe to, its members, and its recent history.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;
use tokio_websockets::Message;

use crate::protocol;

/// Who sent a delivery: a member's connection id, or [`SERVER`].
pub(crate) type SenderId = u64;
/// The sender of the server's own notices (presence), which no-echo never hides.
pub(crate) const SERVER: SenderId = 0;

/// One message on a room's channel. Cloning it is cheap: the text is a
/// reference-counted `Message` built once, whatever the number of receivers.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// Who sent it, so a session can leave out its own messages (`--no-echo`).
    pub(crate) from: SenderId,
    /// The text message as it goes on the wire.
    pub(crate) message: Message,
}

/// A client could not join: the server has `max_rooms` rooms already.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooManyRooms;

/// The rooms. Lock order: the rooms map, then a room's state. Both are std
/// `Mutex`es, never held across an `.await`.
#[derive(Debug)]
pub(crate) struct Hub {
    /// Rooms by name (`""` is the lobby); a room exists while it has members.
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    /// Channel capacity of every room, in messages.
    capacity: usize,
    /// Messages of history each room keeps for newcomers.
    history: usize,
    /// Most rooms at once.
    max_rooms: usize,
    /// Whether joins and leaves are announced to the room.
    presence: bool,
}

/// One room.
#[derive(Debug)]
struct Room {
    /// The room's fan-out channel.
    tx: broadcast::Sender<Delivery>,
    /// Members and history. Publishing with history takes this lock too, so a
    /// newcomer's history and its first live message meet without a gap or overlap.
    state: Mutex<RoomState>,
}

/// What a room's lock guards.
#[derive(Debug, Default)]
struct RoomState {
    /// Members by connection id, with the label tags and notices use for them.
    members: HashMap<SenderId, String>,
    /// The last messages, oldest first.
    history: VecDeque<Message>,
}

/// What joining gives a session.
#[derive(Debug)]
pub(crate) struct Joined {
    /// The session's place in the room; dropping it leaves the room.
    pub(crate) membership: Membership,
    /// Sees every message published to the room from the join on.
    pub(crate) rx: broadcast::Receiver<Delivery>,
    /// The room's history up to the join, oldest first.
    pub(crate) history: Vec<Message>,
}

/// A session's place in a room. Dropping it leaves the room.
#[derive(Debug)]
pub(crate) struct Membership {
    hub: Arc<Hub>,
    room_name: String,
    room: Arc<Room>,
    id: SenderId,
    /// How this member is tagged: `alice@127.0.0.1:53422` or the address alone.
    who: String,
}

/// Locks `mutex`, going on with the data if a panic poisoned it: every change
/// under these locks is a single insert, remove or push, never left half done.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Hub {
    /// The rooms of a server with `config`'s limits; none exists yet.
    pub(crate) fn new(config: &crate::ServerConfig) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            capacity: config.buffer.max(1),
            history: config.history,
            max_rooms: config.max_rooms.max(1),
            presence: config.presence,
        }
    }

    /// Joins `room_name` as member `id`, labelled `who` in notices.
    pub(crate) fn join(
        self: &Arc<Self>,
        room_name: &str,
        id: SenderId,
        who: String,
    ) -> Result<Joined, TooManyRooms> {
        let mut rooms = lock(&self.rooms);
        let room = match rooms.get(room_name) {
            Some(room) => Arc::clone(room),
            None if rooms.len() >= self.max_rooms => return Err(TooManyRooms),
            None => {
                let room = Arc::new(Room {
                    tx: broadcast::channel(self.capacity).0,
                    state: Mutex::new(RoomState::default()),
                });
                rooms.insert(room_name.to_owned(), Arc::clone(&room));
                room
            }
        };
        let mut state = lock(&room.state);
        let rx = room.tx.subscribe();
        let history = state.history.iter().cloned().collect();
        if self.presence {
            let notice = protocol::presence_notice(&who, true, state.members.len() + 1);
            let _ = room.tx.send(Delivery {
                from: SERVER,
                message: Message::text(notice),
            });
        }
        state.members.insert(id, who.clone());
        drop(state);
        drop(rooms);
        let membership = Membership {
            hub: Arc::clone(self),
            room_name: room_name.to_owned(),
            room,
            id,
            who,
        };
        Ok(Joined {
            membership,
            rx,
            history,
        })
    }

    /// Rooms that exist now.
    #[cfg(test)]
    fn room_count(&self) -> usize {
        lock(&self.rooms).len()
    }
}

impl Membership {
    /// Sends `message` to everyone in the room, this member included (sessions
    /// with no-echo leave their own out).
    pub(crate) fn publish(&self, message: Message) {
        let delivery = Delivery {
            from: self.id,
            message,
        };
        // An error means nobody is subscribed, so there is nobody to tell.
        if self.hub.history == 0 {
            let _ = self.room.tx.send(delivery);
            return;
        }
        let mut state = lock(&self.room.state);
        if state.history.len() == self.hub.history {
            state.history.pop_front();
        }
        state.history.push_back(delivery.message.clone());
        let _ = self.room.tx.send(delivery);
    }

    /// The labels of everyone in the room, sorted.
    pub(crate) fn members(&self) -> Vec<String> {
        let mut members: Vec<String> = lock(&self.room.state).members.values().cloned().collect();
        members.sort();
        members
    }

    /// The room's name; `""` is the lobby.
    pub(crate) fn room(&self) -> &str {
        &self.room_name
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
        if state.members.is_empty() {
            drop(state);
            // Only our room goes: a room of the same name created after ours was
            // removed is someone else's.
            if rooms
                .get(&self.room_name)
                .is_some_and(|r| Arc::ptr_eq(r, &self.room))
            {
                rooms.remove(&self.room_name);
            }
        } else if let Some(who) = who.filter(|_| self.hub.presence) {
            let notice = protocol::presence_notice(&who, false, state.members.len());
            let _ = self.room.tx.send(Delivery {
                from: SERVER,
                message: Message::text(notice),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(buffer: usize, history: usize, max_rooms: usize, presence: bool) -> Arc<Hub> {
        Arc::new(Hub::new(&crate::ServerConfig {
            buffer,
            history,
            max_rooms,
            presence,
            ..crate::ServerConfig::default()
        }))
    }

    fn text(d: &Delivery) -> &str {
        d.message.as_text().expect("text")
    }

    #[test]
    fn rooms_appear_on_first_join_and_vanish_when_empty() {
        let hub = hub(16, 0, 10, false);
        let a = hub.join("rust", 1, "a".into()).expect("join");
        let b = hub.join("rust", 2, "b".into()).expect("join");
        let c = hub.join("", 3, "c".into()).expect("join");
        assert_eq!(hub.room_count(), 2);
        drop(a);
        assert_eq!(hub.room_count(), 2);
        drop(b);
        assert_eq!(hub.room_count(), 1);
        drop(c);
        assert_eq!(hub.room_count(), 0);
    }

    #[test]
    fn messages_stay_in_their_room() {
        let hub = hub(16, 0, 10, false);
        let mut rust = hub.join("rust", 1, "a".into()).expect("join");
        let mut lobby = hub.join("", 2, "b".into()).expect("join");
        rust.membership.publish(Message::text("in rust"));
        assert_eq!(text(&rust.rx.try_recv().expect("own message")), "in rust");
        assert!(lobby.rx.try_recv().is_err());
        lobby.membership.publish(Message::text("in lobby"));
        assert_eq!(
            rust.rx.try_recv().err(),
            Some(broadcast::error::TryRecvError::Empty)
        );
    }

    #[test]
    fn max_rooms_is_enforced_but_existing_rooms_can_be_joined() {
        let hub = hub(16, 0, 1, false);
        let _a = hub.join("one", 1, "a".into()).expect("join");
        assert_eq!(hub.join("two", 2, "b".into()).err(), Some(TooManyRooms));
        assert!(hub.join("one", 3, "c".into()).is_ok());
    }

    #[test]
    fn history_and_live_messages_meet_without_gap_or_overlap() {
        let hub = hub(64, 3, 10, false);
        let speaker = hub.join("", 1, "a".into()).expect("join");
        for i in 0..5 {
            speaker.membership.publish(Message::text(format!("m{i}")));
        }
        let mut newcomer = hub.join("", 2, "b".into()).expect("join");
        speaker.membership.publish(Message::text("m5"));
        let history: Vec<_> = newcomer
            .history
            .iter()
            .map(|m| m.as_text().expect("text").to_owned())
            .collect();
        assert_eq!(history, ["m2", "m3", "m4"]);
        assert_eq!(text(&newcomer.rx.try_recv().expect("live")), "m5");
        assert!(newcomer.rx.try_recv().is_err());
    }

    #[test]
    fn presence_announces_joins_and_leaves_with_the_count() {
        let hub = hub(16, 0, 10, true);
        let mut a = hub.join("", 1, "alice@x".into()).expect("join");
        assert_eq!(
            text(&a.rx.try_recv().expect("own join")),
            "* alice@x joined (1 here)"
        );
        let b = hub.join("", 2, "bob@y".into()).expect("join");
        assert_eq!(
            text(&a.rx.try_recv().expect("join")),
            "* bob@y joined (2 here)"
        );
        assert_eq!(a.membership.members(), ["alice@x", "bob@y"]);
        drop(b);
        let left = a.rx.try_recv().expect("leave");
        assert_eq!(text(&left), "* bob@y left (1 here)");
        assert_eq!(left.from, SERVER);
    }
}

//! What keeps this instance's rooms in step with Redis: a task that delivers what
//! Redis publishes to the local members in offset order (filling gaps from the
//! stream), the presence heartbeat, and the health check that notices an outage,
//! tells the members, and catches up when Redis is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::{PushInfo, PushKind};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::log::Entry;
use super::record::Logged;
use super::redis::{RedisLog, member, room_of_channel};
use super::room::{Intake, Room, lock};
use super::{Hub, SERVER};
use crate::metrics::Metrics;
use crate::protocol::structured::{Notice, NoticeKind, ServerFrame};
use crate::protocol::{Epoch, classic};

/// How often this instance asks Redis whether it is there.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// How often this instance's members are listed again in their rooms' presence.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// Most messages fetched from the stream at once to fill a gap.
const GAP_BATCH: usize = 256;

/// This instance's side of the Redis backplane.
#[derive(Debug)]
pub(crate) struct Remote {
    /// The connection, scripts and commands.
    pub(crate) log: RedisLog,
    /// This instance's random id, which keeps its presence entries apart.
    pub(crate) instance: u64,
    /// Whether Redis answered lately; read by `/healthz`, changed by the health
    /// check and by failed commands.
    up: AtomicBool,
    /// Where failures and recovered messages are counted.
    metrics: Arc<Metrics>,
}

impl Remote {
    /// The backplane over `log`.
    pub(crate) fn new(log: RedisLog, metrics: Arc<Metrics>) -> Self {
        Self {
            log,
            instance: fastrand::u64(..),
            up: AtomicBool::new(true),
            metrics,
        }
    }

    /// Whether Redis answered lately.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// This instance's presence entry for connection `id`, labelled `who`.
    pub(crate) fn member(&self, id: u64, who: &str) -> String {
        member(self.instance, id, who)
    }
}

/// Starts the tasks that keep `hub`'s rooms in step with Redis; they end when the
/// hub is dropped.
pub(crate) fn start(hub: &Arc<Hub>, pushes: mpsc::UnboundedReceiver<PushInfo>) {
    let weak = Arc::downgrade(hub);
    tokio::spawn(dispatch(weak.clone(), pushes));
    tokio::spawn(heartbeat(weak.clone()));
    tokio::spawn(health(weak));
}

/// Delivers what Redis publishes to the rooms it is for.
async fn dispatch(hub: Weak<Hub>, mut pushes: mpsc::UnboundedReceiver<PushInfo>) {
    while let Some(push) = pushes.recv().await {
        let Some(hub) = hub.upgrade() else { return };
        match push.kind {
            PushKind::Message => {
                let (Some(channel), Some(payload)) = (push.data.first(), push.data.get(1)) else {
                    continue;
                };
                let (Ok(channel), Ok(payload)) = (
                    redis::from_redis_value_ref::<String>(channel),
                    redis::from_redis_value_ref::<String>(payload),
                ) else {
                    continue;
                };
                let Some(name) = room_of_channel(&channel) else {
                    continue;
                };
                let Some(room) = lock(&hub.rooms).get(name).cloned() else {
                    continue;
                };
                match serde_json::from_str::<Logged>(&payload) {
                    Ok(logged) => ingest(&hub, &room, &logged).await,
                    Err(e) => {
                        warn!(room = %format_args!("/{name}"), error = %e, "unreadable message from Redis")
                    }
                }
            }
            PushKind::Disconnection => went_down(&hub, "the connection to Redis was lost"),
            _ => {}
        }
    }
}

/// Delivers `logged` to `room`'s members in offset order, fetching from the stream
/// what came before it and is missing here.
async fn ingest(hub: &Hub, room: &Room, logged: &Logged) {
    let Some(remote) = &hub.remote else { return };
    while let Intake::GapAfter(after) = room.take_logged(logged) {
        let wanted = usize::try_from(logged.offset - after - 1).unwrap_or(GAP_BATCH);
        match remote
            .log
            .read(&room.name, after, wanted.min(GAP_BATCH))
            .await
        {
            Ok(missing) if !missing.is_empty() => {
                remote
                    .metrics
                    .redis_recovered
                    .increment(missing.len() as u64);
                for earlier in missing.iter().filter(|m| m.epoch == logged.epoch) {
                    room.take_logged(earlier);
                }
                // Skipped from the stream (trimmed, or of another epoch): go on
                // from just before this message; sessions report the gap.
                if missing.iter().all(|m| m.epoch != logged.epoch) {
                    skip_to(room, logged.epoch, logged.offset - 1);
                }
            }
            Ok(_) => skip_to(room, logged.epoch, logged.offset - 1),
            Err(e) => {
                went_down(hub, &e.to_string());
                skip_to(room, logged.epoch, logged.offset - 1);
            }
        }
    }
}

/// Moves `room`'s delivery on to `offset` of `epoch`, over messages that cannot be
/// had: each session sees the gap and tells its client how many it missed.
fn skip_to(room: &Room, epoch: Epoch, offset: u64) {
    lock(&room.state).synced = Some((epoch, offset));
}

/// Lists this instance's members in their rooms again, before their entries expire.
async fn heartbeat(hub: Weak<Hub>) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        let Some(remote) = &hub.remote else { return };
        let rooms = hub.rooms();
        for room in rooms {
            let members: Vec<String> = lock(&room.state)
                .members
                .iter()
                .map(|(id, who)| remote.member(*id, who))
                .collect();
            if let Err(e) = remote.log.heartbeat(&room.name, &members).await {
                went_down(&hub, &e.to_string());
                break;
            }
        }
    }
}

/// Asks Redis whether it is there, each [`HEALTH_EVERY`]; when it comes back after
/// an outage, catches the rooms up and tells their members.
async fn health(hub: Weak<Hub>) {
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(hub) = hub.upgrade() else { return };
        let Some(remote) = &hub.remote else { return };
        match remote.log.ping().await {
            Ok(()) if !remote.is_up() => came_back(&hub).await,
            Ok(()) => {}
            Err(e) => went_down(&hub, &e.to_string()),
        }
    }
}

/// Marks Redis down (logging it once per outage) and tells every room's members
/// that their messages reach only this instance for now.
pub(super) fn went_down(hub: &Hub, why: &str) {
    let Some(remote) = &hub.remote else { return };
    remote.metrics.redis_errors.increment(1);
    if !remote.up.swap(false, Ordering::Relaxed) {
        return;
    }
    warn!(error = %why, "Redis is out of reach: rooms go on locally, unlogged, until it is back");
    notify_all(hub, NoticeKind::Degraded, classic::DEGRADED_NOTICE);
}

/// Redis answers again: catch every room up from its stream (or see that its log
/// began again), then tell the members.
async fn came_back(hub: &Hub) {
    let Some(remote) = &hub.remote else { return };
    let rooms = hub.rooms();
    for room in &rooms {
        // A room made while Redis was away could not subscribe to its channel, and
        // the connection resubscribes only what it had: ask again (a second
        // subscription to a channel is harmless), before reading where the room
        // stands, so nothing published after that read is missed.
        match remote.log.subscribe(&room.name).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "Redis answers, but subscribing to a room failed; trying again");
                return;
            }
            Err(_) => return,
        }
        let head = match remote.log.head(&room.name).await {
            Ok(head) => head,
            Err(e) => {
                warn!(error = %e, "Redis answers, but reading a room failed; trying again");
                return;
            }
        };
        // A room whose members all came while Redis was away starts here.
        let (epoch, mut after) = room.baseline(head.epoch, head.head);
        if epoch != head.epoch {
            after = 0;
        }
        // Fetch in order what was published while this instance was cut off; each
        // is delivered as if it had just arrived.
        while after < head.head {
            let Ok(batch) = remote.log.read(&room.name, after, GAP_BATCH).await else {
                return;
            };
            let Some(last) = batch.last() else { break };
            after = last.offset;
            remote.metrics.redis_recovered.increment(batch.len() as u64);
            for logged in &batch {
                ingest(hub, room, logged).await;
            }
        }
    }
    remote.up.store(true, Ordering::Relaxed);
    info!("Redis is back: rooms are logged and shared again");
    notify_all(hub, NoticeKind::Restored, classic::RESTORED_NOTICE);
}

/// Sends every local member a notice that is not in the log.
fn notify_all(hub: &Hub, kind: NoticeKind, text: &str) {
    let rooms = hub.rooms();
    for room in rooms {
        let epoch = lock(&room.state).epoch();
        let structured = ServerFrame::Notice(Notice::new(kind, text)).to_json();
        room.notify(&Entry {
            offset: 0,
            epoch,
            from: SERVER,
            accepted: super::log::stamp(),
            classic: tokio_websockets::Message::text(text.to_owned()),
            structured: tokio_websockets::Message::text(structured),
        });
    }
}

//! The store in Redis, shared by every instance serving the same rooms
//! ([`client`] holds the scripts and commands), and what keeps this instance's
//! rooms in step with it: a task that hands what Redis publishes to the local
//! fan-out in offset order (filling gaps from the stream), the presence heartbeat,
//! and the health check that notices an outage, tells the members, and catches up
//! when Redis is back ([`persistence`] reads, then and at connect, what Redis keeps).

mod client;
mod persistence;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::{PushInfo, PushKind};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::{
    Appending, CatchUp, Fanout, Format, Head, Intake, Later, Logged, Presence, Published, Record,
    RoomLog, Store, Unavailable, lock,
};
use crate::metrics::Metrics;
use crate::protocol::structured::NoticeKind;
use crate::protocol::{Epoch, classic};
use client::{RESPONSE_TIMEOUT, RedisLog, member, room_of_channel};
use persistence::Watched;

/// How often this instance asks Redis whether it is there.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// How often this instance's members are listed again in their rooms' presence.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// Most messages fetched from the stream at once to fill a gap.
const GAP_BATCH: usize = 256;

/// Rooms' logs in Redis, shared with every instance connected to the same Redis.
#[derive(Debug)]
pub(crate) struct RedisStore(Arc<Inner>);

/// This instance's side of Redis, shared by the store, its rooms' logs and its
/// tasks (which hold it weakly and end when the store is gone).
#[derive(Debug)]
struct Inner {
    /// The connection, scripts and commands.
    log: RedisLog,
    /// This instance's random id, which keeps its presence entries apart.
    instance: u64,
    /// Whether Redis answered lately; read by `/healthz`, changed by the health
    /// check and by failed commands.
    up: AtomicBool,
    /// What Redis keeps across its restarts, read at connect and when it is back.
    persistence: Watched,
    /// Where failures and recovered messages are counted.
    metrics: Arc<Metrics>,
    /// The rooms open here, by name, for what Redis publishes. std `Mutex`: never
    /// held across an `.await` nor while handing a message to a fan-out.
    rooms: Mutex<HashMap<String, Arc<Followed>>>,
}

/// A room open here.
#[derive(Debug)]
struct Followed {
    /// Its name; `""` is the lobby.
    name: String,
    /// Its local members and channels.
    fanout: Arc<dyn Fanout>,
    /// Whether this instance's subscription to the room's channel is confirmed;
    /// joiners wait for it before they read where the room stands.
    subscribed: watch::Sender<bool>,
}

/// One room's log in Redis.
#[derive(Debug)]
struct RedisRoom {
    room: Arc<Followed>,
    inner: Arc<Inner>,
}

impl RedisStore {
    /// Connects to the Redis at `url` within `timeout`, its rooms' streams kept to
    /// about `window` messages; failures and recovered messages go to `metrics`.
    ///
    /// # Errors
    /// The `redis` crate's error when the URL is invalid or Redis cannot be reached.
    pub(crate) async fn connect(
        url: &str,
        window: usize,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> redis::RedisResult<Self> {
        let (log, pushes) = RedisLog::connect(url, window, timeout).await?;
        let inner = Arc::new(Inner {
            log,
            instance: fastrand::u64(..),
            up: AtomicBool::new(true),
            persistence: Watched::default(),
            metrics,
            rooms: Mutex::new(HashMap::new()),
        });
        inner.persistence.check(inner.log.connection()).await;
        let weak = Arc::downgrade(&inner);
        tokio::spawn(dispatch(weak.clone(), pushes));
        tokio::spawn(heartbeat(weak.clone()));
        tokio::spawn(health(weak));
        Ok(Self(inner))
    }
}

impl Store for RedisStore {
    fn open(&self, room: &str, fanout: Arc<dyn Fanout>) -> Arc<dyn RoomLog> {
        let followed = Arc::new(Followed {
            name: room.to_owned(),
            fanout,
            subscribed: watch::channel(false).0,
        });
        lock(&self.0.rooms).insert(room.to_owned(), Arc::clone(&followed));
        // Asked under the hub's rooms lock, so subscriptions and their ends are
        // carried out in the order rooms appear and vanish.
        let confirmed = self.0.log.subscribe(room);
        let subscribed = followed.subscribed.clone();
        tokio::spawn(async move {
            let _ = confirmed.await;
            subscribed.send_replace(true);
        });
        Arc::new(RedisRoom {
            room: followed,
            inner: Arc::clone(&self.0),
        })
    }

    fn append_to(&self, room: &str, record: &Record<'_>) -> Option<Later<(Epoch, Published)>> {
        Some(Box::pin(self.0.append(room, record, None, None)))
    }

    fn up(&self) -> Option<bool> {
        Some(self.0.up.load(Ordering::Relaxed))
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn persistence(&self) -> Option<&'static str> {
        Some(self.0.persistence.now().name())
    }
}

impl Inner {
    /// Asks for `record` to be logged in `room` (see [`RoomLog::append`]); the
    /// answer comes with the log's epoch.
    fn append(
        self: &Arc<Self>,
        room: &str,
        record: &Record<'_>,
        line: Option<(&str, u64)>,
        presence: Option<Presence<'_>>,
    ) -> impl Future<Output = Result<(Epoch, Published), Unavailable>> + Send + use<> {
        let member = presence.map(|(Presence::Join(id, who) | Presence::Leave(id, who))| {
            member(self.instance, id, who)
        });
        let counted;
        let (record, change) = match (presence, &member) {
            (Some(change), Some(member)) => {
                // The script puts the count of every instance's members in.
                counted = Record {
                    here: 0,
                    ..record.clone()
                };
                let change = match change {
                    Presence::Join(..) => client::Presence::Join(member),
                    Presence::Leave(..) => client::Presence::Leave(member),
                };
                (&counted, Some(change))
            }
            _ => (record, None),
        };
        let asked = self.log.submit(room, record, line, change);
        let inner = Arc::clone(self);
        async move { asked.await.map_err(|e| inner.went_down(&e.to_string())) }
    }

    /// Marks Redis down (logging it once per outage) and tells every room's members
    /// that their messages reach only this instance for now.
    fn went_down(&self, why: &str) -> Unavailable {
        self.metrics.redis_errors.increment(1);
        if self.up.swap(false, Ordering::Relaxed) {
            warn!(error = %why, "Redis is out of reach: rooms go on locally, unlogged, until it is back");
            self.notify_all(NoticeKind::Degraded, classic::DEGRADED_NOTICE);
        }
        Unavailable::OutOfReach
    }

    /// The rooms open now, to go through without holding the lock.
    fn rooms(&self) -> Vec<Arc<Followed>> {
        lock(&self.rooms).values().cloned().collect()
    }

    /// Sends every local member a notice that is not in the log.
    fn notify_all(&self, kind: NoticeKind, text: &str) {
        for room in self.rooms() {
            room.fanout.notify(kind, text);
        }
    }
}

impl RoomLog for RedisRoom {
    fn append(
        &self,
        record: &Record<'_>,
        line: Option<(&str, u64)>,
        presence: Option<Presence<'_>>,
    ) -> Appending {
        let asked = self.inner.append(&self.room.name, record, line, presence);
        Appending::Later(Box::pin(async move {
            asked.await.map(|(_, published)| published)
        }))
    }

    fn head(&self) -> Later<Head> {
        let (room, inner) = (Arc::clone(&self.room), Arc::clone(&self.inner));
        Box::pin(async move {
            let mut subscribed = room.subscribed.subscribe();
            let _ = tokio::time::timeout(RESPONSE_TIMEOUT, subscribed.wait_for(|s| *s)).await;
            inner
                .log
                .head(&room.name)
                .await
                .map_err(|e| inner.went_down(&e.to_string()))
        })
    }

    fn read(&self, after: u64, limit: usize, format: Format) -> Later<CatchUp> {
        let (room, inner) = (Arc::clone(&self.room), Arc::clone(&self.inner));
        Box::pin(async move {
            let logged = match inner.log.read(&room.name, after, limit).await {
                Ok(logged) => logged,
                Err(e) => return Err(inner.went_down(&e.to_string())),
            };
            let first = logged.first().map_or(after + 1, |l| l.offset);
            Ok(CatchUp {
                missed: first.saturating_sub(after + 1),
                deliveries: logged
                    .iter()
                    .map(|l| l.delivery(format, &room.name))
                    .collect(),
            })
        })
    }

    fn members(&self) -> Later<Option<Vec<String>>> {
        let (room, inner) = (Arc::clone(&self.room), Arc::clone(&self.inner));
        Box::pin(async move {
            match inner.log.who(&room.name).await {
                Ok(members) => Ok(Some(members)),
                Err(e) => Err(inner.went_down(&e.to_string())),
            }
        })
    }

    fn list(&self, change: Presence<'_>) -> Option<Later<()>> {
        let (room, inner) = (Arc::clone(&self.room), Arc::clone(&self.inner));
        let (listed, member) = match change {
            Presence::Join(id, who) => (true, member(inner.instance, id, who)),
            Presence::Leave(id, who) => (false, member(inner.instance, id, who)),
        };
        Some(Box::pin(async move {
            let done = if listed {
                inner.log.heartbeat(&room.name, &[member]).await
            } else {
                inner.log.unlist(&room.name, &member).await
            };
            done.map_err(|e| inner.went_down(&e.to_string()))
        }))
    }

    fn close(&self, last: Option<Presence<'_>>, notice: bool) {
        let name = &self.room.name;
        {
            let mut rooms = lock(&self.inner.rooms);
            if rooms.get(name).is_some_and(|r| Arc::ptr_eq(r, &self.room)) {
                rooms.remove(name);
            }
        }
        self.inner.log.unsubscribe(name);
        // Leaving is said through Redis, to every instance (without a notice, only
        // `/who`'s list hears of it): it takes a round trip, so it happens after
        // the session is gone.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        match last {
            Some(leave @ Presence::Leave(_, who)) if notice => {
                let record = Record::presence(who, false, 0);
                let asked = self.inner.append(name, &record, None, Some(leave));
                runtime.spawn(asked);
            }
            Some(leave) => {
                if let Some(unlisted) = self.list(leave) {
                    runtime.spawn(unlisted);
                }
            }
            None => {}
        }
    }

    fn bytes(&self) -> usize {
        0
    }
}

/// Hands what Redis publishes to the rooms it is for.
async fn dispatch(inner: Weak<Inner>, mut pushes: mpsc::UnboundedReceiver<PushInfo>) {
    while let Some(push) = pushes.recv().await {
        let Some(inner) = inner.upgrade() else { return };
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
                let Some(room) = lock(&inner.rooms).get(name).cloned() else {
                    continue;
                };
                match serde_json::from_str::<Logged>(&payload) {
                    Ok(logged) => ingest(&inner, &room, &logged).await,
                    Err(e) => {
                        warn!(room = %format_args!("/{name}"), error = %e, "unreadable message from Redis")
                    }
                }
            }
            PushKind::Disconnection => {
                inner.went_down("the connection to Redis was lost");
            }
            _ => {}
        }
    }
}

/// Hands `logged` to `room`'s fan-out in offset order, fetching from the stream
/// what came before it and is missing here.
async fn ingest(inner: &Inner, room: &Followed, logged: &Logged) {
    let entry = logged
        .record
        .encode(&room.name, logged.epoch, logged.offset);
    while let Intake::GapAfter(after) = room.fanout.take(&entry) {
        let wanted = usize::try_from(logged.offset - after - 1).unwrap_or(GAP_BATCH);
        match inner
            .log
            .read(&room.name, after, wanted.min(GAP_BATCH))
            .await
        {
            Ok(missing) if !missing.is_empty() => {
                inner
                    .metrics
                    .redis_recovered
                    .increment(missing.len() as u64);
                for earlier in missing.iter().filter(|m| m.epoch == logged.epoch) {
                    let earlier = earlier
                        .record
                        .encode(&room.name, earlier.epoch, earlier.offset);
                    room.fanout.take(&earlier);
                }
                // Skipped from the stream (trimmed, or of another epoch): go on
                // from just before this message; sessions report the gap.
                if missing.iter().all(|m| m.epoch != logged.epoch) {
                    room.fanout.skip_to(logged.epoch, logged.offset - 1);
                }
            }
            Ok(_) => room.fanout.skip_to(logged.epoch, logged.offset - 1),
            Err(e) => {
                inner.went_down(&e.to_string());
                room.fanout.skip_to(logged.epoch, logged.offset - 1);
            }
        }
    }
}

/// Lists this instance's members in their rooms again, before their entries expire.
async fn heartbeat(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        for room in inner.rooms() {
            let members: Vec<String> = room
                .fanout
                .members()
                .iter()
                .map(|(id, who)| member(inner.instance, *id, who))
                .collect();
            if let Err(e) = inner.log.heartbeat(&room.name, &members).await {
                inner.went_down(&e.to_string());
                break;
            }
        }
    }
}

/// Asks Redis whether it is there, each [`HEALTH_EVERY`]; when it comes back after
/// an outage, catches the rooms up and tells their members.
async fn health(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        match inner.log.ping().await {
            Ok(()) if !inner.up.load(Ordering::Relaxed) => came_back(&inner).await,
            Ok(()) => {}
            Err(e) => {
                inner.went_down(&e.to_string());
            }
        }
    }
}

/// Redis answers again: catch every room up from its stream (or see that its log
/// began again), then tell the members.
async fn came_back(inner: &Inner) {
    // The Redis that answers may be another one, or the same with other settings.
    inner.persistence.check(inner.log.connection()).await;
    for room in &inner.rooms() {
        // A room made while Redis was away could not subscribe to its channel, and
        // the connection resubscribes only what it had: ask again (a second
        // subscription to a channel is harmless), before reading where the room
        // stands, so nothing published after that read is missed.
        match inner.log.subscribe(&room.name).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "Redis answers, but subscribing to a room failed; trying again");
                return;
            }
            Err(_) => return,
        }
        let head = match inner.log.head(&room.name).await {
            Ok(head) => head,
            Err(e) => {
                warn!(error = %e, "Redis answers, but reading a room failed; trying again");
                return;
            }
        };
        // A room whose members all came while Redis was away starts here.
        let (epoch, mut after) = room.fanout.baseline(head.epoch, head.head);
        if epoch != head.epoch {
            after = 0;
        }
        // Fetch in order what was published while this instance was cut off; each
        // is delivered as if it had just arrived.
        while after < head.head {
            let Ok(batch) = inner.log.read(&room.name, after, GAP_BATCH).await else {
                return;
            };
            let Some(last) = batch.last() else { break };
            after = last.offset;
            inner.metrics.redis_recovered.increment(batch.len() as u64);
            for logged in &batch {
                ingest(inner, room, logged).await;
            }
        }
    }
    inner.up.store(true, Ordering::Relaxed);
    info!("Redis is back: rooms are logged and shared again");
    inner.notify_all(NoticeKind::Restored, classic::RESTORED_NOTICE);
}

/// A Redis store on a `redis-server` of its own, for the shared suite.
#[cfg(test)]
pub(super) async fn subject(bounds: super::suite::Bounds) -> super::suite::Subject {
    let server = super::suite::RedisServer::start().await;
    let store = connect_to(&server, bounds.entries).await;
    super::suite::Subject {
        store: Arc::new(store),
        _keep: Some(super::suite::Keep::Redis(server)),
    }
}

#[cfg(test)]
async fn connect_to(server: &super::suite::RedisServer, window: usize) -> RedisStore {
    let metrics = Arc::new(Metrics::new());
    RedisStore::connect(&server.url(), window, Duration::from_secs(5), metrics)
        .await
        .expect("connects to redis-server")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::suite::{RedisServer, append, open};

    #[tokio::test]
    #[cfg_attr(
        not(has_redis),
        ignore = "needs redis-server (apt-get install redis-server)"
    )]
    async fn a_redis_emptied_begins_a_new_epoch_on_the_next_append() {
        let server = RedisServer::start().await;
        let subject = crate::store::suite::Subject {
            store: Arc::new(connect_to(&server, 10).await),
            _keep: None,
        };
        let (log, recorder) = open(&subject, "r").await;
        append(&*log, "before", None).await.expect("append");
        let before = log.head().await.expect("head");
        assert_eq!(before.head, 1);
        let mut admin = redis::Client::open(server.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connects");
        let () = redis::cmd("FLUSHALL")
            .query_async(&mut admin)
            .await
            .expect("FLUSHALL");
        let published = append(&*log, "after", None).await.expect("append");
        assert_eq!(published.offset, Some(1));
        let after = log.head().await.expect("head");
        assert_ne!(after.epoch, before.epoch);
        assert_eq!((after.head, after.first), (1, 1));
        let live = recorder.wait(2).await;
        assert_eq!(
            live.iter().map(|e| (e.epoch, e.offset)).collect::<Vec<_>>(),
            [(before.epoch, 1), (after.epoch, 1)]
        );
    }
}

//! The store in Redis, shared by every instance serving the same rooms
//! ([`client`] holds the scripts and commands), and what keeps this instance's
//! rooms in step with it: a task that hands what Redis publishes to the local
//! fan-out in offset order (filling gaps from the stream), the presence heartbeat,
//! and ([`health`]) the health check that notices an outage, tells the members,
//! and catches up when Redis is back ([`persistence`] reads, then and at connect,
//! what Redis keeps; [`primary`] finds the Redis to use, through Sentinel if
//! asked). No session waits on Redis longer than [`RedisBounds::wait`]
//! ([`bounds`] says why it needs saying).

mod bounds;
mod client;
mod health;
mod local;
mod persistence;
mod pipeline;
mod primary;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::{PushInfo, PushKind};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::warn;

use super::{
    Appending, CatchUp, Fanout, Format, Head, Intake, Later, Logged, Presence, Published, Record,
    RoomLog, Store, Unavailable, lock,
};
use crate::metrics::Metrics;
use crate::protocol::structured::NoticeKind;
use crate::protocol::{Epoch, classic};
pub(crate) use bounds::RedisBounds;
use client::{RedisLog, labels, member, prefix, room_of_channel};
use persistence::Watched;
use pipeline::{Failure, Wait};
pub(crate) use primary::RedisTarget;

/// How often this instance's members are listed again in their rooms' presence.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// One heartbeat in this many also reads each room's list back, for `/who`
/// while Redis is away: every 30 s.
const READ_BACK_EVERY: u64 = 6;
/// The largest room whose list a heartbeat reads back: at most about 40 µs of
/// Redis's time per room and instance every 30 s. A larger room's `/who` during
/// an outage names the other instances' members as of the last `/who` answered.
const READ_BACK_MOST: usize = 100;
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
    /// Messages each room's stream keeps, about, and so each room's local copy.
    window: usize,
    /// How long sessions wait on Redis, and how often it is checked.
    bounds: RedisBounds,
    /// Whether Redis answered lately; read by `/healthz` and by every session's
    /// call (while it is false they are answered at once, without asking Redis,
    /// and those waiting end when it turns false), changed by the health check and
    /// by failed commands. A `watch`, so that waits can end on the change.
    up: watch::Sender<bool>,
    /// What Redis keeps across its restarts, read at connect and when it is back.
    persistence: Watched,
    /// Whether the members were told that Redis is back since it was last lost.
    told_back: AtomicBool,
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
    /// What this instance holds of the room, for reads while Redis is away.
    local: local::Local,
}

/// One room's log in Redis.
#[derive(Debug)]
struct RedisRoom {
    room: Arc<Followed>,
    inner: Arc<Inner>,
}

impl RedisStore {
    /// Connects to `target`'s Redis within `timeout`, its rooms' streams kept to
    /// about `window` messages, sessions' waits on it within `bounds`; failures
    /// and recovered messages go to `metrics`.
    ///
    /// # Errors
    /// The `redis` crate's error when the target is invalid or Redis cannot be reached.
    pub(crate) async fn connect(
        target: RedisTarget,
        window: usize,
        timeout: Duration,
        bounds: RedisBounds,
        metrics: Arc<Metrics>,
    ) -> redis::RedisResult<Self> {
        let up = watch::Sender::new(true);
        let instance = fastrand::u64(..);
        let (log, pushes, failures) =
            RedisLog::connect(target, window, timeout, &bounds, up.subscribe(), instance).await?;
        let inner = Arc::new(Inner {
            log,
            instance,
            window,
            bounds,
            up,
            persistence: Watched::default(),
            told_back: AtomicBool::new(true),
            metrics,
            rooms: Mutex::new(HashMap::new()),
        });
        inner.persistence.check(inner.log.connection()).await;
        let weak = Arc::downgrade(&inner);
        tokio::spawn(dispatch(weak.clone(), pushes));
        tokio::spawn(health::publishes_failed(weak.clone(), failures));
        tokio::spawn(heartbeat(weak.clone()));
        tokio::spawn(health::health(weak));
        Ok(Self(inner))
    }
}

impl Store for RedisStore {
    fn open(&self, room: &str, fanout: Arc<dyn Fanout>) -> Arc<dyn RoomLog> {
        let followed = Arc::new(Followed {
            name: room.to_owned(),
            fanout,
            subscribed: watch::channel(false).0,
            local: local::Local::new(self.0.window, self.0.bounds.resume_bytes),
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
        Some(Box::pin(self.0.append(room, record, None, None, false)))
    }

    fn up(&self) -> Option<bool> {
        Some(self.0.is_up())
    }

    fn kind(&self) -> super::StoreKind {
        super::StoreKind::Redis
    }

    fn persistence(&self) -> Option<&'static str> {
        Some(self.0.persistence.now().name())
    }
}

impl Inner {
    /// Asks for `record` to be logged in `room` (see [`RoomLog::append`]). A held
    /// one (`hold`: a member's line) is answered once it is logged, however long
    /// Redis is away, or refused past the outage queue; any other within
    /// [`RedisBounds::wait`], and "out of reach" at once while Redis is taken for
    /// away (see [`pipeline::publish_in_batches`]). The answer comes with the
    /// log's epoch.
    fn append(
        self: &Arc<Self>,
        room: &str,
        record: &Record<'_>,
        line: Option<(&str, u64)>,
        presence: Option<Presence<'_>>,
        hold: bool,
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
        let wait = match hold {
            true => Wait::Hold,
            false => Wait::Until(Instant::now() + self.bounds.wait),
        };
        // Asked while Redis is away, it is answered without being tried: no error
        // of Redis's to count.
        let up = self.is_up();
        let asked = self.log.submit(room, record, line, change, wait);
        let inner = Arc::clone(self);
        async move {
            asked.await.map_err(|failure| match failure {
                Failure::Full => Unavailable::Refused,
                Failure::Redis(e) if up => inner.went_down(&e.to_string()),
                Failure::Redis(_) => Unavailable::OutOfReach,
            })
        }
    }

    /// Waits for `asked` on a session's behalf: "out of reach" at once while Redis
    /// is taken for away, without asking it; otherwise its answer within
    /// [`RedisBounds::wait`], an error or no answer by then taking Redis for away,
    /// and "out of reach" as soon as anything else takes it for away meanwhile.
    async fn bounded<T>(
        &self,
        asked: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        let mut up = self.up.subscribe();
        if !*up.borrow_and_update() {
            return Err(Unavailable::OutOfReach);
        }
        tokio::select! {
            answer = tokio::time::timeout(self.bounds.wait, asked) => match answer {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(e)) => Err(self.went_down(&e.to_string())),
                Err(_) => Err(self.went_down("no answer from Redis in time")),
            },
            _ = up.wait_for(|up| !up) => Err(Unavailable::OutOfReach),
        }
    }

    /// Whether Redis is taken to answer.
    fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Counts a failed or unanswered call, marks Redis down (logging it once per
    /// outage) and tells every room's members that their lines wait for it.
    fn went_down(&self, why: &str) -> Unavailable {
        self.metrics.redis_errors.increment(1);
        self.lost(why);
        Unavailable::OutOfReach
    }

    /// Takes Redis for away, and says so (once per outage) in the log and to
    /// every room's members.
    fn lost(&self, why: &str) {
        if self.up.send_replace(false) {
            self.told_back.store(false, Ordering::Relaxed);
            warn!(error = %why, "Redis is out of reach: members' lines are held until it is back");
            self.notify_all(NoticeKind::Delayed, classic::DEGRADED_NOTICE);
        }
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
        // A member's line waits through an outage; a join's or a leave's notice
        // does not hold up its session.
        let hold = presence.is_none();
        let asked = self
            .inner
            .append(&self.room.name, record, line, presence, hold);
        Appending::Later(Box::pin(async move {
            asked.await.map(|(_, published)| published)
        }))
    }

    fn head(&self) -> Later<Head> {
        let (room, inner) = (Arc::clone(&self.room), Arc::clone(&self.inner));
        Box::pin(async move {
            // The subscription's confirmation and the read share the one bound.
            let asked = async {
                let mut subscribed = room.subscribed.subscribe();
                let _ = subscribed.wait_for(|s| *s).await;
                inner.log.head(&room.name).await
            };
            // Redis away: where the room stands as far as it reached here.
            inner
                .bounded(asked)
                .await
                .or_else(|away| room.local.head().ok_or(away))
        })
    }

    fn read(&self, after: u64, limit: usize, format: Format) -> Later<CatchUp> {
        let (room, inner) = (Arc::clone(&self.room), Arc::clone(&self.inner));
        Box::pin(async move {
            let logged = match inner
                .bounded(inner.log.read(&room.name, after, limit))
                .await
            {
                Ok(logged) => logged,
                // Redis away: from what this instance holds.
                Err(away) => return room.local.read(after, limit, format).ok_or(away),
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
            match inner.bounded(inner.log.who(&room.name)).await {
                Ok(members) => {
                    room.local.listed(&members, &prefix(inner.instance));
                    Ok(Some(labels(&members)))
                }
                // Redis away: the other instances' members as last listed, and
                // this instance's now.
                Err(_) => {
                    let mut members = room.local.others();
                    members.extend(room.fanout.members().into_iter().map(|(_, who)| who));
                    members.sort();
                    Ok(Some(members))
                }
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
            let done = async {
                if listed {
                    inner.log.heartbeat(&room.name, &[member], None).await?;
                    Ok(())
                } else {
                    inner.log.unlist(&room.name, &member).await
                }
            };
            inner.bounded(done).await
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
                let asked = self.inner.append(name, &record, None, Some(leave), false);
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
            // Not while Redis is taken for away: the members are to hear that it
            // is back first, and the health check catches their rooms up then.
            PushKind::Message if !inner.is_up() => {}
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
                    // Redis taken for away: this message and what it follows
                    // come with the catch-up when it is back (see `health`).
                    Ok(logged) => {
                        if let Err(e) = ingest(&inner, &room, &logged).await {
                            inner.went_down(&e.to_string());
                        }
                    }
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
/// what came before it and is missing here. A read of the stream that fails is
/// an error for the caller: the gap is not skipped, since what Redis still has
/// must not be reported lost; the catch-up when Redis is back delivers it.
async fn ingest(inner: &Inner, room: &Followed, logged: &Logged) -> redis::RedisResult<()> {
    let entry = logged
        .record
        .encode(&room.name, logged.epoch, logged.offset);
    loop {
        let Intake::GapAfter(after) = room.fanout.take(&entry) else {
            room.local.keep(&entry);
            return Ok(());
        };
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
                    if room.fanout.take(&earlier) == Intake::Done {
                        room.local.keep(&earlier);
                    }
                }
                // Skipped from the stream (trimmed, or of another epoch): go on
                // from just before this message; sessions report the gap.
                if missing.iter().all(|m| m.epoch != logged.epoch) {
                    room.fanout.skip_to(logged.epoch, logged.offset - 1);
                }
            }
            Ok(_) => room.fanout.skip_to(logged.epoch, logged.offset - 1),
            Err(e) => return Err(e),
        }
    }
}

/// Lists this instance's members in their rooms again, before their entries expire.
async fn heartbeat(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beats: u64 = 0;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        // Reading a room's list back costs Redis about 0.4 µs a member
        // (benches/redis_capacity.py): once in READ_BACK_EVERY heartbeats, and
        // for rooms of at most READ_BACK_MOST members.
        let read_back = beats
            .is_multiple_of(READ_BACK_EVERY)
            .then_some(READ_BACK_MOST);
        beats += 1;
        // Redis away: nothing to renew it in; the first heartbeat once it is
        // back lists everyone again.
        if !inner.is_up() {
            continue;
        }
        for room in inner.rooms() {
            let members: Vec<String> = room
                .fanout
                .members()
                .iter()
                .map(|(id, who)| member(inner.instance, *id, who))
                .collect();
            match inner.log.heartbeat(&room.name, &members, read_back).await {
                Ok(listed) if read_back.is_some() && !listed.is_empty() => {
                    room.local.listed(&listed, &prefix(inner.instance));
                }
                Ok(_) => {}
                Err(e) => {
                    inner.went_down(&e.to_string());
                    break;
                }
            }
        }
    }
}

/// A Redis store on a `redis-server` of its own, for the shared suite.
#[cfg(test)]
pub(super) async fn subject(bounds: super::suite::Bounds) -> super::suite::Subject {
    let server = super::suite::RedisServer::start().await;
    let store = connect_to(&server, bounds.entries, RedisBounds::default()).await;
    super::suite::Subject {
        store: Arc::new(store),
        _keep: Some(super::suite::Keep::Redis(server)),
    }
}

#[cfg(test)]
async fn connect_to(
    server: &super::suite::RedisServer,
    window: usize,
    bounds: RedisBounds,
) -> RedisStore {
    let metrics = Arc::new(Metrics::new());
    RedisStore::connect(
        RedisTarget::Url(server.url()),
        window,
        Duration::from_secs(5),
        bounds,
        metrics,
    )
    .await
    .expect("connects to redis-server")
}

#[cfg(test)]
mod tests;

//! The commands of the Redis store: Redis as the rooms' log and sequencer, for several server instances serving the
//! same rooms. Publishing is one Lua script: take the room's next offset, append the
//! message to the room's stream (`XADD ... MAXLEN ~ window`, the offset as the entry
//! id) and `PUBLISH` it, so every instance (the sender's included) delivers what
//! arrives from Redis, in offset order. The room's epoch lives beside its offset;
//! presence is a sorted set of members with expiry times, kept fresh by a heartbeat.
//!
//! The connection is the `redis` crate's `ConnectionManager` over RESP3: it
//! reconnects (one attempt each time it is used after the connection was lost;
//! see [`RedisBounds`]), resubscribes to the rooms' channels, and hands published
//! messages to [`RedisLog::connect`]'s receiver; [`Primary`] holds it and swaps
//! it for one to another server when Sentinel names another primary. Publishes go
//! through [`pipeline`].

use std::future::Future;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, PushInfo, Script};
use tokio::sync::{mpsc, oneshot, watch};

use super::bounds::RedisBounds;
use super::pipeline::{self, Failure, Publish, Wait, gone};
use super::primary::{Primary, RedisTarget};
use crate::protocol::Epoch;
use crate::store::{Head, Logged, Record};

/// How long a presence entry lives without a heartbeat: an instance that dies
/// without saying goodbye leaves its members listed for at most this long.
pub(crate) const PRESENCE_TTL: Duration = Duration::from_secs(15);
/// How long a session's last accepted line id is remembered, for recognising
/// lines sent again.
const ACCEPTED_TTL: Duration = Duration::from_secs(3600);
/// How long a room's log and offset outlive its last member, or one of its last
/// 64 messages: the publish script renews it with the first message and every
/// 64th (two `EXPIRE`s on every message cost Redis about 1 µs of its 7), the
/// heartbeat every 5 s while the room has members.
const ROOM_TTL: Duration = Duration::from_secs(24 * 3600);

/// Takes the room's next offset, appends to its stream, publishes; recognises a
/// repeated line id, under a client's id or under an instance's token; keeps
/// presence when asked.
/// KEYS: meta, log, channel, accepted, who.
/// ARGV: new epoch, window, record JSON, line id or '', accepted TTL, presence op
/// ('join', 'leave' or ''), presence member, presence TTL ms, room TTL s, instance
/// token or '', number under it or '', then '' and, each time it is sent again
/// after Redis did not answer, '1'. Only a line sent again is looked up under the
/// token (reading the hash costs Redis about 0.8 of its 9 µs a line); every
/// numbered line is recorded there.
///
/// A client's last line id is kept as `id:offset:epoch` in its own key (with a
/// TTL), an instance's last number as `number:offset` in the room's meta hash,
/// beside the epoch: either counts only in the epoch it was logged in, so a room
/// whose log began again (its keys lost, evicted or expired apart) logs a line
/// sent again rather than answer `duplicate` for a line nobody got.
const PUBLISH: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local function repeated(last, id, in_epoch)
  if not last then return nil end
  local a = string.find(last, ':', 1, true)
  local b = string.find(last, ':', a + 1, true)
  local offset = string.sub(last, a + 1)
  if in_epoch and b then
    if string.sub(last, b + 1) ~= epoch then return nil end
    offset = string.sub(last, a + 1, b - 1)
  end
  local last_id = tonumber(string.sub(last, 1, a - 1))
  if id > last_id then return nil end
  if id == last_id then return {epoch, offset, 1} end
  return {epoch, '', 1}
end
if ARGV[4] ~= '' then
  local r = repeated(redis.call('GET', KEYS[4]), tonumber(ARGV[4]), true)
  if r then return r end
elseif ARGV[10] ~= '' and ARGV[#ARGV] == '1' then
  local r = repeated(redis.call('HGET', KEYS[1], ARGV[10]), tonumber(ARGV[11]), false)
  if r then return r end
end
local body = ARGV[3]
if ARGV[6] ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if ARGV[6] == 'join' then
    redis.call('ZADD', KEYS[5], now + tonumber(ARGV[8]), ARGV[7])
  else
    redis.call('ZREM', KEYS[5], ARGV[7])
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  local here = redis.call('ZCOUNT', KEYS[5], now, '+inf')
  body = string.sub(body, 1, -2) .. ',"h":' .. here .. '}'
end
local offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local message = '{"e":"' .. epoch .. '","o":' .. offset .. ',' .. string.sub(body, 2)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '0-' .. offset, 'd', message)
redis.call('PUBLISH', KEYS[3], message)
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[4], ARGV[4] .. ':' .. offset .. ':' .. epoch, 'EX', ARGV[5])
elseif ARGV[10] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[10], ARGV[11] .. ':' .. offset)
end
if offset % 64 == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[9])
  redis.call('EXPIRE', KEYS[2], ARGV[9])
end
return {epoch, tostring(offset), 0}
"#;

/// Where a room stands: its epoch (made if the room is new), last offset, and the
/// first offset its stream still holds. KEYS: meta, log. ARGV: new epoch.
const HEAD: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
local id = ''
if #first > 0 then id = first[1][1] end
return {epoch, redis.call('HGET', KEYS[1], 'offset'), id}
";

/// The room's members on every instance, the expired ones dropped. KEYS: who.
const WHO: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
";

/// Keeps this instance's members of a room listed, and the room's log alive;
/// answers, if asked and the room has at most that many members, with every
/// instance's members (for `/who` while Redis is away). KEYS: who, meta, log.
/// ARGV: presence TTL ms, room TTL s, the most members to answer with or '',
/// members...
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 4, #ARGV do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[2])
if ARGV[3] == '' or redis.call('ZCARD', KEYS[1]) > tonumber(ARGV[3]) then return {} end
return redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')
";

/// The keys of one room; `{...}` keeps them in one hash slot.
struct Keys {
    meta: String,
    log: String,
    channel: String,
    who: String,
    prefix: String,
}

impl Keys {
    fn of(room: &str) -> Self {
        let prefix = format!("bc:{{r:{room}}}");
        Self {
            meta: format!("{prefix}:meta"),
            log: format!("{prefix}:log"),
            channel: format!("{prefix}:pub"),
            who: format!("{prefix}:who"),
            prefix,
        }
    }

    fn accepted(&self, client_id: &str) -> String {
        format!("{}:acc:{client_id}", self.prefix)
    }
}

/// The room a channel name is for, if it is one of ours.
pub(crate) fn room_of_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix("bc:{r:")?.strip_suffix("}:pub")
}

/// Joining or leaving, kept in the room's presence set along with the notice.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Presence<'a> {
    /// This member (`instance/id label`) joined.
    Join(&'a str),
    /// This member left.
    Leave(&'a str),
}

/// A subscription change, carried out in the order asked.
enum Subscription {
    Subscribe(String, oneshot::Sender<redis::RedisResult<()>>),
    Unsubscribe(String),
}

/// This instance's connection to Redis: the log, the sequencer, presence.
pub(crate) struct RedisLog {
    /// The connection in use, swapped when Sentinel names another primary.
    primary: Primary,
    publish: Script,
    head: Script,
    who: Script,
    heartbeat: Script,
    /// Messages kept per room stream (approximately, `MAXLEN ~`).
    window: usize,
    /// How many replicas must be in step for Redis to count as answering
    /// (`--redis-replicas`), and the most the health check waits for them.
    replicas: (u32, Duration),
    /// Subscribe and unsubscribe go through one task, so they happen in the order
    /// rooms appear and vanish.
    subscriptions: mpsc::UnboundedSender<Subscription>,
    /// Publishes go through one task, which sends them in order, in batches.
    publishes: mpsc::UnboundedSender<Publish>,
}

impl std::fmt::Debug for RedisLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLog")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl RedisLog {
    /// Connects to `target`'s Redis (see [`Primary`]; RESP3, so that published
    /// messages come on the same connection), within `timeout`, trying again while it refuses (it may
    /// be starting); then each command and reconnection is bounded by `bounds`, and
    /// publishes are answered at once, unsent, while `up` says Redis is away.
    /// Published messages and connection events go to the first receiver returned,
    /// the errors of batches of publishes sent to Redis to the second.
    ///
    /// # Errors
    /// The `redis` crate's error when the target is invalid or Redis cannot be reached.
    pub(crate) async fn connect(
        target: RedisTarget,
        window: usize,
        timeout: Duration,
        bounds: &RedisBounds,
        up: watch::Receiver<bool>,
        instance: u64,
    ) -> redis::RedisResult<(
        Self,
        mpsc::UnboundedReceiver<PushInfo>,
        mpsc::UnboundedReceiver<String>,
    )> {
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let config = bounds
            .manager_config()
            .set_push_sender(push_tx)
            .set_automatic_resubscription();
        let primary =
            Primary::connect(target, config, timeout, bounds.retry_every, bounds.wait).await?;
        let (subscriptions, orders) = mpsc::unbounded_channel();
        tokio::spawn(Self::subscribe_in_order(primary.follow(), orders));
        let publish = Script::new(PUBLISH);
        let (publishes, queue) = mpsc::unbounded_channel();
        let (failures, failed) = mpsc::unbounded_channel();
        let settings = pipeline::Settings {
            script: publish.clone(),
            wait: bounds.wait,
            bound: bounds.outage_queue,
            token: format!("i:{instance:016x}"),
            replicas: bounds.replicas,
        };
        tokio::spawn(pipeline::publish_in_batches(
            primary.follow(),
            settings,
            queue,
            up,
            failures,
        ));
        let log = Self {
            primary,
            publishes,
            publish,
            head: Script::new(HEAD),
            who: Script::new(WHO),
            heartbeat: Script::new(HEARTBEAT),
            window: window.max(1),
            // Within half the bound: the connection's own deadline for any
            // command is the whole of it.
            replicas: (bounds.replicas, bounds.wait / 2),
            subscriptions,
        };
        Ok((log, push_rx, failed))
    }

    /// Carries out subscription changes one after the other, on the connection in
    /// use when each comes.
    async fn subscribe_in_order(
        connection: watch::Receiver<ConnectionManager>,
        mut orders: mpsc::UnboundedReceiver<Subscription>,
    ) {
        while let Some(order) = orders.recv().await {
            let mut manager = connection.borrow().clone();
            match order {
                Subscription::Subscribe(channel, done) => {
                    let _ = done.send(manager.subscribe(&channel).await);
                }
                Subscription::Unsubscribe(channel) => {
                    // A failure leaves a subscription whose messages the dispatcher
                    // drops (the room is gone); the reconnect forgets it anyway.
                    let _ = manager.unsubscribe(&channel).await;
                }
            }
        }
    }

    /// Asks for `room`'s messages; the receiver says when Redis confirmed.
    pub(crate) fn subscribe(&self, room: &str) -> oneshot::Receiver<redis::RedisResult<()>> {
        let (done, confirmed) = oneshot::channel();
        let _ = self
            .subscriptions
            .send(Subscription::Subscribe(Keys::of(room).channel, done));
        confirmed
    }

    /// Stops asking for `room`'s messages.
    pub(crate) fn unsubscribe(&self, room: &str) {
        let _ = self
            .subscriptions
            .send(Subscription::Unsubscribe(Keys::of(room).channel));
    }

    /// Asks for `record` to be logged and published in `room`, at once; with `line`
    /// (a session and a line id), recognises a repeat; with `presence`, updates the
    /// room's members and puts their count in the record. Publishes go to Redis in
    /// the order they are asked for, many in one round trip (see
    /// [`pipeline::publish_in_batches`]); `wait` says whether it is held through an
    /// outage or answered by a deadline. Asking is what fixes the order: a session
    /// that asks for two lines one after the other has them logged in that order,
    /// whatever it awaits.
    ///
    /// The future's error is Redis's, or a time-out (nothing was published then,
    /// or it is not known), or the outage queue being full (nothing was).
    pub(crate) fn submit(
        &self,
        room: &str,
        record: &Record<'_>,
        line: Option<(&str, u64)>,
        presence: Option<Presence<'_>>,
        wait: Wait,
    ) -> impl Future<Output = pipeline::Answer> + Send + use<> {
        let keys = Keys::of(room);
        let (accepted, id) = match line {
            Some((client_id, id)) => (keys.accepted(client_id), id.to_string()),
            None => (keys.accepted("-"), String::new()),
        };
        let (op, member) = match presence {
            Some(Presence::Join(member)) => ("join", member),
            Some(Presence::Leave(member)) => ("leave", member),
            None => ("", ""),
        };
        let mut call = redis::cmd("EVALSHA");
        call.arg(self.publish.get_hash())
            .arg(5)
            .arg(&keys.meta)
            .arg(&keys.log)
            .arg(&keys.channel)
            .arg(&accepted)
            .arg(&keys.who)
            .arg(Epoch::random().to_string())
            .arg(self.window)
            .arg(serde_json::to_string(record).unwrap_or_default())
            .arg(id)
            .arg(ACCEPTED_TTL.as_secs())
            .arg(op)
            .arg(member)
            .arg(PRESENCE_TTL.as_millis() as u64)
            .arg(ROOM_TTL.as_secs());
        let (reply, answer) = oneshot::channel();
        let asked = self.publishes.send(Publish {
            call,
            numbered: wait == Wait::Hold && line.is_none(),
            wait,
            reply,
        });
        async move {
            if asked.is_err() {
                return Err(Failure::Redis(gone()));
            }
            answer.await.unwrap_or_else(|_| Err(Failure::Redis(gone())))
        }
    }

    /// Where `room` stands, making its epoch if it has none.
    ///
    /// # Errors
    /// Redis's error, or one for an answer that is not what the script returns.
    pub(crate) async fn head(&self, room: &str) -> redis::RedisResult<Head> {
        let keys = Keys::of(room);
        let (epoch, head, first): (String, u64, String) = self
            .head
            .key(&keys.meta)
            .key(&keys.log)
            .arg(Epoch::random().to_string())
            .invoke_async(&mut self.primary.manager())
            .await?;
        let first = match first.strip_prefix("0-") {
            Some(offset) => offset.parse().map_err(|_| invalid(first.clone()))?,
            None => head + 1,
        };
        Ok(Head {
            epoch: epoch.parse().map_err(invalid)?,
            head,
            first,
        })
    }

    /// Up to `limit` logged messages of `room` after `after`, oldest first.
    ///
    /// # Errors
    /// Redis's error, or one for an entry that is not a record of ours.
    pub(crate) async fn read(
        &self,
        room: &str,
        after: u64,
        limit: usize,
    ) -> redis::RedisResult<Vec<Logged>> {
        let reply: StreamRangeReply = self
            .primary
            .manager()
            .xrange_count(Keys::of(room).log, format!("(0-{after}"), "+", limit)
            .await?;
        reply
            .ids
            .iter()
            .map(|entry| {
                let data: String = entry.get("d").ok_or_else(|| invalid(entry.id.clone()))?;
                serde_json::from_str(&data).map_err(|e| invalid(e.to_string()))
            })
            .collect()
    }

    /// Everyone in `room` on every instance: the presence set's members
    /// (`instance/connection label`, see [`member`]).
    ///
    /// # Errors
    /// Redis's error.
    pub(crate) async fn who(&self, room: &str) -> redis::RedisResult<Vec<String>> {
        self.who
            .key(Keys::of(room).who)
            .invoke_async(&mut self.primary.manager())
            .await
    }

    /// Keeps `members` of `room` (this instance's) listed for another
    /// [`PRESENCE_TTL`], and the room's keys alive; answers, if the room has at
    /// most `answer` members, with every instance's members, as
    /// [`RedisLog::who`] does, and otherwise with none (a join's listing does not
    /// ask: a room's joins would read the whole list each).
    ///
    /// # Errors
    /// Redis's error.
    pub(crate) async fn heartbeat(
        &self,
        room: &str,
        members: &[String],
        answer: Option<usize>,
    ) -> redis::RedisResult<Vec<String>> {
        let keys = Keys::of(room);
        let mut invocation = self.heartbeat.key(&keys.who);
        invocation
            .key(&keys.meta)
            .key(&keys.log)
            .arg(PRESENCE_TTL.as_millis() as u64)
            .arg(ROOM_TTL.as_secs())
            .arg(answer.map(|most| most.to_string()).unwrap_or_default());
        for member in members {
            invocation.arg(member);
        }
        invocation.invoke_async(&mut self.primary.manager()).await
    }

    /// Takes `member` of `room` (this instance's) off the room's list at once, as a
    /// leave without a presence notice does.
    ///
    /// # Errors
    /// Redis's error.
    pub(crate) async fn unlist(&self, room: &str, member: &str) -> redis::RedisResult<()> {
        let _: i64 = redis::cmd("ZREM")
            .arg(Keys::of(room).who)
            .arg(member)
            .query_async(&mut self.primary.manager())
            .await?;
        Ok(())
    }

    /// The connection in use, for commands of other concerns (the persistence check).
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.primary.manager()
    }

    /// The connection and where it goes (see [`Primary`]).
    pub(crate) fn primary(&self) -> &Primary {
        &self.primary
    }

    /// Asks Redis for an answer, within [`RedisBounds::wait`]. While the connection
    /// is lost, each ping makes the connection manager try one new one; a
    /// connection that answers nothing (a stopped Redis) is kept, and answers
    /// again when Redis goes on. With `--redis-replicas`, the replicas must be in
    /// step too (`WAIT`), or Redis counts as away. Through Sentinel it asks for the Redis's role:
    /// one that answers as a replica (a primary demoted in a failover, back on its
    /// old address) is not the one to write to, and counts as away.
    ///
    /// # Errors
    /// Redis's error, a time-out included, or one for a Redis that is a replica.
    pub(crate) async fn ping(&self) -> redis::RedisResult<()> {
        let mut manager = self.primary.manager();
        let (replicas, within) = self.replicas;
        if !self.primary.follows_sentinel() {
            let _: String = redis::cmd("PING").query_async(&mut manager).await?;
            return pipeline::replicated(&mut manager, replicas, within).await;
        }
        match redis::cmd("ROLE").query_async(&mut manager).await? {
            redis::Role::Primary { .. } => {
                pipeline::replicated(&mut manager, replicas, within).await
            }
            _ => Err(redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                "the Redis in use is no longer the primary",
            ))),
        }
    }
}

/// An error for an answer from Redis that is not what we wrote there.
pub(super) fn invalid(what: impl std::fmt::Display) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Parse,
        "unexpected answer from Redis",
        what.to_string(),
    ))
}

/// A presence member: unique per connection, with the label `/who` shows.
pub(crate) fn member(instance: u64, id: u64, label: &str) -> String {
    format!("{}{id:016x} {label}", prefix(instance))
}

/// How the presence members of `instance` begin.
pub(crate) fn prefix(instance: u64) -> String {
    format!("{instance:016x}/")
}

/// The labels of presence `members`, sorted.
pub(crate) fn labels(members: &[String]) -> Vec<String> {
    let mut labels: Vec<String> = members
        .iter()
        .filter_map(|m| m.split_once(' ').map(|(_, label)| label.to_owned()))
        .collect();
    labels.sort();
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_lead_back_to_their_room() {
        for room in ["", "rust", "a.b-c_d"] {
            assert_eq!(room_of_channel(&Keys::of(room).channel), Some(room));
        }
        assert_eq!(room_of_channel("other"), None);
        assert_eq!(Keys::of("rust").accepted("s1"), "bc:{r:rust}:acc:s1");
    }

    #[test]
    fn members_are_unique_per_connection_and_show_their_label() {
        let m = member(1, 2, "alice@127.0.0.1:5");
        assert_eq!(m, "0000000000000001/0000000000000002 alice@127.0.0.1:5");
        assert_eq!(m.split_once(' ').map(|(_, l)| l), Some("alice@127.0.0.1:5"));
    }
}

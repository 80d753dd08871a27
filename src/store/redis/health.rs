//! Noticing that Redis is away and that it is back: the health check, which pings
//! it (often while it is away, each ping trying a new connection), catches the
//! rooms up when it answers again and tells their members; and the publishes'
//! failures, which take it for away at once.

use std::sync::Weak;
use std::sync::atomic::Ordering;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{Followed, GAP_BATCH, Inner, ingest};
use crate::protocol::classic;
use crate::protocol::structured::NoticeKind;

/// Takes Redis for away when a batch of publishes failed or went unanswered: its
/// senders may not be waiting on it now (a session reading Redis for `/who` waits
/// there), and every wait is to end as soon as one has found Redis away.
pub(super) async fn publishes_failed(
    inner: Weak<Inner>,
    mut failures: mpsc::UnboundedReceiver<String>,
) {
    while let Some(why) = failures.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        inner.lost(&why);
    }
}

/// Asks Redis whether it is there, each [`check_every`] while it
/// answers and each [`retry_every`] while it is away (each ping then
/// tries a new connection); through Sentinel, asks it for the primary first, each
/// time, and moves to the one it names; when it comes back after an outage, catches the rooms
/// up and tells their members.
///
/// [`check_every`]: super::RedisBounds::check_every
/// [`retry_every`]: super::RedisBounds::retry_every
pub(super) async fn health(inner: Weak<Inner>) {
    loop {
        let Some(every) = inner.upgrade().map(|inner| match inner.is_up() {
            true => inner.bounds.check_every,
            false => inner.bounds.retry_every,
        }) else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        // Through Sentinel, the primary may be another server now (see
        // `primary`); a new connection is taken up as Redis back.
        match inner.log.primary().find_again().await {
            Ok(true) if inner.is_up() => {
                inner.lost("Sentinel names another primary");
                continue;
            }
            Ok(_) => {}
            Err(e) if !inner.is_up() => {
                debug!(error = %e, "Sentinel names no primary that answers yet");
                continue;
            }
            // Redis answering, a Sentinel that does not is no outage.
            Err(e) => debug!(error = %e, "Sentinel does not answer; keeping the primary"),
        }
        match inner.log.ping().await {
            Ok(()) if !inner.is_up() => came_back(&inner).await,
            Ok(()) => {}
            Err(e) => {
                inner.went_down(&e.to_string());
            }
        }
    }
}

/// Redis answers again: tell the members, catch every room up from its stream
/// (or see that its log began again), let the held lines go, and catch the rooms
/// up once more. While Redis is taken for away, what it publishes is not delivered
/// (see `dispatch`), so that every member hears that Redis is back before the
/// lines that follow; the second catch-up delivers what was published between
/// the first and the end of the outage.
async fn came_back(inner: &Inner) {
    // The Redis that answers may be another one, or the same with other settings.
    inner.persistence.check(inner.log.connection()).await;
    // Told before anything that follows, once per outage (a catch-up that fails
    // is tried again).
    if !inner.told_back.swap(true, Ordering::Relaxed) {
        inner.notify_all(NoticeKind::Restored, classic::RESTORED_NOTICE);
    }
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
        if let Err(e) = catch_up(inner, room).await {
            warn!(error = %e, "Redis answers, but reading a room failed; trying again");
            return;
        }
    }
    inner.up.send_replace(true);
    info!("Redis is back: the held lines go out, and rooms are shared again");
    for room in &inner.rooms() {
        if let Err(e) = catch_up(inner, room).await {
            inner.went_down(&e.to_string());
            return;
        }
    }
}

/// Delivers to `room`'s members, in order, what its log has past what they got
/// (all of it if the log began again); a room whose members all came while Redis
/// was away starts where the log stands.
async fn catch_up(inner: &Inner, room: &Followed) -> redis::RedisResult<()> {
    let head = inner.log.head(&room.name).await?;
    let (epoch, mut after) = room.fanout.baseline(head.epoch, head.head);
    if epoch != head.epoch {
        after = 0;
    }
    // Each is delivered as if it had just arrived.
    while after < head.head {
        let batch = inner.log.read(&room.name, after, GAP_BATCH).await?;
        let Some(last) = batch.last() else { break };
        after = last.offset;
        inner.metrics.redis_recovered.increment(batch.len() as u64);
        for logged in &batch {
            ingest(inner, room, logged).await?;
        }
    }
    Ok(())
}

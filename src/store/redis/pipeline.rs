//! The publishes on their way to Redis: one task sends them in the order they
//! were asked for, as many as are waiting in one pipeline, each answered by its
//! deadline, and at once while Redis is out of reach.

use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::client::invalid;
use crate::protocol::Epoch;
use crate::store::Published;

/// Most publishes sent in one round trip.
const PUBLISH_BATCH: usize = 256;

/// What became of a publish: its epoch and place, or Redis's error.
pub(super) type Answer = redis::RedisResult<(Epoch, Published)>;

/// A publish waiting for its turn: the script's call, when its sender stops
/// waiting, and where its result goes.
pub(super) struct Publish {
    /// The publish script's call.
    pub(super) call: redis::Cmd,
    /// When its sender stops waiting ([`RedisBounds::wait`] after it asked): it
    /// is answered by then, and never sent to Redis after it.
    ///
    /// [`RedisBounds::wait`]: super::bounds::RedisBounds::wait
    pub(super) deadline: Instant,
    /// Where its answer goes.
    pub(super) reply: oneshot::Sender<Answer>,
}

/// Sends publishes to Redis in the order they were asked for, as many as are
/// waiting in one pipeline: a sender waits one round trip for a whole batch, not
/// one per line, and Redis runs them in that order. The script is loaded first, and
/// again if Redis lost it (a restart); a batch refused for that ran none of its
/// calls, so sending it again keeps the order.
///
/// Every publish is answered by its deadline, and at once while Redis is taken
/// for away (`up` false), in the order asked. A batch is not sent while Redis is
/// taken for away, nor when one of its publishes is past its deadline: all of it
/// is answered with an error. A batch sent is answered with an error when its
/// earliest deadline passes, or when Redis is taken for away meanwhile; Redis may
/// still run it later (a stopped Redis runs what waits in its socket when it goes
/// on), as for any error of a publish. The error of a batch sent also goes to
/// `failures`, at once: its senders may be busy elsewhere, and every other wait is
/// to end as soon as one found Redis away.
pub(super) async fn publish_in_batches(
    connection: watch::Receiver<ConnectionManager>,
    script: Script,
    mut orders: mpsc::UnboundedReceiver<Publish>,
    mut up: watch::Receiver<bool>,
    failures: mpsc::UnboundedSender<String>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while let Some(first) = orders.recv().await {
        batch.push(first);
        while batch.len() < PUBLISH_BATCH {
            match orders.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let deadline = batch.iter().map(|p| p.deadline).min();
        let answers = match deadline {
            _ if !*up.borrow_and_update() => Err(away()),
            Some(deadline) if deadline > Instant::now() => {
                // The connection in use now: Sentinel may have named another primary.
                let mut manager = connection.borrow().clone();
                let sent = send(&mut manager, &script, &mut batch);
                let answers = tokio::select! {
                    answers = tokio::time::timeout_at(deadline, sent) => {
                        answers.unwrap_or_else(|_| Err(late()))
                    }
                    _ = up.wait_for(|up| !up) => Err(away()),
                };
                if let Err(e) = &answers {
                    let _ = failures.send(e.to_string());
                }
                answers
            }
            _ => Err(late()),
        };
        answer(&mut batch, answers);
    }
}

/// Sends `batch` in one pipeline, loading the script again if Redis lost it.
async fn send(
    manager: &mut ConnectionManager,
    script: &Script,
    batch: &mut [Publish],
) -> redis::RedisResult<Vec<(String, String, u8)>> {
    let mut pipeline = redis::pipe();
    for publish in batch {
        pipeline.add_command(std::mem::take(&mut publish.call));
    }
    let answers = pipeline.query_async(manager).await;
    if answers
        .as_ref()
        .is_err_and(|e| e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
    {
        script.prepare_invoke().load_async(manager).await?;
        return pipeline.query_async(manager).await;
    }
    answers
}

/// Tells each publish of `batch` (emptied) what Redis answered.
fn answer(batch: &mut Vec<Publish>, answers: redis::RedisResult<Vec<(String, String, u8)>>) {
    let answers = answers.and_then(|answers| {
        if answers.len() == batch.len() {
            Ok(answers)
        } else {
            Err(invalid(format!(
                "{} answers to {} publishes",
                answers.len(),
                batch.len()
            )))
        }
    });
    match answers {
        Ok(answers) => {
            for (publish, (epoch, offset, duplicate)) in batch.drain(..).zip(answers) {
                let answer = epoch.parse().map_err(invalid).map(|epoch| {
                    let published = Published {
                        offset: offset.parse().ok(),
                        duplicate: duplicate == 1,
                    };
                    (epoch, published)
                });
                let _ = publish.reply.send(answer);
            }
        }
        Err(e) => {
            for publish in batch.drain(..) {
                let _ = publish.reply.send(Err(e.clone()));
            }
        }
    }
}

/// The error for a publish not sent, or not answered, while Redis is taken for
/// away.
fn away() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "Redis is out of reach",
    ))
}

/// The error for a publish not answered by its deadline (or not sent, past it).
fn late() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no answer from Redis in time",
    ))
}

/// The error for a publish whose publisher is gone (the server is stopping).
pub(super) fn gone() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, "the publisher has stopped"))
}

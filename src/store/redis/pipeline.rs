//! The publishes on their way to Redis: one task sends them in the order they
//! were asked for, as many as are waiting in one pipeline; while Redis is out of
//! reach it holds a member's lines, in that order, and sends them when it is back.

use std::collections::VecDeque;

use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Duration, Instant};

use super::client::invalid;
use crate::protocol::Epoch;
use crate::store::Published;

/// Most publishes sent in one round trip.
const PUBLISH_BATCH: usize = 256;

/// Why a publish was not logged.
#[derive(Debug, Clone)]
pub(super) enum Failure {
    /// Redis's error, a time-out included: nothing was published, or it is not
    /// known (a publish that may wait is then held, not answered this).
    Redis(redis::RedisError),
    /// Redis is out of reach and this instance holds as many lines as it may:
    /// the line was not sent, and will not be.
    Full,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Redis(e) => e.fmt(f),
            Failure::Full => f.write_str("the outage queue is full"),
        }
    }
}

/// What became of a publish: its epoch and place, or why it was not logged.
pub(super) type Answer = Result<(Epoch, Published), Failure>;

/// How long a publish's sender waits for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// Until it is logged, through an outage (a member's line): while Redis is
    /// out of reach it is held, in its turn, and sent when Redis is back. Past
    /// the outage queue's bound it is refused ([`Failure::Full`]).
    Hold,
    /// Until this instant at most (presence, the publish API): answered by then,
    /// never sent after it, and answered "out of reach" at once while Redis is.
    Until(Instant),
}

/// A publish waiting for its turn: the script's call, how long its sender
/// waits, and where its result goes.
pub(super) struct Publish {
    /// The publish script's call, but for its last arguments, which the
    /// pipeline adds: the instance's token and this publish's number under it
    /// (see [`Numbering`]), or two empty ones, then whether it is sent again.
    pub(super) call: redis::Cmd,
    /// Whether the call is numbered under the instance's token: a held line
    /// without a client's line id, which may be sent twice.
    pub(super) numbered: bool,
    /// How long its sender waits.
    pub(super) wait: Wait,
    /// Where its answer goes.
    pub(super) reply: oneshot::Sender<Answer>,
}

/// The settings of the pipeline task.
pub(super) struct Settings {
    /// The publish script.
    pub(super) script: Script,
    /// The most a batch waits for Redis's answer: past it, Redis is taken for away.
    pub(super) wait: Duration,
    /// The most lines held while Redis is out of reach (`--outage-queue`).
    pub(super) bound: usize,
    /// This instance's token: the field of each room's meta hash that holds the
    /// last number logged under it.
    pub(super) token: String,
    /// How many replicas must have a batch before it is answered (`WAIT`).
    pub(super) replicas: u32,
}

/// Sends publishes to Redis in the order they were asked for, as many as are
/// waiting in one pipeline: a sender waits one round trip for a whole batch, not
/// one per line, and Redis runs them in that order. The script is loaded first, and
/// again if Redis lost it (a restart); a batch refused for that ran none of its
/// calls, so sending it again keeps the order.
///
/// A batch sent that fails, or is not answered within `wait`, or is cut short by
/// Redis being taken for away (`up` false) is not known to have run or not: its
/// error goes to `failures` at once (so every other wait ends), its held lines go
/// back to the front of the queue, and the others are answered with the error.
/// While Redis is taken for away nothing is sent; held lines wait (a sender's
/// next lines behind them, up to `bound`), every other publish is answered "out of
/// reach" at once. When `up` is true again, the held lines are sent first, in
/// order. Sending a held line again is safe: a line with a client's line id is
/// recognised by the repeated-id rule; one without is numbered under the
/// instance's token ([`Numbering`]), and recognised the same way.
pub(super) async fn publish_in_batches(
    connection: watch::Receiver<ConnectionManager>,
    settings: Settings,
    mut orders: mpsc::UnboundedReceiver<Publish>,
    mut up: watch::Receiver<bool>,
    failures: mpsc::UnboundedSender<String>,
) {
    let mut queue = Queue {
        waiting: VecDeque::new(),
        held: 0,
        sending: *up.borrow_and_update(),
        numbering: Numbering {
            token: settings.token.clone(),
            next: 1,
        },
        bound: settings.bound,
    };
    loop {
        while let Ok(order) = orders.try_recv() {
            queue.admit(order);
        }
        if queue.sending && !queue.waiting.is_empty() {
            let mut batch = queue.batch();
            if batch.is_empty() {
                continue;
            }
            let deadline = batch
                .iter()
                .filter_map(|p| match p.wait {
                    Wait::Until(at) => Some(at),
                    Wait::Hold => None,
                })
                .fold(Instant::now() + settings.wait, Instant::min);
            // Waiting for replicas takes a bound of its own.
            let deadline = match settings.replicas {
                0 => deadline,
                _ => deadline + settings.wait,
            };
            // The connection in use now: Sentinel may have named another primary.
            let mut manager = connection.borrow().clone();
            let pipeline = pack(&mut batch);
            let sent = async {
                let answers = send(&mut manager, &settings.script, &pipeline).await?;
                // Within half the bound: the connection's own deadline for
                // any command is the whole of it.
                replicated(&mut manager, settings.replicas, settings.wait / 2).await?;
                Ok(answers)
            };
            let answers = tokio::select! {
                answers = tokio::time::timeout_at(deadline, sent) => {
                    answers.unwrap_or_else(|_| Err(late()))
                }
                _ = up.wait_for(|up| !up) => Err(away()),
            };
            match answers {
                Ok(answers) => answer(batch, answers),
                Err(e) => {
                    unpack(&mut batch, &pipeline);
                    // Seen now, so that only a change after this failure (Redis
                    // taken for away, then back) starts the sending again.
                    up.borrow_and_update();
                    let _ = failures.send(e.to_string());
                    queue.failed(batch, &e);
                }
            }
            continue;
        }
        tokio::select! {
            order = orders.recv() => match order {
                Some(order) => queue.admit(order),
                // The store is gone; what waits is answered "gone" as it drops.
                None => return,
            },
            changed = up.changed() => {
                if changed.is_err() {
                    return;
                }
                let now_up = *up.borrow_and_update();
                queue.turned(now_up);
            }
        }
    }
}

/// The publishes not sent yet, in order, and whether they may be sent now.
struct Queue {
    /// Waiting, oldest first; held lines put back in front after a failed batch.
    waiting: VecDeque<Publish>,
    /// How many of `waiting` are held lines ([`Wait::Hold`]).
    held: usize,
    /// Whether to send: Redis answers, as far as this task knows.
    sending: bool,
    /// The instance's numbering of the publishes that may be sent twice.
    numbering: Numbering,
    /// The most held lines while not sending.
    bound: usize,
}

impl Queue {
    /// Takes a new publish in its turn, or answers it now: "out of reach" while not
    /// sending if it does not hold; [`Failure::Full`] if it holds and the queue
    /// holds as many as it may.
    fn admit(&mut self, mut order: Publish) {
        match order.wait {
            Wait::Until(_) if !self.sending => {
                let _ = order.reply.send(Err(Failure::Redis(away())));
            }
            Wait::Hold if !self.sending && self.held >= self.bound => {
                let _ = order.reply.send(Err(Failure::Full));
            }
            wait => {
                self.numbering.number(&mut order);
                self.held += usize::from(wait == Wait::Hold);
                self.waiting.push_back(order);
            }
        }
    }

    /// The next batch from the front: publishes whose senders stopped waiting are
    /// answered "late" and left out.
    fn batch(&mut self) -> Vec<Publish> {
        let now = Instant::now();
        let mut batch = Vec::with_capacity(PUBLISH_BATCH.min(self.waiting.len()));
        while batch.len() < PUBLISH_BATCH {
            let Some(publish) = self.waiting.pop_front() else {
                break;
            };
            match publish.wait {
                Wait::Until(at) if at <= now => {
                    let _ = publish.reply.send(Err(Failure::Redis(late())));
                }
                Wait::Until(_) => batch.push(publish),
                Wait::Hold => {
                    self.held -= 1;
                    batch.push(publish);
                }
            }
        }
        batch
    }

    /// A batch sent was not answered: its held lines go back in front, in order;
    /// the others are answered `error`, as is everything else that does not hold.
    fn failed(&mut self, batch: Vec<Publish>, error: &redis::RedisError) {
        for mut publish in batch.into_iter().rev() {
            match publish.wait {
                Wait::Hold => {
                    self.held += 1;
                    again(&mut publish);
                    self.waiting.push_front(publish);
                }
                Wait::Until(_) => {
                    let _ = publish.reply.send(Err(Failure::Redis(error.clone())));
                }
            }
        }
        self.stop();
    }

    /// Redis was taken for away (`up` false) or back (true).
    fn turned(&mut self, up: bool) {
        if up {
            self.sending = true;
        } else if self.sending {
            self.stop();
        }
    }

    /// Sends nothing more until Redis is back; answers "out of reach" what does
    /// not hold.
    fn stop(&mut self) {
        self.sending = false;
        let waiting = std::mem::take(&mut self.waiting);
        for publish in waiting {
            match publish.wait {
                Wait::Hold => self.waiting.push_back(publish),
                Wait::Until(_) => {
                    let _ = publish.reply.send(Err(Failure::Redis(away())));
                }
            }
        }
    }
}

/// Numbers publishes that may be sent twice, so that Redis logs each once: a
/// held line without a client's line id gets the next number under this
/// instance's token, in the order asked, and the publish script keeps, in the
/// room's meta hash (which the room's epoch lives in, so the number goes with it),
/// the last number it logged under the token, and logs only a higher one (the
/// repeated-id rule). A new instance has a new token.
struct Numbering {
    token: String,
    next: u64,
}

impl Numbering {
    /// Adds the token and number (or two empty arguments) to `publish`'s call,
    /// and the first of the "sent again" arguments (see [`again`]).
    fn number(&mut self, publish: &mut Publish) {
        if publish.numbered {
            publish.call.arg(&self.token).arg(self.next);
            self.next += 1;
        } else {
            publish.call.arg("").arg("");
        }
        publish.call.arg("");
    }
}

/// Marks `publish` as sent again: its call ends with `1` from now on, so the
/// script looks it up under the instance's token before logging it.
fn again(publish: &mut Publish) {
    publish.call.arg("1");
}

/// The calls of `batch` in one pipeline. They move there, and back out only if it
/// failed (see [`unpack`]): a line's call is not copied on its way.
fn pack(batch: &mut [Publish]) -> redis::Pipeline {
    let mut pipeline = redis::pipe();
    for publish in batch {
        pipeline.add_command(std::mem::take(&mut publish.call));
    }
    pipeline
}

/// Gives `batch` its calls back from `pipeline`, to be sent again.
fn unpack(batch: &mut [Publish], pipeline: &redis::Pipeline) {
    for (publish, call) in batch.iter_mut().zip(pipeline.cmd_iter()) {
        publish.call = call.clone();
    }
}

/// Waits until `replicas` replicas have every write sent on `manager` so far
/// (Redis's `WAIT`, for at most `within`): at once without replicas to wait for.
///
/// # Errors
/// Redis's error, or one saying how few replicas had them in time.
pub(super) async fn replicated(
    manager: &mut ConnectionManager,
    replicas: u32,
    within: Duration,
) -> redis::RedisResult<()> {
    if replicas == 0 {
        return Ok(());
    }
    let had: u32 = redis::cmd("WAIT")
        .arg(replicas)
        .arg(within.as_millis() as u64)
        .query_async(manager)
        .await?;
    if had < replicas {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
            "fewer replicas than --redis-replicas have the lines",
            format!("{had} of {replicas} in {within:?}"),
        )));
    }
    Ok(())
}

/// Sends `pipeline`, loading the script again if Redis lost it.
async fn send(
    manager: &mut ConnectionManager,
    script: &Script,
    pipeline: &redis::Pipeline,
) -> redis::RedisResult<Vec<(String, String, u8)>> {
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

/// Tells each publish of `batch` what Redis answered.
fn answer(batch: Vec<Publish>, answers: Vec<(String, String, u8)>) {
    if answers.len() != batch.len() {
        let e = invalid(format!(
            "{} answers to {} publishes",
            answers.len(),
            batch.len()
        ));
        for publish in batch {
            let _ = publish.reply.send(Err(Failure::Redis(e.clone())));
        }
        return;
    }
    for (publish, (epoch, offset, duplicate)) in batch.into_iter().zip(answers) {
        let answer = epoch.parse().map_err(invalid).map(|epoch| {
            let published = Published {
                offset: offset.parse().ok(),
                duplicate: duplicate == 1,
            };
            (epoch, published)
        });
        let _ = publish.reply.send(answer.map_err(Failure::Redis));
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

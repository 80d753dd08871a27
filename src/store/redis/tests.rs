//! The Redis store against a real `redis-server`: a log that began again, and
//! lines held through an outage.

use super::*;
use crate::store::suite::{RedisServer, append, open};
use crate::store::{Appending, Format, RoomLog, Unavailable};

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn a_redis_emptied_begins_a_new_epoch_on_the_next_append() {
    let server = RedisServer::start().await;
    let subject = crate::store::suite::Subject {
        store: Arc::new(connect_to(&server, 10, RedisBounds::default()).await),
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

/// A store on a `redis-server` of its own (within `bounds`), and room "r"
/// opened in it: the server, the store, the room's log and what it delivered.
async fn opened(
    bounds: RedisBounds,
) -> (
    RedisServer,
    Arc<RedisStore>,
    Arc<dyn RoomLog>,
    Arc<crate::store::suite::Recorder>,
) {
    let server = RedisServer::start().await;
    let store = Arc::new(connect_to(&server, 100, bounds).await);
    let subject = crate::store::suite::Subject {
        store: Arc::clone(&store) as _,
        _keep: None,
    };
    let (log, recorder) = open(&subject, "r").await;
    (server, store, log, recorder)
}

/// Asks for a line without waiting for its answer, which comes on the receiver.
fn ask(
    log: &Arc<dyn RoomLog>,
    text: &str,
    line: Option<(&str, u64)>,
) -> tokio::task::JoinHandle<Result<Published, Unavailable>> {
    let appending = log.append(&Record::chat(1, "alice", text), line, None);
    tokio::spawn(async move {
        match appending {
            Appending::Done(done) => done,
            Appending::Later(later) => later.await,
        }
    })
}

/// What each of the lines asked became, once all are logged.
async fn logged<const N: usize>(
    asked: [tokio::task::JoinHandle<Result<Published, Unavailable>>; N],
) -> Vec<Published> {
    let mut got = Vec::new();
    for answer in asked {
        got.push(
            tokio::time::timeout(Duration::from_secs(10), answer)
                .await
                .expect("answered in time")
                .expect("no panic")
                .expect("logged"),
        );
    }
    got
}

/// Waits until the store takes Redis for `up` (or not).
async fn until_up(store: &RedisStore, up: bool) {
    let mut watched = store.0.up.subscribe();
    tokio::time::timeout(Duration::from_secs(10), watched.wait_for(|now| *now == up))
        .await
        .expect("Redis taken for up or away in time")
        .expect("the store lives");
}

/// The texts the recorder got, in order, with their offsets.
fn texts(entries: &[crate::store::Entry]) -> Vec<(u64, String)> {
    entries
        .iter()
        .map(|e| {
            let text = e.delivery(Format::Structured).message;
            let frame: serde_json::Value =
                serde_json::from_str(text.as_text().expect("text")).expect("json");
            (e.offset, frame["text"].as_str().expect("a text").to_owned())
        })
        .collect()
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn lines_sent_to_a_stopped_redis_are_held_and_logged_once_when_it_goes_on() {
    let (server, store, log, recorder) = opened(RedisBounds::default()).await;
    append(&*log, "a", None).await.expect("append");
    append(&*log, "b", Some(("s1", 1))).await.expect("append");

    // Sent to a Redis that answers nothing: not known to have run, so held.
    server.signal("STOP");
    let c = ask(&log, "c", None);
    let d = ask(&log, "d", Some(("s1", 2)));
    until_up(&store, false).await;
    // Asked while Redis is away: held behind them, not sent.
    let e = ask(&log, "e", None);
    let f = ask(&log, "f", Some(("s1", 3)));
    assert!(!c.is_finished() && !d.is_finished() && !e.is_finished() && !f.is_finished());

    // Redis goes on: it runs the batch that waited in its socket, then the store
    // sends the held lines again; the repeated ones are recognised.
    server.signal("CONT");
    let got = logged([c, d, e, f]).await;
    let logged = recorder.wait(6).await;
    assert_eq!(
        texts(&logged),
        ["a", "b", "c", "d", "e", "f"]
            .iter()
            .enumerate()
            .map(|(i, t)| (i as u64 + 1, (*t).to_owned()))
            .collect::<Vec<_>>(),
        "each once, in order"
    );
    // c and d ran from the socket: their sending again is a duplicate, with the
    // first time's offset; e and f ran once.
    assert_eq!(
        got,
        [
            Published {
                offset: Some(3),
                duplicate: true
            },
            Published {
                offset: Some(4),
                duplicate: true
            },
            Published {
                offset: Some(5),
                duplicate: false
            },
            Published {
                offset: Some(6),
                duplicate: false
            },
        ]
    );
    let head = log.head().await.expect("head");
    assert_eq!(head.head, 6, "nothing logged twice");
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn past_the_outage_queue_a_line_is_refused_and_the_held_ones_go_when_redis_is_back() {
    let bounds = RedisBounds {
        outage_queue: 2,
        ..RedisBounds::default()
    };
    let (server, store, log, recorder) = opened(bounds).await;
    let port = server.port();
    append(&*log, "before", Some(("s1", 1)))
        .await
        .expect("append");
    let before = log.head().await.expect("head");

    server.signal("KILL");
    drop(server);
    let held = [ask(&log, "one", Some(("s1", 2))), ask(&log, "two", None)];
    until_up(&store, false).await;
    let refused = ask(&log, "three", Some(("s1", 3)));
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), refused)
            .await
            .expect("refused at once")
            .expect("no panic"),
        Err(Unavailable::Refused)
    );
    // Reads are answered at once, not held, from what this instance holds.
    assert_eq!(log.head().await, Ok(before));
    let read = log.read(0, 10, Format::Structured).await.expect("a read");
    assert_eq!((read.missed, read.deliveries.len()), (0, 1));

    // Back, empty (no persistence): the held lines begin the new epoch's log,
    // neither of them a duplicate (the repeated-id state went with the old epoch).
    let _server = RedisServer::start_at(port).await;
    let got = logged(held).await;
    assert_eq!(
        got,
        [
            Published {
                offset: Some(1),
                duplicate: false
            },
            Published {
                offset: Some(2),
                duplicate: false
            },
        ]
    );
    let logged = recorder.wait(3).await;
    assert_ne!(logged[1].epoch, before.epoch, "a new epoch");
    assert_eq!(
        texts(&logged[1..]),
        [(1, "one".to_owned()), (2, "two".to_owned())]
    );
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn a_line_id_accepted_in_an_older_epoch_is_logged_again_in_a_new_one() {
    let (server, _store, log, _recorder) = opened(RedisBounds::default()).await;
    append(&*log, "first", Some(("s1", 7)))
        .await
        .expect("append");
    // The room's log is lost but the client's last id is not (keys evicted or
    // expired apart): the id belongs to the epoch that is gone.
    let mut admin = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let () = redis::cmd("DEL")
        .arg("bc:{r:r}:meta")
        .arg("bc:{r:r}:log")
        .query_async(&mut admin)
        .await
        .expect("DEL");
    let again = append(&*log, "first", Some(("s1", 7)))
        .await
        .expect("append");
    assert_eq!(
        again,
        Published {
            offset: Some(1),
            duplicate: false
        },
        "logged in the new epoch, not answered duplicate"
    );
    let repeat = append(&*log, "first", Some(("s1", 7)))
        .await
        .expect("append");
    assert!(repeat.duplicate, "within the epoch the rule holds");
}

#[tokio::test]
#[cfg_attr(
    not(has_redis),
    ignore = "needs redis-server (apt-get install redis-server)"
)]
async fn a_rooms_keys_expire_from_its_first_message_on() {
    let (server, _store, log, _recorder) = opened(RedisBounds::default()).await;
    append(&*log, "first", None).await.expect("append");
    let mut admin = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    for key in ["bc:{r:r}:meta", "bc:{r:r}:log"] {
        let ttl: i64 = redis::cmd("TTL")
            .arg(key)
            .query_async(&mut admin)
            .await
            .expect("TTL");
        assert!(
            ttl > 23 * 3600 && ttl <= 24 * 3600,
            "{key} expires in {ttl} s"
        );
    }
}

//! The hub's own tests: rooms, offsets, joins and resumes, repeats, presence.

use super::*;
use crate::protocol::Resume;

fn hub(config: ServerConfig) -> Arc<Hub> {
    let store = Arc::new(crate::store::MemoryStore::for_config(&config));
    Arc::new(Hub::new(&config, store))
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
            client_id: Some("s"),
            resume,
            history: None,
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
            client_id: None,
            resume: None,
            history: None,
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
            client_id: None,
            resume: None,
            history: None,
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
fn a_line_sent_again_under_the_same_client_id_goes_out_once() {
    let hub = hub(ServerConfig::default());
    let mut a = join(&hub, "", 1, None);
    let once = |id| {
        futures_util::FutureExt::now_or_never(a.membership.publish("hi", Some(id))).expect("ready")
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
    // The same client id on a new connection (a reconnect) is recognised too.
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
            client_id: None,
            resume: None,
            history: None,
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

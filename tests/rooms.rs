//! Names, rooms, presence, `/who`, history and no-echo on the server.

mod common;

use common::*;
use tokio::time::timeout;

/// The whole HTTP answer to an upgrade request for `target`.
async fn answer_to(server: &Server, target: &str) -> String {
    raw_exchange(server.addr(), upgrade_request(target, "").as_bytes()).await
}

#[tokio::test]
async fn a_name_tags_messages_name_at_address() {
    let server = Server::start(&[]).await;
    let mut alice = connect(&format!("{}/?name=alice", server.url())).await;
    let mut bob = connect(&server.url()).await;
    send(&mut alice, "hi").await;
    let expected = format!("alice@{:?}: \"hi\"", local_addr(&alice));
    assert_eq!(recv_text(&mut bob).await, expected);
    assert_eq!(recv_text(&mut alice).await, expected);
    // Without a name the tag is the address alone, as before.
    send(&mut bob, "yo").await;
    assert_eq!(recv_text(&mut alice).await, tagged(&bob, "yo"));
}

#[tokio::test]
async fn invalid_names_and_rooms_get_400_with_the_reason() {
    let server = Server::start(&[]).await;
    let answer = answer_to(&server, "/?name=bad%20name").await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with(
            "invalid name \"bad%20name\": use 1 to 32 letters, digits, '-', '_' or '.'\n"
        ),
        "{answer}"
    );
    let long = "n".repeat(33);
    assert!(
        answer_to(&server, &format!("/?name={long}"))
            .await
            .starts_with("HTTP/1.1 400")
    );
    let answer = answer_to(&server, "/a/b").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid room name"), "{answer}");
}

#[tokio::test]
async fn messages_go_only_to_the_senders_room() {
    let server = Server::start(&[]).await;
    let url = server.url();
    let mut rust_a = connect(&format!("{url}/rust")).await;
    let mut rust_b = connect(&format!("{url}/rust")).await;
    let mut lobby = connect(&url).await;
    let mut go = connect(&format!("{url}/go")).await;

    send(&mut rust_a, "ownership").await;
    assert_eq!(recv_text(&mut rust_b).await, tagged(&rust_a, "ownership"));
    send(&mut go, "goroutines").await;
    assert_eq!(recv_text(&mut go).await, tagged(&go, "goroutines"));
    send(&mut lobby, "hello lobby").await;
    assert_eq!(recv_text(&mut lobby).await, tagged(&lobby, "hello lobby"));
    // Each saw only its own room: the next thing rust_b gets is the next rust message.
    send(&mut rust_a, "borrowing").await;
    assert_eq!(recv_text(&mut rust_b).await, tagged(&rust_a, "borrowing"));
    assert_eq!(recv_text(&mut rust_a).await, tagged(&rust_a, "ownership"));
    assert_eq!(recv_text(&mut rust_a).await, tagged(&rust_a, "borrowing"));
}

#[tokio::test]
async fn rooms_vanish_when_empty_and_max_rooms_bounds_them() {
    let server = Server::start(&["--max-rooms", "1"]).await;
    let mut first = connect(&format!("{}/one", server.url())).await;
    let answer = answer_to(&server, "/two").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.ends_with("too many rooms; join an existing one\n"),
        "{answer}"
    );
    // Joining the existing room is fine.
    let _also_one = connect(&format!("{}/one", server.url())).await;
    drop(_also_one);
    send(&mut first, "bye").await;
    close_and_read_to_end(first).await;
    // Once room one is empty it is gone, so room two can exist.
    let settled = timeout(WAIT, async {
        loop {
            if open_connections(server.addr()).await == 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(settled.is_ok(), "connections never closed");
    connect(&format!("{}/two", server.url())).await;
}

#[tokio::test]
async fn presence_announces_joins_and_leaves_with_the_count() {
    let server = Server::start(&["--presence"]).await;
    let mut alice = connect(&format!("{}/?name=alice", server.url())).await;
    let alice_who = format!("alice@{:?}", local_addr(&alice));
    assert_eq!(
        recv_text(&mut alice).await,
        format!("* {alice_who} joined (1 here)")
    );
    let bob = connect(&server.url()).await;
    let bob_who = format!("{:?}", local_addr(&bob));
    assert_eq!(
        recv_text(&mut alice).await,
        format!("* {bob_who} joined (2 here)")
    );
    // Other rooms hear nothing of it.
    let mut elsewhere = connect(&format!("{}/other", server.url())).await;
    let elsewhere_who = format!("{:?}", local_addr(&elsewhere));
    assert_eq!(
        recv_text(&mut elsewhere).await,
        format!("* {elsewhere_who} joined (1 here)")
    );
    close_and_read_to_end(bob).await;
    assert_eq!(
        recv_text(&mut alice).await,
        format!("* {bob_who} left (1 here)")
    );
}

#[tokio::test]
async fn who_answers_the_sender_alone() {
    let server = Server::start(&[]).await;
    let mut alice = connect(&format!("{}/rust?name=alice", server.url())).await;
    let mut bob = connect(&format!("{}/rust", server.url())).await;
    let _other_room = connect(&format!("{}/go?name=gopher", server.url())).await;
    send(&mut alice, "/who").await;
    let mut expected = [
        format!("alice@{:?}", local_addr(&alice)),
        format!("{:?}", local_addr(&bob)),
    ];
    expected.sort();
    assert_eq!(
        recv_text(&mut alice).await,
        format!("* 2 here: {}", expected.join(", "))
    );
    send(&mut alice, "after").await;
    // Bob never saw the /who: the next thing he gets is the message after it.
    assert_eq!(
        recv_text(&mut bob).await,
        format!("alice@{:?}: \"after\"", local_addr(&alice))
    );
}

#[tokio::test]
async fn history_reaches_newcomers_after_the_welcome_and_before_live_traffic() {
    let server = Server::start(&["--history", "5", "--max-rate", "0"]).await;
    let mut alice = connect(&server.url()).await;
    for i in 0..8 {
        send(&mut alice, &format!("m{i}")).await;
        recv_text(&mut alice).await;
    }
    let mut carol = connect_raw(&server.url()).await;
    assert_eq!(
        recv_text(&mut carol).await,
        "Welcome to chat! Type a message"
    );
    for i in 3..8 {
        assert_eq!(
            recv_text(&mut carol).await,
            tagged(&alice, &format!("m{i}"))
        );
    }
    send(&mut alice, "m8").await;
    assert_eq!(recv_text(&mut carol).await, tagged(&alice, "m8"));
}

#[tokio::test]
async fn history_seam_has_no_gap_and_no_duplicate_under_traffic() {
    let server = Server::start(&["--history", "50", "--max-rate", "0"]).await;
    let alice = connect(&server.url()).await;
    let alice_tag = format!("{:?}: ", local_addr(&alice));
    let (talk, mut alice_heard) = chatter(alice);
    // Alice talks steadily, a message a millisecond, until Carol has heard enough.
    let talking = count_aloud(talk);
    // Carol joins once plenty of history exists, in the middle of the traffic.
    for _ in 0..100 {
        next(&mut alice_heard).await;
    }
    // Where the log stood when Carol joined lies between the heads two structured
    // clients are welcomed with just before and just after her (line i is at
    // offset i + 1, so the head is how many lines had been said).
    let head = async || connect_structured(&server.url()).await.1["offset"].as_u64();
    let before = head().await.expect("an offset");
    let mut carol = connect(&server.url()).await;
    let after = head().await.expect("an offset");
    let mut seen = Vec::new();
    while seen.len() < 200 {
        let line = recv_text(&mut carol).await;
        let number = line
            .strip_prefix(&alice_tag)
            .and_then(|q| q.trim_matches('"').parse::<u64>().ok())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        seen.push(number);
    }
    talking.abort();
    let first = seen[0];
    let expected: Vec<u64> = (first..first + 200).collect();
    assert_eq!(seen, expected, "history and live traffic must meet exactly");
    // The first 50 were history: the 50 said before she joined.
    assert!(
        (before..=after).contains(&(first + 50)),
        "Carol's first line was {first}, joining when {before} to {after} had been said"
    );
}

#[tokio::test]
async fn no_echo_spares_the_sender_its_own_messages() {
    let server = Server::start(&["--no-echo"]).await;
    let mut alice = connect(&server.url()).await;
    let mut bob = connect(&server.url()).await;
    send(&mut alice, "from alice").await;
    assert_eq!(recv_text(&mut bob).await, tagged(&alice, "from alice"));
    send(&mut bob, "from bob").await;
    // Alice's next message is Bob's: her own never came back.
    assert_eq!(recv_text(&mut alice).await, tagged(&bob, "from bob"));
}

//! The structured subprotocol, `broadcast-chat.v1`: every frame type, resuming
//! where one left off (the seam under load included), and bad frames, which get an
//! error frame and harm nobody.

mod common;

use common::instances::assert_acked_once_in_order;
use common::*;
use serde_json::{Value, json};

async fn send_json(ws: &mut Ws, frame: &Value) {
    send(ws, &frame.to_string()).await;
}

/// The next frame that is not an acknowledgement.
async fn next_not_ack(ws: &mut Ws) -> Value {
    loop {
        let frame = recv_json(ws).await;
        if frame["type"] != "ack" {
            return frame;
        }
    }
}

#[tokio::test]
async fn every_server_frame_has_the_documented_form() {
    let server = Server::start(&["--presence"]).await;
    let (mut alice, welcome) =
        connect_structured(&format!("{}/rust?name=alice", server.url())).await;
    let alice_who = format!("alice@{:?}", local_addr(&alice));
    let epoch = welcome["epoch"].as_str().expect("an epoch").to_owned();
    assert_eq!(
        welcome,
        json!({"type": "welcome", "text": "Welcome to chat! Type a message", "room": "rust",
               "epoch": epoch, "offset": 0, "you": alice_who, "echo": true})
    );
    assert_eq!(epoch.len(), 16);
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"type": "notice", "kind": "joined", "text": format!("* {alice_who} joined (1 here)"),
               "room": "rust", "epoch": epoch, "offset": 1, "who": alice_who, "here": 1})
    );

    send_json(
        &mut alice,
        &json!({"type": "send", "id": 1, "text": "hello \"you\""}),
    )
    .await;
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"type": "ack", "id": 1, "offset": 2})
    );
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"type": "message", "room": "rust", "epoch": epoch, "offset": 2,
               "from": alice_who, "text": "hello \"you\""})
    );

    // A classic client in the same room sees the same messages as lines.
    let mut bob = connect(&format!("{}/rust", server.url())).await;
    let bob_who = format!("{:?}", local_addr(&bob));
    assert_eq!(
        recv_text(&mut bob).await,
        format!("* {bob_who} joined (2 here)")
    );
    assert_eq!(recv_json(&mut alice).await["offset"], 3);

    send_json(&mut alice, &json!({"type": "who"})).await;
    let mut members = vec![alice_who.clone(), bob_who.clone()];
    members.sort();
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"type": "notice", "kind": "who", "text": format!("* 2 here: {}", members.join(", ")),
               "members": members})
    );
    send(&mut bob, "hi alice").await;
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"type": "message", "room": "rust", "epoch": epoch, "offset": 4,
               "from": bob_who, "text": "hi alice"})
    );
    assert_eq!(recv_text(&mut bob).await, tagged(&bob, "hi alice"));
}

#[tokio::test]
async fn a_client_that_asks_for_nothing_gets_the_classic_lines_and_no_subprotocol() {
    let server = Server::start(&[]).await;
    let answer = upgrade_head(server.addr(), "/", "").await;
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    assert!(
        !answer.to_lowercase().contains("sec-websocket-protocol"),
        "{answer}"
    );
    let answer = upgrade_head(server.addr(), "/", "Sec-WebSocket-Protocol: chat\r\n").await;
    assert!(
        !answer.to_lowercase().contains("sec-websocket-protocol"),
        "{answer}"
    );
    let answer = upgrade_head(
        server.addr(),
        "/",
        "Sec-WebSocket-Protocol: chat, broadcast-chat.v1\r\n",
    )
    .await;
    assert!(
        answer.contains("\r\nSec-WebSocket-Protocol: broadcast-chat.v1\r\n"),
        "{answer}"
    );
}

#[tokio::test]
async fn bad_frames_get_an_error_frame_and_nobody_else_notices() {
    let server = Server::start(&[]).await;
    let (mut bad, _) = connect_structured(&server.url()).await;
    let mut bystander = connect(&server.url()).await;
    // serde_json words the details after the colon.
    let serde = "not a frame of broadcast-chat.v1: ";
    for (frame, code, text) in [
        ("hello", "bad-frame", serde),
        (
            r#"{"type":"dance"}"#,
            "unknown-type",
            "unknown frame type \"dance\": use \"send\" or \"who\"",
        ),
        (
            r#"{"type":"send","text":"x"}"#,
            "bad-id",
            "a send frame needs an id, a whole number greater than 0",
        ),
        (
            r#"{"type":"send","id":0,"text":"x"}"#,
            "bad-id",
            "a send frame needs an id, a whole number greater than 0",
        ),
        (
            r#"{"type":"send","id":1}"#,
            "bad-frame",
            "a send frame needs a text",
        ),
        (r#"[1,2]"#, "bad-frame", serde),
        (
            r#"{"type":"send","id":1,"text":"x","to":"all"}"#,
            "bad-frame",
            serde,
        ),
    ] {
        send(&mut bad, frame).await;
        let error = recv_json(&mut bad).await;
        assert_eq!(
            (&error["type"], &error["code"]),
            (&json!("error"), &json!(code)),
            "{frame}"
        );
        let said = error["text"].as_str().expect("a text");
        if text == serde {
            assert!(
                said.starts_with(serde) && said.len() > serde.len(),
                "{frame}: {said}"
            );
        } else {
            assert_eq!(said, text, "{frame}");
        }
        assert!(!said.contains('\n'), "{said}");
    }
    // A repeated id is acknowledged as a repeat, and not sent again.
    send_json(&mut bad, &json!({"type": "send", "id": 5, "text": "once"})).await;
    assert_eq!(
        recv_json(&mut bad).await,
        json!({"type": "ack", "id": 5, "offset": 1})
    );
    send_json(&mut bad, &json!({"type": "send", "id": 5, "text": "once"})).await;
    assert_eq!(
        next_not_ack_or_message(&mut bad).await,
        json!({"type": "ack", "id": 5, "offset": 1, "duplicate": true})
    );
    send_json(&mut bad, &json!({"type": "send", "id": 3, "text": "older"})).await;
    assert_eq!(
        next_not_ack_or_message(&mut bad).await,
        json!({"type": "ack", "id": 3, "duplicate": true})
    );
    // The bystander heard "once" once, and chats on.
    let once = recv_text(&mut bystander).await;
    assert!(once.ends_with(": \"once\""), "{once}");
    send(&mut bystander, "unbothered").await;
    assert_eq!(
        recv_text(&mut bystander).await,
        tagged(&bystander, "unbothered")
    );
}

/// The next acknowledgement, passing over message frames (our own echoes).
async fn next_not_ack_or_message(ws: &mut Ws) -> Value {
    loop {
        let frame = recv_json(ws).await;
        if frame["type"] != "message" {
            return frame;
        }
    }
}

#[tokio::test]
async fn resume_parameters_that_make_no_sense_are_refused_or_answered() {
    let server = Server::start(&[]).await;
    for (query, reason) in [
        (
            "epoch=nothex&after=1",
            "invalid epoch \"nothex\": use the 16 hex digits the server sent",
        ),
        (
            "epoch=00000000000000ab",
            "epoch and after go together: give both or neither",
        ),
        (
            "epoch=00000000000000ab&after=-3",
            "invalid offset \"-3\": use the last offset received, a whole number",
        ),
        (
            "history=5&epoch=00000000000000ab&after=1",
            "history is for a newcomer: a returning client gets what it missed after after",
        ),
        (
            "history=some",
            "invalid history \"some\": use a number of messages, a whole number",
        ),
        (
            "session=no/slash",
            "invalid session \"no/slash\": use 1 to 64 letters, digits, '-' or '_'",
        ),
    ] {
        let answer = raw_exchange(
            server.addr(),
            upgrade_request(&format!("/?{query}"), "").as_bytes(),
        )
        .await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{query}: {answer}"
        );
        assert!(
            answer.ends_with(&format!("\r\n\r\n{reason}\n")),
            "{query}: {answer}"
        );
    }

    // An offset beyond the room's last one: said plainly, and the client goes on
    // from the room's last.
    let (mut alice, welcome) = connect_structured(&server.url()).await;
    send_json(&mut alice, &json!({"type": "send", "id": 1, "text": "one"})).await;
    assert_eq!(next_not_ack(&mut alice).await["offset"], 1);
    let epoch = welcome["epoch"].as_str().expect("epoch");
    let (mut ahead, welcome) =
        connect_structured(&format!("{}/?epoch={epoch}&after=99", server.url())).await;
    assert_eq!(welcome["offset"], 1);
    assert_eq!(
        recv_json(&mut ahead).await,
        json!({"type": "error", "code": "bad-offset",
               "text": "the offset to resume from is beyond the room's last one (1); going on from there"})
    );
    send_json(&mut alice, &json!({"type": "send", "id": 2, "text": "two"})).await;
    assert_eq!(recv_json(&mut ahead).await["offset"], 2);

    // An epoch that is not the room's: the room the client left is gone.
    let (mut stranger, _) =
        connect_structured(&format!("{}/?epoch=00000000000000ab&after=7", server.url())).await;
    let replayed: Vec<Value> = vec![
        recv_json(&mut stranger).await,
        recv_json(&mut stranger).await,
    ];
    assert_eq!(
        replayed
            .iter()
            .map(|f| f["offset"].clone())
            .collect::<Vec<_>>(),
        [json!(1), json!(2)],
        "what the room holds is replayed"
    );
    assert_eq!(
        recv_json(&mut stranger).await,
        json!({"type": "recovered", "complete": false, "restarted": true,
               "text": "* the room was restarted while you were away: messages sent meanwhile may be lost"})
    );
}

#[tokio::test]
async fn a_newcomer_asking_for_history_gets_the_rooms_last_n_messages_then_live_ones() {
    // The server keeps no history for newcomers of its own: only the asking one gets it.
    let server = Server::start(&[]).await;
    let (mut alice, _) = connect_structured(&server.url()).await;
    for id in 1..=5 {
        let text = format!("line {id}");
        send_json(&mut alice, &json!({"type": "send", "id": id, "text": text})).await;
        assert_eq!(next_not_ack(&mut alice).await["text"], text);
    }
    let (mut plain, _) = connect_structured(&server.url()).await;
    let (mut asking, welcome) = connect_structured(&format!("{}/?history=3", server.url())).await;
    assert_eq!(welcome["offset"], 5);
    for offset in 3..=5 {
        let frame = recv_json(&mut asking).await;
        assert_eq!(frame["offset"], offset, "{frame}");
        assert_eq!(frame["text"], format!("line {offset}"));
    }
    // More than the log holds gives what it holds; the live traffic follows on.
    let (mut greedy, _) = connect_structured(&format!("{}/?history=1000", server.url())).await;
    send_json(
        &mut alice,
        &json!({"type": "send", "id": 6, "text": "live"}),
    )
    .await;
    assert_eq!(recv_json(&mut asking).await["offset"], 6);
    assert_eq!(
        recv_json(&mut plain).await["offset"],
        6,
        "no history asked, none given"
    );
    for offset in 1..=6 {
        assert_eq!(recv_json(&mut greedy).await["offset"], offset);
    }
}

#[tokio::test]
async fn resuming_under_load_meets_live_traffic_without_gap_or_repeat() {
    let server = Server::start(&["--max-rate", "0"]).await;
    let talker = connect(&server.url()).await;
    let (talk, mut talker_heard) = chatter(talker);
    // The talker says a numbered line every millisecond until the test ends.
    let talking = count_aloud(talk);
    for _ in 0..50 {
        next(&mut talker_heard).await;
    }

    let (mut listener, welcome) = connect_structured(&server.url()).await;
    let epoch = welcome["epoch"].as_str().expect("epoch").to_owned();
    let mut last = welcome["offset"].as_u64().expect("offset");
    for _ in 0..100 {
        let frame = recv_json(&mut listener).await;
        assert_eq!(frame["offset"], last + 1, "{frame}");
        last += 1;
    }
    drop(listener);
    // Away while 100 more are said (line i has offset i + 1), then back, while the
    // talk goes on.
    loop {
        let said: u64 = next(&mut talker_heard)
            .await
            .rsplit(": ")
            .next()
            .and_then(|n| n.trim_matches('"').parse().ok())
            .expect("a numbered line");
        if said + 1 >= last + 100 {
            break;
        }
    }
    let (mut back, welcome) =
        connect_structured(&format!("{}/?epoch={epoch}&after={last}", server.url())).await;
    let head = welcome["offset"].as_u64().expect("offset");
    assert!(head >= last + 100, "the room went on: {head} after {last}");
    let mut recovered = false;
    for _ in 0..400 {
        let frame = recv_json(&mut back).await;
        if frame["type"] == "recovered" {
            assert_eq!(frame, json!({"type": "recovered", "complete": true}));
            assert_eq!(last, head, "the replay ends at the head of the join");
            recovered = true;
            continue;
        }
        assert_eq!(frame["offset"], last + 1, "no gap, no repeat: {frame}");
        last += 1;
    }
    assert!(recovered, "the recovery was confirmed");
    talking.abort();
}

#[tokio::test]
async fn sends_in_flight_are_acked_once_each_in_order() {
    let server = Server::start(&["--max-rate", "0"]).await;
    let (mut ws, _) = connect_structured(&format!("{}/rust?session=s1", server.url())).await;
    assert_acked_once_in_order(&mut ws, 100, 1).await;
}

#[tokio::test]
async fn every_frame_counts_toward_the_rate_limit() {
    // A burst of 3, and no new allowance within the test.
    let server = Server::start(&["--max-rate", "0.01", "--max-burst", "3"]).await;
    let (mut ws, _) = connect_structured(&server.url()).await;
    send_json(&mut ws, &json!({"type": "who"})).await;
    assert_eq!(recv_json(&mut ws).await["kind"], "who");
    send(&mut ws, "not json").await;
    assert_eq!(recv_json(&mut ws).await["code"], "bad-frame");
    send_json(&mut ws, &json!({"type": "dance"})).await;
    assert_eq!(recv_json(&mut ws).await["code"], "unknown-type");
    // The fourth frame is over the limit: dropped, neither sent nor acked.
    send_json(&mut ws, &json!({"type": "send", "id": 1, "text": "over"})).await;
    let notice = recv_json(&mut ws).await;
    assert_eq!(
        (&notice["type"], &notice["kind"], &notice["count"]),
        (&json!("notice"), &json!("slow-down"), &json!(1)),
        "{notice}"
    );
    // Nothing else came: the next frame is the answer to a frame sent after it,
    // itself over the limit and so only counted (one notice a second at most).
    let (mut other, _) = connect_structured(&server.url()).await;
    send_json(
        &mut other,
        &json!({"type": "send", "id": 1, "text": "after"}),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await["text"], "after");
}

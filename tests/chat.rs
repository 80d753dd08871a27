//! The chat itself: welcome, fan-out with the sender's tag, and many clients at once.

mod common;

use common::*;

#[tokio::test]
async fn welcome_message_comes_first() {
    let server = Server::start(&[]).await;
    let mut ws = connect_raw(&server.url()).await;
    assert_eq!(recv_text(&mut ws).await, "Welcome to chat! Type a message");
}

#[tokio::test]
async fn three_clients_each_receive_every_message_tagged_with_its_sender() {
    let server = Server::start(&[]).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&server.url()).await);
    }
    for i in 0..clients.len() {
        send(&mut clients[i], &format!("hello from {i}")).await;
        let expected = tagged(&clients[i], &format!("hello from {i}"));
        // Every client, the sender included, gets it, in order, before the next one is sent.
        for other in clients.iter_mut() {
            assert_eq!(recv_text(other).await, expected);
        }
    }
}

#[tokio::test]
async fn sender_gets_its_own_message_with_its_address() {
    let server = Server::start(&[]).await;
    let mut ws = connect(&server.url()).await;
    send(&mut ws, "echo?").await;
    let line = recv_text(&mut ws).await;
    assert_eq!(
        line,
        format!("127.0.0.1:{}: \"echo?\"", local_addr(&ws).port())
    );
}

#[tokio::test]
async fn control_characters_reach_others_escaped() {
    let server = Server::start(&[]).await;
    let mut alice = connect(&server.url()).await;
    let mut bob = connect(&server.url()).await;
    send(&mut alice, "\x1b[2J\"quoted\"\ttab").await;
    let line = recv_text(&mut bob).await;
    assert_eq!(
        line,
        format!(
            "{:?}: \"\\u{{1b}}[2J\\\"quoted\\\"\\ttab\"",
            local_addr(&alice)
        )
    );
}

#[tokio::test]
async fn three_hundred_clients_each_receive_all_twenty_messages_sent_at_once() {
    let server = Server::start(&[]).await;
    let url = server.url();
    let mut clients = Vec::new();
    for _ in 0..300 {
        clients.push(connect(&url).await);
    }
    // The first 20 clients each send one message, all at the same moment.
    let mut expected: Vec<String> = clients[..20]
        .iter()
        .enumerate()
        .map(|(i, ws)| tagged(ws, &format!("message {i}")))
        .collect();
    expected.sort();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(300));
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut ws)| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                if i < 20 {
                    send(&mut ws, &format!("message {i}")).await;
                }
                let mut got = Vec::new();
                for _ in 0..20 {
                    got.push(recv_text(&mut ws).await);
                }
                got.sort();
                got
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("client task"), expected);
    }
}

#[tokio::test]
async fn closed_loop_burst_to_two_hundred_clients_loses_nothing() {
    const CLIENTS: usize = 200;
    const MESSAGES: usize = 1000;
    const WINDOW: usize = 8;
    let server = Server::start(&["--max-rate", "0"]).await;
    let url = server.url();
    let mut readers = Vec::new();
    for _ in 0..CLIENTS - 1 {
        readers.push(reader(connect(&url).await));
    }
    let sender = connect(&url).await;
    let sender_tag = format!("{:?}: ", local_addr(&sender));
    let (talk, mut own) = chatter(sender);

    // At most WINDOW messages in flight, counted by the sender's own copies.
    let mut sent = 0;
    for received in 0..MESSAGES {
        while sent < MESSAGES && sent < received + WINDOW {
            talk.send(format!("{sent}")).expect("sender alive");
            sent += 1;
        }
        assert_eq!(next(&mut own).await, format!("{sender_tag}\"{received}\""));
    }
    // Every other client got every message, in order, and no lag notice.
    let checks = readers.into_iter().map(|mut rx| {
        let sender_tag = sender_tag.clone();
        tokio::spawn(async move {
            for i in 0..MESSAGES {
                assert_eq!(next(&mut rx).await, format!("{sender_tag}\"{i}\""));
            }
        })
    });
    for check in checks.collect::<Vec<_>>() {
        check.await.expect("every copy delivered in order");
    }
}

//! The client's `--name`, and the reasons it shows when the server refuses it.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;

/// A fake server that reads one request head, answers `answer`, and returns the
/// request's first line.
async fn answer_once(answer: &'static str) -> (String, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("address"));
    let task = tokio::spawn(async move {
        let (mut tcp, _) = timeout(WAIT, listener.accept())
            .await
            .expect("a connection in time")
            .expect("accept");
        let mut head = Vec::new();
        timeout(WAIT, async {
            while !head.ends_with(b"\r\n\r\n") {
                head.push(tcp.read_u8().await.expect("read the request"));
            }
        })
        .await
        .expect("a request in time");
        tcp.write_all(answer.as_bytes()).await.expect("answer");
        tcp.shutdown().await.expect("shutdown");
        let head = String::from_utf8_lossy(&head).into_owned();
        head.lines().next().unwrap_or_default().to_owned()
    });
    (url, task)
}

#[tokio::test]
async fn name_and_path_go_out_in_the_request_target() {
    let (url, server) = answer_once("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").await;
    let mut client = Client::start(&["--url", &format!("{url}/rust"), "--name", "alice"]);
    let first = server.await.expect("server task");
    // The session id that follows the name is random.
    assert!(
        first.starts_with("GET /rust?name=alice&session="),
        "{first}"
    );
    assert!(first.ends_with(" HTTP/1.1"), "{first}");
    assert_eq!(client.wait().await.code(), Some(1));

    let (url, server) = answer_once("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").await;
    let mut client = Client::start_with_env(&["--url", &url], &[("CHAT_NAME", "bob")]);
    let first = server.await.expect("server task");
    assert!(first.starts_with("GET /?name=bob&session="), "{first}");
    assert_eq!(client.wait().await.code(), Some(1));
}

/// Needs the server side of names: the server tags a named client `name@address`.
#[tokio::test]
async fn a_named_client_is_tagged_with_its_name() {
    let server = Server::start(&[]).await;
    let mut other = connect(&server.url()).await;
    let mut client = Client::start(&["--url", &server.url(), "--name", "alice"]);
    client.welcomed().await;
    client.send_line("hi").await;
    let line = loop {
        let line = recv_text(&mut other).await;
        if !line.starts_with("* ") {
            break line;
        }
    };
    let port = line
        .strip_prefix("alice@127.0.0.1:")
        .and_then(|rest| rest.strip_suffix(": \"hi\""))
        .unwrap_or_else(|| panic!("not tagged alice@127.0.0.1:PORT: {line}"));
    assert!(port.parse::<u16>().is_ok(), "{line}");
    client.close_stdin();
    assert_eq!(client.wait().await.code(), Some(0));
}

#[tokio::test]
async fn an_invalid_name_is_a_usage_error_with_the_rule() {
    for (args, env) in [
        (vec!["--name", "al ice"], vec![]),
        (vec![], vec![("CHAT_NAME", "x/y")]),
        (vec!["--name", &*"n".repeat(33)], vec![]),
    ] {
        let mut client = Client::start_with_env(&args, &env);
        assert_eq!(client.wait().await.code(), Some(2), "{args:?} {env:?}");
        client
            .stderr
            .wait_for("use 1 to 32 letters, digits, '-', '_' or '.'")
            .await;
    }
}

#[tokio::test]
async fn a_refused_upgrade_shows_the_servers_reason() {
    let (url, _server) = answer_once(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 34\r\n\
         Connection: close\r\n\r\ninvalid room name \"a/b\": use more\n",
    )
    .await;
    let mut client = Client::start(&["--url", &url]);
    assert_eq!(client.wait().await.code(), Some(1));
    assert_eq!(
        client.stderr.complete().await,
        [format!(
            "error: cannot connect to {url}: the server refused the upgrade with HTTP 400: invalid room name \"a/b\": use more"
        )]
    );
}

#[tokio::test]
async fn a_refusal_without_a_reason_keeps_the_hint() {
    let (url, _server) = answer_once("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
    let mut client = Client::start(&["--url", &url]);
    assert_eq!(client.wait().await.code(), Some(1));
    assert_eq!(
        client.stderr.complete().await,
        [format!(
            "error: cannot connect to {url}: the server refused the upgrade with HTTP 404 (is it a broadcast-chat server, and is the path right?)"
        )]
    );
}

#[tokio::test]
async fn piped_output_has_no_colour() {
    let server = Server::start(&[]).await;
    let mut other = connect(&server.url()).await;
    let mut client = Client::start(&["--url", &server.url()]);
    client.welcomed().await;
    send(&mut other, "plain").await;
    let line = client.stdout.wait_for("\"plain\"").await;
    assert_eq!(line, format!("From server: {}", tagged(&other, "plain")));
    client.close_stdin();
    assert_eq!(client.wait().await.code(), Some(0));
}

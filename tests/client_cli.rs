//! The `client` binary: lines in, `From server:` lines out, and every way it ends.

mod common;

use common::*;
use futures_util::SinkExt;
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_websockets::{Message, ServerBuilder};

#[tokio::test]
async fn client_sends_lines_and_prints_what_it_receives() {
    let server = Server::start(&[]).await;
    let mut client = Client::start(&["--url", &server.url()]);
    client.welcomed().await;
    let mut other = connect(&server.url()).await;

    client.send_line("hi from the binary").await;
    let line = recv_text(&mut other).await;
    assert!(line.ends_with(": \"hi from the binary\""), "{line}");
    client
        .stdout
        .wait_for_line(&format!("From server: {line}"))
        .await;

    send(&mut other, "hi back").await;
    client
        .stdout
        .wait_for_line(&format!("From server: {}", tagged(&other, "hi back")))
        .await;
    assert_eq!(
        client.stdout.all()[0],
        "From server: Welcome to chat! Type a message"
    );

    client.close_stdin();
    assert_eq!(client.wait().await.code(), Some(0));
}

#[tokio::test]
async fn piped_input_is_sent_and_the_client_exits_zero() {
    let server = Server::start(&[]).await;
    let mut other = connect(&server.url()).await;
    let mut client = Client::start(&["--url", &server.url()]);
    client.send_line("hi").await;
    client.close_stdin();
    let line = recv_text(&mut other).await;
    assert!(line.ends_with(": \"hi\""), "{line}");
    assert_eq!(client.wait().await.code(), Some(0));
    let stderr = client.stderr.complete().await;
    assert!(stderr.is_empty(), "{stderr:?}");
    // `echo hi | client` prints its own line before it closes.
    assert_eq!(
        client.stdout.complete().await,
        [
            format!("From server: {WELCOME}"),
            format!("From server: {line}"),
        ]
    );
}

#[tokio::test]
async fn input_end_closes_with_1000_and_exits_zero() {
    // A bare WebSocket server, to see the very close frame the client sends.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}", listener.local_addr().expect("address"));
    let mut client = Client::start(&["--url", &url]);
    let (tcp, _) = timeout(WAIT, listener.accept())
        .await
        .expect("the client connects in time")
        .expect("accept");
    let (_request, mut ws) = timeout(WAIT, ServerBuilder::new().accept(tcp))
        .await
        .expect("upgrade in time")
        .expect("upgrade");
    ws.send(Message::text("hello from a bare server"))
        .await
        .expect("send");
    client
        .stdout
        .wait_for_line("From server: hello from a bare server")
        .await;

    client.close_stdin();
    assert_eq!(recv_close(&mut ws).await, (1000, "bye".to_owned()));
    // Reading on answers the close frame, which the client waits for.
    read_to_end(&mut ws).await;
    assert_eq!(client.wait().await.code(), Some(0));
    assert!(client.stderr.complete().await.is_empty());
}

#[tokio::test]
async fn wrong_port_gives_one_line_error_and_exit_1() {
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}");
    let mut client = Client::start(&["--url", &url]);
    assert_eq!(client.wait().await.code(), Some(1));
    let stderr = client.stderr.complete().await;
    assert_eq!(
        stderr,
        [format!(
            "error: cannot connect to {url}: connection refused (is the server running on that port?)"
        )]
    );
    assert!(client.stdout.complete().await.is_empty());
}

#[tokio::test]
async fn invalid_url_is_a_usage_error() {
    let mut client = Client::start(&["--url", "http://example.com"]);
    assert_eq!(client.wait().await.code(), Some(2));
    client.stderr.wait_for("the scheme must be ws://").await;
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_everyone_exits_zero() {
    let mut server = Server::start(&[]).await;
    let mut client = Client::start(&["--url", &server.url()]);
    client.welcomed().await;
    let mut ws = connect(&server.url()).await;
    server.stderr.wait_for_events("connected", 2).await;

    server.terminate();
    assert_eq!(
        recv_close(&mut ws).await,
        (1001, "server shutting down".to_owned())
    );
    // Complete the close handshake, as a well-behaved client does.
    read_to_end(&mut ws).await;
    assert_eq!(server.wait().await.code(), Some(0));
    assert_eq!(client.wait().await.code(), Some(0));
    assert_eq!(
        client.stderr.complete().await,
        ["the server closed the connection: 1001 (server shutting down)"]
    );
}

#[tokio::test]
async fn lost_connection_without_close_is_an_error_exit_1() {
    let server = Server::start(&[]).await;
    let mut client = Client::start(&["--url", &server.url()]);
    client.welcomed().await;
    signal(server.child_ref(), "KILL");
    assert_eq!(client.wait().await.code(), Some(1));
    let stderr = client.stderr.complete().await;
    assert_eq!(stderr.len(), 1, "{stderr:?}");
    assert!(
        stderr[0].starts_with(&format!("error: connection to {} lost: ", server.url())),
        "{stderr:?}"
    );
}

#[tokio::test]
async fn host_port_and_url_come_from_the_environment_too() {
    use tokio::io::AsyncBufReadExt;
    let port = free_port();
    let mut server = server_command()
        .env("CHAT_HOST", "127.0.0.1")
        .env("CHAT_PORT", port.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn server");
    let stdout = server.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = timeout(WAIT, lines.next_line())
        .await
        .expect("readiness line in time")
        .expect("read")
        .expect("a line");
    assert_eq!(first, format!("Listening on port {port}"));

    let url = format!("ws://127.0.0.1:{port}");
    let mut client = Client::start_with_env(&[], &[("CHAT_URL", &url)]);
    client.welcomed().await;
    client.close_stdin();
    assert_eq!(client.wait().await.code(), Some(0));
}

#[tokio::test]
async fn a_port_in_use_is_a_one_line_error_and_exit_1() {
    let server = Server::start(&[]).await;
    let output = timeout(
        WAIT,
        server_command()
            .args(["--port", &server.port.to_string()])
            .output(),
    )
    .await
    .expect("exit in time")
    .expect("run server");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output.stdout.is_empty(),
        "no readiness line when nothing listens"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: cannot listen on 127.0.0.1:{}: address already in use (is another server running? choose another --port)",
            server.port
        )
    );
}

//! Talking WebSocket to the server from the test itself: connect, send, receive
//! under the test timeout, and readers that keep a socket drained.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

use super::{Server, WAIT, WELCOME};

pub type Ws = WebSocketStream<TcpStream>;

/// Opens a WebSocket to `url` and returns it after reading the welcome message.
pub async fn connect(url: &str) -> Ws {
    let mut ws = connect_raw(url).await;
    assert_eq!(recv_text(&mut ws).await, WELCOME);
    ws
}

/// Opens a WebSocket to `url` without reading anything.
pub async fn connect_raw(url: &str) -> Ws {
    let uri: http::Uri = url.parse().expect("valid url");
    let addr = format!(
        "{}:{}",
        uri.host().expect("host"),
        uri.port_u16().expect("port")
    );
    timeout(WAIT, async {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        ClientBuilder::from_uri(uri)
            .connect_on(stream)
            .await
            .expect("upgrade")
            .0
    })
    .await
    .expect("connect in time")
}

/// A WebSocket to `server` whose receive buffer is tiny, so that the server's
/// writes to it back up as soon as it stops reading; nothing read yet.
pub async fn connect_small_window(server: &Server) -> Ws {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("set SO_RCVBUF");
    let stream = timeout(WAIT, socket.connect(server.addr()))
        .await
        .expect("connect in time")
        .expect("connect");
    let uri: http::Uri = server.url().parse().expect("url");
    let (ws, _) = timeout(WAIT, ClientBuilder::from_uri(uri).connect_on(stream))
        .await
        .expect("upgrade in time")
        .expect("upgrade");
    ws
}

/// The address the server sees for this client.
pub fn local_addr(ws: &Ws) -> SocketAddr {
    ws.get_ref().local_addr().expect("local address")
}

/// The line the server broadcasts when `ws` sends `text`.
pub fn tagged(ws: &Ws, text: &str) -> String {
    format!("{:?}: {text:?}", local_addr(ws))
}

pub async fn send(ws: &mut Ws, text: &str) {
    timeout(WAIT, ws.send(Message::text(text.to_owned())))
        .await
        .expect("send in time")
        .expect("send");
}

/// The next text message, skipping pings and pongs. Panics on close or timeout.
pub async fn recv_text(ws: &mut Ws) -> String {
    loop {
        let message = timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("connection open")
            .expect("no error");
        if let Some(text) = message.as_text() {
            return text.to_owned();
        }
        assert!(
            !message.is_close(),
            "unexpected close: {:?}",
            message.as_close()
        );
    }
}

/// Reads until the server's close frame and returns its code and reason, skipping
/// any text still in flight.
pub async fn recv_close(ws: &mut Ws) -> (u16, String) {
    loop {
        let message = timeout(WAIT, ws.next())
            .await
            .expect("a close frame in time")
            .expect("connection open until the close frame")
            .expect("no error before the close frame");
        if let Some((code, reason)) = message.as_close() {
            return (u16::from(code), reason.to_owned());
        }
    }
}

/// Closes `ws` properly and waits for the server's answer.
pub async fn close_and_read_to_end(mut ws: Ws) {
    let _ = ws.send(Message::close(None, "")).await;
    read_to_end(&mut ws).await;
}

/// How a connection ended, as [`read_to_end`] saw it.
#[derive(Debug, Default, PartialEq)]
pub struct Ended {
    /// The text messages that came first.
    pub texts: Vec<String>,
    /// The close frame's code and reason, if the server sent one; `None` when the
    /// connection was just cut.
    pub close: Option<(u16, String)>,
}

/// Reads until the connection ends in any way; returns what came.
pub async fn read_to_end(ws: &mut Ws) -> Ended {
    let mut ended = Ended::default();
    timeout(WAIT, async {
        while let Some(Ok(message)) = ws.next().await {
            if let Some(text) = message.as_text() {
                ended.texts.push(text.to_owned());
            } else if let Some((code, reason)) = message.as_close() {
                ended.close = Some((u16::from(code), reason.to_owned()));
            }
        }
    })
    .await
    .expect("connection ended in time");
    ended
}

/// A channel of every text message `ws` receives, read by a task of its own so
/// the socket is always drained (and pings answered).
pub fn reader(mut ws: Ws) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            if let Some(text) = message.as_text()
                && tx.send(text.to_owned()).is_err()
            {
                break;
            }
        }
    });
    rx
}

/// Puts a numbered line ("0", "1", ...) into `talk` every millisecond, until its
/// receiver is gone: steady traffic for the tests of a seam.
pub fn count_aloud(talk: mpsc::UnboundedSender<String>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        for i in 0u32.. {
            tick.tick().await;
            if talk.send(format!("{i}")).is_err() {
                break;
            }
        }
    })
}

/// Like [`reader`], and also sends every text put into the returned sender: a
/// client that is always polled, so it answers pings.
pub fn chatter(
    mut ws: Ws,
) -> (
    mpsc::UnboundedSender<String>,
    mpsc::UnboundedReceiver<String>,
) {
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                outgoing = out_rx.recv() => match outgoing {
                    Some(text) => {
                        if ws.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                incoming = ws.next() => match incoming {
                    Some(Ok(message)) => {
                        if let Some(text) = message.as_text()
                            && in_tx.send(text.to_owned()).is_err()
                        {
                            break;
                        }
                    }
                    _ => break,
                },
            }
        }
    });
    (out_tx, in_rx)
}

/// The next message from a [`reader`] channel, under the test timeout.
pub async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    timeout(WAIT, rx.recv())
        .await
        .expect("a message in time")
        .expect("reader still running")
}

/// A WebSocket to `url` that speaks the structured protocol; returns it with its
/// welcome frame, parsed.
pub async fn connect_structured(url: &str) -> (Ws, serde_json::Value) {
    let uri: http::Uri = url.parse().expect("valid url");
    let addr = format!(
        "{}:{}",
        uri.host().expect("host"),
        uri.port_u16().expect("port")
    );
    let (mut ws, response) = timeout(WAIT, async {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        ClientBuilder::from_uri(uri)
            .add_header(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                http::HeaderValue::from_static("broadcast-chat.v1"),
            )
            .expect("header")
            .connect_on(stream)
            .await
            .expect("upgrade")
    })
    .await
    .expect("connect in time");
    assert_eq!(
        response
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .map(|v| v.as_bytes()),
        Some(&b"broadcast-chat.v1"[..]),
        "the server chose the structured protocol"
    );
    let welcome = recv_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// The next text frame, parsed as JSON.
pub async fn recv_json(ws: &mut Ws) -> serde_json::Value {
    let text = recv_text(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

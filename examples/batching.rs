//! A plain batching loop: the classic chat server (`examples/classic.rs`) with three changes.
//!
//! After a wake-up a session feeds every message `try_recv` already holds and flushes once (one
//! write per burst, not per message); a lag skips what was missed instead of dropping the client;
//! the channel holds 1024 messages, not 16; and Nagle's algorithm is off, as in any server that
//! flushes whole batches (with it on, a flush waits up to 40 ms for the previous one's
//! acknowledgement, which costs latency and hides the CPU of small writes). The simplest server
//! that batches, so the benchmark (`--against batching`) shows what batching alone buys: the
//! floor our server is measured against. Tags, `--port` and the readiness line are as in the
//! classic one.

use std::error::Error;
use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::broadcast::{Sender, channel};
use tokio_websockets::{Message, ServerBuilder, WebSocketStream};

type BoxError = Box<dyn Error + Send + Sync>;

async fn handle_connection(
    addr: SocketAddr,
    mut ws_stream: WebSocketStream<TcpStream>,
    bcast_tx: Sender<String>,
) -> Result<(), BoxError> {
    ws_stream
        .send(Message::text("Welcome to chat! Type a message"))
        .await?;
    let mut bcast_rx = bcast_tx.subscribe();
    loop {
        tokio::select! {
            incoming = ws_stream.next() => match incoming {
                Some(Ok(msg)) => {
                    if let Some(text) = msg.as_text() {
                        bcast_tx.send(format!("{addr:?}: {text:?}"))?;
                    }
                }
                Some(Err(err)) => return Err(err.into()),
                None => return Ok(()),
            },
            msg = bcast_rx.recv() => {
                match msg {
                    Ok(text) => ws_stream.feed(Message::text(text)).await?,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return Ok(()),
                }
                loop {
                    match bcast_rx.try_recv() {
                        Ok(text) => ws_stream.feed(Message::text(text)).await?,
                        Err(TryRecvError::Lagged(_)) => continue,
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
                ws_stream.flush().await?;
            }
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let port: u16 = std::env::args()
        .skip_while(|arg| arg != "--port")
        .nth(1)
        .map_or(Ok(2000), |port| port.parse())?;
    let (bcast_tx, _) = channel(1024);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("Listening on port {}", listener.local_addr()?.port());
    loop {
        let (socket, addr) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let bcast_tx = bcast_tx.clone();
        tokio::spawn(async move {
            let (_request, ws_stream) = ServerBuilder::new().accept(socket).await?;
            handle_connection(addr, ws_stream, bcast_tx).await
        });
    }
}

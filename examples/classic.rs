//! The classic broadcast chat server, as the exercise teaches it: a baseline for the benchmark.
//!
//! One `broadcast::channel(16)` of `String`s; each connection's `select!` loop writes every
//! message with its own `ws.send(..)` (one write, one flush per message), and `?` on `recv()`
//! drops a client that lags; Nagle's algorithm stays on (ours sets `TCP_NODELAY`), which costs
//! up to 40 ms when a write waits for a delayed ACK. Kept with exactly these weaknesses so
//! `cargo bench --bench fanout -- --against classic` shows what our server does differently. Changed from the exercise only
//! where the benchmark needs it: lines are tagged `ADDR: "TEXT"` like ours, `--port` (0 picks a
//! free one; other flags are ignored) and the readiness line `Listening on port N` on stdout.
//! The exercise's `println!` per message is left out: it would measure stdout, not the fan-out.

use std::error::Error;
use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
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
            msg = bcast_rx.recv() => ws_stream.send(Message::text(msg?)).await?,
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let port: u16 = std::env::args()
        .skip_while(|arg| arg != "--port")
        .nth(1)
        .map_or(Ok(2000), |port| port.parse())?;
    let (bcast_tx, _) = channel(16);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("Listening on port {}", listener.local_addr()?.port());
    loop {
        let (socket, addr) = listener.accept().await?;
        let bcast_tx = bcast_tx.clone();
        tokio::spawn(async move {
            let (_request, ws_stream) = ServerBuilder::new().accept(socket).await?;
            handle_connection(addr, ws_stream, bcast_tx).await
        });
    }
}

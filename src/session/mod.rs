//! One connection, from the first byte to the close: TLS if configured, the upgrade
//! ([`upgrade`]), the welcome and the replay, the chat loop ([`chat`]) that reads the
//! client's frames into the hub and writes the hub's messages ([`outbox`]), and a
//! bounded close.

mod chat;
mod frames;
mod keepalive;
mod outbox;
mod upgrade;
mod write_delay;

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tokio_websockets::{CloseCode, Limits, Message, ServerBuilder, WebSocketStream};
use tracing::{debug, info};

use crate::auth;
use crate::metrics::{ConnectionOutcome, Reason};
use crate::state::ConnectionGuard;
use frames::Frames;
use outbox::Outbox;

/// Why a session ended; decides how the connection is closed and what is logged.
#[derive(Debug)]
enum End {
    /// We close with this code and reason and wait for the client's answer.
    Close(CloseCode, &'static str),
    /// The client sent a close frame; the library queued the answer.
    ClosedByClient,
    /// The client broke the protocol (bad UTF-8, too big, bad framing); the library
    /// queued a close frame with the matching code.
    ProtocolError(tokio_websockets::Error),
    /// The connection is gone or stuck: nothing more can be sent.
    Dropped(Dropped),
    /// The client's signed token expired: closed with 4001 ([`auth::CLOSE_EXPIRED`]).
    Expired,
}

/// Why a connection was given up without a close handshake.
#[derive(Debug, Clone, Copy)]
enum Dropped {
    /// It broke (reset, end of stream, a failed write).
    Lost,
    /// A write waited longer than the write timeout: the client stopped reading.
    WriteTimeout,
    /// The client answered nothing, not even a ping, for two intervals.
    Keepalive,
}

impl Dropped {
    /// The reason as the log says it.
    fn text(self) -> &'static str {
        match self {
            Dropped::Lost => "connection lost",
            Dropped::WriteTimeout => "write timed out",
            Dropped::Keepalive => "keepalive timed out",
        }
    }
}

impl End {
    /// The reason as the log says it.
    fn text(&self) -> Cow<'static, str> {
        match self {
            End::Close(_, reason) => Cow::Borrowed(reason),
            End::Dropped(dropped) => Cow::Borrowed(dropped.text()),
            End::ClosedByClient => Cow::Borrowed("closed by client"),
            End::ProtocolError(e) => Cow::Owned(format!("protocol error: {e}")),
            End::Expired => Cow::Borrowed(auth::REASON_EXPIRED),
        }
    }

    /// The reason the metrics count it under.
    fn reason(&self) -> Reason {
        match self {
            End::Close(code, _) if *code == CloseCode::GOING_AWAY => Reason::Shutdown,
            End::Close(code, _) if *code == CloseCode::POLICY_VIOLATION => Reason::Flood,
            End::Close(..) | End::ProtocolError(_) => Reason::Protocol,
            End::Expired => Reason::Expired,
            End::ClosedByClient => Reason::ClientClosed,
            End::Dropped(Dropped::Lost) => Reason::Lost,
            End::Dropped(Dropped::WriteTimeout) => Reason::WriteTimeout,
            End::Dropped(Dropped::Keepalive) => Reason::Keepalive,
        }
    }
}

/// Serves one connection from the first byte to the close: TLS if configured,
/// the upgrade, the chat. Every error ends this connection only and is logged here.
pub(crate) async fn run(
    tcp: TcpStream,
    addr: SocketAddr,
    guard: ConnectionGuard,
    shutdown: CancellationToken,
) {
    let shared = guard.shared();
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let Some(tls) = shared.tls.clone() else {
        return serve(tcp, addr, &guard, &shutdown, deadline).await;
    };
    // Boxed: a TLS session's state is several kB, and every plain connection's
    // task would otherwise reserve room for it.
    Box::pin(async move {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = timeout_at(deadline, tls.accept(tcp)) => accepted,
        };
        match accepted {
            Ok(Ok(stream)) => serve(stream, addr, &guard, &shutdown, deadline).await,
            Ok(Err(e)) => {
                guard.shared().metrics.connection(ConnectionOutcome::Failed);
                debug!(%addr, error = %e, "TLS handshake failed");
            }
            Err(_) => {
                guard
                    .shared()
                    .metrics
                    .connection(ConnectionOutcome::TimedOut);
                info!(%addr, "handshake timed out");
            }
        }
    })
    .await;
}

/// The upgrade (finished by `deadline`), then the chat, then the close.
async fn serve<S>(
    mut stream: S,
    addr: SocketAddr,
    guard: &ConnectionGuard,
    shutdown: &CancellationToken,
    deadline: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = &guard.shared().config;
    // Joined the room during the upgrade, so the receiver saw everything since.
    // The upgrade is boxed so that the handshake's buffers and timer are freed
    // once it is done, and its answer taken apart in a block of its own, so that
    // it is not kept in the task beside its parts. `joined` is used in place, not
    // taken apart, for the same reason.
    let (mut joined, format, rights) = {
        let upgraded = Box::pin(upgrade::upgrade(
            &mut stream,
            addr,
            guard,
            shutdown,
            deadline,
        ))
        .await;
        match upgraded {
            Some(upgraded) => upgraded,
            None => return,
        }
    };
    let membership = &joined.membership;

    let mut ws = ServerBuilder::new()
        .limits(Limits::default().max_payload_len(Some(config.max_message_size)))
        .serve(stream);
    info!(
        %addr,
        who = %membership.who(),
        room = %format_args!("/{}", membership.room()),
        clients = guard.open(),
        "connected"
    );

    let frames = Frames(format);
    let metrics = &guard.shared().metrics;
    let mut outbox = Outbox::new(
        joined.epoch,
        joined.replay_after,
        membership.id(),
        config,
        frames,
        metrics,
    );
    // The greeting and the close are boxed: each runs once, and its state (a
    // replay, a close handshake) must never make the task bigger than the chat
    // needs (`idle` in the benchmark counts the task per connection; the test
    // below bounds it). A label, not a match on the greeting's result: that
    // result would be kept in the task for as long as the chat runs.
    let greeting = Box::pin(outbox.greet(
        &mut ws,
        membership,
        joined.head,
        joined.recovery,
        config.no_echo,
    ));
    let end = 'chat: {
        if let Err(end) = greeting.await {
            break 'chat end;
        }
        let mut chat = chat::Chat::new(membership, guard, frames, rights);
        chat.run(&mut ws, &mut joined.rx, &mut outbox).await
    };
    // Out of the room before the close handshake.
    drop(joined);

    metrics.disconnected(end.reason());
    let reason = end.text();
    Box::pin(close(&mut ws, end, config.close_timeout)).await;
    info!(%addr, reason = &*reason, clients = guard.open() - 1, "disconnected");
}

/// Runs `write` for at most `limit`: a client whose writes stall that long is
/// stuck, and one whose writes fail is gone; either way the session ends.
/// Timed exactly on a paused clock by `tests/timeouts.rs`
/// (`a_client_that_stops_reading_is_dropped_at_the_write_timeout`).
///
/// Most writes finish on their first poll (the socket has room), so the timer is
/// only set, and boxed, for a write that has to wait: a timer per write would cost
/// more than the write, and one kept in every session's task would take room in
/// it for good.
///
/// It takes the write pinned where the caller made it: a future passed by value
/// is moved into this one's state, and the copy it was moved from keeps its room
/// too, so every session's task would hold the largest write twice.
async fn bounded<F>(limit: Duration, mut write: Pin<&mut F>) -> Result<(), End>
where
    F: Future<Output = Result<(), tokio_websockets::Error>> + ?Sized,
{
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    let result = match first {
        Poll::Ready(result) => result,
        Poll::Pending => match Box::pin(timeout(limit, write)).await {
            Ok(result) => result,
            Err(_) => return Err(End::Dropped(Dropped::WriteTimeout)),
        },
    };
    result.map_err(|_| End::Dropped(Dropped::Lost))
}

/// Ends the connection as `end` says, waiting at most `limit` for the close handshake.
async fn close<S>(ws: &mut WebSocketStream<S>, end: End, limit: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async {
        if let End::Close(code, reason) = end {
            ws.send(Message::close(Some(code), reason)).await?;
        } else if let End::Expired = end {
            let code = CloseCode::try_from(auth::CLOSE_EXPIRED).ok();
            ws.send(Message::close(code, auth::REASON_EXPIRED)).await?;
        } else if matches!(end, End::Dropped(_)) {
            return Ok(());
        }
        // Reading on flushes the close frame we answer with or queued, and waits
        // for the client's answer to ours.
        while ws.next().await.is_some() {}
        Ok::<_, tokio_websockets::Error>(())
    };
    let _ = timeout(limit, handshake).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::sync::CancellationToken;

    use crate::ServerConfig;
    use crate::hub::Hub;
    use crate::metrics::Metrics;
    use crate::state::{ConnectionGuard, Shared};
    use crate::store::MemoryStore;

    /// Most bytes a plain connection's task may take: an idle connection costs
    /// about this plus its socket's share of the runtime, and the README's `idle`
    /// figure (under 3 kB a connection at 10,000) rests on it. It was 3.2 kB before
    /// the session's one-off and per-branch work was boxed.
    const MOST_TASK_BYTES: usize = 1_700;

    #[tokio::test]
    async fn a_plain_connections_task_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("address"));
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (_client, (stream, addr)) = (client.expect("connect"), accepted.expect("accept"));
        let config = ServerConfig::default();
        let hub = Arc::new(Hub::new(
            &config,
            Arc::new(MemoryStore::for_config(&config)),
        ));
        let shared = Arc::new(Shared::new(config, hub, Arc::new(Metrics::new())));
        let task = super::run(
            stream,
            addr,
            ConnectionGuard::new(shared),
            CancellationToken::new(),
        );
        let bytes = size_of_val(&task);
        assert!(
            bytes <= MOST_TASK_BYTES,
            "a session's task takes {bytes} bytes, more than {MOST_TASK_BYTES}: a state \
             that lasts the whole session grew (box what runs once or rarely)"
        );
    }
}

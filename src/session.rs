//! One connection: the upgrade, then a `select!` loop that reads the client's
//! messages into the hub and writes the hub's messages to the client, and a
//! bounded close.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::time::{Instant, MissedTickBehavior, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tokio_websockets::{CloseCode, Limits, Message, ServerBuilder, WebSocketStream};
use tracing::{debug, info};

use crate::config::ServerConfig;
use crate::handshake::{self, Failure, Incoming, Reply, UpgradeRequest};
use crate::hub::{Delivery, Joined, Membership, SenderId, TooManyRooms};
use crate::limits::{RateLimit, Verdict};
use crate::protocol;
use crate::state::ConnectionGuard;

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
    Dropped(&'static str),
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
            Ok(Err(e)) => debug!(%addr, error = %e, "TLS handshake failed"),
            Err(_) => info!(%addr, "handshake timed out"),
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
    // Boxed so that the handshake's buffers and timer are freed once it is done
    // instead of taking room in the task for the whole session.
    let upgraded = Box::pin(upgrade(&mut stream, addr, guard, shutdown, deadline)).await;
    // Joined the room during the upgrade, so the receiver saw everything since.
    let Some(Joined {
        membership,
        mut rx,
        history,
    }) = upgraded
    else {
        return;
    };

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

    // The welcome, then the room's history, then live traffic.
    let greeting = async {
        ws.feed(Message::text(protocol::WELCOME)).await?;
        for message in history {
            ws.feed(message).await?;
        }
        ws.flush().await
    };
    let end = match bounded(config.write_timeout, greeting).await {
        Ok(()) => chat(&mut ws, &mut rx, &membership, guard, shutdown).await,
        Err(end) => end,
    };
    drop(rx);
    drop(membership);

    let reason = match &end {
        End::Close(_, reason) | End::Dropped(reason) => (*reason).to_owned(),
        End::ClosedByClient => "closed by client".to_owned(),
        End::ProtocolError(e) => format!("protocol error: {e}"),
    };
    close(&mut ws, end, config.close_timeout).await;
    info!(%addr, reason, clients = guard.open() - 1, "disconnected");
}

/// Reads and answers the upgrade request by `deadline`, joining the room it
/// names. `None` when the connection got an HTTP answer instead, or failed;
/// either is logged here.
async fn upgrade<S>(
    stream: &mut S,
    addr: SocketAddr,
    guard: &ConnectionGuard,
    shutdown: &CancellationToken,
    deadline: Instant,
) -> Option<Joined>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let shared = guard.shared();
    let config = &shared.config;
    let upgrade = async {
        let request = match handshake::read_request(&mut *stream).await? {
            Incoming::Upgrade(request) => request,
            Incoming::Health => return Ok(None),
        };
        admit(&request, config).map_err(Failure::Refused)?;
        let bad_request = |reason| Failure::Refused(Reply::new(StatusCode::BAD_REQUEST, reason));
        let room = protocol::room_from_path(&request.path).map_err(bad_request)?;
        let name = protocol::name_from_query(request.query.as_deref());
        if let Some(name) = name {
            protocol::check_name(name).map_err(bad_request)?;
        }
        let who = protocol::sender(name, addr);
        let joined = shared
            .hub
            .join(room, shared.next_id(), who)
            .map_err(|TooManyRooms| {
                Failure::Refused(Reply::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many rooms; join an existing one",
                ))
            })?;
        handshake::accept(&mut *stream, &request).await?;
        Ok::<_, Failure>(Some(joined))
    };
    let outcome = tokio::select! {
        () = shutdown.cancelled() => return None,
        outcome = timeout_at(deadline, upgrade) => outcome,
    };
    match outcome {
        Ok(Ok(Some(joined))) => Some(joined),
        Ok(Ok(None)) => {
            debug!(%addr, "health check");
            let _ = timeout(
                config.close_timeout,
                handshake::respond(stream, &health(guard)),
            )
            .await;
            None
        }
        Ok(Err(Failure::Refused(reply))) => {
            info!(%addr, status = reply.status.as_u16(), reason = %reply.body, "refused");
            let _ = timeout(config.close_timeout, handshake::respond(stream, &reply)).await;
            None
        }
        Ok(Err(Failure::Io(e))) => {
            debug!(%addr, error = %e, "handshake failed");
            None
        }
        Err(_) => {
            info!(%addr, "handshake timed out");
            None
        }
    }
}

/// Decides whether an upgrade request may join: the token, then the origin.
fn admit(request: &UpgradeRequest, config: &ServerConfig) -> Result<(), Reply> {
    if let Some(token) = &config.token {
        let presented = request
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        if !presented.is_some_and(|p| token.matches(p)) {
            return Err(Reply::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong token",
            ));
        }
    }
    if !config.allowed_origins.is_empty()
        && let Some(origin) = request.headers.get(http::header::ORIGIN)
    {
        let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
        if !config
            .allowed_origins
            .iter()
            .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin))
        {
            return Err(Reply::new(StatusCode::FORBIDDEN, "origin not allowed"));
        }
    }
    Ok(())
}

/// The health check's answer: the open connections, not counting itself.
fn health(guard: &ConnectionGuard) -> Reply {
    Reply::json(
        StatusCode::OK,
        format!("{{\"status\":\"ok\",\"connections\":{}}}", guard.open() - 1),
    )
}

/// The chat loop: the client's messages go to the hub, the hub's to the client.
async fn chat<S>(
    ws: &mut WebSocketStream<S>,
    rx: &mut broadcast::Receiver<Delivery>,
    membership: &Membership,
    guard: &ConnectionGuard,
    shutdown: &CancellationToken,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let shared = guard.shared();
    let config = &shared.config;
    let mut keepalive =
        tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Whether the client sent anything since the last tick, and whether a ping is
    // waiting for an answer.
    let (mut heard, mut ping_sent) = (false, false);
    let mut rate = RateLimit::new(
        config.max_rate,
        config.max_burst,
        config.flood_timeout,
        Instant::now(),
    );
    // With no-echo, our own messages are left out of what we write.
    let skip = config.no_echo.then(|| membership.id());

    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return End::Close(CloseCode::GOING_AWAY, protocol::REASON_SHUTDOWN),
            frame = ws.next() => {
                heard = true;
                match frame {
                    Some(Ok(message)) => {
                        if let Some(text) = message.as_text() {
                            let reply = match rate.check(Instant::now()) {
                                Verdict::Pass if text == protocol::WHO_COMMAND => {
                                    Some(protocol::who_notice(&membership.members()))
                                }
                                Verdict::Pass => {
                                    membership.publish(Message::text(protocol::tag_from(membership.who(), text)));
                                    None
                                }
                                Verdict::Drop(notice) => notice,
                                Verdict::Close => return End::Close(CloseCode::POLICY_VIOLATION, protocol::REASON_FLOOD),
                            };
                            if let Some(reply) = reply
                                && let Err(end) = bounded(config.write_timeout, ws.send(Message::text(reply))).await
                            {
                                return end;
                            }
                        } else if message.is_binary() {
                            return End::Close(CloseCode::UNSUPPORTED_DATA, protocol::REASON_BINARY);
                        } else if message.is_close() {
                            return End::ClosedByClient;
                        }
                        // Pings and pongs only prove the client alive; the library answers pings.
                    }
                    Some(Err(tokio_websockets::Error::Io(_))) | None => return End::Dropped("connection lost"),
                    Some(Err(e)) => return End::ProtocolError(e),
                }
            }
            received = rx.recv() => {
                let first = match received {
                    Ok(delivery) if Some(delivery.from) == skip => continue,
                    Ok(delivery) => delivery.message,
                    Err(RecvError::Lagged(missed)) => Message::text(protocol::missed_notice(missed)),
                    Err(RecvError::Closed) => return End::Close(CloseCode::GOING_AWAY, protocol::REASON_SHUTDOWN),
                };
                if let Err(end) = bounded(config.write_timeout, write_batch(ws, rx, first, config.max_batch, skip)).await {
                    return end;
                }
            }
            _ = keepalive.tick() => {
                if heard {
                    (heard, ping_sent) = (false, false);
                } else if ping_sent {
                    return End::Dropped("keepalive timed out");
                } else {
                    ping_sent = true;
                    if let Err(end) = bounded(config.write_timeout, ws.send(Message::ping(bytes::Bytes::new()))).await {
                        return end;
                    }
                }
            }
        }
    }
}

/// Runs `write` for at most `limit`: a client whose writes stall that long is
/// stuck, and one whose writes fail is gone; either way the session ends.
async fn bounded(
    limit: std::time::Duration,
    write: impl Future<Output = Result<(), tokio_websockets::Error>>,
) -> Result<(), End> {
    match timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Dropped("connection lost")),
        Err(_) => Err(End::Dropped("write timed out")),
    }
}

/// Writes `first` and whatever else the channel already holds (up to `max_batch`
/// messages) with one flush, so a burst costs one write, not one per message.
async fn write_batch<S>(
    ws: &mut WebSocketStream<S>,
    rx: &mut broadcast::Receiver<Delivery>,
    first: Message,
    max_batch: usize,
    skip: Option<SenderId>,
) -> Result<(), tokio_websockets::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.feed(first).await?;
    for _ in 1..max_batch {
        let next = match rx.try_recv() {
            Ok(delivery) if Some(delivery.from) == skip => continue,
            Ok(delivery) => delivery.message,
            Err(TryRecvError::Lagged(missed)) => Message::text(protocol::missed_notice(missed)),
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        };
        ws.feed(next).await?;
    }
    ws.flush().await
}

/// Ends the connection as `end` says, waiting at most `limit` for the close handshake.
async fn close<S>(ws: &mut WebSocketStream<S>, end: End, limit: std::time::Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async {
        if let End::Close(code, reason) = end {
            ws.send(Message::close(Some(code), reason)).await?;
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

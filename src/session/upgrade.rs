//! The upgrade: read the request and route it; answer a plain one (the health
//! check, the web page), or admit (token, origin), read the room and the query,
//! negotiate the wire format and join.

use std::net::SocketAddr;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::chat::Rights;
use crate::admit::{admit, check_room_and_name};
use crate::handshake::{self, Failure, Reply, UpgradeRequest};
use crate::hub::{Format, JoinError, Joined, Newcomer};
use crate::metrics::ConnectionOutcome;
use crate::protocol::{self, Params, classic, structured::SUBPROTOCOL};
use crate::route::{self, Listener, Route};
use crate::state::{ConnectionGuard, Shared};
use crate::{auth, publish};

/// What a connection's request came to.
enum Handled {
    /// A WebSocket in this format, joined to its room, with its token's rights.
    Joined(Joined, Format, Rights),
    /// A plain request, answered with this.
    Answered(Reply),
}

/// Reads and answers the upgrade request by `deadline`, joining the room it
/// names. `None` when the connection got an HTTP answer instead, or failed;
/// either is logged here.
pub(super) async fn upgrade<S>(
    stream: &mut S,
    addr: SocketAddr,
    guard: &ConnectionGuard,
    shutdown: &CancellationToken,
    deadline: Instant,
) -> Option<(Joined, Format, Rights)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let shared = guard.shared();
    let handle = async {
        let request = handshake::read_request(&mut *stream).await?;
        let listener = match shared.config.metrics_listen {
            Some(_) => Listener::ChatWithoutMetrics,
            None => Listener::Chat,
        };
        match route::route(request, listener).map_err(Failure::Refused)? {
            Route::Chat(request) => join(&mut *stream, &request, addr, shared).await,
            Route::Plain(plain) => Ok(Handled::Answered(route::answer(plain, shared, addr.ip()))),
            // Boxed: a publish reads a body and waits for the store, several kB of
            // state that every upgrade's future would otherwise reserve.
            Route::Publish(request) => {
                Box::pin(publish::publish(&mut *stream, request, addr.ip(), shared))
                    .await
                    .map(Handled::Answered)
            }
        }
    };
    let handled = tokio::select! {
        () = shutdown.cancelled() => return None,
        handled = timeout_at(deadline, handle) => handled,
    };
    let metrics = &shared.metrics;
    let reply = match handled {
        Ok(Ok(Handled::Joined(joined, format, rights))) => {
            metrics.connection(ConnectionOutcome::Upgraded);
            return Some((joined, format, rights));
        }
        Ok(Ok(Handled::Answered(reply))) => {
            metrics.connection(ConnectionOutcome::Answered);
            debug!(%addr, status = reply.status.as_u16(), "answered");
            reply
        }
        Ok(Err(Failure::Refused(reply))) => {
            metrics.refused(reply.status.as_u16());
            info!(%addr, status = reply.status.as_u16(), reason = %reply.body, "refused");
            reply
        }
        Ok(Err(Failure::Io(e))) => {
            metrics.connection(ConnectionOutcome::Failed);
            debug!(%addr, error = %e, "handshake failed");
            return None;
        }
        Err(_) => {
            metrics.connection(ConnectionOutcome::TimedOut);
            info!(%addr, "handshake timed out");
            return None;
        }
    };
    let _ = timeout(
        shared.config.close_timeout,
        handshake::respond(stream, &reply),
    )
    .await;
    None
}

/// Admits `request` (token, then origin), reads its room and query, joins the room
/// in the format the client offers, and answers the upgrade.
///
/// With `--auth-key`, the token decides the name (its `sub`, the whole tag: two
/// connections of one person are tagged alike) and the rooms; the client id is
/// bound to that name, so that one person's line ids cannot touch another's.
async fn join<S>(
    stream: &mut S,
    request: &UpgradeRequest,
    addr: SocketAddr,
    shared: &Shared,
) -> Result<Handled, Failure>
where
    S: AsyncWrite + Unpin,
{
    let identity = admit(&request.headers, addr.ip(), shared).map_err(Failure::Refused)?;
    let bad_request = |reason| Failure::Refused(Reply::new(StatusCode::BAD_REQUEST, reason));
    let room = protocol::room_from_path(&request.path).map_err(bad_request)?;
    let params = Params::parse(request.query.as_deref()).map_err(bad_request)?;
    let (who, client_id, rights) = match &identity {
        None => (
            classic::sender(params.name, addr),
            params.client_id.map(str::to_owned),
            Rights::ALL,
        ),
        Some(identity) => {
            check_room_and_name(identity, room, params.name).map_err(Failure::Refused)?;
            let rights = Rights {
                may_send: identity.may_send,
                // A time too far ahead for the clock is as good as never.
                expires: Instant::now().checked_add(identity.remaining(auth::now_secs())),
            };
            // Names cannot hold ':', so no two names share a client id.
            let client_id = params.client_id.map(|id| format!("{}:{id}", identity.name));
            (identity.name.clone(), client_id, rights)
        }
    };
    let format = if request.offers(SUBPROTOCOL) {
        Format::Structured
    } else {
        Format::Classic
    };
    let newcomer = Newcomer {
        room,
        id: shared.next_id(),
        who,
        format,
        client_id: client_id.as_deref(),
        resume: params.resume,
        history: params.history,
    };
    let joined = shared.hub.join(newcomer).await.map_err(|e| {
        let reason = match e {
            JoinError::TooManyRooms => "too many rooms; join an existing one",
            JoinError::ShuttingDown => protocol::REASON_SHUTDOWN,
        };
        Failure::Refused(Reply::new(StatusCode::SERVICE_UNAVAILABLE, reason))
    })?;
    let subprotocol = (format == Format::Structured).then_some(SUBPROTOCOL);
    handshake::accept(stream, request, subprotocol).await?;
    Ok(Handled::Joined(joined, format, rights))
}

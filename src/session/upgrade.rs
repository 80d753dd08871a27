//! The upgrade: read the request and route it; answer a plain one (the health
//! check, the web page), or admit (token, origin), read the room and the query,
//! negotiate the wire format and join.

use std::net::SocketAddr;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::handshake::{self, Failure, Reply, UpgradeRequest};
use crate::hub::{Format, JoinError, Joined, Newcomer};
use crate::metrics::ConnectionOutcome;
use crate::protocol::{self, Params, classic, structured::SUBPROTOCOL};
use crate::route::{self, Listener, Route};
use crate::state::{ConnectionGuard, Shared};

/// What a connection's request came to.
enum Handled {
    /// A WebSocket in this format, joined to its room.
    Joined(Joined, Format),
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
) -> Option<(Joined, Format)>
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
            Route::Plain(plain) => Ok(Handled::Answered(route::answer(plain, shared))),
        }
    };
    let handled = tokio::select! {
        () = shutdown.cancelled() => return None,
        handled = timeout_at(deadline, handle) => handled,
    };
    let metrics = &shared.metrics;
    let reply = match handled {
        Ok(Ok(Handled::Joined(joined, format))) => {
            metrics.connection(ConnectionOutcome::Upgraded);
            return Some((joined, format));
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
async fn join<S>(
    stream: &mut S,
    request: &UpgradeRequest,
    addr: SocketAddr,
    shared: &Shared,
) -> Result<Handled, Failure>
where
    S: AsyncWrite + Unpin,
{
    route::admit(&request.headers, &shared.config).map_err(Failure::Refused)?;
    let bad_request = |reason| Failure::Refused(Reply::new(StatusCode::BAD_REQUEST, reason));
    let room = protocol::room_from_path(&request.path).map_err(bad_request)?;
    let params = Params::parse(request.query.as_deref()).map_err(bad_request)?;
    let format = if request.offers(SUBPROTOCOL) {
        Format::Structured
    } else {
        Format::Classic
    };
    let newcomer = Newcomer {
        room,
        id: shared.next_id(),
        who: classic::sender(params.name, addr),
        format,
        client_id: params.client_id,
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
    Ok(Handled::Joined(joined, format))
}

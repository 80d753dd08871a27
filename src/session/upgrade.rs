//! The upgrade: read the request, answer plain requests (the health check, the web
//! page), admit (token, origin: [`super::admit`]), read the room and the query, negotiate the wire
//! format, join.

use std::net::SocketAddr;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::admit::{admit, check_room_and_name};
use super::chat::Rights;
use crate::auth;
use crate::handshake::{self, Failure, Incoming, Reply};
use crate::hub::{Format, JoinError, Joined, Newcomer};
use crate::metrics::Outcome as Counted;
use crate::protocol::{self, Params, classic, structured::SUBPROTOCOL};
use crate::state::ConnectionGuard;
use crate::web;

/// What a request turned out to be.
enum Outcome {
    /// A WebSocket in this format, joined to its room, with its token's rights.
    Chat(Joined, Format, Rights),
    /// A plain request, answered with this.
    Answer(Reply),
}

/// Reads and answers the upgrade request by `deadline`, joining the room it
/// names. `None` when the connection got an HTTP answer instead, or failed;
/// either is logged here.
///
/// With `--auth-key`, the token decides the name (its `sub`, the whole tag: two
/// connections of one person are tagged alike) and the rooms; the client's session
/// id is bound to that name, so that one person's line ids cannot touch another's.
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
    let config = &shared.config;
    let upgrade = async {
        let request = match handshake::read_request(&mut *stream).await? {
            Incoming::Upgrade(request) => request,
            Incoming::Health => return Ok(Outcome::Answer(health(guard))),
            Incoming::Metrics if config.metrics_listen.is_some() => {
                return Err(Failure::Refused(Reply::new(
                    StatusCode::NOT_FOUND,
                    "the metrics are served on the --metrics-listen address",
                )));
            }
            Incoming::Metrics => return Ok(Outcome::Answer(metrics_reply(shared))),
            Incoming::Page(page) => {
                let reply = web::answer(&page, || {
                    admit(&page.headers, addr.ip(), shared).map(|who| who.map(|who| who.name))
                });
                return Ok(Outcome::Answer(reply));
            }
        };
        let identity = admit(&request.headers, addr.ip(), shared).map_err(Failure::Refused)?;
        let bad_request = |reason| Failure::Refused(Reply::new(StatusCode::BAD_REQUEST, reason));
        let room = protocol::room_from_path(&request.path).map_err(bad_request)?;
        let params = Params::parse(request.query.as_deref()).map_err(bad_request)?;
        let (who, session, rights) = match &identity {
            None => (
                classic::sender(params.name, addr),
                params.session.map(str::to_owned),
                Rights::ALL,
            ),
            Some(identity) => {
                check_room_and_name(identity, room, params.name).map_err(Failure::Refused)?;
                let rights = Rights {
                    may_send: identity.may_send,
                    expires: Some(Instant::now() + identity.remaining(auth::now_secs())),
                };
                // Names cannot hold ':', so no two names share a session key.
                let session = params.session.map(|id| format!("{}:{id}", identity.name));
                (identity.name.clone(), session, rights)
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
            session: session.as_deref(),
            resume: params.resume,
        };
        let joined = shared.hub.join(newcomer).await.map_err(|e| {
            let reason = match e {
                JoinError::TooManyRooms => "too many rooms; join an existing one",
                JoinError::ShuttingDown => protocol::REASON_SHUTDOWN,
            };
            Failure::Refused(Reply::new(StatusCode::SERVICE_UNAVAILABLE, reason))
        })?;
        let subprotocol = (format == Format::Structured).then_some(SUBPROTOCOL);
        handshake::accept(&mut *stream, &request, subprotocol).await?;
        Ok::<_, Failure>(Outcome::Chat(joined, format, rights))
    };
    let outcome = tokio::select! {
        () = shutdown.cancelled() => return None,
        outcome = timeout_at(deadline, upgrade) => outcome,
    };
    let counted = &shared.metrics;
    let reply = match outcome {
        Ok(Ok(Outcome::Chat(joined, format, rights))) => {
            counted.connection(Counted::Upgraded);
            return Some((joined, format, rights));
        }
        Ok(Ok(Outcome::Answer(reply))) => {
            counted.connection(Counted::Answered);
            debug!(%addr, status = reply.status.as_u16(), "answered");
            reply
        }
        Ok(Err(Failure::Refused(reply))) => {
            counted.refused(reply.status.as_u16());
            info!(%addr, status = reply.status.as_u16(), reason = %reply.body, "refused");
            reply
        }
        Ok(Err(Failure::Io(e))) => {
            counted.connection(Counted::Failed);
            debug!(%addr, error = %e, "handshake failed");
            return None;
        }
        Err(_) => {
            counted.connection(Counted::TimedOut);
            info!(%addr, "handshake timed out");
            return None;
        }
    };
    let _ = timeout(config.close_timeout, handshake::respond(stream, &reply)).await;
    None
}

/// The metrics, in the Prometheus text format.
pub(crate) fn metrics_reply(shared: &crate::state::Shared) -> Reply {
    Reply::typed(
        StatusCode::OK,
        crate::metrics::CONTENT_TYPE,
        shared.render_metrics(),
    )
}

/// The health check's answer: the open connections, not counting itself, and with
/// Redis whether it answers (`degraded` when it does not: chat goes on locally).
fn health(guard: &ConnectionGuard) -> Reply {
    let connections = guard.open() - 1;
    let body = match guard.shared().hub.redis_up() {
        None => format!("{{\"status\":\"ok\",\"connections\":{connections}}}"),
        Some(true) => {
            format!("{{\"status\":\"ok\",\"connections\":{connections},\"redis\":\"up\"}}")
        }
        Some(false) => {
            format!("{{\"status\":\"degraded\",\"connections\":{connections},\"redis\":\"down\"}}")
        }
    };
    Reply::json(StatusCode::OK, body)
}

//! The upgrade: read the request, answer plain requests (the health check, the web
//! page), admit (token, origin), read the room and the query, negotiate the wire
//! format, join.

use std::net::SocketAddr;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::config::ServerConfig;
use crate::handshake::{self, Failure, Incoming, Reply};
use crate::hub::{Format, JoinError, Joined, Newcomer};
use crate::metrics::Outcome as Counted;
use crate::protocol::{self, Params, classic, structured::SUBPROTOCOL};
use crate::state::ConnectionGuard;
use crate::web;

/// What a request turned out to be.
enum Outcome {
    /// A WebSocket in this format, joined to its room.
    Chat(Joined, Format),
    /// A plain request, answered with this.
    Answer(Reply),
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
                let reply = web::answer(&page, || admit(&page.headers, config));
                return Ok(Outcome::Answer(reply));
            }
        };
        admit(&request.headers, config).map_err(Failure::Refused)?;
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
            session: params.session,
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
        handshake::accept(&mut *stream, &request, subprotocol).await?;
        Ok::<_, Failure>(Outcome::Chat(joined, format))
    };
    let outcome = tokio::select! {
        () = shutdown.cancelled() => return None,
        outcome = timeout_at(deadline, upgrade) => outcome,
    };
    let counted = &shared.metrics;
    let reply = match outcome {
        Ok(Ok(Outcome::Chat(joined, format))) => {
            counted.connection(Counted::Upgraded);
            return Some((joined, format));
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

/// Decides whether an upgrade request with these headers may join: the token (as
/// `Authorization: Bearer` or a `bearer.` subprotocol entry), then the origin (one
/// listed with `--allow-origin`, or the server's own, whose page it is).
fn admit(headers: &http::HeaderMap, config: &ServerConfig) -> Result<(), Reply> {
    if let Some(token) = &config.token
        && !handshake::presented_tokens(headers).any(|presented| token.matches(&presented))
    {
        return Err(Reply::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token",
        ));
    }
    if !config.allowed_origins.is_empty()
        && let Some(origin) = headers.get(http::header::ORIGIN)
    {
        let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let own = headers
            .get(http::header::HOST)
            .and_then(|host| host.to_str().ok())
            .map(|host| format!("{scheme}://{host}"));
        if !config
            .allowed_origins
            .iter()
            .map(|allowed| allowed.trim_end_matches('/'))
            .chain(own.as_deref())
            .any(|allowed| allowed.eq_ignore_ascii_case(origin))
        {
            return Err(Reply::new(StatusCode::FORBIDDEN, "origin not allowed"));
        }
    }
    Ok(())
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

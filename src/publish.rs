//! The publish API: `POST /_/rooms/NAME/messages` with a signed token whose claims
//! allow publishing to that room, and a body of text (`text/plain`) or JSON
//! (`{"text": ...}`). The line is tagged with the token's `sub` and goes through the
//! hub as a member's line does (the same log, order and store; with Redis, every
//! instance); the answer is `201` with where it is in the room's log once it is
//! there.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;
use tracing::info;

use crate::admit::{admit, not_allowed};
use crate::config::ServerConfig;
use crate::handshake::{Failure, Reply};
use crate::hub::PublishError;
use crate::limits::{RateLimit, Verdict};
use crate::protocol::{self, Epoch};
use crate::state::Shared;

/// Where the publish API is: `/_/rooms/NAME/messages` (`NAME` empty: the lobby).
pub(crate) const ROOMS_PREFIX: &str = "/_/rooms/";
/// What follows the room's name.
pub(crate) const MESSAGES_SUFFIX: &str = "/messages";

/// Most publishers whose rate is followed; past it, the table starts again (their
/// buckets full), so that memory stays bounded.
const MAX_PUBLISHERS: usize = 10_000;

/// A `POST` to the publish API, as routed.
#[derive(Debug)]
pub(crate) struct PublishRequest {
    /// The room's name; `""` is the lobby.
    pub(crate) room: String,
    /// The request headers (the token, `Content-Length`, `Content-Type`).
    pub(crate) headers: http::HeaderMap,
    /// What came after the head: the start of the body.
    pub(crate) rest: Vec<u8>,
}

/// The room a publish path names, if `path` is one: `/_/rooms/rust/messages`.
pub(crate) fn room_of(path: &str) -> Option<&str> {
    path.strip_prefix(ROOMS_PREFIX)?
        .strip_suffix(MESSAGES_SUFFIX)
}

/// The rate of each publisher (by the token's `sub`), as `--max-rate` and
/// `--max-burst` allow a member. std `Mutex`: held for one check, never across
/// `.await`.
#[derive(Debug, Default)]
pub(crate) struct Publishers(Mutex<HashMap<String, RateLimit>>);

impl Publishers {
    /// Whether `name` may publish one more line now; if not, how long until it may
    /// (whole seconds, at least one).
    fn admit(&self, name: &str, config: &ServerConfig) -> Result<(), u64> {
        let mut rates = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if rates.len() >= MAX_PUBLISHERS && !rates.contains_key(name) {
            rates.clear();
        }
        let now = Instant::now();
        let rate = rates.entry(name.to_owned()).or_insert_with(|| {
            RateLimit::new(config.max_rate, config.max_burst, config.flood_timeout, now)
        });
        // A publisher is never closed: over the rate for long is still "later".
        match rate.check(now) {
            Verdict::Pass => Ok(()),
            Verdict::Drop(_) | Verdict::Close => {
                Err(rate.until_next().as_secs_f64().ceil().max(1.0) as u64)
            }
        }
    }
}

/// The `201` answer's body.
#[derive(Debug, Serialize)]
struct Logged<'a> {
    room: &'a str,
    epoch: Epoch,
    offset: u64,
}

/// A JSON body.
#[derive(Debug, Deserialize)]
struct Body {
    text: String,
}

/// Answers `request`, which came from `ip`: `201` with the line's place in the
/// room's log, or a refusal with one line.
///
/// # Errors
/// [`Failure::Refused`] with the answer to send; [`Failure::Io`] when the
/// connection broke while the body was read.
pub(crate) async fn publish<S: AsyncRead + Unpin>(
    stream: &mut S,
    request: PublishRequest,
    ip: IpAddr,
    shared: &Shared,
) -> Result<Reply, Failure> {
    let refuse = |status, reason: String| Failure::Refused(Reply::new(status, reason));
    let config = &shared.config;
    let Some(identity) = admit(&request.headers, ip, shared).map_err(Failure::Refused)? else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "the publish API takes signed tokens: start the server with --auth-key".into(),
        ));
    };
    let room = request.room.as_str();
    if !room.is_empty() {
        protocol::check_name(room).map_err(|e| {
            refuse(
                StatusCode::BAD_REQUEST,
                e.replacen("invalid name", "invalid room name", 1),
            )
        })?;
    }
    if !identity.may_publish {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "the token does not allow publishing".into(),
        ));
    }
    if !identity.may_enter(room) {
        return Err(refuse(StatusCode::FORBIDDEN, not_allowed(room)));
    }
    let body = read_body(stream, &request, config.max_message_size).await?;
    let text = text_of(&request.headers, body)?;
    if let Err(wait) = shared.publishers.admit(&identity.name, config) {
        return Err(Failure::Refused(
            Reply::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many messages: the limit is {} per second; try again in {wait} s",
                    config.max_rate
                ),
            )
            .with_header("Retry-After", wait.to_string()),
        ));
    }
    match shared.hub.publish(room, &identity.name, &text).await {
        Ok((epoch, offset)) => {
            shared.metrics.received.increment(1);
            info!(%ip, from = %identity.name, room = %format_args!("/{room}"), offset, "published");
            let logged = Logged {
                room,
                epoch,
                offset,
            };
            // Cannot fail: strings and numbers.
            let body = serde_json::to_string(&logged).unwrap_or_default();
            Ok(Reply::json(StatusCode::CREATED, body))
        }
        Err(PublishError::NoSuchRoom) => Err(refuse(
            StatusCode::NOT_FOUND,
            format!("no such room {room:?}: nobody is in it"),
        )),
        Err(PublishError::Unavailable) => Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the shared log is out of reach; nothing was published, try again".into(),
        )),
    }
}

/// The body, `Content-Length` bytes of it, at most `limit`.
async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    request: &PublishRequest,
    limit: usize,
) -> Result<Vec<u8>, Failure> {
    let refuse = |status, reason: String| Failure::Refused(Reply::new(status, reason));
    let length = request
        .headers
        .get(http::header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()));
    let length = match length {
        Some(Some(length)) => length,
        Some(None) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "malformed Content-Length".into(),
            ));
        }
        None => {
            return Err(refuse(
                StatusCode::LENGTH_REQUIRED,
                "send the body with a Content-Length (chunked bodies are not taken)".into(),
            ));
        }
    };
    if length > limit {
        return Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is {length} bytes; the limit is {limit} (--max-message-size)"),
        ));
    }
    let mut body = request.rest.clone();
    body.truncate(length);
    let mut chunk = [0u8; 4096];
    while body.len() < length {
        let want = chunk.len().min(length - body.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(Failure::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(body)
}

/// The line a body holds: all of a `text/plain` one (the default), the `text` of
/// a JSON one.
fn text_of(headers: &http::HeaderMap, body: Vec<u8>) -> Result<String, Failure> {
    let refuse = |status, reason: &str| Failure::Refused(Reply::new(status, reason.to_owned()));
    let media = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match media.as_deref() {
        None | Some("text/plain") => String::from_utf8(body)
            .map_err(|_| refuse(StatusCode::BAD_REQUEST, "the body is not UTF-8 text")),
        Some("application/json") => serde_json::from_slice::<Body>(&body)
            .map(|body| body.text)
            .map_err(|_| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    "a JSON body is an object with a string \"text\": {\"text\": \"...\"}",
                )
            }),
        Some(_) => Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send text/plain or application/json",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(result: Result<String, Failure>) -> Result<String, (u16, String)> {
        result.map_err(|failure| match failure {
            Failure::Refused(reply) => (reply.status.as_u16(), reply.body.into_owned()),
            Failure::Io(e) => panic!("{e}"),
        })
    }

    fn typed(media: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, media.parse().expect("value"));
        headers
    }

    #[test]
    fn publish_paths_name_their_room() {
        assert_eq!(room_of("/_/rooms/rust/messages"), Some("rust"));
        assert_eq!(room_of("/_/rooms//messages"), Some(""));
        assert_eq!(room_of("/_/rooms/rust"), None);
        assert_eq!(room_of("/rust/messages"), None);
    }

    #[test]
    fn bodies_are_text_or_json_with_a_text() {
        let none = http::HeaderMap::new();
        assert_eq!(
            status(text_of(&none, b"deployed".to_vec())),
            Ok("deployed".into())
        );
        assert_eq!(
            status(text_of(
                &typed("text/plain; charset=utf-8"),
                b"a \"b\"".to_vec()
            )),
            Ok("a \"b\"".into())
        );
        assert_eq!(
            status(text_of(
                &typed("application/json"),
                br#"{"text":"hi\n"}"#.to_vec()
            )),
            Ok("hi\n".into())
        );
        assert_eq!(
            status(text_of(
                &typed("application/json"),
                br#"{"txt":"hi"}"#.to_vec()
            ))
            .map_err(|(s, _)| s),
            Err(400)
        );
        assert_eq!(
            status(text_of(&none, b"\xff".to_vec())),
            Err((400, "the body is not UTF-8 text".into()))
        );
        assert_eq!(
            status(text_of(&typed("image/png"), Vec::new())).map_err(|(s, _)| s),
            Err(415)
        );
    }

    #[test]
    fn a_publisher_gets_the_rate_of_a_member() {
        let config = ServerConfig {
            max_rate: 1.0,
            max_burst: 2,
            ..ServerConfig::default()
        };
        let publishers = Publishers::default();
        assert_eq!(publishers.admit("bot", &config), Ok(()));
        assert_eq!(publishers.admit("bot", &config), Ok(()));
        assert_eq!(publishers.admit("bot", &config), Err(1));
        assert_eq!(
            publishers.admit("other", &config),
            Ok(()),
            "each publisher has its own"
        );
    }
}

//! Who may come in: the limit on failed authentications (429), the token (401: the
//! shared `--token`, or a JWT checked with `--auth-key`), then the origin (403). A
//! signed token gives the holder's identity, which decides the name and the rooms.

use std::net::IpAddr;

use http::StatusCode;
use tokio::time::Instant;

use crate::auth::{self, Identity, Refusal};
use crate::config::ServerConfig;
use crate::handshake::{self, Reply};
use crate::protocol;
use crate::state::Shared;

/// Decides whether a request from `ip` with these headers may come in: an upgrade,
/// the page's admission check, a publish. With `--auth-key`, the identity its token
/// gives; `None` otherwise.
pub(crate) fn admit(
    headers: &http::HeaderMap,
    ip: IpAddr,
    shared: &Shared,
) -> Result<Option<Identity>, Reply> {
    let config = &shared.config;
    let limit = &shared.auth_failures;
    if config.token.is_some() || config.auth.is_some() {
        limit.check(ip, Instant::now()).map_err(|wait| {
            let seconds = wait.as_secs();
            Reply::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many failed authentications from this address; try again in {seconds} s"
                ),
            )
            .with_header("Retry-After", seconds.to_string())
        })?;
    }
    let identity = match authenticate(headers, config) {
        Ok(identity) => identity,
        Err(refusal) => {
            // A guess is a token sent; a request without one (a page's first try)
            // is not counted.
            if refusal != Refusal::Missing {
                limit.failed(ip, Instant::now());
            }
            let reason = match (&refusal, &config.auth) {
                (_, None) => protocol::REASON_WRONG_TOKEN.to_owned(),
                (refusal, Some(_)) => refusal.reason(),
            };
            return Err(Reply::new(StatusCode::UNAUTHORIZED, reason));
        }
    };
    check_origin(headers, config)?;
    Ok(identity)
}

/// The token's verdict: `Ok(None)` when the server asks for none or a shared one
/// was right, the identity for a valid signed token.
fn authenticate(
    headers: &http::HeaderMap,
    config: &ServerConfig,
) -> Result<Option<Identity>, Refusal> {
    if let Some(key) = &config.auth {
        // The first token presented is the one: a second cannot rescue a bad first.
        let token = handshake::presented_tokens(headers)
            .next()
            .ok_or(Refusal::Missing)?;
        return key.verify(&token, auth::now_secs()).map(Some);
    }
    if let Some(token) = &config.token {
        let mut presented = handshake::presented_tokens(headers).peekable();
        if presented.peek().is_none() {
            return Err(Refusal::Missing);
        }
        if !presented.any(|presented| token.matches(&presented)) {
            return Err(Refusal::Invalid(protocol::REASON_WRONG_TOKEN.into()));
        }
    }
    Ok(None)
}

/// With `--allow-origin`: the request's `Origin`, if it has one, must be listed or
/// be the server's own (its web page's).
fn check_origin(headers: &http::HeaderMap, config: &ServerConfig) -> Result<(), Reply> {
    if config.allowed_origins.is_empty() {
        return Ok(());
    }
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return Ok(());
    };
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
    if config
        .allowed_origins
        .iter()
        .map(|allowed| allowed.trim_end_matches('/'))
        .chain(own.as_deref())
        .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    {
        return Ok(());
    }
    Err(Reply::new(StatusCode::FORBIDDEN, "origin not allowed"))
}

/// Whether `identity` may be in `room` under the name `asked` (`?name=`, if given):
/// 403 with the reason when not.
pub(crate) fn check_room_and_name(
    identity: &Identity,
    room: &str,
    asked: Option<&str>,
) -> Result<(), Reply> {
    if !identity.may_enter(room) {
        return Err(Reply::new(StatusCode::FORBIDDEN, not_allowed(room)));
    }
    if let Some(asked) = asked.filter(|asked| *asked != identity.name) {
        return Err(Reply::new(
            StatusCode::FORBIDDEN,
            format!(
                "the name {asked:?} is not the token's ({:?}): leave ?name= out, or use the token's",
                identity.name
            ),
        ));
    }
    Ok(())
}

/// Why a token does not let its holder into `room`.
pub(crate) fn not_allowed(room: &str) -> String {
    match room {
        "" => "the token does not allow the lobby".to_owned(),
        room => format!("the token does not allow the room {room:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            name: "alice".into(),
            rooms: vec!["rust".into(), "team-*".into()],
            may_send: true,
            may_publish: false,
            expires: u64::MAX,
        }
    }

    #[test]
    fn the_room_and_the_name_must_be_the_tokens() {
        let status = |room, name| {
            check_room_and_name(&alice(), room, name)
                .map_err(|reply| (reply.status.as_u16(), reply.body))
        };
        assert_eq!(status("rust", None), Ok(()));
        assert_eq!(status("team-a", Some("alice")), Ok(()));
        assert_eq!(
            status("ops", None),
            Err((403, "the token does not allow the room \"ops\"".into()))
        );
        assert_eq!(
            status("", None),
            Err((403, "the token does not allow the lobby".into()))
        );
        assert_eq!(
            status("rust", Some("bob")),
            Err((
                403,
                "the name \"bob\" is not the token's (\"alice\"): leave ?name= out, or use the token's".into()
            ))
        );
    }
}

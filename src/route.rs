//! Every HTTP endpoint in one table: which one a request is for ([`route`]), who
//! may use the chat (`crate::admit`), and the answers to the plain requests
//! ([`answer`]). A new endpoint is a [`Plain`] variant, its line in [`route`] and
//! its answer in [`answer`]; one with a body (a `POST`) also lets its method
//! through in `handshake::METHODS` and reads at most its own small bound after the
//! head, starting with [`Request::rest`](crate::handshake::Request).

use std::net::IpAddr;

use http::{Method, StatusCode};
use serde::Serialize;

use crate::admit::admit;
use crate::handshake::{self, Reply, Request, UpgradeRequest};
use crate::publish::{self, PublishRequest};
use crate::state::Shared;
use crate::store::StoreKind;
use crate::web::{self, AUTH_FILE, FILES_PREFIX};

/// The path of the health check.
pub(crate) const HEALTH_PATH: &str = "/healthz";
/// The path of the metrics.
pub(crate) const METRICS_PATH: &str = "/metrics";

/// What a request is for.
#[derive(Debug)]
pub(crate) enum Route {
    /// A WebSocket to the room its path names; the session checks the token, the
    /// room and the query, in that order.
    Chat(UpgradeRequest),
    /// A plain request, answered by [`answer`].
    Plain(Plain),
    /// `POST /_/rooms/NAME/messages`: a line for the room, answered by
    /// `crate::publish` once it is in the room's log.
    Publish(PublishRequest),
}

/// A plain request: one HTTP answer, then the connection closes.
#[derive(Debug)]
pub(crate) enum Plain {
    /// `GET /healthz`, the health check.
    Health,
    /// `GET /metrics`, the Prometheus exposition.
    Metrics,
    /// The web page (a room's path, asked for by a browser) or one of its files
    /// under `/_/`; the headers carry `If-None-Match`.
    File(&'static web::File, http::HeaderMap),
    /// `GET /_/auth`, the page's admission check: `admit` on these headers.
    Auth(http::HeaderMap),
    /// A request for the page answered at once: a path that is no room (400), a
    /// file that is none (404). Answered, not refused: nothing was asked of the chat.
    Answer(Reply),
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    /// The chat port, which serves `/metrics` too.
    Chat,
    /// The chat port, with `/metrics` moved to the `--metrics-listen` address.
    ChatWithoutMetrics,
    /// The `--metrics-listen` address, which serves `/metrics` alone.
    Metrics,
}

/// Decides what `request`, which came to `listener`, is for; a refusal is the
/// answer to send.
pub(crate) fn route(request: Request, listener: Listener) -> Result<Route, Reply> {
    let route = if request.method == Method::POST {
        let Some(room) = publish::room_of(request.path()) else {
            return Err(Reply::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST is for /_/rooms/NAME/messages; use GET to open a WebSocket",
            ));
        };
        Route::Publish(PublishRequest {
            room: room.to_owned(),
            headers: request.headers,
            rest: request.rest,
        })
    } else if request.is_upgrade() {
        Route::Chat(UpgradeRequest::new(request)?)
    } else if publish::room_of(request.path()).is_some() {
        return Err(Reply::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST to publish to a room",
        ));
    } else {
        let path = request.path();
        let plain = match (&request.method, path) {
            (&Method::GET, HEALTH_PATH) => Plain::Health,
            (&Method::GET, METRICS_PATH) if listener == Listener::ChatWithoutMetrics => {
                return Err(Reply::new(
                    StatusCode::NOT_FOUND,
                    "the metrics are served on the --metrics-listen address",
                ));
            }
            (&Method::GET, METRICS_PATH) => Plain::Metrics,
            (&Method::GET, path) if path.starts_with(FILES_PREFIX) => {
                match &path[FILES_PREFIX.len()..] {
                    AUTH_FILE => Plain::Auth(request.headers),
                    name => match web::file(name) {
                        Some(file) => Plain::File(file, request.headers),
                        None => Plain::Answer(Reply::new(
                            StatusCode::NOT_FOUND,
                            format!("no such file {path:?}"),
                        )),
                    },
                }
            }
            // A browser asks for HTML; curl, scripts and load balancers do not, and
            // are told what this server is.
            (&Method::GET, path) if path.starts_with('/') && accepts_html(&request.headers) => {
                match crate::protocol::room_from_path(path) {
                    Ok(_) => Plain::File(&web::PAGE, request.headers),
                    Err(reason) => Plain::Answer(Reply::new(StatusCode::BAD_REQUEST, reason)),
                }
            }
            _ => {
                return Err(Reply::new(
                    StatusCode::UPGRADE_REQUIRED,
                    "this is a WebSocket chat server: connect with a WebSocket client such as `cargo run --bin client`",
                ));
            }
        };
        Route::Plain(plain)
    };
    match (listener, route) {
        (Listener::Metrics, Route::Plain(Plain::Metrics)) => Ok(Route::Plain(Plain::Metrics)),
        (Listener::Metrics, _) => Err(metrics_only()),
        (_, route) => Ok(route),
    }
}

/// The answer on the `--metrics-listen` address to anything but `/metrics`.
pub(crate) fn metrics_only() -> Reply {
    Reply::new(StatusCode::NOT_FOUND, "only /metrics is served here")
}

/// The answer to a plain request from `ip`.
pub(crate) fn answer(plain: Plain, shared: &Shared, ip: IpAddr) -> Reply {
    match plain {
        Plain::Health => health(shared),
        Plain::Metrics => Reply::typed(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            shared.render_metrics(),
        ),
        Plain::File(file, headers) => web::serve(file, &headers),
        // With a signed token, the name it gives: the page joins with it.
        Plain::Auth(headers) => match admit(&headers, ip, shared) {
            Ok(None) => Reply::empty(StatusCode::NO_CONTENT),
            Ok(Some(identity)) => Reply::json(
                StatusCode::OK,
                serde_json::json!({ "name": identity.name }).to_string(),
            ),
            Err(refusal) => refusal,
        },
        Plain::Answer(reply) => reply,
    }
}

/// The health check's answer, as JSON.
#[derive(Debug, Serialize)]
struct Health {
    /// `ok`, or `degraded` when Redis does not answer (chat goes on locally) or the
    /// data directory cannot be written (lines are held).
    status: &'static str,
    /// The open connections, not counting the health check's own.
    connections: usize,
    /// Where the rooms' logs are: `memory`, `disk` or `redis`.
    store: &'static str,
    /// With Redis: `up` or `down`.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<&'static str>,
    /// With Redis: what it keeps across its own restart, as last read (`none`,
    /// `aof`, `rdb`, `aof+rdb`, `unknown`).
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_persistence: Option<&'static str>,
    /// With a data directory: `ok`, or `failing` while it cannot be written.
    #[serde(skip_serializing_if = "Option::is_none")]
    disk: Option<&'static str>,
}

/// The health check's answer: the open connections, not counting itself, where
/// the logs are, whether Redis answers (and what it keeps) or the data directory
/// takes writes.
fn health(shared: &Shared) -> Reply {
    let (store, up) = shared.hub.store_health();
    let health = Health {
        status: if up == Some(false) { "degraded" } else { "ok" },
        connections: shared.open_connections().saturating_sub(1),
        store: store.name(),
        redis: up
            .filter(|_| store == StoreKind::Redis)
            .map(|up| if up { "up" } else { "down" }),
        redis_persistence: shared.hub.store_persistence(),
        disk: up
            .filter(|_| store == StoreKind::Disk)
            .map(|up| if up { "ok" } else { "failing" }),
    };
    // Cannot fail: a struct of strings and a number.
    let body = serde_json::to_string(&health).expect("the health check serializes");
    Reply::json(StatusCode::OK, body)
}

/// Whether `Accept` names `text/html` (what browsers send for a page).
fn accepts_html(headers: &http::HeaderMap) -> bool {
    handshake::list(headers, http::header::ACCEPT)
        .filter_map(|range| range.split(';').next())
        .any(|media| media.trim().eq_ignore_ascii_case("text/html"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::ServerConfig;
    use crate::hub::Hub;
    use crate::metrics::Metrics;

    /// The request `GET path` with `headers`, as read.
    fn request(path: &str, headers: &[(&'static str, &str)]) -> Request {
        let mut map = http::HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, value.parse().expect("a header value"));
        }
        Request {
            method: Method::GET,
            target: path.to_owned(),
            headers: map,
            rest: Vec::new(),
        }
    }

    /// Where `GET path` with `headers` goes on the chat port: the plain route, or
    /// the refusal's status.
    fn plain(path: &str, headers: &[(&'static str, &str)]) -> Result<Plain, u16> {
        match route(request(path, headers), Listener::Chat) {
            Ok(Route::Plain(plain)) => Ok(plain),
            Ok(Route::Chat(_) | Route::Publish(_)) => panic!("{path} is a plain GET"),
            Err(reply) => Err(reply.status.as_u16()),
        }
    }

    /// The answer to `GET path` with `headers` on the chat port of a server with
    /// `config`.
    fn get(config: ServerConfig, path: &str, headers: &[(&'static str, &str)]) -> Reply {
        let shared = Shared::new(
            config.clone(),
            Arc::new(Hub::new(
                &config,
                Arc::new(crate::store::MemoryStore::for_config(&config)),
            )),
            Arc::new(Metrics::new()),
        );
        match route(request(path, headers), Listener::Chat) {
            Ok(Route::Plain(plain)) => answer(plain, &shared, IpAddr::from([127, 0, 0, 1])),
            Ok(Route::Chat(_) | Route::Publish(_)) => panic!("{path} is a plain GET"),
            Err(reply) => reply,
        }
    }

    const CHROME: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";

    #[test]
    fn a_post_is_for_the_publish_api_alone() {
        let post = |path: &str, headers: &[(&'static str, &str)]| Request {
            method: Method::POST,
            rest: b"hi".to_vec(),
            ..request(path, headers)
        };
        let Ok(Route::Publish(publish)) =
            route(post("/_/rooms/rust/messages", &[]), Listener::Chat)
        else {
            panic!("not routed to the publish API");
        };
        assert_eq!(
            (publish.room.as_str(), publish.rest.as_slice()),
            ("rust", &b"hi"[..])
        );
        let upgrade = [
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        for refused in [post("/rust", &[]), post("/", &upgrade)] {
            let Err(reply) = route(refused, Listener::Chat) else {
                panic!("routed");
            };
            assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(
                reply.body,
                "POST is for /_/rooms/NAME/messages; use GET to open a WebSocket"
            );
        }
        assert!(matches!(plain("/_/rooms/rust/messages", &[]), Err(405)));
        assert!(matches!(
            route(post("/_/rooms/rust/messages", &[]), Listener::Metrics),
            Err(reply) if reply.status == StatusCode::NOT_FOUND
        ));
    }

    #[test]
    fn plain_http_gets_426_with_a_reason() {
        let reply = get(ServerConfig::default(), "/", &[]);
        assert_eq!(reply.status, StatusCode::UPGRADE_REQUIRED);
        assert!(reply.body.starts_with("this is a WebSocket chat server"));
    }

    #[test]
    fn a_browser_asking_for_html_gets_the_page_and_others_keep_426() {
        let page = |path, accept| match plain(path, &[("accept", accept)]) {
            Ok(Plain::File(file, _)) => file.name,
            other => panic!("expected a file, got {other:?}"),
        };
        assert_eq!(page("/rust?x=1", CHROME), "");
        assert_eq!(page("/", "TEXT/HTML; q=1"), "");
        // The page's files, whatever the Accept.
        assert_eq!(page("/_/chat.js", "*/*"), "chat.js");
        for curl in ["*/*", "application/json", "text/htmlx"] {
            assert!(
                matches!(plain("/rust", &[("accept", curl)]), Err(426)),
                "{curl}"
            );
        }
        assert!(matches!(
            plain("/healthz", &[("accept", "text/html")]),
            Ok(Plain::Health)
        ));
    }

    #[test]
    fn every_room_path_gets_the_page_and_others_are_answered_400() {
        for path in ["/", "/rust", "/rust/"] {
            let reply = get(ServerConfig::default(), path, &[("accept", CHROME)]);
            assert_eq!(reply.status, StatusCode::OK, "{path}");
            assert_eq!(reply.body, web::PAGE.body);
        }
        for path in ["/a b", "/a/b"] {
            let Ok(Plain::Answer(reply)) = plain(path, &[("accept", "text/html")]) else {
                panic!("{path} not answered");
            };
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        }
        let reply = get(ServerConfig::default(), "/a b", &[("accept", "text/html")]);
        assert!(
            reply.body.starts_with("invalid room name \"a b\""),
            "{reply:?}"
        );
    }

    #[test]
    fn files_are_served_by_name_and_others_are_not_found() {
        let js = get(ServerConfig::default(), "/_/chat.js", &[]);
        assert_eq!(
            js.header("Content-Type"),
            Some("text/javascript; charset=utf-8")
        );
        let Ok(Plain::Answer(missing)) = plain("/_/chat.jsx", &[]) else {
            panic!("not answered");
        };
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(missing.body, "no such file \"/_/chat.jsx\"");
    }

    #[test]
    fn the_admission_check_answers_as_admit_decides() {
        assert_eq!(
            get(ServerConfig::default(), "/_/auth", &[]).status,
            StatusCode::NO_CONTENT
        );
        let guarded = || ServerConfig {
            token: Some(crate::Secret::new("s3cret")),
            ..ServerConfig::default()
        };
        assert_eq!(
            get(guarded(), "/_/auth", &[]).status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(guarded(), "/_/auth", &[("authorization", "Bearer s3cret")]).status,
            StatusCode::NO_CONTENT
        );
        // A signed token's holder is named: the page joins under that name.
        let secret = b"an HMAC secret of at least 32 bytes";
        let signed = ServerConfig {
            auth: Some(crate::auth::VerifyingKey::from_bytes(secret).expect("key")),
            ..ServerConfig::default()
        };
        let claims = crate::auth::Claims {
            sub: "alice".into(),
            exp: crate::auth::now_secs() + 60,
            rooms: vec!["*".into()],
            read_only: false,
            publish: false,
        };
        let key = crate::auth::SigningKey::from_bytes(secret).expect("key");
        let token = crate::auth::mint(&key, &claims).expect("token");
        let bearer = format!("Bearer {token}");
        let named = get(signed.clone(), "/_/auth", &[("authorization", &bearer)]);
        assert_eq!(
            (named.status, named.body.as_ref()),
            (StatusCode::OK, r#"{"name":"alice"}"#)
        );
        let missing = get(signed, "/_/auth", &[]);
        assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            missing.body,
            "missing token: send Authorization: Bearer TOKEN"
        );
    }

    #[test]
    fn the_health_check_is_json_with_the_other_connections() {
        let reply = get(ServerConfig::default(), "/healthz", &[]);
        assert_eq!(
            reply.body,
            "{\"status\":\"ok\",\"connections\":0,\"store\":\"memory\"}"
        );
        assert_eq!(reply.header("Content-Type"), Some("application/json"));
    }

    #[test]
    fn the_metrics_listener_serves_the_metrics_alone() {
        let on = |listener, path| match route(request(path, &[]), listener) {
            Ok(Route::Plain(Plain::Metrics)) => 200,
            Ok(other) => panic!("{path}: {other:?}"),
            Err(reply) => reply.status.as_u16(),
        };
        assert_eq!(on(Listener::Metrics, METRICS_PATH), 200);
        assert_eq!(on(Listener::Metrics, HEALTH_PATH), 404);
        assert_eq!(on(Listener::Chat, METRICS_PATH), 200);
        assert_eq!(on(Listener::ChatWithoutMetrics, METRICS_PATH), 404);
    }
}

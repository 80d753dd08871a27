//! The HTTP/1.1 upgrade to WebSocket, done by hand so that a reply is a proper
//! HTTP answer with a status and a one-line reason instead of a dropped connection.

use std::borrow::Cow;

use base64::{Engine, engine::general_purpose::STANDARD};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest request head accepted, in bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Most header lines accepted.
const MAX_HEADERS: usize = 32;

/// What the server needs to know of an upgrade request.
#[derive(Debug, Clone)]
pub(crate) struct UpgradeRequest {
    /// The request target's path, e.g. `/` or `/rust`.
    pub(crate) path: String,
    /// The request target's query string, without the `?`.
    pub(crate) query: Option<String>,
    /// The request headers.
    pub(crate) headers: http::HeaderMap,
    /// The `Sec-WebSocket-Accept` value that answers the client's key.
    accept_key: String,
}

impl UpgradeRequest {
    /// Whether the client offers `protocol` in `Sec-WebSocket-Protocol` (a list,
    /// possibly over several header lines).
    pub(crate) fn offers(&self, protocol: &str) -> bool {
        self.headers
            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|offered| offered.trim() == protocol)
    }
}

/// An HTTP answer instead of an upgrade: a refusal with a one-line reason, or the
/// answer to a plain request such as the health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The status code.
    pub(crate) status: StatusCode,
    /// The body's media type.
    content_type: &'static str,
    /// The body: one line saying why, or the health figures. A newline is added.
    pub(crate) body: Cow<'static, str>,
}

/// What a connection asked for.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A WebSocket upgrade.
    Upgrade(UpgradeRequest),
    /// `GET /healthz`, the health check.
    Health,
    /// `GET /metrics`, the Prometheus exposition.
    Metrics,
}

/// The path of the health check.
pub(crate) const HEALTH_PATH: &str = "/healthz";
/// The path of the metrics.
pub(crate) const METRICS_PATH: &str = "/metrics";

impl Reply {
    /// A plain-text reply with `status` and a one-line `reason`.
    pub(crate) fn new(status: StatusCode, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: reason.into(),
        }
    }

    /// A reply of media type `content_type` with `status` and `body`.
    pub(crate) fn typed(
        status: StatusCode,
        content_type: &'static str,
        body: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            content_type,
            body: body.into(),
        }
    }

    /// A JSON reply with `status` and `body`.
    pub(crate) fn json(status: StatusCode, body: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: body.into(),
        }
    }

    /// The whole HTTP response, head and body.
    fn to_response(&self) -> Vec<u8> {
        let extra = match self.status {
            StatusCode::UPGRADE_REQUIRED => "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            StatusCode::UNAUTHORIZED => "WWW-Authenticate: Bearer\r\n",
            _ => "",
        };
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n{extra}\r\n{}\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            self.content_type,
            self.body.len() + 1,
            self.body,
        )
        .into_bytes()
    }
}

/// Why a handshake did not produce a WebSocket.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The request was malformed or refused; the peer should be told.
    Refused(Reply),
    /// The connection itself failed (closed early, reset); there is nobody to tell.
    Io(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

/// Reads and checks the client's request: an upgrade, or the health check.
pub(crate) async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Incoming, Failure> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() >= MAX_REQUEST_HEAD {
            return Err(refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
            ));
        }
        let mut chunk = [0u8; 1024];
        let want = chunk.len().min(MAX_REQUEST_HEAD - buf.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(Failure::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(request) = parse(&buf)? {
            return Ok(request);
        }
    }
}

/// Answers the upgrade with `101 Switching Protocols`, naming `subprotocol` if the
/// session speaks one.
pub(crate) async fn accept<S: AsyncWrite + Unpin>(
    stream: &mut S,
    request: &UpgradeRequest,
    subprotocol: Option<&str>,
) -> std::io::Result<()> {
    let protocol = subprotocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{protocol}\r\n",
        request.accept_key
    );
    stream.write_all(response.as_bytes()).await?;
    stream.flush().await
}

/// Sends `reply` as an HTTP answer and closes our side of the connection.
pub(crate) async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    reply: &Reply,
) -> std::io::Result<()> {
    stream.write_all(&reply.to_response()).await?;
    stream.shutdown().await?;
    // Read what the peer still sends until it closes, so that closing with unread
    // data does not reset the connection before the answer is read.
    let mut sink = [0u8; 1024];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

fn refuse(status: StatusCode, reason: impl Into<Cow<'static, str>>) -> Failure {
    Failure::Refused(Reply::new(status, reason))
}

/// Parses a complete request head in `buf`, or `Ok(None)` if it is not complete yet.
fn parse(buf: &[u8]) -> Result<Option<Incoming>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header lines",
            ));
        }
        Err(e) => {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                format!("malformed HTTP request: {e}"),
            ));
        }
    };
    if req.method != Some("GET") {
        return Err(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET to open a WebSocket",
        ));
    }
    if req.version != Some(1) {
        return Err(refuse(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "WebSocket needs HTTP/1.1",
        ));
    }
    let mut map = http::HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) else {
            return Err(refuse(StatusCode::BAD_REQUEST, "malformed header"));
        };
        map.append(name, value);
    }
    let has_token = |name: http::HeaderName, token: &str| {
        map.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(http::header::UPGRADE, "websocket")
        || !has_token(http::header::CONNECTION, "upgrade")
    {
        match req.path.and_then(|p| p.split('?').next()) {
            Some(HEALTH_PATH) => return Ok(Some(Incoming::Health)),
            Some(METRICS_PATH) => return Ok(Some(Incoming::Metrics)),
            _ => {}
        }
        return Err(refuse(
            StatusCode::UPGRADE_REQUIRED,
            "this is a WebSocket chat server: connect with a WebSocket client such as `cargo run --bin client`",
        ));
    }
    if map
        .get(http::header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        return Err(refuse(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version: use 13",
        ));
    }
    let key = map
        .get(http::header::SEC_WEBSOCKET_KEY)
        .and_then(|k| k.to_str().ok())
        .filter(|k| STANDARD.decode(k).is_ok_and(|raw| raw.len() == 16))
        .ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                "missing or malformed Sec-WebSocket-Key",
            )
        })?;
    if len != buf.len() {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "data sent before the upgrade was answered",
        ));
    }
    let target = req.path.unwrap_or("/");
    if !target.starts_with('/') {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the request target must be a path",
        ));
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    Ok(Some(Incoming::Upgrade(UpgradeRequest {
        path: path.to_owned(),
        query,
        accept_key: crate::protocol::accept_key(key),
        headers: map,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &str) -> Result<Option<Incoming>, Failure> {
        parse(head.replace('\n', "\r\n").as_bytes())
    }

    fn status(result: Result<Option<Incoming>, Failure>) -> u16 {
        match result {
            Err(Failure::Refused(r)) => r.status.as_u16(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    const UPGRADE: &str = "GET /room?name=alice HTTP/1.1\nHost: x\nUpgrade: websocket\nConnection: keep-alive, Upgrade\nSec-WebSocket-Version: 13\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\n";

    #[test]
    fn accepts_a_valid_upgrade_with_the_rfc_accept_key() {
        let Ok(Some(Incoming::Upgrade(req))) = request(UPGRADE) else {
            panic!("not an upgrade");
        };
        // The example from RFC 6455 section 1.3.
        assert_eq!(req.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(req.path, "/room");
        assert_eq!(req.query.as_deref(), Some("name=alice"));
        assert!(!req.offers("broadcast-chat.v1"));
    }

    #[test]
    fn offered_subprotocols_are_read_from_every_header_line() {
        let head = UPGRADE.replace(
            "Sec-WebSocket-Version",
            "Sec-WebSocket-Protocol: chat, x.v2\nSec-WebSocket-Protocol: broadcast-chat.v1\nSec-WebSocket-Version",
        );
        let Ok(Some(Incoming::Upgrade(req))) = request(&head) else {
            panic!("not an upgrade");
        };
        assert!(req.offers("broadcast-chat.v1"));
        assert!(req.offers("x.v2"));
        assert!(!req.offers("broadcast-chat"));
    }

    #[test]
    fn incomplete_head_waits_for_more() {
        assert!(matches!(request("GET / HTTP/1.1\nHost: x\n"), Ok(None)));
    }

    #[test]
    fn plain_http_gets_426_with_a_reason() {
        assert_eq!(status(request("GET / HTTP/1.1\nHost: x\n\n")), 426);
    }

    #[test]
    fn health_check_is_answered_not_refused() {
        assert!(matches!(
            request("GET /healthz HTTP/1.1\nHost: x\n\n"),
            Ok(Some(Incoming::Health))
        ));
    }

    #[test]
    fn garbage_gets_400() {
        assert_eq!(
            status(parse(
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"
            )),
            400
        );
    }

    #[test]
    fn other_methods_get_405() {
        assert_eq!(status(request(&UPGRADE.replace("GET", "POST"))), 405);
    }

    #[test]
    fn wrong_version_or_key_is_refused() {
        assert_eq!(
            status(request(&UPGRADE.replace("Version: 13", "Version: 8"))),
            426
        );
        assert_eq!(
            status(request(
                &UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short")
            )),
            400
        );
    }

    #[test]
    fn reply_is_a_complete_http_response() {
        let text = String::from_utf8(
            Reply::new(StatusCode::FORBIDDEN, "origin not allowed").to_response(),
        )
        .expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
        assert!(text.contains("Content-Length: 19\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\norigin not allowed\n"), "{text}");
    }
}

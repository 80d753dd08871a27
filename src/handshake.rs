//! The HTTP/1.1 upgrade to WebSocket, done by hand so that a reply is a proper
//! HTTP answer with a status and a one-line reason instead of a dropped connection;
//! and the routing of the plain requests beside it: the health check, the metrics,
//! the web page.

use std::borrow::Cow;

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
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
        list(&self.headers, http::header::SEC_WEBSOCKET_PROTOCOL).any(|offered| offered == protocol)
    }
}

/// The entries of a comma-separated header (`Connection: keep-alive, Upgrade`),
/// over all its lines, trimmed; lines that are not text give none.
pub(crate) fn list(
    headers: &http::HeaderMap,
    name: http::HeaderName,
) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The tokens a request presents, in the order given: `Authorization: Bearer
/// <token>`, and every `Sec-WebSocket-Protocol` entry `bearer.<token in base64url>`
/// ([`crate::protocol::TOKEN_PROTOCOL_PREFIX`]), the way a browser sends it, since
/// it cannot set `Authorization` on a WebSocket. An entry that is not base64url
/// presents nothing.
pub(crate) fn presented_tokens(headers: &http::HeaderMap) -> impl Iterator<Item = Vec<u8>> + '_ {
    let bearer = headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .map(<[u8]>::to_vec);
    let offered = list(headers, http::header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|entry| entry.strip_prefix(crate::protocol::TOKEN_PROTOCOL_PREFIX))
        .filter_map(|encoded| URL_SAFE_NO_PAD.decode(encoded).ok());
    bearer.chain(offered)
}

/// An HTTP answer instead of an upgrade: a refusal with a one-line reason, or the
/// answer to a plain request such as the health check or the web page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The status code.
    pub(crate) status: StatusCode,
    /// The header lines other than `Content-Length` and `Connection`, in order.
    headers: Vec<(&'static str, Cow<'static, str>)>,
    /// The body: one line saying why, the health figures, or a file of the page.
    pub(crate) body: Cow<'static, str>,
    /// Whether a newline follows the body (one-line bodies); files are sent as they are.
    newline: bool,
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
    /// A plain GET for the web page (`Accept: text/html`) or one of its files
    /// (under [`FILES_PREFIX`]); `crate::web` answers it.
    Page(PageRequest),
}

/// A plain request for the web page or one of its files.
#[derive(Debug, Clone)]
pub(crate) struct PageRequest {
    /// The request target's path, e.g. `/rust` or `/_/chat.js`; the query is dropped.
    pub(crate) path: String,
    /// The request headers (`If-None-Match`, and the token and origin for the
    /// admission check).
    pub(crate) headers: http::HeaderMap,
}

/// The path of the health check.
pub(crate) const HEALTH_PATH: &str = "/healthz";
/// The path of the metrics.
pub(crate) const METRICS_PATH: &str = "/metrics";

/// Where the web page's own files are: a room's path has exactly one segment, so
/// `/_/chat.js` can never be a room.
pub(crate) const FILES_PREFIX: &str = "/_/";

/// The plain-text media type of one-line answers.
const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

impl Reply {
    /// A plain-text reply with `status` and a one-line `reason`.
    pub(crate) fn new(status: StatusCode, reason: impl Into<Cow<'static, str>>) -> Self {
        Self::with_body(status, TEXT_PLAIN, reason.into(), true)
    }

    /// A reply of media type `content_type` with `status` and `body`.
    pub(crate) fn typed(
        status: StatusCode,
        content_type: &'static str,
        body: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::with_body(status, content_type, body.into(), false)
    }

    /// A JSON reply with `status` and `body`.
    pub(crate) fn json(status: StatusCode, body: impl Into<Cow<'static, str>>) -> Self {
        Self::with_body(status, "application/json", body.into(), true)
    }

    /// `200 OK` with a file of `content_type`, sent as it is.
    pub(crate) fn file(content_type: &'static str, body: &'static str) -> Self {
        Self::with_body(StatusCode::OK, content_type, Cow::Borrowed(body), false)
    }

    /// A reply without a body, such as `204 No Content` or `304 Not Modified`.
    pub(crate) fn empty(status: StatusCode) -> Self {
        let mut reply = Self::with_body(status, TEXT_PLAIN, Cow::Borrowed(""), false);
        reply.headers.retain(|(name, _)| *name != "Content-Type");
        reply
    }

    fn with_body(
        status: StatusCode,
        content_type: &'static str,
        body: Cow<'static, str>,
        newline: bool,
    ) -> Self {
        let mut headers = vec![
            ("Content-Type", Cow::Borrowed(content_type)),
            ("Cache-Control", Cow::Borrowed("no-store")),
            ("X-Content-Type-Options", Cow::Borrowed("nosniff")),
        ];
        match status {
            StatusCode::UPGRADE_REQUIRED => headers.extend([
                ("Upgrade", Cow::Borrowed("websocket")),
                ("Sec-WebSocket-Version", Cow::Borrowed("13")),
            ]),
            StatusCode::UNAUTHORIZED => headers.push(("WWW-Authenticate", Cow::Borrowed("Bearer"))),
            _ => {}
        }
        Self {
            status,
            headers,
            body,
            newline,
        }
    }

    /// Sets the header `name` to `value`, in place of one of the same name.
    pub(crate) fn with_header(
        mut self,
        name: &'static str,
        value: impl Into<Cow<'static, str>>,
    ) -> Self {
        let value = value.into();
        match self
            .headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, old)) => *old = value,
            None => self.headers.push((name, value)),
        }
        self
    }

    /// The value of the header `name`, if the reply has it.
    #[cfg(test)]
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }

    /// The whole HTTP response, head and body.
    fn to_response(&self) -> Vec<u8> {
        use std::fmt::Write;
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or("")
        );
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let newline = if self.newline { "\n" } else { "" };
        // Answers that never have a body have no length either (RFC 9110, 8.6).
        if !matches!(
            self.status,
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
        ) {
            let _ = write!(
                head,
                "Content-Length: {}\r\n",
                self.body.len() + newline.len()
            );
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut response = head.into_bytes();
        response.extend_from_slice(self.body.as_bytes());
        response.extend_from_slice(newline.as_bytes());
        response
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

/// Reads and checks the client's request: an upgrade, or a plain request (the
/// health check, the metrics, the web page).
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
        list(&map, name).any(|t| t.eq_ignore_ascii_case(token))
    };
    if !has_token(http::header::UPGRADE, "websocket")
        || !has_token(http::header::CONNECTION, "upgrade")
    {
        let path = req.path.and_then(|p| p.split('?').next()).unwrap_or("/");
        match path {
            HEALTH_PATH => return Ok(Some(Incoming::Health)),
            METRICS_PATH => return Ok(Some(Incoming::Metrics)),
            _ => {}
        }
        // A browser asks for HTML; curl, scripts and load balancers do not, and keep
        // today's answer.
        if path.starts_with(FILES_PREFIX) || (path.starts_with('/') && accepts_html(&map)) {
            return Ok(Some(Incoming::Page(PageRequest {
                path: path.to_owned(),
                headers: map,
            })));
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

/// Whether `Accept` names `text/html` (what browsers send for a page).
fn accepts_html(headers: &http::HeaderMap) -> bool {
    list(headers, http::header::ACCEPT)
        .filter_map(|range| range.split(';').next())
        .any(|media| media.trim().eq_ignore_ascii_case("text/html"))
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
    fn a_header_list_spans_lines_and_is_trimmed() {
        let mut headers = http::HeaderMap::new();
        let name = http::header::CONNECTION;
        headers.append(
            name.clone(),
            http::HeaderValue::from_static("keep-alive , Upgrade"),
        );
        headers.append(name.clone(), http::HeaderValue::from_static("close"));
        headers.append(
            name.clone(),
            http::HeaderValue::from_bytes(b"caf\xe9").expect("a value"),
        );
        assert_eq!(
            list(&headers, name).collect::<Vec<_>>(),
            ["keep-alive", "Upgrade", "close"],
            "a line that is not text gives nothing"
        );
    }

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
    fn a_browser_asking_for_html_gets_the_page_and_others_keep_426() {
        let page = |head: &str| match request(head) {
            Ok(Some(Incoming::Page(page))) => page.path,
            other => panic!("expected the page, got {other:?}"),
        };
        let chrome = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert_eq!(
            page(&format!(
                "GET /rust?x=1 HTTP/1.1\nHost: x\nAccept: {chrome}\n\n"
            )),
            "/rust"
        );
        assert_eq!(
            page("GET / HTTP/1.1\nHost: x\nAccept: TEXT/HTML; q=1\n\n"),
            "/"
        );
        // The page's files, whatever the Accept; a bad room is the page's to answer.
        assert_eq!(page("GET /_/chat.js HTTP/1.1\nHost: x\n\n"), "/_/chat.js");
        assert_eq!(
            page("GET /a/b HTTP/1.1\nHost: x\nAccept: text/html\n\n"),
            "/a/b"
        );
        for curl in [
            "GET / HTTP/1.1\nHost: x\nAccept: */*\n\n",
            "GET /rust HTTP/1.1\nHost: x\nAccept: application/json\n\n",
            "GET /rust HTTP/1.1\nHost: x\nAccept: text/htmlx\n\n",
        ] {
            assert_eq!(status(request(curl)), 426, "{curl}");
        }
        assert!(matches!(
            request("GET /healthz HTTP/1.1\nHost: x\nAccept: text/html\n\n"),
            Ok(Some(Incoming::Health))
        ));
        // An upgrade stays an upgrade, whatever it accepts.
        assert!(matches!(
            request(&UPGRADE.replace("Host: x", "Host: x\nAccept: text/html")),
            Ok(Some(Incoming::Upgrade(_)))
        ));
    }

    #[test]
    fn tokens_come_as_a_bearer_header_or_a_subprotocol_entry() {
        let tokens = |head: &str| {
            let Ok(Some(Incoming::Upgrade(req))) = request(head) else {
                panic!("not an upgrade");
            };
            presented_tokens(&req.headers)
                .map(|t| String::from_utf8(t).expect("utf-8"))
                .collect::<Vec<_>>()
        };
        assert!(tokens(UPGRADE).is_empty());
        let with = |headers: &str| UPGRADE.replace("Host: x", &format!("Host: x\n{headers}"));
        assert_eq!(tokens(&with("Authorization: Bearer s3cret")), ["s3cret"]);
        // base64url of "open sesame/+", without padding.
        assert_eq!(
            tokens(&with(
                "Sec-WebSocket-Protocol: broadcast-chat.v1, bearer.b3BlbiBzZXNhbWUvKw"
            )),
            ["open sesame/+"]
        );
        // Padded, standard base64 or another scheme present nothing.
        assert!(
            tokens(&with(
                "Sec-WebSocket-Protocol: bearer.b3BlbiBzZXNhbWUvKw==, bearer.a+b/\nAuthorization: Basic czNjcmV0"
            ))
            .is_empty()
        );
    }

    #[test]
    fn files_go_as_they_are_and_bodiless_answers_have_no_length() {
        let text = String::from_utf8(
            Reply::file("text/css; charset=utf-8", "a{}")
                .with_header("Cache-Control", "no-cache")
                .with_header("ETag", "\"1\"")
                .to_response(),
        )
        .expect("utf-8");
        assert_eq!(
            text,
            "HTTP/1.1 200 OK\r\nContent-Type: text/css; charset=utf-8\r\nCache-Control: no-cache\r\n\
             X-Content-Type-Options: nosniff\r\nETag: \"1\"\r\nContent-Length: 3\r\n\
             Connection: close\r\n\r\na{}"
        );
        let text =
            String::from_utf8(Reply::empty(StatusCode::NOT_MODIFIED).to_response()).expect("utf-8");
        assert_eq!(
            text,
            "HTTP/1.1 304 Not Modified\r\nCache-Control: no-store\r\n\
             X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
        );
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

//! HTTP/1.1 by hand: reading a request head, the WebSocket upgrade (RFC 6455's
//! checks and the `101` answer), and sending a [`Reply`]. Which endpoint a request
//! is for is decided in `crate::route`.
//!
//! Hand-written rather than hyper because what the server speaks is small and
//! strict: one request per connection (`Connection: close`), a head of at most
//! 8 KiB and 32 lines, methods that some route serves, no chunked bodies, and a
//! refusal that is a proper HTTP answer with a one-line reason instead of a dropped
//! connection. `httparse` (hyper's own parser) reads the head; the rest is the
//! code below. Should the server need keep-alive, bodies of any size or HTTP/2,
//! hyper is the better tool.

mod reply;

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub(crate) use reply::Reply;

/// Largest request head accepted, in bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Most header lines accepted.
const MAX_HEADERS: usize = 32;

/// The methods some route serves; others are refused before anything else is
/// looked at. A route with another method (a `POST`) adds it here.
const METHODS: [http::Method; 2] = [http::Method::GET, http::Method::POST];

/// A request as read: its head, checked as far as every route needs (HTTP/1.1, a
/// method in [`METHODS`], well-formed headers), and what came after it.
#[derive(Debug)]
pub(crate) struct Request {
    /// The method, one of [`METHODS`].
    pub(crate) method: http::Method,
    /// The request target as sent, e.g. `/rust?name=alice`.
    pub(crate) target: String,
    /// The request headers.
    pub(crate) headers: http::HeaderMap,
    /// The bytes read after the head: the start of a body, or data sent too early.
    pub(crate) rest: Vec<u8>,
}

impl Request {
    /// The target's path, without the query: `/rust` for `/rust?name=alice`.
    pub(crate) fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// Whether the request asks for a WebSocket (`Upgrade: websocket` and
    /// `Connection: upgrade`).
    pub(crate) fn is_upgrade(&self) -> bool {
        let has_token = |name: http::HeaderName, token: &str| {
            list(&self.headers, name).any(|t| t.eq_ignore_ascii_case(token))
        };
        has_token(http::header::UPGRADE, "websocket")
            && has_token(http::header::CONNECTION, "upgrade")
    }
}

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
    /// Checks `request`, which asks for a WebSocket, as RFC 6455 says: version 13,
    /// a 16-byte key, nothing sent before the answer, a path as target.
    pub(crate) fn new(request: Request) -> Result<Self, Reply> {
        if request
            .headers
            .get(http::header::SEC_WEBSOCKET_VERSION)
            .map(|v| v.as_bytes())
            != Some(b"13")
        {
            return Err(Reply::new(
                StatusCode::UPGRADE_REQUIRED,
                "unsupported WebSocket version: use 13",
            ));
        }
        let bad_request = |reason| Reply::new(StatusCode::BAD_REQUEST, reason);
        let key = request
            .headers
            .get(http::header::SEC_WEBSOCKET_KEY)
            .and_then(|k| k.to_str().ok())
            .filter(|k| STANDARD.decode(k).is_ok_and(|raw| raw.len() == 16))
            .ok_or_else(|| bad_request("missing or malformed Sec-WebSocket-Key"))?;
        let accept_key = crate::protocol::accept_key(key);
        if !request.rest.is_empty() {
            return Err(bad_request("data sent before the upgrade was answered"));
        }
        let Request {
            target, headers, ..
        } = request;
        if !target.starts_with('/') {
            return Err(bad_request("the request target must be a path"));
        }
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
            None => (target, None),
        };
        Ok(Self {
            path,
            query,
            headers,
            accept_key,
        })
    }

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

/// Reads the client's request head and checks it as far as every route needs.
pub(crate) async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Request, Failure> {
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

fn refuse(status: StatusCode, reason: impl Into<std::borrow::Cow<'static, str>>) -> Failure {
    Failure::Refused(Reply::new(status, reason))
}

/// Parses a complete request head in `buf`, or `Ok(None)` if it is not complete yet.
fn parse(buf: &[u8]) -> Result<Option<Request>, Failure> {
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
    let Some(method) = METHODS.into_iter().find(|m| Some(m.as_str()) == req.method) else {
        return Err(refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET to open a WebSocket",
        ));
    };
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
    Ok(Some(Request {
        method,
        target: req.path.unwrap_or("/").to_owned(),
        headers: map,
        rest: buf[len..].to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &str) -> Result<Option<Request>, Failure> {
        parse(head.replace('\n', "\r\n").as_bytes())
    }

    /// The head parsed and checked as an upgrade.
    fn upgrade(head: &str) -> Result<UpgradeRequest, Reply> {
        match request(head) {
            Ok(Some(request)) => UpgradeRequest::new(request),
            Err(Failure::Refused(reply)) => Err(reply),
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn status(result: Result<Option<Request>, Failure>) -> u16 {
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
        let req = upgrade(UPGRADE).expect("an upgrade");
        // The example from RFC 6455 section 1.3.
        assert_eq!(req.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(req.path, "/room");
        assert_eq!(req.query.as_deref(), Some("name=alice"));
        assert!(!req.offers("broadcast-chat.v1"));
    }

    #[test]
    fn an_upgrade_needs_both_headers() {
        let is_upgrade = |head: &str| {
            request(head)
                .expect("valid")
                .expect("complete")
                .is_upgrade()
        };
        assert!(is_upgrade(UPGRADE));
        assert!(!is_upgrade(
            &UPGRADE.replace("keep-alive, Upgrade", "keep-alive")
        ));
        assert!(!is_upgrade(
            &UPGRADE.replace("Upgrade: websocket", "Upgrade: h2c")
        ));
        assert!(!is_upgrade("GET / HTTP/1.1\nHost: x\n\n"));
    }

    #[test]
    fn offered_subprotocols_are_read_from_every_header_line() {
        let head = UPGRADE.replace(
            "Sec-WebSocket-Version",
            "Sec-WebSocket-Protocol: chat, x.v2\nSec-WebSocket-Protocol: broadcast-chat.v1\nSec-WebSocket-Version",
        );
        let req = upgrade(&head).expect("an upgrade");
        assert!(req.offers("broadcast-chat.v1"));
        assert!(req.offers("x.v2"));
        assert!(!req.offers("broadcast-chat"));
    }

    #[test]
    fn incomplete_head_waits_for_more() {
        assert!(matches!(request("GET / HTTP/1.1\nHost: x\n"), Ok(None)));
    }

    #[test]
    fn tokens_come_as_a_bearer_header_or_a_subprotocol_entry() {
        let tokens = |head: &str| {
            let req = upgrade(head).expect("an upgrade");
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
        assert_eq!(status(request(&UPGRADE.replace("GET", "PUT"))), 405);
        assert_eq!(status(request(&UPGRADE.replace("GET", "DELETE"))), 405);
    }

    #[test]
    fn wrong_version_key_or_early_data_is_refused() {
        let status = |head: &str| upgrade(head).expect_err("refused").status.as_u16();
        assert_eq!(status(&UPGRADE.replace("Version: 13", "Version: 8")), 426);
        assert_eq!(
            status(&UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short")),
            400
        );
        assert_eq!(status(&format!("{UPGRADE}hello")), 400);
    }
}

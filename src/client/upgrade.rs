//! The WebSocket upgrade, by hand so that a refusal shows the server's status and reason.

use base64::{Engine, engine::general_purpose::STANDARD};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_websockets::{ClientBuilder, WebSocketStream};

use super::url::{host_header, request_target};
use crate::config::ClientConfig;
use crate::protocol::Format;
use crate::protocol::structured::SUBPROTOCOL;
use crate::{Error, Result, protocol};

/// Largest response head read from the server, in bytes.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;
/// Most of a refusal's body read for its reason, in bytes.
const MAX_REFUSAL_BODY: usize = 1024;
/// Most header lines accepted in the server's answer.
const MAX_RESPONSE_HEADERS: usize = 32;

/// Sends the upgrade request for `config` on `stream` (already connected, TLS done),
/// with `params` in the query and the structured subprotocol offered, and reads the
/// answer: a WebSocket on 101, [`Error::Unauthorized`] on 401, [`Error::Refused`]
/// with the server's reason otherwise. A server that chose no subprotocol (an older
/// one, or the classic exercise's) speaks [`Format::Classic`]. `url` names the
/// server in errors.
pub(super) async fn upgrade<S>(
    mut stream: S,
    config: &ClientConfig,
    params: &[(&str, String)],
    url: &str,
) -> Result<(WebSocketStream<S>, Format)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connect_error = |source| Error::Connect {
        url: url.to_owned(),
        source,
    };
    let authorization = match &config.token {
        Some(token) => {
            let value = format!("Bearer {}", token.expose());
            if http::HeaderValue::from_str(&value).is_err() {
                return Err(Error::InvalidToken);
            }
            Some(value)
        }
        None => None,
    };
    let key = STANDARD.encode(std::array::from_fn::<u8, 16, _>(|_| fastrand::u8(..)));
    let request = upgrade_request(
        &host_header(&config.url),
        &request_target(&config.url, params),
        &key,
        authorization.as_deref(),
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(connect_error)?;
    stream.flush().await.map_err(connect_error)?;

    let handshake_error = |e: tokio_websockets::upgrade::Error| Error::Handshake {
        url: url.to_owned(),
        source: tokio_websockets::Error::Upgrade(e),
    };
    let head = read_head(&mut stream).await.map_err(connect_error)?;
    let response = parse_response(&head).map_err(handshake_error)?;
    match response.status {
        101 => {
            if response.accept.as_deref() != Some(protocol::accept_key(&key).as_str()) {
                return Err(handshake_error(
                    tokio_websockets::upgrade::Error::WrongWebSocketAccept,
                ));
            }
            let format = match response.protocol.as_deref() {
                None => Format::Classic,
                Some(SUBPROTOCOL) => Format::Structured,
                Some(other) => {
                    return Err(Error::UnexpectedProtocol {
                        url: url.to_owned(),
                        protocol: other.to_owned(),
                    });
                }
            };
            // Nothing after the head has been read: frames the server sent right
            // after its answer are still in the stream for the WebSocket to read.
            Ok((ClientBuilder::new().take_over(stream), format))
        }
        401 => {
            let body = read_body(&mut stream, response.content_length).await;
            Err(Error::Unauthorized {
                sent: config.token.is_some(),
                // A `--token` server's reason says no more than the status.
                reason: refusal_reason(&body).filter(|r| r != protocol::REASON_WRONG_TOKEN),
            })
        }
        status => {
            let body = read_body(&mut stream, response.content_length).await;
            Err(Error::Refused {
                url: url.to_owned(),
                status,
                reason: refusal_reason(&body),
            })
        }
    }
}

/// The HTTP/1.1 upgrade request, head only.
fn upgrade_request(host: &str, target: &str, key: &str, authorization: Option<&str>) -> String {
    let authorization = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n{authorization}\r\n"
    )
}

/// Reads the response head up to and including the blank line, one byte at a time
/// so that nothing after it is consumed.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_RESPONSE_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the server's answer is too large (is it a broadcast-chat server?)",
            ));
        }
        head.push(stream.read_u8().await?);
    }
    Ok(head)
}

/// What the client needs of the server's answer to the upgrade request.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    accept: Option<String>,
    /// The subprotocol the server chose, if any.
    protocol: Option<String>,
    content_length: Option<usize>,
}

/// Parses a complete response head.
fn parse_response(head: &[u8]) -> Result<Response, tokio_websockets::upgrade::Error> {
    use tokio_websockets::upgrade::Error;
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head).map_err(Error::Parsing)? {
        httparse::Status::Complete(_) => {}
        httparse::Status::Partial => return Err(Error::Parsing(httparse::Error::Status)),
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    Ok(Response {
        status: response
            .code
            .ok_or(Error::Parsing(httparse::Error::Status))?,
        accept: header("sec-websocket-accept").map(str::to_owned),
        protocol: header("sec-websocket-protocol").map(str::to_owned),
        content_length: header("content-length").and_then(|v| v.parse().ok()),
    })
}

/// Reads a refusal's body: up to its `Content-Length`, or to the end of the
/// stream, at most [`MAX_REFUSAL_BODY`] bytes. A failure ends the body early.
async fn read_body<S: AsyncRead + Unpin>(stream: &mut S, length: Option<usize>) -> Vec<u8> {
    let limit = length.unwrap_or(MAX_REFUSAL_BODY).min(MAX_REFUSAL_BODY);
    let mut body = Vec::with_capacity(limit);
    let mut chunk = [0u8; 256];
    while body.len() < limit {
        let want = chunk.len().min(limit - body.len());
        match stream.read(&mut chunk[..want]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body
}

/// The first line of a refusal's body, if it says anything, with control
/// characters removed so that the server cannot send escape sequences to our
/// terminal.
fn refusal_reason(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or_default();
    let line: String = line.chars().filter(|c| !c.is_control()).collect();
    let line = line.trim();
    (!line.is_empty()).then(|| line.to_owned())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::timeout;

    use super::*;
    use crate::client::parse_url;

    #[test]
    fn refusal_reasons_are_one_clean_line() {
        assert_eq!(
            refusal_reason(b"origin not allowed\n"),
            Some("origin not allowed".into())
        );
        assert_eq!(
            refusal_reason(b"bad \x1b[2Jthing\r\nmore"),
            Some("bad [2Jthing".into())
        );
        assert_eq!(refusal_reason(b""), None);
        assert_eq!(refusal_reason(b" \n"), None);
    }

    #[test]
    fn refusals_show_the_servers_reason_or_a_hint() {
        let refused = |status, reason: Option<&str>| {
            Error::Refused {
                url: "ws://h".into(),
                status,
                reason: reason.map(Into::into),
            }
            .to_string()
        };
        assert_eq!(
            refused(400, Some("invalid name")),
            "cannot connect to ws://h: the server refused the upgrade with HTTP 400: invalid name"
        );
        assert!(
            refused(400, None)
                .ends_with("HTTP 400 (is it a broadcast-chat server, and is the path right?)")
        );
        assert!(refused(503, Some("too many")).ends_with("HTTP 503: too many"));
        assert!(refused(503, None).ends_with("HTTP 503 (the server is full; try again later)"));
    }

    /// A one-shot server on a random port that reads the request head, answers
    /// with `answer(key)`, and returns the request; and a TCP connection to it.
    async fn fake_server(
        answer: impl FnOnce(&str) -> Vec<u8> + Send + 'static,
    ) -> (
        ClientConfig,
        TcpStream,
        tokio::task::JoinHandle<(String, TcpStream)>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            let head =
                String::from_utf8(read_head(&mut tcp).await.expect("request")).expect("utf-8");
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .expect("a key")
                .to_owned();
            tcp.write_all(&answer(&key)).await.expect("answer");
            (head, tcp)
        });
        let config =
            ClientConfig::new(parse_url(&format!("ws://127.0.0.1:{port}/rust")).expect("url"));
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        (config, tcp, task)
    }

    /// Upgrades `tcp` as `config` says, with `name` in the query, under the test timeout.
    async fn upgrade_on(
        config: &ClientConfig,
        tcp: TcpStream,
    ) -> Result<WebSocketStream<TcpStream>> {
        upgrade_with(config, &[], tcp).await.map(|(ws, _)| ws)
    }

    /// Upgrades `tcp` with `params` in the query, under the test timeout.
    async fn upgrade_with(
        config: &ClientConfig,
        params: &[(&str, String)],
        tcp: TcpStream,
    ) -> Result<(WebSocketStream<TcpStream>, Format)> {
        timeout(
            Duration::from_secs(10),
            upgrade(tcp, config, params, "ws://test"),
        )
        .await
        .expect("an answer in time")
    }

    /// A 101 answer to `key`, with `extra` header lines.
    fn switching(key: &str, extra: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{extra}\r\n",
            protocol::accept_key(key)
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn the_structured_protocol_is_offered_and_either_answer_is_understood() {
        let (config, tcp, server) =
            fake_server(|key| switching(key, "Sec-WebSocket-Protocol: broadcast-chat.v1\r\n"))
                .await;
        let params = [("session", "s1".to_owned())];
        let (_ws, format) = upgrade_with(&config, &params, tcp).await.expect("upgrade");
        assert_eq!(format, Format::Structured);
        let (request, _tcp) = server.await.expect("server task");
        assert!(
            request.starts_with("GET /rust?session=s1 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("\r\nSec-WebSocket-Protocol: broadcast-chat.v1\r\n"),
            "{request}"
        );

        let (config, tcp, _server) = fake_server(|key| switching(key, "")).await;
        let (_ws, format) = upgrade_with(&config, &[], tcp).await.expect("upgrade");
        assert_eq!(
            format,
            Format::Classic,
            "a server that chose nothing is classic"
        );

        let (config, tcp, _server) =
            fake_server(|key| switching(key, "Sec-WebSocket-Protocol: mqtt\r\n")).await;
        let err = upgrade_with(&config, &[], tcp).await.expect_err("refused");
        assert_eq!(
            err.to_string(),
            "cannot connect to ws://test: the server chose the subprotocol \"mqtt\", which this client does not speak"
        );
    }

    #[tokio::test]
    async fn upgrade_sends_name_and_token_and_keeps_frames_after_the_answer() {
        let (mut config, tcp, server) = fake_server(|key| {
            let mut answer = switching(key, "");
            // A text frame "hi", sent in the same write as the head.
            answer.extend_from_slice(&[0x81, 2, b'h', b'i']);
            answer
        })
        .await;
        config.token = Some(crate::Secret::new("t0k"));
        let params = [("name", "alice".to_owned())];
        let (mut ws, _) = upgrade_with(&config, &params, tcp).await.expect("upgrade");
        let (request, _tcp) = server.await.expect("server task");
        assert!(
            request.starts_with("GET /rust?name=alice HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("\r\nAuthorization: Bearer t0k\r\n"),
            "{request}"
        );
        assert!(
            request.contains("\r\nSec-WebSocket-Version: 13\r\n"),
            "{request}"
        );
        let key = request
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .expect("key");
        assert_eq!(STANDARD.decode(key).expect("base64").len(), 16);
        let first = timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("in time");
        let first = first.expect("a frame").expect("no error");
        assert_eq!(first.as_text(), Some("hi"));
    }

    #[tokio::test]
    async fn a_wrong_accept_key_is_a_handshake_error() {
        let (config, tcp, _server) = fake_server(|_| {
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bogus\r\n\r\n".to_vec()
        })
        .await;
        let err = upgrade_on(&config, tcp).await.expect_err("refused");
        assert!(matches!(err, Error::Handshake { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_refusal_carries_the_servers_reason() {
        let body = "invalid name \"x y\": use 1 to 32 letters, digits, '-', '_' or '.'\n";
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (config, tcp, _server) = fake_server(move |_| answer.into_bytes()).await;
        let err = upgrade_on(&config, tcp).await.expect_err("refused");
        let Error::Refused {
            status: 400,
            reason: Some(reason),
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(reason, body.trim_end());
    }

    #[tokio::test]
    async fn a_refusal_without_a_body_keeps_the_hint_and_401_stays_its_own_error() {
        let (config, tcp, _server) = fake_server(|_| {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec()
        })
        .await;
        let err = upgrade_on(&config, tcp).await.expect_err("refused");
        assert!(
            matches!(
                err,
                Error::Refused {
                    status: 503,
                    reason: None,
                    ..
                }
            ),
            "{err:?}"
        );
        let (config, tcp, _server) =
            fake_server(|_| b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 3\r\n\r\nno\n".to_vec())
                .await;
        let err = upgrade_on(&config, tcp).await.expect_err("refused");
        assert!(
            matches!(err, Error::Unauthorized { sent: false, .. }),
            "{err:?}"
        );
    }
}

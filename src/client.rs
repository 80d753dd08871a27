//! The client: connect, then send input lines and print what the server sends,
//! both at once with `tokio::select!`.

use std::future::Future;
use std::io::BufRead;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_websockets::tls::MaybeTlsStream;
use tokio_websockets::{ClientBuilder, CloseCode, Message, WebSocketStream};

use crate::config::ClientConfig;
use crate::{Error, Result, protocol};

/// A connected chat socket, over TLS for `wss://`.
pub type Connection = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a chat session ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Our input ended (or we were asked to quit) and we closed with 1000.
    InputClosed,
    /// The server closed the connection with this code and reason.
    ServerClosed {
        /// The close code, if the server sent one.
        code: Option<u16>,
        /// The close reason, possibly empty.
        reason: String,
    },
}

/// Checks that `url` is a `ws://` or `wss://` URL with a host, as the client needs it.
pub fn parse_url(url: &str) -> Result<http::Uri> {
    let invalid = |reason| Error::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let uri: http::Uri = url.parse().map_err(|_| invalid("not a URL"))?;
    match uri.scheme_str() {
        Some("ws" | "wss") => {}
        Some(_) => return Err(invalid("the scheme must be ws:// or wss://")),
        None => return Err(invalid("missing scheme: write ws://host:port")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("missing host"));
    }
    Ok(uri)
}

/// `url` as people write it: `ws://host:port`, without the `/` that `Uri` adds.
pub fn display_url(url: &http::Uri) -> String {
    let text = url.to_string();
    match text.strip_suffix('/') {
        Some(bare) if url.path() == "/" && url.query().is_none() => bare.to_owned(),
        _ => text,
    }
}

/// Opens the TCP connection and upgrades it to a WebSocket, within the connect timeout.
pub async fn connect(config: &ClientConfig) -> Result<Connection> {
    let url = display_url(&config.url);
    match timeout(config.connect_timeout, connect_inner(config, &url)).await {
        Ok(result) => result,
        Err(_) => Err(Error::ConnectTimeout { url }),
    }
}

async fn connect_inner(config: &ClientConfig, url: &str) -> Result<Connection> {
    let uri = &config.url;
    // `Uri::host` keeps the brackets of an IPv6 literal; the resolver wants them off.
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let wss = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if wss { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port)).await.map_err(|source| {
        let source = if source.to_string().contains("lookup") {
            std::io::Error::new(std::io::ErrorKind::NotFound, source)
        } else {
            source
        };
        Error::Connect {
            url: url.to_owned(),
            source,
        }
    })?;
    let _ = tcp.set_nodelay(true);

    // The scheme alone decides: a wss:// URL is TLS or nothing, never plain text.
    let stream = if wss {
        let tls = match &config.tls {
            Some(tls) => tls.clone(),
            None => crate::tls::client_config(None)?,
        };
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|_| {
            Error::InvalidUrl {
                url: url.to_owned(),
                reason: "the host is not a valid TLS server name",
            }
        })?;
        let tls = TlsConnector::from(tls).connect(name, tcp).await;
        MaybeTlsStream::Rustls(tls.map_err(|e| tls_error(url, e))?)
    } else {
        MaybeTlsStream::Plain(tcp)
    };

    let mut builder = ClientBuilder::from_uri(uri.clone());
    if let Some(token) = &config.token {
        let value = http::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| Error::InvalidToken)?;
        builder = builder
            .add_header(http::header::AUTHORIZATION, value)
            .map_err(|source| Error::Handshake {
                url: url.to_owned(),
                source,
            })?;
    }
    let (ws, _response) = builder.connect_on(stream).await.map_err(|e| {
        use tokio_websockets::upgrade::Error::DidNotSwitchProtocols;
        match e {
            tokio_websockets::Error::Upgrade(DidNotSwitchProtocols(401)) => Error::Unauthorized {
                sent: config.token.is_some(),
            },
            tokio_websockets::Error::Upgrade(DidNotSwitchProtocols(status)) => Error::Refused {
                url: url.to_owned(),
                status,
            },
            tokio_websockets::Error::Io(source) => Error::Connect {
                url: url.to_owned(),
                source,
            },
            source => Error::Handshake {
                url: url.to_owned(),
                source,
            },
        }
    })?;
    Ok(ws)
}

/// One line for a failed TLS handshake, with a hint at the likely cause.
fn tls_error(url: &str, e: std::io::Error) -> Error {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return Error::Connect {
            url: url.to_owned(),
            source: e,
        };
    };
    let hint = match tls {
        rustls::Error::InvalidCertificate(_) => {
            " (pass --ca FILE to trust a private CA or a self-signed certificate)"
        }
        rustls::Error::InvalidMessage(_) => " (is the server serving TLS? try ws://)",
        _ => "",
    };
    Error::Tls {
        url: url.to_owned(),
        reason: format!("{tls}{hint}"),
    }
}

/// Sends every line from `input` and writes every text message received to
/// `output` as `From server: {text}`, until the input ends, `quit` completes, or
/// the server closes.
pub async fn run<W>(
    mut ws: Connection,
    config: &ClientConfig,
    mut input: mpsc::Receiver<String>,
    mut output: W,
    quit: impl Future<Output = ()>,
) -> Result<Ending>
where
    W: AsyncWrite + Unpin,
{
    let url = display_url(&config.url);
    let lost = |source| Error::ConnectionLost {
        url: url.clone(),
        source,
    };
    tokio::pin!(quit);
    loop {
        tokio::select! {
            line = input.recv() => match line {
                Some(line) if line.is_empty() => {}
                Some(line) => ws.send(Message::text(line)).await.map_err(lost)?,
                None => break,
            },
            () = &mut quit => break,
            message = ws.next() => match message {
                Some(Ok(message)) => {
                    if let Some(ending) = show(&message, &mut output).await? {
                        // Reading on sends the library's answer to the close frame.
                        let _ = timeout(config.close_timeout, async { while ws.next().await.is_some() {} }).await;
                        return Ok(ending);
                    }
                }
                Some(Err(e)) => return Err(lost(e)),
                None => return Err(lost(tokio_websockets::Error::Io(std::io::ErrorKind::UnexpectedEof.into()))),
            },
        }
    }

    // Our side is done: close with 1000 and print what arrives until the server answers.
    ws.send(Message::close(
        Some(CloseCode::NORMAL_CLOSURE),
        protocol::REASON_BYE,
    ))
    .await
    .map_err(lost)?;
    let drain = async {
        while let Some(Ok(message)) = ws.next().await {
            show(&message, &mut output).await?;
        }
        Ok::<_, Error>(())
    };
    if let Ok(result) = timeout(config.close_timeout, drain).await {
        result?;
    }
    Ok(Ending::InputClosed)
}

/// Prints a text message; returns the ending if `message` is a close frame.
async fn show<W: AsyncWrite + Unpin>(message: &Message, output: &mut W) -> Result<Option<Ending>> {
    if let Some(text) = message.as_text() {
        let line = format!("From server: {text}\n");
        output
            .write_all(line.as_bytes())
            .await
            .map_err(Error::Output)?;
        output.flush().await.map_err(Error::Output)?;
    } else if let Some((code, reason)) = message.as_close() {
        let code = u16::from(code);
        // 1005 stands for "no code", which never travels on the wire.
        let code = (code != 1005).then_some(code);
        return Ok(Some(Ending::ServerClosed {
            code,
            reason: reason.to_owned(),
        }));
    }
    Ok(None)
}

/// Reads standard input line by line on a thread of its own, so that nothing keeps
/// the process alive once the chat ends (tokio's `stdin()` reads on a blocking
/// thread that the runtime would wait for). Invalid UTF-8 is replaced, not fatal.
pub fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match stdin.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf);
            let line = line.trim_end_matches(['\n', '\r']).to_owned();
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

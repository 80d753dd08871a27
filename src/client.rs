//! The client: connect (doing the HTTP upgrade itself, to report refusals), then
//! send input lines and print what the server sends, both at once; reconnect, the
//! interactive terminal, its commands and colours.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fmt;
use std::future::Future;
use std::io::{BufRead, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use futures_util::{SinkExt, StreamExt};
use rustyline_async::{Readline, ReadlineError, ReadlineEvent, SharedWriter};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
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
    let connect_error = |source: std::io::Error| Error::Connect {
        url: url.to_owned(),
        source,
    };
    let tcp = TcpStream::connect((host, port)).await.map_err(|source| {
        if source.to_string().contains("lookup") {
            connect_error(std::io::Error::new(std::io::ErrorKind::NotFound, source))
        } else {
            connect_error(source)
        }
    })?;
    let _ = tcp.set_nodelay(true);

    // The scheme alone decides: a wss:// URL is TLS or nothing, never plain text.
    let mut stream = if wss {
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
        &host_header(uri),
        &request_target(uri, config.name.as_deref()),
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
            // Nothing after the head has been read: frames the server sent right
            // after its answer are still in the stream for the WebSocket to read.
            Ok(ClientBuilder::new().take_over(stream))
        }
        401 => Err(Error::Unauthorized {
            sent: config.token.is_some(),
        }),
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

/// Largest response head read from the server, in bytes.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;
/// Most of a refusal's body read for its reason, in bytes.
const MAX_REFUSAL_BODY: usize = 1024;
/// Most header lines accepted in the server's answer.
const MAX_RESPONSE_HEADERS: usize = 32;

/// The `Host` header for `uri`: its authority without any user information.
fn host_header(uri: &http::Uri) -> String {
    let authority = uri.authority().map_or("", http::uri::Authority::as_str);
    authority.rsplit('@').next().unwrap_or(authority).to_owned()
}

/// The request target for `uri`: its path and query, with `name=NAME` added (and
/// any `name` already in the query replaced) when a name is given.
pub fn request_target(uri: &http::Uri, name: Option<&str>) -> String {
    let path = match uri.path() {
        "" => "/",
        path => path,
    };
    let mut params: Vec<String> = uri
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter(|pair| !pair.is_empty())
        .filter(|pair| name.is_none() || pair.split('=').next() != Some(protocol::NAME_PARAM))
        .map(str::to_owned)
        .collect();
    if let Some(name) = name {
        params.push(format!("{}={name}", protocol::NAME_PARAM));
    }
    if params.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", params.join("&"))
    }
}

/// The HTTP/1.1 upgrade request, head only.
fn upgrade_request(host: &str, target: &str, key: &str, authorization: Option<&str>) -> String {
    let authorization = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{authorization}\r\n"
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

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ending::InputClosed => f.write_str("the input ended"),
            Ending::ServerClosed { code, reason } => {
                f.write_str("the server closed the connection: ")?;
                match code {
                    Some(code) => write!(f, "{code}")?,
                    None => f.write_str("no code")?,
                }
                if !reason.is_empty() {
                    write!(f, " ({reason})")?;
                }
                Ok(())
            }
        }
    }
}

/// What [`chat`] reports while it reconnects, for the user to see.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The connection failed or was lost; the next attempt comes after `delay`.
    Retrying {
        /// Why, as one line.
        cause: String,
        /// How long until the next attempt.
        delay: Duration,
        /// Whether a connection had been up before (reconnecting, not retrying).
        again: bool,
    },
    /// An attempt after a failure succeeded.
    Connected {
        /// The server's URL, as people write it.
        url: String,
        /// Whether a connection had been up before.
        again: bool,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Retrying {
                cause,
                delay,
                again,
            } => {
                let what = if *again { "reconnecting" } else { "retrying" };
                write!(f, "{cause}; {what} in {:.1} s", delay.as_secs_f64())
            }
            Event::Connected { url, again: true } => write!(f, "reconnected to {url}"),
            Event::Connected { url, again: false } => write!(f, "connected to {url}"),
        }
    }
}

/// Exponential backoff with jitter for reconnecting: the wait starts at `min`,
/// doubles with each failed attempt up to `max`, and is spread by ±25% (within
/// `min`..=`max`) so that clients cut off together do not all return at once.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A backoff from `min` to `max`, seeded from the system.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self::with_rng(min, max, fastrand::Rng::new())
    }

    /// A backoff with a given random number generator, for tests.
    pub fn with_rng(min: Duration, max: Duration, rng: fastrand::Rng) -> Self {
        Self {
            min,
            max,
            attempt: 0,
            rng,
        }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self
            .min
            .saturating_mul(1 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        base.mul_f64(0.75 + self.rng.f64() / 2.0)
            .clamp(self.min, self.max)
    }

    /// Starts again from `min`, after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Whether `result` of a connection attempt or session is worth another attempt:
/// the server was not reachable, the connection was lost, the server was full, or
/// it closed with a code that says "come back later".
pub fn is_transient(result: &Result<Ending>) -> bool {
    match result {
        Ok(Ending::ServerClosed { code, .. }) => matches!(code, Some(1001 | 1011 | 1012 | 1013)),
        Ok(Ending::InputClosed) => false,
        Err(
            Error::Connect { .. } | Error::ConnectTimeout { .. } | Error::ConnectionLost { .. },
        ) => true,
        Err(Error::Refused { status, .. }) => matches!(status, 502..=504),
        Err(_) => false,
    }
}

/// The lines to send: a channel that outlives connections, and the lines taken
/// from it while no connection was up, which go first on the next one.
#[derive(Debug)]
pub struct Input {
    rx: mpsc::Receiver<String>,
    held: VecDeque<String>,
}

impl Input {
    /// Input from `rx`; it ends when every sender is dropped.
    pub fn new(rx: mpsc::Receiver<String>) -> Self {
        Self {
            rx,
            held: VecDeque::new(),
        }
    }

    /// The next line, held ones first. Cancel-safe.
    pub async fn recv(&mut self) -> Option<String> {
        match self.held.pop_front() {
            Some(line) => Some(line),
            None => self.rx.recv().await,
        }
    }

    /// Returns when the input has ended, holding the lines that come meanwhile.
    /// Cancel-safe.
    async fn closed(&mut self) {
        while let Some(line) = self.rx.recv().await {
            self.held.push_back(line);
        }
    }
}

/// Connects and chats ([`run`]) until the input ends, `quit` completes, or the
/// server closes. With `config.reconnect`, a failed attempt or a lost connection
/// is tried again after a [`Backoff`] wait, reported through `report`; the input
/// ending or `quit` completing during the wait ends the chat.
pub async fn chat<W>(
    config: &ClientConfig,
    input: mpsc::Receiver<String>,
    mut output: W,
    quit: impl Future<Output = ()>,
    mut report: impl FnMut(Event),
) -> Result<Ending>
where
    W: AsyncWrite + Unpin,
{
    let url = display_url(&config.url);
    let mut input = Input::new(input);
    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
    let mut was_up = false;
    let mut failed = false;
    tokio::pin!(quit);
    loop {
        let attempt = tokio::select! {
            attempt = connect(config) => attempt,
            () = &mut quit => return Ok(Ending::InputClosed),
        };
        let result = match attempt {
            Ok(ws) => {
                if failed {
                    report(Event::Connected {
                        url: url.clone(),
                        again: was_up,
                    });
                }
                was_up = true;
                backoff.reset();
                run(ws, config, &mut input, &mut output, quit.as_mut()).await
            }
            Err(e) => Err(e),
        };
        if !config.reconnect || !is_transient(&result) {
            return result;
        }
        let delay = backoff.next_delay();
        let cause = match &result {
            Ok(ending) => ending.to_string(),
            Err(e) => e.to_string(),
        };
        report(Event::Retrying {
            cause,
            delay,
            again: was_up,
        });
        failed = true;
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = &mut quit => return Ok(Ending::InputClosed),
            () = input.closed() => return Ok(Ending::InputClosed),
        }
    }
}

/// Sends every line from `input` and writes every text message received to
/// `output` as `From server: {text}` (see [`render`]), until the input ends,
/// `quit` completes, or the server closes.
pub async fn run<W>(
    mut ws: Connection,
    config: &ClientConfig,
    input: &mut Input,
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
                    if let Some(ending) = show(&message, &mut output, config.color).await? {
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
            show(&message, &mut output, config.color).await?;
        }
        Ok::<_, Error>(())
    };
    if let Ok(result) = timeout(config.close_timeout, drain).await {
        result?;
    }
    Ok(Ending::InputClosed)
}

/// Prints a text message; returns the ending if `message` is a close frame.
async fn show<W: AsyncWrite + Unpin>(
    message: &Message,
    output: &mut W,
    color: bool,
) -> Result<Option<Ending>> {
    if let Some(text) = message.as_text() {
        let mut line = render(text, color);
        line.push('\n');
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

/// Ends an ANSI colour.
const RESET: &str = "\x1b[0m";
/// The colour of notices (lines starting `* `): bold yellow.
const NOTICE_COLOR: &str = "\x1b[1;33m";
/// Colours for sender tags, chosen by the sender's name (or address).
const SENDER_COLORS: [&str; 5] = [
    "\x1b[1;32m",
    "\x1b[1;34m",
    "\x1b[1;35m",
    "\x1b[1;36m",
    "\x1b[1;31m",
];

/// The line printed for a received text: `From server: {text}`, with the sender
/// tag or the whole notice in colour when `color` is set. The text is otherwise
/// unchanged.
pub fn render(text: &str, color: bool) -> String {
    if !color {
        return format!("From server: {text}");
    }
    if text.starts_with("* ") {
        return format!("From server: {NOTICE_COLOR}{text}{RESET}");
    }
    match protocol::untag(text) {
        Some((sender, _)) => {
            let rest = &text[sender.len()..];
            // A sender keeps its colour across reconnections: the name decides, not the port.
            let who = sender.split('@').next().unwrap_or(sender);
            let hash = who.bytes().fold(0x811c_9dc5_u32, |h, b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            });
            let paint = SENDER_COLORS[hash as usize % SENDER_COLORS.len()];
            format!("From server: {paint}{sender}{RESET}{rest}")
        }
        None => format!("From server: {text}"),
    }
}

/// Whether to colour the output: only on a terminal, and not when the `NO_COLOR`
/// environment variable is set to anything but the empty string (no-color.org).
pub fn use_color(stdout_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stdout_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// What a line typed at the terminal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// Send this text.
    Send(&'a str),
    /// Close the connection and exit.
    Quit,
    /// Show the commands.
    Help,
    /// A `/word` that is no command: not sent, so that a typo stays private.
    Unknown(&'a str),
}

/// The commands, as `/help` shows them.
pub const HELP: &str = "commands:
  /who     ask the server who is in the room
  /help    show this list
  /quit    leave (or press Ctrl-D or Ctrl-C)
  //text   send /text as a message
";

/// Reads a line typed at the terminal: `/quit`, `/help`, `/who`, `//text` (sends
/// `/text`), another `/word` (unknown), or text to send as it is.
pub fn command(line: &str) -> Command<'_> {
    if line.starts_with("//") {
        return Command::Send(&line[1..]);
    }
    if !line.starts_with('/') {
        return Command::Send(line);
    }
    match line.split_whitespace().next().unwrap_or(line) {
        "/quit" => Command::Quit,
        "/help" => Command::Help,
        "/who" => Command::Send(protocol::WHO_COMMAND),
        word => Command::Unknown(word),
    }
}

/// The hint shown instead of sending an unknown `/word`.
pub fn unknown_command_hint(word: &str) -> String {
    format!(
        "unknown command {word} (not sent): type /help for the commands, or /{word} to send it as text"
    )
}

/// The interactive terminal: a prompt with line editing and history, above which
/// incoming lines are printed without disturbing the line being typed. A task of
/// its own reads keys and prints; [`Terminal::close`] stops it and gives the
/// terminal back in its normal mode.
pub struct Terminal {
    /// A writer to clone for each source of output; it prints above the prompt.
    writer: SharedWriter,
    /// Tells the task to print what is left and give the terminal back.
    stop_tx: oneshot::Sender<()>,
    /// The task; owns the `Readline`, whose drop leaves raw mode.
    task: JoinHandle<()>,
}

impl Terminal {
    /// Puts the terminal in raw mode, shows `prompt`, and returns the lines typed:
    /// commands are handled here ([`command`]), text to send goes into the channel,
    /// which closes on `/quit`, Ctrl-D or Ctrl-C.
    pub fn start(prompt: &str) -> std::io::Result<(Terminal, mpsc::Receiver<String>)> {
        let (mut readline, writer) = Readline::new(prompt.to_owned()).map_err(|e| match e {
            ReadlineError::IO(e) => e,
            other => std::io::Error::other(other),
        })?;
        let (lines_tx, lines_rx) = mpsc::channel(64);
        let (stop_tx, mut stop_rx) = oneshot::channel();
        let mut local = writer.clone();
        let task = tokio::spawn(async move {
            let mut lines_tx = Some(lines_tx);
            loop {
                let event = tokio::select! {
                    event = readline.readline() => event,
                    _ = &mut stop_rx => break,
                };
                // After the input ended, keep printing what arrives until told to stop.
                let Some(tx) = &lines_tx else { continue };
                let line = match event {
                    Ok(ReadlineEvent::Line(line)) => line,
                    Ok(ReadlineEvent::Eof | ReadlineEvent::Interrupted) | Err(_) => {
                        lines_tx = None;
                        continue;
                    }
                };
                if !line.trim().is_empty() {
                    readline.add_history_entry(line.clone());
                }
                // The writes below print above the prompt; they fail only when the
                // terminal task is gone, and then there is nobody to tell.
                match command(&line) {
                    Command::Send(text) => {
                        if tx.send(text.to_owned()).await.is_err() {
                            lines_tx = None;
                        }
                    }
                    Command::Quit => lines_tx = None,
                    Command::Help => {
                        let _ = local.write_all(HELP.as_bytes());
                    }
                    Command::Unknown(word) => {
                        let _ = writeln!(local, "{}", unknown_command_hint(word));
                    }
                }
            }
            let _ = readline.flush();
        });
        Ok((
            Terminal {
                writer,
                stop_tx,
                task,
            },
            lines_rx,
        ))
    }

    /// Output that is printed above the prompt, one line per write ending in `\n`.
    pub fn output(&self) -> TerminalOutput {
        TerminalOutput(self.writer.clone())
    }

    /// Prints `line` above the prompt (status lines that would go to stderr).
    pub fn print(&self, line: &str) {
        let mut writer = self.writer.clone();
        let _ = writer.write_all(format!("{line}\n").as_bytes());
    }

    /// Prints what is left, removes the prompt, and gives the terminal back.
    pub async fn close(self) {
        let _ = self.stop_tx.send(());
        let _ = self.task.await;
    }
}

/// Writes to a [`Terminal`] through tokio's `AsyncWrite`.
pub struct TerminalOutput(SharedWriter);

impl AsyncWrite for TerminalOutput {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        futures_util::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    // Each complete line is handed over as it is written; the writer's own flush
    // would hand over an empty chunk, which shows as a blank line.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn commands_are_parsed_and_text_is_sent_as_typed() {
        assert_eq!(command("hello"), Command::Send("hello"));
        assert_eq!(command(" /quit"), Command::Send(" /quit"));
        assert_eq!(command(""), Command::Send(""));
        assert_eq!(command("/quit"), Command::Quit);
        assert_eq!(command("/quit now"), Command::Quit);
        assert_eq!(command("/help"), Command::Help);
        assert_eq!(command("/who"), Command::Send(protocol::WHO_COMMAND));
        assert_eq!(command("/foo bar"), Command::Unknown("/foo"));
        assert_eq!(command("/"), Command::Unknown("/"));
        assert_eq!(command("/quitter"), Command::Unknown("/quitter"));
        assert_eq!(command("//x"), Command::Send("/x"));
        assert_eq!(command("//quit"), Command::Send("/quit"));
        assert!(unknown_command_hint("/foo").contains("//foo"));
    }

    #[test]
    fn colour_marks_only_the_tag_and_notices() {
        let tagged = r#"alice@127.0.0.1:5: "hi: \"x\"""#;
        assert_eq!(render(tagged, false), format!("From server: {tagged}"));
        let line = render(tagged, true);
        assert!(line.starts_with("From server: \x1b[1;"), "{line:?}");
        assert!(
            line.ends_with("alice@127.0.0.1:5\x1b[0m: \"hi: \\\"x\\\"\""),
            "{line:?}"
        );
        let stripped = line.replace(RESET, "").replace(&line[13..20], "");
        assert_eq!(stripped, format!("From server: {tagged}"));
        // The name picks the colour, so a reconnected sender keeps it.
        assert_eq!(
            render(r#"alice@127.0.0.1:6: "x""#, true)[..20],
            render(r#"alice@127.0.0.1:7: "y""#, true)[..20]
        );

        let notice = "* you missed 3 messages: your connection fell behind";
        assert_eq!(
            render(notice, true),
            format!("From server: {NOTICE_COLOR}{notice}{RESET}")
        );
        assert_eq!(
            render(protocol::WELCOME, true),
            format!("From server: {}", protocol::WELCOME)
        );
    }

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        assert!(use_color(true, None));
        assert!(use_color(true, Some(OsStr::new(""))));
        assert!(!use_color(true, Some(OsStr::new("1"))));
        assert!(!use_color(false, None));
    }

    #[test]
    fn the_name_goes_in_the_query_and_the_path_stays() {
        let uri = |s: &str| parse_url(s).expect("valid");
        assert_eq!(request_target(&uri("ws://h:2000"), None), "/");
        assert_eq!(
            request_target(&uri("ws://h:2000"), Some("alice")),
            "/?name=alice"
        );
        assert_eq!(
            request_target(&uri("ws://h:2000/rust"), Some("alice")),
            "/rust?name=alice"
        );
        assert_eq!(
            request_target(&uri("ws://h/rust?x=1"), Some("bob")),
            "/rust?x=1&name=bob"
        );
        assert_eq!(
            request_target(&uri("ws://h/?name=old&x=1"), Some("new")),
            "/?x=1&name=new"
        );
        assert_eq!(
            request_target(&uri("ws://h/r?name=kept"), None),
            "/r?name=kept"
        );
        assert_eq!(host_header(&uri("ws://user@[::1]:9/x")), "[::1]:9");
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(30));
        let mut backoff = Backoff::with_rng(min, max, fastrand::Rng::with_seed(7));
        let delays: Vec<_> = (0..12).map(|_| backoff.next_delay()).collect();
        for (i, delay) in delays.iter().enumerate() {
            let base = min.saturating_mul(1 << i).min(max);
            assert!(*delay >= base.mul_f64(0.75).max(min), "{i}: {delay:?}");
            assert!(*delay <= base.mul_f64(1.25).min(max), "{i}: {delay:?}");
        }
        assert!(delays[11] >= Duration::from_millis(22_500));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(625));
    }

    #[test]
    fn only_transient_endings_are_retried() {
        let url = String::from("ws://h");
        let closed = |code| {
            Ok(Ending::ServerClosed {
                code,
                reason: String::new(),
            })
        };
        assert!(is_transient(&closed(Some(1001))));
        assert!(is_transient(&closed(Some(1012))));
        assert!(!is_transient(&closed(Some(1000))));
        assert!(!is_transient(&closed(Some(1008))));
        assert!(!is_transient(&closed(None)));
        assert!(!is_transient(&Ok(Ending::InputClosed)));
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_transient(&Err(Error::Connect {
            url: url.clone(),
            source: io
        })));
        assert!(is_transient(&Err(Error::ConnectTimeout {
            url: url.clone()
        })));
        let refused = |status| {
            Err(Error::Refused {
                url: url.clone(),
                status,
                reason: None,
            })
        };
        assert!(is_transient(&refused(503)));
        assert!(!is_transient(&refused(400)));
        assert!(!is_transient(&Err(Error::Unauthorized { sent: true })));
    }

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
    /// with `answer(key)`, and returns the request.
    async fn fake_server(
        answer: impl FnOnce(&str) -> Vec<u8> + Send + 'static,
    ) -> (ClientConfig, tokio::task::JoinHandle<(String, TcpStream)>) {
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
        let mut config =
            ClientConfig::new(parse_url(&format!("ws://127.0.0.1:{port}/rust")).expect("url"));
        config.connect_timeout = Duration::from_secs(10);
        (config, task)
    }

    #[tokio::test]
    async fn upgrade_sends_name_and_token_and_keeps_frames_after_the_answer() {
        let (mut config, server) = fake_server(|key| {
            let mut answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                protocol::accept_key(key)
            )
            .into_bytes();
            // A text frame "hi", sent in the same write as the head.
            answer.extend_from_slice(&[0x81, 2, b'h', b'i']);
            answer
        })
        .await;
        config.name = Some("alice".into());
        config.token = Some(crate::Secret::new("t0k"));
        let mut ws = connect(&config).await.expect("upgrade");
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
        let (config, _server) = fake_server(|_| {
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bogus\r\n\r\n".to_vec()
        })
        .await;
        let err = connect(&config).await.expect_err("refused");
        assert!(matches!(err, Error::Handshake { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_refusal_carries_the_servers_reason() {
        let body = "invalid name \"x y\": use 1 to 32 letters, digits, '-', '_' or '.'\n";
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (config, _server) = fake_server(move |_| answer.into_bytes()).await;
        let err = connect(&config).await.expect_err("refused");
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
        let (config, _server) = fake_server(|_| {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec()
        })
        .await;
        let err = connect(&config).await.expect_err("refused");
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
        let (config, _server) =
            fake_server(|_| b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 3\r\n\r\nno\n".to_vec())
                .await;
        let err = connect(&config).await.expect_err("refused");
        assert!(
            matches!(err, Error::Unauthorized { sent: false }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn input_lines_taken_while_disconnected_come_first() {
        let (tx, rx) = mpsc::channel(4);
        let mut input = Input::new(rx);
        tx.send("one".into()).await.expect("send");
        tx.send("two".into()).await.expect("send");
        drop(tx);
        input.closed().await;
        assert_eq!(input.recv().await.as_deref(), Some("one"));
        assert_eq!(input.recv().await.as_deref(), Some("two"));
        assert_eq!(input.recv().await, None);
    }
}

//! The chat loop and the reconnect loop around it; how a chat ends and what it reports.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_websockets::{CloseCode, Message};

use super::backoff::Backoff;
use super::connect::{Connection, connect};
use super::render::render;
use super::session::{Session, Shown};
use super::upgrade::Protocol;
use super::url::display_url;
use crate::config::ClientConfig;
use crate::protocol::structured::ServerFrame;
use crate::{Error, Result, protocol};

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
    /// The server did not take a frame of ours, or sent one we cannot read.
    Server(String),
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
            Event::Server(text) => f.write_str(text),
            Event::Connected { url, again: true } => write!(f, "reconnected to {url}"),
            Event::Connected { url, again: false } => write!(f, "connected to {url}"),
        }
    }
}

/// Whether `result` of a connection attempt or session is worth another attempt:
/// the server was not reachable, the connection was lost, the server (or a proxy in
/// front of it: 502, 504) was unavailable, or it closed with a code that says "come
/// back later".
pub fn is_transient(result: &Result<Ending>) -> bool {
    match result {
        Ok(Ending::ServerClosed { code, .. }) => matches!(code, Some(1001 | 1011 | 1012 | 1013)),
        Ok(Ending::InputClosed) => false,
        Err(
            Error::Resolve { .. }
            | Error::Connect { .. }
            | Error::ConnectTimeout { .. }
            | Error::ConnectionLost { .. },
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

/// Connects and chats until the input ends, `quit` completes, or the server
/// closes. With `config.reconnect`, a failed attempt or a lost connection is tried
/// again after a [`Backoff`] wait, reported through `report`; the input ending or
/// `quit` completing during the wait ends the chat. A server that speaks the
/// structured protocol is resumed where we left off: nothing said meanwhile is
/// missed or shown twice, and the lines it had not acknowledged are sent again.
///
/// # Errors
/// Why the chat ended if not by the input, `quit` or the server's close: a failed
/// connection (after the retries, with `reconnect`), a lost one, or failed output.
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
    let mut session = Session::new();
    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
    let mut was_up = false;
    let mut failed = false;
    tokio::pin!(quit);
    loop {
        let params = session.params(config.name.as_deref());
        let attempt = tokio::select! {
            attempt = connect(config, &params) => attempt,
            () = &mut quit => return Ok(Ending::InputClosed),
        };
        let result = match attempt {
            Ok((ws, protocol)) => {
                if failed {
                    report(Event::Connected {
                        url: url.clone(),
                        again: was_up,
                    });
                }
                was_up = true;
                backoff.reset();
                let mut conversation = Conversation {
                    ws,
                    config,
                    output: &mut output,
                    session: (protocol == Protocol::Structured).then_some(&mut session),
                    report: &mut report,
                };
                conversation.run(&mut input, quit.as_mut()).await
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

/// One connection's chat: input lines out, frames in, printed as classic lines.
struct Conversation<'a, W, R> {
    ws: Connection,
    config: &'a ClientConfig,
    output: &'a mut W,
    /// Our side of the structured protocol; `None` with a classic server.
    session: Option<&'a mut Session>,
    report: &'a mut R,
}

impl<W, R> Conversation<'_, W, R>
where
    W: AsyncWrite + Unpin,
    R: FnMut(Event),
{
    /// Sends every line from `input` and prints every message received as
    /// `From server: {text}` (see [`render`]), until the input ends, `quit`
    /// completes, or the server closes.
    async fn run(&mut self, input: &mut Input, quit: impl Future<Output = ()>) -> Result<Ending> {
        tokio::pin!(quit);
        // Lines the server has not acknowledged go again, first: it shows each once.
        let unacknowledged = self
            .session
            .as_ref()
            .map(|s| s.unacknowledged())
            .unwrap_or_default();
        for frame in unacknowledged {
            self.ws
                .send(Message::text(frame))
                .await
                .map_err(|e| self.lost(e))?;
        }
        loop {
            tokio::select! {
                line = input.recv() => match line {
                    Some(line) if line.is_empty() => {}
                    Some(line) => {
                        let frame = match &mut self.session {
                            Some(session) => session.send(&line),
                            None => line,
                        };
                        self.ws.send(Message::text(frame)).await.map_err(|e| self.lost(e))?;
                    }
                    None => break,
                },
                () = &mut quit => break,
                message = self.ws.next() => {
                    if let Some(ending) = self.take(message).await? {
                        return Ok(ending);
                    }
                }
            }
        }

        // Our side is done. Wait (a little) until our last lines are acknowledged and
        // back, so that `echo hi | client` shows its own line; then close with 1000
        // and print what arrives until the server answers.
        let close_timeout = self.config.close_timeout;
        let settle = async {
            while self.session.as_ref().is_some_and(|s| !s.settled()) {
                let message = self.ws.next().await;
                if let Some(ending) = self.take(message).await? {
                    return Ok(Some(ending));
                }
            }
            Ok::<_, Error>(None)
        };
        if let Ok(settled) = timeout(close_timeout, settle).await
            && let Some(ending) = settled?
        {
            return Ok(ending);
        }
        self.ws
            .send(Message::close(
                Some(CloseCode::NORMAL_CLOSURE),
                protocol::REASON_BYE,
            ))
            .await
            .map_err(|e| self.lost(e))?;
        let drain = async {
            while let Some(Ok(message)) = self.ws.next().await {
                self.show(&message).await?;
            }
            Ok::<_, Error>(())
        };
        if let Ok(result) = timeout(close_timeout, drain).await {
            result?;
        }
        Ok(Ending::InputClosed)
    }

    /// Takes what the socket gave: prints a message, or returns how the chat ended
    /// if the server closed (after answering its close frame).
    async fn take(
        &mut self,
        message: Option<Result<Message, tokio_websockets::Error>>,
    ) -> Result<Option<Ending>> {
        let message = match message {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(self.lost(e)),
            None => {
                let eof = std::io::ErrorKind::UnexpectedEof.into();
                return Err(self.lost(tokio_websockets::Error::Io(eof)));
            }
        };
        let ending = self.show(&message).await?;
        if ending.is_some() {
            // Reading on sends the library's answer to the close frame.
            let ws = &mut self.ws;
            let _ = timeout(self.config.close_timeout, async {
                while ws.next().await.is_some() {}
            })
            .await;
        }
        Ok(ending)
    }

    /// Prints a text message (a structured frame as its classic line); returns the
    /// ending if `message` is a close frame.
    async fn show(&mut self, message: &Message) -> Result<Option<Ending>> {
        if let Some(text) = message.as_text() {
            let line = match &mut self.session {
                None => Shown::Line(text.to_owned()),
                Some(session) => match ServerFrame::parse(text) {
                    Ok(frame) => session.receive(frame),
                    Err(e) => Shown::Report(format!("the server sent a frame we cannot read: {e}")),
                },
            };
            match line {
                Shown::Line(line) => {
                    let mut line = render(&line, self.config.color);
                    line.push('\n');
                    self.output
                        .write_all(line.as_bytes())
                        .await
                        .map_err(Error::Output)?;
                    self.output.flush().await.map_err(Error::Output)?;
                }
                Shown::Report(text) => (self.report)(Event::Server(text)),
                Shown::Nothing => {}
            }
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

    /// The error for a connection that broke.
    fn lost(&self, source: tokio_websockets::Error) -> Error {
        Error::ConnectionLost {
            url: display_url(&self.config.url),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert!(is_transient(&Err(Error::Resolve {
            url: url.clone(),
            host: "h".into(),
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
        assert!(is_transient(&refused(502)));
        assert!(is_transient(&refused(503)));
        assert!(is_transient(&refused(504)));
        assert!(!is_transient(&refused(500)));
        assert!(!is_transient(&refused(400)));
        assert!(!is_transient(&Err(Error::Unauthorized {
            sent: true,
            reason: None
        })));
        // A token the server said has expired is not tried again.
        assert!(!is_transient(&closed(Some(crate::auth::CLOSE_EXPIRED))));
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

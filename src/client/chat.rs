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
use super::url::display_url;
use crate::config::ClientConfig;
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

/// Connects and chats ([`run`]) until the input ends, `quit` completes, or the
/// server closes. With `config.reconnect`, a failed attempt or a lost connection
/// is tried again after a [`Backoff`] wait, reported through `report`; the input
/// ending or `quit` completing during the wait ends the chat.
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
///
/// # Errors
/// [`Error::ConnectionLost`] when the connection breaks without a close frame,
/// [`Error::Output`] when `output` cannot be written.
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
        assert!(!is_transient(&Err(Error::Unauthorized { sent: true })));
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

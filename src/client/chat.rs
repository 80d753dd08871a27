//! The chat loop and the reconnect loop around it, bounded by `--count` and `--timeout`.

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_websockets::{CloseCode, Message};

use super::backoff::Backoff;
use super::connect::{Connection, connect};
use super::ending::{Ending, Event, is_transient};
use super::output;
use super::render::render;
use super::resume::{ResumeState, Shown};
use super::url::display_url;
use crate::config::ClientConfig;
use crate::protocol::Format;
use crate::protocol::structured::ServerFrame;
use crate::{Error, Result, protocol};

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

/// Connects and chats until the input ends, `quit` completes, the server closes,
/// `config.count` messages have come, or `config.timeout` passes. With
/// `config.reconnect`, a failed attempt or a lost connection is tried again after a
/// [`Backoff`] wait, reported through `report`; the input ending (unless messages
/// are still to be counted) or `quit` completing during the wait ends the chat. A
/// server that speaks the structured protocol is resumed where we left off: nothing
/// said meanwhile is missed or shown twice, and the lines it had not acknowledged
/// are sent again. When the input ends, the chat waits until every line is
/// acknowledged (and back, when our lines come back to us) before it closes.
///
/// # Errors
/// Why the chat ended if not as [`Ending`] says: a failed connection (after the
/// retries, with `reconnect`), a lost one, or failed output.
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
    let mut resume = ResumeState::new(config.start)?;
    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
    let mut tally = Tally {
        left: config.count,
        deadline: config.timeout.map(|after| (Instant::now() + after, after)),
    };
    let mut was_up = false;
    let mut failed = false;
    let mut told_classic = false;
    tokio::pin!(quit);
    loop {
        let params = resume.params(config.name.as_deref());
        let attempt = tokio::select! {
            attempt = connect(config, &params) => attempt,
            () = &mut quit => return Ok(Ending::InputClosed),
            ending = tally.expired(|| format!("a connection to {url}")) => return Ok(ending),
        };
        let result = match attempt {
            Ok((ws, format)) => {
                if failed {
                    report(Event::Connected {
                        url: url.clone(),
                        again: was_up,
                    });
                }
                if format == Format::Classic && !std::mem::replace(&mut told_classic, true) {
                    report(Event::Classic);
                }
                was_up = true;
                backoff.reset();
                let mut conversation = Conversation {
                    ws,
                    config,
                    output: &mut output,
                    resume: (format == Format::Structured).then_some(&mut resume),
                    report: &mut report,
                    tally: &mut tally,
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
            () = input.closed(), if tally.left.is_none() => return Ok(Ending::InputClosed),
            ending = tally.expired(|| format!("a connection to {url}")) => return Ok(ending),
        }
    }
}

/// What bounds the whole chat, across connections: the messages still to count
/// (`--count`) and the deadline (`--timeout`).
#[derive(Debug)]
struct Tally {
    /// Messages still to print before the chat ends; `None` without `--count`.
    left: Option<u64>,
    /// When the chat gives up, and the timeout that set it.
    deadline: Option<(Instant, Duration)>,
}

impl Tally {
    /// Whether the messages to count have all come.
    fn counted(&self) -> bool {
        self.left == Some(0)
    }

    /// Completes at the deadline, with the ending that says what was awaited
    /// (`waiting` says it); never without one. Cancel-safe.
    async fn expired(&self, waiting: impl FnOnce() -> String) -> Ending {
        let after = expiry(self.deadline).await;
        Ending::TimedOut {
            after,
            waiting: waiting(),
        }
    }
}

/// Completes at `deadline` with the timeout that set it; never without one.
/// Cancel-safe.
async fn expiry(deadline: Option<(Instant, Duration)>) -> Duration {
    match deadline {
        Some((at, after)) => {
            tokio::time::sleep_until(at).await;
            after
        }
        None => std::future::pending().await,
    }
}

/// One connection's chat: input lines out, frames in, printed as classic lines or
/// as JSON.
struct Conversation<'a, W, R> {
    ws: Connection,
    config: &'a ClientConfig,
    output: &'a mut W,
    /// Our side of the structured protocol; `None` with a classic server.
    resume: Option<&'a mut ResumeState>,
    report: &'a mut R,
    tally: &'a mut Tally,
}

impl<W, R> Conversation<'_, W, R>
where
    W: AsyncWrite + Unpin,
    R: FnMut(Event),
{
    /// Sends every line from `input` and prints every message received (see
    /// [`render`]), until the input ends and our lines are acknowledged, `quit`
    /// completes, the messages are counted, the deadline passes, or the server
    /// closes.
    async fn run(&mut self, input: &mut Input, quit: impl Future<Output = ()>) -> Result<Ending> {
        tokio::pin!(quit);
        // Lines the server has not acknowledged go again, first: it shows each once.
        let unacknowledged = self
            .resume
            .as_ref()
            .map(|s| s.unacknowledged())
            .unwrap_or_default();
        for frame in unacknowledged {
            self.ws
                .send(Message::text(frame))
                .await
                .map_err(|e| self.lost(e))?;
        }
        let mut reading = true;
        let mut quitting = false;
        while !self.tally.counted() {
            tokio::select! {
                line = input.recv(), if reading => match line {
                    Some(line) if line.is_empty() => {}
                    Some(line) => {
                        let frame = match &mut self.resume {
                            Some(resume) => resume.send(&line),
                            None => line,
                        };
                        self.ws.send(Message::text(frame)).await.map_err(|e| self.lost(e))?;
                    }
                    // Messages still to count keep the chat going.
                    None if self.tally.left.is_some() => reading = false,
                    None => break,
                },
                () = &mut quit => {
                    quitting = true;
                    break;
                }
                message = self.ws.next() => {
                    if let Some(ending) = self.take(message).await? {
                        return Ok(ending);
                    }
                }
                after = expiry(self.tally.deadline) => {
                    let waiting = self.awaited();
                    return self.close(Some(Ending::TimedOut { after, waiting })).await;
                }
            }
        }

        // Our side is done. Wait until our lines are acknowledged and back, so that
        // `echo hi | client` shows its own line, or until one is refused; then close
        // with 1000 and print what arrives until the server answers. Asked to quit,
        // the wait is short.
        let limit = match (quitting, self.tally.deadline) {
            (true, _) => Some(Instant::now() + self.config.close_timeout),
            (false, deadline) => deadline.map(|(at, _)| at),
        };
        let settle = async {
            while let Some(resume) = self.resume.as_deref() {
                if let Some(refusal) = resume.refusal() {
                    return Ok(Some(Ending::Refused(refusal.clone())));
                }
                if resume.settled() {
                    break;
                }
                let message = self.ws.next().await;
                if let Some(ending) = self.take(message).await? {
                    return Ok(Some(ending));
                }
            }
            Ok::<_, Error>(None)
        };
        let bounded = async {
            match limit {
                Some(limit) => tokio::time::timeout_at(limit, settle).await.ok(),
                None => Some(settle.await),
            }
        };
        // `None`: the wait was cut short, by its limit or by Ctrl-C.
        let settled = tokio::select! {
            settled = bounded => settled,
            () = &mut quit, if !quitting => {
                quitting = true;
                None
            }
        };
        let ending = match settled {
            Some(settled) => settled?,
            None if quitting => None,
            None => Some(Ending::TimedOut {
                after: self
                    .tally
                    .deadline
                    .map_or(Duration::ZERO, |(_, after)| after),
                waiting: self.awaited(),
            }),
        };
        if let Some(ending @ Ending::ServerClosed { .. }) = ending {
            return Ok(ending);
        }
        self.close(ending).await
    }

    /// What the chat is still waiting for, for a timeout's message.
    fn awaited(&self) -> String {
        if let Some(left) = self.tally.left.filter(|left| *left > 0) {
            let count = self.config.count.unwrap_or(left);
            let messages = if left == 1 { "message" } else { "messages" };
            return format!("{left} more {messages} (--count {count})");
        }
        match self.resume.as_ref().and_then(|r| r.first_unacknowledged()) {
            Some(line) => format!("the acknowledgement of {line}"),
            None => "our lines to come back".to_owned(),
        }
    }

    /// Closes with 1000 and prints what arrives until the server answers (within
    /// the close timeout); returns `ending`, or how the chat ended on our side.
    async fn close(&mut self, ending: Option<Ending>) -> Result<Ending> {
        let close_timeout = self.config.close_timeout;
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
        Ok(ending.unwrap_or(if self.tally.counted() {
            Ending::Counted
        } else {
            Ending::InputClosed
        }))
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

    /// Prints a text message: a structured frame as its classic line, or as it
    /// came with `--json`; returns the ending if `message` is a close frame. Once
    /// the messages to count are all printed, prints nothing more.
    async fn show(&mut self, message: &Message) -> Result<Option<Ending>> {
        if let Some(text) = message.as_text() {
            let (shown, is_message) = match &mut self.resume {
                None => (
                    Shown::Line(text.to_owned()),
                    protocol::classic::untag(text).is_some(),
                ),
                Some(resume) => match ServerFrame::parse(text) {
                    Ok(frame) => {
                        let is_message = matches!(frame, ServerFrame::Message(_));
                        (resume.receive(frame), is_message)
                    }
                    Err(e) => (
                        Shown::Report(format!("the server sent a frame we cannot read: {e}")),
                        false,
                    ),
                },
            };
            if self.tally.counted() {
                return Ok(None);
            }
            if is_message && let Some(left) = &mut self.tally.left {
                *left -= 1;
            }
            let line = match (self.config.json, shown) {
                (true, _) if self.resume.is_some() => Some(text.to_owned()),
                (true, _) => Some(output::classic_json(text)),
                (false, Shown::Line(line)) => Some(render(&line, self.config.color)),
                (false, Shown::Report(report)) => {
                    (self.report)(Event::Server(report));
                    None
                }
                (false, Shown::Nothing) => None,
            };
            if let Some(mut line) = line {
                line.push('\n');
                self.output
                    .write_all(line.as_bytes())
                    .await
                    .map_err(Error::Output)?;
                self.output.flush().await.map_err(Error::Output)?;
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

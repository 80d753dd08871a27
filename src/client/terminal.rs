//! The interactive terminal (a prompt, line editing, output above it), the piped
//! line reader, and `--send`'s lines.

use std::io::{BufRead, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use rustyline_async::{Readline, ReadlineError, ReadlineEvent, SharedWriter};
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::command::{Command, HELP, command, unknown_command_hint};

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
    ///
    /// # Errors
    /// The terminal's own error when it cannot be put in raw mode.
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

/// The given lines as input that ends after them (`--send`).
pub fn lines(lines: Vec<String>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(lines.len().max(1));
    for line in lines {
        // The channel holds them all: it was made as large.
        let _ = tx.try_send(line);
    }
    rx
}

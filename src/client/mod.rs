//! The chat client: connect, send input lines and print what arrives, reconnect, the terminal.
//!
//! It does the HTTP upgrade itself, to report refusals, and sends and prints at once.
//!
//! # Layout
//! - `url`: checking the URL, the request target and `Host` it gives.
//! - `connect`: TCP, then TLS for `wss://`, then the upgrade ([`connect()`]).
//! - `upgrade`: the HTTP upgrade request and the server's answer, refusals included.
//! - `backoff`: the wait between reconnection attempts ([`Backoff`]).
//! - `chat`: the chat loop and the reconnect loop around it ([`chat()`]), bounded
//!   by `--count` and `--timeout`.
//! - `ending`: how a chat ends ([`Ending`]) and its exit code, and what it reports.
//! - `output`: what `--json` prints for a classic server's line.
//! - `resume`: what the client keeps across connections with the structured
//!   protocol (`ResumeState`): its session id, its place in the room, the lines
//!   not yet acknowledged.
//! - `render`: how a received text is printed, and its colours.
//! - `command`: the commands typed at the terminal (`/quit`, `/help`, `/who`).
//! - `terminal`: the interactive terminal ([`Terminal`]) and the piped line reader
//!   ([`stdin_lines`]); the only part that knows about the user's screen.
//!
//! Data flows one way: input lines → [`chat()`] → socket → [`render()`] → output.

mod backoff;
mod chat;
mod command;
mod connect;
mod ending;
mod output;
mod render;
mod resume;
mod terminal;
mod upgrade;
mod url;

pub use backoff::Backoff;
pub use chat::{Input, chat};
pub use command::{Command, HELP, command, unknown_command_hint};
pub use connect::{Connection, connect};
pub use ending::{CLASSIC_PROMISE, Ending, Event, Refusal, is_transient};
pub use render::{render, use_color};
pub use resume::Start;
pub use terminal::{Terminal, TerminalOutput, lines, stdin_lines};
pub use url::{display_url, parse_url, request_target};

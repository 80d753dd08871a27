//! `client`: parse flags, pick the terminal or the plain line mode, chat, map the
//! ending to an exit code.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use broadcast_chat::cli::Tool;
use broadcast_chat::client::{self, Start, Terminal};
use broadcast_chat::config::parse_duration;
use broadcast_chat::protocol::Epoch;
use broadcast_chat::{ClientConfig, DEFAULT_URL, Secret, protocol, tls};
use clap::{CommandFactory, Parser};

/// A terminal client for the broadcast chat: sends each line of input, prints each
/// message received as `From server: ...`.
///
/// For scripts: --send, --listen, --json,
/// --count, --timeout, and exit codes 0 (done), 1 (error), 2 (usage), 3 (timed
/// out), 4 (a line refused).
#[derive(Debug, Parser)]
#[command(name = "client", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    tool: Option<Tool>,
    /// The server to connect to (ws:// or wss://).
    #[arg(long, env = "CHAT_URL", default_value = DEFAULT_URL, value_parser = parse_url)]
    url: http::Uri,
    /// Token for a server started with --token, sent as `Authorization: Bearer TOKEN`.
    #[arg(long, env = "CHAT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file of certificates to trust for wss:// instead of the web PKI roots and
    /// the system's store: a private CA, or the server's own (self-signed) certificate.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Your name in the chat (1 to 32 letters, digits, '-', '_' or '.'): the server
    /// tags your messages NAME@address.
    #[arg(long, env = "CHAT_NAME", value_parser = parse_name)]
    name: Option<String>,
    /// Keep trying when the server is not up or the connection is lost, waiting
    /// from 0.5 s up to 30 s between attempts.
    #[arg(long)]
    reconnect: bool,
    /// Print what the server sends as one JSON object per line (its frames as sent).
    #[arg(long)]
    json: bool,
    /// Send TEXT instead of reading standard input (repeatable); exit once every
    /// line is acknowledged.
    #[arg(long, value_name = "TEXT", conflicts_with = "listen")]
    send: Vec<String>,
    /// Send nothing: only print what arrives (standard input is not read).
    #[arg(long)]
    listen: bool,
    /// Exit 0 after printing N chat messages (notices do not count).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Exit 3 if not done this long after starting: connected, every line
    /// acknowledged, --count messages printed (e.g. 10s, 500ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Print the room's last N logged messages first.
    #[arg(long, value_name = "N", conflicts_with = "after")]
    history: Option<u64>,
    /// Print everything the room's log holds after OFFSET first (with --epoch).
    #[arg(long, value_name = "OFFSET", requires = "epoch")]
    after: Option<u64>,
    /// The room's epoch for --after (16 hex digits, from a welcome or message).
    #[arg(long, value_name = "EPOCH", requires = "after")]
    epoch: Option<Epoch>,
}

/// Validates the URL at parse time, so a bad one is a usage error (exit 2).
fn parse_url(url: &str) -> Result<http::Uri, String> {
    client::parse_url(url).map_err(|e| e.to_string())
}

/// Validates the name at parse time, so a bad one is a usage error (exit 2).
fn parse_name(name: &str) -> Result<String, String> {
    protocol::check_name(name).map(|()| name.to_owned())
}

impl Cli {
    /// Whether the prompt is wanted: people at a terminal, not a script's flags.
    fn interactive(&self) -> bool {
        !self.json && !self.listen && self.send.is_empty()
    }

    /// Whether a flag for scripts is given: then a classic server's fallback says
    /// on stderr what it cannot promise.
    fn scripted(&self) -> bool {
        !self.interactive()
            || self.count.is_some()
            || self.timeout.is_some()
            || self.history.is_some()
            || self.after.is_some()
    }

    fn config(&self) -> Result<ClientConfig, broadcast_chat::Error> {
        let mut config = ClientConfig::new(self.url.clone());
        config.token = self
            .token
            .clone()
            .filter(|t| !t.is_empty())
            .map(Secret::new);
        // Once here, not at every reconnection: reading the system's store takes a moment.
        if self.ca.is_some() || config.url.scheme_str() == Some("wss") {
            config.tls = Some(tls::client_config(self.ca.as_deref())?);
        }
        config.name = self.name.clone();
        config.reconnect = self.reconnect;
        config.color = !self.json
            && client::use_color(
                std::io::stdout().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            );
        config.json = self.json;
        config.count = self.count;
        config.timeout = self.timeout;
        config.start = match (self.history, self.epoch, self.after) {
            (Some(n), _, _) => Start::History(n),
            (_, Some(epoch), Some(after)) => Start::After(epoch, after),
            _ => Start::Live,
        };
        Ok(config)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(tool) = &cli.tool {
        return tool.run(Cli::command());
    }
    let config = match cli.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let quit = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    // The prompt needs a terminal on both sides; anything else gets plain lines.
    let terminal =
        if cli.interactive() && std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
            Terminal::start("> ").ok()
        } else {
            None
        };
    let scripted = cli.scripted();
    let wanted = |event: &client::Event| scripted || *event != client::Event::Classic;
    let ending = match terminal {
        Some((terminal, input)) => {
            let report = |event: client::Event| {
                if wanted(&event) {
                    terminal.print(&event.to_string());
                }
            };
            let ending = client::chat(&config, input, terminal.output(), quit, report).await;
            // Give the terminal back before printing how the chat ended.
            terminal.close().await;
            ending
        }
        None => {
            let report = |event: client::Event| {
                if wanted(&event) {
                    eprintln!("{event}");
                }
            };
            // --listen: an input that never ends, its sender kept until the chat is over.
            let (input, _listening) = match (cli.listen, cli.send.is_empty()) {
                (true, _) => {
                    let (tx, rx) = tokio::sync::mpsc::channel(1);
                    (rx, Some(tx))
                }
                (false, false) => (client::lines(cli.send.clone()), None),
                (false, true) => (client::stdin_lines(), None),
            };
            client::chat(&config, input, tokio::io::stdout(), quit, report).await
        }
    };
    match ending {
        Ok(ending) => {
            match (&ending, ending.exit_code()) {
                (client::Ending::ServerClosed { .. }, _) => eprintln!("{ending}"),
                (_, 0) => {}
                _ => eprintln!("error: {ending}"),
            }
            ExitCode::from(ending.exit_code())
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `client`: parse flags, pick the terminal or the plain line mode, chat, map the
//! ending to an exit code.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use broadcast_chat::client::{self, Ending, Terminal};
use broadcast_chat::{ClientConfig, DEFAULT_URL, Secret, protocol, tls};
use clap::Parser;

/// A terminal client for the broadcast chat: sends each line of input, prints each
/// message received as `From server: ...`.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
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
    fn config(self) -> Result<ClientConfig, broadcast_chat::Error> {
        let mut config = ClientConfig::new(self.url);
        config.token = self.token.filter(|t| !t.is_empty()).map(Secret::new);
        // Once here, not at every reconnection: reading the system's store takes a moment.
        if self.ca.is_some() || config.url.scheme_str() == Some("wss") {
            config.tls = Some(tls::client_config(self.ca.as_deref())?);
        }
        config.name = self.name;
        config.reconnect = self.reconnect;
        config.color = client::use_color(
            std::io::stdout().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        );
        Ok(config)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match Cli::parse().config() {
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
    let terminal = if std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        Terminal::start("> ").ok()
    } else {
        None
    };
    let ending = match terminal {
        Some((terminal, input)) => {
            let report = |event: client::Event| terminal.print(&event.to_string());
            let ending = client::chat(&config, input, terminal.output(), quit, report).await;
            // Give the terminal back before printing how the chat ended.
            terminal.close().await;
            ending
        }
        None => {
            let report = |event: client::Event| eprintln!("{event}");
            let input = client::stdin_lines();
            client::chat(&config, input, tokio::io::stdout(), quit, report).await
        }
    };
    match ending {
        Ok(Ending::InputClosed) => ExitCode::SUCCESS,
        Ok(ending @ Ending::ServerClosed { .. }) => {
            eprintln!("{ending}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

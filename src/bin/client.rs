//! `client`: parse flags, connect, chat between stdin and stdout, map the ending to
//! an exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use broadcast_chat::client::{self, Ending};
use broadcast_chat::{ClientConfig, DEFAULT_URL, Secret, tls};
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
    /// PEM file of CA certificates to trust for wss:// instead of the web PKI roots
    /// (for a private CA or a self-signed server certificate).
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

/// Validates the URL at parse time, so a bad one is a usage error (exit 2).
fn parse_url(url: &str) -> Result<http::Uri, String> {
    client::parse_url(url).map_err(|e| e.to_string())
}

impl Cli {
    fn config(self) -> Result<ClientConfig, broadcast_chat::Error> {
        let mut config = ClientConfig::new(self.url);
        config.token = self.token.filter(|t| !t.is_empty()).map(Secret::new);
        if let Some(ca) = &self.ca {
            config.tls = Some(tls::client_config(Some(ca))?);
        }
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
    let ws = match client::connect(&config).await {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let quit = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match client::run(
        ws,
        &config,
        client::stdin_lines(),
        tokio::io::stdout(),
        quit,
    )
    .await
    {
        Ok(Ending::InputClosed) => ExitCode::SUCCESS,
        Ok(Ending::ServerClosed { code, reason }) => {
            let code = code.map_or_else(|| "no code".to_owned(), |c| c.to_string());
            let reason = if reason.is_empty() {
                String::new()
            } else {
                format!(" ({reason})")
            };
            eprintln!("the server closed the connection: {code}{reason}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

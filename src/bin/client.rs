//! `client`: parse flags, connect, chat between stdin and stdout, map the ending to
//! an exit code.

use std::process::ExitCode;

use broadcast_chat::client::{self, Ending};
use broadcast_chat::{ClientConfig, DEFAULT_URL};
use clap::Parser;

/// A terminal client for the broadcast chat: sends each line of input, prints each
/// message received as `From server: ...`.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The server to connect to.
    #[arg(long, env = "CHAT_URL", default_value = DEFAULT_URL, value_parser = parse_url)]
    url: http::Uri,
}

/// Validates the URL at parse time, so a bad one is a usage error (exit 2).
fn parse_url(url: &str) -> Result<http::Uri, String> {
    client::parse_url(url).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = ClientConfig::new(cli.url);
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

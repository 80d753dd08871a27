//! `server`: parse flags, bind, print the readiness line, serve until Ctrl-C or SIGTERM.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use broadcast_chat::config::parse_duration;
use broadcast_chat::{DEFAULT_HOST, DEFAULT_PORT, ServerConfig, server};
use clap::Parser;
use clap::builder::TypedValueParser;
use tokio::net::TcpListener;

/// A WebSocket broadcast chat server: every text message goes to every client.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, value_name = "ADDRESS", env = "CHAT_HOST", default_value = DEFAULT_HOST)]
    host: String,
    /// Port to listen on; 0 picks a free one (the readiness line tells which).
    #[arg(long, env = "CHAT_PORT", default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Broadcast channel capacity, in messages; a client further behind gets a notice.
    #[arg(long, value_name = "MESSAGES", default_value_t = ServerConfig::default().buffer, value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|n| n as usize))]
    buffer: usize,
    /// Largest message accepted, in bytes; bigger ones close the sender with 1009.
    #[arg(long, value_name = "BYTES", default_value_t = ServerConfig::default().max_message_size)]
    max_message_size: usize,
    /// Time a client has to complete the WebSocket handshake.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    handshake_timeout: Duration,
    /// Time a write to a client may take before the client is dropped as stuck.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration)]
    write_timeout: Duration,
    /// A quiet client is pinged after this long, and dropped if still silent after as long again.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    ping_interval: Duration,
    /// Time allowed for close handshakes, at shutdown and when closing one client.
    #[arg(long, default_value = "2s", value_name = "DURATION", value_parser = parse_duration)]
    close_timeout: Duration,
}

impl Cli {
    fn config(&self) -> ServerConfig {
        ServerConfig {
            buffer: self.buffer,
            max_message_size: self.max_message_size,
            handshake_timeout: self.handshake_timeout,
            write_timeout: self.write_timeout,
            ping_interval: self.ping_interval,
            close_timeout: self.close_timeout,
            ..ServerConfig::default()
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let listener = match TcpListener::bind((cli.host.as_str(), cli.port)).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "error: {}",
                server::describe_bind_error(&cli.host, cli.port, &e)
            );
            return ExitCode::FAILURE;
        }
    };
    match server::local_addr(&listener) {
        Ok(addr) => println!("Listening on port {}", addr.port()),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    match server::run(listener, cli.config(), server::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_defaults_are_the_library_defaults() {
        assert_eq!(
            Cli::parse_from(["server"]).config(),
            ServerConfig::default()
        );
    }
}

//! Command-line flags, with their documentation next to them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "chatctl",
    version,
    about = "Run, supervise and scale a Socket.IO chat"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the chat app in this process (what each worker of `chatctl start` runs).
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Ignored when a socket is inherited (LISTEN_FDS).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on. Ignored when a socket is inherited (LISTEN_FDS).
    #[arg(long, default_value_t = 3000)]
    pub port: u16,
    /// Cookie-signing key. Also read from CHAT_SECRET. Every worker of an app needs the same.
    #[arg(long, env = "CHAT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// File holding the cookie-signing key; created (0600) if missing.
    /// Default: $CHATCTL_HOME/secret (CHATCTL_HOME defaults to ~/.chatctl).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Interval of Engine.IO pings (e.g. 25s, 500ms).
    #[arg(long, default_value = "25s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// Time a client has to answer a ping.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub ping_timeout: Duration,
    /// Time a new connection has to join a namespace.
    #[arg(long, default_value = "45s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Longest chat message, in characters.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_message_chars: u32,
    /// Messages one socket may send per second; the excess is dropped with an `error` event.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub messages_per_second: u32,
    /// Rooms one socket may be in at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_rooms_per_socket: u32,
    /// Open connections at once.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Largest Engine.IO payload (polling body or websocket message), in bytes.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(64..))]
    pub max_payload: u32,
    /// Extra origins allowed to connect (CORS and websocket Origin check), e.g.
    /// https://chat.example.com; same-origin is always allowed. `*` allows any.
    #[arg(long = "allow-origin")]
    pub allow_origins: Vec<String>,
    /// Mark the session cookie Secure (when clients use HTTPS).
    #[arg(long)]
    pub secure_cookies: bool,
}

/// Parses `300ms`, `25s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration like 300ms, 25s, 5m"))?;
    let millis = match unit {
        "ms" => number,
        "s" => number.saturating_mul(1000),
        "m" => number.saturating_mul(60_000),
        "h" => number.saturating_mul(3_600_000),
        _ => return Err(format!("'{text}' needs a unit: ms, s, m or h")),
    };
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_with_units() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("25s"), Ok(Duration::from_secs(25)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("25").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5 days").is_err());
    }

    #[test]
    fn flags_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

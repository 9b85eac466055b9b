//! Everything a run is told, with its default, in one place. The command line (`main.rs`) only
//! fills this in.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// What the clients do once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Connect and join, hold the connections, then (with --probe) one message in every room.
    Idle,
    /// Rooms of --room-size clients, each sending --rate messages a second.
    Chat,
    /// Everyone in one room, one sender, a step per --rates until the p99 latency passes
    /// --p99-limit.
    Fanout,
    /// Every client loops connect → join → disconnect.
    Churn,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Chat => "chat",
            Scenario::Fanout => "fanout",
            Scenario::Churn => "churn",
        }
    }
}

/// Which Engine.IO transport the clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportChoice {
    /// One websocket connection per client.
    #[value(name = "websocket")]
    WebSocket,
    /// HTTP long-polling: a GET held open for the server's packets, POSTs for the client's.
    Polling,
    /// Even clients over websocket, odd ones over long-polling.
    Mix,
}

impl TransportChoice {
    pub fn name(self) -> &'static str {
        match self {
            TransportChoice::WebSocket => "websocket",
            TransportChoice::Polling => "polling",
            TransportChoice::Mix => "mix",
        }
    }

    /// Whether client `index` uses long-polling.
    pub fn polling_for(self, index: u32) -> bool {
        match self {
            TransportChoice::WebSocket => false,
            TransportChoice::Polling => true,
            TransportChoice::Mix => index % 2 == 1,
        }
    }

    /// Sockets one client holds open: a polling client has one connection for its long-poll
    /// and one for its sends.
    pub fn fds_per_client(self) -> f64 {
        match self {
            TransportChoice::WebSocket => 1.0,
            TransportChoice::Polling => 2.0,
            TransportChoice::Mix => 1.5,
        }
    }
}

/// Where the server is.
#[derive(Debug, Clone)]
pub struct Target {
    /// The resolved address every client connects to.
    pub addr: SocketAddr,
    /// The `Host` header: the URL's authority as given.
    pub authority: String,
}

/// A fault injected into the measured phase of the chat scenario: what the report then shows is
/// how the clients came through it (losses, reconnections, recoveries).
#[derive(Debug, Clone)]
pub struct Fault {
    /// How long into the measured phase.
    pub after: Duration,
    /// Run with `sh -c`; its output goes to stderr.
    pub command: String,
}

/// A whole run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub target: Target,
    pub scenario: Scenario,
    pub clients: u32,
    pub transport: TransportChoice,
    /// Local addresses the clients connect from, round-robin; empty: the kernel's choice.
    pub sources: Vec<IpAddr>,
    /// New clients per second; 0 starts them all at once.
    pub ramp: u32,
    /// Longest a client may take to log in, connect both namespaces and join its room.
    pub connect_timeout: Duration,
    /// Clients per room (chat, idle, churn); fanout puts everyone in one room.
    pub room_size: u32,
    /// Messages per second per client (chat).
    pub rate: f64,
    /// The measured phase (chat, idle, churn).
    pub duration: Duration,
    /// Sending before the measured phase, not counted (chat, fanout).
    pub warmup: Duration,
    /// Length of the text of each chat message.
    pub message_bytes: usize,
    /// How long to wait after the last send for late deliveries.
    pub drain: Duration,
    /// Send rates of the fanout steps, in order.
    pub rates: Vec<f64>,
    pub step_duration: Duration,
    /// The fanout stops after the first step whose p99 latency is above this.
    pub p99_limit: Duration,
    /// Processes whose CPU and memory are sampled (the server's).
    pub pids: Vec<u32>,
    /// Progress lines on stderr about once a second.
    pub progress: bool,
    /// Idle: after the hold, the first member of every room sends one message, which every
    /// other member must receive.
    pub probe: bool,
    /// Chat: a command run once, part-way through the measured phase.
    pub fault: Option<Fault>,
}

impl BenchConfig {
    /// The defaults of the command line, against `target`.
    pub fn new(target: Target, scenario: Scenario) -> Self {
        BenchConfig {
            target,
            scenario,
            clients: 100,
            transport: TransportChoice::WebSocket,
            sources: Vec::new(),
            ramp: 1000,
            connect_timeout: Duration::from_secs(10),
            room_size: 10,
            rate: 1.0,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            message_bytes: 64,
            drain: Duration::from_secs(3),
            rates: vec![
                10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
            ],
            step_duration: Duration::from_secs(5),
            p99_limit: Duration::from_millis(200),
            pids: Vec::new(),
            progress: true,
            probe: false,
            fault: None,
        }
    }

    /// Clients per room for this scenario.
    pub fn effective_room_size(&self) -> u32 {
        match self.scenario {
            Scenario::Fanout => self.clients.max(1),
            _ => self.room_size.max(1),
        }
    }
}

/// Parses a duration: `10s`, `200ms`, `1.5s`, `2m`, `500us`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (like 10s, 200ms, 2m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m or h)"
            ))
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 parsecs").is_err());
    }
}

//! Flags of `chatctl proxy`, the sticky-session proxy.

use std::time::Duration;

use clap::Args;

use super::parse_duration;

/// Flags of `chatctl proxy`. Limits left out keep the defaults of `sticky::ProxyConfig`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Address clients connect to. Under `chatctl start` (an inherited socket, LISTEN_FDS) the
    /// master's socket is used instead, and this only names it.
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// Threads serving clients. One thread makes the fewest wake-ups per request; for more
    /// cores, raise it, or run several proxies on one socket (`chatctl start -i N -- chatctl
    /// proxy ...`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
    /// A host behind the proxy and the node id its workers write into sids (repeatable).
    #[arg(long = "backend", value_name = "HOST:PORT=NODE_ID", required = true)]
    pub backends: Vec<sticky::BackendSpec>,
    /// How requests without a sid pick a healthy backend.
    #[arg(long, value_enum, default_value_t = PolicyArg::LeastConn)]
    pub policy: PolicyArg,
    /// Time between `GET /healthz` probes of each backend [default: 2s].
    #[arg(long, value_parser = parse_duration)]
    pub health_interval: Option<Duration>,
    /// Time one probe may take [default: 1s].
    #[arg(long, value_parser = parse_duration)]
    pub health_timeout: Option<Duration>,
    /// Probes missed in a row before a backend gets no new sessions [default: 2].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub health_misses: Option<u32>,
    /// Client connections at once; further ones wait in the backlog [default: 10000].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// Close a keep-alive client connection idle this long [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Close a websocket tunnel with no traffic this long [default: 120s].
    #[arg(long, value_parser = parse_duration)]
    pub tunnel_idle_timeout: Option<Duration>,
    /// Drop a client that takes longer to send a request head [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    pub header_read_timeout: Option<Duration>,
    /// Answer 408 and close the connection when a client takes longer to send a request body
    /// (slow POST) [default: 10s].
    #[arg(long, value_parser = parse_duration)]
    pub body_read_timeout: Option<Duration>,
    /// Answer 504 when a host takes longer to start answering a request; keep it above the
    /// Engine.IO ping interval (25s), which a long-poll may wait [default: 60s].
    #[arg(long, value_parser = parse_duration)]
    pub response_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PolicyArg {
    LeastConn,
    RoundRobin,
}

impl ProxyArgs {
    /// The proxy configuration: the flags given, the library's defaults for the rest.
    pub fn into_config(self) -> sticky::ProxyConfig {
        let mut config = sticky::ProxyConfig::new(self.listen, self.backends);
        config.policy = match self.policy {
            PolicyArg::LeastConn => sticky::Policy::LeastConn,
            PolicyArg::RoundRobin => sticky::Policy::RoundRobin,
        };
        let defaults = config.clone();
        config.health_interval = self.health_interval.unwrap_or(defaults.health_interval);
        config.health_timeout = self.health_timeout.unwrap_or(defaults.health_timeout);
        config.health_misses = self.health_misses.unwrap_or(defaults.health_misses);
        config.max_connections = self
            .max_connections
            .map_or(defaults.max_connections, |n| n as usize);
        config.idle_timeout = self.idle_timeout.unwrap_or(defaults.idle_timeout);
        config.tunnel_idle_timeout = self
            .tunnel_idle_timeout
            .unwrap_or(defaults.tunnel_idle_timeout);
        config.header_read_timeout = self
            .header_read_timeout
            .unwrap_or(defaults.header_read_timeout);
        config.body_read_timeout = self.body_read_timeout.unwrap_or(defaults.body_read_timeout);
        config.response_timeout = self.response_timeout.unwrap_or(defaults.response_timeout);
        config
    }
}

//! Every setting of the proxy, with its default, in one place.

use std::net::SocketAddr;
use std::time::Duration;

/// How a request without a sid (a handshake, a page) picks a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// The healthy backend with the fewest open proxied connections, so long-lived websockets
    /// spread evenly even when hosts joined at different times.
    #[default]
    LeastConn,
    /// Healthy backends in turn.
    RoundRobin,
}

/// One host behind the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// `host:port`, resolved on every connect so a host that moves is followed.
    pub address: String,
    /// The node id its workers write into every sid (`route_tag`), which is how requests of a
    /// session find it again.
    pub node: u16,
}

impl std::str::FromStr for BackendSpec {
    type Err = String;

    /// `HOST:PORT=NODE_ID`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (address, node) = text
            .rsplit_once('=')
            .ok_or_else(|| format!("backend `{text}` is not HOST:PORT=NODE_ID"))?;
        if address
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(format!("backend address `{address}` is not HOST:PORT"));
        }
        let node: u16 = node
            .parse()
            .ok()
            .filter(|node| *node <= crate::route_tag::MAX_ID)
            .ok_or_else(|| {
                format!(
                    "backend node id `{node}` is not a number from 0 to {}",
                    crate::route_tag::MAX_ID
                )
            })?;
        Ok(BackendSpec {
            address: address.to_owned(),
            node,
        })
    }
}

/// Configuration of a [`crate::Proxy`].
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The hosts; node ids must be distinct, since a sid names exactly one.
    pub backends: Vec<BackendSpec>,
    pub policy: Policy,
    /// Time between two `GET /healthz` probes of each backend.
    pub health_interval: Duration,
    /// Time one probe may take before it counts as missed.
    pub health_timeout: Duration,
    /// Probes missed in a row before a backend gets no new handshakes.
    pub health_misses: u32,
    /// Client connections served at once; further ones wait in the listen backlog, so a flood
    /// costs the proxy no memory.
    pub max_connections: usize,
    /// How long a client keep-alive connection may sit with no request in flight and no bytes
    /// moving before it is closed.
    pub idle_timeout: Duration,
    /// How long a websocket tunnel may carry no byte either way before both ends are closed.
    /// Engine.IO pings every 25 s by default, so a live session never reaches a minute.
    pub tunnel_idle_timeout: Duration,
    /// How long a client may take to send a complete request head (slowloris defence).
    pub header_read_timeout: Duration,
    /// How long a client may take to send a whole request body, from when the proxy starts
    /// passing it on (slow POST defence: the header read timeout does not cover the body, and
    /// bytes that trickle in keep the connection from idling out). A slower client gets 408
    /// and its connection is closed.
    pub body_read_timeout: Duration,
    /// How long connecting to a backend may take before the request gets a 502.
    pub connect_timeout: Duration,
    /// How long a backend may take to start answering a request (a long-poll waits up to the
    /// ping interval, 25 s by default) before the request gets a 504: a host that vanished
    /// without closing its connections does not hold requests forever.
    pub response_timeout: Duration,
}

impl ProxyConfig {
    /// The defaults for everything but the addresses.
    pub fn new(listen: SocketAddr, backends: Vec<BackendSpec>) -> Self {
        ProxyConfig {
            listen,
            backends,
            policy: Policy::default(),
            health_interval: Duration::from_secs(2),
            health_timeout: Duration::from_secs(1),
            health_misses: 2,
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(60),
            tunnel_idle_timeout: Duration::from_secs(120),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            response_timeout: Duration::from_secs(60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_specs_parse_or_say_why_not() {
        assert_eq!(
            "10.0.0.1:3000=7".parse::<BackendSpec>(),
            Ok(BackendSpec {
                address: "10.0.0.1:3000".into(),
                node: 7
            })
        );
        assert!("10.0.0.1:3000".parse::<BackendSpec>().is_err());
        assert!("10.0.0.1=3".parse::<BackendSpec>().is_err());
        assert!("h:1=4096".parse::<BackendSpec>().is_err());
        assert!(":1=1".parse::<BackendSpec>().is_err());
    }
}

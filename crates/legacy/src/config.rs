//! Every timer and limit of the 0.9 endpoint, with its default, in one place. The payload,
//! session and queue limits are the v4 engine's (`EngineConfig`): a 0.9 session is an Engine.IO
//! session, bounded like any other.

use std::time::Duration;

/// Configuration of a [`crate::LegacyEndpoint`].
#[derive(Debug, Clone)]
pub struct LegacyConfig {
    /// Whether `/socket.io/1/` answers at all. Off (`chatctl serve --legacy-protocol off`) for
    /// sites with no 0.9 clients left, so the older protocol is not exposed for nothing.
    pub enabled: bool,
    /// How often the server sends a heartbeat (`2::`) to each client. 0.9 clients close their
    /// side when they hear nothing for the heartbeat timeout, so this must be well below it
    /// (0.9 default: 25 s).
    pub heartbeat_interval: Duration,
    /// How long the server waits without a word from a client (a heartbeat answer, a message, a
    /// poll) before it ends the session; sent in the handshake, where clients read it as their
    /// own limit (0.9 default: 60 s).
    pub heartbeat_timeout: Duration,
    /// How long a session survives with no transport attached: the gap between two polling
    /// requests, or a websocket that dropped and may come back (0.9 default: 60 s).
    pub close_timeout: Duration,
    /// How long a polling GET waits for something to send before it answers with a noop, so
    /// that proxies never see an idle request (0.9 default: 20 s).
    pub polling_duration: Duration,
    /// 0.9 messages of the endpoint's own (heartbeats, bare acks) queued for one client before
    /// it counts as too slow and its session is closed.
    pub max_control_messages: usize,
}

impl Default for LegacyConfig {
    fn default() -> Self {
        LegacyConfig {
            enabled: true,
            heartbeat_interval: Duration::from_secs(25),
            heartbeat_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(60),
            polling_duration: Duration::from_secs(20),
            max_control_messages: 64,
        }
    }
}

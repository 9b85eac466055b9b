//! Every Socket.IO-level timeout and limit, with its default, in one place.

use std::sync::Arc;
use std::time::Duration;

use engineio::EngineConfig;

use crate::adapter::{Adapter, LocalAdapter};
use crate::recovery::RecoveryConfig;

/// Builds the adapter of each namespace; the default keeps rooms in this process.
pub type AdapterFactory = Arc<dyn Fn(&str) -> Arc<dyn Adapter> + Send + Sync>;

/// Configuration of a [`crate::SocketIo`] server.
#[derive(Clone)]
pub struct SocketIoConfig {
    /// The transport layer underneath.
    pub engine: EngineConfig,
    /// How long a new connection may take to join a namespace before it is closed. Until it
    /// joins one it holds a pending place (the engine's `max_pending_sessions` and
    /// `max_pending_sessions_per_address`), so this is also how long a handshake that goes no
    /// further occupies one. Real clients join one round trip after the handshake; 10 s
    /// instead of the reference's 45 s frees a flood's places sooner.
    pub connect_timeout: Duration,
    /// How long `emit_with_ack` waits for the client's answer by default.
    pub ack_timeout: Duration,
    /// Binary attachments one packet may announce. Applications send a few (a file, an image);
    /// the protocol allows any number, and each one held costs up to `max_payload` until the
    /// packet completes, so the count is kept small. The whole packet, header and attachments,
    /// is bounded by the engine's `max_payload`.
    pub max_attachments: usize,
    /// Makes the adapter of a namespace: in-process by default, cross-worker in a cluster.
    pub adapter: AdapterFactory,
    /// Connection-state recovery: off (`None`) by default. With it, a client whose connection
    /// broke gets its socket, rooms and missed events back if it returns within the window.
    pub recovery: Option<RecoveryConfig>,
    /// A broadcast to at most this many local sockets writes each frame straight to an idle
    /// websocket's connection (no task woken: a chat room's messages); one to more queues
    /// them for a flush pass (one task woken per broadcast, see `engineio::FlushPass`), which
    /// writes several frames per client at once when broadcasts come faster than it passes
    /// (a large room's fan-out), where straight writes would make one write per frame.
    pub max_straight_recipients: usize,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            engine: EngineConfig::default(),
            connect_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(5),
            max_attachments: 10,
            adapter: Arc::new(|_| Arc::new(LocalAdapter::default()) as Arc<dyn Adapter>),
            recovery: None,
            max_straight_recipients: 64,
        }
    }
}

impl std::fmt::Debug for SocketIoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketIoConfig")
            .field("engine", &self.engine)
            .field("connect_timeout", &self.connect_timeout)
            .field("ack_timeout", &self.ack_timeout)
            .field("max_attachments", &self.max_attachments)
            .field("recovery", &self.recovery)
            .field("max_straight_recipients", &self.max_straight_recipients)
            .finish_non_exhaustive()
    }
}

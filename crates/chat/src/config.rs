//! Every setting of the chat application, with its default, in one place.

use std::sync::Arc;
use std::time::Duration;

use socketio::SocketIoConfig;

/// Configuration of a [`crate::ChatServer`].
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// The Socket.IO and Engine.IO layers.
    pub io: SocketIoConfig,
    /// The book's own protocol (Socket.IO 0.9) at `/socket.io/1/`, next to v4.
    pub legacy: legacy::LegacyConfig,
    /// Key that signs session cookies; every worker of an app must share it.
    pub secret: Vec<u8>,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// Longest chat message, in characters.
    pub max_message_chars: usize,
    /// Chat messages (`message`, `private_message`) one connection may send per second, in
    /// all its namespaces together (a burst of as many is allowed); the excess is dropped with
    /// an `error` event to that socket.
    pub messages_per_second: u32,
    /// Every other event, and namespace connects (each counted twice: for itself and for its
    /// disconnect), one connection may send per second: each costs store work (a session
    /// lookup, a room change), so a client must not send them at line rate. A burst of as many
    /// is allowed; the excess gets an `error` event (a connect, CONNECT_ERROR).
    pub events_per_second: u32,
    /// Rooms one socket may be in at once.
    pub max_rooms_per_socket: usize,
    /// Logins one client address (an IPv6 /64) may make per `login_window` (a burst of as
    /// many); beyond it, 429 with Retry-After. Bounds how fast one client fills the session
    /// store, without a lock-out of anyone else; generous enough for an office behind one
    /// NAT address.
    pub logins_per_address: u32,
    /// The window of `logins_per_address`.
    pub login_window: Duration,
    /// Addresses whose login budget is tracked at once (each is forgotten once its budget is
    /// full again): bounds that table against a client with very many addresses.
    pub max_login_addresses: usize,
    /// Sessions the store of one process keeps at once (standalone `chatctl serve`; the
    /// master's store has the same default): a login beyond it is refused with 503.
    pub max_stored_sessions: usize,
    /// Proxies (e.g. `chatctl proxy`) whose `X-Forwarded-For` names the client address; from
    /// anyone else that header could be forged, so the peer address counts.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Open TCP connections at once, upgraded websockets included; further clients wait in the
    /// listen backlog.
    pub max_connections: usize,
    /// Messages of a room kept and sent to a joiner.
    pub history_len: usize,
    /// How long a room's history stays after its last message. Rooms are created by whoever
    /// names one, so the histories of rooms nobody speaks in any more (empty rooms) cannot be
    /// kept for good (memory in the master, keys in Redis); long enough that a room emptied by
    /// an outage or a page reload comes back with its history.
    pub history_ttl: Duration,
    /// How long a client may take to send a request's headers (slowloris guard).
    pub header_read_timeout: Duration,
    /// Adds `Secure` to the cookie: set when clients reach the app over HTTPS.
    pub secure_cookies: bool,
    /// TCP_NODELAY for the whole of every client connection. Off: once a websocket session is
    /// open, the kernel coalesces small writes to its client while an earlier one is
    /// unacknowledged (Nagle), which lets a busy room reach thousands of clients without a
    /// packet per message per client; requests, answers and handshakes still go out at once.
    pub tcp_nodelay: bool,
    /// How long a draining worker keeps a quiet keep-alive connection open, so that a request
    /// the client is sending right now gets its answer (with `Connection: close`) instead of a
    /// reset. Busy connections close sooner: right after their next response.
    pub drain_idle_grace: Duration,
    /// With connection-state recovery on (`io.recovery`): how long a user whose connection
    /// broke stays in its rooms before the others are told it left. One that comes back
    /// within it (a worker crash or reload, a network blip) never left.
    pub presence_grace: Duration,
    /// How often departures whose grace ended are announced.
    pub presence_sweep: Duration,
    /// The other processes of this app on this host, to which requests for their sessions
    /// are forwarded (under chatctl's master); `None` when this process is alone.
    pub peers: Option<Arc<dyn crate::Peers>>,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            io: SocketIoConfig {
                // A client whose connection broke (a crash, a reload, a network blip) gets
                // its sockets, rooms and missed messages back (bound to its login).
                recovery: Some(socketio::RecoveryConfig::default()),
                ..SocketIoConfig::default()
            },
            legacy: legacy::LegacyConfig::default(),
            secret: Vec::new(),
            session_ttl: Duration::from_secs(7 * 24 * 3600),
            max_message_chars: 2000,
            messages_per_second: 20,
            events_per_second: 20,
            max_rooms_per_socket: 10,
            logins_per_address: 60,
            login_window: Duration::from_secs(60),
            max_login_addresses: 100_000,
            max_stored_sessions: crate::store::DEFAULT_MAX_SESSIONS,
            trusted_proxies: Vec::new(),
            max_connections: 10_000,
            history_len: 50,
            history_ttl: Duration::from_secs(3600),
            header_read_timeout: Duration::from_secs(10),
            secure_cookies: false,
            tcp_nodelay: false,
            drain_idle_grace: Duration::from_secs(1),
            presence_grace: Duration::from_secs(5),
            presence_sweep: Duration::from_secs(1),
            peers: None,
        }
    }
}

impl ChatConfig {
    /// How long a broken connection's memberships are kept: `presence_grace` with recovery
    /// on, none without it (nobody comes back to them).
    pub fn presence_grace(&self) -> Duration {
        match self.io.recovery {
            Some(_) => self.presence_grace,
            None => Duration::ZERO,
        }
    }
}

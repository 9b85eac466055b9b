//! Every timeout and limit of the Engine.IO server, with its default, in one place.

use std::time::Duration;

use http::header::{self, HeaderName};

/// Which browser origins may talk to the server (CORS for polling, an Origin check for websocket).
///
/// Browsers do not apply CORS to websocket handshakes, so the same policy is enforced on both
/// transports: a page on a foreign origin can neither poll nor open a websocket.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CorsPolicy {
    /// Only pages served from the same host (the `Origin` host equals the `Host` header).
    #[default]
    SameOrigin,
    /// Any origin. Only for public APIs and test suites; never the default.
    Any,
    /// These exact origins (e.g. `https://chat.example.com`), plus the same origin.
    List(Vec<String>),
}

impl CorsPolicy {
    /// Whether a page on `origin` (a request's `Origin` header) may send requests to `host`
    /// (its `Host` header): the same origin always, others as the policy says.
    pub fn allows(&self, origin: &str, host: Option<&str>) -> bool {
        let same_origin = host.is_some_and(|host| {
            origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(host)
        });
        same_origin
            || match self {
                CorsPolicy::SameOrigin => false,
                CorsPolicy::Any => true,
                CorsPolicy::List(list) => list.iter().any(|o| o == origin),
            }
    }
}

/// Configuration of an [`crate::Engine`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The request path the engine answers, with leading and trailing slash.
    pub path: String,
    /// How often the server pings each client (Engine.IO v4: the server pings).
    pub ping_interval: Duration,
    /// How long the server waits for the pong before it drops the session.
    pub ping_timeout: Duration,
    /// Largest accepted polling body or websocket message, in bytes; also the most a polling
    /// response carries at once. Advertised to clients in the handshake.
    pub max_payload: usize,
    /// Sessions open at once; a handshake beyond it is refused with 503 so one process cannot be
    /// exhausted by connection floods.
    pub max_sessions: usize,
    /// Sessions open at once that the layer above has not admitted yet (for Socket.IO: that
    /// have joined no namespace). Part of `max_sessions`, and far smaller, so a flood of
    /// handshakes that go no further cannot take the places of users who log in.
    pub max_pending_sessions: usize,
    /// Pending sessions from one client address (see [`crate::PeerAddr`]). Real clients join a
    /// namespace one round trip after their handshake, so few are pending at a time even behind
    /// a NAT; one flooding address is refused here and leaves the rest to the others. Behind a
    /// proxy every client has the proxy's address: raise it there.
    pub max_pending_sessions_per_address: usize,
    /// The request headers a session keeps for the layer above (cookies for authentication,
    /// user agent and forwarded-for for logs). Only these: a copy of every header of every
    /// handshake would cost each idle session kilobytes.
    pub session_headers: Vec<HeaderName>,
    /// Shortest time between two log lines about refused handshakes (a flood would otherwise
    /// write one per request); the lines in between are counted in the next one.
    pub refusal_log_interval: Duration,
    /// How long a client may take to send a whole request body (a polling POST), from the
    /// moment it is read. The header read timeout does not cover the body: without this a
    /// client sending a byte at a time holds its connection and its session's POST forever.
    pub body_read_timeout: Duration,
    /// Packets queued for one client before it counts as too slow and its session is closed;
    /// bounds the memory a stalled client can pin.
    pub max_buffered_packets: usize,
    /// How long a websocket that started an upgrade (`2probe`) may take to finish it (`5`); after
    /// it, the websocket is dropped and the session goes on over polling.
    pub upgrade_timeout: Duration,
    /// How long a polling GET that comes in while a websocket takes its session over waits for
    /// the upgrade to end: then it gets 400 if the websocket took the session, or goes on as a
    /// poll. Node's engine.io answers such a GET on its next check, every 100 ms.
    pub upgrade_poll_wait: Duration,
    /// How long a polling client's close waits for the GET it sent along with it, so that the
    /// GET ends with a noop and not with "session unknown".
    pub close_poll_wait: Duration,
    /// Allowed origins.
    pub cors: CorsPolicy,
    /// Bytes the websocket reader keeps per connection (it grows while a larger message is read).
    /// Small, because most chat connections are idle and memory per connection is what limits
    /// how many one worker holds: 1 KiB instead of 4 KiB saves 3 KiB of every idle connection.
    pub ws_read_buffer_size: usize,
    /// How long one write to a websocket may take. A client that stops reading fills its TCP
    /// window and the write waits; past this it counts as gone: its session is closed and the
    /// writer ends, so neither its task nor its descriptor outlive the session. Also bounds the
    /// last flush and the close after a session ended.
    pub ws_write_timeout: Duration,
    /// Bytes the websocket writer collects before it flushes to the socket.
    pub ws_write_buffer_size: usize,
    /// Prefix written at the start of every session id, for sticky routing (DESIGN §5). The rest
    /// of the id is 128 random bits, so a tag never weakens it.
    pub sid_tag: String,
    /// How a websocket's connection is taken back from hyper to be handed to another process
    /// (see `Engine::hand_off_all`); `None`: websockets cannot move, and drain.
    pub detach_stream: Option<crate::handoff::DetachStream>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            path: "/socket.io/".to_owned(),
            ping_interval: Duration::from_millis(25_000),
            ping_timeout: Duration::from_millis(20_000),
            max_payload: 1_000_000,
            max_sessions: 100_000,
            max_pending_sessions: 2048,
            max_pending_sessions_per_address: 64,
            session_headers: vec![
                header::COOKIE,
                header::USER_AGENT,
                HeaderName::from_static("x-forwarded-for"),
            ],
            refusal_log_interval: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_buffered_packets: 4096,
            upgrade_timeout: Duration::from_secs(10),
            upgrade_poll_wait: Duration::from_millis(100),
            close_poll_wait: Duration::from_millis(100),
            cors: CorsPolicy::SameOrigin,
            ws_read_buffer_size: 1024,
            ws_write_buffer_size: 0,
            ws_write_timeout: Duration::from_secs(10),
            sid_tag: String::new(),
            detach_stream: None,
        }
    }
}

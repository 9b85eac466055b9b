//! Flags of `chatctl serve`, the chat app server (what each worker runs).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{parse_duration, parse_redis_url};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Ignored when a socket is inherited (LISTEN_FDS).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on. Ignored when a socket is inherited (LISTEN_FDS).
    #[arg(long, default_value_t = 3000)]
    pub port: u16,
    /// Threads serving connections. Default: one under `chatctl start`, which runs one worker
    /// process per CPU (threads would only add wake-ups and locking), else one per CPU.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
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
    /// Time a client may take to send a whole request body (a polling POST, the login form);
    /// a slower one gets 408 and its connection is closed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub body_read_timeout: Duration,
    /// Time a client may take to send a request's headers, on the public port and on the
    /// private socket; a slower one (slowloris) is disconnected.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Time one websocket write may take; a client that stops reading longer is disconnected
    /// and its connection closed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,
    /// Time a new connection has to join a namespace; until then it counts as pending.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Connections at once that have not joined a namespace yet (handshakes in progress),
    /// apart from --max-connections, so a handshake flood cannot lock logged-in users out.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending: u32,
    /// Connections from one client address that have not joined a namespace yet. Behind a
    /// proxy every client shares the proxy's address: raise it there.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_per_address: u32,
    /// Longest chat message, in characters.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_message_chars: u32,
    /// Chat messages one connection may send per second; the excess is dropped with an
    /// `error` event.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub messages_per_second: u32,
    /// Other events (join_room, get_rooms...) and namespace connects (each counted twice, for
    /// itself and its disconnect) one connection may send per second; the excess gets an
    /// `error` event, a connect a CONNECT_ERROR.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub events_per_second: u32,
    /// Connection-state recovery: how long a client whose connection broke (a crash, a
    /// reload, a network blip) may come back to its sockets, rooms and missed messages. 0
    /// turns recovery off (clients then get no offset with their events).
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub recovery_window: Duration,
    /// Events kept per namespace for clients that come back; one that missed more starts
    /// afresh.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub recovery_max_packets: u32,
    /// How long a user whose connection broke stays in its rooms before the others are told
    /// it left (with recovery on): one that comes back within it never left.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub presence_grace: Duration,
    /// Rooms one socket may be in at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_rooms_per_socket: u32,
    /// How long a room's history stays after its last message (the rooms nobody speaks in
    /// any more, empty ones, do not keep theirs for good).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub history_ttl: Duration,
    /// Logins one client address (an IPv6 /64) may make per --login-window; beyond it, 429
    /// with Retry-After. Load tests from one machine need more. Also read from
    /// CHATCTL_LOGINS_PER_ADDRESS.
    #[arg(long, env = "CHATCTL_LOGINS_PER_ADDRESS", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub logins_per_address: u32,
    /// The window of --logins-per-address.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub login_window: Duration,
    /// Sessions (logins) kept at once when this process keeps them itself (no master, no
    /// Redis); a login beyond it gets 503 until sessions expire or log out.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_stored_sessions: u64,
    /// A proxy in front of this server (e.g. `chatctl proxy`) whose X-Forwarded-For names the
    /// client's address for the login budget (repeatable); from others that header is ignored.
    #[arg(long = "trusted-proxy", value_name = "IP")]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Serve the book's protocol, Socket.IO 0.9, at /socket.io/1/ next to v4 (`on`), or not
    /// (`off`, for sites with no 0.9 clients left).
    #[arg(long, default_value = "on", value_name = "on|off", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub legacy_protocol: bool,
    /// How often 0.9 clients get a heartbeat; below --legacy-heartbeat-timeout.
    #[arg(long, default_value = "25s", value_parser = parse_duration)]
    pub legacy_heartbeat_interval: Duration,
    /// How long a silent 0.9 client keeps its session (sent to clients in the handshake, which
    /// use it as their own limit).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub legacy_heartbeat_timeout: Duration,
    /// How long a 0.9 session waits for its next polling request or a websocket to come back.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub legacy_close_timeout: Duration,
    /// How long a 0.9 polling request waits for messages before it is answered with a noop.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub legacy_polling_duration: Duration,
    /// Open connections at once.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Largest Engine.IO payload (polling body or websocket message), in bytes.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(64..))]
    pub max_payload: u32,
    /// Binary attachments one Socket.IO packet may carry; the whole packet, attachments
    /// included, stays within --max-payload.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub max_attachments: u32,
    /// Extra origins allowed to connect (CORS and websocket Origin check), e.g.
    /// https://chat.example.com; same-origin is always allowed. `*` allows any.
    #[arg(long = "allow-origin")]
    pub allow_origins: Vec<String>,
    /// Mark the session cookie Secure (when clients use HTTPS).
    #[arg(long)]
    pub secure_cookies: bool,
    /// Send every small websocket write at once (TCP_NODELAY), for the whole connection. Off by
    /// default: once a websocket session is open (the handshake always goes out at once), the
    /// kernel holds a small write while an earlier one is unacknowledged and sends them
    /// together, which under load (a busy room) turns many packets per client into a few, at
    /// most one round trip later. On suits clients far away that get bursts and must see each
    /// line at once.
    #[arg(long)]
    pub tcp_nodelay: bool,
    /// Share broadcasts, rooms, sessions and history through this Redis (redis://host:port)
    /// instead of through the chatctl master (or, alone, this process's memory): for workers on
    /// several machines. Also read from REDIS_URL.
    #[arg(long = "redis", env = "REDIS_URL", hide_env_values = true, value_name = "URL", value_parser = parse_redis_url)]
    pub redis_url: Option<String>,
    /// Starts every Redis key and channel of this app, so several apps can share one Redis.
    /// Also read from CHATCTL_REDIS_PREFIX.
    #[arg(long, env = "CHATCTL_REDIS_PREFIX", default_value = "chatctl")]
    pub redis_prefix: String,
    /// Broadcast with sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis 7) instead of
    /// PUBLISH/SUBSCRIBE: each room's channel is then handled by one shard (with
    /// --redis-cluster, by the node owning its slot). Also read from CHATCTL_REDIS_SHARDED
    /// (true/false).
    #[arg(long, env = "CHATCTL_REDIS_SHARDED")]
    pub redis_sharded: bool,
    /// --redis names nodes of a Redis Cluster, one or several comma-separated
    /// (redis://10.0.0.1:7000,redis://10.0.0.2:7000; the other nodes are found from them):
    /// commands go to the node owning their keys' slot, subscriptions follow the slot owners.
    /// Room membership keys share one hash tag ({prefix}); sessions, histories and room
    /// channels spread over the cluster. Also read from CHATCTL_REDIS_CLUSTER (true/false).
    #[arg(long, env = "CHATCTL_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// A worker that has not renewed its liveness key in Redis for this long counts as dead:
    /// another worker removes its users from the rooms (within about 4/3 of it). Also read
    /// from CHATCTL_REDIS_WORKER_TTL.
    #[arg(long, env = "CHATCTL_REDIS_WORKER_TTL", default_value = "6s", value_parser = parse_duration)]
    pub redis_worker_ttl: Duration,
    /// Shortest time between two log lines about one cause of dropped messages (broadcasts
    /// that could not reach the other workers, history entries not written); the counts are
    /// in `chatctl status --json` at any time.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drop_log_interval: Duration,
}

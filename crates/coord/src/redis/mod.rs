//! The Redis bus and store (DESIGN §6), for several machines or when the master should not
//! carry the traffic. Each worker holds one [`RedisLink`]: a multiplexed command connection
//! that its [`RedisStore`] and its broadcast publisher share, and (in [`RedisBus`]) one
//! subscriber connection. With [`RedisConfig::cluster`], both are Redis Cluster connections
//! that follow the slot owners.
//!
//! Keys and channels (`P` is [`RedisConfig::prefix`]; `M` is `P` on one server and `{P}` on a
//! cluster, where that hash tag puts every key below in one slot, so the room scripts, which
//! touch the rooms, the workers and their members at once, run on one node):
//! - `P:session:ID` -> nickname, with the session's TTL;
//! - `M:room:ROOM:users` (hash nickname -> sockets of it in the room), `M:room:ROOM:sockets`
//!   (hash socket -> nickname), `M:rooms` (set of rooms with users), changed by Lua scripts so
//!   that concurrent joins and leaves from several workers keep the counts exact;
//! - `P:history:ROOM`, a list capped by `LTRIM`;
//! - `M:workers` (set of worker uids), `M:worker:UID:alive` (renewed by the worker's heartbeat,
//!   with a TTL) and `M:worker:UID:members` (its `socket room` pairs): when a worker's liveness
//!   key lapses, another worker removes its members and tells their rooms who left;
//! - `P:bc:NS` carries broadcasts to a whole namespace or to several rooms, `P:bc:NS:ROOM` those
//!   to one room. Each worker subscribes to the namespace channels and to the channels of the
//!   rooms it has members in, so a room's traffic reaches only the workers that need it. Every
//!   name is its own channel, so with [`RedisConfig::sharded`] (SPUBLISH/SSUBSCRIBE, Redis 7)
//!   rooms spread over the shards of a cluster.
//! - `P:req` carries questions to every worker (which sockets match: `fetch_sockets`, `count`),
//!   `P:res:UID` the answers to worker UID; every worker subscribes to both from the start (see
//!   `query.rs`).
//!
//! On a cluster, sessions, histories and broadcasts (the bulk of the traffic) spread over the
//! shards; room membership, small and changed only on joins and leaves, lives in one slot.
//!
//! Needs Redis 6.2 or later (RESP3 push messages for the subscriber, `SET .. GET` for the
//! heartbeat); Redis 7 for sharded pub/sub.
//!
//! When Redis is down, store operations fail with [`chat::StoreError::Unavailable`],
//! broadcasts and disconnect orders reach this worker's sockets only, and `fetch_sockets`
//! answers with this worker's sockets (after at most [`RedisConfig::query_timeout`]); the
//! connections come back by themselves, the subscriber resubscribes and the store re-asserts the
//! room members of this worker.

mod bus;
mod query;
mod store;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use chat::StoreError;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline,
    ProtocolVersion, PushInfo, RedisFuture, RedisResult, Value,
};
use supervisor::drops::Drops;
use tokio::sync::mpsc;

pub use bus::{RedisAdapter, RedisBus};
pub use store::RedisStore;

/// Where Redis is and how this app's keys and channels are named there.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`; with [`RedisConfig::cluster`], one or more
    /// nodes of the cluster, comma-separated (the others are found from them).
    pub url: String,
    /// Starts every key and channel, so several apps can share one Redis.
    pub prefix: String,
    /// Sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis 7) instead of PUBLISH/SUBSCRIBE.
    pub sharded: bool,
    /// `url` names nodes of a Redis Cluster: commands go to the node owning their keys' slot,
    /// and (sharded) subscriptions to the nodes owning their channels' slots.
    pub cluster: bool,
    /// A worker that has not renewed its liveness key for this long is dead: another worker
    /// removes its room members. It renews every third of this.
    pub worker_ttl: Duration,
    /// How long `fetch_sockets` (and `count`) waits for the other workers' answers before it
    /// returns what it has: the cost of asking while a worker is dead but not yet noticed.
    pub query_timeout: Duration,
    /// Shortest time between two log lines about one cause of dropped broadcasts or history
    /// entries (see [`supervisor::drops`]).
    pub drop_log_interval: Duration,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "chatctl".into(),
            sharded: false,
            cluster: false,
            // Renewed every 2 s, so a dead worker's users leave within 8 s (the design's 10 s).
            worker_ttl: Duration::from_secs(6),
            query_timeout: Duration::from_secs(1),
            drop_log_interval: supervisor::config::DEFAULT_DROP_LOG_INTERVAL,
        }
    }
}

/// Why the Redis bus or store cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("invalid Redis URL '{url}' (expected redis://[user:password@]host:port[/db])")]
    InvalidUrl {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("several Redis URLs '{urls}' but no cluster: name one server, or turn the cluster mode on (chatctl serve --redis-cluster)")]
    SeveralUrls { urls: String },
}

/// Checks a Redis URL, or a comma-separated list of a cluster's node URLs, without connecting
/// (for command-line flags).
pub fn validate_url(url: &str) -> Result<(), RedisSetupError> {
    node_urls(url).map(drop)
}

/// The connection details of each comma-separated URL in `urls`.
fn node_urls(urls: &str) -> Result<Vec<ConnectionInfo>, RedisSetupError> {
    urls.split(',')
        .map(|url| {
            url.trim()
                .into_connection_info()
                .map_err(|source| RedisSetupError::InvalidUrl {
                    url: url.to_owned(),
                    source,
                })
        })
        .collect()
}

/// How long a command, or a connection attempt, may take before it counts as Redis being down.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// A worker's access to Redis, shared by its store and its bus.
pub struct RedisLink {
    config: RedisConfig,
    /// For the command connection (RESP2) and, switched to RESP3, the subscriber's.
    servers: Servers,
    /// Made on the first command, so a worker starts while Redis is down; once made, the
    /// connection reconnects by itself (a failed command triggers the reconnection).
    commands: tokio::sync::OnceCell<Connection>,
    /// Starts the keys that the room scripts touch together: `{P}` on a cluster, `P` otherwise.
    member_prefix: String,
    /// Names this worker in the broadcasts it publishes, so it skips them when they come back.
    uid: String,
    health: Health,
    /// Goes up each time the command connection works again after a failure: the store then
    /// re-asserts this worker's room members, which a restarted Redis has forgotten.
    epoch: AtomicU64,
    /// Broadcasts and history entries its bus and store could not get to Redis.
    drops: std::sync::Arc<Drops>,
}

impl RedisLink {
    pub fn new(config: RedisConfig) -> Result<std::sync::Arc<Self>, RedisSetupError> {
        let invalid = |source| RedisSetupError::InvalidUrl {
            url: config.url.clone(),
            source,
        };
        let mut nodes = node_urls(&config.url)?;
        let (servers, member_prefix) = if config.cluster {
            // Checks that the nodes agree on credentials, without connecting.
            ClusterClientBuilder::new(nodes.clone())
                .build()
                .map_err(invalid)?;
            (Servers::Cluster(nodes), format!("{{{}}}", config.prefix))
        } else {
            let (Some(info), None) = (nodes.pop(), nodes.pop()) else {
                return Err(RedisSetupError::SeveralUrls {
                    urls: config.url.clone(),
                });
            };
            let client = Client::open(info).map_err(invalid)?;
            (Servers::Single(client), config.prefix.clone())
        };
        let drops = std::sync::Arc::new(Drops::new(config.drop_log_interval));
        Ok(std::sync::Arc::new(RedisLink {
            config,
            servers,
            member_prefix,
            commands: tokio::sync::OnceCell::new(),
            uid: engineio::generate_sid(""),
            health: Health::new("commands"),
            epoch: AtomicU64::new(0),
            drops,
        }))
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// What this worker's bus and store dropped, by cause: `redis_publish_queue_full`,
    /// `redis_publish_failed`, `history_queue_full`, `history_write_failed`.
    pub fn drops(&self) -> &std::sync::Arc<Drops> {
        &self.drops
    }

    /// The subscriber's connection: RESP3, whose push messages (sent to `pushes`) let one
    /// multiplexed connection take (S)SUBSCRIBE replies and messages alike. On a cluster, each
    /// (S)SUBSCRIBE goes to the node owning its channel's slot.
    async fn subscriber(&self, pushes: mpsc::UnboundedSender<PushInfo>) -> RedisResult<Connection> {
        match &self.servers {
            Servers::Single(client) => {
                let mut info = client.get_connection_info().clone();
                info.redis.protocol = ProtocolVersion::RESP3;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(COMMAND_TIMEOUT)
                    .set_response_timeout(COMMAND_TIMEOUT)
                    .set_push_sender(pushes);
                Client::open(info)?
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Connection::Multiplexed)
            }
            Servers::Cluster(nodes) => cluster_builder(nodes)
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(pushes)
                .build()?
                .get_async_connection()
                .await
                .map(Connection::Cluster),
        }
    }

    async fn connection(&self) -> RedisResult<Connection> {
        self.commands
            .get_or_try_init(|| async {
                match &self.servers {
                    Servers::Single(client) => {
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(COMMAND_TIMEOUT)
                            .set_response_timeout(COMMAND_TIMEOUT)
                            // A command waits for at most one reconnection attempt; later
                            // commands trigger the next ones.
                            .set_number_of_retries(1);
                        ConnectionManager::new_with_config(client.clone(), config)
                            .await
                            .map(Connection::Manager)
                    }
                    Servers::Cluster(nodes) => cluster_builder(nodes)
                        .build()?
                        .get_async_connection()
                        .await
                        .map(Connection::Cluster),
                }
            })
            .await
            .cloned()
    }

    fn is_cluster(&self) -> bool {
        matches!(self.servers, Servers::Cluster(_))
    }

    /// Runs commands on the shared connection, recording whether Redis answered.
    async fn run<T, F, Fut>(&self, commands: F) -> Result<T, StoreError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let result = match self.connection().await {
            Ok(connection) => commands(connection).await,
            Err(error) => Err(error),
        };
        match result {
            Ok(value) => {
                if self.health.up() {
                    self.epoch.fetch_add(1, Ordering::AcqRel);
                }
                Ok(value)
            }
            Err(error) => {
                // A reply error (a bug of ours, or a misconfigured server) is not an outage.
                if is_outage(&error) {
                    self.health.down(&error);
                }
                Err(StoreError::Unavailable(format!("Redis: {error}")))
            }
        }
    }

    /// The cookie key every worker and host on this Redis signs with: `candidate` if none is
    /// stored yet under `P:cookie-key` (the first to ask stores it, `SET NX`), else the stored
    /// one. So hosts that share a Redis accept each other's logins with no key to distribute.
    pub async fn shared_secret(&self, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let key = self.key(&["cookie-key"]);
        self.run(|mut connection| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(candidate)
                .arg("NX")
                .exec_async(&mut connection)
                .await?;
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Vec<u8>>(&mut connection)
                .await
        })
        .await
    }

    /// `P:part:part...`, for keys and channels used alone.
    fn key(&self, parts: &[&str]) -> String {
        join_key(&self.config.prefix, parts)
    }

    /// `M:part:part...`, for the keys the room scripts touch together (see the module doc).
    fn member_key(&self, parts: &[&str]) -> String {
        join_key(&self.member_prefix, parts)
    }
}

fn join_key(prefix: &str, parts: &[&str]) -> String {
    let mut key = prefix.to_owned();
    for part in parts {
        key.push(':');
        key.push_str(part);
    }
    key
}

/// How a worker reaches Redis.
enum Servers {
    Single(Client),
    /// The nodes given in the configuration; the cluster connection finds the others.
    Cluster(Vec<ConnectionInfo>),
}

fn cluster_builder(nodes: &[ConnectionInfo]) -> ClusterClientBuilder {
    ClusterClientBuilder::new(nodes.to_vec())
        .connection_timeout(COMMAND_TIMEOUT)
        .response_timeout(COMMAND_TIMEOUT)
        // Enough to follow a MOVED redirection after a resharding; an outage fails fast.
        .retries(2)
}

/// A connection to one server or to a cluster, so the store and the bus run the same commands
/// on either.
#[derive(Clone)]
enum Connection {
    /// The command connection to one server.
    Manager(ConnectionManager),
    /// The subscriber's connection to one server.
    Multiplexed(MultiplexedConnection),
    /// Either, on a cluster: it routes each command, or pipeline, by its keys' slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Manager(c) => c.req_packed_command(cmd),
            Connection::Multiplexed(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Manager(c) => c.get_db(),
            Connection::Multiplexed(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

fn is_outage(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
}

/// Whether a connection works, so that an outage is logged once when it starts and once when it
/// ends, not on every failed command.
struct Health {
    what: &'static str,
    /// [`UNKNOWN`], [`UP`] or [`DOWN`].
    state: AtomicU8,
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

impl Health {
    fn new(what: &'static str) -> Self {
        Health {
            what,
            state: AtomicU8::new(UNKNOWN),
        }
    }

    /// Records a success; true when the connection was not known to work before.
    fn up(&self) -> bool {
        match self.state.swap(UP, Ordering::AcqRel) {
            UP => false,
            DOWN => {
                tracing::info!(connection = self.what, "Redis is reachable again");
                true
            }
            _ => {
                tracing::info!(connection = self.what, "connected to Redis");
                true
            }
        }
    }

    /// Whether the last command failed for an outage (and none succeeded since).
    fn is_down(&self) -> bool {
        self.state.load(Ordering::Acquire) == DOWN
    }

    fn down(&self, error: &dyn std::fmt::Display) {
        if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
            tracing::warn!(
                connection = self.what,
                %error,
                "Redis is unavailable: broadcasts reach this worker only and shared state \
                 fails until it is back; retrying"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_a_cluster_the_keys_the_room_scripts_share_carry_one_hash_tag() {
        let single = RedisLink::new(RedisConfig::new("redis://127.0.0.1:1")).unwrap();
        assert_eq!(single.member_key(&["rooms"]), "chatctl:rooms");
        let cluster = RedisLink::new(RedisConfig {
            cluster: true,
            ..RedisConfig::new("redis://127.0.0.1:1, redis://127.0.0.1:2")
        })
        .unwrap();
        assert_eq!(
            cluster.member_key(&["room", "lobby", "users"]),
            "{chatctl}:room:lobby:users"
        );
        // Sessions, histories and channels are spread over the slots.
        assert_eq!(cluster.key(&["session", "s"]), "chatctl:session:s");
    }

    #[test]
    fn several_urls_need_the_cluster_mode() {
        assert!(validate_url("redis://a:1,redis://b:2").is_ok());
        assert!(validate_url("redis://a:1,nonsense").is_err());
        assert!(matches!(
            RedisLink::new(RedisConfig::new("redis://a:1,redis://b:2")),
            Err(RedisSetupError::SeveralUrls { .. })
        ));
    }
}

//! A worker's connections to Redis, one server or a cluster: the command connection its store
//! and its bus share, the subscriber's, and whether Redis answers.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncCommands, AsyncConnectionConfig, Client, Cmd, ConnectionInfo, Pipeline, ProtocolVersion,
    PushInfo, RedisFuture, RedisResult, Value,
};
use supervisor::drops::Drops;
use supervisor::worker_stats::{Timer, Timings, ROUND_TRIP_BOUNDS};
use tokio::sync::mpsc;

use super::{node_urls, RedisConfig, RedisError};

/// How long a command, or a connection attempt, may take before it counts as Redis being down.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// A worker's access to Redis, shared by its store and its bus.
pub struct RedisLink {
    pub(super) config: RedisConfig,
    /// For the command connection (RESP2) and, switched to RESP3, the subscriber's.
    servers: Servers,
    /// Made on the first command, so a worker starts while Redis is down; once made, the
    /// connection reconnects by itself (a failed command triggers the reconnection).
    pub(super) commands: tokio::sync::OnceCell<Connection>,
    /// Starts the keys that the room scripts touch together: `{P}` on a cluster, `P` otherwise.
    pub(super) member_prefix: String,
    /// Names this worker in the broadcasts it publishes, so it skips them when they come back.
    pub(super) uid: String,
    pub(super) health: Health,
    /// Goes up each time the command connection works again after a failure: the store then
    /// re-asserts this worker's room members, which a restarted Redis has forgotten.
    pub(super) epoch: AtomicU64,
    /// Broadcasts and history entries its bus and store could not get to Redis.
    pub(super) drops: Arc<Drops>,
    /// How long each `run` of commands took, answered or not (the master's metrics).
    round_trips: Timer,
}

impl RedisLink {
    pub fn new(config: RedisConfig) -> Result<Arc<Self>, RedisError> {
        let invalid = |source| RedisError::InvalidUrl {
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
                return Err(RedisError::SeveralUrls {
                    urls: config.url.clone(),
                });
            };
            let client = Client::open(info).map_err(invalid)?;
            (Servers::Single(client), config.prefix.clone())
        };
        let drops = Arc::new(Drops::new(config.drop_log_interval));
        Ok(Arc::new(RedisLink {
            config,
            servers,
            member_prefix,
            commands: tokio::sync::OnceCell::new(),
            uid: engineio::generate_sid(""),
            health: Health::new("commands"),
            epoch: AtomicU64::new(0),
            drops,
            round_trips: Timer::new(&ROUND_TRIP_BOUNDS),
        }))
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Whether the command connection works (`None` before its first command), and how many
    /// of its commands failed for an outage so far: for the master's metrics.
    pub fn connection_state(&self) -> (Option<bool>, u64) {
        let state = match self.health.state.load(Ordering::Acquire) {
            UP => Some(true),
            DOWN => Some(false),
            _ => None,
        };
        (state, self.health.errors.load(Ordering::Relaxed))
    }

    /// How long its runs of commands took so far.
    pub fn round_trips(&self) -> Timings {
        self.round_trips.timings()
    }

    /// What this worker's bus and store dropped, by cause: `redis_publish_queue_full`,
    /// `redis_publish_failed`, `history_queue_full`, `history_write_failed`.
    pub fn drops(&self) -> &Arc<Drops> {
        &self.drops
    }

    /// The subscriber's connection: RESP3, whose push messages (sent to `pushes`) let one
    /// multiplexed connection take (S)SUBSCRIBE replies and messages alike. On a cluster, each
    /// (S)SUBSCRIBE goes to the node owning its channel's slot.
    pub(super) async fn subscriber(
        &self,
        pushes: mpsc::UnboundedSender<PushInfo>,
    ) -> RedisResult<Connection> {
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

    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.servers, Servers::Cluster(_))
    }

    /// Runs commands on the shared connection, recording whether Redis answered.
    pub(super) async fn run<T, F, Fut>(&self, commands: F) -> Result<T, RedisError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let began = std::time::Instant::now();
        let result = match self.connection().await {
            Ok(connection) => commands(connection).await,
            Err(error) => Err(error),
        };
        self.round_trips.observe(began.elapsed());
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
                Err(RedisError::Command(error))
            }
        }
    }

    /// The cookie key every worker and host on this Redis signs with: `candidate` if none is
    /// stored yet under `P:cookie-key` (the first to ask stores it, `SET NX`), else the stored
    /// one. So hosts that share a Redis accept each other's logins with no key to distribute.
    pub async fn shared_secret(&self, candidate: &[u8]) -> Result<Vec<u8>, RedisError> {
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

    /// How many workers other than this one are alive: those in `M:workers` whose liveness key has
    /// not lapsed (a dead one stays in the set until a heartbeat reaps it). Workers register there
    /// through their [`super::RedisStore`] (on a join and on each heartbeat).
    pub(super) async fn other_live_workers(&self) -> Result<usize, RedisError> {
        let workers = self.member_key(&["workers"]);
        let others: Vec<String> = self
            .run(|mut c| async move { c.smembers::<_, Vec<String>>(workers).await })
            .await?
            .into_iter()
            .filter(|uid| *uid != self.uid)
            .collect();
        if others.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        for uid in &others {
            pipe.exists(self.member_key(&["worker", uid, "alive"]));
        }
        let alive: Vec<bool> = self
            .run(|mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        Ok(alive.into_iter().filter(|alive| *alive).count())
    }

    /// `P:part:part...`, for keys and channels used alone.
    pub(super) fn key(&self, parts: &[&str]) -> String {
        join_key(&self.config.prefix, parts)
    }

    /// `M:part:part...`, for the keys the room scripts touch together (see the module doc).
    pub(super) fn member_key(&self, parts: &[&str]) -> String {
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
pub(super) enum Connection {
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
pub(super) struct Health {
    what: &'static str,
    /// [`UNKNOWN`], [`UP`] or [`DOWN`].
    state: AtomicU8,
    /// Failures seen, for the master's metrics (`redis_errors`).
    errors: AtomicU64,
}

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

impl Health {
    pub(super) fn new(what: &'static str) -> Self {
        Health {
            what,
            state: AtomicU8::new(UNKNOWN),
            errors: AtomicU64::new(0),
        }
    }

    /// Records a success; true when the connection was not known to work before.
    pub(super) fn up(&self) -> bool {
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
    pub(super) fn is_down(&self) -> bool {
        self.state.load(Ordering::Acquire) == DOWN
    }

    pub(super) fn down(&self, error: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
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
}

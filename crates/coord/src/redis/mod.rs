//! The Redis bus and store (DESIGN §6), for several machines or when the master should not
//! carry the traffic. Each worker holds one [`RedisLink`]: a multiplexed command connection
//! that its [`RedisStore`] and its broadcast publisher share, and (in [`RedisBus`]) one
//! subscriber connection.
//!
//! Keys and channels (`P` is [`RedisConfig::prefix`]):
//! - `P:session:ID` -> nickname, with the session's TTL;
//! - `P:room:ROOM:users` (hash nickname -> sockets of it in the room), `P:room:ROOM:sockets`
//!   (hash socket -> nickname), `P:rooms` (set of rooms with users), changed by Lua scripts so
//!   that concurrent joins and leaves from several workers keep the counts exact;
//! - `P:history:ROOM`, a list capped by `LTRIM`;
//! - `P:workers` (set of worker uids), `P:worker:UID:alive` (renewed by the worker's heartbeat,
//!   with a TTL) and `P:worker:UID:members` (its `socket room` pairs): when a worker's liveness
//!   key lapses, another worker removes its members and tells their rooms who left;
//! - `P:bc:NS` carries broadcasts to a whole namespace or to several rooms, `P:bc:NS:ROOM` those
//!   to one room. Each worker subscribes to the namespace channels and to the channels of the
//!   rooms it has members in, so a room's traffic reaches only the workers that need it. Every
//!   name is its own channel, so with [`RedisConfig::sharded`] (SPUBLISH/SSUBSCRIBE, Redis 7)
//!   rooms spread over the shards of a cluster.
//!
//! Needs Redis 6.2 or later (RESP3 push messages for the subscriber, `SET .. GET` for the
//! heartbeat); Redis 7 for sharded pub/sub. Connecting to a Redis Cluster is not supported yet:
//! the room scripts touch keys of several hash slots.
//!
//! When Redis is down, store operations fail with [`chat::StoreError::Unavailable`] and
//! broadcasts reach this worker's sockets only; the connections come back by themselves, the
//! subscriber resubscribes and the store re-asserts the room members of this worker.

mod bus;
mod store;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use chat::StoreError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, ProtocolVersion, RedisResult};

pub use bus::{RedisAdapter, RedisBus};
pub use store::RedisStore;

/// Where Redis is and how this app's keys and channels are named there.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Starts every key and channel, so several apps can share one Redis.
    pub prefix: String,
    /// Sharded pub/sub (SPUBLISH/SSUBSCRIBE, Redis 7) instead of PUBLISH/SUBSCRIBE.
    pub sharded: bool,
    /// A worker that has not renewed its liveness key for this long is dead: another worker
    /// removes its room members. It renews every third of this.
    pub worker_ttl: Duration,
}

impl RedisConfig {
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            prefix: "chatctl".into(),
            sharded: false,
            worker_ttl: Duration::from_secs(15),
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
}

/// Checks a Redis URL without connecting (for command-line flags).
pub fn validate_url(url: &str) -> Result<(), RedisSetupError> {
    url.into_connection_info()
        .map(drop)
        .map_err(|source| RedisSetupError::InvalidUrl {
            url: url.to_owned(),
            source,
        })
}

/// How long a command, or a connection attempt, may take before it counts as Redis being down.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// A worker's access to Redis, shared by its store and its bus.
pub struct RedisLink {
    config: RedisConfig,
    /// For the command connection (RESP2) and, switched to RESP3, the subscriber's.
    client: Client,
    /// Made on the first command, so a worker starts while Redis is down; once made, the manager
    /// reconnects by itself (a failed command triggers the reconnection).
    commands: tokio::sync::OnceCell<ConnectionManager>,
    /// Names this worker in the broadcasts it publishes, so it skips them when they come back.
    uid: String,
    health: Health,
    /// Goes up each time the command connection works again after a failure: the store then
    /// re-asserts this worker's room members, which a restarted Redis has forgotten.
    epoch: AtomicU64,
}

impl RedisLink {
    pub fn new(config: RedisConfig) -> Result<std::sync::Arc<Self>, RedisSetupError> {
        let invalid = |source| RedisSetupError::InvalidUrl {
            url: config.url.clone(),
            source,
        };
        let info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(invalid)?;
        let client = Client::open(info).map_err(invalid)?;
        Ok(std::sync::Arc::new(RedisLink {
            config,
            client,
            commands: tokio::sync::OnceCell::new(),
            uid: engineio::generate_sid(""),
            health: Health::new("commands"),
            epoch: AtomicU64::new(0),
        }))
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// A client for the subscriber connection: RESP3, whose push messages let one multiplexed
    /// connection take (S)SUBSCRIBE replies and messages alike.
    fn subscriber_client(&self) -> RedisResult<Client> {
        let mut info = self.client.get_connection_info().clone();
        info.redis.protocol = ProtocolVersion::RESP3;
        Client::open(info)
    }

    async fn connection(&self) -> RedisResult<ConnectionManager> {
        self.commands
            .get_or_try_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(COMMAND_TIMEOUT)
                    .set_response_timeout(COMMAND_TIMEOUT)
                    // A command waits for at most one reconnection attempt; later commands
                    // trigger the next ones.
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(self.client.clone(), config)
            })
            .await
            .cloned()
    }

    /// Runs commands on the shared connection, recording whether Redis answered.
    async fn run<T, F, Fut>(&self, commands: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
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

    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.config.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
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

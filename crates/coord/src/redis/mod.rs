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
mod error;
mod link;
mod query;
mod recovery;
mod store;
mod subscriber;

use std::time::Duration;

use redis::{ConnectionInfo, IntoConnectionInfo};

pub use bus::{RedisAdapter, RedisBus};
pub use error::RedisError;
pub use link::RedisLink;
pub use recovery::RedisSessionStore;
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

/// Checks a Redis URL, or a comma-separated list of a cluster's node URLs, without connecting
/// (for command-line flags).
pub fn validate_url(url: &str) -> Result<(), RedisError> {
    node_urls(url).map(drop)
}

/// The connection details of each comma-separated URL in `urls`.
fn node_urls(urls: &str) -> Result<Vec<ConnectionInfo>, RedisError> {
    urls.split(',')
        .map(|url| {
            url.trim()
                .into_connection_info()
                .map_err(|source| RedisError::InvalidUrl {
                    url: url.to_owned(),
                    source,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_urls_need_the_cluster_mode() {
        assert!(validate_url("redis://a:1,redis://b:2").is_ok());
        assert!(validate_url("redis://a:1,nonsense").is_err());
        assert!(matches!(
            RedisLink::new(RedisConfig::new("redis://a:1,redis://b:2")),
            Err(RedisError::SeveralUrls { .. })
        ));
    }
}

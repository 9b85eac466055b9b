//! Coordination between the workers of one app (DESIGN §6), in two layers:
//! - the bus: broadcasts go through one Socket.IO adapter, [`RemoteAdapter`], which also hands
//!   them to the other workers through a [`Driver`]: [`MasterBus`] (the master relays, for one
//!   machine and no Redis) or the Redis channels of a [`RedisBus`] (for several machines);
//! - the store: shared state goes through a [`chat::Store`] that lives in one place for all
//!   workers: a [`chat::MemoryStore`] inside the master ([`StoreService`], asked by each
//!   worker's [`EmbeddedStore`] over its IPC channel), or Redis keys ([`RedisStore`]).
//!
//! Both Redis layers share a worker's [`RedisLink`]; its [`RedisError`] is the chat's
//! [`chat::StoreError`] only for the store.

pub mod embedded;
pub mod redis;
mod remote;
mod wire;

pub use embedded::{EmbeddedAdapter, EmbeddedStore, MasterBus, MasterSessionStore, StoreService};
pub use redis::{RedisAdapter, RedisBus, RedisConfig, RedisError, RedisLink, RedisStore};
pub use remote::{Driver, RemoteAdapter};

/// A duration in a store request or a Redis TTL, in milliseconds, saturating (a `u64` of
/// milliseconds is half a billion years).
pub(crate) fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

//! Coordination between the workers of one app (DESIGN §6). Broadcasts go through a Socket.IO
//! [`socketio::Adapter`] that also publishes them to the other workers; shared state goes
//! through a [`chat::Store`] that lives in one place for all workers.
//!
//! The embedded implementation, for one machine and no Redis, uses the master: workers publish
//! over their IPC channel and the master relays; the store is a [`chat::MemoryStore`] inside the
//! master, asked over the same channel. The Redis implementation ([`redis`]) does the same
//! through Redis pub/sub and keys, for workers on several machines.

pub mod embedded;
pub mod redis;
mod wire;

pub use embedded::{EmbeddedAdapter, EmbeddedStore, StoreService};
pub use redis::{RedisAdapter, RedisBus, RedisConfig, RedisLink, RedisSetupError, RedisStore};

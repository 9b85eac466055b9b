//! The embedded bus and store, for one machine and no Redis: through the master, over each
//! worker's IPC channel. A worker's [`EmbeddedAdapter`]s publish to the master, which relays to
//! the other workers ([`MasterBus`]); its [`EmbeddedStore`] asks the master's one
//! [`StoreService`], which every worker shares.

mod bus;
mod recovery;
mod service;
mod store;
mod store_op;

pub use bus::{deliver_remote_broadcasts, EmbeddedAdapter, MasterBus};
pub use recovery::{MasterSessionStore, RecoveryService};
pub use service::StoreService;
pub use store::EmbeddedStore;

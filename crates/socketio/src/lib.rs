//! Socket.IO v5 server on [`engineio`]: the packet codec, namespaces (static and dynamic),
//! connect middlewares, events and acks in both directions, binary attachments, rooms and
//! broadcasts through a pluggable [`Adapter`].
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let io = socketio::SocketIo::new(Default::default());
//! io.ns("/", |socket| async move {
//!     socket.on("chat", |socket, event| async move {
//!         let text: String = event.data().unwrap_or_default();
//!         let _ = socket.broadcast().emit("chat", &text);
//!     });
//! });
//! io.serve(tokio::net::TcpListener::bind("127.0.0.1:3000").await?).await
//! # }
//! ```

mod adapter;
mod broadcast;
mod config;
mod connection;
mod counters;
mod error;
mod event;
mod handoff;
mod handshake;
mod namespace;
pub mod packet;
mod reassembly;
mod recovery;
mod server;
mod small_set;
mod socket;

use std::sync::Arc;

pub use adapter::{Adapter, BroadcastOptions, LocalAdapter, SocketInfo};
pub use broadcast::BroadcastOperator;
pub use config::{AdapterFactory, SocketIoConfig};
pub use counters::{broadcast_counts, BroadcastCounts};
pub use error::{AckError, ConnectError, EmitError};
pub use event::{AckResponse, AckSender, Event};
pub use handshake::{cookie, Handshake};
pub use namespace::Namespace;
pub use recovery::{
    Audience, Digest, EventSnapshot, KeptSnapshot, LocalStore, LogBounds, LogSnapshot, LogStats,
    Mark, Own, Owner, RecoveryConfig, RecoveryLog, RecoveryStats, RestoreRequest, Restored,
    Sequenced, SessionRecord, SessionStore, SnapshotError, StoreFactory,
};
pub use server::{Dispatcher, SocketIo};
pub use socket::{DisconnectReason, Socket};

/// A socket id (also the name of the socket's own room).
pub type Sid = Arc<str>;
/// A room name.
pub type Room = Arc<str>;

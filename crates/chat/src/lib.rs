//! The chat application (DESIGN §7): pages, signed session cookies, rooms and presence, the
//! book's Socket.IO events, and our browser client. All shared state goes through [`Store`], and
//! all broadcasts through the Socket.IO adapter, so several workers can share them.

mod config;
mod connection_slot;
pub mod cookie;
mod departure;
mod events;
mod expiry;
mod forward;
mod login_budget;
pub mod pages;
mod rate_limit;
mod rooms;
mod routes;
mod secret;
mod server;
pub mod store;
pub mod validate;

pub use config::ChatConfig;
pub use departure::Departure;
pub use forward::{Connecting, Peers};
pub use rooms::{room_key, COM, INFRA};
pub use secret::{cookie_key, load_or_create_secret, new_secret, SecretError, MIN_SECRET_LEN};
pub use server::{Accept, ChatServer, Origin};
pub use store::{
    HistoryLimits, MemoryStore, RoomRecord, Session, SessionRecord, Store, StoreError,
};

/// Our browser Socket.IO client, served at `/socket.io/socket.io.js`.
pub const CLIENT_JS: &str = include_str!("../assets/socket.io.js");

//! The book's own protocol, Socket.IO 0.9 (its chapter 5), served on the same port as v4.
//!
//! A 0.9 client handshakes with `GET /socket.io/1/`, gets `sid:heartbeat:close:transports`, and
//! talks over `/socket.io/1/websocket/SID` or `/socket.io/1/xhr-polling/SID` in messages
//! `type:id:endpoint:data`. Each 0.9 session is an ordinary Engine.IO session of the v4 server
//! carried by an external transport ([`engineio::Engine::open_external`]): its messages are
//! translated to and from Socket.IO v5 packets, so 0.9 clients join the same namespaces, rooms
//! and adapter as v4 clients, and the application cannot tell them apart.

mod config;
mod endpoint;
mod error;
pub mod framing;
pub mod message;
mod session;
mod translate;
mod transport;

pub use config::LegacyConfig;
pub use endpoint::{Authorize, LegacyEndpoint};
pub use error::CodecError;

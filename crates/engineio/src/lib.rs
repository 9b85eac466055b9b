//! Engine.IO v4 server: the transport layer under Socket.IO.
//!
//! A session starts with a handshake over HTTP long-polling or a websocket, may upgrade from
//! polling to websocket, is kept alive by server pings, and carries text and binary messages.
//! This crate knows nothing of Socket.IO: the layer above implements [`Handler`].

// A refused request is returned as `Err(Response)`: the ready HTTP answer, built once and handed
// to hyper as is. Boxing it would add an allocation to every refusal and gain nothing.
#![allow(clippy::result_large_err)]

mod body;
mod config;
mod counters;
mod engine;
mod external;
mod flush;
mod handoff;
mod heartbeat;
mod log_throttle;
mod packet;
mod pending;
mod router;
mod sid;
mod socket;
mod transport;

pub use body::{read_body, BodyError};
pub use config::{CorsPolicy, EngineConfig};
pub use counters::{packet_counts, PacketCounts, Sharded};
pub use engine::{unknown_session, Body, Engine, Handler};
pub use external::ExternalWebSocket;
pub use flush::FlushPass;
pub use handoff::{
    Base64, Departure, DepartureError, Departures, DetachStream, RecordError, RecordFrame,
    SessionRecord, MAX_RECORD_BYTES,
};
pub use log_throttle::LogThrottle;
pub use packet::{decode_payload, Frame, Message, Packet, PacketError, RECORD_SEPARATOR};
pub use pending::PeerAddr;
pub use sid::generate_sid;
pub use socket::{DisconnectReason, SendError, SessionRequest, Socket, Transport};
pub use transport::ws::TcpConnection;

/// UTF-8 text that clones without copying; what websocket text frames are made of.
pub use tokio_tungstenite::tungstenite::Utf8Bytes as Str;

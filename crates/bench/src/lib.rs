//! `chat-bench`: a load generator for Socket.IO v5 chat servers (ours, Node's socket.io 4.x,
//! socketioxide) serving the chat's `/chat_infra` and `/chat_com` events.
//!
//! Each simulated user is one task holding one Engine.IO session (websocket or long-polling)
//! written from the protocol. Messages carry a stamp (sender, sequence number, phase, send
//! time) so that receivers measure end-to-end latency and count every delivery, and a run ends
//! in a [`Report`] saying what was lost.

mod client;
pub mod config;
mod error;
pub mod net;
pub mod process_usage;
pub mod protocol;
mod recovery;
pub mod report;
mod run;
pub mod stats;
mod transport;

pub use config::{BenchConfig, Fault, Scenario, Target, TransportChoice};
pub use error::BenchError;
pub use report::Report;
pub use run::{run, Control};

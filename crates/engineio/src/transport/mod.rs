//! The two ways a session reaches its client.

pub(crate) mod polling;
pub(crate) mod websocket;
pub(crate) mod ws;

//! The two 0.9 transports served: xhr-polling and websocket.

pub(crate) mod polling;
pub(crate) mod ws;

//! The one error type of the load generator.

use std::net::SocketAddr;

/// Why a client could not connect, join or keep its connection, or why a run cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("login refused: HTTP {status} without a session cookie")]
    Login { status: u16 },
    #[error("Engine.IO handshake refused: HTTP {status}")]
    Handshake { status: u16 },
    #[error("unexpected packet from the server: {0}")]
    Protocol(String),
    #[error("namespace {namespace} refused the connection: {reason}")]
    ConnectRefused { namespace: String, reason: String },
    #[error("the server sent an error event: {0}")]
    ErrorEvent(String),
    #[error("the server closed the connection")]
    Closed,
    #[error("timed out after {after:?} waiting for {waiting_for}")]
    Timeout {
        after: std::time::Duration,
        waiting_for: &'static str,
    },
    #[error("{0}")]
    Setup(String),
}

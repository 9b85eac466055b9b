//! The errors of the proxy.

/// Why the proxy could not start or a request could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("LISTEN_FDS={0}: expected exactly one inherited socket")]
    InheritedSockets(String),
    #[error("no backends: give at least one --backend HOST:PORT=NODE_ID")]
    NoBackends,
    #[error("node id {0} is given to two backends; each sid names one node, so ids must differ")]
    DuplicateNode(u16),
    #[error("cannot connect to backend {address}: {reason}")]
    Connect { address: String, reason: String },
    #[error("backend {address} failed the request: {reason}")]
    Backend { address: String, reason: String },
    #[error("backend {address} did not answer within {timeout:?}")]
    Timeout {
        address: String,
        timeout: std::time::Duration,
    },
    #[error("the client did not send its request body within {timeout:?}")]
    SlowBody { timeout: std::time::Duration },
}

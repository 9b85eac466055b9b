//! What goes wrong with Redis, for the bus and the store alike. The store turns it into the
//! chat's own error (see `store.rs`), so the link and the bus need nothing of the chat.

/// Why Redis cannot be set up, or did not carry out a command.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("invalid Redis URL '{url}' (expected redis://[user:password@]host:port[/db])")]
    InvalidUrl {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("several Redis URLs '{urls}' but no cluster: name one server, or turn the cluster mode on (chatctl serve --redis-cluster)")]
    SeveralUrls { urls: String },
    /// Redis is unreachable, timed out, or refused the command. The text is Redis's own,
    /// not a source of this error, so that it is printed once.
    #[error("Redis: {0}")]
    Command(redis::RedisError),
}

//! The errors of the Socket.IO layer.

/// Why an emit did not reach its client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EmitError {
    #[error("the data could not be serialized to JSON: {0}")]
    Serialize(String),
    #[error("the socket is disconnected")]
    Disconnected,
    /// A broadcast reached this process's sockets, but could not be passed on to the other
    /// processes of the app (their sockets miss it).
    #[error("not passed on to the other workers: {0}")]
    NotRelayed(String),
}

/// Why an `emit_with_ack` got no answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AckError {
    #[error(transparent)]
    Emit(#[from] EmitError),
    #[error("no acknowledgement within the timeout")]
    Timeout,
    #[error("the socket disconnected before it acknowledged")]
    Disconnected,
}

/// A refusal of a namespace connection, sent to the client as CONNECT_ERROR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConnectError {
    /// What the client sees as `err.message`.
    pub message: String,
    /// Optional details, as `err.data`.
    pub data: Option<serde_json::Value>,
}

impl ConnectError {
    pub fn new(message: impl Into<String>) -> Self {
        ConnectError {
            message: message.into(),
            data: None,
        }
    }

    pub(crate) fn to_json(&self) -> String {
        let mut body = serde_json::json!({ "message": self.message });
        if let Some(data) = &self.data {
            body["data"] = data.clone();
        }
        body.to_string()
    }
}

//! The errors of the Socket.IO 0.9 endpoint.

/// Why text from a 0.9 client is not a valid message or payload. Any of these closes that
/// client's session, and only it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("message without the `type:id:endpoint` header")]
    MissingHeader,
    #[error("unknown message type {0:?} (0.9 types are 0 to 8)")]
    UnknownType(String),
    #[error("invalid message id {0:?}")]
    InvalidId(String),
    #[error("invalid JSON in a {0} message")]
    InvalidJson(&'static str),
    #[error("event message without a string `name`")]
    MissingEventName,
    #[error("invalid ack data {0:?} (expected `<id>` or `<id>+[args]`)")]
    InvalidAck(String),
    #[error("invalid endpoint {0:?} (a namespace path such as `/chat_com`)")]
    InvalidEndpoint(String),
    #[error("payload frame without its `\\u{{fffd}}<length>\\u{{fffd}}` header")]
    BadFrameHeader,
    #[error("payload frame length {0:?} is not a number within the payload")]
    BadFrameLength(String),
}

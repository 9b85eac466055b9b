//! Reading a whole request body, bounded in size and in time. hyper's header read timeout ends
//! a client that never finishes its request head; nothing ends one that sends a body a byte at
//! a time (a slow POST), which would hold its connection, and a polling session's POST slot,
//! for as long as it likes. Every body the server reads whole goes through here.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};

/// Why a request body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the request body did not arrive within {deadline:?}")]
    TooSlow { deadline: Duration },
    #[error("the request body could not be read: {0}")]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl BodyError {
    /// The HTTP status that tells the client what went wrong.
    pub fn status(&self) -> http::StatusCode {
        match self {
            BodyError::TooLarge { .. } => http::StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TooSlow { .. } => http::StatusCode::REQUEST_TIMEOUT,
            BodyError::Failed(_) => http::StatusCode::BAD_REQUEST,
        }
    }
}

/// The whole of `body`: at most `limit` bytes, all of them within `deadline`.
pub async fn read_body<B>(body: B, limit: usize, deadline: Duration) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
        Err(_) => Err(BodyError::TooSlow { deadline }),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            Err(BodyError::TooLarge { limit })
        }
        Ok(Err(error)) => Err(BodyError::Failed(error)),
    }
}

//! The control socket: how `chatctl` talks to a running master. One JSON request line, then
//! JSON response lines (progress lines, then one final answer). The socket is 0600.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

use crate::ipc::{message_lines, read_message, write_message};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Replace every worker, one at a time; with `config`, the replacements run those
    /// settings; with `env`, they start from that environment instead of the master's.
    Reload {
        #[serde(default)]
        config: Option<Box<crate::AppConfig>>,
        #[serde(default)]
        env: Option<Vec<(String, String)>>,
    },
    Restart,
    Scale {
        instances: usize,
    },
    /// Send a signal to every worker's process, or to worker `worker`'s.
    Signal {
        signal: crate::SignalName,
        worker: Option<usize>,
    },
    Stop,
    /// Start a new master from `binary` (else the file this one was started from), hand it
    /// the listening socket, and exit once its workers are online (see `crate::upgrade`).
    /// The new master has `timeout_ms` to get there, else it is stopped and this one stays.
    Upgrade {
        #[serde(default)]
        binary: Option<std::path::PathBuf>,
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Status(AppStatus),
    /// A step of a longer operation (reload prints one per worker).
    Progress {
        line: String,
    },
    Done {
        message: String,
    },
    Error {
        message: String,
    },
}

/// A running app as `list` and `status` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub master_pid: u32,
    /// The build the master runs: `VERSION+FINGERPRINT` (see `crate::version`).
    #[serde(default)]
    pub version: String,
    pub listen: String,
    pub scheduling: String,
    pub uptime_ms: u64,
    pub workers: Vec<WorkerStatus>,
    /// Warm workers waiting to take a place (`--spare`).
    #[serde(default)]
    pub spares: Vec<SpareStatus>,
    /// What the master's service keeps for connection-state recovery, by namespace: events
    /// and their bytes, sockets connected and kept for their clients to come back, events
    /// evicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<serde_json::Value>,
    /// Messages the master could not pass over the bridge between an upgrade's two masters
    /// (see `chatctl upgrade`), by cause.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub bridge_dropped: std::collections::BTreeMap<String, u64>,
}

/// A warm worker (`--spare`): started, given no connection until it takes a worker's place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpareStatus {
    pub pid: u32,
    /// Ready to take a place (else still starting).
    pub ready: bool,
    pub uptime_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: usize,
    pub pid: Option<u32>,
    pub status: Status,
    pub uptime_ms: u64,
    pub restarts: u32,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    pub connections: u64,
    /// How the session ids of its current process begin (`route_tag`).
    #[serde(default)]
    pub sid_tag: Option<String>,
    /// Why the worker last failed, for `list` and `status`.
    pub last_error: Option<String>,
    /// Messages lost by or for its current process, by cause: `relay_queue_full` (broadcasts
    /// of other workers it did not read in time), `store_write_failed` (its writes to the
    /// master's store), and what it reports itself (e.g. `redis_publish_failed`).
    #[serde(default)]
    pub dropped: BTreeMap<String, u64>,
    /// What connection-state recovery did in its current process (see
    /// [`crate::worker_stats::WorkerStats::recovery`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub recovery: BTreeMap<String, u64>,
}

/// A worker slot's state, as `list` shows it (kebab-case on the wire: `waiting-restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Launching,
    Online,
    Stopping,
    Stopped,
    WaitingRestart,
    Errored,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Launching => "launching",
            Status::Online => "online",
            Status::Stopping => "stopping",
            Status::Stopped => "stopped",
            Status::WaitingRestart => "waiting-restart",
            Status::Errored => "errored",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `{:<16}` in tables: pad like a string.
        f.pad(self.as_str())
    }
}

/// Why the control socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("app '{0}' is not running (no master answers at {1})")]
    NotRunning(String, String),
    #[error("the master of '{0}' closed the connection without an answer; see `chatctl logs {0}`")]
    NoAnswer(String),
    #[error("control socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// Sends a request and calls `on_progress` for each progress line; returns the final answer.
pub async fn request(
    name: &str,
    socket: &Path,
    request: &Request,
    mut on_progress: impl FnMut(&str),
) -> Result<Response, ControlError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|_| ControlError::NotRunning(name.to_owned(), socket.display().to_string()))?;
    let (read, mut write) = stream.into_split();
    write_message(&mut write, request).await?;
    // The master's answers: a status of up to 1024 workers is far below this.
    let mut lines = message_lines(read, 16 << 20);
    while let Ok(response) = read_message::<Response, _>(&mut lines).await {
        match response {
            Response::Progress { line } => on_progress(&line),
            other => return Ok(other),
        }
    }
    Err(ControlError::NoAnswer(name.to_owned()))
}

/// Whether a master answers on this socket right now.
pub async fn is_alive(socket: &Path) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(socket)).await,
        Ok(Ok(_))
    )
}

impl crate::ipc::Line for Request {}
impl crate::ipc::Line for Response {}

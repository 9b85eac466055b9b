//! The channel between the master and each worker: a socketpair inherited as fd 4
//! (`CHATCTL_IPC_FD`), carrying JSON lines. A worker that does not speak it (any program run
//! with `-- CMD`) is simply supervised by liveness.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The fd number of the IPC channel in a worker.
pub const IPC_FD: i32 = 4;
/// Names the IPC fd for the worker.
pub const IPC_FD_ENV: &str = "CHATCTL_IPC_FD";
/// The fd of the worker's private listening socket (health probes, forwarded requests).
pub const PRIVATE_SOCKET_ENV: &str = "CHATCTL_PRIVATE_FD";
/// The worker's slot number.
pub const WORKER_ID_ENV: &str = "CHATCTL_WORKER_ID";

/// From the master to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Answer with a pong carrying the same sequence number.
    Ping { seq: u64 },
    /// Stop accepting, let clients go (Socket.IO clients reconnect elsewhere), finish what is in
    /// flight within the timeout, then exit 0.
    Drain { timeout_ms: u64 },
}

/// From a worker to the master.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToMaster {
    /// Serving: the worker may receive traffic.
    Ready,
    Pong {
        seq: u64,
        connections: u64,
    },
}

/// Reads JSON lines of `T`; a line that does not parse is logged and skipped.
pub async fn read_message<T, R>(lines: &mut tokio::io::Lines<R>) -> Option<T>
where
    T: for<'de> Deserialize<'de>,
    R: tokio::io::AsyncBufRead + Unpin,
{
    loop {
        let line = lines.next_line().await.ok()??;
        match serde_json::from_str(&line) {
            Ok(message) => return Some(message),
            Err(error) => tracing::warn!(%error, "skipping a malformed IPC message"),
        }
    }
}

/// Writes one message as a JSON line.
pub async fn write_message<T: Serialize, W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    message: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await
}

/// The worker's side of the channel.
pub struct WorkerLink {
    stream: UnixStream,
}

/// What the worker does when the master asks it to drain.
pub type DrainRequest = Duration;

impl WorkerLink {
    /// The link inherited from a chatctl master, if this process is a worker.
    pub fn from_env() -> Option<WorkerLink> {
        let fd: i32 = std::env::var(IPC_FD_ENV).ok()?.parse().ok()?;
        // SAFETY: the master passed this fd for us alone (CHATCTL_IPC_FD); nothing else in the
        // process owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let std_stream = std::os::unix::net::UnixStream::from(owned);
        std_stream.set_nonblocking(true).ok()?;
        let stream = UnixStream::from_std(std_stream).ok()?;
        Some(WorkerLink { stream })
    }

    /// Reports ready, then answers pings until the master asks for a drain (returned) or goes
    /// away (None).
    pub async fn serve(self, connections: impl Fn() -> u64) -> Option<DrainRequest> {
        let (read, mut write) = self.stream.into_split();
        write_message(&mut write, &ToMaster::Ready).await.ok()?;
        let mut lines = BufReader::new(read).lines();
        while let Some(message) = read_message::<ToWorker, _>(&mut lines).await {
            match message {
                ToWorker::Ping { seq } => {
                    let pong = ToMaster::Pong {
                        seq,
                        connections: connections(),
                    };
                    write_message(&mut write, &pong).await.ok()?;
                }
                ToWorker::Drain { timeout_ms } => return Some(Duration::from_millis(timeout_ms)),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_json() {
        assert_eq!(
            serde_json::to_string(&ToWorker::Ping { seq: 3 }).unwrap(),
            r#"{"type":"ping","seq":3}"#
        );
        assert_eq!(
            serde_json::to_string(&ToMaster::Ready).unwrap(),
            r#"{"type":"ready"}"#
        );
        let pong: ToMaster =
            serde_json::from_str(r#"{"type":"pong","seq":1,"connections":7}"#).unwrap();
        assert_eq!(
            pong,
            ToMaster::Pong {
                seq: 1,
                connections: 7
            }
        );
    }

    #[tokio::test]
    async fn skips_malformed_lines() {
        let input: &[u8] = b"garbage\n{\"type\":\"ready\"}\n";
        let mut lines = BufReader::new(input).lines();
        assert_eq!(
            read_message::<ToMaster, _>(&mut lines).await,
            Some(ToMaster::Ready)
        );
        assert_eq!(read_message::<ToMaster, _>(&mut lines).await, None);
    }
}

//! The master's queue of lines for one worker's IPC channel. Two lanes: control (pings, replies
//! to the worker's requests, queries, drain) always goes out ahead of relayed broadcasts, so a
//! busy worker's health pings and store replies never wait behind, or get dropped with, a
//! broadcast storm. Each lane is bounded in bytes, so no worker can make the master hold more
//! than that for it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use crate::ipc::{ToWorker, BATCH_BYTES};

/// A serialized message with its newline; relays share one copy between workers.
pub type LineBytes = Arc<[u8]>;

/// Why a line was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The lane holds its bound of bytes already.
    Full,
    /// The channel is gone (the worker exited).
    Closed,
}

#[derive(Default)]
struct Lane {
    lines: VecDeque<LineBytes>,
    bytes: usize,
}

impl Lane {
    fn push(&mut self, line: LineBytes, limit: usize) -> Result<(), Refused> {
        if self.bytes.saturating_add(line.len()) > limit {
            return Err(Refused::Full);
        }
        self.bytes += line.len();
        self.lines.push_back(line);
        Ok(())
    }

    fn pop(&mut self) -> Option<LineBytes> {
        let line = self.lines.pop_front()?;
        self.bytes -= line.len();
        Some(line)
    }
}

#[derive(Default)]
struct Lanes {
    control: Lane,
    relays: Lane,
    closed: bool,
}

/// The queue; one writer task empties it ([`Outbox::write_to`]).
pub struct Outbox {
    lanes: Mutex<Lanes>,
    /// Wakes the writer; a permit is kept when it is not waiting yet.
    wake: Notify,
    /// Bytes each lane may hold.
    limit: usize,
}

impl Outbox {
    pub fn new(limit: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            lanes: Mutex::new(Lanes::default()),
            wake: Notify::new(),
            limit,
        })
    }

    /// Queues a control message ahead of every relay. `Full` means the worker has not read
    /// the answers to its own requests while it kept asking: it breaks the contract.
    pub fn control(&self, message: &ToWorker) -> Result<(), Refused> {
        let line = serde_json::to_vec(message).map_err(|_| Refused::Closed)?;
        self.control_line(line)
    }

    /// Queues a message already encoded as JSON (without its newline).
    pub fn control_line(&self, mut line: Vec<u8>) -> Result<(), Refused> {
        line.push(b'\n');
        self.push(line.into(), |lanes| &mut lanes.control)
    }

    /// Queues a relayed broadcast (a line made by [`relay_line`]). `Full` means the worker
    /// does not keep up: the caller drops it and counts.
    pub fn relay(&self, line: LineBytes) -> Result<(), Refused> {
        self.push(line, |lanes| &mut lanes.relays)
    }

    fn push(
        &self,
        line: LineBytes,
        lane: impl FnOnce(&mut Lanes) -> &mut Lane,
    ) -> Result<(), Refused> {
        {
            let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
            if lanes.closed {
                return Err(Refused::Closed);
            }
            lane(&mut lanes).push(line, self.limit)?;
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Refuses further lines and lets the writer end.
    pub fn close(&self) {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
        self.wake.notify_one();
    }

    /// Moves queued lines into `batch` (control first, about [`BATCH_BYTES`] at most), waiting
    /// for one when there is none. False once closed.
    async fn next_batch(&self, batch: &mut Vec<u8>) -> bool {
        loop {
            {
                let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
                if lanes.closed {
                    return false;
                }
                while batch.len() < BATCH_BYTES {
                    let Some(line) = lanes.control.pop().or_else(|| lanes.relays.pop()) else {
                        break;
                    };
                    batch.extend_from_slice(&line);
                }
                if !batch.is_empty() {
                    return true;
                }
            }
            self.wake.notified().await;
        }
    }

    /// Writes the queued lines to the worker until the outbox closes or a write fails.
    pub async fn write_to<W: tokio::io::AsyncWrite + Unpin>(&self, writer: &mut W) {
        let mut batch = Vec::new();
        while self.next_batch(&mut batch).await {
            if writer.write_all(&batch).await.is_err() {
                return;
            }
            batch.clear();
        }
    }
}

/// The line of a relayed broadcast, made once for every worker it goes to.
pub fn relay_line(body: &serde_json::value::RawValue) -> LineBytes {
    let mut line = Vec::with_capacity(body.get().len() + 32);
    line.extend_from_slice(br#"{"type":"message","body":"#);
    line.extend_from_slice(body.get().as_bytes());
    line.extend_from_slice(b"}\n");
    line.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn control_goes_out_before_queued_relays_and_relays_are_bounded() {
        let outbox = Outbox::new(100);
        let body = serde_json::value::to_raw_value(&"x".repeat(20)).unwrap();
        let relay = relay_line(&body);
        let mut queued = 0;
        while outbox.relay(relay.clone()).is_ok() {
            queued += 1;
        }
        assert_eq!(queued, 100 / relay.len());
        outbox.control(&ToWorker::Ping { seq: 7 }).unwrap();
        let mut batch = Vec::new();
        assert!(outbox.next_batch(&mut batch).await);
        let text = String::from_utf8(batch).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(r#"{"type":"ping","seq":7}"#));
        let relayed: ToWorker = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert!(matches!(relayed, ToWorker::Message { .. }));
        assert_eq!(lines.count(), queued - 1);
        // Written out, the lane takes lines again.
        assert!(outbox.relay(relay).is_ok());
        outbox.close();
        assert!(!outbox.next_batch(&mut Vec::new()).await);
        assert_eq!(
            outbox.control(&ToWorker::Ping { seq: 8 }),
            Err(Refused::Closed)
        );
    }
}

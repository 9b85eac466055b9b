//! The channel between the master and each worker: a socketpair inherited as fd 4
//! (`CHATCTL_IPC_FD`), carrying JSON lines. A worker that does not speak it (any program run
//! with `-- CMD`) is simply supervised by liveness.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::drops::Drops;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::lines::{self, BoundedLines};

/// From the master to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    /// Answer with a pong carrying the same sequence number.
    Ping { seq: u64 },
    /// Stop accepting, let clients go (Socket.IO clients reconnect elsewhere), finish what is in
    /// flight within the timeout, then exit 0. With `hand_off_to`, live sessions first move to
    /// that process (see [`crate::adoption`]), and the rest drain.
    Drain {
        timeout_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hand_off_to: Option<crate::adoption::Adopter>,
    },
    /// The answer to a [`ToMaster::Request`].
    Reply { id: u64, body: Value },
    /// A message another worker published (a broadcast to deliver locally), as that worker
    /// wrote it: the master passes it on without parsing it.
    Message {
        #[serde(deserialize_with = "raw_from_any")]
        body: Box<RawValue>,
    },
    /// A question from another worker (which of your sockets match?), to answer with
    /// [`ToMaster::Answer`] and the same id.
    Query { id: u64, body: Value },
    /// During an upgrade (`chatctl upgrade`), the workers of the other master: a request for
    /// one of their sessions is passed to them over their private sockets (made by
    /// `master_pid`), as to this master's other workers.
    OtherMaster {
        master_pid: u32,
        peers: crate::upgrade::Peers,
    },
}

/// From a worker to the master.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToMaster {
    /// Serving: the worker may receive traffic.
    Ready,
    Pong {
        seq: u64,
        connections: u64,
        /// Messages this worker dropped since it started, by cause (see [`crate::drops`]).
        #[serde(default)]
        dropped: BTreeMap<String, u64>,
        /// What it counted about its clients, for the admin address's metrics.
        #[serde(default)]
        stats: Box<crate::worker_stats::WorkerStats>,
    },
    /// The worker's sessions changed since it last said: sent between pings, so that the
    /// master's least-loaded pick follows a burst of connections it cannot count itself
    /// (a websocket opened on the connection a login came on is never seen by the master).
    Load { connections: u64 },
    /// A question for the master's [`crate::master::MasterService`] (the embedded store).
    Request { id: u64, body: Value },
    /// A request for the master's service that needs no answer (e.g. recording history).
    Tell {
        #[serde(deserialize_with = "raw_from_any")]
        body: Box<RawValue>,
    },
    /// A message for every other worker of the app (the embedded bus).
    Publish {
        #[serde(deserialize_with = "raw_from_any")]
        body: Box<RawValue>,
    },
    /// A message the master's service numbers (see [`crate::master::MasterService::sequence`])
    /// and hands, in number order, to every worker it is for (this one too unless it had it
    /// already: [`crate::master::Numbered`]).
    Sequence {
        #[serde(deserialize_with = "raw_from_any")]
        body: Box<RawValue>,
    },
    /// A question for every other worker; the master replies with all their answers, as a
    /// JSON array, once all answered or after a second.
    Gather { id: u64, body: Value },
    /// This worker's answer to a [`ToWorker::Query`].
    Answer { id: u64, body: Value },
    /// What came of the live hand-off a drain asked for; the master answers with a
    /// [`ToWorker::Reply`] of the same id once it has it (the worker may exit right after).
    HandOff {
        id: u64,
        counts: crate::adoption::HandOffCounts,
    },
}

/// A message of the IPC and control channels, one JSON line each.
pub trait Line: for<'de> Deserialize<'de> {
    /// Parses `line` without serde where serde is slow: an internally tagged enum buffers a
    /// message into a tree before it looks at it.
    fn fast(_line: String) -> Result<Self, String> {
        Err(_line)
    }
}

impl Line for ToMaster {
    fn fast(line: String) -> Result<Self, String> {
        let line = match raw_body(line, r#"{"type":"publish","body":"#) {
            Ok(body) => return Ok(ToMaster::Publish { body }),
            Err(line) => line,
        };
        let line = match raw_body(line, r#"{"type":"sequence","body":"#) {
            Ok(body) => return Ok(ToMaster::Sequence { body }),
            Err(line) => line,
        };
        raw_body(line, r#"{"type":"tell","body":"#).map(|body| ToMaster::Tell { body })
    }
}

impl Line for ToWorker {
    fn fast(line: String) -> Result<Self, String> {
        raw_body(line, r#"{"type":"message","body":"#).map(|body| ToWorker::Message { body })
    }
}

/// The body of a `prefix BODY }` line, checked to be JSON but not parsed into a tree.
pub(crate) fn raw_body(line: String, prefix: &str) -> Result<Box<RawValue>, String> {
    let body = match line
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_suffix('}'))
    {
        Some(body) => body.to_owned(),
        None => return Err(line),
    };
    RawValue::from_string(body).map_err(|_| line)
}

/// A raw body from a message that took the slow path (see [`Line::fast`]).
pub(crate) fn raw_from_any<'de, D: serde::Deserializer<'de>>(
    from: D,
) -> Result<Box<RawValue>, D::Error> {
    let value = Value::deserialize(from)?;
    serde_json::value::to_raw_value(&value).map_err(serde::de::Error::custom)
}

/// Why a channel gives no more messages.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// The other side closed it (or reading failed).
    Closed,
    /// The other side wrote a line longer than the channel allows (`ipc_max_line`): it does
    /// not keep the contract, and nothing after it can be trusted.
    Overlong { max: usize },
}

/// Malformed lines skipped so far in this process, for a log that a peer cannot flood.
static MALFORMED: AtomicU64 = AtomicU64::new(0);

/// Reads the next JSON line of `T`; a line that does not parse is skipped (and logged, once
/// per 1000).
pub async fn read_message<T, R>(lines: &mut BoundedLines<R>) -> Result<T, ReadEnd>
where
    T: Line,
    R: tokio::io::AsyncBufRead + Unpin,
{
    loop {
        let line = match lines.next_line().await {
            Ok(Some(lines::Line::Complete(line))) => line,
            Ok(Some(lines::Line::Overlong(line))) => {
                return Err(ReadEnd::Overlong { max: line.len() })
            }
            Ok(None) | Err(_) => return Err(ReadEnd::Closed),
        };
        let error = match String::from_utf8(line) {
            Ok(line) => match T::fast(line) {
                Ok(message) => return Ok(message),
                Err(line) => match serde_json::from_str(&line) {
                    Ok(message) => return Ok(message),
                    Err(error) => error.to_string(),
                },
            },
            Err(_) => "not UTF-8".to_owned(),
        };
        let skipped = MALFORMED.fetch_add(1, Ordering::Relaxed) + 1;
        if skipped % 1000 == 1 {
            tracing::warn!(%error, skipped, "skipping a malformed IPC message");
        }
    }
}

/// A reader of JSON lines of at most `max` bytes.
pub fn message_lines<R: tokio::io::AsyncRead + Unpin>(
    reader: R,
    max: usize,
) -> BoundedLines<BufReader<R>> {
    BoundedLines::new(BufReader::new(reader), max)
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

/// Writes the messages of `queue` as JSON lines until it closes or a write fails. Those queued
/// at once go out in one write (up to about 64 KiB): a busy channel costs a system call per
/// batch, not per message.
pub async fn write_queue<T: Serialize, W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    queue: &mut mpsc::UnboundedReceiver<T>,
) {
    let mut buffer = Vec::new();
    while let Some(first) = queue.recv().await {
        buffer.clear();
        let mut next = Some(first);
        while let Some(message) = next {
            if serde_json::to_writer(&mut buffer, &message).is_err() {
                return;
            }
            buffer.push(b'\n');
            next = if buffer.len() < BATCH_BYTES {
                queue.try_recv().ok()
            } else {
                None
            };
        }
        if writer.write_all(&buffer).await.is_err() {
            return;
        }
    }
}

/// About how many bytes of queued messages go out in one write.
pub const BATCH_BYTES: usize = 64 * 1024;

/// Why a request to the master got no answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("the master is gone")]
    Closed,
    #[error("the master did not answer within {0:?}")]
    Timeout(Duration),
}

/// The worker's side of the channel: readiness, pings, drain, and the embedded bus and store.
/// Cloned freely; one task reads, one writes.
pub struct WorkerLink {
    tx: mpsc::UnboundedSender<ToMaster>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    next_id: AtomicU64,
    connections: OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
    /// What this worker dropped, reported with every pong.
    drops: OnceLock<Arc<Drops>>,
    /// Counts reported with every pong (see [`WorkerLink::report_stats`]).
    stats: OnceLock<StatsSource>,
    queries: OnceLock<QueryHandler>,
    other_masters: OnceLock<OtherMasterHandler>,
}

/// Learns of the other master's workers during an upgrade (see
/// [`WorkerLink::on_other_master`]).
type OtherMasterHandler = Box<dyn Fn(u32, crate::upgrade::Peers) + Send + Sync>;

/// Takes a worker's counts (see [`WorkerLink::report_stats`]).
type StatsSource = Box<dyn Fn() -> crate::worker_stats::WorkerStats + Send + Sync>;

/// Answers other workers' questions (see [`WorkerLink::on_query`]).
type QueryHandler = Box<dyn Fn(Value) -> Value + Send + Sync>;

/// What the master sends that the worker acts on.
pub struct LinkEvents {
    /// Completes when the master asks for a drain (an error when the master is gone).
    pub drain: oneshot::Receiver<DrainOrder>,
    /// Messages other workers published.
    pub messages: mpsc::UnboundedReceiver<Box<RawValue>>,
}

/// A drain the master asked for.
#[derive(Debug, Clone)]
pub struct DrainOrder {
    /// How long what is in flight may take to finish.
    pub timeout: Duration,
    /// Where live sessions go first, if anywhere.
    pub hand_off_to: Option<crate::adoption::Adopter>,
}

/// How long a request to the master may take before it counts as lost.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a worker tells the master its sessions when they changed ([`ToMaster::Load`]):
/// a burst of 2,000 connections a second lands about 200 on one worker before the master
/// knows.
pub const LOAD_REPORT_EVERY: Duration = Duration::from_millis(100);

impl WorkerLink {
    /// The link over `channel`, the worker's end of the master's socket pair (see
    /// [`crate::inherited`]), carrying lines of up to `max_line`. Must be called inside a
    /// tokio runtime: it starts the tasks that read and write the channel.
    pub fn over(channel: OwnedFd, max_line: usize) -> Option<(Arc<WorkerLink>, LinkEvents)> {
        let std_stream = std::os::unix::net::UnixStream::from(channel);
        std_stream.set_nonblocking(true).ok()?;
        let stream = UnixStream::from_std(std_stream).ok()?;
        let (read, mut write) = stream.into_split();
        let (tx, mut outgoing) = mpsc::unbounded_channel();
        let link = Arc::new(WorkerLink {
            tx,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            connections: OnceLock::new(),
            drops: OnceLock::new(),
            stats: OnceLock::new(),
            queries: OnceLock::new(),
            other_masters: OnceLock::new(),
        });
        tokio::spawn(async move { write_queue(&mut write, &mut outgoing).await });
        let (drain_tx, drain) = oneshot::channel();
        let (messages_tx, messages) = mpsc::unbounded_channel();
        let reader = link.clone();
        tokio::spawn(async move {
            let mut drain_tx = Some(drain_tx);
            // The master passes on lines of up to its own bound, in an envelope.
            let max = max_line.saturating_add(1024);
            let mut lines = message_lines(read, max);
            while let Ok(message) = read_message::<ToWorker, _>(&mut lines).await {
                match message {
                    ToWorker::Ping { seq } => {
                        let connections = reader.connections.get().map_or(0, |count| count());
                        let dropped = reader
                            .drops
                            .get()
                            .map(|drops| drops.snapshot())
                            .unwrap_or_default();
                        let stats =
                            Box::new(reader.stats.get().map(|take| take()).unwrap_or_default());
                        let _ = reader.tx.send(ToMaster::Pong {
                            seq,
                            connections,
                            dropped,
                            stats,
                        });
                    }
                    ToWorker::Drain {
                        timeout_ms,
                        hand_off_to,
                    } => {
                        if let Some(tx) = drain_tx.take() {
                            let _ = tx.send(DrainOrder {
                                timeout: Duration::from_millis(timeout_ms),
                                hand_off_to,
                            });
                        }
                    }
                    ToWorker::Reply { id, body } => {
                        let waiter = reader.pending.lock().ok().and_then(|mut p| p.remove(&id));
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(body);
                        }
                    }
                    ToWorker::Message { body } => {
                        let _ = messages_tx.send(body);
                    }
                    ToWorker::Query { id, body } => {
                        let body = reader
                            .queries
                            .get()
                            .map_or(Value::Null, |answer| answer(body));
                        let _ = reader.tx.send(ToMaster::Answer { id, body });
                    }
                    ToWorker::OtherMaster { master_pid, peers } => {
                        if let Some(learn) = reader.other_masters.get() {
                            learn(master_pid, peers);
                        }
                    }
                }
            }
            // The master is gone: pending requests fail (their senders drop), drain ends.
            if let Ok(mut pending) = reader.pending.lock() {
                pending.clear();
            }
        });
        Some((link, LinkEvents { drain, messages }))
    }

    /// Tells the master this worker serves. `connections` and the counts of `drops` are
    /// reported with every pong.
    /// Between pings, the sessions are reported every [`LOAD_REPORT_EVERY`] when they changed.
    pub fn ready(
        self: &Arc<Self>,
        connections: impl Fn() -> u64 + Send + Sync + 'static,
        drops: Arc<Drops>,
    ) {
        let _ = self.connections.set(Box::new(connections));
        let _ = self.drops.set(drops);
        let _ = self.tx.send(ToMaster::Ready);
        let link = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(LOAD_REPORT_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut reported = 0;
            loop {
                every.tick().await;
                let Some(link) = link.upgrade() else { return };
                let connections = link.connections.get().map_or(0, |count| count());
                if connections != reported {
                    reported = connections;
                    if link.tx.send(ToMaster::Load { connections }).is_err() {
                        return;
                    }
                }
            }
        });
    }

    /// Sets what this worker reports about its clients with every pong.
    pub fn report_stats(
        &self,
        take: impl Fn() -> crate::worker_stats::WorkerStats + Send + Sync + 'static,
    ) {
        let _ = self.stats.set(Box::new(take));
    }

    /// Asks the master's service and waits for the answer.
    pub async fn request(&self, body: Value) -> Result<Value, LinkError> {
        self.ask(|id| ToMaster::Request { id, body }).await
    }

    /// Sets how this worker answers other workers' questions.
    pub fn on_query(&self, answer: impl Fn(Value) -> Value + Send + Sync + 'static) {
        let _ = self.queries.set(Box::new(answer));
    }

    /// Sets what this worker does when it hears of the other master's workers during an
    /// upgrade ([`ToWorker::OtherMaster`]).
    pub fn on_other_master(
        &self,
        learn: impl Fn(u32, crate::upgrade::Peers) + Send + Sync + 'static,
    ) {
        let _ = self.other_masters.set(Box::new(learn));
    }

    /// Asks every other worker and returns their answers (those that answered within a second).
    pub async fn gather(&self, body: Value) -> Result<Vec<Value>, LinkError> {
        match self.ask(|id| ToMaster::Gather { id, body }).await? {
            Value::Array(answers) => Ok(answers),
            _ => Ok(Vec::new()),
        }
    }

    /// Sends a message the master answers with a [`ToWorker::Reply`], and waits for the reply.
    async fn ask(&self, message: impl FnOnce(u64) -> ToMaster) -> Result<Value, LinkError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(id, tx);
        }
        if self.tx.send(message(id)).is_err() {
            return Err(LinkError::Closed);
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(_)) => Err(LinkError::Closed),
            Err(_) => {
                if let Ok(mut pending) = self.pending.lock() {
                    pending.remove(&id);
                }
                Err(LinkError::Timeout(REQUEST_TIMEOUT))
            }
        }
    }

    /// Sends the master's service a request without waiting for it to be done; requests
    /// sent this way and with [`WorkerLink::request`] are served in the order they were sent.
    /// Tells the master what came of a live hand-off, and waits until it has it.
    pub async fn report_hand_off(
        &self,
        counts: crate::adoption::HandOffCounts,
    ) -> Result<(), LinkError> {
        self.ask(|id| ToMaster::HandOff { id, counts })
            .await
            .map(|_| ())
    }

    pub fn tell(&self, body: Box<RawValue>) {
        let _ = self.tx.send(ToMaster::Tell { body });
    }

    /// Sends a message (JSON) to every other worker of the app; fails when the master is gone.
    pub fn publish(&self, body: Box<RawValue>) -> Result<(), LinkError> {
        self.tx
            .send(ToMaster::Publish { body })
            .map_err(|_| LinkError::Closed)
    }

    /// Sends a message for the master's service to number and hand to the workers it is for;
    /// fails when the master is gone.
    pub fn sequence(&self, body: Box<RawValue>) -> Result<(), LinkError> {
        self.tx
            .send(ToMaster::Sequence { body })
            .map_err(|_| LinkError::Closed)
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
        assert!(matches!(
            pong,
            ToMaster::Pong {
                seq: 1,
                connections: 7,
                ..
            }
        ));
    }

    #[test]
    fn published_messages_pass_through_as_written() {
        let line = r#"{"type":"publish","body":{"ns":"/x","frames":["t42"],"z":[1, 2]}}"#;
        // Both ways of reading a line: the fast one, and serde's.
        let Ok(ToMaster::Publish { body }) = ToMaster::fast(line.to_owned()) else {
            panic!("not a publish");
        };
        let Ok(ToMaster::Publish { body: parsed }) = serde_json::from_str::<ToMaster>(line) else {
            panic!("not a publish");
        };
        let same: Value = serde_json::from_str(parsed.get()).unwrap();
        assert_eq!(
            same,
            serde_json::json!({"ns": "/x", "frames": ["t42"], "z": [1, 2]})
        );
        let relayed = serde_json::to_string(&ToWorker::Message { body }).unwrap();
        assert_eq!(
            relayed,
            r#"{"type":"message","body":{"ns":"/x","frames":["t42"],"z":[1, 2]}}"#
        );
    }

    #[test]
    fn told_bodies_are_read_as_written() {
        let body = RawValue::from_string(r#"{"op":"push_history","entry":"a \"b\""}"#.into());
        let line = serde_json::to_string(&ToMaster::Tell {
            body: body.unwrap(),
        })
        .unwrap();
        let Ok(ToMaster::Tell { body: fast }) = ToMaster::fast(line.clone()) else {
            panic!("not read as a tell: {line}");
        };
        let Ok(ToMaster::Tell { body: parsed }) = serde_json::from_str::<ToMaster>(&line) else {
            panic!("not a tell: {line}");
        };
        assert_eq!(fast.get(), r#"{"op":"push_history","entry":"a \"b\""}"#);
        let parsed: Value = serde_json::from_str(parsed.get()).unwrap();
        assert_eq!(parsed, serde_json::from_str::<Value>(fast.get()).unwrap());
    }

    #[tokio::test]
    async fn a_ready_worker_reports_its_sessions_when_they_change() {
        let (master, worker) = std::os::unix::net::UnixStream::pair().unwrap();
        let (link, _events) =
            WorkerLink::over(worker.into(), crate::config::DEFAULT_MAX_LINE).unwrap();
        let sessions = Arc::new(AtomicU64::new(0));
        let count = sessions.clone();
        link.ready(
            move || count.load(Ordering::Relaxed),
            Arc::new(Drops::new(Duration::from_secs(60))),
        );
        master.set_nonblocking(true).unwrap();
        let mut lines = message_lines(UnixStream::from_std(master).unwrap(), 1000);
        let ready: ToMaster = read_message(&mut lines).await.unwrap();
        assert!(matches!(ready, ToMaster::Ready));
        sessions.store(5, Ordering::Relaxed);
        let load: ToMaster = read_message(&mut lines).await.unwrap();
        assert!(
            matches!(load, ToMaster::Load { connections: 5 }),
            "{load:?}"
        );
    }

    #[tokio::test]
    async fn skips_malformed_lines() {
        let input: &[u8] = b"garbage\n{\"type\":\"ready\"}\n";
        let mut lines = message_lines(input, 100);
        assert!(matches!(
            read_message::<ToMaster, _>(&mut lines).await,
            Ok(ToMaster::Ready)
        ));
        assert_eq!(
            read_message::<ToMaster, _>(&mut lines).await.err(),
            Some(ReadEnd::Closed)
        );
    }

    #[tokio::test]
    async fn an_overlong_line_ends_the_channel() {
        let input: &[u8] = b"{\"type\":\"ready\"}\n{\"type\":\"publish\",\"body\":\"0123456789\"}\n{\"type\":\"ready\"}\n";
        let mut lines = message_lines(input, 20);
        assert!(matches!(
            read_message::<ToMaster, _>(&mut lines).await,
            Ok(ToMaster::Ready)
        ));
        assert_eq!(
            read_message::<ToMaster, _>(&mut lines).await.err(),
            Some(ReadEnd::Overlong { max: 20 })
        );
    }
}

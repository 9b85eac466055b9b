//! Connection-state recovery through the master: each namespace's log of numbered events and
//! its kept sockets live in the master ([`RecoveryService`]), so a client whose worker died
//! or was replaced is recovered by whichever worker it reaches next. A worker's
//! [`MasterSessionStore`] sends its events to be numbered (the master hands each, numbered,
//! to every worker in order) and keeps its sockets written through.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engineio::Frame;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use socketio::{
    BroadcastOptions, Digest, EmitError, LogSnapshot, LogStats, Namespace, Own, RecoveryConfig,
    RecoveryLog, RestoreRequest, Restored, Sequenced, SessionRecord, SessionStore, StoreFactory,
};
use supervisor::ipc::WorkerLink;
use supervisor::master::Numbered;

use crate::wire::WireBroadcast;

/// What a worker asks the master's [`RecoveryService`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op")]
pub(super) enum RecoveryOp {
    /// A worker serves the namespace with these bounds (the first worker's are kept).
    #[serde(rename = "recovery_open")]
    Open {
        ns: String,
        window_ms: u64,
        max_packets: usize,
        max_bytes: usize,
        max_sessions: usize,
    },
    #[serde(rename = "recovery_keep")]
    Keep {
        ns: String,
        record: SessionRecord,
        detached: bool,
    },
    #[serde(rename = "recovery_forget")]
    Forget { ns: String, pid_hash: Digest },
    #[serde(rename = "recovery_restore")]
    Restore { ns: String, request: RestoreRequest },
}

/// A restored socket as the master answers it.
#[derive(Debug, Serialize, Deserialize)]
struct WireRestored {
    sid: String,
    rooms: Vec<String>,
    upto: u64,
    #[serde(default)]
    own_upto: u64,
    /// Numbered events, `seq` set.
    missed: Vec<WireBroadcast>,
}

/// A namespace's store of a worker under a chatctl master without Redis.
pub struct MasterSessionStore {
    link: Arc<WorkerLink>,
    ns: String,
}

impl MasterSessionStore {
    /// The stores of a worker's namespaces, each opened with the master as it is made.
    pub fn factory(link: Arc<WorkerLink>) -> StoreFactory {
        Arc::new(move |ns: &str, config: &RecoveryConfig| {
            link.tell(told(RecoveryOp::Open {
                ns: ns.to_owned(),
                window_ms: crate::millis(config.window),
                max_packets: config.max_packets,
                max_bytes: config.max_bytes,
                max_sessions: config.max_sessions,
            }));
            Arc::new(MasterSessionStore {
                link: link.clone(),
                ns: ns.to_owned(),
            }) as Arc<dyn SessionStore>
        })
    }

    fn keep(&self, record: SessionRecord, detached: bool) {
        self.link.tell(told(RecoveryOp::Keep {
            ns: self.ns.clone(),
            record,
            detached,
        }));
    }
}

fn op(op: RecoveryOp) -> Value {
    serde_json::to_value(op).unwrap_or(Value::Null)
}

/// An operation the master carries out without an answer, as the JSON a worker tells it.
fn told(op: RecoveryOp) -> Box<RawValue> {
    serde_json::value::to_raw_value(&op).unwrap_or_default()
}

impl SessionStore for MasterSessionStore {
    fn append(
        &self,
        _ns: &Namespace,
        frames: &[Frame],
        opts: &BroadcastOptions,
        own: Option<Own>,
    ) -> Result<(), EmitError> {
        let event = WireBroadcast {
            mark: own.map(|own| own.mark),
            first: own.is_some_and(|own| own.delivered),
            local: opts.local,
            ..WireBroadcast::new(&self.ns, frames, opts)
        };
        let body = serde_json::value::to_raw_value(&event)
            .map_err(|error| EmitError::NotRelayed(format!("cannot encode it: {error}")))?;
        // Fails only when the master is gone, and this worker with it.
        self.link
            .sequence(body)
            .map_err(|error| EmitError::NotRelayed(error.to_string()))
    }

    fn is_shared(&self) -> bool {
        true
    }

    /// The master numbers events in the order workers send them, so a worker's own are
    /// numbered after everything it had delivered when it sent them: it delivers them at
    /// once, and the master hands them to the other workers only.
    fn own_first(&self) -> bool {
        true
    }

    fn attached(&self, record: &SessionRecord) {
        self.keep(record.clone(), false);
    }

    fn detached(&self, record: SessionRecord) {
        self.keep(record, true);
    }

    fn forgotten(&self, pid_hash: &Digest) {
        self.link.tell(told(RecoveryOp::Forget {
            ns: self.ns.clone(),
            pid_hash: *pid_hash,
        }));
    }

    fn restore(&self, request: RestoreRequest) -> BoxFuture<'static, Option<Restored>> {
        let link = self.link.clone();
        let ask = op(RecoveryOp::Restore {
            ns: self.ns.clone(),
            request,
        });
        async move {
            let reply = match link.request(ask).await {
                Ok(reply) => reply,
                Err(error) => {
                    tracing::warn!(%error, "cannot ask the master for a returning client's socket: it starts afresh");
                    return None;
                }
            };
            let restored: WireRestored = serde_json::from_value(reply.get("ok")?.clone()).ok()?;
            let mut missed = Vec::with_capacity(restored.missed.len());
            for event in restored.missed {
                let seq = event.seq?;
                let (_, frames, opts) = event.decode()?;
                missed.push(Sequenced { seq, frames, opts });
            }
            Some(Restored {
                sid: restored.sid.into(),
                rooms: restored.rooms.into_iter().map(Into::into).collect(),
                missed,
                upto: restored.upto,
                own_upto: restored.own_upto,
            })
        }
        .boxed()
    }
}

/// The master's side: one recovery log per namespace, shared by every worker.
#[derive(Default)]
pub struct RecoveryService {
    logs: Mutex<HashMap<String, RecoveryLog>>,
    /// How many events of each sending process (its [`socketio::Mark::process`]) were handed
    /// to other workers, at most [`MAX_SENDERS`] of them.
    handed: Mutex<HashMap<u64, u64>>,
}

/// Senders whose handed events the master counts; beyond, it starts over (a worker that
/// sees no count cannot tell a gap for one event).
const MAX_SENDERS: usize = 1024;

impl RecoveryService {
    /// Whether `body` is a recovery request.
    pub(super) fn handles(body: &Value) -> bool {
        body.get("op")
            .and_then(Value::as_str)
            .is_some_and(|op| op.starts_with("recovery_"))
    }

    pub(super) fn request(&self, worker: u64, body: Value) -> Value {
        let op = match serde_json::from_value::<RecoveryOp>(body) {
            Ok(op) => op,
            Err(error) => return json!({ "error": format!("unknown recovery request: {error}") }),
        };
        let Ok(mut logs) = self.logs.lock() else {
            return json!({ "error": "the recovery logs are unavailable" });
        };
        match op {
            RecoveryOp::Open {
                ns,
                window_ms,
                max_packets,
                max_bytes,
                max_sessions,
            } => {
                logs.entry(ns).or_insert_with(|| {
                    RecoveryLog::new(RecoveryConfig {
                        window: Duration::from_millis(window_ms),
                        max_packets,
                        max_bytes,
                        max_sessions,
                        ..RecoveryConfig::default()
                    })
                });
                json!({ "ok": null })
            }
            RecoveryOp::Keep {
                ns,
                record,
                detached,
            } => {
                if let Some(log) = logs.get_mut(&ns) {
                    log.keep(record, worker, detached);
                }
                json!({ "ok": null })
            }
            RecoveryOp::Forget { ns, pid_hash } => {
                if let Some(log) = logs.get_mut(&ns) {
                    log.forget(&pid_hash, worker);
                }
                json!({ "ok": null })
            }
            RecoveryOp::Restore { ns, request } => {
                let restored = logs.get_mut(&ns).and_then(|log| log.restore(&request));
                let Some(restored) = restored else {
                    return json!({ "ok": null });
                };
                let missed = restored
                    .missed
                    .iter()
                    .map(|event| WireBroadcast {
                        seq: Some(event.seq),
                        ..WireBroadcast::new(&ns, &event.frames, &event.opts)
                    })
                    .collect();
                json!({ "ok": WireRestored {
                    sid: restored.sid.to_string(),
                    rooms: restored.rooms.iter().map(|r| r.to_string()).collect(),
                    upto: restored.upto,
                    own_upto: restored.own_upto,
                    missed,
                }})
            }
        }
    }

    /// Numbers a worker's event in its namespace's log: the line the workers get, the event
    /// with its number and epoch, and whether its sender delivered it already. `None` for a
    /// malformed one or an unknown namespace.
    pub(super) fn sequence(&self, body: &RawValue) -> Option<Numbered> {
        let event: WireBroadcast = serde_json::from_str(body.get()).ok()?;
        let (mark, first, local) = (event.mark, event.first, event.local);
        let (ns, frames, mut opts) = event.decode()?;
        opts.local = false;
        let mut logs = self.logs.lock().ok()?;
        let log = logs.get_mut(&ns)?;
        let seq = log.append_marked(&frames, &opts, mark);
        let epoch = serde_json::to_string(log.epoch()).ok()?;
        drop(logs);
        let to_others = !local;
        let handed = match mark.filter(|_| to_others) {
            Some(mark) => format!(r#","handed":{}"#, self.count_handed(mark.process)),
            None => String::new(),
        };
        // The worker's own JSON, with the number in front: not encoded again.
        let numbered = format!(
            r#"{{"seq":{seq},"epoch":{epoch}{handed},{}"#,
            body.get().trim_start().strip_prefix('{')?
        );
        Some(Numbered {
            line: RawValue::from_string(numbered).ok()?,
            to_sender: !first,
            to_others,
        })
    }

    /// Counts an event of `process` handed to the other workers; returns the count.
    fn count_handed(&self, process: u64) -> u64 {
        let Ok(mut handed) = self.handed.lock() else {
            return 0;
        };
        if handed.len() >= MAX_SENDERS && !handed.contains_key(&process) {
            handed.clear();
        }
        let count = handed.entry(process).or_default();
        *count += 1;
        *count
    }

    /// The sockets a dead worker served may come back elsewhere from now.
    pub(super) fn worker_gone(&self, worker: u64) {
        if let Ok(mut logs) = self.logs.lock() {
            for log in logs.values_mut() {
                log.owner_gone(worker);
            }
        }
    }

    /// Every namespace's log as data, for a new master to carry on with (`chatctl upgrade`).
    pub(super) fn hand_over(&self) -> Value {
        let logs = self.logs.lock().map(|logs| {
            logs.iter()
                .map(|(ns, log)| (ns.clone(), json!(log.snapshot())))
                .collect::<serde_json::Map<String, Value>>()
        });
        Value::Object(logs.unwrap_or_default())
    }

    /// Takes the logs an old master handed over, in place of this master's (whose workers
    /// opened them, and which no client has used yet): the same epochs and numbering, so a
    /// client of the old workers is recovered by the new ones. Each keeps this master's
    /// bounds where it has a log already. All or nothing: a malformed one refuses them all.
    /// Returns how many sockets were taken.
    pub(super) fn take_over(&self, handed: Value) -> Result<usize, String> {
        let snapshots: HashMap<String, LogSnapshot> = serde_json::from_value(handed)
            .map_err(|error| format!("the recovery logs handed over are malformed: {error}"))?;
        let mut logs = self
            .logs
            .lock()
            .map_err(|_| "the recovery logs are unavailable".to_owned())?;
        let mut taken = Vec::with_capacity(snapshots.len());
        for (ns, snapshot) in snapshots {
            let bounds = logs.get(&ns).map_or(snapshot.bounds, RecoveryLog::bounds);
            let log = RecoveryLog::from_snapshot(snapshot, bounds.config()).map_err(|error| {
                format!("the recovery log of namespace {ns} handed over is refused: {error}")
            })?;
            taken.push((ns, log));
        }
        let mut sockets = 0;
        for (ns, log) in taken {
            let stats = log.stats();
            sockets += stats.sessions_connected + stats.sessions_kept;
            logs.insert(ns, log);
        }
        Ok(usize::try_from(sockets).unwrap_or(usize::MAX))
    }

    /// What each namespace's log holds.
    pub fn stats(&self) -> Vec<(String, LogStats)> {
        self.logs
            .lock()
            .map(|logs| {
                logs.iter()
                    .map(|(ns, log)| (ns.clone(), log.stats()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(service: &RecoveryService, max_packets: usize) {
        service.request(
            1,
            op(RecoveryOp::Open {
                ns: "/".into(),
                window_ms: 60_000,
                max_packets,
                max_bytes: 1 << 20,
                max_sessions: 100,
            }),
        );
    }

    fn event(text: &str, rooms: &[&str]) -> Box<RawValue> {
        let opts = BroadcastOptions {
            rooms: rooms.iter().map(|r| (*r).into()).collect(),
            ..BroadcastOptions::default()
        };
        serde_json::value::to_raw_value(&WireBroadcast::new(
            "/",
            &[Frame::Text(text.into())],
            &opts,
        ))
        .unwrap()
    }

    /// The line the master hands the workers.
    fn line_of(numbered: &Numbered) -> WireBroadcast {
        serde_json::from_str(numbered.line.get()).unwrap()
    }

    /// An event of process 5's `index`th, delivered by it first, for a room or its own socket.
    fn own_event(index: u64, local: bool) -> Box<RawValue> {
        let opts = BroadcastOptions::default();
        let event = WireBroadcast {
            mark: Some(socketio::Mark { process: 5, index }),
            first: true,
            local,
            ..WireBroadcast::new("/", &[Frame::Text("2[\"a\"]".into())], &opts)
        };
        serde_json::value::to_raw_value(&event).unwrap()
    }

    #[test]
    fn an_event_its_sender_delivered_goes_to_the_others_counted_and_one_for_its_socket_to_none() {
        let service = RecoveryService::default();
        open(&service, 10);
        let handed = |numbered: &Numbered| line_of(numbered).handed;
        let first = service.sequence(&own_event(1, false)).unwrap();
        assert!(!first.to_sender && first.to_others);
        assert_eq!(handed(&first), Some(1));
        // A socket's own emit: kept for its replay, handed to nobody, not counted.
        let local = service.sequence(&own_event(2, true)).unwrap();
        assert!(!local.to_sender && !local.to_others);
        let third = service.sequence(&own_event(3, false)).unwrap();
        assert_eq!(handed(&third), Some(2), "the others tell no gap");
        // An event numbered before its sender delivers it goes back to it too.
        let echoed = service.sequence(&event("2[\"b\"]", &[])).unwrap();
        assert!(echoed.to_sender && echoed.to_others);
        assert_eq!(service.stats()[0].1.packets, 4);
    }

    #[test]
    fn events_are_numbered_in_order_and_keep_the_workers_json() {
        let service = RecoveryService::default();
        assert!(
            service.sequence(&event("2[\"a\"]", &[])).is_none(),
            "not open"
        );
        open(&service, 10);
        let first = line_of(&service.sequence(&event("2[\"a\"]", &["r"])).unwrap());
        let second = line_of(&service.sequence(&event("2[\"b\"]", &[])).unwrap());
        assert_eq!((first.seq, second.seq), (Some(1), Some(2)));
        assert_eq!(first.epoch, second.epoch);
        assert_eq!(first.rooms, vec!["r".to_owned()]);
        assert_eq!(first.frames, vec!["t2[\"a\"]".to_owned()]);
    }

    #[test]
    fn a_dead_workers_socket_is_restored_on_another_with_what_it_missed() {
        let service = RecoveryService::default();
        open(&service, 10);
        let numbered = line_of(&service.sequence(&event("2[\"seen\"]", &["r"])).unwrap());
        let pid_hash = Digest::of("pid");
        let record = SessionRecord {
            sid: "s1".into(),
            pid_hash,
            rooms: vec!["s1".into(), "r".into()],
            binding: None,
        };
        service.request(
            1,
            op(RecoveryOp::Keep {
                ns: "/".into(),
                record,
                detached: false,
            }),
        );
        service.sequence(&event("2[\"missed\"]", &["r"]));
        service.sequence(&event("2[\"elsewhere\"]", &["x"]));
        let ask = |worker| {
            service.request(
                worker,
                op(RecoveryOp::Restore {
                    ns: "/".into(),
                    request: RestoreRequest {
                        pid_hash,
                        epoch: numbered.epoch.clone().unwrap(),
                        after: 1,
                        had_own: None,
                        asker: None,
                        binding: None,
                    },
                }),
            )
        };
        // Its worker dies (kill -9): nobody told the master the socket disconnected.
        service.worker_gone(1);
        let reply = ask(2);
        let restored: WireRestored = serde_json::from_value(reply["ok"].clone()).unwrap();
        assert_eq!(restored.sid, "s1");
        assert_eq!(restored.rooms, vec!["r".to_owned()]);
        assert_eq!(restored.upto, 3);
        assert_eq!(restored.missed.len(), 1);
        assert_eq!(restored.missed[0].seq, Some(2));
        assert_eq!(restored.missed[0].frames, vec!["t2[\"missed\"]".to_owned()]);
        // Once.
        assert_eq!(ask(2), json!({ "ok": null }));
    }
}

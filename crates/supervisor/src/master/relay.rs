//! The IPC channel of each worker: its messages to the master (ready, pongs, requests for the
//! master's service), broadcasts relayed to the other workers, and questions gathered from them.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;

use super::state::{Proc, State};
use super::{Gathering, Inner, Requester};
use crate::ipc::{message_lines, read_message, ReadEnd, ToMaster, ToWorker};
use crate::outbox::{relay_line, LineBytes, Outbox, Refused};
use crate::upgrade::FromOldWorkers;

impl Inner {
    /// Talks to one worker over its IPC channel until either side closes it. A worker that
    /// breaks the channel's contract (a line longer than `max_line`, replies it does not read)
    /// is killed and so replaced: nothing it says afterwards is trusted.
    pub(super) async fn ipc_task(
        self: Arc<Self>,
        slot_id: usize,
        generation: u64,
        stream: std::os::unix::net::UnixStream,
        outbox: Arc<Outbox>,
        max_line: usize,
    ) {
        let Ok(()) = stream.set_nonblocking(true) else {
            return;
        };
        let Ok(stream) = UnixStream::from_std(stream) else {
            return;
        };
        let (read, mut write) = stream.into_split();
        let writer = outbox.write_to(&mut write);
        let reader = async {
            let mut lines = message_lines(read, max_line);
            loop {
                let message = match read_message::<ToMaster, _>(&mut lines).await {
                    Ok(message) => message,
                    Err(ReadEnd::Closed) => return,
                    Err(ReadEnd::Overlong { max }) => {
                        return self.replace_untrusted(
                            slot_id,
                            generation,
                            &format!(
                                "wrote an IPC line longer than {max} bytes (see --ipc-max-line)"
                            ),
                        )
                    }
                };
                match message {
                    ToMaster::Ready => self.mark_ready(generation, true),
                    ToMaster::Pong {
                        seq,
                        connections,
                        dropped,
                        stats,
                    } => {
                        let mut state = self.lock();
                        // A pong for a ping not sent yet would vouch for probes to come.
                        let seq = seq.min(state.next_ping);
                        if let Some(proc) = state.proc_mut(generation) {
                            proc.speaks_ipc = true;
                            proc.last_pong = proc.last_pong.max(seq);
                            proc.connections = connections;
                            proc.reported_drops = dropped;
                            proc.stats = stats.bounded();
                            proc.handed = 0;
                        }
                        drop(state);
                        self.bump();
                    }
                    ToMaster::HandOff { id, counts } => {
                        let mut state = self.lock();
                        if let Some(slot) = state.slot_of(generation) {
                            state.slots[slot].hand_off = Some((generation, counts));
                        }
                        // Its sessions are its replacement's now: no more connections for it.
                        if let Some(proc) = state.proc_mut(generation) {
                            proc.handing_off = false;
                            if let Some(handoff) = &proc.handoff {
                                handoff.close();
                            }
                        }
                        drop(state);
                        self.bump();
                        let body = serde_json::Value::Bool(true);
                        let line =
                            serde_json::to_vec(&ToWorker::Reply { id, body }).unwrap_or_default();
                        let _ = outbox.control_line(line);
                    }
                    ToMaster::Load { connections } => {
                        if let Some(proc) = self.lock().proc_mut(generation) {
                            proc.connections = connections;
                            proc.handed = 0;
                        }
                    }
                    ToMaster::Request { id, body } => {
                        let answered = {
                            let bridge = self.bridged();
                            match bridge.as_ref() {
                                Some(bridge) => {
                                    let request = FromOldWorkers::Request {
                                        worker: generation,
                                        id,
                                        body,
                                    };
                                    self.forward_request(bridge, &request);
                                    None
                                }
                                None => Some(match self.service.get() {
                                    Some(service) => service.request(generation, body),
                                    None => {
                                        serde_json::json!({ "error": "this master offers no service" })
                                    }
                                }),
                            }
                        };
                        let Some(body) = answered else { continue };
                        let mut line =
                            serde_json::to_vec(&ToWorker::Reply { id, body }).unwrap_or_default();
                        if line.len() > max_line {
                            // The worker would take the line for a broken channel (e.g. the
                            // replay of a client that missed much, under a small
                            // --ipc-max-line): it gets a refusal it can act on instead.
                            let refusal = serde_json::json!({
                                "error": "the answer is longer than --ipc-max-line allows"
                            });
                            line = serde_json::to_vec(&ToWorker::Reply { id, body: refusal })
                                .unwrap_or_default();
                        }
                        if outbox.control_line(line) == Err(Refused::Full) {
                            return self.replace_untrusted(
                                slot_id,
                                generation,
                                "asked without reading the answers (more than --ipc-queue-size unread)",
                            );
                        }
                    }
                    ToMaster::Tell { body } => {
                        let told = {
                            let bridge = self.bridged();
                            match (bridge.as_ref(), self.service.get()) {
                                (Some(bridge), _) => {
                                    let tell = FromOldWorkers::Tell {
                                        worker: generation,
                                        body,
                                    };
                                    self.forward_request(bridge, &tell);
                                    Ok(())
                                }
                                (None, Some(service)) => service.tell(generation, &body),
                                (None, None) => Ok(()),
                            }
                        };
                        if told.is_err() {
                            if let Some(proc) = self.lock().proc(generation) {
                                proc.drops.count(
                                    "store_write_failed",
                                    1,
                                    "a worker's store write (e.g. a history entry) failed",
                                );
                            }
                        }
                    }
                    ToMaster::Publish { body } => self.relay(generation, &body),
                    ToMaster::Sequence { body } => self.sequence(generation, &body),
                    ToMaster::Gather { id, body } => self.clone().gather(
                        generation,
                        id,
                        body,
                        Requester::Worker(outbox.clone()),
                        true,
                    ),
                    ToMaster::Answer { id, body } => self.answer(id, vec![body]),
                }
            }
        };
        tokio::select! {
            _ = writer => {}
            _ = reader => {}
        }
        outbox.close();
    }

    /// Kills a process that broke the IPC contract; its slot restarts it as after a crash.
    pub(super) fn replace_untrusted(&self, slot_id: usize, generation: u64, why: &str) {
        if let Some(pid) = self.kill_tracked(generation) {
            tracing::error!(
                worker = slot_id,
                pid,
                "worker {why}: killed it, a new one replaces it"
            );
        }
    }

    /// Asks every other live worker `body` on behalf of `from` (during an upgrade, the other
    /// master's too, unless the question comes from there: `across`), and replies to the
    /// requester with their answers once all have answered or the app's `gather_timeout` has
    /// passed.
    pub(super) fn gather(
        self: Arc<Self>,
        from: u64,
        id: u64,
        body: serde_json::Value,
        requester: Requester,
        across: bool,
    ) {
        let (targets, timeout): (Vec<Arc<Outbox>>, Duration) = {
            let mut state = self.lock();
            let timeout = state.config.gather_timeout;
            let targets = state
                .slots
                .iter_mut()
                .flat_map(|slot| slot.procs_mut())
                .filter(|p| p.generation != from && p.speaks_ipc && p.ready)
                .map(|p| p.ipc.clone())
                .collect();
            (targets, timeout)
        };
        let key = self
            .next_gathering
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let peer = if across { self.other_master() } else { None };
        let query = ToWorker::Query {
            id: key,
            body: body.clone(),
        };
        let asked = targets
            .iter()
            .filter(|target| target.control(&query).is_ok())
            .count();
        if asked == 0 && peer.is_none() {
            requester.reply(id, Vec::new());
            return;
        }
        if let Ok(mut gatherings) = self.gatherings.lock() {
            gatherings.insert(
                key,
                Gathering {
                    requester,
                    id,
                    expected: asked + usize::from(peer.is_some()),
                    responded: 0,
                    answers: Vec::new(),
                },
            );
        }
        if let Some(peer) = peer {
            if !peer.ask(key, body) {
                self.answer(key, Vec::new());
            }
        }
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            self.finish_gathering(key);
        });
    }

    /// Answers to gathering `key`: one worker's, or all the other master's workers' at once.
    pub(super) fn answer(&self, key: u64, answers: Vec<serde_json::Value>) {
        let complete = self.gatherings.lock().ok().is_some_and(|mut gatherings| {
            gatherings.get_mut(&key).is_some_and(|g| {
                // More answers than questions asked come from a worker that answers twice.
                if g.responded < g.expected {
                    g.responded += 1;
                    g.answers.extend(answers);
                }
                g.responded >= g.expected
            })
        });
        if complete {
            self.finish_gathering(key);
        }
    }

    pub(super) fn finish_gathering(&self, key: u64) {
        let done = self
            .gatherings
            .lock()
            .ok()
            .and_then(|mut gatherings| gatherings.remove(&key));
        if let Some(g) = done {
            g.requester.reply(g.id, g.answers);
        }
    }

    /// Hands a worker's message to every other live worker that speaks IPC: this master's,
    /// and during an upgrade those of the other master (see [`super::bridge`]).
    pub(super) fn relay(&self, from: u64, body: &serde_json::value::RawValue) {
        let line = relay_line(body);
        let mut state = self.lock();
        Self::relay_to(&mut state, line.clone(), |proc| proc.generation != from);
        self.relay_to_old_workers(&line);
        let bridge = self.bridged();
        if let Some(bridge) = bridge.as_ref() {
            let publish = FromOldWorkers::Publish {
                worker: from,
                body: body.to_owned(),
            };
            self.forward_relay(bridge, &publish);
        }
    }

    /// Has the service number a worker's message, and hands the numbered message to every
    /// live worker that speaks IPC it is for (see [`super::Numbered`]; an old master's
    /// workers get what any worker gets: they know their own). Numbered and queued under the
    /// state lock: every worker's queue gets the messages in number order. Once this master
    /// handed the app over, the new master's service numbers it (see [`super::bridge`]).
    pub(super) fn sequence(&self, from: u64, body: &serde_json::value::RawValue) {
        let Some(service) = self.service.get() else {
            return;
        };
        let mut state = self.lock();
        let bridge = self.bridged();
        if let Some(bridge) = bridge.as_ref() {
            let sequence = FromOldWorkers::Sequence {
                worker: from,
                body: body.to_owned(),
            };
            return self.forward_relay(bridge, &sequence);
        }
        let Some(numbered) = service.sequence(from, body) else {
            return;
        };
        if !numbered.to_sender && !numbered.to_others {
            return;
        }
        let line = relay_line(&numbered.line);
        Self::relay_to(&mut state, line.clone(), |proc| {
            if proc.generation == from {
                numbered.to_sender
            } else {
                numbered.to_others
            }
        });
        // The sender may be one of them: it needs it as much as the others.
        self.relay_to_old_workers(&line);
    }

    pub(super) fn relay_to(state: &mut State, line: LineBytes, to: impl Fn(&Proc) -> bool) {
        for slot in state.slots.iter_mut() {
            for proc in slot.procs_mut() {
                if to(proc) && proc.speaks_ipc {
                    // Never wait for a slow worker: drop, count, and say so now and then.
                    if proc.ipc.relay(line.clone()) == Err(Refused::Full) {
                        proc.drops.count(
                            "relay_queue_full",
                            1,
                            format_args!(
                                "worker pid {} cannot keep up with the broadcasts of the other \
                                 workers: dropping them",
                                proc.pid
                            ),
                        );
                    }
                }
            }
        }
    }
}

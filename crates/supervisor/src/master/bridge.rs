//! The bridge of an upgrade (see [`crate::upgrade`]): from the hand-over until the old master
//! exits, its workers still serve clients while the new master's serve others. Without the
//! bridge they would be two apps: a message said on an old worker would reach no user of a
//! new one, and each master would number events in a recovery log of its own. With it, the
//! old master forwards what its workers ask of the service to the new master, and relays
//! back what the new master sends them: one numbering, one store, one bus.
//!
//! Bounded as a worker's IPC channel is: each side queues in an [`Outbox`] of
//! `--ipc-queue-size` bytes per lane; events and broadcasts beyond it are dropped and counted
//! (`bridge_queue_full` in either master's log).

use std::collections::HashSet;
use std::sync::{Arc, RwLockReadGuard};

use serde_json::value::RawValue;

use super::state::{Slot, State};
use super::{Inner, Requester};
use crate::ipc::{read_message, ToWorker};
use crate::lines::BoundedLines;
use crate::outbox::{relay_line, Outbox, Refused};
use crate::upgrade::{FromOldWorkers, Peers, ToOldWorkers};

type ChannelLines = BoundedLines<tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>>;

fn encoded(message: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(message).unwrap_or_default()
}

/// The asker of a question that came from the other master: none of this master's workers.
const NO_WORKER: u64 = u64::MAX;

impl Requester {
    /// Gives the asker the answers to its question `id`.
    pub(super) fn reply(&self, id: u64, answers: Vec<serde_json::Value>) {
        let _ = match self {
            Requester::Worker(outbox) => outbox.control(&ToWorker::Reply {
                id,
                body: serde_json::Value::Array(answers),
            }),
            Requester::NewMaster(outbox) => {
                outbox.control_line(encoded(&FromOldWorkers::Answers { key: id, answers }))
            }
            Requester::OldMaster(outbox) => {
                outbox.control_line(encoded(&ToOldWorkers::Answers { key: id, answers }))
            }
        };
    }

    /// Asks the other master's workers question `key` (for a gathering of this master's):
    /// false when it cannot be asked.
    pub(super) fn ask(&self, key: u64, body: serde_json::Value) -> bool {
        let (outbox, line) = match self {
            Requester::Worker(_) => return false,
            Requester::NewMaster(outbox) => {
                (outbox, encoded(&FromOldWorkers::Gather { key, body }))
            }
            Requester::OldMaster(outbox) => (outbox, encoded(&ToOldWorkers::Gather { key, body })),
        };
        outbox.control_line(line).is_ok()
    }
}

impl Inner {
    // The old master's side.

    /// Where this master's workers' messages for the service go: `None` while its own
    /// service answers them, the bridge once the app is handed over. Held while the own
    /// service answers, so nothing is answered here once the hand-over was taken.
    pub(super) fn bridged(&self) -> RwLockReadGuard<'_, Option<Arc<Outbox>>> {
        self.bridge
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forwards a worker's request (or tell, or end) to the new master, ahead of events.
    pub(super) fn forward_request(&self, bridge: &Outbox, message: &FromOldWorkers) {
        if let Err(refused) = bridge.control_line(encoded(message)) {
            self.count_lost(refused);
        }
    }

    /// Forwards a worker's event or broadcast to the new master (behind its requests,
    /// dropped and counted when the bridge is full).
    pub(super) fn forward_relay(&self, bridge: &Outbox, message: &FromOldWorkers) {
        let mut line = encoded(message);
        line.push(b'\n');
        if let Err(refused) = bridge.relay(line.into()) {
            self.count_lost(refused);
        }
    }

    /// Counts a message of the workers that the bridge could not take. Needs no lock: it
    /// may be called under the state lock or the bridge's.
    fn count_lost(&self, refused: Refused) {
        match refused {
            Refused::Full => self.bridge_drops.count(
                "bridge_queue_full",
                1,
                "the bridge between the old and the new master is full (see --ipc-queue-size): dropping",
            ),
            Refused::Closed => self.bridge_drops.count(
                "bridge_closed",
                1,
                "the other master is gone: dropping what the workers sent over the bridge",
            ),
        }
    }

    /// Starts forwarding to the new master and takes what the service hands over, at once
    /// (under the state lock, then the bridge's: the order every caller takes them in):
    /// whatever a worker asks from here on is the new master's to answer. Returns the
    /// hand-over, this master's workers and the bridge's queue (written once the new master
    /// has the hand-over).
    pub(super) fn open_bridge(&self) -> (Option<serde_json::Value>, Vec<u64>, Arc<Outbox>) {
        let state = self.lock();
        let outbox = Outbox::new(state.config.ipc_queue_size);
        let mut bridge = self
            .bridge
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let service = self.service.get().and_then(|service| service.hand_over());
        let workers = state
            .slots
            .iter()
            .flat_map(|slot| {
                let Slot {
                    current,
                    incoming,
                    draining,
                    ..
                } = slot;
                current.iter().chain(incoming.iter()).chain(draining.iter())
            })
            .chain(state.spares.iter())
            .map(|proc| proc.generation)
            .collect();
        *bridge = Some(outbox.clone());
        (service, workers, outbox)
    }

    /// The new master did not take over: this master's service answers again. What its
    /// workers sent meanwhile is lost (counted).
    pub(super) fn close_bridge(&self, outbox: &Outbox) {
        *self
            .bridge
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        outbox.close();
        tracing::warn!(
            "the upgrade was given up after the hand-over: what the workers sent the service meanwhile is lost"
        );
    }

    /// Once the new master took over: writes the bridge's queue to it and delivers what it
    /// sends this master's workers, until either master exits.
    pub(super) fn run_bridge_to_successor(
        self: Arc<Self>,
        mut lines: ChannelLines,
        mut write: tokio::net::unix::OwnedWriteHalf,
        outbox: Arc<Outbox>,
    ) {
        let writer = outbox.clone();
        tokio::spawn(async move { writer.write_to(&mut write).await });
        tokio::spawn(async move {
            while let Ok(message) = read_message::<ToOldWorkers, _>(&mut lines).await {
                match message {
                    ToOldWorkers::Message { body } => {
                        let mut state = self.lock();
                        relay_to_all(&mut state, &body);
                    }
                    ToOldWorkers::Reply { worker, id, body } => {
                        if let Some(proc) = self.lock().proc(worker) {
                            let _ = proc.ipc.control(&ToWorker::Reply { id, body });
                        }
                    }
                    ToOldWorkers::Gather { key, body } => {
                        let asker = Requester::NewMaster(outbox.clone());
                        self.clone().gather(NO_WORKER, key, body, asker, false)
                    }
                    ToOldWorkers::Answers { key, answers } => self.answer(key, answers),
                }
            }
            tracing::info!("the bridge to the new master closed");
            outbox.close();
        });
    }

    /// Where this master's workers can be reached: the token naming their private sockets
    /// and their worker ids.
    pub(super) fn peers(&self) -> Peers {
        let state = self.lock();
        Peers {
            token: self.peers_token.clone(),
            worker_ids: state
                .slots
                .iter()
                .filter(|s| !s.retired)
                .filter_map(|s| s.current.as_ref().map(|p| p.worker_id))
                .collect(),
        }
    }

    /// Tells this master's workers where the other master's are, so a request that reaches
    /// one for a session of the other side (a keep-alive connection accepted by the other
    /// master, a long-polling client) is passed to the session's worker.
    pub(super) fn introduce_other_master(&self, pid: u32, peers: Peers) {
        let introduction = ToWorker::OtherMaster {
            master_pid: pid,
            peers,
        };
        let mut state = self.lock();
        for slot in state.slots.iter_mut() {
            for proc in slot.procs_mut() {
                if proc.speaks_ipc {
                    let _ = proc.ipc.control(&introduction);
                }
            }
        }
    }

    /// The other master while an upgrade's two masters run, to ask its workers too.
    pub(super) fn other_master(&self) -> Option<Requester> {
        if let Some(bridge) = self.bridged().as_ref() {
            return Some(Requester::NewMaster(bridge.clone()));
        }
        self.old_workers
            .get()
            .map(|old| Requester::OldMaster(old.clone()))
    }

    // The new master's side.

    /// Queues a line for the old master's workers, if the bridge is up: a numbered event or
    /// a broadcast. Called under the state lock for numbered events, so they go out in
    /// number order.
    pub(super) fn relay_to_old_workers(&self, line: &crate::outbox::LineBytes) {
        if let Some(old) = self.old_workers.get() {
            // Closed once the old master exited: nothing is lost then.
            if old.relay(line.clone()) == Err(Refused::Full) {
                self.count_lost(Refused::Full);
            }
        }
    }

    /// Serves the old master's workers (forwarded by the old master) as if they were this
    /// master's, until the old master exits; then forgets what they owned in the service.
    pub(super) async fn serve_old_workers(
        self: Arc<Self>,
        mut lines: ChannelLines,
        mut write: tokio::net::unix::OwnedWriteHalf,
        outbox: Arc<Outbox>,
        workers: Vec<u64>,
    ) {
        let writer = outbox.clone();
        tokio::spawn(async move { writer.write_to(&mut write).await });
        self.predecessor_draining.send_replace(true);
        let max_line = self.lock().config.ipc_max_line;
        let mut alive: HashSet<u64> = workers.into_iter().collect();
        while let Ok(message) = read_message::<FromOldWorkers, _>(&mut lines).await {
            match message {
                FromOldWorkers::Sequence { worker, body } => self.sequence(worker, &body),
                FromOldWorkers::Publish { worker, body } => self.relay_to_own(worker, &body),
                FromOldWorkers::Request { worker, id, body } => {
                    alive.insert(worker);
                    let body = match self.service.get() {
                        Some(service) => service.request(worker, body),
                        None => serde_json::json!({ "error": "this master offers no service" }),
                    };
                    let mut reply = ToOldWorkers::Reply { worker, id, body };
                    let mut line = serde_json::to_vec(&reply).unwrap_or_default();
                    if line.len() > max_line {
                        reply = ToOldWorkers::Reply {
                            worker,
                            id,
                            body: serde_json::json!({
                                "error": "the answer is longer than --ipc-max-line allows"
                            }),
                        };
                        line = serde_json::to_vec(&reply).unwrap_or_default();
                    }
                    if let Err(refused) = outbox.control_line(line) {
                        self.count_lost(refused);
                    }
                }
                FromOldWorkers::Tell { worker, body } => {
                    alive.insert(worker);
                    if let Some(service) = self.service.get() {
                        let _ = service.tell(worker, &body);
                    }
                }
                FromOldWorkers::WorkerGone { worker } => {
                    alive.remove(&worker);
                    self.forget_worker(worker);
                }
                FromOldWorkers::Gather { key, body } => {
                    let asker = Requester::OldMaster(outbox.clone());
                    self.clone().gather(NO_WORKER, key, body, asker, false)
                }
                FromOldWorkers::Answers { key, answers } => self.answer(key, answers),
            }
        }
        // The old master exited (or died): its workers are gone with it.
        outbox.close();
        for worker in alive {
            self.forget_worker(worker);
        }
        self.predecessor_draining.send_replace(false);
        tracing::info!("the old master is gone: this master serves every worker of the app");
    }

    /// A worker process ended: what it owned in the service goes, and every other worker
    /// (the old master's too, during an upgrade) hears of it.
    pub(super) fn forget_worker(&self, generation: u64) {
        let bridge = self.bridged();
        if let Some(bridge) = bridge.as_ref() {
            let gone = FromOldWorkers::WorkerGone { worker: generation };
            self.forward_request(bridge, &gone);
            return;
        }
        drop(bridge);
        if let Some(service) = self.service.get() {
            for message in service.worker_gone(generation) {
                self.relay(generation, &message);
            }
        }
    }

    /// Hands a message to this master's own workers but `from`.
    pub(super) fn relay_to_own(&self, from: u64, body: &RawValue) {
        let line = relay_line(body);
        let mut state = self.lock();
        Self::relay_to(&mut state, line, |proc| proc.generation != from);
    }
}

/// Hands a message from the new master to every worker of this (old) master.
fn relay_to_all(state: &mut State, body: &RawValue) {
    Inner::relay_to(state, relay_line(body), |_| true);
}

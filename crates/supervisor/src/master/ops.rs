//! The operations `chatctl` asks for: reload (one slot at a time, the new process first),
//! restart, scale, signal and stop.

use super::*;

impl Inner {
    /// Replaces one slot's process without a gap: start the new one, wait until it is ready,
    /// then let the old one drain and exit.
    pub(super) async fn replace(
        self: &Arc<Self>,
        slot_id: usize,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<(), String> {
        let (ready_timeout, drain_timeout) = {
            let mut state = self.lock();
            let (ready, drain) = (state.config.ready_timeout, state.config.drain_timeout);
            let slot = &mut state.slots[slot_id];
            if slot.retired || slot.replacing {
                return Ok(());
            }
            slot.replacing = true;
            (ready, drain)
        };
        let result = self
            .replace_locked_out(slot_id, ready_timeout, drain_timeout, progress)
            .await;
        self.lock().slots[slot_id].replacing = false;
        result
    }

    pub(super) async fn replace_locked_out(
        self: &Arc<Self>,
        slot_id: usize,
        ready_timeout: Duration,
        drain_timeout: Duration,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<(), String> {
        let spare = self.take_spare(slot_id);
        let Some(generation) = spare.or_else(|| self.clone().start_proc(slot_id, Role::Incoming))
        else {
            return Err(format!("worker {slot_id}: the new process could not start"));
        };
        let settled = self
            .wait_until(ready_timeout + Duration::from_secs(1), |state| {
                state.slots[slot_id]
                    .incoming
                    .as_ref()
                    .is_none_or(|p| p.generation != generation || p.ready)
            })
            .await;
        let (old, new_pid) = {
            let mut state = self.lock();
            let slot = &mut state.slots[slot_id];
            let ready = slot
                .incoming
                .as_ref()
                .is_some_and(|p| p.generation == generation && p.ready);
            if !settled || !ready {
                if let Some(incoming) = slot.incoming.take() {
                    signal(incoming.pid, libc::SIGKILL);
                }
                let reason = slot
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "it did not become ready".into());
                return Err(format!("worker {slot_id}: the new process failed ({reason}); the old one keeps serving"));
            }
            let new = slot.incoming.take();
            let new_pid = new.as_ref().map_or(0, |p| p.pid);
            let old = std::mem::replace(&mut slot.current, new);
            slot.status = Status::Online;
            slot.backoff = Backoff::default();
            let old_info = old.as_ref().map(|p| (p.pid, p.generation));
            if let Some(old) = old {
                drain(&old, drain_timeout);
                slot.draining.push(old);
            }
            (old_info, new_pid)
        };
        self.bump();
        let Some((old_pid, old_generation)) = old else {
            progress(format!("worker {slot_id}: pid {new_pid} online"));
            return Ok(());
        };
        progress(format!(
            "worker {slot_id}: pid {new_pid} online, pid {old_pid} draining"
        ));
        self.reap(slot_id, old_generation, old_pid, drain_timeout)
            .await;
        Ok(())
    }

    /// Waits for a draining process to exit; kills it when its time is up.
    pub(super) async fn reap(&self, slot_id: usize, generation: u64, pid: u32, timeout: Duration) {
        let gone = |state: &State| state.slots[slot_id].find(generation).is_none();
        if !self
            .wait_until(timeout + Duration::from_millis(500), gone)
            .await
        {
            if self.kill_tracked(generation).is_some() {
                tracing::warn!(
                    worker = slot_id,
                    pid,
                    "worker did not finish draining in {timeout:?}: killed it"
                );
            }
            self.wait_until(Duration::from_secs(5), gone).await;
        }
    }

    /// Reloads every worker, one at a time.
    pub(super) async fn reload(
        self: &Arc<Self>,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<String, String> {
        let slots: Vec<usize> = self
            .lock()
            .slots
            .iter()
            .filter(|s| !s.retired)
            .map(|s| s.id)
            .collect();
        // Under systemd: `reloading` until every worker is replaced (sd_notify(3)).
        crate::client::sd_notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            crate::client::monotonic_usec()
        ));
        // Spares of the old settings go; new ones start now and take the slots' places.
        self.renew_spares();
        let mut result = Ok(());
        for slot_id in &slots {
            result = self.replace(*slot_id, progress).await;
            if result.is_err() {
                break;
            }
        }
        crate::client::sd_notify("READY=1");
        result?;
        Ok(format!("reloaded {} workers", slots.len()))
    }

    /// Restarts every worker: each is stopped, then started again (not zero-downtime; see reload).
    pub(super) async fn restart(
        self: &Arc<Self>,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<String, String> {
        let (slots, stop_timeout) = {
            let state = self.lock();
            (
                state
                    .slots
                    .iter()
                    .filter(|s| !s.retired)
                    .map(|s| s.id)
                    .collect::<Vec<_>>(),
                state.config.stop_timeout,
            )
        };
        for slot_id in &slots {
            let old = {
                let mut state = self.lock();
                let slot = &mut state.slots[*slot_id];
                slot.status = Status::Stopping;
                slot.current.as_ref().map(|p| {
                    drain(p, stop_timeout);
                    (p.pid, p.generation)
                })
            };
            if let Some((pid, generation)) = old {
                self.reap(*slot_id, generation, pid, stop_timeout).await;
            }
            {
                let mut state = self.lock();
                let slot = &mut state.slots[*slot_id];
                slot.status = Status::Launching;
                slot.backoff = Backoff::default();
                slot.restarts += 1;
            }
            let generation = self.clone().start_proc(*slot_id, Role::Current);
            let ready_timeout = self.lock().config.ready_timeout;
            let online = |state: &State| {
                state.slots[*slot_id]
                    .current
                    .as_ref()
                    .is_some_and(|p| p.ready && Some(p.generation) == generation)
            };
            if self.wait_until(ready_timeout, online).await {
                progress(format!("worker {slot_id}: restarted"));
            } else {
                progress(format!("worker {slot_id}: restarted but not online yet"));
            }
        }
        Ok(format!("restarted {} workers", slots.len()))
    }

    /// Changes the number of workers.
    pub(super) async fn scale(self: &Arc<Self>, instances: usize) -> Result<String, String> {
        if instances == 0 || instances > 1024 {
            return Err(format!(
                "instances must be between 1 and 1024, not {instances}"
            ));
        }
        let (to_start, to_stop, stop_timeout) = {
            let mut state = self.lock();
            state.config.instances = instances;
            let stop_timeout = state.config.stop_timeout;
            while state.slots.len() < instances {
                let id = state.slots.len();
                state.slots.push(Slot::new(id));
                state.slots[id].retired = true;
            }
            let mut to_start = Vec::new();
            let mut to_stop = Vec::new();
            for slot in state.slots.iter_mut() {
                if slot.id < instances && slot.retired {
                    slot.retired = false;
                    slot.status = Status::Launching;
                    if slot.current.is_none() {
                        to_start.push(slot.id);
                    }
                } else if slot.id >= instances && !slot.retired {
                    slot.retired = true;
                    slot.status = Status::Stopping;
                    let id = slot.id;
                    for proc in slot.procs_mut() {
                        drain(proc, stop_timeout);
                        to_stop.push((id, proc.generation, proc.pid));
                    }
                }
            }
            (to_start, to_stop, stop_timeout)
        };
        for slot_id in to_start {
            self.clone().start_proc(slot_id, Role::Current);
        }
        for (slot_id, generation, pid) in to_stop {
            self.reap(slot_id, generation, pid, stop_timeout).await;
        }
        self.bump();
        Ok(format!("scaled to {instances} workers"))
    }

    /// `chatctl signal`: sends `signal` to the current process of every worker, or of one.
    pub(super) fn send_signal(
        &self,
        signal_name: SignalName,
        worker: Option<usize>,
    ) -> Result<String, String> {
        let state = self.lock();
        let live = |slot: &&Slot| !slot.retired;
        if let Some(id) = worker {
            if !state.slots.iter().filter(live).any(|slot| slot.id == id) {
                return Err(format!(
                    "there is no worker {id}: see `chatctl status {}`",
                    state.config.name
                ));
            }
        }
        let mut pids = Vec::new();
        for slot in state.slots.iter().filter(live) {
            if worker.is_none_or(|id| id == slot.id) {
                if let Some(proc) = &slot.current {
                    signal(proc.pid, signal_name.number());
                    pids.push(proc.pid.to_string());
                }
            }
        }
        if pids.is_empty() {
            return Err("no worker process is running to signal".into());
        }
        tracing::info!(pids = %pids.join(" "), "sent {signal_name} on request");
        Ok(format!("sent {signal_name} to pid {}", pids.join(", ")))
    }

    /// Stops every worker: drain (or the kill signal), then SIGKILL after the stop timeout.
    pub(super) async fn stop(self: &Arc<Self>) {
        let (workers, timeout) = {
            let mut state = self.lock();
            state.stopping = true;
            let timeout = state.config.stop_timeout;
            let mut workers = 0;
            for slot in state.slots.iter_mut() {
                slot.status = Status::Stopping;
            }
            for proc in state.procs_mut() {
                drain(proc, timeout);
                workers += 1;
            }
            (workers, timeout)
        };
        tracing::info!(workers, "stopping");
        let all_gone = |state: &State| {
            state.spares.is_empty()
                && state
                    .slots
                    .iter()
                    .all(|s| s.current.is_none() && s.incoming.is_none() && s.draining.is_empty())
        };
        if !self.wait_until(timeout, all_gone).await {
            // Only those still tracked: the pid of one that exited meanwhile may name another
            // program by now.
            for proc in self.lock().procs_mut() {
                signal(proc.pid, libc::SIGKILL);
            }
            self.wait_until(Duration::from_secs(5), all_gone).await;
        }
        for slot in self.lock().slots.iter_mut() {
            slot.status = Status::Stopped;
        }
        self.bump();
    }
}

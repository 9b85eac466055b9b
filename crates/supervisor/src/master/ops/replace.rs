//! Replacing one slot's process without a gap, as a reload and a memory replacement do: the
//! new process first, then the old one drains.

use std::sync::Arc;
use std::time::Duration;

use super::super::state::{Event, Role, State};
use super::super::{drain, Inner};
use crate::backoff::Backoff;
use crate::control::Status;
use nix::sys::signal::Signal;

use crate::spawn::signal;

impl Inner {
    /// Replaces one slot's process without a gap: start the new one, wait until it is ready,
    /// then let the old one drain and exit.
    pub(in crate::master) async fn replace(
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

    pub(in crate::master) async fn replace_locked_out(
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
                    signal(incoming.pid, Signal::SIGKILL);
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
        self.reap(slot_id, old_generation, drain_timeout).await;
        Ok(())
    }

    /// Waits for a draining process to exit; kills it when its time is up.
    pub(in crate::master) async fn reap(
        self: &Arc<Self>,
        slot_id: usize,
        generation: u64,
        timeout: Duration,
    ) {
        let gone = |state: &State| state.slots[slot_id].find(generation).is_none();
        if !self
            .wait_until(timeout + Duration::from_millis(500), gone)
            .await
        {
            self.apply(Event::DrainTimedOut {
                generation,
                timeout,
            });
            self.wait_until(Duration::from_secs(5), gone).await;
        }
    }
}

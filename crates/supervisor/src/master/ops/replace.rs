//! Replacing one slot's process without a gap, as a reload and a memory replacement do: the
//! new process first, then the old one drains.

use std::sync::Arc;
use std::time::Duration;

use super::super::state::{Event, State, Swapped};
use super::super::Inner;

impl Inner {
    /// Replaces one slot's process without a gap: start the new one (or take a spare), wait
    /// until it is ready, then let the old one drain and exit.
    pub(in crate::master) async fn replace(
        self: &Arc<Self>,
        slot_id: usize,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<(), String> {
        let (begun, ready_timeout) = {
            let mut state = self.lock();
            (state.begin_replace(slot_id), state.config.ready_timeout)
        };
        let Some(actions) = begun else {
            return Ok(());
        };
        self.bump();
        self.perform(actions);
        let incoming = self.lock().slots[slot_id]
            .incoming
            .as_ref()
            .map(|p| p.generation);
        let Some(generation) = incoming else {
            self.lock().slots[slot_id].replacing = false;
            return Err(format!("worker {slot_id}: the new process could not start"));
        };
        self.wait_until(ready_timeout + Duration::from_secs(1), |state| {
            state.slots[slot_id]
                .incoming
                .as_ref()
                .is_none_or(|p| p.generation != generation || p.ready)
        })
        .await;
        let (swapped, actions) = self.lock().finish_replace(slot_id, generation);
        self.bump();
        self.perform(actions);
        let swapped = swapped.map_err(|reason| {
            format!(
                "worker {slot_id}: the new process failed ({reason}); the old one keeps serving"
            )
        })?;
        let Swapped { new_pid, old } = swapped;
        let Some((old_pid, old_generation)) = old else {
            progress(format!("worker {slot_id}: pid {new_pid} online"));
            return Ok(());
        };
        progress(format!(
            "worker {slot_id}: pid {new_pid} online, pid {old_pid} draining"
        ));
        let drain_timeout = self.lock().config.drain_timeout;
        // A worker that hands its sessions over says how that went before it exits.
        let report = |state: &State| {
            state.slots[slot_id]
                .hand_off
                .filter(|(generation, _)| *generation == old_generation)
                .map(|(_, counts)| counts)
        };
        let reported =
            |state: &State| report(state).is_some() || state.proc(old_generation).is_none();
        let handing_off = self.lock().slots[slot_id]
            .current
            .as_ref()
            .is_some_and(|p| !p.adopted_ids.is_empty());
        if handing_off {
            self.wait_until(drain_timeout, reported).await;
        }
        let counts = report(&self.lock());
        if let Some(counts) = counts {
            progress(format!(
                "worker {slot_id}: {} connections handed off, {} drained, {} failed",
                counts.handed_off, counts.drained, counts.failed
            ));
        }
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

//! `chatctl signal`: a signal to the workers' current processes.

use super::super::state::Slot;
use super::super::Inner;
use crate::signals::SignalName;
use crate::spawn::signal;

impl Inner {
    /// `chatctl signal`: sends `signal` to the current process of every worker, or of one.
    pub(in crate::master) fn send_signal(
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
                    signal(proc.pid, signal_name);
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
}

//! `--spare N`: warm workers, started and ready but given no connection, so that a crashed
//! worker's place is taken at once and a reload swaps each worker without waiting for a new
//! one to start. Spares run the settings of their epoch: a reload starts a new epoch (new
//! spares from the new program and settings) and stops the old ones.

use std::sync::Arc;
use std::time::Duration;

use super::{drain, Inner, Role, Status};
use crate::backoff::RestartDecision;

impl Inner {
    /// Starts spares until the app has as many of the current epoch as it wants.
    pub(super) fn top_up_spares(self: &Arc<Self>) {
        let (missing, first_label) = {
            let state = self.lock();
            if state.stopping {
                return;
            }
            let have = state
                .spares
                .iter()
                .filter(|p| p.epoch == state.epoch)
                .count();
            (
                state.config.spare.saturating_sub(have),
                state.slots.len() + have,
            )
        };
        for k in 0..missing {
            // The label its output lines carry: the first id past the slots.
            self.clone().start_proc(first_label + k, Role::Spare);
        }
    }

    /// Puts a ready spare of the current epoch in the place of slot `slot_id`'s process, which
    /// just exited (`why`). False if there is none: the slot restarts as without spares.
    pub(super) fn promote_spare(self: &Arc<Self>, slot_id: usize, why: &str) -> bool {
        let promoted = {
            let mut state = self.lock();
            let state = &mut *state;
            let epoch = state.epoch;
            let Some(index) = state
                .spares
                .iter()
                .position(|p| p.ready && p.epoch == epoch)
            else {
                return false;
            };
            let slot = &mut state.slots[slot_id];
            if state.stopping || slot.retired || slot.current.is_some() {
                return false;
            }
            let spare = state.spares.remove(index);
            let pid = spare.pid;
            slot.current = Some(spare);
            slot.status = Status::Online;
            slot.restarts += 1;
            slot.last_error = Some(why.to_owned());
            pid
        };
        tracing::info!(
            worker = slot_id,
            pid = promoted,
            "spare worker took the place of the one that exited"
        );
        self.bump();
        self.top_up_spares();
        true
    }

    /// For a reload of slot `slot_id`: moves a spare of the current epoch (a ready one first)
    /// into the slot as its incoming process, and returns its generation.
    pub(super) fn take_spare(self: &Arc<Self>, slot_id: usize) -> Option<u64> {
        let generation = {
            let mut state = self.lock();
            let state = &mut *state;
            let epoch = state.epoch;
            let index = state
                .spares
                .iter()
                .enumerate()
                .filter(|(_, p)| p.epoch == epoch)
                .min_by_key(|(_, p)| !p.ready)
                .map(|(index, _)| index)?;
            let spare = state.spares.remove(index);
            let generation = spare.generation;
            state.slots[slot_id].incoming = Some(spare);
            generation
        };
        self.top_up_spares();
        Some(generation)
    }

    /// A reload begins: spares of the old epoch are asked to finish (killed if they do not
    /// within the stop timeout), and new ones start.
    pub(super) fn renew_spares(self: &Arc<Self>) {
        let (stale, timeout) = {
            let mut state = self.lock();
            if state.config.spare == 0 && state.spares.is_empty() {
                return;
            }
            state.epoch += 1;
            let timeout = state.config.stop_timeout;
            let mut stale = Vec::new();
            for spare in &state.spares {
                drain(spare, timeout);
                stale.push(spare.generation);
            }
            (stale, timeout)
        };
        if !stale.is_empty() {
            let inner = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                for generation in stale {
                    inner.kill_tracked(generation);
                }
            });
        }
        self.top_up_spares();
    }

    /// A spare exited: forget it, and start another one (later, if spares keep failing).
    pub(super) fn on_spare_exit(
        self: Arc<Self>,
        generation: u64,
        code: Option<i32>,
        description: String,
    ) {
        let exited = {
            let mut state = self.lock();
            let index = state.spares.iter().position(|p| p.generation == generation);
            let spare = index.map(|index| state.spares.remove(index));
            spare.map(|spare| {
                (
                    spare.pid,
                    spare.started.elapsed(),
                    spare.epoch == state.epoch,
                )
            })
        };
        self.bump();
        let Some((pid, uptime, current)) = exited else {
            return;
        };
        if !current || self.lock().stopping {
            tracing::info!(pid, "old spare worker {description}");
            return;
        }
        tracing::warn!(pid, "spare worker {description}");
        self.after_spare_failure(code, uptime);
    }

    /// A spare failed (exited, or could not start): start another after the backoff delay.
    pub(super) fn after_spare_failure(self: Arc<Self>, code: Option<i32>, uptime: Duration) {
        let delay = {
            let mut state = self.lock();
            let policy = state.config.restart.clone();
            match state.spare_backoff.on_exit(&policy, code, uptime) {
                RestartDecision::Restart { delay, .. } => delay,
                RestartDecision::Stop => return,
            }
        };
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            self.top_up_spares();
        });
    }
}

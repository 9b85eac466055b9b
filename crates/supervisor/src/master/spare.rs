//! `--spare N`: warm workers, started and ready but given no connection, so that a crashed
//! worker's place is taken at once and a reload swaps each worker without waiting for a new
//! one to start. Spares run the settings of their epoch: a reload starts a new epoch (new
//! spares from the new program and settings) and stops the old ones. Promotion after a crash
//! and the restart of failed spares are transitions of the state machine (`state.rs`).

use std::sync::Arc;

use super::{drain, Inner};

impl Inner {
    /// Starts spares until the app has as many of the current epoch as it wants.
    pub(super) fn top_up_spares(self: &Arc<Self>) {
        let mut actions = Vec::new();
        self.lock().top_up_spares(&mut actions);
        self.perform(actions);
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
}

//! `--spare N`: warm workers, started and ready but given no connection, so that a crashed
//! worker's place is taken at once and a reload swaps each worker without waiting for a new
//! one to start. Spares run the settings of their epoch: a reload starts a new epoch (new
//! spares from the new program and settings) and stops the old ones. Promotion after a crash
//! and the restart of failed spares are transitions of the state machine (`state.rs`).

use std::sync::Arc;

use super::Inner;

impl Inner {
    /// Starts spares until the app has as many of the current epoch as it wants.
    pub(super) fn top_up_spares(self: &Arc<Self>) {
        let mut actions = Vec::new();
        self.lock().top_up_spares(&mut actions);
        self.perform(actions);
    }

    /// A reload begins: spares of the old settings go, and new ones start.
    pub(super) fn renew_spares(self: &Arc<Self>) {
        let actions = self.lock().renew_spares();
        self.perform(actions);
    }
}

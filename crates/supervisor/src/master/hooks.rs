//! The shell's side of event hooks (`crate::hooks`): an occurrence the state machine or an
//! operation reports becomes a hook run with the app's current settings.

use super::Inner;
use crate::hooks::{Occurrence, WorkerLogs};

impl Inner {
    /// Runs the app's event hook for `occurrence`, if it has one; returns at once.
    pub(super) fn raise(&self, occurrence: Occurrence) {
        let (name, hooks, split, json) = {
            let state = self.lock();
            let config = &state.config;
            if config.hooks.on_event.is_none() {
                return;
            }
            (
                config.name.clone(),
                config.hooks.clone(),
                config.log_split,
                config.log_json,
            )
        };
        let files = if split {
            vec![self.paths.out_log.clone(), self.paths.err_log.clone()]
        } else {
            vec![self.paths.log_file.clone()]
        };
        let logs = WorkerLogs { files, json };
        self.hooks.fire(&name, &hooks, logs, occurrence);
    }
}

//! `chatctl scale`: slots added (started) or retired (drained); the decision is the state
//! machine's `Event::Scaled`.

use std::sync::Arc;

use super::super::state::{Action, Event};
use super::super::Inner;

impl Inner {
    /// Changes the number of workers, and returns once the retired ones are gone.
    pub(in crate::master) async fn scale(
        self: &Arc<Self>,
        instances: usize,
    ) -> Result<String, String> {
        if instances == 0 || instances > 1024 {
            return Err(format!(
                "instances must be between 1 and 1024, not {instances}"
            ));
        }
        let actions = self.lock().apply(Event::Scaled { instances });
        let retired: Vec<(u64, std::time::Duration)> = actions
            .iter()
            .filter_map(|action| match action {
                Action::Drain {
                    generation,
                    timeout,
                    ..
                } => Some((*generation, *timeout)),
                _ => None,
            })
            .collect();
        self.bump();
        self.perform(actions);
        for (generation, timeout) in retired {
            let slot = self.lock().slot_of(generation);
            if let Some(slot) = slot {
                self.reap(slot, generation, timeout).await;
            }
        }
        self.bump();
        Ok(format!("scaled to {instances} workers"))
    }
}

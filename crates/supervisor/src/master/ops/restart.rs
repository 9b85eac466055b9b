//! `chatctl restart`: every worker stopped, then started again (not zero-downtime; see reload).

use std::sync::Arc;

use super::super::state::State;
use super::super::Inner;

impl Inner {
    /// Restarts every worker: each is stopped, then started again (not zero-downtime; see reload).
    pub(in crate::master) async fn restart(
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
            let began = std::time::Instant::now();
            let (old, actions) = self.lock().stop_for_restart(*slot_id, stop_timeout);
            self.bump();
            self.perform(actions);
            if let Some(generation) = old {
                self.reap(*slot_id, generation, stop_timeout).await;
            }
            let actions = self.lock().relaunch(*slot_id);
            self.perform(actions);
            let generation = self.lock().slots[*slot_id]
                .current
                .as_ref()
                .map(|p| p.generation);
            let ready_timeout = self.lock().config.ready_timeout;
            let online = |state: &State| {
                state.slots[*slot_id]
                    .current
                    .as_ref()
                    .is_some_and(|p| p.ready && Some(p.generation) == generation)
            };
            if self.wait_until(ready_timeout, online).await {
                self.observer.restarted(*slot_id, began.elapsed());
                progress(format!("worker {slot_id}: restarted"));
            } else {
                progress(format!("worker {slot_id}: restarted but not online yet"));
            }
        }
        Ok(format!("restarted {} workers", slots.len()))
    }
}

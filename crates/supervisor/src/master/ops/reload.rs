//! `chatctl reload` and SIGHUP: every worker replaced, one at a time, without a gap.

use std::sync::Arc;

use super::super::Inner;
use crate::hooks::{HookEvent, Occurrence};

impl Inner {
    /// Reloads every worker, one at a time.
    pub(in crate::master) async fn reload(
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
            let began = std::time::Instant::now();
            result = self.replace(*slot_id, progress).await;
            if result.is_err() {
                break;
            }
            self.observer.reloaded(*slot_id, began.elapsed());
        }
        match &result {
            Ok(()) => self.observer.record(
                "reload",
                None,
                None,
                format!("reloaded {} workers", slots.len()),
            ),
            Err(error) => self
                .observer
                .record("reload_failed", None, None, error.clone()),
        }
        crate::client::sd_notify("READY=1");
        let (event, message) = match &result {
            Ok(()) => (
                HookEvent::ReloadDone,
                format!("reloaded {} workers", slots.len()),
            ),
            Err(error) => (HookEvent::ReloadFailed, format!("reload failed: {error}")),
        };
        self.raise(Occurrence::about_app(event, message.clone()));
        result.map(|()| message)
    }
}

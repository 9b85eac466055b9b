//! Reloads nobody asked for on the command line: `--watch` and `--cron-restart`.

use std::sync::Arc;
use std::time::Duration;

use super::state::Phase;
use super::Inner;
use crate::triggers::{self, Watcher};

impl Inner {
    /// `--watch`: a rolling reload after each gathered change of the watched files.
    pub(super) async fn reload_on_change(self: Arc<Self>, mut watcher: Watcher) {
        loop {
            let changed = watcher.changed().await;
            if self.lock().phase != Phase::Running {
                return;
            }
            let files: Vec<String> = changed.iter().map(|p| p.display().to_string()).collect();
            tracing::info!(files = %files.join(" "), "watched files changed: reloading");
            self.reload_logged("watch").await;
        }
    }

    /// `--cron-restart`: a rolling reload each time the expression names.
    pub(super) async fn reload_on_schedule(self: Arc<Self>, expression: String) {
        let Ok(cron) = triggers::schedule(&expression) else {
            return;
        };
        loop {
            let Some(wait) = triggers::until_next(&cron) else {
                tracing::warn!(%expression, "--cron-restart names no time to come: no more scheduled reloads");
                return;
            };
            // Past the second it names, so one time is one reload.
            tokio::time::sleep(wait + Duration::from_millis(5)).await;
            if self.lock().phase != Phase::Running {
                return;
            }
            tracing::info!(%expression, "scheduled reload (--cron-restart)");
            self.reload_logged("cron").await;
        }
    }

    async fn reload_logged(self: &Arc<Self>, cause: &str) {
        let progress = |line: String| tracing::info!("{line}");
        match self.reload(&progress).await {
            Ok(message) => tracing::info!(cause, "{message}"),
            Err(error) => tracing::error!(cause, %error, "reload failed"),
        }
    }
}

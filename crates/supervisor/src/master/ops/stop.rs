//! `chatctl stop`, SIGTERM and SIGINT: every process drained, then killed after the stop
//! timeout. The master exits once the stop is answered ([`Inner::finish`]).

use std::sync::Arc;
use std::time::Duration;

use super::super::state::{Event, Phase, State};
use super::super::Inner;

impl Inner {
    /// Stops every worker: drain (or the kill signal), then SIGKILL after the stop timeout.
    pub(in crate::master) async fn stop(self: &Arc<Self>) {
        let adopters = self
            .successor_workers
            .lock()
            .map(|mut adopters| std::mem::take(&mut *adopters))
            .unwrap_or_default();
        self.apply(if adopters.is_empty() {
            Event::StopRequested
        } else {
            Event::HandOverRequested { adopters }
        });
        let timeout = self.lock().config.stop_timeout;
        if !self.wait_until(timeout, State::all_gone).await {
            self.apply(Event::StopTimedOut);
            self.wait_until(Duration::from_secs(5), State::all_gone)
                .await;
        }
        self.apply(Event::Stopped);
    }

    /// The stop is done and answered: the master exits.
    pub(in crate::master) fn finish(self: &Arc<Self>) {
        self.apply(Event::Finished);
    }

    /// Waits until the master is to exit.
    pub(in crate::master) async fn finished(&self) {
        let mut changed = self.changed.subscribe();
        while self.lock().phase != Phase::Finished {
            if changed.changed().await.is_err() {
                return;
            }
        }
    }
}

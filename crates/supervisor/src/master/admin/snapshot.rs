//! The app as the admin address shows it: what `chatctl status --json` shows, plus what the
//! status leaves out (CPU seconds, the workers' own counts, restarts by cause). One snapshot
//! serves the metrics, the page's first view and its live feed.

use std::collections::BTreeMap;

use serde::Serialize;

use super::super::Inner;
use super::events::{Observer, CAUSES};
use crate::control::{AppStatus, WorkerStatus};
use crate::worker_stats::WorkerStats;

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    #[serde(flatten)]
    pub status: AppStatus,
    /// Unix time in milliseconds, for the page's charts.
    pub time_ms: u64,
    pub details: Vec<WorkerDetails>,
}

/// What a worker's row has beyond its [`WorkerStatus`] (same order as `status.workers`).
#[derive(Debug, Clone, Serialize)]
pub struct WorkerDetails {
    pub id: usize,
    pub cpu_seconds: f64,
    pub stats: WorkerStats,
    pub restarts_by_cause: BTreeMap<&'static str, u64>,
}

impl Inner {
    pub(in crate::master) fn admin_snapshot(&self, observer: &Observer) -> Snapshot {
        let status = self.status();
        let mut by_slot = BTreeMap::new();
        {
            let state = self.lock();
            for slot in &state.slots {
                if let Some(proc) = &slot.current {
                    by_slot.insert(slot.id, (proc.cpu.used().as_secs_f64(), proc.stats.clone()));
                }
            }
        }
        let details = status
            .workers
            .iter()
            .map(|worker: &WorkerStatus| {
                let (cpu_seconds, stats) = by_slot.remove(&worker.id).unwrap_or_default();
                let restarts_by_cause = CAUSES
                    .iter()
                    .map(|cause| {
                        let mut labels = observer.worker_labels(worker.id);
                        labels.push(("cause".into(), (*cause).into()));
                        let count = observer.restarts.get(&labels).map_or(0, |c| c.get());
                        (*cause, count)
                    })
                    .collect();
                WorkerDetails {
                    id: worker.id,
                    cpu_seconds,
                    stats,
                    restarts_by_cause,
                }
            })
            .collect();
        Snapshot {
            status,
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            details,
        }
    }
}

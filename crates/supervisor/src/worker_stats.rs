//! What a worker counts about its clients and reports with every pong, for the metrics and
//! the dashboard of the master's admin address (`--admin`): one scrape target for the whole
//! app, never one per worker.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The most entries of one map a worker's report keeps: a worker names its own namespaces
/// and transports, but the master's memory must not depend on it.
pub const MAX_ENTRIES: usize = 64;

/// Counts of one worker process since it started (counters) or right now (gauges).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerStats {
    /// Engine.IO packets received from clients.
    pub packets_in: u64,
    /// Engine.IO packets queued for clients.
    pub packets_out: u64,
    /// Open Engine.IO sessions by transport (`polling`, `websocket`).
    pub sessions: BTreeMap<String, u64>,
    /// Connected Socket.IO sockets by namespace.
    pub sockets: BTreeMap<String, u64>,
    /// Rooms with local members by namespace, the sockets' own rooms apart.
    pub rooms: BTreeMap<String, u64>,
    /// Engine.IO sessions closed, by reason (`slow_client`: its queue was full).
    pub sessions_closed: BTreeMap<String, u64>,
    /// Handshakes refused, by reason (`pending_limit`, `max_sessions`).
    pub handshakes_refused: BTreeMap<String, u64>,
    /// Broadcasts its handlers emitted.
    pub broadcasts: u64,
    /// Its sockets a broadcast reached (its own broadcasts and those of other workers).
    pub deliveries: u64,
    /// Whether its Redis connection works; `None` without Redis, or before the first command.
    pub redis_connected: Option<bool>,
    /// Its Redis commands that failed for an outage.
    pub redis_errors: u64,
}

impl WorkerStats {
    /// The report with each map cut to [`MAX_ENTRIES`] and each name to 100 bytes.
    pub fn bounded(mut self) -> WorkerStats {
        for map in [
            &mut self.sessions,
            &mut self.sockets,
            &mut self.rooms,
            &mut self.sessions_closed,
            &mut self.handshakes_refused,
        ] {
            let kept: BTreeMap<String, u64> = std::mem::take(map)
                .into_iter()
                .filter(|(name, _)| name.len() <= 100)
                .take(MAX_ENTRIES)
                .collect();
            *map = kept;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_bounded_whatever_a_worker_sends() {
        let stats = WorkerStats {
            sockets: (0..1000).map(|n| (format!("/ns{n}"), n)).collect(),
            sessions: [("x".repeat(1000), 1), ("polling".into(), 2)].into(),
            ..WorkerStats::default()
        }
        .bounded();
        assert_eq!(stats.sockets.len(), MAX_ENTRIES);
        assert_eq!(stats.sessions, [("polling".to_owned(), 2)].into());
    }

    #[test]
    fn a_pong_without_stats_still_parses() {
        let stats: WorkerStats = serde_json::from_str("{}").unwrap();
        assert_eq!(stats, WorkerStats::default());
    }
}

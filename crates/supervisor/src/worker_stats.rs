//! What a worker counts about its clients and reports with every pong, for the metrics and
//! the dashboard of the master's admin address (`--admin`): one scrape target for the whole
//! app, never one per worker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The most entries of one map a worker's report keeps: a worker names its own namespaces
/// and transports, but the master's memory must not depend on it.
pub const MAX_ENTRIES: usize = 64;

/// Counts of one worker process since it started (counters) or right now (gauges).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// How long its Redis commands took, answered or not (with `--redis`).
    pub redis_round_trip: Option<Timings>,
    /// Connection-state recovery: `attempts` (clients that came back with a private id),
    /// `recovered` (given their sockets back), `replayed` (events replayed to them), `gaps`
    /// (numbered events this worker never got, each possibly lost for its clients).
    pub recovery: BTreeMap<String, u64>,
}

/// A histogram as a worker reports it: `counts[i]` observations up to `bounds[i]` seconds
/// (and above the one before), the last count for those above every bound.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timings {
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    /// Seconds, all observations together.
    pub sum: f64,
}

impl Timings {
    /// Whether it is a histogram the master can show: finite increasing bounds (at most
    /// [`MAX_ENTRIES`]) and one count per bucket.
    pub fn is_valid(&self) -> bool {
        self.bounds.len() <= MAX_ENTRIES
            && self.counts.len() == self.bounds.len() + 1
            && self.bounds.iter().all(|b| b.is_finite())
            && self.bounds.windows(2).all(|w| w[0] < w[1])
            && self.sum.is_finite()
            && self.sum >= 0.0
    }
}

/// Buckets of round trips to a server nearby: 0.5 ms to 2.5 s.
pub const ROUND_TRIP_BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Durations a worker measures and reports as [`Timings`]; shared by the tasks that measure.
#[derive(Debug)]
pub struct Timer {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
}

impl Timer {
    pub fn new(bounds: &'static [f64]) -> Timer {
        Timer {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = self.bounds.partition_point(|bound| *bound < seconds);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn timings(&self) -> Timings {
        Timings {
            bounds: self.bounds.to_vec(),
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
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
            &mut self.recovery,
        ] {
            let kept: BTreeMap<String, u64> = std::mem::take(map)
                .into_iter()
                .filter(|(name, _)| name.len() <= 100)
                .take(MAX_ENTRIES)
                .collect();
            *map = kept;
        }
        if !self.redis_round_trip.as_ref().is_none_or(Timings::is_valid) {
            self.redis_round_trip = None;
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
    fn a_timer_counts_each_duration_in_its_bucket() {
        let timer = Timer::new(&[0.001, 0.01]);
        for ms in [0, 1, 5, 10, 11, 3000] {
            timer.observe(Duration::from_millis(ms));
        }
        let timings = timer.timings();
        assert_eq!(timings.counts, vec![2, 2, 2]);
        assert!((timings.sum - 3.027).abs() < 1e-9, "{}", timings.sum);
        assert!(timings.is_valid());
    }

    #[test]
    fn a_histogram_that_does_not_add_up_is_left_out() {
        let broken = |bounds: Vec<f64>, counts: Vec<u64>| WorkerStats {
            redis_round_trip: Some(Timings {
                bounds,
                counts,
                sum: 1.0,
            }),
            ..WorkerStats::default()
        };
        for stats in [
            broken(vec![0.1, 0.2], vec![1, 2]),
            broken(vec![0.2, 0.1], vec![1, 2, 3]),
            broken(vec![f64::NAN], vec![1, 2]),
            broken((0..100).map(f64::from).collect(), vec![0; 101]),
        ] {
            assert_eq!(stats.bounded().redis_round_trip, None);
        }
        let fine = broken(vec![0.1, 0.2], vec![1, 2, 3]).bounded();
        assert!(fine.redis_round_trip.is_some());
    }

    #[test]
    fn a_pong_without_stats_still_parses() {
        let stats: WorkerStats = serde_json::from_str("{}").unwrap();
        assert_eq!(stats, WorkerStats::default());
    }
}

//! Messages dropped on purpose — a queue full behind a slow reader, an unreachable Redis, a
//! failed history write — counted by cause, so that `chatctl status --json` shows every loss,
//! and logged at a bounded rate, so that a flood of losses costs one log line per cause and
//! interval rather than one per message.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often a process logs one cause of dropped messages at most: often enough that an
/// operator sees a loss as it happens, rarely enough that a flood of losses (every broadcast
/// of a storm) costs a log line per cause and interval, not one per message.
pub const DEFAULT_DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The counts of one process (or, in the master, of what it dropped on a worker's behalf).
#[derive(Debug)]
pub struct Drops {
    /// Shortest time between two log lines about one cause.
    log_interval: Duration,
    causes: Mutex<BTreeMap<&'static str, CauseCount>>,
}

#[derive(Debug, Default)]
struct CauseCount {
    total: u64,
    /// Dropped since the last log line about this cause, for the next one.
    unlogged: u64,
    logged_at: Option<Instant>,
}

impl Default for Drops {
    fn default() -> Self {
        Drops::new(DEFAULT_DROP_LOG_INTERVAL)
    }
}

impl Drops {
    pub fn new(log_interval: Duration) -> Self {
        Drops {
            log_interval,
            causes: Mutex::new(BTreeMap::new()),
        }
    }

    fn causes(&self) -> MutexGuard<'_, BTreeMap<&'static str, CauseCount>> {
        // Counting cannot leave the map half-changed: a poisoned lock is still usable.
        self.causes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts `dropped` messages lost for `cause` (a `snake_case` name, the key `status`
    /// shows), and logs `why` with the counts unless this cause was logged less than the log
    /// interval ago. `why` is only formatted when logged: pass `format_args!`, not a `String`.
    pub fn count(&self, cause: &'static str, dropped: u64, why: impl std::fmt::Display) {
        let now = Instant::now();
        let (unlogged, total) = {
            let mut causes = self.causes();
            let count = causes.entry(cause).or_default();
            count.total = count.total.saturating_add(dropped);
            count.unlogged = count.unlogged.saturating_add(dropped);
            let recent = count
                .logged_at
                .is_some_and(|at| now.duration_since(at) < self.log_interval);
            if recent {
                return;
            }
            count.logged_at = Some(now);
            (std::mem::take(&mut count.unlogged), count.total)
        };
        tracing::warn!(
            cause,
            dropped = unlogged,
            total,
            "{why} (messages dropped since the last report: {unlogged}, in all: {total})"
        );
    }

    /// Every cause counted so far and its total, for `status`.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.causes()
            .iter()
            .map(|(cause, count)| ((*cause).to_owned(), count.total))
            .collect()
    }
}

/// Adds the counts of `more` to `into`, saturating (the figures come from workers, which the
/// master does not trust to keep them small).
pub fn merge(into: &mut BTreeMap<String, u64>, more: &BTreeMap<String, u64>) {
    for (cause, count) in more {
        let total = into.entry(cause.clone()).or_default();
        *total = total.saturating_add(*count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_counted_by_cause() {
        let drops = Drops::new(Duration::from_secs(3600));
        drops.count("queue_full", 1, "a queue is full");
        drops.count("queue_full", 2, "a queue is full");
        drops.count("write_failed", 5, "a write failed");
        let counts = drops.snapshot();
        assert_eq!(counts.get("queue_full"), Some(&3));
        assert_eq!(counts.get("write_failed"), Some(&5));
        drops.count("queue_full", u64::MAX, "a queue is full");
        assert_eq!(drops.snapshot().get("queue_full"), Some(&u64::MAX));
    }

    #[test]
    fn counts_merge_saturating() {
        let mut into = BTreeMap::from([("a".to_owned(), u64::MAX - 1)]);
        merge(
            &mut into,
            &BTreeMap::from([("a".to_owned(), 5), ("b".to_owned(), 1)]),
        );
        assert_eq!(
            into,
            BTreeMap::from([("a".into(), u64::MAX), ("b".into(), 1)])
        );
    }
}

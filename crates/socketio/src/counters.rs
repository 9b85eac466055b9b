//! What this process's broadcasts did, for the metrics a supervisor exports (`chatctl start
//! --admin`). Counted per process, as `engineio::packet_counts` is: one relaxed atomic add per
//! broadcast and per recipient.

use std::sync::atomic::{AtomicU64, Ordering};

static BROADCASTS: AtomicU64 = AtomicU64::new(0);
static DELIVERIES: AtomicU64 = AtomicU64::new(0);

/// Counts since this process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BroadcastCounts {
    /// Broadcasts this process's handlers emitted (to a namespace, rooms, all but some).
    pub broadcasts: u64,
    /// Sockets of this process a broadcast reached, its own or another process's.
    pub deliveries: u64,
}

/// This process's counts so far.
pub fn broadcast_counts() -> BroadcastCounts {
    BroadcastCounts {
        broadcasts: BROADCASTS.load(Ordering::Relaxed),
        deliveries: DELIVERIES.load(Ordering::Relaxed),
    }
}

pub(crate) fn broadcast() {
    BROADCASTS.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn delivered(sockets: u64) {
    DELIVERIES.fetch_add(sockets, Ordering::Relaxed);
}

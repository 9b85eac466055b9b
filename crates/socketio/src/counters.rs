//! What this process's broadcasts did, for the metrics a supervisor exports (`chatctl start
//! --admin`). Counted per process, as `engineio::packet_counts` is, with one add per broadcast
//! and one per delivery of it (however many recipients), spread over cache lines as those are.

use engineio::Sharded;

static BROADCASTS: Sharded = Sharded::new();
static DELIVERIES: Sharded = Sharded::new();

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
        broadcasts: BROADCASTS.sum(),
        deliveries: DELIVERIES.sum(),
    }
}

pub(crate) fn broadcast() {
    BROADCASTS.add(1);
}

pub(crate) fn delivered(sockets: u64) {
    DELIVERIES.add(sockets);
}

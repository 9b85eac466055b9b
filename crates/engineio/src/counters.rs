//! What passed through this process's Engine.IO sessions, for the metrics a supervisor
//! exports (`chatctl start --admin`). Counted per process, not per engine: a worker runs one
//! engine, and a count kept here costs the hot paths one relaxed atomic add.

use std::sync::atomic::{AtomicU64, Ordering};

static RECEIVED: AtomicU64 = AtomicU64::new(0);
static SENT: AtomicU64 = AtomicU64::new(0);
static REFUSED_PENDING: AtomicU64 = AtomicU64::new(0);
static REFUSED_FULL: AtomicU64 = AtomicU64::new(0);

/// Counts since this process started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketCounts {
    /// Packets clients sent (messages, pongs, closes), whatever the transport.
    pub received: u64,
    /// Packets queued for clients (messages, pings, closes).
    pub sent: u64,
    /// Handshakes refused because too many sessions were not admitted yet (in all, or from
    /// one address).
    pub refused_pending: u64,
    /// Handshakes refused because `max_sessions` was reached.
    pub refused_full: u64,
}

/// This process's counts so far.
pub fn packet_counts() -> PacketCounts {
    PacketCounts {
        received: RECEIVED.load(Ordering::Relaxed),
        sent: SENT.load(Ordering::Relaxed),
        refused_pending: REFUSED_PENDING.load(Ordering::Relaxed),
        refused_full: REFUSED_FULL.load(Ordering::Relaxed),
    }
}

pub(crate) fn received() {
    RECEIVED.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn sent() {
    SENT.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn refused_pending() {
    REFUSED_PENDING.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn refused_full() {
    REFUSED_FULL.fetch_add(1, Ordering::Relaxed);
}

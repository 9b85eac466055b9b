//! What passed through this process's Engine.IO sessions, for the metrics a supervisor
//! exports (`chatctl start --admin`). Counted per process, not per engine: a worker runs one
//! engine. The packet counts are bumped for every packet of every client, from every thread
//! of the runtime, so they are spread over cache lines (see [`Sharded`]): a broadcast's
//! fan-out on one thread does not stall another's on the same line.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::DisconnectReason;

/// Every reason a session ends, in the order of [`CLOSED`].
const REASONS: [DisconnectReason; 8] = [
    DisconnectReason::ClientClose,
    DisconnectReason::TransportClose,
    DisconnectReason::PingTimeout,
    DisconnectReason::PacketParsing,
    DisconnectReason::PayloadTooLarge,
    DisconnectReason::MultipleRequests,
    DisconnectReason::SlowClient,
    DisconnectReason::ServerClose,
];

/// Sessions closed, by reason.
static CLOSED: [AtomicU64; REASONS.len()] = [const { AtomicU64::new(0) }; REASONS.len()];

/// A count added to from many threads: each thread adds to a shard of its own (threads beyond
/// [`SHARDS`] share), each shard on a cache line of its own; a read sums the shards.
pub struct Sharded([Padded; SHARDS]);

const SHARDS: usize = 16;

#[repr(align(128))]
struct Padded(AtomicU64);

/// The shard of the calling thread, given out in turn.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|shard| {
        if shard.get() == usize::MAX {
            shard.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        shard.get()
    })
}

impl Sharded {
    pub const fn new() -> Sharded {
        Sharded([const { Padded(AtomicU64::new(0)) }; SHARDS])
    }

    pub fn add(&self, n: u64) {
        self.0[shard()].0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sum(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Ordering::Relaxed)).sum()
    }
}

impl Default for Sharded {
    fn default() -> Self {
        Sharded::new()
    }
}

static RECEIVED: Sharded = Sharded::new();
static SENT: Sharded = Sharded::new();
static REFUSED_PENDING: AtomicU64 = AtomicU64::new(0);
static REFUSED_FULL: AtomicU64 = AtomicU64::new(0);

/// Counts since this process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Sessions closed, by reason (`snake_case` names: `slow_client`, `ping_timeout`, ...).
    pub closed: [(&'static str, u64); REASONS.len()],
}

/// This process's counts so far.
pub fn packet_counts() -> PacketCounts {
    PacketCounts {
        received: RECEIVED.sum(),
        sent: SENT.sum(),
        refused_pending: REFUSED_PENDING.load(Ordering::Relaxed),
        refused_full: REFUSED_FULL.load(Ordering::Relaxed),
        closed: std::array::from_fn(|i| (REASONS[i].name(), CLOSED[i].load(Ordering::Relaxed))),
    }
}

pub(crate) fn closed(reason: DisconnectReason) {
    if let Some(i) = REASONS.iter().position(|r| *r == reason) {
        CLOSED[i].fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) fn received() {
    RECEIVED.add(1);
}

pub(crate) fn sent() {
    SENT.add(1);
}

pub(crate) fn refused_pending() {
    REFUSED_PENDING.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn refused_full() {
    REFUSED_FULL.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Frame, Socket, Transport};

    fn closed_for(reason: &str) -> u64 {
        let counts = packet_counts();
        counts.closed.iter().find(|(r, _)| *r == reason).unwrap().1
    }

    #[test]
    fn a_sharded_count_sums_what_every_thread_added() {
        static COUNT: Sharded = Sharded::new();
        let threads: Vec<_> = (0..40)
            .map(|_| std::thread::spawn(|| (0..1000).for_each(|_| COUNT.add(1))))
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(COUNT.sum(), 40_000);
    }

    #[test]
    fn a_session_closed_for_being_slow_is_counted_once_with_what_it_was_sent() {
        let socket = Socket::new(
            "sid".into(),
            Transport::Websocket,
            1,
            None,
            crate::socket::SessionRequest {
                headers: Default::default(),
                uri: Default::default(),
            },
            (),
        );
        // Counts are per process and other tests run alongside: compare increases.
        let (sent, slow) = (packet_counts().sent, closed_for("slow_client"));
        assert!(socket.send(Frame::message("a")).is_ok());
        assert!(
            socket.send(Frame::message("b")).is_err(),
            "the queue holds one"
        );
        socket.close(DisconnectReason::ServerClose);
        assert!(packet_counts().sent > sent);
        assert!(closed_for("slow_client") > slow);
        assert_eq!(
            socket.close_reason(),
            Some(DisconnectReason::SlowClient),
            "the first reason wins"
        );
    }
}

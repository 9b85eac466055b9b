//! What a run and its clients share: the control every client watches, room membership, and
//! the counts and latencies the report is added up from.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{BenchConfig, Scenario};
use crate::recovery::Unconfirmed;
use crate::report::FaultOutcome;
use crate::stats::{new_histogram, DeliveryRecorder};
use crate::BenchError;

/// What every client is told to do now; the clients watch it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Control {
    /// Stay connected, receive, do not send.
    Hold,
    /// Send `rate` messages a second stamped with `phase` (only client `sender`, if set).
    Send {
        phase: u16,
        rate: f64,
        sender: Option<u32>,
    },
    /// The first member of each room sends one message stamped with `phase`.
    Probe { phase: u16 },
    /// Leave.
    Stop,
}

/// Sends of one phase; the receivers' side is in [`DeliveryRecorder`].
#[derive(Default)]
pub(crate) struct PhaseSends {
    pub(super) sent: AtomicU64,
    /// For each message, the other members of the sender's room at send time.
    pub(super) expected: AtomicU64,
}

/// How a client's sockets came back after a reconnection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SocketsBack {
    /// Restored by the server: same sid and pid, rooms kept, missed events replayed.
    pub(crate) recovered: u64,
    /// New sockets: the client joined its room again.
    pub(crate) fresh: u64,
}

/// Errors printed on stderr before the rest are only counted.
const ERRORS_SHOWN: u64 = 5;

/// What the run and its clients share.
pub(crate) struct Shared {
    pub(crate) config: BenchConfig,
    /// Room names of this run start with it, so runs in parallel do not meet.
    pub(crate) room_prefix: String,
    pub(crate) room_size: u32,
    /// The clock that message stamps count from.
    epoch: Instant,
    pub(crate) control: watch::Sender<Control>,
    /// Joined clients still connected, per room: the recipients a message is owed to.
    pub(crate) room_members: Vec<AtomicU32>,
    pub(crate) deliveries: DeliveryRecorder,
    pub(super) phases: Vec<PhaseSends>,
    /// Clients that joined once.
    pub(super) connected: AtomicU64,
    pub(super) connect_failed: AtomicU64,
    /// Clients whose first attempt is over, either way: the connect phase ends at `clients`.
    pub(super) settled: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) cycles: AtomicU64,
    /// Bytes of the packets the clients received (what the server sent them, less framing).
    pub(super) received_bytes: AtomicU64,
    /// When the last first join happened, in µs of `epoch`.
    pub(super) last_joined_us: AtomicU64,
    /// The lowest client index that joined: the fanout's sender.
    pub(super) first_member: AtomicU32,
    pub(super) connect_latency_us: Mutex<Histogram<u64>>,
    /// Lost connections a client reconnected, and those it gave up on (also errors).
    pub(super) reconnects: AtomicU64,
    pub(super) reconnects_failed: AtomicU64,
    /// Sockets that came back after a reconnection, restored by the server or not.
    pub(super) sockets_recovered: AtomicU64,
    pub(super) sockets_not_recovered: AtomicU64,
    /// From a lost connection until the client was back (connected, and in its room again).
    pub(super) back_after_us: Mutex<Histogram<u64>>,
    /// Messages sent on a connection that was lost before the server took them (no echo, none
    /// replayed): not owed to anyone.
    pub(super) never_arrived: AtomicU64,
    /// What `--fault-command` did, once it ran.
    pub(super) fault: Mutex<Option<FaultOutcome>>,
    pub(super) cycle_latency_us: Mutex<Histogram<u64>>,
    /// Set by Ctrl-C or SIGTERM: every wait ends at once and the report is what was measured.
    pub(super) interrupted: AtomicBool,
}

impl Shared {
    /// The state of a run of `config`, before any client starts.
    pub(super) fn new(config: BenchConfig) -> Self {
        let room_size = config.effective_room_size();
        let rooms = config.clients.div_ceil(room_size) as usize;
        let phase_count = match config.scenario {
            Scenario::Fanout => config.rates.len() + 1,
            _ => 2,
        };
        let (control, _) = watch::channel(Control::Hold);
        Shared {
            room_prefix: format!("bench{}-", std::process::id()),
            room_size,
            epoch: Instant::now(),
            control,
            room_members: (0..rooms).map(|_| AtomicU32::new(0)).collect(),
            deliveries: DeliveryRecorder::new(phase_count),
            phases: (0..phase_count).map(|_| PhaseSends::default()).collect(),
            connected: AtomicU64::new(0),
            connect_failed: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            cycles: AtomicU64::new(0),
            received_bytes: AtomicU64::new(0),
            last_joined_us: AtomicU64::new(0),
            first_member: AtomicU32::new(u32::MAX),
            connect_latency_us: Mutex::new(new_histogram()),
            reconnects: AtomicU64::new(0),
            reconnects_failed: AtomicU64::new(0),
            sockets_recovered: AtomicU64::new(0),
            sockets_not_recovered: AtomicU64::new(0),
            back_after_us: Mutex::new(new_histogram()),
            never_arrived: AtomicU64::new(0),
            fault: Mutex::new(None),
            cycle_latency_us: Mutex::new(new_histogram()),
            interrupted: AtomicBool::new(false),
            config,
        }
    }

    pub(crate) fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn problem(&self, count: u64, context: &str, error: &BenchError) {
        if count <= ERRORS_SHOWN && self.config.progress {
            eprintln!("chat-bench: {context}: {error}");
        }
    }

    pub(crate) fn connect_failed(&self, error: &BenchError) {
        let count = self.connect_failed.fetch_add(1, Ordering::Relaxed) + 1;
        self.settled.fetch_add(1, Ordering::Release);
        self.problem(count, "cannot connect", error);
    }

    pub(crate) fn cycle_failed(&self, error: &BenchError) {
        let count = self.connect_failed.fetch_add(1, Ordering::Relaxed) + 1;
        self.problem(count, "churn cycle failed", error);
    }

    pub(crate) fn error(&self, context: &str, error: &BenchError) {
        let count = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        self.problem(count, context, error);
    }

    fn record_connect(&self, latency: Duration) {
        if let Ok(mut histogram) = self.connect_latency_us.lock() {
            histogram.saturating_record(latency.as_micros().max(1) as u64);
        }
    }

    fn first_join(&self, index: u32) {
        self.first_member.fetch_min(index, Ordering::Relaxed);
        self.last_joined_us
            .fetch_max(self.now_us(), Ordering::Relaxed);
        self.connected.fetch_add(1, Ordering::Relaxed);
        self.settled.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn joined(&self, index: u32, room_slot: usize, latency: Duration) {
        self.room_members[room_slot].fetch_add(1, Ordering::Relaxed);
        self.record_connect(latency);
        self.first_join(index);
    }

    pub(crate) fn cycle_completed(
        &self,
        connect: Duration,
        cycle: Duration,
        first: bool,
        index: u32,
    ) {
        self.record_connect(connect);
        if let Ok(mut histogram) = self.cycle_latency_us.lock() {
            histogram.saturating_record(cycle.as_micros().max(1) as u64);
        }
        self.cycles.fetch_add(1, Ordering::Relaxed);
        if first {
            self.first_join(index);
        }
    }

    /// A client reconnected `after` its connection was lost.
    pub(crate) fn came_back(&self, back: SocketsBack, after: Duration) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        self.sockets_recovered
            .fetch_add(back.recovered, Ordering::Relaxed);
        self.sockets_not_recovered
            .fetch_add(back.fresh, Ordering::Relaxed);
        if let Ok(mut histogram) = self.back_after_us.lock() {
            histogram.saturating_record(after.as_micros().max(1) as u64);
        }
    }

    /// Client `index` lost its connection (`cause`) and could not reconnect within the connect
    /// timeout (`error`: the last attempt's).
    pub(crate) fn reconnect_failed(&self, index: u32, cause: &BenchError, error: &BenchError) {
        self.reconnects_failed.fetch_add(1, Ordering::Relaxed);
        self.error(
            &format!("client {index} lost its connection ({cause}) and could not reconnect"),
            error,
        );
    }

    /// A message the server never took: its deliveries are no longer owed.
    pub(crate) fn never_arrived(&self, send: Unconfirmed) {
        self.never_arrived.fetch_add(1, Ordering::Relaxed);
        if let Some(sends) = self.phases.get(usize::from(send.phase)) {
            sends.expected.fetch_sub(send.recipients, Ordering::Relaxed);
        }
    }

    /// Adds the bytes a client received, once it is done.
    pub(crate) fn received(&self, bytes: u64) {
        self.received_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn message_sent(&self, phase: u16, recipients: u64) {
        if let Some(sends) = self.phases.get(usize::from(phase)) {
            sends.sent.fetch_add(1, Ordering::Relaxed);
            sends.expected.fetch_add(recipients, Ordering::Relaxed);
        }
    }

    pub(super) fn sent(&self, phases: std::ops::Range<usize>) -> (u64, u64) {
        self.phases[phases]
            .iter()
            .fold((0, 0), |(sent, expected), p| {
                (
                    sent + p.sent.load(Ordering::Relaxed),
                    expected + p.expected.load(Ordering::Relaxed),
                )
            })
    }
}

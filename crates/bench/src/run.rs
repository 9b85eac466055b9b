//! A run: starting the clients at the ramp's pace, telling them when to send, waiting for the
//! deliveries, and adding everything up into a [`Report`].

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::client::ChatUser;
use crate::config::{BenchConfig, Scenario};
use crate::process_usage::{self, ProcessWatch};
use crate::report::{FanoutStep, Latency, Report};
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
    sent: AtomicU64,
    /// For each message, the other members of the sender's room at send time.
    expected: AtomicU64,
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
    phases: Vec<PhaseSends>,
    /// Clients that joined once.
    connected: AtomicU64,
    connect_failed: AtomicU64,
    /// Clients whose first attempt is over, either way: the connect phase ends at `clients`.
    settled: AtomicU64,
    errors: AtomicU64,
    cycles: AtomicU64,
    /// Bytes of the packets the clients received (what the server sent them, less framing).
    received_bytes: AtomicU64,
    /// When the last first join happened, in µs of `epoch`.
    last_joined_us: AtomicU64,
    /// The lowest client index that joined: the fanout's sender.
    first_member: AtomicU32,
    connect_latency_us: Mutex<Histogram<u64>>,
    cycle_latency_us: Mutex<Histogram<u64>>,
    /// Set by Ctrl-C or SIGTERM: every wait ends at once and the report is what was measured.
    interrupted: AtomicBool,
}

impl Shared {
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

    fn sent(&self, phases: std::ops::Range<usize>) -> (u64, u64) {
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

/// The run's own loop: waits for conditions while printing progress and sampling the watched
/// processes.
struct Conductor {
    shared: Arc<Shared>,
    watch: ProcessWatch,
    started: Instant,
    next_progress: Instant,
}

/// How often the conductor checks a condition it waits for.
const CHECK_EVERY: Duration = Duration::from_millis(10);

impl Conductor {
    /// Waits until `done` or `deadline`, whichever first; true when `done`.
    async fn wait(&mut self, deadline: Option<Instant>, done: impl Fn(&Shared) -> bool) -> bool {
        loop {
            if done(&self.shared) {
                return true;
            }
            if self.shared.interrupted.load(Ordering::Relaxed) {
                return false;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return false;
            }
            if now >= self.next_progress {
                self.next_progress += Duration::from_secs(1);
                self.watch.sample_peak();
                self.progress();
            }
            let mut wake = now + CHECK_EVERY;
            if let Some(deadline) = deadline {
                wake = wake.min(deadline);
            }
            tokio::time::sleep_until(wake).await;
        }
    }

    async fn hold(&mut self, duration: Duration) {
        self.wait(Some(Instant::now() + duration), |_| false).await;
    }

    fn progress(&self) {
        if !self.shared.config.progress {
            return;
        }
        let s = &self.shared;
        let (sent, _) = s.sent(0..s.phases.len());
        let mut line = format!(
            "[{:6.1}s] connected {}/{}, failed {}, sent {}, delivered {}, errors {}",
            self.started.elapsed().as_secs_f64(),
            s.connected.load(Ordering::Relaxed),
            s.config.clients,
            s.connect_failed.load(Ordering::Relaxed),
            sent,
            s.deliveries.delivered_since(0),
            s.errors.load(Ordering::Relaxed),
        );
        if s.config.scenario == Scenario::Churn {
            line.push_str(&format!(", cycles {}", s.cycles.load(Ordering::Relaxed)));
        }
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "{line}");
    }

    /// Tells every client what to do now; after an interrupt, only to stop.
    fn control(&self, control: Control) {
        if control == Control::Stop || !self.shared.interrupted.load(Ordering::Relaxed) {
            self.shared.control.send_replace(control);
        }
    }

    /// Stops sending, then waits until phases `phases` have all their deliveries or the drain
    /// time is over.
    async fn drain(&mut self, phases: std::ops::Range<usize>) {
        self.control(Control::Hold);
        let deadline = Instant::now() + self.shared.config.drain;
        let first = phases.start as u16;
        // A client that was already sending when told to hold still counts that message: done
        // only when the count owed has stayed the same for a whole check interval.
        let owed_before = std::cell::Cell::new(None);
        self.wait(Some(deadline), move |s| {
            let (_, expected) = s.sent(phases.clone());
            let steady = owed_before.replace(Some(expected)) == Some(expected);
            steady && s.deliveries.delivered_since(first) >= expected
        })
        .await;
    }
}

impl Conductor {
    /// The first member of every room sends one message (phase 1); waits until every room
    /// whose first member is connected has sent and every member got it, or the drain time
    /// is over.
    async fn probe(&mut self) {
        self.control(Control::Probe { phase: 1 });
        let senders: u64 = self
            .shared
            .room_members
            .iter()
            .filter(|m| m.load(Ordering::Relaxed) > 0)
            .count() as u64;
        let deadline = Instant::now() + self.shared.config.drain;
        self.wait(Some(deadline), move |s| {
            let (sent, expected) = s.sent(1..2);
            sent >= senders && s.deliveries.delivered_since(1) >= expected
        })
        .await;
        self.control(Control::Hold);
    }
}

/// What the measured phase of a run covered.
struct Measured {
    /// Time spent sending (idle, churn: holding).
    duration: Duration,
    /// The phases whose messages count.
    phases: std::ops::Range<usize>,
    /// (phase, rate, time spent sending) of each fanout step run.
    steps: Vec<(usize, f64, Duration)>,
}

impl Default for Measured {
    fn default() -> Self {
        Measured {
            duration: Duration::ZERO,
            phases: 1..2,
            steps: Vec::new(),
        }
    }
}

/// The scenarios, once the clients are started.
impl Conductor {
    /// Waits until every client has joined or given up; true if any joined.
    async fn connect_everyone(&mut self) -> bool {
        let total = u64::from(self.shared.config.clients);
        self.wait(None, |s| s.settled.load(Ordering::Acquire) >= total)
            .await;
        self.watch.connected();
        self.shared.connected.load(Ordering::Relaxed) > 0
    }

    /// Clients cycle from the start; the run ends after `duration`.
    async fn churn(&mut self) -> Measured {
        let measured = self.idle().await;
        self.control(Control::Stop);
        measured
    }

    /// Holds the connections for `duration`; then, with `probe`, one message in every room.
    async fn idle(&mut self) -> Measured {
        self.watch.start_cpu();
        let began = Instant::now();
        self.hold(self.shared.config.duration).await;
        let duration = began.elapsed();
        self.watch.stop_cpu();
        if self.shared.config.probe && self.shared.config.scenario == Scenario::Idle {
            self.probe().await;
        }
        Measured {
            duration,
            ..Measured::default()
        }
    }

    /// Everyone sends at `rate`: phase 0 during the warmup, phase 1 measured.
    async fn chat(&mut self) -> Measured {
        let (rate, warmup, duration) = {
            let config = &self.shared.config;
            (config.rate, config.warmup, config.duration)
        };
        let send = |phase| Control::Send {
            phase,
            rate,
            sender: None,
        };
        if !warmup.is_zero() {
            self.control(send(0));
            self.hold(warmup).await;
        }
        self.watch.start_cpu();
        self.control(send(1));
        let began = Instant::now();
        self.hold(duration).await;
        let duration = began.elapsed();
        self.drain(1..2).await;
        self.watch.stop_cpu();
        Measured {
            duration,
            ..Measured::default()
        }
    }

    /// One sender, a phase per rate, until a step's p99 is over the limit.
    async fn fanout(&mut self) -> Measured {
        let shared = self.shared.clone();
        let config = &shared.config;
        let sender = Some(shared.first_member.load(Ordering::Relaxed));
        let mut measured = Measured::default();
        if let (false, Some(&rate)) = (config.warmup.is_zero(), config.rates.first()) {
            self.control(Control::Send {
                phase: 0,
                rate,
                sender,
            });
            self.hold(config.warmup).await;
            self.drain(0..1).await;
        }
        self.watch.start_cpu();
        for (step, &rate) in config.rates.iter().enumerate() {
            if shared.interrupted.load(Ordering::Relaxed) {
                break;
            }
            let phase = step + 1;
            self.control(Control::Send {
                phase: phase as u16,
                rate,
                sender,
            });
            let began = Instant::now();
            self.hold(config.step_duration).await;
            let sending = began.elapsed();
            measured.duration += sending;
            self.drain(phase..phase + 1).await;
            measured.phases = 1..phase + 1;
            measured.steps.push((phase, rate, sending));
            let p99_ms = fanout_step(&shared, phase, rate, sending).p99_ms;
            if p99_ms > config.p99_limit.as_secs_f64() * 1000.0 {
                break;
            }
        }
        self.watch.stop_cpu();
        measured
    }
}

/// Runs the configured scenario to the end.
pub async fn run(config: BenchConfig) -> Report {
    let room_size = config.effective_room_size();
    let rooms = config.clients.div_ceil(room_size) as usize;
    let phase_count = match config.scenario {
        Scenario::Fanout => config.rates.len() + 1,
        _ => 2,
    };
    let (control, _) = watch::channel(Control::Hold);
    let shared = Arc::new(Shared {
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
        cycle_latency_us: Mutex::new(new_histogram()),
        interrupted: AtomicBool::new(false),
        config,
    });
    let interrupts = tokio::spawn(on_interrupt(shared.clone()));
    let started = Instant::now();
    let mut conductor = Conductor {
        watch: ProcessWatch::new(&shared.config.pids),
        shared: shared.clone(),
        started,
        next_progress: started + Duration::from_secs(1),
    };
    let clients = TaskTracker::new();
    let first_attempt_us = shared.now_us();
    let spawner = tokio::spawn(start_clients(shared.clone(), clients.clone()));

    let config = &shared.config;
    let measured = match config.scenario {
        Scenario::Churn => conductor.churn().await,
        scenario => {
            let anyone = conductor.connect_everyone().await;
            let measured = match scenario {
                Scenario::Chat if anyone => conductor.chat().await,
                Scenario::Fanout if anyone => conductor.fanout().await,
                Scenario::Idle | Scenario::Churn => conductor.idle().await,
                Scenario::Chat | Scenario::Fanout => Measured::default(),
            };
            conductor.control(Control::Stop);
            measured
        }
    };
    interrupts.abort();
    let _ = spawner.await;
    clients.close();
    // Clients leave at once when told; churn cycles in flight end within the connect timeout.
    let _ = tokio::time::timeout(
        config.connect_timeout + Duration::from_secs(5),
        clients.wait(),
    )
    .await;
    conductor.progress();

    // Fanout steps are read again: deliveries that came after a step's drain still count.
    let steps = measured
        .steps
        .iter()
        .map(|&(phase, rate, sending)| fanout_step(&shared, phase, rate, sending))
        .collect();
    build_report(
        &shared,
        &conductor.watch,
        measured.duration,
        measured.phases,
        steps,
        first_attempt_us,
    )
}

fn fanout_step(shared: &Shared, phase: usize, rate: f64, sending: Duration) -> FanoutStep {
    let (sent, expected) = shared.sent(phase..phase + 1);
    let deliveries = shared.deliveries.phase(phase as u16);
    let latency = Latency::from_us(&deliveries.latency_us);
    FanoutStep {
        rate,
        sent,
        delivered: deliveries.delivered,
        lost: expected.saturating_sub(deliveries.delivered),
        delivered_per_sec: per_second(deliveries.delivered, sending),
        p50_ms: latency.p50,
        p99_ms: latency.p99,
        max_ms: latency.max,
    }
}

fn per_second(count: u64, over: Duration) -> f64 {
    if over.is_zero() {
        0.0
    } else {
        count as f64 / over.as_secs_f64()
    }
}

/// Ctrl-C or SIGTERM (a `timeout` around the run) ends the run early with a report.
async fn on_interrupt(shared: Arc<Shared>) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    if shared.config.progress {
        eprintln!("chat-bench: interrupted; reporting what was measured");
    }
    shared.interrupted.store(true, Ordering::Relaxed);
    shared.control.send_replace(Control::Stop);
}

/// Starts client after client, `ramp` a second.
async fn start_clients(shared: Arc<Shared>, clients: TaskTracker) {
    let started = Instant::now();
    let ramp = shared.config.ramp;
    for index in 0..shared.config.clients {
        if ramp > 0 {
            let at = started + Duration::from_secs_f64(f64::from(index) / f64::from(ramp));
            tokio::time::sleep_until(at).await;
        }
        if *shared.control.borrow() == Control::Stop {
            break;
        }
        let user = ChatUser::new(shared.clone(), index);
        if shared.config.scenario == Scenario::Churn {
            clients.spawn(user.run_churn());
        } else {
            clients.spawn(user.run_member());
        }
    }
}

fn build_report(
    shared: &Shared,
    watch: &ProcessWatch,
    measured: Duration,
    measured_phases: std::ops::Range<usize>,
    steps: Vec<FanoutStep>,
    first_attempt_us: u64,
) -> Report {
    let config = &shared.config;
    let (sent, expected) = shared.sent(measured_phases.clone());
    let mut delivered = 0;
    let mut duplicates = 0;
    let mut latency_us = new_histogram();
    for phase in measured_phases {
        let deliveries = shared.deliveries.phase(phase as u16);
        delivered += deliveries.delivered;
        duplicates += deliveries.duplicates;
        let _ = latency_us.add(&deliveries.latency_us);
    }
    if config.scenario == Scenario::Churn {
        if let Ok(cycles) = shared.cycle_latency_us.lock() {
            latency_us = cycles.clone();
        }
    }
    let connect = shared
        .connect_latency_us
        .lock()
        .map(|h| Latency::from_us(&h))
        .unwrap_or_default();
    let connected = shared.connected.load(Ordering::Relaxed);
    let last_joined = shared.last_joined_us.load(Ordering::Relaxed);
    let processes = watch.processes.clone();
    let rss_before_kib = process_usage::sum(&processes, |p| p.rss_before_kib);
    let rss_connected_kib = process_usage::sum(&processes, |p| p.rss_connected_kib);
    let rss_per_connection_bytes = match (rss_before_kib, rss_connected_kib) {
        (Some(before), Some(after)) if connected > 0 => {
            Some((after as f64 - before as f64) * 1024.0 / connected as f64)
        }
        _ => None,
    };
    let best_rate_under_limit = (config.scenario == Scenario::Fanout)
        .then(|| {
            steps
                .iter()
                .filter(|s| s.p99_ms <= config.p99_limit.as_secs_f64() * 1000.0 && s.delivered > 0)
                .map(|s| s.delivered_per_sec)
                .fold(None, |best: Option<f64>, rate| {
                    Some(best.map_or(rate, |b| b.max(rate)))
                })
        })
        .flatten();
    Report {
        scenario: config.scenario.name(),
        transport: config.transport.name(),
        clients: config.clients,
        connected,
        connect_failed: shared.connect_failed.load(Ordering::Relaxed),
        connect_time_ms: if connected > 0 {
            last_joined.saturating_sub(first_attempt_us) as f64 / 1000.0
        } else {
            0.0
        },
        connect_p50_ms: connect.p50,
        connect_p99_ms: connect.p99,
        connect_max_ms: connect.max,
        sent,
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicates,
        errors: shared.errors.load(Ordering::Relaxed),
        delivered_per_sec: per_second(delivered, measured),
        latency_ms: Latency::from_us(&latency_us),
        cpu_percent: process_usage::sum(&processes, |p| p.cpu_percent),
        rss_before_kib,
        rss_connected_kib,
        rss_peak_kib: process_usage::sum(&processes, |p| p.rss_peak_kib),
        rss_per_connection_bytes,
        processes,
        steps,
        best_rate_under_limit,
        cycles: (config.scenario == Scenario::Churn).then(|| shared.cycles.load(Ordering::Relaxed)),
        received_bytes: shared.received_bytes.load(Ordering::Relaxed),
        duration_s: measured.as_secs_f64(),
        interrupted: shared.interrupted.load(Ordering::Relaxed),
    }
}

//! The run's own loop: the scenarios, step by step, each waiting for conditions while it prints
//! progress and samples the watched processes.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::shared::{Control, Shared};
use super::tally::fanout_step;
use crate::config::Scenario;
use crate::process_usage::ProcessWatch;

/// The run's own loop: waits for conditions while printing progress and sampling the watched
/// processes.
pub(super) struct Conductor {
    pub(super) shared: Arc<Shared>,
    pub(super) watch: ProcessWatch,
    started: Instant,
    next_progress: Instant,
}

/// How often the conductor checks a condition it waits for.
const CHECK_EVERY: Duration = Duration::from_millis(10);

impl Conductor {
    /// The conductor of the run `shared`, watching its processes from now on.
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        let started = Instant::now();
        Conductor {
            watch: ProcessWatch::new(&shared.config.pids),
            shared,
            started,
            next_progress: started + Duration::from_secs(1),
        }
    }

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

    pub(super) fn progress(&self) {
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
    pub(super) fn control(&self, control: Control) {
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
pub(super) struct Measured {
    /// Time spent sending (idle, churn: holding).
    pub(super) duration: Duration,
    /// The phases whose messages count.
    pub(super) phases: std::ops::Range<usize>,
    /// (phase, rate, time spent sending) of each fanout step run.
    pub(super) steps: Vec<(usize, f64, Duration)>,
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
    pub(super) async fn connect_everyone(&mut self) -> bool {
        let total = u64::from(self.shared.config.clients);
        self.wait(None, |s| s.settled.load(Ordering::Acquire) >= total)
            .await;
        self.watch.connected();
        self.shared.connected.load(Ordering::Relaxed) > 0
    }

    /// Clients cycle from the start; the run ends after `duration`.
    pub(super) async fn churn(&mut self) -> Measured {
        let measured = self.idle().await;
        self.control(Control::Stop);
        measured
    }

    /// Holds the connections for `duration`; then, with `probe`, one message in every room.
    pub(super) async fn idle(&mut self) -> Measured {
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
    pub(super) async fn chat(&mut self) -> Measured {
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
        let fault = self
            .shared
            .config
            .fault
            .clone()
            .map(|fault| tokio::spawn(super::fault::strike(self.shared.clone(), fault, began)));
        self.hold(duration).await;
        let duration = began.elapsed();
        self.drain(1..2).await;
        self.watch.stop_cpu();
        if let Some(mut fault) = fault {
            // A command still running after the drain is given the connect timeout, then killed.
            let grace = self.shared.config.connect_timeout;
            if tokio::time::timeout(grace, &mut fault).await.is_err() {
                fault.abort();
                self.shared.error(
                    "the fault command",
                    &crate::BenchError::Setup(format!(
                        "still running {grace:?} after the drain; killed"
                    )),
                );
            }
        }
        Measured {
            duration,
            ..Measured::default()
        }
    }

    /// One sender, a phase per rate, until a step's p99 is over the limit.
    pub(super) async fn fanout(&mut self) -> Measured {
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

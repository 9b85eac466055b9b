//! What the admin address shows beyond the workers' current state: restarts by cause, how
//! long reloads and restarts took, and the recent events (crashes, health failures, memory
//! replacements, reloads) with the log lines around them. The shell tells the observer about
//! each transition of the state machine; the observer never changes what the master does.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::Serialize;
use tokio::sync::broadcast;

use super::super::state::{Action, Event, State};
use crate::control::Status;

/// Why a worker's process was replaced, as the `cause` label of `chatctl_restarts_total`.
pub const CAUSES: [&str; 5] = ["crash", "health", "memory", "reload", "restart"];

/// Recent events kept for a page that opens later.
const RECENT_EVENTS: usize = 100;
/// Log lines attached to an event.
const EVENT_LOG_LINES: usize = 8;

/// Labels of a metric: name and value pairs.
pub type Labels = Vec<(String, String)>;

/// Makes the duration histograms: 10 ms to about 80 s.
#[derive(Clone)]
pub struct DurationBuckets;

impl MetricConstructor<Histogram> for DurationBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.01, 2.0, 14))
    }
}

/// Makes the dispatch histogram: 50 µs to about 1.6 s.
pub fn dispatch_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// One thing that happened to a worker, for the dashboard's list.
#[derive(Debug, Clone, Serialize)]
pub struct AdminEvent {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    /// `crash`, `errored`, `health`, `memory`, `reload`, `reload_failed`, `restart`.
    pub kind: &'static str,
    pub worker: Option<usize>,
    pub pid: Option<u32>,
    pub message: String,
    /// The app log's last lines when it happened.
    pub lines: Vec<String>,
}

/// What the master's transitions looked like before they ran, for [`Observer::after`].
pub enum Before {
    /// The current process of `slot` exited.
    Exit {
        slot: usize,
        pid: u32,
        restarts: u32,
        description: String,
        /// It was killed for missing its probes.
        health: bool,
    },
    Probe {
        slot: Option<usize>,
        generation: u64,
    },
    Memory {
        slot: usize,
        memory: u64,
    },
    Ready {
        slot: usize,
    },
}

pub struct Observer {
    /// The `app` label's value, escaped.
    app: String,
    log_file: PathBuf,
    log: crate::logs::LogSink,
    pub restarts: Family<Labels, Counter>,
    pub reload_seconds: Family<Labels, Histogram, DurationBuckets>,
    pub restart_seconds: Family<Labels, Histogram, DurationBuckets>,
    /// Sticky scheduling: connections handed to a worker, and refused (every worker gone
    /// or full); plain counters, as they are counted on the master's hottest path.
    pub handed_off: Counter,
    pub refused: Counter,
    /// From accepting a connection to handing it off (the client's time to send its request
    /// line included).
    pub dispatch_seconds: Histogram,
    recent: Arc<Mutex<VecDeque<AdminEvent>>>,
    pub feed: broadcast::Sender<AdminEvent>,
    /// Processes killed for missing probes: their exit is a `health` restart, not a crash.
    health_killed: Mutex<HashSet<u64>>,
    /// Slots whose process is down, since when and why: the restart's duration ends when the
    /// next one is ready.
    down_since: Mutex<HashMap<usize, (Instant, &'static str)>>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Observer {
    pub fn new(app: &str, log_file: PathBuf, log: crate::logs::LogSink) -> Observer {
        Observer {
            app: super::exposition::label_value(app),
            log_file,
            log,
            restarts: Family::default(),
            reload_seconds: Family::new_with_constructor(DurationBuckets),
            restart_seconds: Family::new_with_constructor(DurationBuckets),
            handed_off: Counter::default(),
            refused: Counter::default(),
            dispatch_seconds: dispatch_buckets(),
            recent: Arc::new(Mutex::new(VecDeque::new())),
            feed: broadcast::channel(RECENT_EVENTS).0,
            health_killed: Mutex::new(HashSet::new()),
            down_since: Mutex::new(HashMap::new()),
        }
    }

    pub fn worker_labels(&self, worker: usize) -> Labels {
        vec![
            ("app".into(), self.app.clone()),
            ("worker".into(), worker.to_string()),
        ]
    }

    fn count_restart(&self, worker: usize, cause: &str) {
        let mut labels = self.worker_labels(worker);
        labels.push(("cause".into(), cause.into()));
        self.restarts.get_or_create(&labels).inc();
    }

    /// Notes what `event` is about before the state machine runs it.
    pub fn before(&self, event: &Event, state: &State) -> Option<Before> {
        match event {
            Event::Exited {
                generation,
                description,
                ..
            } => {
                // Forgotten whatever the process was, so the set only holds the living.
                let health = locked(&self.health_killed).remove(generation);
                let slot = state.slot_of(*generation)?;
                let current = state.slots[slot].current.as_ref()?;
                (current.generation == *generation).then(|| Before::Exit {
                    slot,
                    pid: current.pid,
                    restarts: state.slots[slot].restarts,
                    description: description.clone(),
                    health,
                })
            }
            Event::Probed {
                generation,
                healthy: false,
            } => Some(Before::Probe {
                slot: state.slot_of(*generation),
                generation: *generation,
            }),
            Event::MemoryExceeded { slot, memory } => Some(Before::Memory {
                slot: *slot,
                memory: *memory,
            }),
            Event::Ready { generation, .. } => {
                let slot = state.slot_of(*generation)?;
                let current = state.slots[slot].current.as_ref()?;
                (current.generation == *generation).then_some(Before::Ready { slot })
            }
            _ => None,
        }
    }

    /// Records what the transition did.
    pub fn after(&self, before: Before, state: &State, actions: &[Action]) {
        match before {
            Before::Exit {
                slot,
                pid,
                restarts,
                description,
                health,
            } => {
                let Some(now) = state.slots.get(slot) else {
                    return;
                };
                if now.restarts <= restarts {
                    return;
                }
                let cause = if health { "health" } else { "crash" };
                self.count_restart(slot, cause);
                locked(&self.down_since).insert(slot, (Instant::now(), cause));
                let kind = if now.status == Status::Errored {
                    "errored"
                } else {
                    cause
                };
                self.record(kind, Some(slot), Some(pid), format!("worker {description}"));
            }
            Before::Probe { slot, generation } => {
                let killed = actions.iter().any(
                    |action| matches!(action, Action::Kill { generation: g, .. } if *g == generation),
                );
                if killed {
                    locked(&self.health_killed).insert(generation);
                    let pid = state.proc(generation).map(|p| p.pid);
                    self.record(
                        "health",
                        slot,
                        pid,
                        "worker missed its health probes: killed it".into(),
                    );
                }
            }
            Before::Memory { slot, memory } => {
                if actions.iter().any(|a| matches!(a, Action::Replace { .. })) {
                    self.count_restart(slot, "memory");
                    let pid = state
                        .slots
                        .get(slot)
                        .and_then(|s| s.current.as_ref())
                        .map(|p| p.pid);
                    self.record(
                        "memory",
                        Some(slot),
                        pid,
                        format!("worker above --max-memory ({memory} bytes): replacing it"),
                    );
                }
            }
            Before::Ready { slot } => {
                if let Some((since, cause)) = locked(&self.down_since).remove(&slot) {
                    self.time_restart(cause, since.elapsed());
                }
            }
        }
    }

    /// A connection accepted at `accepted` was handed to a worker.
    pub fn dispatched(&self, accepted: Instant) {
        self.handed_off.inc();
        self.dispatch_seconds
            .observe(accepted.elapsed().as_secs_f64());
    }

    /// One worker was replaced by a rolling reload, in `took`.
    pub fn reloaded(&self, worker: usize, took: Duration) {
        self.count_restart(worker, "reload");
        let labels = vec![("app".to_owned(), self.app.clone())];
        self.reload_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// One worker was stopped and started again by `chatctl restart`, in `took`.
    pub fn restarted(&self, worker: usize, took: Duration) {
        self.count_restart(worker, "restart");
        self.time_restart("restart", took);
    }

    fn time_restart(&self, cause: &str, took: Duration) {
        let labels = vec![
            ("app".to_owned(), self.app.clone()),
            ("cause".to_owned(), cause.to_owned()),
        ];
        self.restart_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Adds an event to the recent ones and the live feed, with the log's last lines. The
    /// lines are read off the master's thread, once what was logged so far is written.
    pub fn record(
        &self,
        kind: &'static str,
        worker: Option<usize>,
        pid: Option<u32>,
        message: String,
    ) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let event = AdminEvent {
            at_ms,
            kind,
            worker,
            pid,
            message,
            lines: Vec::new(),
        };
        let (log, file) = (self.log.clone(), self.log_file.clone());
        let recent = Recent {
            list: self.recent.clone(),
            feed: self.feed.clone(),
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return recent.push(event);
        };
        runtime.spawn(async move {
            let lines = tokio::task::spawn_blocking(move || {
                log.flush(Duration::from_millis(500));
                crate::logs::tail(&file, EVENT_LOG_LINES).unwrap_or_default()
            })
            .await
            .unwrap_or_default();
            recent.push(AdminEvent { lines, ..event });
        });
    }

    /// The recent events (oldest first) and a receiver of the next ones, taken together so that an event
    /// is in one or the other, never in both or neither.
    pub fn follow(&self) -> (Vec<AdminEvent>, broadcast::Receiver<AdminEvent>) {
        let recent = locked(&self.recent);
        (recent.iter().cloned().collect(), self.feed.subscribe())
    }
}

/// Where finished events go: the list a page gets when it opens, and the live feed.
struct Recent {
    list: Arc<Mutex<VecDeque<AdminEvent>>>,
    feed: broadcast::Sender<AdminEvent>,
}

impl Recent {
    fn push(&self, event: AdminEvent) {
        // Under the list's lock: see `Observer::follow`.
        let mut list = locked(&self.list);
        if list.len() == RECENT_EVENTS {
            list.pop_front();
        }
        list.push_back(event.clone());
        let _ = self.feed.send(event);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::super::state::{Proc, Role};
    use super::*;
    use crate::config::AppConfig;
    use crate::outbox::Outbox;

    /// Runs `event` through the state machine as the shell does, with the observer around it.
    fn observe(observer: &Observer, state: &mut State, event: Event) -> Vec<Action> {
        let before = observer.before(&event, state);
        let actions = state.apply(event);
        if let Some(before) = before {
            observer.after(before, state, &actions);
        }
        actions
    }

    fn launch(observer: &Observer, state: &mut State, generation: u64) {
        let proc = Proc::new(
            &state.config,
            0,
            4000 + generation as u32,
            generation,
            generation as u16,
            Outbox::new(16),
            None,
        );
        let started = Event::Started {
            slot: 0,
            role: Role::Current,
            proc: Box::new(proc),
        };
        observe(observer, state, started);
        let ready = Event::Ready {
            generation,
            via_ipc: true,
        };
        observe(observer, state, ready);
    }

    fn exit(generation: u64) -> Event {
        Event::Exited {
            generation,
            code: None,
            signal: Some(9),
            description: "was killed by signal 9".into(),
            at: Instant::now(),
        }
    }

    fn restarts(observer: &Observer, cause: &str) -> u64 {
        let mut labels = observer.worker_labels(0);
        labels.push(("cause".into(), cause.into()));
        observer.restarts.get(&labels).map_or(0, |c| c.get())
    }

    /// An observer of app `chat` logging to a file of its own.
    pub(in crate::master::admin) fn observer() -> Observer {
        let dir = std::env::temp_dir().join(format!("admin-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("app.log");
        let log = crate::logs::LogSink::open(file.clone(), 1 << 20, 1).unwrap();
        Observer::new("chat", file, log)
    }

    #[test]
    fn restarts_are_counted_by_cause_and_timed_until_the_next_process_is_ready() {
        let observer = observer();
        let config = AppConfig {
            instances: 1,
            ..AppConfig::default()
        };
        let mut state = State::new(config, None);
        launch(&observer, &mut state, 1);

        // A crash: its restart is timed until the new process is ready.
        observe(&observer, &mut state, exit(1));
        assert_eq!(restarts(&observer, "crash"), 1);
        launch(&observer, &mut state, 2);
        let timed = vec![
            ("app".to_owned(), "chat".to_owned()),
            ("cause".to_owned(), "crash".to_owned()),
        ];
        assert!(
            observer.restart_seconds.get(&timed).is_some(),
            "the restart is timed"
        );

        // Killed for missing its probes: its exit is a health restart, not a crash.
        for _ in 0..state.config.health.max_misses {
            let probed = Event::Probed {
                generation: 2,
                healthy: false,
            };
            observe(&observer, &mut state, probed);
        }
        observe(&observer, &mut state, exit(2));
        assert_eq!(restarts(&observer, "health"), 1);
        assert_eq!(restarts(&observer, "crash"), 1);
        launch(&observer, &mut state, 3);

        // Above --max-memory: replaced (as a reload does), counted as memory.
        let memory = Event::MemoryExceeded {
            slot: 0,
            memory: 1 << 30,
        };
        observe(&observer, &mut state, memory);
        assert_eq!(restarts(&observer, "memory"), 1);

        // A stop's exits are no restarts.
        observe(&observer, &mut state, Event::StopRequested);
        observe(&observer, &mut state, exit(3));
        assert_eq!(restarts(&observer, "crash"), 1);
    }

    #[tokio::test]
    async fn events_reach_the_recent_list_and_the_feed_with_the_log_lines() {
        let observer = observer();
        let mut feed = observer.feed.subscribe();
        observer.log.line("master", "worker 0 said goodbye");
        observer.record(
            "crash",
            Some(0),
            Some(42),
            "worker was killed by signal 9".into(),
        );
        let event = tokio::time::timeout(Duration::from_secs(30), feed.recv())
            .await
            .expect("the event reaches the feed")
            .unwrap();
        assert_eq!(event.kind, "crash");
        assert_eq!(event.pid, Some(42));
        assert!(
            event.lines.iter().any(|l| l.contains("said goodbye")),
            "{:?}",
            event.lines
        );
        assert_eq!(observer.follow().0.len(), 1);
    }
}

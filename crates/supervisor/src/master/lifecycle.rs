//! The shell around the state machine (`state.rs`): spawns processes (with their sockets and
//! output pumps), feeds their readiness and exits back as events, and performs the actions
//! the transitions return.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::state::{Action, Event, Level, Log, Proc, Role};
use super::Inner;
use crate::config::{AppConfig, Scheduling};
use crate::handoff;
use crate::logs::Stream;
use crate::outbox::Outbox;
use nix::sys::signal::Signal;

use crate::spawn::{signal, spawn_worker, Connections, WorkerSpec};
use sticky::route_tag;

impl Inner {
    /// Starts a process for a slot. Failures are recorded on the slot and retried later.
    pub(super) fn start_proc(self: Arc<Self>, slot_id: usize, role: Role) -> Option<u64> {
        let (config, generation, worker_id, private) = self.claim_worker_id();
        let (run_as, base_env) = {
            let state = self.lock();
            (state.run_as, state.base_env.clone())
        };
        let capabilities = config.capabilities();
        let sticky = config.scheduling == Scheduling::Sticky && capabilities.takes_handoff;
        let wait_ready = config.wait_ready && !capabilities.speaks_ipc;
        let sockets = (|| {
            let private = private?;
            let pair = sticky.then(handoff::pair).transpose()?;
            let notify = wait_ready
                .then(|| crate::notify::bind(&self.peers_token, generation))
                .transpose()?;
            Ok::<_, std::io::Error>((private, pair, notify))
        })();
        let spawned = sockets.map_err(crate::spawn::SpawnError::Sockets).and_then(
            |(private, pair, notify)| {
                let connections = match (&pair, &self.listener) {
                    (Some((_, worker_end)), _) => Connections::HandedOff {
                        socket: worker_end.as_raw_fd(),
                    },
                    (None, Some(listener)) => Connections::Shared {
                        listener: listener.as_raw_fd(),
                    },
                    (None, None) => Connections::Nothing,
                };
                let spec = WorkerSpec {
                    config: &config,
                    worker_id,
                    connections,
                    private_socket: private.as_raw_fd(),
                    peers_token: &self.peers_token,
                    secret: self.secret.get().map(String::as_str),
                    run_as,
                    port: config.worker_port(slot_id),
                    notify_socket: notify.as_ref().map(|(_, address)| address.as_str()),
                    base_env: base_env.as_deref(),
                };
                let spawned = spawn_worker(&spec)?;
                let handoff = pair
                    .map(|(master_end, _)| handoff::Sender::new(master_end).map(Arc::new))
                    .transpose()
                    .map_err(crate::spawn::SpawnError::Sockets)?;
                let notify = notify.map(|(socket, _)| socket);
                Ok((spawned, handoff, notify))
            },
        );
        let (spawned, handoff, notify) = match spawned {
            Ok(spawned) => spawned,
            Err(error) => {
                let error = error.to_string();
                self.apply(Event::StartFailed {
                    slot: slot_id,
                    role,
                    error,
                });
                return None;
            }
        };
        let mut child = spawned.child;
        let pid = child.id().unwrap_or(0);
        let outbox = Outbox::new(config.ipc_queue_size);
        let proc = Box::new(Proc::new(
            &config,
            slot_id,
            pid,
            generation,
            worker_id,
            outbox.clone(),
            handoff,
        ));
        self.apply(Event::Started {
            slot: slot_id,
            role,
            proc,
        });
        if let Some(stdout) = child.stdout.take() {
            let log = self.log.clone();
            self.pumps.spawn(async move {
                log.pump(stdout, slot_id, Stream::Out, config.log_max_line)
                    .await
            });
        }
        if let Some(stderr) = child.stderr.take() {
            let log = self.log.clone();
            self.pumps.spawn(async move {
                log.pump(stderr, slot_id, Stream::Err, config.log_max_line)
                    .await
            });
        }
        tokio::spawn(self.clone().ipc_task(
            slot_id,
            generation,
            spawned.ipc,
            outbox,
            config.ipc_max_line,
        ));
        let inner = self.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let (code, signal, description) = match status {
                Ok(status) => (
                    status.code(),
                    std::os::unix::process::ExitStatusExt::signal(&status),
                    describe_exit(status),
                ),
                Err(error) => (None, None, format!("lost track of the process: {error}")),
            };
            inner.apply(Event::Exited {
                generation,
                code,
                signal,
                description,
                at: std::time::Instant::now(),
            });
        });
        if let Some(socket) = notify {
            let inner = self.clone();
            let ready_timeout = config.ready_timeout;
            // Past the ready timeout the worker is killed anyway: the socket goes with the task.
            tokio::spawn(async move {
                let ready = crate::notify::wait_ready(socket);
                if let Ok(true) = tokio::time::timeout(ready_timeout, ready).await {
                    tracing::info!(worker = slot_id, "worker sent READY=1");
                    inner.mark_ready(generation, false);
                }
            });
        }
        tokio::spawn(self.clone().readiness_deadline(generation, config.clone()));
        Some(generation)
    }

    /// Takes the next generation and its worker id, with that id's private socket bound. An id
    /// whose socket name another process holds (another local account squatting it, or one of
    /// ours still draining with the same id) is skipped, so a taken name never stops a worker
    /// from starting; each id is tried once at most.
    pub(super) fn claim_worker_id(
        &self,
    ) -> (
        AppConfig,
        u64,
        u16,
        std::io::Result<std::os::unix::net::UnixListener>,
    ) {
        let ids = u64::from(route_tag::MAX_ID) + 1;
        let mut state = self.lock();
        let mut skipped = 0;
        loop {
            let generation = state.next_generation;
            state.next_generation += 1;
            let worker_id = (generation % ids) as u16;
            match handoff::bind_private(&self.peers_token, worker_id) {
                Err(error)
                    if error.kind() == std::io::ErrorKind::AddrInUse && skipped + 1 < ids =>
                {
                    skipped += 1;
                }
                bound => {
                    if skipped > 0 {
                        tracing::warn!(
                            skipped,
                            worker_id,
                            "the private socket names of {skipped} worker ids are held by other \
                             processes: skipped them (is another local account squatting them? \
                             see the threat model in docs/PRODUCTION.md)"
                        );
                    }
                    return (state.config.clone(), generation, worker_id, bound);
                }
            }
        }
    }

    /// Programs that do not speak IPC count as ready once they survived `min_uptime` (or, with
    /// `wait_ready`, once they send READY=1, see [`crate::notify`]); any
    /// worker not ready within `ready_timeout` is killed (and so restarted).
    pub(super) async fn readiness_deadline(self: Arc<Self>, generation: u64, config: AppConfig) {
        if !config.capabilities().speaks_ipc && !config.wait_ready {
            tokio::time::sleep(config.restart.min_uptime).await;
            self.mark_ready(generation, false);
        }
        tokio::time::sleep(config.ready_timeout).await;
        self.apply(Event::ReadyTimedOut { generation });
    }

    pub(super) fn mark_ready(self: &Arc<Self>, generation: u64, via_ipc: bool) {
        // Said after its deadline, but heard first (a busy master runs its timer late): it was
        // not ready in time, whichever of the two this thread got to first.
        let late = {
            let state = self.lock();
            let timeout = state.config.ready_timeout;
            state
                .proc(generation)
                .is_some_and(|p| p.started.elapsed() > timeout)
        };
        if late {
            self.apply(Event::ReadyTimedOut { generation });
            return;
        }
        self.apply(Event::Ready {
            generation,
            via_ipc,
        });
    }

    /// SIGKILLs process `generation` if the master still tracks it, and returns its pid.
    /// Tracked means not reaped yet (the exit task reaps and untracks in one step under this
    /// lock), so the pid cannot name another program by now.
    pub(super) fn kill_tracked(&self, generation: u64) -> Option<u32> {
        let state = self.lock();
        let pid = state.proc(generation)?.pid;
        signal(pid, Signal::SIGKILL);
        Some(pid)
    }

    /// Runs the transition for `event` and performs what it asks for.
    pub(super) fn apply(self: &Arc<Self>, event: Event) {
        let actions = {
            let mut state = self.lock();
            let before = self.observer.before(&event, &state);
            let actions = state.apply(event);
            if let Some(before) = before {
                self.observer.after(before, &state, &actions);
            }
            actions
        };
        self.bump();
        self.perform(actions);
    }

    /// Performs a transition's actions, in order. Delays and replacements run as tasks of
    /// their own: nothing here waits.
    pub(super) fn perform(self: &Arc<Self>, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Start { slot, role } => {
                    self.clone().start_proc(slot, role);
                }
                Action::RestartAfter { slot, delay } => {
                    let inner = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        inner.apply(Event::RestartDue { slot });
                    });
                }
                Action::SparesAfter { delay } => {
                    let inner = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        inner.apply(Event::SparesDue);
                    });
                }
                Action::Drain {
                    generation,
                    timeout,
                    hand_off_to,
                } => {
                    // The master routes polling requests by their session ids only when it
                    // dispatches every connection (sticky scheduling).
                    let polling = self.lock().config.scheduling == Scheduling::Sticky;
                    let adopter = hand_off_to.and_then(|id| {
                        let master = std::process::id();
                        crate::adoption::Adopter::worker(&self.peers_token, id, master, polling)
                            .ok()
                    });
                    if let Some(proc) = self.lock().proc(generation) {
                        super::drain(proc, timeout, adopter);
                    }
                }
                Action::HandOver {
                    generation,
                    timeout,
                    to,
                } => {
                    if let Some(proc) = self.lock().proc(generation) {
                        super::drain(proc, timeout, Some(to));
                    }
                }
                Action::Kill { generation, why } => {
                    if let (Some(pid), Some(why)) = (self.kill_tracked(generation), why) {
                        emit(&Log {
                            pid: Some(pid),
                            ..why
                        });
                    }
                }
                Action::KillAfter { generation, delay } => {
                    let inner = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        inner.kill_tracked(generation);
                    });
                }
                Action::Forget { generation } => {
                    // What the process owned in the shared store goes, and the others are told.
                    self.forget_worker(generation);
                }
                Action::Replace { slot } => {
                    let inner = self.clone();
                    tokio::spawn(async move {
                        if let Err(error) = inner.replace(slot, &|_| {}).await {
                            tracing::error!(worker = slot, %error, "replacement failed");
                        }
                    });
                }
                Action::Log(log) => emit(&log),
                Action::Hook(occurrence) => self.raise(occurrence),
            }
        }
    }
}

/// Writes a transition's log line with its worker and pid as fields.
fn emit(log: &Log) {
    let Log {
        level,
        worker,
        pid,
        message,
    } = log;
    match level {
        Level::Info => tracing::info!(worker, pid, "{message}"),
        Level::Warn => tracing::warn!(worker, pid, "{message}"),
        Level::Error => tracing::error!(worker, pid, "{message}"),
    }
}

pub(super) fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "exited".into(),
    }
}

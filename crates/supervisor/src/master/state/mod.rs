//! The master's model of its workers as plain data, and every transition of it as a pure
//! function: an [`Event`] in, the [`Action`]s to take out. Nothing here starts, signals or
//! waits for a process. The shell (`lifecycle.rs` and the operations) performs the actions and
//! feeds what happens back as events, so the decisions (restart or not, how soon, promote a
//! spare, kill a hung worker) are unit-tested below without a single process, the way
//! `backoff.rs` is.

use std::time::{Duration, Instant};

use crate::backoff::{Backoff, RestartDecision};
use crate::config::AppConfig;
use crate::control::Status;
use crate::hooks::{HookEvent, Occurrence};
use crate::spawn::RunAs;

mod event;
mod ops;
mod process;

pub(in crate::master) use event::{Action, Event, Level, Log};
pub(in crate::master) use ops::Swapped;
pub(in crate::master) use process::{Proc, Role, Slot};

/// Where the whole app is in its life. A stop drains every worker (`Stopping`); the master
/// exits once the stop is answered (`Finished`), so a `chatctl stop` always gets its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::master) enum Phase {
    Running,
    Stopping,
    Finished,
}

pub(in crate::master) struct State {
    pub(in crate::master) config: AppConfig,
    /// The account workers run as (from `config.user`).
    pub(in crate::master) run_as: Option<RunAs>,
    /// The environment workers start from, when `reload --update-env` replaced the master's.
    pub(in crate::master) base_env: Option<Vec<(String, String)>>,
    pub(in crate::master) slots: Vec<Slot>,
    pub(in crate::master) next_generation: u64,
    pub(in crate::master) next_ping: u64,
    pub(in crate::master) phase: Phase,
    /// Warm workers (`--spare`): started, not routed, promoted into a slot when needed.
    pub(in crate::master) spares: Vec<Proc>,
    /// Bumped when a reload begins: spares of an older epoch run the old program or settings
    /// and are never promoted.
    pub(in crate::master) epoch: u64,
    /// Spares that keep exiting are started again ever more slowly.
    pub(in crate::master) spare_backoff: Backoff,
}

impl State {
    pub(in crate::master) fn new(config: AppConfig, run_as: Option<RunAs>) -> State {
        State {
            slots: (0..config.instances).map(Slot::new).collect(),
            config,
            run_as,
            base_env: None,
            next_generation: 1,
            next_ping: 1,
            phase: Phase::Running,
            spares: Vec::new(),
            epoch: 0,
            spare_backoff: Backoff::default(),
        }
    }

    /// The slot whose process `generation` is, if it is in one (not a spare).
    pub(in crate::master) fn slot_of(&self, generation: u64) -> Option<usize> {
        self.slots
            .iter()
            .position(|slot| slot.find(generation).is_some())
    }

    pub(in crate::master) fn proc(&self, generation: u64) -> Option<&Proc> {
        self.slots
            .iter()
            .find_map(|slot| slot.find(generation))
            .or_else(|| self.spares.iter().find(|p| p.generation == generation))
    }

    pub(in crate::master) fn proc_mut(&mut self, generation: u64) -> Option<&mut Proc> {
        let State { slots, spares, .. } = self;
        slots
            .iter_mut()
            .find_map(|slot| slot.find_mut(generation))
            .or_else(|| spares.iter_mut().find(|p| p.generation == generation))
    }

    /// Every process, spares included.
    pub(in crate::master) fn procs_mut(&mut self) -> impl Iterator<Item = &mut Proc> {
        self.slots
            .iter_mut()
            .flat_map(|slot| slot.procs_mut())
            .chain(self.spares.iter_mut())
    }

    fn stopping(&self) -> bool {
        self.phase != Phase::Running
    }

    /// Whether every worker (of the slots in use) is online.
    pub(in crate::master) fn all_online(&self) -> bool {
        self.slots
            .iter()
            .filter(|s| !s.retired)
            .all(|s| s.status == crate::control::Status::Online)
    }

    /// Whether no process is left, spares included.
    pub(in crate::master) fn all_gone(&self) -> bool {
        self.spares.is_empty()
            && self
                .slots
                .iter()
                .all(|s| s.current.is_none() && s.incoming.is_none() && s.draining.is_empty())
    }

    /// The transition for `event`.
    pub(in crate::master) fn apply(&mut self, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Started { slot, role, proc } => self.started(slot, role, *proc, &mut actions),
            Event::StartFailed { slot, role, error } => {
                actions.push(Log::about(
                    Level::Error,
                    slot,
                    None,
                    format!("cannot start worker: {error}"),
                ));
                match role {
                    Role::Current => {
                        self.after_exit(slot, None, Duration::ZERO, error, &mut actions)
                    }
                    Role::Spare => self.after_spare_failure(None, Duration::ZERO, &mut actions),
                    Role::Incoming => {}
                }
            }
            Event::Ready {
                generation,
                via_ipc,
            } => self.ready(generation, via_ipc, &mut actions),
            Event::ReadyTimedOut { generation } => {
                if self.proc(generation).is_some_and(|p| !p.ready) {
                    let timeout = self.config.ready_timeout;
                    actions.push(Action::kill_saying(
                        generation,
                        Level::Warn,
                        self.slot_of(generation),
                        format!("worker not ready within {timeout:?}: killed it"),
                    ));
                }
            }
            Event::Exited {
                generation,
                code,
                signal,
                description,
                at,
            } => self.exited(generation, (code, signal), description, at, &mut actions),
            Event::RestartDue { slot } => {
                let wanted = self.slots.get(slot).is_some_and(|s| {
                    !s.retired && s.current.is_none() && s.status != Status::Stopped
                });
                if wanted && !self.stopping() {
                    actions.push(Action::Start {
                        slot,
                        role: Role::Current,
                    });
                }
            }
            Event::SparesDue => self.top_up_spares(&mut actions),
            Event::Probed {
                generation,
                healthy,
            } => self.probed(generation, healthy, &mut actions),
            Event::MemoryExceeded { slot, memory } => {
                if self.slots.get(slot).is_some_and(|s| !s.replacing) && !self.stopping() {
                    let why = format!("above --max-memory ({memory} bytes): replacing it");
                    let pid = self.slots[slot].current.as_ref().map(|p| p.pid);
                    actions.push(Log::about(Level::Warn, slot, None, format!("worker {why}")));
                    actions.push(Action::Hook(Occurrence::about(
                        HookEvent::MemoryRestart,
                        slot,
                        pid,
                        format!("worker {slot} is {why}"),
                    )));
                    actions.push(Action::Replace { slot });
                }
            }
            Event::DrainTimedOut {
                generation,
                timeout,
            } => {
                if let Some(slot) = self.slot_of(generation) {
                    actions.push(Action::kill_saying(
                        generation,
                        Level::Warn,
                        Some(slot),
                        format!("worker did not finish draining in {timeout:?}: killed it"),
                    ));
                }
            }
            Event::Scaled { instances } => self.scaled(instances, &mut actions),
            Event::StopRequested => self.stop(Vec::new(), &mut actions),
            Event::HandOverRequested { adopters } => self.stop(adopters, &mut actions),
            Event::StopTimedOut => {
                let generations: Vec<u64> = self.procs_mut().map(|p| p.generation).collect();
                actions.extend(generations.into_iter().map(|generation| Action::Kill {
                    generation,
                    why: None,
                }));
            }
            Event::Stopped => {
                for slot in self.slots.iter_mut() {
                    slot.status = Status::Stopped;
                }
            }
            Event::Finished => self.phase = Phase::Finished,
        }
        actions
    }

    fn scaled(&mut self, instances: usize, actions: &mut Vec<Action>) {
        self.config.instances = instances;
        let timeout = self.config.stop_timeout;
        while self.slots.len() < instances {
            let mut slot = Slot::new(self.slots.len());
            slot.retired = true;
            self.slots.push(slot);
        }
        for slot in self.slots.iter_mut() {
            if slot.id < instances && slot.retired {
                slot.retired = false;
                slot.status = Status::Launching;
                if slot.current.is_none() {
                    actions.push(Action::Start {
                        slot: slot.id,
                        role: Role::Current,
                    });
                }
            } else if slot.id >= instances && !slot.retired {
                slot.retired = true;
                slot.status = Status::Stopping;
                actions.extend(slot.procs_mut().map(|proc| Action::Drain {
                    generation: proc.generation,
                    timeout,
                    hand_off_to: None,
                }));
            }
        }
        self.hand_off_retired(actions);
    }

    /// Every process is asked to finish; with `adopters` (a new master's workers), those that
    /// can move their sessions hand them over first, spread over the adopters in turn.
    fn stop(&mut self, adopters: Vec<crate::adoption::Adopter>, actions: &mut Vec<Action>) {
        self.phase = Phase::Stopping;
        let timeout = self.config.stop_timeout;
        let moves_sessions = self.config.capabilities().moves_sessions;
        for slot in self.slots.iter_mut() {
            slot.status = Status::Stopping;
        }
        let procs: Vec<(u64, bool)> = self
            .procs_mut()
            .map(|p| (p.generation, p.ready && p.speaks_ipc))
            .collect();
        actions.push(Log::without_worker(
            Level::Info,
            None,
            format!("stopping {} workers", procs.len()),
        ));
        let mut adopters = adopters.into_iter().cycle();
        actions.extend(procs.into_iter().map(|(generation, can_move)| {
            match adopters.next().filter(|_| can_move && moves_sessions) {
                Some(to) => Action::HandOver {
                    generation,
                    timeout,
                    to,
                },
                None => Action::Drain {
                    generation,
                    timeout,
                    hand_off_to: None,
                },
            }
        }));
    }

    /// The workers of slots a scale-down retired hand their live sessions to the least loaded
    /// worker that stays, as a reload does (see `finish_replace`), rather than drain them.
    fn hand_off_retired(&mut self, actions: &mut [Action]) {
        if !self.config.capabilities().moves_sessions {
            return;
        }
        for action in actions.iter_mut() {
            let Action::Drain {
                generation,
                hand_off_to: hand_off_to @ None,
                ..
            } = action
            else {
                continue;
            };
            let Some(at) = self.slot_of(*generation) else {
                continue;
            };
            let departing = match &self.slots[at].current {
                Some(proc) if proc.generation == *generation && proc.speaks_ipc && proc.ready => {
                    (proc.worker_id, proc.adopted_ids.clone())
                }
                _ => continue,
            };
            let adopter = self
                .slots
                .iter_mut()
                .filter(|slot| !slot.retired && slot.status == Status::Online)
                .filter_map(|slot| slot.current.as_mut())
                .filter(|proc| proc.ready && proc.speaks_ipc)
                .min_by_key(|proc| proc.connections);
            let Some(adopter) = adopter else {
                continue;
            };
            adopter.adopted_ids.push(departing.0);
            adopter.adopted_ids.extend(departing.1);
            *hand_off_to = Some(adopter.worker_id);
            if let Some(proc) = self.slots[at].current.as_mut() {
                proc.handing_off = true;
            }
        }
    }

    fn started(&mut self, slot: usize, role: Role, proc: Proc, actions: &mut Vec<Action>) {
        let pid = Some(proc.pid);
        match role {
            Role::Current => {
                let Some(position) = self.slots.get_mut(slot) else {
                    return;
                };
                position.current = Some(proc);
                if position.status != Status::Errored {
                    position.status = Status::Launching;
                }
                actions.push(Log::about(Level::Info, slot, pid, "worker started"));
            }
            Role::Incoming => {
                let Some(position) = self.slots.get_mut(slot) else {
                    return;
                };
                position.incoming = Some(proc);
                actions.push(Log::about(Level::Info, slot, pid, "worker started"));
            }
            Role::Spare => {
                let epoch = self.epoch;
                self.spares.push(Proc { epoch, ..proc });
                actions.push(Log::about(Level::Info, slot, pid, "spare worker started"));
            }
        }
    }

    fn ready(&mut self, generation: u64, via_ipc: bool, actions: &mut Vec<Action>) {
        let Some(proc) = self.proc_mut(generation) else {
            return;
        };
        if via_ipc {
            proc.speaks_ipc = true;
        }
        let Some(slot_id) = self.slot_of(generation) else {
            // A spare: ready to be promoted.
            if let Some(spare) = self.proc_mut(generation).filter(|p| !p.ready) {
                spare.ready = true;
                actions.push(Log::without_worker(
                    Level::Info,
                    Some(spare.pid),
                    "spare worker ready",
                ));
            }
            return;
        };
        let slot = &mut self.slots[slot_id];
        let is_current = slot.is_current(generation);
        let Some(proc) = slot.find_mut(generation) else {
            return;
        };
        if proc.ready {
            return;
        }
        proc.ready = true;
        if is_current && slot.status != Status::Stopping {
            slot.status = Status::Online;
        }
        actions.push(Log::about(Level::Info, slot_id, None, "worker online"));
    }

    /// A process ended: it leaves its slot (or the spares), and the slot restarts, from a
    /// spare when one is ready, if it was the current process and no stop asked for the exit.
    fn exited(
        &mut self,
        generation: u64,
        (code, signal): (Option<i32>, Option<i32>),
        description: String,
        at: Instant,
        actions: &mut Vec<Action>,
    ) {
        let Some(slot_id) = self.slot_of(generation) else {
            return self.spare_exited(generation, code, description, at, actions);
        };
        let Some((proc, role)) = self.slots[slot_id].remove(generation) else {
            return;
        };
        let uptime = at.saturating_duration_since(proc.started);
        let pid = Some(proc.pid);
        actions.push(Action::Forget { generation });
        if role != "current" {
            actions.push(Log::about(
                Level::Info,
                slot_id,
                pid,
                format!("{role} worker {description}"),
            ));
            return;
        }
        let expected = self.stopping() || self.slots[slot_id].status == Status::Stopping;
        let level = if expected { Level::Info } else { Level::Warn };
        let uptime_s = uptime.as_secs_f64();
        actions.push(Log::about(
            level,
            slot_id,
            pid,
            format!("worker {description} after {uptime_s:.1}s"),
        ));
        // A worker killed for its missed probes was reported as a health failure.
        let killed_as_hung = proc.misses >= self.config.health.max_misses;
        if !expected && !killed_as_hung {
            actions.push(Action::Hook(Occurrence {
                exit_code: code,
                exit_signal: signal,
                ..Occurrence::about(
                    HookEvent::Crash,
                    slot_id,
                    pid,
                    format!(
                        "worker {slot_id} (pid {}) {description} after {uptime_s:.1}s",
                        proc.pid
                    ),
                )
            }));
        }
        if expected || !self.promote_spare(slot_id, &description, actions) {
            self.after_exit(slot_id, code, uptime, description, actions);
        }
    }

    /// The slot's current process failed (exited, or could not start): record it and schedule
    /// the restart the policy asks for.
    fn after_exit(
        &mut self,
        slot_id: usize,
        code: Option<i32>,
        uptime: Duration,
        description: String,
        actions: &mut Vec<Action>,
    ) {
        let stopping = self.stopping();
        let policy = &self.config.restart;
        let Some(slot) = self.slots.get_mut(slot_id) else {
            return;
        };
        if stopping || slot.retired || slot.status == Status::Stopping {
            slot.status = Status::Stopped;
            return;
        }
        match slot.backoff.on_exit(policy, code, uptime) {
            RestartDecision::Stop => {
                slot.status = Status::Stopped;
                slot.last_error = Some(format!("{description}: a stop exit code, not restarted"));
            }
            RestartDecision::Restart { delay, errored } => {
                let newly_errored = errored && slot.status != Status::Errored;
                slot.restarts += 1;
                slot.status = if errored {
                    Status::Errored
                } else {
                    Status::WaitingRestart
                };
                slot.last_error = Some(description);
                if errored {
                    actions.push(Log::about(
                        Level::Error,
                        slot_id,
                        None,
                        format!("worker is crash-looping: retrying every {delay:?}"),
                    ));
                }
                if newly_errored {
                    actions.push(Action::Hook(Occurrence {
                        exit_code: code,
                        ..Occurrence::about(
                            HookEvent::Errored,
                            slot_id,
                            None,
                            format!("worker {slot_id} is crash-looping (errored): retrying every {delay:?}"),
                        )
                    }));
                }
                actions.push(Action::RestartAfter {
                    slot: slot_id,
                    delay,
                });
            }
        }
    }

    /// Puts a ready spare of the current epoch in the place of slot `slot_id`'s process, which
    /// just exited (`why`). False if there is none: the slot restarts as without spares.
    fn promote_spare(&mut self, slot_id: usize, why: &str, actions: &mut Vec<Action>) -> bool {
        let epoch = self.epoch;
        let Some(index) = self.spares.iter().position(|p| p.ready && p.epoch == epoch) else {
            return false;
        };
        let stopping = self.stopping();
        let slot = &mut self.slots[slot_id];
        if stopping || slot.retired || slot.current.is_some() {
            return false;
        }
        let spare = self.spares.remove(index);
        let pid = Some(spare.pid);
        slot.current = Some(spare);
        slot.status = Status::Online;
        slot.restarts += 1;
        slot.last_error = Some(why.to_owned());
        actions.push(Log::about(
            Level::Info,
            slot_id,
            pid,
            "spare worker took the place of the one that exited",
        ));
        self.top_up_spares(actions);
        true
    }

    /// Starts spares until the app has as many of the current epoch as it wants.
    pub(in crate::master) fn top_up_spares(&self, actions: &mut Vec<Action>) {
        if self.stopping() {
            return;
        }
        let have = self.spares.iter().filter(|p| p.epoch == self.epoch).count();
        let missing = self.config.spare.saturating_sub(have);
        // The label its output lines carry: the first id past the slots.
        let first_label = self.slots.len() + have;
        actions.extend((0..missing).map(|k| Action::Start {
            slot: first_label + k,
            role: Role::Spare,
        }));
    }

    fn spare_exited(
        &mut self,
        generation: u64,
        code: Option<i32>,
        description: String,
        at: Instant,
        actions: &mut Vec<Action>,
    ) {
        let Some(index) = self.spares.iter().position(|p| p.generation == generation) else {
            return;
        };
        let spare = self.spares.remove(index);
        let pid = Some(spare.pid);
        if spare.epoch != self.epoch || self.stopping() {
            actions.push(Log::without_worker(
                Level::Info,
                pid,
                format!("old spare worker {description}"),
            ));
            return;
        }
        actions.push(Log::without_worker(
            Level::Warn,
            pid,
            format!("spare worker {description}"),
        ));
        let uptime = at.saturating_duration_since(spare.started);
        self.after_spare_failure(code, uptime, actions);
    }

    /// A spare failed (exited, or could not start): start another after the backoff delay.
    fn after_spare_failure(
        &mut self,
        code: Option<i32>,
        uptime: Duration,
        actions: &mut Vec<Action>,
    ) {
        match self
            .spare_backoff
            .on_exit(&self.config.restart, code, uptime)
        {
            RestartDecision::Restart { delay, .. } => actions.push(Action::SparesAfter { delay }),
            RestartDecision::Stop => {}
        }
    }

    /// A probe came back: a process that misses `max_misses` in a row is hung, and killed (its
    /// exit restarts the slot).
    fn probed(&mut self, generation: u64, healthy: bool, actions: &mut Vec<Action>) {
        let max_misses = self.config.health.max_misses;
        let slot = self.slot_of(generation);
        let Some(proc) = slot.and_then(|slot| self.slots[slot].find_mut(generation)) else {
            return;
        };
        if healthy {
            proc.misses = 0;
            return;
        }
        proc.misses += 1;
        if proc.misses == max_misses {
            let (pid, worker) = (proc.pid, slot.unwrap_or_default());
            let message = format!(
                "worker {worker} (pid {pid}) missed {max_misses} health probes in a row: killed, a new one replaces it"
            );
            actions.push(Action::Hook(Occurrence::about(
                HookEvent::HealthFailure,
                worker,
                Some(pid),
                message,
            )));
        }
        if proc.misses >= max_misses {
            let misses = proc.misses;
            actions.push(Action::kill_saying(
                generation,
                Level::Error,
                slot,
                format!(
                    "worker missed {misses} health probes (hung?): killed it, a new one replaces it"
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests;

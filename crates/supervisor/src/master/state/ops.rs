//! The transitions behind the operations `chatctl` asks for (a reload's replacement of a slot,
//! a restart, a reload's new spares): pure like the events', each returning the actions to
//! take. The waits between them (for readiness, for a drain) are the shell's (`ops/`).

use std::time::Duration;

use super::{Action, Level, Log, Role, State};
use crate::backoff::Backoff;
use crate::control::Status;

/// A replacement's new process, swapped in.
#[derive(Debug, PartialEq)]
pub(in crate::master) struct Swapped {
    pub(in crate::master) new_pid: u32,
    /// The process it replaced, now draining: its pid and generation.
    pub(in crate::master) old: Option<(u32, u64)>,
}

impl State {
    /// A replacement of `slot` begins, unless the slot is retired or one is under way (None).
    /// The incoming process is a spare of the current epoch, a ready one first (and a new
    /// spare starts in its place), or else a new process.
    pub(in crate::master) fn begin_replace(&mut self, slot: usize) -> Option<Vec<Action>> {
        let position = self.slots.get_mut(slot)?;
        if position.retired || position.replacing {
            return None;
        }
        position.replacing = true;
        let epoch = self.epoch;
        let spare = self
            .spares
            .iter()
            .enumerate()
            .filter(|(_, p)| p.epoch == epoch)
            .min_by_key(|(_, p)| !p.ready)
            .map(|(index, _)| index);
        let mut actions = Vec::new();
        match spare {
            Some(index) => {
                let spare = self.spares.remove(index);
                self.slots[slot].incoming = Some(spare);
                self.top_up_spares(&mut actions);
            }
            None => actions.push(Action::Start {
                slot,
                role: Role::Incoming,
            }),
        }
        Some(actions)
    }

    /// The incoming process `generation` of `slot` settled: if it is ready, it becomes the
    /// slot's process and the old one drains; if not (it failed, or the wait ran out), it is
    /// killed and the old one keeps serving, and the reason is returned.
    pub(in crate::master) fn finish_replace(
        &mut self,
        slot: usize,
        generation: u64,
    ) -> (Result<Swapped, String>, Vec<Action>) {
        let timeout = self.config.drain_timeout;
        let position = &mut self.slots[slot];
        position.replacing = false;
        let ready = position
            .incoming
            .as_ref()
            .is_some_and(|p| p.generation == generation && p.ready);
        if !ready {
            let mut actions = Vec::new();
            // Tracked while it goes, so that the kill cannot reach a reused pid.
            if let Some(incoming) = position.incoming.take() {
                actions.push(Action::Kill {
                    generation: incoming.generation,
                    why: None,
                });
                position.draining.push(incoming);
            }
            let reason = position
                .last_error
                .clone()
                .unwrap_or_else(|| "it did not become ready".into());
            return (Err(reason), actions);
        }
        let mut new = position.incoming.take();
        let new_pid = new.as_ref().map_or(0, |p| p.pid);
        // A worker that speaks IPC hands its live sessions to its replacement, which from now
        // on also answers for the ids in their session ids (its own and those it had adopted).
        let moves_sessions = self.config.capabilities().moves_sessions;
        let position = &mut self.slots[slot];
        let adopter = match (&mut new, &position.current) {
            (Some(new), Some(old)) if moves_sessions && old.speaks_ipc && old.ready => {
                new.adopted_ids.push(old.worker_id);
                new.adopted_ids.extend(old.adopted_ids.iter().copied());
                Some(new.worker_id)
            }
            _ => None,
        };
        let old = std::mem::replace(&mut position.current, new);
        position.status = Status::Online;
        position.backoff = Backoff::default();
        let mut actions = Vec::new();
        let old = old.map(|mut old| {
            old.handing_off = adopter.is_some();
            let identity = (old.pid, old.generation);
            actions.push(Action::Drain {
                generation: old.generation,
                timeout,
                hand_off_to: adopter,
            });
            position.draining.push(old);
            identity
        });
        (Ok(Swapped { new_pid, old }), actions)
    }

    /// A restart stops `slot`'s process first: it drains within `timeout`. Returns its
    /// generation, if it has one.
    pub(in crate::master) fn stop_for_restart(
        &mut self,
        slot: usize,
        timeout: Duration,
    ) -> (Option<u64>, Vec<Action>) {
        let position = &mut self.slots[slot];
        position.status = Status::Stopping;
        let Some(current) = &position.current else {
            return (None, Vec::new());
        };
        let generation = current.generation;
        (
            Some(generation),
            vec![Action::Drain {
                generation,
                timeout,
                hand_off_to: None,
            }],
        )
    }

    /// A restart starts `slot` again, with a fresh backoff.
    pub(in crate::master) fn relaunch(&mut self, slot: usize) -> Vec<Action> {
        let position = &mut self.slots[slot];
        position.status = Status::Launching;
        position.backoff = Backoff::default();
        position.restarts += 1;
        vec![Action::Start {
            slot,
            role: Role::Current,
        }]
    }

    /// A reload begins: a new epoch, whose spares run the new program and settings. The old
    /// spares drain, and are killed if they have not exited by the stop timeout.
    pub(in crate::master) fn renew_spares(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.config.spare == 0 && self.spares.is_empty() {
            return actions;
        }
        self.epoch += 1;
        let timeout = self.config.stop_timeout;
        for spare in &self.spares {
            actions.push(Action::Drain {
                generation: spare.generation,
                timeout,
                hand_off_to: None,
            });
            actions.push(Action::KillAfter {
                generation: spare.generation,
                delay: timeout,
            });
        }
        if !actions.is_empty() {
            actions.push(Log::without_worker(
                Level::Info,
                None,
                format!(
                    "replacing {} spare workers of the old settings",
                    self.spares.len()
                ),
            ));
        }
        self.top_up_spares(&mut actions);
        actions
    }
}

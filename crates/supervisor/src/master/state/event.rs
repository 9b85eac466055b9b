//! What the state machine is told ([`Event`]) and what it asks the shell to do ([`Action`]).

use std::time::{Duration, Instant};

use super::process::{Proc, Role};
use crate::hooks::Occurrence;

/// What happened to the app or one of its processes.
pub(in crate::master) enum Event {
    /// A process was spawned. A spare's `slot` is the label its output lines carry.
    Started {
        slot: usize,
        role: Role,
        proc: Box<Proc>,
    },
    /// A process for `slot` could not be spawned.
    StartFailed {
        slot: usize,
        role: Role,
        error: String,
    },
    /// A process is ready: it said so over IPC or with READY=1, or survived `min_uptime`.
    Ready { generation: u64, via_ipc: bool },
    /// The ready timeout of a process passed.
    ReadyTimedOut { generation: u64 },
    /// A process ended and was reaped.
    Exited {
        generation: u64,
        code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
        description: String,
        at: Instant,
    },
    /// A slot's restart delay is over.
    RestartDue { slot: usize },
    /// The delay after a spare failed is over.
    SparesDue,
    /// A health probe of a process came back.
    Probed { generation: u64, healthy: bool },
    /// A slot's process was sampled above `--max-memory`.
    MemoryExceeded { slot: usize, memory: u64 },
    /// A replaced process did not finish draining in `timeout`.
    DrainTimedOut { generation: u64, timeout: Duration },
    /// `chatctl scale`: slots past `instances` retire (drained), missing ones start.
    Scaled { instances: usize },
    /// `chatctl stop`, SIGTERM or SIGINT: every process is asked to finish.
    StopRequested,
    /// A new master took the app over (`chatctl upgrade`): every process is asked to finish,
    /// those that can move their sessions handing them to the new master's workers, in turn.
    HandOverRequested {
        adopters: Vec<crate::adoption::Adopter>,
    },
    /// The stop timeout passed with processes left.
    StopTimedOut,
    /// Every process of a stop is gone (or was killed).
    Stopped,
    /// The stop is answered: the master exits.
    Finished,
}

/// What the shell does for a transition, in order.
#[derive(Debug, PartialEq)]
pub(in crate::master) enum Action {
    /// Start a process for `slot` now.
    Start {
        slot: usize,
        role: Role,
    },
    /// Feed [`Event::RestartDue`] for `slot` after `delay`.
    RestartAfter {
        slot: usize,
        delay: Duration,
    },
    /// Feed [`Event::SparesDue`] after `delay`.
    SparesAfter {
        delay: Duration,
    },
    /// Ask a process to finish its requests and exit within `timeout`; with `hand_off_to`
    /// (the worker id of its replacement), to hand its live sessions to that worker first.
    Drain {
        generation: u64,
        timeout: Duration,
        hand_off_to: Option<u16>,
    },
    /// Ask a process to hand its live sessions to `to`, a worker of another master, then
    /// finish as [`Action::Drain`] does.
    HandOver {
        generation: u64,
        timeout: Duration,
        to: crate::adoption::Adopter,
    },
    /// SIGKILL a process if it is still tracked; `why` is logged (with its pid) if it was.
    Kill {
        generation: u64,
        why: Option<Log>,
    },
    /// SIGKILL a process after `delay` if it is still tracked then.
    KillAfter {
        generation: u64,
        delay: Duration,
    },
    /// Drop what an exited process owned in the shared store, telling the other workers.
    Forget {
        generation: u64,
    },
    /// Replace a slot's process without a gap (as a reload does).
    Replace {
        slot: usize,
    },
    Log(Log),
    /// Run the app's event hook (`--on-event`), if it has one.
    Hook(Occurrence),
}

/// A line for the app log.
#[derive(Debug, PartialEq)]
pub(in crate::master) struct Log {
    pub(in crate::master) level: Level,
    pub(in crate::master) worker: Option<usize>,
    pub(in crate::master) pid: Option<u32>,
    pub(in crate::master) message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::master) enum Level {
    Info,
    Warn,
    Error,
}

impl Action {
    /// Kill a process, logging `message` (with its pid) if it was still tracked.
    pub(super) fn kill_saying(
        generation: u64,
        level: Level,
        worker: Option<usize>,
        message: String,
    ) -> Action {
        Action::Kill {
            generation,
            why: Some(Log {
                level,
                worker,
                pid: None,
                message,
            }),
        }
    }
}

impl Log {
    /// A line about worker `worker`.
    pub(super) fn about(
        level: Level,
        worker: usize,
        pid: Option<u32>,
        message: impl Into<String>,
    ) -> Action {
        Action::Log(Log {
            level,
            worker: Some(worker),
            pid,
            message: message.into(),
        })
    }

    /// A line about the app, or a spare (which has no worker position).
    pub(super) fn without_worker(
        level: Level,
        pid: Option<u32>,
        message: impl Into<String>,
    ) -> Action {
        Action::Log(Log {
            level,
            worker: None,
            pid,
            message: message.into(),
        })
    }
}

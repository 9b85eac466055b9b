//! A worker process and the position (slot) it fills, as the master tracks them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::backoff::Backoff;
use crate::config::AppConfig;
use crate::control::Status;
use crate::drops::Drops;
use crate::handoff;
use crate::outbox::Outbox;
use crate::procstat::CpuSampler;
use crate::signals::SignalName;

/// One worker process.
pub(in crate::master) struct Proc {
    pub(in crate::master) pid: u32,
    pub(in crate::master) generation: u64,
    pub(in crate::master) started: Instant,
    pub(in crate::master) ready: bool,
    /// Whether it ever sent an IPC message: only those are pinged and drained over IPC.
    pub(in crate::master) speaks_ipc: bool,
    /// Its IPC channel's queue: control ahead of relays, each bounded.
    pub(in crate::master) ipc: Arc<Outbox>,
    /// What the master dropped on this worker's behalf: relayed messages it did not read fast
    /// enough, store writes of its that failed.
    pub(in crate::master) drops: Drops,
    /// What the worker itself reported dropping, with its last pong.
    pub(in crate::master) reported_drops: BTreeMap<String, u64>,
    pub(in crate::master) connections: u64,
    /// What it counted about its clients, with its last pong (for `--admin`).
    pub(in crate::master) stats: crate::worker_stats::WorkerStats,
    pub(in crate::master) cpu: CpuSampler,
    pub(in crate::master) memory: u64,
    pub(in crate::master) misses: u32,
    pub(in crate::master) last_pong: u64,
    /// Its id in session ids and in its private socket's name.
    pub(in crate::master) worker_id: u16,
    /// Where its connections are handed over (sticky scheduling).
    pub(in crate::master) handoff: Option<Arc<handoff::Sender>>,
    /// Connections handed to it since its last report of its load.
    pub(in crate::master) handed: u64,
    /// What asks it to finish when it does not speak IPC (`--kill-signal`), as configured when
    /// it started.
    pub(in crate::master) kill_signal: SignalName,
    /// A program's port of its own, where it is probed (`--worker-port-base`).
    pub(in crate::master) port: Option<u16>,
    /// The settings epoch it started in (see `State::epoch`).
    pub(in crate::master) epoch: u64,
    /// Worker ids of the processes whose live sessions it adopted (on reload): their session
    /// ids carry those ids, and are routed here.
    pub(in crate::master) adopted_ids: Vec<u16>,
    /// Draining, it hands its live sessions to its replacement: until it says it is done,
    /// connections for its sessions still come to it (it passes on those that moved), rather
    /// than to a replacement that may not have them yet.
    pub(in crate::master) handing_off: bool,
}

impl Proc {
    /// A process just spawned for position `slot`, not ready yet.
    pub(in crate::master) fn new(
        config: &AppConfig,
        slot: usize,
        pid: u32,
        generation: u64,
        worker_id: u16,
        ipc: Arc<Outbox>,
        handoff: Option<Arc<handoff::Sender>>,
    ) -> Proc {
        Proc {
            pid,
            generation,
            started: Instant::now(),
            ready: false,
            speaks_ipc: false,
            ipc,
            drops: Drops::new(config.drop_log_interval),
            reported_drops: BTreeMap::new(),
            connections: 0,
            stats: Default::default(),
            cpu: CpuSampler::default(),
            memory: 0,
            misses: 0,
            last_pong: 0,
            worker_id,
            handoff,
            handed: 0,
            kill_signal: config.kill_signal,
            port: config.worker_port(slot),
            epoch: 0,
            adopted_ids: Vec::new(),
            handing_off: false,
        }
    }
}

/// A worker position; its process changes with restarts and reloads.
pub(in crate::master) struct Slot {
    pub(in crate::master) id: usize,
    pub(in crate::master) status: Status,
    pub(in crate::master) restarts: u32,
    pub(in crate::master) backoff: Backoff,
    pub(in crate::master) last_error: Option<String>,
    /// Removed by `scale` down: not restarted, not listed.
    pub(in crate::master) retired: bool,
    /// A reload or memory replacement of this slot is under way.
    pub(in crate::master) replacing: bool,
    /// What the last process replaced here said of its live hand-off (its generation, the
    /// counts): kept past its exit, for `reload` to print.
    pub(in crate::master) hand_off: Option<(u64, crate::adoption::HandOffCounts)>,
    pub(in crate::master) current: Option<Proc>,
    /// The replacement started by a reload, until it is ready.
    pub(in crate::master) incoming: Option<Proc>,
    /// Replaced processes finishing their requests.
    pub(in crate::master) draining: Vec<Proc>,
}

impl Slot {
    pub(in crate::master) fn new(id: usize) -> Self {
        Slot {
            id,
            status: Status::Launching,
            restarts: 0,
            backoff: Backoff::default(),
            last_error: None,
            retired: false,
            replacing: false,
            hand_off: None,
            current: None,
            incoming: None,
            draining: Vec::new(),
        }
    }

    pub(in crate::master) fn procs_mut(&mut self) -> impl Iterator<Item = &mut Proc> {
        self.current
            .iter_mut()
            .chain(self.incoming.iter_mut())
            .chain(self.draining.iter_mut())
    }

    pub(in crate::master) fn find(&self, generation: u64) -> Option<&Proc> {
        self.current
            .iter()
            .chain(self.incoming.iter())
            .chain(self.draining.iter())
            .find(|p| p.generation == generation)
    }

    pub(in crate::master) fn find_mut(&mut self, generation: u64) -> Option<&mut Proc> {
        self.procs_mut().find(|p| p.generation == generation)
    }

    pub(super) fn is_current(&self, generation: u64) -> bool {
        self.current
            .as_ref()
            .is_some_and(|p| p.generation == generation)
    }

    /// Takes process `generation` out of the slot, with the part it played.
    pub(super) fn remove(&mut self, generation: u64) -> Option<(Proc, &'static str)> {
        if self.is_current(generation) {
            return self.current.take().map(|p| (p, "current"));
        }
        if self
            .incoming
            .as_ref()
            .is_some_and(|p| p.generation == generation)
        {
            return self.incoming.take().map(|p| (p, "incoming"));
        }
        let index = self
            .draining
            .iter()
            .position(|p| p.generation == generation)?;
        Some((self.draining.remove(index), "draining"))
    }
}

/// The part a new process is started to play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::master) enum Role {
    /// The slot's process.
    Current,
    /// A reload's replacement, not routed to until it is ready.
    Incoming,
    /// A warm worker (`--spare`), promoted into a slot when one is needed.
    Spare,
}

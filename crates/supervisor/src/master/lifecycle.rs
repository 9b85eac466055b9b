//! A worker process's life: started (with its sockets and output pumps), ready, exited, and
//! restarted by the slot's backoff (or replaced by a spare).

use super::*;

impl Inner {
    /// Starts a process for a slot. Failures are recorded on the slot and retried later.
    pub(super) fn start_proc(self: Arc<Self>, slot_id: usize, role: Role) -> Option<u64> {
        let (config, generation, worker_id, private) = self.claim_worker_id();
        let (run_as, base_env) = {
            let state = self.lock();
            (state.run_as, state.base_env.clone())
        };
        let sticky = config.scheduling == Scheduling::Sticky && config.runs_chat();
        let wait_ready = config.wait_ready && !config.runs_chat();
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
        let spawned = match spawned {
            Ok(spawned) => spawned,
            Err(error) => {
                tracing::error!(worker = slot_id, %error, "cannot start worker");
                match role {
                    Role::Current => self.clone().on_exit(slot_id, None, format!("{error}")),
                    Role::Spare => self.clone().after_spare_failure(None, Duration::ZERO),
                    Role::Incoming => {}
                }
                return None;
            }
        };
        let (spawned, handoff, notify) = spawned;
        let mut child = spawned.child;
        let pid = child.id().unwrap_or(0);
        let outbox = Outbox::new(config.ipc_queue_size);
        let proc = Proc {
            pid,
            generation,
            started: Instant::now(),
            ready: false,
            speaks_ipc: false,
            kill_signal: config.kill_signal,
            port: config.worker_port(slot_id),
            epoch: 0,
            ipc: outbox.clone(),
            connections: 0,
            drops: Drops::new(config.drop_log_interval),
            reported_drops: BTreeMap::new(),
            cpu: CpuSampler::default(),
            memory: 0,
            misses: 0,
            last_pong: 0,
            worker_id,
            handoff,
            handed: 0,
        };
        {
            let mut state = self.lock();
            let epoch = state.epoch;
            match role {
                Role::Current => {
                    let slot = &mut state.slots[slot_id];
                    slot.current = Some(proc);
                    if slot.status != Status::Errored {
                        slot.status = Status::Launching;
                    }
                }
                Role::Incoming => state.slots[slot_id].incoming = Some(proc),
                Role::Spare => state.spares.push(Proc { epoch, ..proc }),
            }
        }
        self.bump();
        if role == Role::Spare {
            tracing::info!(worker = slot_id, pid, "spare worker started");
        } else {
            tracing::info!(worker = slot_id, pid, "worker started");
        }
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
            let (code, description) = match status {
                Ok(status) => (status.code(), describe_exit(status)),
                Err(error) => (None, format!("lost track of the process: {error}")),
            };
            inner.on_proc_exit(generation, code, description);
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
        tokio::spawn(
            self.clone()
                .readiness_deadline(slot_id, generation, config.clone()),
        );
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
    pub(super) async fn readiness_deadline(
        self: Arc<Self>,
        slot_id: usize,
        generation: u64,
        config: AppConfig,
    ) {
        if !config.runs_chat() && !config.wait_ready {
            tokio::time::sleep(config.restart.min_uptime).await;
            self.mark_ready(generation, false);
        }
        tokio::time::sleep(config.ready_timeout).await;
        let stuck = self.lock().proc(generation).is_some_and(|p| !p.ready);
        if stuck {
            if let Some(pid) = self.kill_tracked(generation) {
                tracing::warn!(
                    worker = slot_id,
                    pid,
                    "worker not ready within {:?}: killed it",
                    config.ready_timeout
                );
            }
        }
    }

    pub(super) fn mark_ready(&self, generation: u64, via_ipc: bool) {
        let slot_id = {
            let mut state = self.lock();
            let Some(proc) = state.proc_mut(generation) else {
                return;
            };
            if via_ipc {
                proc.speaks_ipc = true;
            }
            let Some(slot_id) = state.slot_of(generation) else {
                // A spare: ready to be promoted.
                if let Some(spare) = state.proc_mut(generation).filter(|p| !p.ready) {
                    spare.ready = true;
                    let pid = spare.pid;
                    drop(state);
                    tracing::info!(pid, "spare worker ready");
                    self.bump();
                }
                return;
            };
            let slot = &mut state.slots[slot_id];
            let is_current = slot
                .current
                .as_ref()
                .is_some_and(|p| p.generation == generation);
            let Some(proc) = slot.find_mut(generation) else {
                return;
            };
            if via_ipc {
                proc.speaks_ipc = true;
            }
            if proc.ready {
                return;
            }
            proc.ready = true;
            if is_current && slot.status != Status::Stopping {
                slot.status = Status::Online;
            }
            slot_id
        };
        tracing::info!(worker = slot_id, "worker online");
        self.bump();
    }

    /// SIGKILLs process `generation` of a slot if the master still tracks it, and returns its
    /// pid. Tracked means not reaped yet (the exit task reaps and untracks in one step under
    /// this lock), so the pid cannot name another program by now.
    pub(super) fn kill_tracked(&self, generation: u64) -> Option<u32> {
        let state = self.lock();
        let pid = state.proc(generation)?.pid;
        signal(pid, libc::SIGKILL);
        Some(pid)
    }

    /// A process ended: retire it, and restart the slot if it was the current one.
    pub(super) fn on_proc_exit(
        self: Arc<Self>,
        generation: u64,
        code: Option<i32>,
        description: String,
    ) {
        let role = {
            let mut state = self.lock();
            let Some(slot_id) = state.slot_of(generation) else {
                drop(state);
                return self.on_spare_exit(generation, code, description);
            };
            let slot = &mut state.slots[slot_id];
            let removed = if slot
                .current
                .as_ref()
                .is_some_and(|p| p.generation == generation)
            {
                slot.current.take().map(|p| (p, "current"))
            } else if slot
                .incoming
                .as_ref()
                .is_some_and(|p| p.generation == generation)
            {
                slot.incoming.take().map(|p| (p, "incoming"))
            } else {
                let index = slot
                    .draining
                    .iter()
                    .position(|p| p.generation == generation);
                index.map(|i| (slot.draining.remove(i), "draining"))
            };
            removed.map(|(proc, role)| (role, proc.started.elapsed(), proc.pid, slot_id))
        };
        let Some((role, uptime, pid, slot_id)) = role else {
            return;
        };
        // What the process owned in the shared store goes, and the others are told.
        if let Some(service) = self.service.get() {
            for message in service.worker_gone(generation) {
                self.relay(generation, &message);
            }
        }
        match role {
            "current" => {
                let expected = {
                    let state = self.lock();
                    state.stopping || state.slots[slot_id].status == Status::Stopping
                };
                let uptime_s = uptime.as_secs_f64();
                if expected {
                    tracing::info!(
                        worker = slot_id,
                        pid,
                        "worker {description} after {uptime_s:.1}s"
                    );
                } else {
                    tracing::warn!(
                        worker = slot_id,
                        pid,
                        "worker {description} after {uptime_s:.1}s"
                    );
                }
                if expected || !self.promote_spare(slot_id, &description) {
                    self.clone()
                        .restart_after_exit(slot_id, code, uptime, description);
                }
            }
            _ => tracing::info!(worker = slot_id, pid, "{role} worker {description}"),
        }
        self.bump();
    }

    /// Records a failure of the slot's current process (or of its start) and schedules the
    /// restart the policy asks for.
    pub(super) fn on_exit(self: Arc<Self>, slot_id: usize, code: Option<i32>, description: String) {
        self.clone()
            .restart_after_exit(slot_id, code, Duration::ZERO, description);
        self.bump();
    }

    pub(super) fn restart_after_exit(
        self: Arc<Self>,
        slot_id: usize,
        code: Option<i32>,
        uptime: Duration,
        description: String,
    ) {
        let delay = {
            let mut state = self.lock();
            let stopping = state.stopping;
            let policy = state.config.restart.clone();
            let slot = &mut state.slots[slot_id];
            if stopping || slot.retired || slot.status == Status::Stopping {
                slot.status = Status::Stopped;
                return;
            }
            match slot.backoff.on_exit(&policy, code, uptime) {
                RestartDecision::Stop => {
                    slot.status = Status::Stopped;
                    slot.last_error =
                        Some(format!("{description}: a stop exit code, not restarted"));
                    return;
                }
                RestartDecision::Restart { delay, errored } => {
                    slot.restarts += 1;
                    slot.status = if errored {
                        Status::Errored
                    } else {
                        Status::WaitingRestart
                    };
                    slot.last_error = Some(description);
                    if errored {
                        tracing::error!(
                            worker = slot_id,
                            "worker is crash-looping: retrying every {delay:?}"
                        );
                    }
                    delay
                }
            }
        };
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let wanted = {
                let state = self.lock();
                let slot = &state.slots[slot_id];
                !state.stopping
                    && !slot.retired
                    && slot.current.is_none()
                    && slot.status != Status::Stopped
            };
            if wanted {
                self.start_proc(slot_id, Role::Current);
            }
        });
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

//! The master: owns the listening socket and the control socket, starts one worker per slot,
//! restarts crashed ones with backoff, replaces hung ones, reloads them one at a time without
//! dropping a request, and stops them all. Under sticky scheduling it also accepts the
//! connections and hands each to the worker owning its session (it peeks at the request line
//! but never reads or copies application bytes).

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

use crate::backoff::{Backoff, RestartDecision};
use crate::config::{AppConfig, Scheduling};
use crate::control::{AppStatus, Request, Response, SpareStatus, WorkerStatus};
use crate::dispatch::{self, Peeked};
use crate::drops::Drops;
use crate::handoff;
use crate::ipc::{message_lines, read_message, write_message, ReadEnd, ToMaster, ToWorker};
use crate::logs::{LogSink, Stream};
use crate::outbox::{relay_line, Outbox, Refused};
use crate::paths::AppPaths;
use crate::procstat::{rss_bytes, CpuSampler};
use crate::route_tag::{self, Owner};
use crate::signals::SignalName;
use crate::spawn::{lookup_user, signal, spawn_worker, Connections, RunAs, WorkerSpec};

/// New connections whose request line the master may wait for at once (sticky scheduling);
/// beyond this, accepting waits and further clients queue in the kernel's backlog.
const MAX_PEEKING: usize = 4096;

mod auto;
mod spare;
mod update;

/// A worker slot's state, as `list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Launching,
    Online,
    Stopping,
    Stopped,
    WaitingRestart,
    Errored,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Launching => "launching",
            Status::Online => "online",
            Status::Stopping => "stopping",
            Status::Stopped => "stopped",
            Status::WaitingRestart => "waiting-restart",
            Status::Errored => "errored",
        }
    }
}

/// What the master offers its workers beyond supervision: the embedded store of an app that
/// runs without Redis. The master itself stays ignorant of what the requests mean.
pub trait MasterService: Send + Sync + 'static {
    /// Answers a worker's request. `worker` identifies the process for as long as it lives.
    fn request(&self, worker: u64, body: serde_json::Value) -> serde_json::Value;
    /// A worker process ended: forget what it owned (its users' presence). Returns messages
    /// for the remaining workers (telling their clients who left).
    fn worker_gone(&self, worker: u64) -> Vec<Box<serde_json::value::RawValue>>;
}

/// Why the master could not start; each names the fix.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("app '{0}' is already running — see `chatctl list`, or `chatctl stop {0}`")]
    AlreadyRunning(String),
    #[error(
        "cannot bind {0}: {1} — is another chatctl app or server using it? see `chatctl list`"
    )]
    Bind(String, std::io::Error),
    #[error("workers must not run as root: pass --user NAME with an unprivileged account")]
    RootUser,
    #[error("--user needs the master to run as root")]
    UserWithoutRoot,
    #[error("chatctl runs as root and the default workers' account '{0}' does not exist: pass --user NAME (an unprivileged account), or set CHATCTL_USER")]
    NoDefaultUser(String),
    #[error("{0}")]
    Spawn(#[from] crate::spawn::SpawnError),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot set up {path}: {source}")]
    Files {
        path: String,
        source: std::io::Error,
    },
}

fn files_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> MasterError + '_ {
    move |source| MasterError::Files {
        path: path.display().to_string(),
        source,
    }
}

/// One worker process.
struct Proc {
    pid: u32,
    generation: u64,
    started: Instant,
    ready: bool,
    /// Whether it ever sent an IPC message: only those are pinged and drained over IPC.
    speaks_ipc: bool,
    /// Its IPC channel's queue: control ahead of relays, each bounded.
    ipc: Arc<Outbox>,
    /// What the master dropped on this worker's behalf: relayed messages it did not read fast
    /// enough, store writes of its that failed.
    drops: Drops,
    /// What the worker itself reported dropping, with its last pong.
    reported_drops: BTreeMap<String, u64>,
    connections: u64,
    cpu: CpuSampler,
    memory: u64,
    misses: u32,
    last_pong: u64,
    /// Its id in session ids and in its private socket's name.
    worker_id: u16,
    /// Where its connections are handed over (sticky scheduling).
    handoff: Option<Arc<handoff::Sender>>,
    /// Connections handed to it since its last report of its load.
    handed: u64,
    /// What asks it to finish when it does not speak IPC (`--kill-signal`), as configured when
    /// it started.
    kill_signal: SignalName,
    /// A program's port of its own, where it is probed (`--worker-port-base`).
    port: Option<u16>,
    /// The settings epoch it started in (see `State::epoch`).
    epoch: u64,
}

/// A worker position; its process changes with restarts and reloads.
struct Slot {
    id: usize,
    status: Status,
    restarts: u32,
    backoff: Backoff,
    last_error: Option<String>,
    /// Removed by `scale` down: not restarted, not listed.
    retired: bool,
    /// A reload or memory replacement of this slot is under way.
    replacing: bool,
    current: Option<Proc>,
    /// The replacement started by a reload, until it is ready.
    incoming: Option<Proc>,
    /// Replaced processes finishing their requests.
    draining: Vec<Proc>,
}

impl Slot {
    fn new(id: usize) -> Self {
        Slot {
            id,
            status: Status::Launching,
            restarts: 0,
            backoff: Backoff::default(),
            last_error: None,
            retired: false,
            replacing: false,
            current: None,
            incoming: None,
            draining: Vec::new(),
        }
    }

    fn procs_mut(&mut self) -> impl Iterator<Item = &mut Proc> {
        self.current
            .iter_mut()
            .chain(self.incoming.iter_mut())
            .chain(self.draining.iter_mut())
    }

    fn find(&self, generation: u64) -> Option<&Proc> {
        self.current
            .iter()
            .chain(self.incoming.iter())
            .chain(self.draining.iter())
            .find(|p| p.generation == generation)
    }

    fn find_mut(&mut self, generation: u64) -> Option<&mut Proc> {
        self.procs_mut().find(|p| p.generation == generation)
    }
}

struct State {
    config: AppConfig,
    /// The account workers run as (from `config.user`).
    run_as: Option<RunAs>,
    /// The environment workers start from, when `reload --update-env` replaced the master's.
    base_env: Option<Vec<(String, String)>>,
    slots: Vec<Slot>,
    next_generation: u64,
    next_ping: u64,
    stopping: bool,
    /// Warm workers (`--spare`): started, not routed, promoted into a slot when needed.
    spares: Vec<Proc>,
    /// Bumped when a reload begins: spares of an older epoch run the old program or settings
    /// and are never promoted.
    epoch: u64,
    /// Spares that keep exiting are started again ever more slowly.
    spare_backoff: Backoff,
}

impl State {
    /// The slot whose process `generation` is, if it is in one (not a spare).
    fn slot_of(&self, generation: u64) -> Option<usize> {
        self.slots
            .iter()
            .position(|slot| slot.find(generation).is_some())
    }

    fn proc(&self, generation: u64) -> Option<&Proc> {
        self.slots
            .iter()
            .find_map(|slot| slot.find(generation))
            .or_else(|| self.spares.iter().find(|p| p.generation == generation))
    }

    fn proc_mut(&mut self, generation: u64) -> Option<&mut Proc> {
        let State { slots, spares, .. } = self;
        slots
            .iter_mut()
            .find_map(|slot| slot.find_mut(generation))
            .or_else(|| spares.iter_mut().find(|p| p.generation == generation))
    }

    /// Every process, spares included.
    fn procs_mut(&mut self) -> impl Iterator<Item = &mut Proc> {
        self.slots
            .iter_mut()
            .flat_map(|slot| slot.procs_mut())
            .chain(self.spares.iter_mut())
    }
}

/// How long a stopping master waits for its workers' last output to reach the log.
const LAST_WORDS: Duration = Duration::from_secs(2);

struct Inner {
    paths: AppPaths,
    /// The tasks copying workers' output into the log: a stopping master waits for them, so
    /// the last lines of its workers are not lost with its runtime.
    pumps: tokio_util::task::TaskTracker,
    /// The shared listening socket; None with `no_listen`.
    listener: Option<std::net::TcpListener>,
    /// Names this master's workers' private sockets (abstract unix sockets).
    peers_token: String,
    /// The chat's cookie key, the same for every worker and every restart (and every host on
    /// one Redis): given by [`Master::set_secret`].
    secret: std::sync::OnceLock<String>,
    log: LogSink,
    started: Instant,
    state: Mutex<State>,
    /// Bumped on every change of worker state; waiters re-check their condition.
    changed: watch::Sender<u64>,
    /// Set once everything is stopped: the master exits.
    finished: watch::Sender<bool>,
    service: std::sync::OnceLock<Arc<dyn MasterService>>,
    /// Questions a worker asked the others, while their answers come in.
    gatherings: Mutex<std::collections::HashMap<u64, Gathering>>,
    next_gathering: std::sync::atomic::AtomicU64,
}

/// One worker's question to all the others (e.g. which sockets are in a room).
struct Gathering {
    requester: Arc<Outbox>,
    /// The requester's id for the reply.
    id: u64,
    expected: usize,
    answers: Vec<serde_json::Value>,
}

/// A master ready to run: checks done, socket bound, log open.
pub struct Master {
    inner: Arc<Inner>,
    control: UnixListener,
    /// `--watch`: started in `prepare`, so a path that cannot be watched fails `start`.
    watcher: Option<crate::triggers::Watcher>,
}

impl Master {
    /// Does everything that can fail before workers start, so `start` can report it at once.
    pub async fn prepare(config: AppConfig, paths: AppPaths) -> Result<Master, MasterError> {
        paths.create().map_err(files_error(&paths.dir))?;
        if crate::control::is_alive(&paths.control).await {
            return Err(MasterError::AlreadyRunning(config.name.clone()));
        }
        // A master that was killed leaves its socket and pid file behind: clear them.
        paths.remove_runtime_files();
        paths.create().map_err(files_error(&paths.dir))?;

        let run_as = workers_account(config.user.as_deref())?;
        let listener = if config.no_listen {
            None
        } else {
            let bound = crate::listen::bind(config.listen)
                .map_err(|e| MasterError::Bind(config.listen.to_string(), e))?;
            Some(bound)
        };
        let log = LogSink::open_app(&paths, &config).map_err(files_error(&paths.logs))?;
        let control = UnixListener::bind(&paths.control).map_err(files_error(&paths.control))?;
        set_mode(&paths.control, 0o600).map_err(files_error(&paths.control))?;
        std::fs::write(&paths.pid, std::process::id().to_string())
            .map_err(files_error(&paths.pid))?;
        let json = serde_json::to_vec_pretty(&config).unwrap_or_default();
        std::fs::write(&paths.config, json).map_err(files_error(&paths.config))?;
        // Checked here, so a watch that cannot start fails `start` with its reason.
        let watcher = (!config.watch.paths.is_empty())
            .then(|| {
                // Every app's state (logs, sockets, pid files) lies in the apps directory.
                let own = paths.dir.parent().unwrap_or(&paths.dir).to_owned();
                crate::triggers::Watcher::new(&config.watch, config.cwd.as_deref(), own)
            })
            .transpose()
            .map_err(MasterError::Invalid)?;

        let slots = (0..config.instances).map(Slot::new).collect();
        let state = State {
            config,
            run_as,
            base_env: None,
            slots,
            next_generation: 1,
            next_ping: 1,
            stopping: false,
            spares: Vec::new(),
            epoch: 0,
            spare_backoff: Backoff::default(),
        };
        let peers_token =
            handoff::new_token().map_err(files_error(std::path::Path::new("/dev/urandom")))?;
        let inner = Inner {
            paths,
            listener,
            peers_token,
            secret: std::sync::OnceLock::new(),
            log,
            pumps: tokio_util::task::TaskTracker::new(),
            started: Instant::now(),
            state: Mutex::new(state),
            changed: watch::channel(0).0,
            finished: watch::channel(false).0,
            service: std::sync::OnceLock::new(),
            gatherings: Mutex::new(std::collections::HashMap::new()),
            next_gathering: std::sync::atomic::AtomicU64::new(1),
        };
        Ok(Master {
            inner: Arc::new(inner),
            control,
            watcher,
        })
    }

    /// Serves workers' requests and relays their messages (the embedded bus and store).
    pub fn set_service(&self, service: Arc<dyn MasterService>) {
        let _ = self.inner.service.set(service);
    }

    /// The key the chat workers sign cookies with (`CHAT_SECRET`, unless the app's own
    /// environment sets one). Set before [`Master::run`].
    pub fn set_secret(&self, secret: String) {
        let _ = self.inner.secret.set(secret);
    }

    /// The app log, for the master's own `tracing` output.
    pub fn log(&self) -> LogSink {
        self.inner.log.clone()
    }

    /// Starts the workers and supervises them until the app is stopped. `on_online` runs once,
    /// when every worker is online for the first time (systemd readiness).
    pub async fn run(self, on_online: impl FnOnce() + Send + 'static) {
        let inner = self.inner;
        let config = inner.lock().config.clone();
        let listen = if config.no_listen {
            "none".to_owned()
        } else {
            config.listen.to_string()
        };
        tracing::info!(app = %config.name, %listen, workers = config.instances, "master started");
        for slot in 0..config.instances {
            inner.clone().start_proc(slot, Role::Current);
        }
        inner.top_up_spares();
        if config.scheduling == Scheduling::Sticky && config.runs_chat() {
            tokio::spawn(inner.clone().dispatch_loop());
        }
        tokio::spawn(inner.clone().health_loop());
        tokio::spawn(inner.clone().signal_loop());
        tokio::spawn(inner.clone().notify_when_online(on_online));
        if let Some(watcher) = self.watcher {
            tokio::spawn(inner.clone().reload_on_change(watcher));
        }
        if let Some(expression) = &config.cron_restart {
            tokio::spawn(inner.clone().reload_on_schedule(expression.clone()));
        }
        let control = self.control;
        let mut finished = inner.finished.subscribe();
        loop {
            tokio::select! {
                accepted = control.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(inner.clone().serve_control(stream));
                    }
                    Err(error) => crate::listen::after_accept_error(&error).await,
                },
                _ = finished.wait_for(|done| *done) => break,
            }
        }
        inner.paths.remove_runtime_files();
        // The workers are gone; what they wrote last is still in their pipes and the log
        // writers' queues: keep it (bounded, as a worker's child may hold a pipe open).
        inner.pumps.close();
        let _ = tokio::time::timeout(LAST_WORDS, inner.pumps.wait()).await;
        tracing::info!("master stopped");
        inner.log.flush(LAST_WORDS);
    }
}

/// One health probe of one process.
struct ProbeTarget {
    slot_id: usize,
    generation: u64,
    /// The ping sequence number its pong must reach.
    seq: u64,
    worker_id: u16,
    /// A program probed on its own port instead (`--health-url`, `--health-tcp`).
    program_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Current,
    Incoming,
    Spare,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough state to keep supervising.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Waits until `condition` holds on the state, or the timeout passes.
    async fn wait_until(&self, timeout: Duration, condition: impl Fn(&State) -> bool) -> bool {
        let mut changed = self.changed.subscribe();
        let wait = async {
            loop {
                if condition(&self.lock()) {
                    return;
                }
                if changed.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok() && condition(&self.lock())
    }

    /// Starts a process for a slot. Failures are recorded on the slot and retried later.
    fn start_proc(self: Arc<Self>, slot_id: usize, role: Role) -> Option<u64> {
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
    fn claim_worker_id(
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
    async fn readiness_deadline(
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

    fn mark_ready(&self, generation: u64, via_ipc: bool) {
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

    /// Talks to one worker over its IPC channel until either side closes it. A worker that
    /// breaks the channel's contract (a line longer than `max_line`, replies it does not read)
    /// is killed and so replaced: nothing it says afterwards is trusted.
    async fn ipc_task(
        self: Arc<Self>,
        slot_id: usize,
        generation: u64,
        stream: std::os::unix::net::UnixStream,
        outbox: Arc<Outbox>,
        max_line: usize,
    ) {
        let Ok(()) = stream.set_nonblocking(true) else {
            return;
        };
        let Ok(stream) = UnixStream::from_std(stream) else {
            return;
        };
        let (read, mut write) = stream.into_split();
        let writer = outbox.write_to(&mut write);
        let reader = async {
            let mut lines = message_lines(read, max_line);
            loop {
                let message = match read_message::<ToMaster, _>(&mut lines).await {
                    Ok(message) => message,
                    Err(ReadEnd::Closed) => return,
                    Err(ReadEnd::Overlong { max }) => {
                        return self.replace_untrusted(
                            slot_id,
                            generation,
                            &format!(
                                "wrote an IPC line longer than {max} bytes (see --ipc-max-line)"
                            ),
                        )
                    }
                };
                match message {
                    ToMaster::Ready => self.mark_ready(generation, true),
                    ToMaster::Pong {
                        seq,
                        connections,
                        dropped,
                    } => {
                        let mut state = self.lock();
                        // A pong for a ping not sent yet would vouch for probes to come.
                        let seq = seq.min(state.next_ping);
                        if let Some(proc) = state.proc_mut(generation) {
                            proc.speaks_ipc = true;
                            proc.last_pong = proc.last_pong.max(seq);
                            proc.connections = connections;
                            proc.reported_drops = dropped;
                            proc.handed = 0;
                        }
                        drop(state);
                        self.bump();
                    }
                    ToMaster::Request { id, body } => {
                        let body = match self.service.get() {
                            Some(service) => service.request(generation, body),
                            None => serde_json::json!({ "error": "this master offers no service" }),
                        };
                        if outbox.control(&ToWorker::Reply { id, body }) == Err(Refused::Full) {
                            return self.replace_untrusted(
                                slot_id,
                                generation,
                                "asked without reading the answers (more than --ipc-queue-size unread)",
                            );
                        }
                    }
                    ToMaster::Tell { body } => {
                        if let Some(service) = self.service.get() {
                            let answer = service.request(generation, body);
                            if answer.get("error").is_some() {
                                if let Some(proc) = self.lock().proc(generation) {
                                    proc.drops.count(
                                        "store_write_failed",
                                        1,
                                        "a worker's store write (e.g. a history entry) failed",
                                    );
                                }
                            }
                        }
                    }
                    ToMaster::Publish { body } => self.relay(generation, &body),
                    ToMaster::Gather { id, body } => {
                        self.clone().gather(generation, id, body, outbox.clone())
                    }
                    ToMaster::Answer { id, body } => self.answer(id, body),
                }
            }
        };
        tokio::select! {
            _ = writer => {}
            _ = reader => {}
        }
        outbox.close();
    }

    /// Kills a process that broke the IPC contract; its slot restarts it as after a crash.
    fn replace_untrusted(&self, slot_id: usize, generation: u64, why: &str) {
        if let Some(pid) = self.kill_tracked(generation) {
            tracing::error!(
                worker = slot_id,
                pid,
                "worker {why}: killed it, a new one replaces it"
            );
        }
    }

    /// SIGKILLs process `generation` of a slot if the master still tracks it, and returns its
    /// pid. Tracked means not reaped yet (the exit task reaps and untracks in one step under
    /// this lock), so the pid cannot name another program by now.
    fn kill_tracked(&self, generation: u64) -> Option<u32> {
        let state = self.lock();
        let pid = state.proc(generation)?.pid;
        signal(pid, libc::SIGKILL);
        Some(pid)
    }

    /// Asks every other live worker `body` on behalf of `from`, and replies to it with their
    /// answers once all have answered or the app's `gather_timeout` has passed.
    fn gather(
        self: Arc<Self>,
        from: u64,
        id: u64,
        body: serde_json::Value,
        requester: Arc<Outbox>,
    ) {
        let (targets, timeout): (Vec<Arc<Outbox>>, Duration) = {
            let mut state = self.lock();
            let timeout = state.config.gather_timeout;
            let targets = state
                .slots
                .iter_mut()
                .flat_map(|slot| slot.procs_mut())
                .filter(|p| p.generation != from && p.speaks_ipc && p.ready)
                .map(|p| p.ipc.clone())
                .collect();
            (targets, timeout)
        };
        let key = self
            .next_gathering
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let query = ToWorker::Query { id: key, body };
        let asked = targets
            .iter()
            .filter(|target| target.control(&query).is_ok())
            .count();
        if asked == 0 {
            let _ = requester.control(&ToWorker::Reply {
                id,
                body: serde_json::json!([]),
            });
            return;
        }
        if let Ok(mut gatherings) = self.gatherings.lock() {
            gatherings.insert(
                key,
                Gathering {
                    requester,
                    id,
                    expected: asked,
                    answers: Vec::new(),
                },
            );
        }
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            self.finish_gathering(key);
        });
    }

    fn answer(&self, key: u64, body: serde_json::Value) {
        let complete = self.gatherings.lock().ok().is_some_and(|mut gatherings| {
            gatherings.get_mut(&key).is_some_and(|g| {
                // More answers than questions asked come from a worker that answers twice.
                if g.answers.len() < g.expected {
                    g.answers.push(body);
                }
                g.answers.len() >= g.expected
            })
        });
        if complete {
            self.finish_gathering(key);
        }
    }

    fn finish_gathering(&self, key: u64) {
        let done = self
            .gatherings
            .lock()
            .ok()
            .and_then(|mut gatherings| gatherings.remove(&key));
        if let Some(g) = done {
            let _ = g.requester.control(&ToWorker::Reply {
                id: g.id,
                body: serde_json::Value::Array(g.answers),
            });
        }
    }

    /// Hands a worker's message to every other live worker that speaks IPC.
    fn relay(&self, from: u64, body: &serde_json::value::RawValue) {
        let line = relay_line(body);
        let mut state = self.lock();
        for slot in state.slots.iter_mut() {
            for proc in slot.procs_mut() {
                if proc.generation != from && proc.speaks_ipc {
                    // Never wait for a slow worker: drop, count, and say so now and then.
                    if proc.ipc.relay(line.clone()) == Err(Refused::Full) {
                        proc.drops.count(
                            "relay_queue_full",
                            1,
                            format_args!(
                                "worker pid {} cannot keep up with the broadcasts of the other \
                                 workers: dropping them",
                                proc.pid
                            ),
                        );
                    }
                }
            }
        }
    }

    /// A process ended: retire it, and restart the slot if it was the current one.
    fn on_proc_exit(self: Arc<Self>, generation: u64, code: Option<i32>, description: String) {
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
    fn on_exit(self: Arc<Self>, slot_id: usize, code: Option<i32>, description: String) {
        self.clone()
            .restart_after_exit(slot_id, code, Duration::ZERO, description);
        self.bump();
    }

    fn restart_after_exit(
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

    /// Probes every worker each interval: IPC ping, HTTP `/healthz` on its private socket, and
    /// its CPU and memory. A worker that misses `max_misses` probes in a row is killed.
    async fn health_loop(self: Arc<Self>) {
        loop {
            let (health, max_memory, runs_chat) = {
                let state = self.lock();
                (
                    state.config.health.clone(),
                    state.config.max_memory,
                    state.config.runs_chat(),
                )
            };
            tokio::time::sleep(health.interval).await;
            let probes_programs = health.url.is_some() || health.tcp;
            let mut probes = Vec::new();
            let mut over_memory = Vec::new();
            {
                let mut state = self.lock();
                if state.stopping {
                    return;
                }
                let seq = state.next_ping;
                state.next_ping += 1;
                for slot in state.slots.iter_mut() {
                    let slot_id = slot.id;
                    let replacing = slot.replacing;
                    for proc in slot.procs_mut() {
                        proc.cpu.sample(proc.pid);
                        proc.memory = rss_bytes(proc.pid).unwrap_or(0);
                    }
                    let Some(proc) = slot.current.as_mut() else {
                        continue;
                    };
                    if max_memory.is_some_and(|max| proc.memory > max) && !replacing {
                        over_memory.push((slot_id, proc.memory));
                    }
                    if proc.ready && proc.speaks_ipc {
                        let _ = proc.ipc.control(&ToWorker::Ping { seq });
                        probes.push(ProbeTarget {
                            slot_id,
                            generation: proc.generation,
                            seq,
                            worker_id: proc.worker_id,
                            program_port: None,
                        });
                    } else if let Some(port) = proc.port.filter(|_| proc.ready && probes_programs) {
                        probes.push(ProbeTarget {
                            slot_id,
                            generation: proc.generation,
                            seq,
                            worker_id: proc.worker_id,
                            program_port: Some(port),
                        });
                    }
                }
            }
            for target in probes {
                tokio::spawn(self.clone().probe(target, health.clone(), runs_chat));
            }
            for (slot_id, memory) in over_memory {
                tracing::warn!(
                    worker = slot_id,
                    memory,
                    "worker above --max-memory: replacing it"
                );
                let inner = self.clone();
                tokio::spawn(async move {
                    if let Err(error) = inner.replace(slot_id, &|_| {}).await {
                        tracing::error!(worker = slot_id, %error, "memory replacement failed");
                    }
                });
            }
        }
    }

    async fn probe(self: Arc<Self>, target: ProbeTarget, health: crate::HealthConfig, http: bool) {
        let ProbeTarget {
            slot_id,
            generation,
            seq,
            worker_id,
            program_port,
        } = target;
        let (timeout, max_misses) = (health.timeout, health.max_misses);
        let program_ok = async {
            let Some(port) = program_port else {
                return true;
            };
            let probe = crate::probe::program_healthy(port, health.url.as_deref());
            matches!(tokio::time::timeout(timeout, probe).await, Ok(Ok(true)))
        };
        let http_ok = async {
            if !http || program_port.is_some() {
                return true;
            }
            matches!(
                tokio::time::timeout(timeout, http_health(&self.peers_token, worker_id)).await,
                Ok(Ok(true))
            )
        };
        let pong_ok = async {
            // A program probed on its port may not speak IPC at all.
            program_port.is_some()
                || self
                    .wait_until(timeout, |state| {
                        state.slots[slot_id]
                            .find(generation)
                            .is_none_or(|p| p.last_pong >= seq)
                    })
                    .await
        };
        let (http_ok, pong_ok, program_ok) = tokio::join!(http_ok, pong_ok, program_ok);
        let http_ok = http_ok && program_ok;
        let kill = {
            let mut state = self.lock();
            let Some(proc) = state.slots[slot_id].find_mut(generation) else {
                return;
            };
            if http_ok && pong_ok {
                proc.misses = 0;
                None
            } else {
                proc.misses += 1;
                (proc.misses >= max_misses).then_some(proc.misses)
            }
        };
        if let Some(misses) = kill {
            if let Some(pid) = self.kill_tracked(generation) {
                tracing::error!(
                    worker = slot_id,
                    pid,
                    misses,
                    "worker missed {misses} health probes (hung?): killed it, a new one replaces it"
                );
            }
        }
    }

    /// Replaces one slot's process without a gap: start the new one, wait until it is ready,
    /// then let the old one drain and exit.
    async fn replace(
        self: &Arc<Self>,
        slot_id: usize,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<(), String> {
        let (ready_timeout, drain_timeout) = {
            let mut state = self.lock();
            let (ready, drain) = (state.config.ready_timeout, state.config.drain_timeout);
            let slot = &mut state.slots[slot_id];
            if slot.retired || slot.replacing {
                return Ok(());
            }
            slot.replacing = true;
            (ready, drain)
        };
        let result = self
            .replace_locked_out(slot_id, ready_timeout, drain_timeout, progress)
            .await;
        self.lock().slots[slot_id].replacing = false;
        result
    }

    async fn replace_locked_out(
        self: &Arc<Self>,
        slot_id: usize,
        ready_timeout: Duration,
        drain_timeout: Duration,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<(), String> {
        let spare = self.take_spare(slot_id);
        let Some(generation) = spare.or_else(|| self.clone().start_proc(slot_id, Role::Incoming))
        else {
            return Err(format!("worker {slot_id}: the new process could not start"));
        };
        let settled = self
            .wait_until(ready_timeout + Duration::from_secs(1), |state| {
                state.slots[slot_id]
                    .incoming
                    .as_ref()
                    .is_none_or(|p| p.generation != generation || p.ready)
            })
            .await;
        let (old, new_pid) = {
            let mut state = self.lock();
            let slot = &mut state.slots[slot_id];
            let ready = slot
                .incoming
                .as_ref()
                .is_some_and(|p| p.generation == generation && p.ready);
            if !settled || !ready {
                if let Some(incoming) = slot.incoming.take() {
                    signal(incoming.pid, libc::SIGKILL);
                }
                let reason = slot
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "it did not become ready".into());
                return Err(format!("worker {slot_id}: the new process failed ({reason}); the old one keeps serving"));
            }
            let new = slot.incoming.take();
            let new_pid = new.as_ref().map_or(0, |p| p.pid);
            let old = std::mem::replace(&mut slot.current, new);
            slot.status = Status::Online;
            slot.backoff = Backoff::default();
            let old_info = old.as_ref().map(|p| (p.pid, p.generation));
            if let Some(old) = old {
                drain(&old, drain_timeout);
                slot.draining.push(old);
            }
            (old_info, new_pid)
        };
        self.bump();
        let Some((old_pid, old_generation)) = old else {
            progress(format!("worker {slot_id}: pid {new_pid} online"));
            return Ok(());
        };
        progress(format!(
            "worker {slot_id}: pid {new_pid} online, pid {old_pid} draining"
        ));
        self.reap(slot_id, old_generation, old_pid, drain_timeout)
            .await;
        Ok(())
    }

    /// Waits for a draining process to exit; kills it when its time is up.
    async fn reap(&self, slot_id: usize, generation: u64, pid: u32, timeout: Duration) {
        let gone = |state: &State| state.slots[slot_id].find(generation).is_none();
        if !self
            .wait_until(timeout + Duration::from_millis(500), gone)
            .await
        {
            if self.kill_tracked(generation).is_some() {
                tracing::warn!(
                    worker = slot_id,
                    pid,
                    "worker did not finish draining in {timeout:?}: killed it"
                );
            }
            self.wait_until(Duration::from_secs(5), gone).await;
        }
    }

    /// Reloads every worker, one at a time.
    async fn reload(
        self: &Arc<Self>,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<String, String> {
        let slots: Vec<usize> = self
            .lock()
            .slots
            .iter()
            .filter(|s| !s.retired)
            .map(|s| s.id)
            .collect();
        // Under systemd: `reloading` until every worker is replaced (sd_notify(3)).
        crate::client::sd_notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            crate::client::monotonic_usec()
        ));
        // Spares of the old settings go; new ones start now and take the slots' places.
        self.renew_spares();
        let mut result = Ok(());
        for slot_id in &slots {
            result = self.replace(*slot_id, progress).await;
            if result.is_err() {
                break;
            }
        }
        crate::client::sd_notify("READY=1");
        result?;
        Ok(format!("reloaded {} workers", slots.len()))
    }

    /// Restarts every worker: each is stopped, then started again (not zero-downtime; see reload).
    async fn restart(
        self: &Arc<Self>,
        progress: &(dyn Fn(String) + Sync),
    ) -> Result<String, String> {
        let (slots, stop_timeout) = {
            let state = self.lock();
            (
                state
                    .slots
                    .iter()
                    .filter(|s| !s.retired)
                    .map(|s| s.id)
                    .collect::<Vec<_>>(),
                state.config.stop_timeout,
            )
        };
        for slot_id in &slots {
            let old = {
                let mut state = self.lock();
                let slot = &mut state.slots[*slot_id];
                slot.status = Status::Stopping;
                slot.current.as_ref().map(|p| {
                    drain(p, stop_timeout);
                    (p.pid, p.generation)
                })
            };
            if let Some((pid, generation)) = old {
                self.reap(*slot_id, generation, pid, stop_timeout).await;
            }
            {
                let mut state = self.lock();
                let slot = &mut state.slots[*slot_id];
                slot.status = Status::Launching;
                slot.backoff = Backoff::default();
                slot.restarts += 1;
            }
            let generation = self.clone().start_proc(*slot_id, Role::Current);
            let ready_timeout = self.lock().config.ready_timeout;
            let online = |state: &State| {
                state.slots[*slot_id]
                    .current
                    .as_ref()
                    .is_some_and(|p| p.ready && Some(p.generation) == generation)
            };
            if self.wait_until(ready_timeout, online).await {
                progress(format!("worker {slot_id}: restarted"));
            } else {
                progress(format!("worker {slot_id}: restarted but not online yet"));
            }
        }
        Ok(format!("restarted {} workers", slots.len()))
    }

    /// Changes the number of workers.
    async fn scale(self: &Arc<Self>, instances: usize) -> Result<String, String> {
        if instances == 0 || instances > 1024 {
            return Err(format!(
                "instances must be between 1 and 1024, not {instances}"
            ));
        }
        let (to_start, to_stop, stop_timeout) = {
            let mut state = self.lock();
            state.config.instances = instances;
            let stop_timeout = state.config.stop_timeout;
            while state.slots.len() < instances {
                let id = state.slots.len();
                state.slots.push(Slot::new(id));
                state.slots[id].retired = true;
            }
            let mut to_start = Vec::new();
            let mut to_stop = Vec::new();
            for slot in state.slots.iter_mut() {
                if slot.id < instances && slot.retired {
                    slot.retired = false;
                    slot.status = Status::Launching;
                    if slot.current.is_none() {
                        to_start.push(slot.id);
                    }
                } else if slot.id >= instances && !slot.retired {
                    slot.retired = true;
                    slot.status = Status::Stopping;
                    let id = slot.id;
                    for proc in slot.procs_mut() {
                        drain(proc, stop_timeout);
                        to_stop.push((id, proc.generation, proc.pid));
                    }
                }
            }
            (to_start, to_stop, stop_timeout)
        };
        for slot_id in to_start {
            self.clone().start_proc(slot_id, Role::Current);
        }
        for (slot_id, generation, pid) in to_stop {
            self.reap(slot_id, generation, pid, stop_timeout).await;
        }
        self.bump();
        Ok(format!("scaled to {instances} workers"))
    }

    /// `chatctl signal`: sends `signal` to the current process of every worker, or of one.
    fn send_signal(
        &self,
        signal_name: SignalName,
        worker: Option<usize>,
    ) -> Result<String, String> {
        let state = self.lock();
        let live = |slot: &&Slot| !slot.retired;
        if let Some(id) = worker {
            if !state.slots.iter().filter(live).any(|slot| slot.id == id) {
                return Err(format!(
                    "there is no worker {id}: see `chatctl status {}`",
                    state.config.name
                ));
            }
        }
        let mut pids = Vec::new();
        for slot in state.slots.iter().filter(live) {
            if worker.is_none_or(|id| id == slot.id) {
                if let Some(proc) = &slot.current {
                    signal(proc.pid, signal_name.number());
                    pids.push(proc.pid.to_string());
                }
            }
        }
        if pids.is_empty() {
            return Err("no worker process is running to signal".into());
        }
        tracing::info!(pids = %pids.join(" "), "sent {signal_name} on request");
        Ok(format!("sent {signal_name} to pid {}", pids.join(", ")))
    }

    /// Stops every worker: drain (or the kill signal), then SIGKILL after the stop timeout.
    async fn stop(self: &Arc<Self>) {
        let (workers, timeout) = {
            let mut state = self.lock();
            state.stopping = true;
            let timeout = state.config.stop_timeout;
            let mut workers = 0;
            for slot in state.slots.iter_mut() {
                slot.status = Status::Stopping;
            }
            for proc in state.procs_mut() {
                drain(proc, timeout);
                workers += 1;
            }
            (workers, timeout)
        };
        tracing::info!(workers, "stopping");
        let all_gone = |state: &State| {
            state.spares.is_empty()
                && state
                    .slots
                    .iter()
                    .all(|s| s.current.is_none() && s.incoming.is_none() && s.draining.is_empty())
        };
        if !self.wait_until(timeout, all_gone).await {
            // Only those still tracked: the pid of one that exited meanwhile may name another
            // program by now.
            for proc in self.lock().procs_mut() {
                signal(proc.pid, libc::SIGKILL);
            }
            self.wait_until(Duration::from_secs(5), all_gone).await;
        }
        for slot in self.lock().slots.iter_mut() {
            slot.status = Status::Stopped;
        }
        self.bump();
    }

    /// Sticky scheduling: accepts every connection and hands it to a worker.
    async fn dispatch_loop(self: Arc<Self>) {
        let Some(listener) = &self.listener else {
            return;
        };
        let listener = match listener.try_clone().and_then(|listener| {
            listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(listener)
        }) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "cannot accept connections: stopping");
                self.clone().stop().await;
                let _ = self.finished.send(true);
                return;
            }
        };
        let peeking = Arc::new(tokio::sync::Semaphore::new(MAX_PEEKING));
        loop {
            let Ok(permit) = peeking.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    crate::listen::after_accept_error(&error).await;
                    continue;
                }
            };
            let inner = self.clone();
            tokio::spawn(async move {
                inner.dispatch(stream).await;
                drop(permit);
            });
        }
    }

    /// Reads the request line of one connection without consuming it and hands the
    /// connection to the worker owning its session, or to the least-loaded one.
    async fn dispatch(&self, stream: tokio::net::TcpStream) {
        let timeout = self.lock().config.peek_timeout;
        let owner = match dispatch::peek(&stream, timeout).await {
            Peeked::Request(owner) => owner,
            Peeked::Invalid => return dispatch::refuse(stream, dispatch::BAD_REQUEST).await,
            Peeked::Gone => return,
        };
        // A worker that just died fails the hand-off, and one that does not take its
        // connections (stopped, hung) has a full socket: the next pick is another one.
        let mut skipped = Vec::new();
        let mut full = None;
        while let Some((worker_id, worker)) = self.route(owner, &skipped) {
            match worker.try_send(stream.as_raw_fd()) {
                Ok(()) => return,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    full.get_or_insert(worker);
                }
                Err(_) => {}
            }
            skipped.push(worker_id);
        }
        // Every worker is full: wait a little for the preferred one, never for ever.
        if let Some(worker) = full {
            let timeout = self.lock().config.handoff_timeout;
            let sent = tokio::time::timeout(timeout, worker.send(stream.as_raw_fd())).await;
            if matches!(sent, Ok(Ok(()))) {
                return;
            }
        }
        dispatch::refuse(stream, dispatch::UNAVAILABLE).await;
    }

    /// The online worker owning `owner`'s sessions, or else the online worker with the
    /// fewest connections (as last reported, plus those handed to it since).
    /// Workers in `skipped` are left out.
    fn route(&self, owner: Option<Owner>, skipped: &[u16]) -> Option<(u16, Arc<handoff::Sender>)> {
        let mut state = self.lock();
        let node = state.config.node_id;
        let wanted = owner
            .filter(|owner| owner.node == node)
            .map(|owner| owner.slot);
        // The owner first (`false` sorts before `true`), then the least loaded.
        let chosen = state
            .slots
            .iter_mut()
            .filter(|slot| slot.status == Status::Online)
            .filter_map(|slot| slot.current.as_mut())
            .filter(|proc| proc.ready && proc.handoff.is_some())
            .filter(|proc| !skipped.contains(&proc.worker_id))
            .min_by_key(|proc| {
                (
                    Some(proc.worker_id) != wanted,
                    proc.connections.saturating_add(proc.handed),
                )
            })?;
        chosen.handed += 1;
        Some((chosen.worker_id, chosen.handoff.clone()?))
    }

    fn status(&self) -> AppStatus {
        let state = self.lock();
        let workers = state
            .slots
            .iter()
            .filter(|slot| !slot.retired)
            .map(|slot| {
                let proc = slot.current.as_ref();
                WorkerStatus {
                    id: slot.id,
                    pid: proc.map(|p| p.pid),
                    status: slot.status.as_str().to_owned(),
                    uptime_ms: proc.map_or(0, |p| p.started.elapsed().as_millis() as u64),
                    restarts: slot.restarts,
                    cpu_percent: proc.map_or(0.0, |p| p.cpu.percent),
                    memory_bytes: proc.map_or(0, |p| {
                        if p.memory > 0 {
                            p.memory
                        } else {
                            rss_bytes(p.pid).unwrap_or(0)
                        }
                    }),
                    connections: proc.map_or(0, |p| p.connections),
                    sid_tag: proc.map(|p| {
                        route_tag::encode(Owner {
                            node: state.config.node_id,
                            slot: p.worker_id,
                        })
                    }),
                    last_error: slot.last_error.clone(),
                    dropped: proc.map(dropped_by).unwrap_or_default(),
                }
            })
            .collect();
        AppStatus {
            name: state.config.name.clone(),
            master_pid: std::process::id(),
            listen: match &self.listener {
                Some(listener) => listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                None => "none".into(),
            },
            scheduling: if state.config.runs_chat() {
                state.config.scheduling.to_string()
            } else {
                Scheduling::Shared.to_string()
            },
            uptime_ms: self.started.elapsed().as_millis() as u64,
            workers,
            spares: state
                .spares
                .iter()
                .filter(|p| p.epoch == state.epoch)
                .map(|p| SpareStatus {
                    pid: p.pid,
                    ready: p.ready,
                    uptime_ms: p.started.elapsed().as_millis() as u64,
                })
                .collect(),
        }
    }

    async fn serve_control(self: Arc<Self>, stream: UnixStream) {
        let (read, write) = stream.into_split();
        let write = Arc::new(tokio::sync::Mutex::new(write));
        // Requests are a few words; the socket is the owner's alone, but a bound costs nothing.
        // A reload carries the app's settings and maybe the caller's environment.
        let mut lines = message_lines(read, 1 << 20);
        let Ok(request) = read_message::<Request, _>(&mut lines).await else {
            return;
        };
        let (progress_tx, mut progress_rx) = mpsc::unbounded_channel::<String>();
        let forward = {
            let write = write.clone();
            tokio::spawn(async move {
                while let Some(line) = progress_rx.recv().await {
                    let mut write = write.lock().await;
                    let _ = write_message(&mut *write, &Response::Progress { line }).await;
                }
            })
        };
        let progress = move |line: String| {
            tracing::info!("{line}");
            let _ = progress_tx.send(line);
        };
        let answer = match request {
            Request::Status => Response::Status(self.status()),
            Request::Reload { config, env } => {
                let update = update::Update {
                    config: config.map(|config| *config),
                    env,
                };
                done(self.reload_with(update, &progress).await)
            }
            Request::Restart => done(self.restart(&progress).await),
            Request::Scale { instances } => done(self.scale(instances).await),
            Request::Signal { signal, worker } => done(self.send_signal(signal, worker)),
            Request::Stop => {
                self.stop().await;
                Response::Done {
                    message: "stopped".into(),
                }
            }
        };
        drop(progress);
        let _ = forward.await;
        let stop = matches!(answer, Response::Done { ref message } if message == "stopped");
        {
            let mut write = write.lock().await;
            let _ = write_message(&mut *write, &answer).await;
            let _ = write.flush().await;
        }
        if stop {
            self.finished.send_replace(true);
        }
    }

    /// SIGTERM / SIGINT stop the app, SIGHUP reloads it, SIGUSR1 reopens the log file.
    async fn signal_loop(self: Arc<Self>) {
        use tokio::signal::unix::{signal as unix_signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr1)) = (
            unix_signal(SignalKind::terminate()),
            unix_signal(SignalKind::interrupt()),
            unix_signal(SignalKind::hangup()),
            unix_signal(SignalKind::user_defined1()),
        ) else {
            tracing::error!("cannot install signal handlers; use `chatctl stop`");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    let inner = self.clone();
                    tokio::spawn(async move {
                        if let Err(error) = inner.reload(&|line| tracing::info!("{line}")).await {
                            tracing::error!(%error, "reload failed");
                        }
                    });
                }
                _ = usr1.recv() => {
                    self.log.reopen();
                    tracing::info!("log file reopened");
                }
            }
        }
        self.stop().await;
        self.finished.send_replace(true);
    }

    async fn notify_when_online(self: Arc<Self>, on_online: impl FnOnce()) {
        let all_online = |state: &State| {
            state
                .slots
                .iter()
                .filter(|s| !s.retired)
                .all(|s| s.status == Status::Online)
        };
        if self
            .wait_until(Duration::from_secs(24 * 3600), all_online)
            .await
        {
            on_online();
        }
    }
}

/// Every message lost to or by a worker process, by cause: what the master dropped on its
/// behalf and what it reported dropping itself.
fn dropped_by(proc: &Proc) -> BTreeMap<String, u64> {
    let mut dropped = proc.drops.snapshot();
    crate::drops::merge(&mut dropped, &proc.reported_drops);
    dropped
}

fn done(result: Result<String, String>) -> Response {
    match result {
        Ok(message) => Response::Done { message },
        Err(message) => Response::Error { message },
    }
}

/// Asks a process to finish: over IPC when it speaks it, else its kill signal. It gets no new
/// connections from then on; those already handed over are its to answer.
fn drain(proc: &Proc, timeout: Duration) {
    if let Some(handoff) = &proc.handoff {
        handoff.close();
    }
    let request = ToWorker::Drain {
        timeout_ms: timeout.as_millis() as u64,
    };
    let sent = proc.speaks_ipc && proc.ipc.control(&request).is_ok();
    if !sent {
        signal(proc.pid, proc.kill_signal.number());
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "exited".into(),
    }
}

/// `GET /healthz` over a worker's private socket.
async fn http_health(token: &str, worker_id: u16) -> std::io::Result<bool> {
    let mut stream = handoff::connect_private(token, worker_id, std::process::id()).await?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n")
        .await?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    Ok(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
}

/// The account workers run as: `user` (never root), or, when the master runs as root and no
/// user is given, [`default_user`], as nginx runs its workers as `nobody`.
fn workers_account(user: Option<&str>) -> Result<Option<RunAs>, MasterError> {
    match (user, running_as_root()) {
        (Some(user), true) => {
            let account = lookup_user(user)?;
            if account.uid == 0 {
                return Err(MasterError::RootUser);
            }
            Ok(Some(account))
        }
        (None, true) => {
            let user = default_user();
            match lookup_user(&user) {
                Ok(account) if account.uid != 0 => Ok(Some(account)),
                Ok(_) => Err(MasterError::RootUser),
                Err(_) => Err(MasterError::NoDefaultUser(user)),
            }
        }
        (Some(_), false) => Err(MasterError::UserWithoutRoot),
        (None, false) => Ok(None),
    }
}

/// Whether this process runs as root, where workers get an unprivileged account.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The account workers of a root master run as when no `--user` is given: `CHATCTL_USER`, else
/// `nobody`.
pub fn default_user() -> String {
    std::env::var("CHATCTL_USER")
        .ok()
        .filter(|user| !user.is_empty())
        .unwrap_or_else(|| "nobody".to_owned())
}

fn set_mode(path: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

//! The master: owns the listening socket and the control socket, starts one worker per slot,
//! restarts crashed ones with backoff, replaces hung ones, reloads them one at a time without
//! dropping a request, and stops them all. Under sticky scheduling it also accepts the
//! connections and hands each to the worker owning its session (it peeks at the request line
//! but never reads or copies application bytes).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::config::{AppConfig, Scheduling};
use crate::handoff;
use crate::ipc::ToWorker;
use crate::logs::LogSink;
use crate::outbox::Outbox;
use crate::paths::AppPaths;
use crate::spawn::{lookup_user, signal, RunAs};

/// New connections whose request line the master may wait for at once (sticky scheduling);
/// beyond this, accepting waits and further clients queue in the kernel's backlog.
const MAX_PEEKING: usize = 4096;

mod admin;
mod auto;
mod bridge;
mod control;
mod health;
mod hooks;
mod lifecycle;
mod ops;
mod relay;
mod routing;
mod signals;
mod spare;
mod state;
mod update;
mod upgrade;

use state::{Proc, Role, State};

/// A worker's message a [`MasterService`] numbered, and who gets it: its sender unless it
/// had it already (it delivered its own event first), the other workers unless it is not for
/// them (it was for the sender's sockets alone).
pub struct Numbered {
    pub line: Box<serde_json::value::RawValue>,
    pub to_sender: bool,
    pub to_others: bool,
}

/// What the master offers its workers beyond supervision: the embedded store of an app that
/// runs without Redis. The master itself stays ignorant of what the requests mean.
pub trait MasterService: Send + Sync + 'static {
    /// Answers a worker's request. `worker` identifies the process for as long as it lives.
    fn request(&self, worker: u64, body: serde_json::Value) -> serde_json::Value;
    /// Serves a worker's request that needs no answer (see [`crate::ipc::ToMaster::Tell`]);
    /// says why it failed.
    fn tell(&self, worker: u64, body: &serde_json::value::RawValue) -> Result<(), String> {
        tell_by_request(self, worker, body)
    }
    /// A worker process ended: forget what it owned (its users' presence). Returns messages
    /// for the remaining workers (telling their clients who left).
    fn worker_gone(&self, worker: u64) -> Vec<Box<serde_json::value::RawValue>>;
    /// Numbers a worker's message (see [`crate::ipc::ToMaster::Sequence`]): the line the
    /// workers then get, in the order of the calls. `None` drops it.
    fn sequence(&self, _worker: u64, _body: &serde_json::value::RawValue) -> Option<Numbered> {
        None
    }
    /// What the service keeps, for `chatctl status` (see [`crate::control::AppStatus`]).
    fn status(&self) -> Option<serde_json::Value> {
        None
    }
    /// What a new master's service should carry on with after an upgrade (see
    /// [`crate::upgrade`]): called once the old master no longer accepts connections.
    fn hand_over(&self) -> Option<serde_json::Value> {
        None
    }
    /// Takes what the old master's service handed over; says what it took, or why it
    /// refuses it (a malformed hand-over: the upgrade is then given up).
    fn take_over(&self, _state: serde_json::Value) -> Result<String, String> {
        Ok(String::new())
    }
}

/// Serves a [`MasterService::tell`] as a request whose answer only says whether it failed.
pub fn tell_by_request<S: MasterService + ?Sized>(
    service: &S,
    worker: u64,
    body: &serde_json::value::RawValue,
) -> Result<(), String> {
    let body = serde_json::from_str(body.get()).map_err(|error| error.to_string())?;
    match service.request(worker, body).get("error") {
        Some(error) => Err(error.to_string()),
        None => Ok(()),
    }
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
    /// Runs the app's `--on-event` command, bounded in rate and time.
    hooks: crate::hooks::Hooks,
    started: Instant,
    state: Mutex<State>,
    /// Bumped on every change of worker state; waiters re-check their condition.
    changed: watch::Sender<u64>,
    service: std::sync::OnceLock<Arc<dyn MasterService>>,
    /// Questions a worker asked the others, while their answers come in.
    gatherings: Mutex<std::collections::HashMap<u64, Gathering>>,
    next_gathering: std::sync::atomic::AtomicU64,
    /// Restarts by cause, durations and recent events, for the admin address.
    observer: admin::Observer,
    /// The file this master was started from: what `chatctl upgrade` runs without
    /// `--binary`.
    binary: Option<std::path::PathBuf>,
    /// The build this master runs (see [`crate::version`]), for `chatctl list`.
    version: String,
    /// Whether the master accepts connections (sticky scheduling): false once it handed the
    /// listening socket to a new master, and in a new master until it took over.
    accepting: watch::Sender<bool>,
    /// Whose `control.sock` and `master.pid` are, for the master to remove what is its own
    /// when it exits.
    files: Mutex<Files>,
    /// Set while an upgrade is under way (and in a new master until it took over): one at
    /// a time.
    upgrading: std::sync::atomic::AtomicBool,
    /// The new master's workers, once it took the app over: this master's workers hand their
    /// sessions to them as they stop.
    successor_workers: Mutex<Vec<crate::adoption::Adopter>>,
    /// The connections accepted and not yet handed to a worker (sticky scheduling): an old
    /// master that stopped accepting finishes them before its workers drain.
    dispatching: tokio_util::task::TaskTracker,
    /// A copy of the admin address's socket, for a new master to inherit.
    admin_listener: std::sync::OnceLock<std::net::TcpListener>,
    /// An old master's, once it handed the app over: the queue to the new master, where its
    /// workers' messages for the service go (see [`bridge`]).
    bridge: std::sync::RwLock<Option<Arc<Outbox>>>,
    /// A new master's, once it took over: the queue to the old master's workers, for the
    /// events and broadcasts they are to get.
    old_workers: std::sync::OnceLock<Arc<Outbox>>,
    /// What either master could not send over the bridge.
    bridge_drops: crate::drops::Drops,
    /// A new master's, from take-over until the old master exited: the next upgrade waits
    /// for it (one bridge at a time).
    predecessor_draining: watch::Sender<bool>,
}

/// One worker's question to all the others (e.g. which sockets are in a room).
struct Gathering {
    requester: Requester,
    /// The requester's id for the reply.
    id: u64,
    /// How many are asked: each worker, and the other master during an upgrade.
    expected: usize,
    responded: usize,
    answers: Vec<serde_json::Value>,
}

/// Who asked a question of every worker, and gets their answers.
enum Requester {
    /// One of this master's workers.
    Worker(Arc<Outbox>),
    /// The other master during an upgrade (see [`bridge`]), for its own workers: the new
    /// master when this one handed the app over, the old one when this one took it.
    NewMaster(Arc<Outbox>),
    OldMaster(Arc<Outbox>),
}

/// A master ready to run: checks done, socket bound, log open.
pub struct Master {
    inner: Arc<Inner>,
    control: UnixListener,
    /// `--watch`: started in `prepare`, so a path that cannot be watched fails `start`.
    watcher: Option<crate::triggers::Watcher>,
    /// `--admin`: bound in `prepare`, so a taken port or a bad token file fails `start`.
    admin: Option<(std::net::TcpListener, admin::Access)>,
    /// The channel to the old master this one succeeds (`chatctl upgrade`).
    predecessor: Option<std::os::unix::net::UnixStream>,
}

impl Master {
    /// Does everything that can fail before workers start, so `start` can report it at once.
    pub async fn prepare(config: AppConfig, paths: AppPaths) -> Result<Master, MasterError> {
        Self::prepare_with(config, paths, crate::upgrade::Inheritance::default()).await
    }

    /// [`Master::prepare`] with what this process inherited: a listening socket from systemd
    /// (used instead of binding `--listen`), or everything an old master hands its successor.
    /// A successor that cannot start tells the old master why.
    pub async fn prepare_with(
        config: AppConfig,
        paths: AppPaths,
        mut inherited: crate::upgrade::Inheritance,
    ) -> Result<Master, MasterError> {
        let channel = inherited.channel.take();
        let report = channel.as_ref().and_then(|c| c.try_clone().ok());
        let prepared = Self::prepare_inherited(config, paths, inherited, channel).await;
        if let (Err(error), Some(mut report)) = (&prepared, report) {
            crate::upgrade::report_failure(&mut report, &error.to_string());
        }
        prepared
    }

    async fn prepare_inherited(
        config: AppConfig,
        paths: AppPaths,
        inherited: crate::upgrade::Inheritance,
        predecessor: Option<std::os::unix::net::UnixStream>,
    ) -> Result<Master, MasterError> {
        paths.create().map_err(files_error(&paths.dir))?;
        let control_path = if predecessor.is_some() {
            // The old master answers on `control.sock` until this one takes over.
            let _ = std::fs::remove_file(&paths.control_next);
            paths.control_next.clone()
        } else {
            if crate::control::is_alive(&paths.control).await {
                return Err(MasterError::AlreadyRunning(config.name.clone()));
            }
            // A master that was killed leaves its socket and pid file behind: clear them.
            paths.remove_runtime_files();
            paths.create().map_err(files_error(&paths.dir))?;
            paths.control.clone()
        };

        let run_as = workers_account(config.user.as_deref())?;
        let listener = match (config.no_listen, inherited.listener) {
            (true, _) => None,
            // systemd's socket (or the old master's): the address is the socket unit's.
            (false, Some(inherited)) => Some(inherited),
            (false, None) => {
                let bound = sticky::listen::bind(config.listen)
                    .map_err(|e| MasterError::Bind(config.listen.to_string(), e))?;
                Some(bound)
            }
        };
        let log = LogSink::open_app(&paths, &config).map_err(files_error(&paths.logs))?;
        let admin = match config.admin.listen {
            Some(address) => {
                let default_token = paths.dir.join("admin-token");
                let token = admin::load_token(config.admin.token_file.as_deref(), &default_token)
                    .map_err(MasterError::Invalid)?;
                let listener = match inherited.admin {
                    Some(listener) => listener,
                    None => std::net::TcpListener::bind(address)
                        .map_err(|e| MasterError::Bind(address.to_string(), e))?,
                };
                let bound = listener.local_addr().unwrap_or(address);
                Some((listener, admin::Access::new(token, bound)))
            }
            None => None,
        };
        let control = UnixListener::bind(&control_path).map_err(files_error(&control_path))?;
        set_mode(&control_path, 0o600).map_err(files_error(&control_path))?;
        if predecessor.is_none() {
            std::fs::write(&paths.pid, std::process::id().to_string())
                .map_err(files_error(&paths.pid))?;
        }
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

        let observer = admin::Observer::new(&config.name, paths.log_file.clone(), log.clone());
        let drop_log_interval = config.drop_log_interval;
        let mut state = State::new(config, run_as);
        if let Some(first) = inherited.first_generation {
            state.next_generation = first.max(1);
        }
        state.base_env = inherited.workers_env.map_err(MasterError::Invalid)?;
        let peers_token =
            handoff::new_token().map_err(files_error(std::path::Path::new("/dev/urandom")))?;
        let inner = Inner {
            paths,
            listener,
            peers_token,
            secret: std::sync::OnceLock::new(),
            hooks: crate::hooks::Hooks::new(log.clone()),
            log,
            pumps: tokio_util::task::TaskTracker::new(),
            started: Instant::now(),
            state: Mutex::new(state),
            changed: watch::channel(0).0,
            service: std::sync::OnceLock::new(),
            gatherings: Mutex::new(std::collections::HashMap::new()),
            next_gathering: std::sync::atomic::AtomicU64::new(1),
            observer,
            binary: crate::upgrade::started_from(),
            version: crate::version::of_this_process(),
            accepting: watch::channel(predecessor.is_none()).0,
            files: Mutex::new(if predecessor.is_some() {
                Files::Pending
            } else {
                Files::Owned
            }),
            upgrading: std::sync::atomic::AtomicBool::new(predecessor.is_some()),
            successor_workers: Mutex::new(Vec::new()),
            admin_listener: std::sync::OnceLock::new(),
            dispatching: tokio_util::task::TaskTracker::new(),
            bridge: std::sync::RwLock::new(None),
            old_workers: std::sync::OnceLock::new(),
            bridge_drops: crate::drops::Drops::new(drop_log_interval),
            predecessor_draining: watch::channel(false).0,
        };
        Ok(Master {
            inner: Arc::new(inner),
            control,
            watcher,
            admin,
            predecessor,
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
        // The socket's own address: an inherited one (systemd, an old master) is not
        // necessarily `--listen`.
        let listen = match &inner.listener {
            Some(listener) => listener
                .local_addr()
                .map_or_else(|_| config.listen.to_string(), |a| a.to_string()),
            None => "none".to_owned(),
        };
        tracing::info!(app = %config.name, %listen, workers = config.instances, "master started");
        for slot in 0..config.instances {
            inner.clone().start_proc(slot, Role::Current);
        }
        inner.top_up_spares();
        if config.scheduling == Scheduling::Sticky && config.capabilities().takes_handoff {
            tokio::spawn(inner.clone().dispatch_loop());
        }
        tokio::spawn(inner.clone().health_loop());
        tokio::spawn(inner.clone().signal_loop());
        tokio::spawn(inner.clone().notify_when_online(on_online));
        if let Some((listener, access)) = self.admin {
            let address = listener
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            tracing::info!(%address, "admin address: metrics at /metrics, dashboard at /");
            if let Ok(copy) = listener.try_clone() {
                let _ = inner.admin_listener.set(copy);
            }
            tokio::spawn(inner.clone().serve_admin(listener, access));
        }
        if let Some(watcher) = self.watcher {
            tokio::spawn(inner.clone().reload_on_change(watcher));
        }
        if let Some(expression) = &config.cron_restart {
            tokio::spawn(inner.clone().reload_on_schedule(expression.clone()));
        }
        if let Some(channel) = self.predecessor {
            tokio::spawn(inner.clone().succeed(channel));
        }
        let control = self.control;
        loop {
            tokio::select! {
                accepted = control.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(inner.clone().serve_control(stream));
                    }
                    Err(error) => sticky::listen::after_accept_error(&error).await,
                },
                () = inner.finished() => break,
            }
        }
        match inner.files() {
            Files::Owned => inner.paths.remove_runtime_files(),
            // A successor that never took over: the old master's files stay its own.
            Files::Pending => {
                let _ = std::fs::remove_file(&inner.paths.control_next);
            }
            Files::HandedOver => {}
        }
        inner.hooks.kill_all();
        // The workers are gone; what they wrote last is still in their pipes and the log
        // writers' queues: keep it (bounded, as a worker's child may hold a pipe open).
        inner.pumps.close();
        let _ = tokio::time::timeout(LAST_WORDS, inner.pumps.wait()).await;
        tracing::info!("master stopped");
        inner.log.flush(LAST_WORDS);
    }
}

/// Whose the app's `control.sock` and `master.pid` are (see [`crate::upgrade`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Files {
    /// This master's: it removes them when it exits.
    Owned,
    /// A new master's before it takes over: they are still the old master's, and only
    /// `control.sock.next` is its own.
    Pending,
    /// An old master's once a new one took over: they are the new master's.
    HandedOver,
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

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough state to keep supervising.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn files(&self) -> Files {
        *self
            .files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_files(&self, files: Files) {
        *self
            .files
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = files;
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
}

/// Asks a process to finish: over IPC when it speaks it, else its kill signal. It gets no new
/// connections from then on; those already handed over are its to answer.
fn drain(proc: &Proc, timeout: Duration, hand_off_to: Option<crate::adoption::Adopter>) {
    // One handing its sessions off still gets the connections for them until it is done
    // (see `Proc::handing_off`).
    if let (Some(handoff), false) = (&proc.handoff, proc.handing_off) {
        handoff.close();
    }
    let request = ToWorker::Drain {
        timeout_ms: timeout.as_millis() as u64,
        hand_off_to,
    };
    let sent = proc.speaks_ipc && proc.ipc.control(&request).is_ok();
    if !sent {
        signal(proc.pid, proc.kill_signal);
    }
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
    nix::unistd::geteuid().is_root()
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

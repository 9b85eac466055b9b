//! An app's settings: what to run, how many, and every timer of supervision, with defaults as
//! in DESIGN §8. The same struct comes from flags or from a TOML file, and is handed to the
//! daemonized master as JSON.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::drops::DEFAULT_DROP_LOG_INTERVAL;
use crate::program::{Capabilities, Program};
pub use crate::triggers::WatchConfig;

/// The default of `ipc_max_line`: a broadcast of a whole `max_payload` (1 MB) of text that is
/// escaped twice in JSON stays below it.
pub const DEFAULT_MAX_LINE: usize = 16 << 20;

/// How connections reach workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Scheduling {
    /// The master accepts, reads the session id from the request line without consuming it
    /// (MSG_PEEK) and hands the connection to the worker that owns the session, or to the
    /// least-loaded worker for a new one: long-polling works across workers. Applies to the
    /// chat app; other programs get the shared socket.
    #[default]
    Sticky,
    /// Every worker accepts on the inherited socket; the kernel spreads connections.
    Shared,
}

impl std::str::FromStr for Scheduling {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "sticky" => Ok(Scheduling::Sticky),
            "shared" => Ok(Scheduling::Shared),
            other => Err(format!(
                "unknown scheduling {other:?}: use sticky or shared"
            )),
        }
    }
}

impl std::fmt::Display for Scheduling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scheduling::Sticky => "sticky",
            Scheduling::Shared => "shared",
        })
    }
}

/// One app under a master.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// Name of the app; its state lives in `$CHATCTL_HOME/apps/<name>`.
    pub name: String,
    /// Address the master binds and shares with the workers.
    pub listen: SocketAddr,
    /// The program serves no port (a queue worker, a scheduler): the master binds nothing,
    /// and the workers get no socket and no `LISTEN_FDS`. `listen` is then unused.
    pub no_listen: bool,
    /// Number of workers.
    pub instances: usize,
    pub scheduling: Scheduling,
    /// This master's node id (0 to 4095), written into every session id its workers open, so a
    /// proxy in front of several masters (`chatctl proxy`) routes by it.
    pub node_id: u16,
    /// Longest the master waits for a new connection's request line (sticky scheduling) before
    /// dropping it: a client that never sends one never ties up a worker.
    #[serde(with = "crate::millis")]
    pub peek_timeout: Duration,
    /// Longest a new connection waits for a worker whose hand-off socket is full (a worker
    /// that stopped taking connections) when every other worker is full too; then it gets 503.
    /// A full worker is skipped at once for another.
    #[serde(with = "crate::millis")]
    pub handoff_timeout: Duration,
    /// Longest IPC line (one message) a worker may write, in bytes. A longer one breaks the
    /// channel's contract: the worker is replaced, and the master never holds more of it.
    pub ipc_max_line: usize,
    /// Bytes the master queues for one worker's IPC channel, for each of its two lanes:
    /// relayed broadcasts beyond it are dropped (and counted) rather than held for a worker
    /// that does not keep up; replies beyond it mean the worker asks without reading its
    /// answers, and it is replaced.
    pub ipc_queue_size: usize,
    /// Program the workers run, with arguments. Empty, or `serve` with its flags: the chat app
    /// (this binary's `chatctl serve`).
    pub command: Vec<String>,
    /// Extra environment for the workers.
    pub env: Vec<(String, String)>,
    /// Working directory of the workers (default: where `chatctl start` ran).
    pub cwd: Option<PathBuf>,
    /// Programs other than the chat: worker N gets port `worker_port_base + N` of its own,
    /// as `{port}` in its command line and `PORT` in its environment, where the master probes
    /// it (`health.url`, `health.tcp`). The worker id is its slot, stable across restarts, so
    /// a restarted worker has its predecessor's port (which the predecessor, killed, freed).
    pub worker_port_base: Option<u16>,
    /// Unprivileged user the workers run as; required when the master runs as root.
    pub user: Option<String>,
    pub restart: RestartPolicy,
    pub health: HealthConfig,
    /// Longest a draining worker may take to finish its requests on reload.
    #[serde(with = "crate::millis")]
    pub drain_timeout: Duration,
    /// The signal that asks a program other than the chat to finish, on stop, reload and
    /// scale down (the chat is asked over IPC): SIGTERM by default, as systemd and PM2 send;
    /// SIGINT or SIGQUIT for programs that shut down gracefully only on those.
    pub kill_signal: crate::SignalName,
    /// Longest `stop` waits for workers to exit after the kill signal before SIGKILL.
    #[serde(with = "crate::millis")]
    pub stop_timeout: Duration,
    /// Programs other than the chat: a worker is online only once it sends `READY=1` to its
    /// `NOTIFY_SOCKET` (systemd's protocol, `crate::notify`), not after `min_uptime`: for a
    /// program that loads or connects for a while before it can serve.
    pub wait_ready: bool,
    /// How long a worker may take to report ready before it counts as failed to start.
    #[serde(with = "crate::millis")]
    pub ready_timeout: Duration,
    /// How long a question one worker asks all the others (which sockets are in a room) waits
    /// for slow workers before it answers with what it has.
    #[serde(with = "crate::millis")]
    pub gather_timeout: Duration,
    /// Replace (like reload) a worker whose resident memory exceeds this many bytes.
    pub max_memory: Option<u64>,
    /// Rotate the app log above this many bytes.
    pub log_max_size: u64,
    /// Rotated log files kept.
    pub log_keep: usize,
    /// How each line of a worker's output is stamped: strftime-like, in UTC
    /// (`crate::timestamp`), ISO 8601 with milliseconds by default, the same clock as the
    /// master's own lines; `none` (or empty) for programs that stamp their own lines.
    pub log_date_format: String,
    /// Log one JSON object per line (time, app, worker, stream, message), for log shippers
    /// that should not parse text.
    pub log_json: bool,
    /// Workers' stdout and stderr go to `out.log` and `err.log` beside `app.log` (PM2's
    /// out_file / error_file), for tools that watch one stream; the master's lines stay in
    /// `app.log`.
    pub log_split: bool,
    /// Shortest time between two log lines about one cause of dropped messages (a worker too
    /// slow for the broadcasts relayed to it, a failed store write); the counts are in
    /// `chatctl status --json` at any time.
    #[serde(with = "crate::millis")]
    pub drop_log_interval: Duration,
    /// Longest line of a worker's output copied into the log, in bytes; a longer one is cut
    /// there, so a program that prints without newlines cannot grow the master.
    pub log_max_line: usize,
    /// Warm workers kept started and ready but given no connection, promoted when a worker
    /// crashes or a reload replaces one, so the replacement serves at once. Only where the
    /// master hands connections out (the chat's sticky scheduling).
    pub spare: usize,
    /// Rolling reload when a file changes (`--watch`).
    pub watch: WatchConfig,
    /// Rolling reload on a schedule: a cron expression, 5 fields or 6 with seconds first
    /// (PM2's `cron_restart`), in UTC.
    pub cron_restart: Option<String>,
    /// A command run on crashes, health failures, memory replacements and reloads
    /// (`--on-event`), bounded in rate and time.
    pub hooks: crate::hooks::HookConfig,
    /// Prometheus metrics and the live dashboard (`--admin`).
    pub admin: AdminConfig,
}

/// The master's admin address: `/metrics` (Prometheus) and the dashboard at `/`, on an
/// address of its own, never the public one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where to serve them; `None`: nowhere.
    pub listen: Option<SocketAddr>,
    /// The file holding the bearer token (read by the master, never passed in argv or the
    /// environment); default: `admin-token` in the app's directory, made on first start.
    pub token_file: Option<PathBuf>,
}

/// When and how fast crashed workers come back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestartPolicy {
    /// Restart the first crash of a reset window at once (PM2 and Forever do): a lone crash is
    /// an accident, and a worker short costs its siblings the load; the delays below start
    /// with the second crash.
    pub first_restart_at_once: bool,
    /// First restart delay (the second crash's, with `first_restart_at_once`).
    #[serde(with = "crate::millis")]
    pub initial_delay: Duration,
    /// Each further restart waits this much longer.
    pub factor: f64,
    /// Longest restart delay; an errored worker keeps retrying at this pace.
    #[serde(with = "crate::millis")]
    pub max_delay: Duration,
    /// A worker up this long is healthy again: its delay starts over.
    #[serde(with = "crate::millis")]
    pub reset_after: Duration,
    /// An exit before this much uptime counts as a crash-loop exit.
    #[serde(with = "crate::millis")]
    pub min_uptime: Duration,
    /// This many crash-loop exits in a row mark the worker `errored`.
    pub max_fast_exits: u32,
    /// Exit codes that mean "done, do not restart".
    pub stop_exit_codes: Vec<i32>,
}

/// How the master tells a live worker from a hung one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between probes of each worker.
    #[serde(with = "crate::millis")]
    pub interval: Duration,
    /// Time a probe may take.
    #[serde(with = "crate::millis")]
    pub timeout: Duration,
    /// Probes missed in a row before the worker is killed and replaced.
    pub max_misses: u32,
    /// Programs other than the chat: probe each worker with `GET
    /// http://127.0.0.1:{its port}{url}` (2xx: healthy) on its own port
    /// (`AppConfig::worker_port_base`), as the chat is probed on its private socket.
    pub url: Option<String>,
    /// Programs other than the chat: probe each worker with a TCP connect to its own port.
    pub tcp: bool,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            name: "chat".into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 3000)),
            no_listen: false,
            instances: default_instances(),
            scheduling: Scheduling::Sticky,
            node_id: 0,
            peek_timeout: Duration::from_secs(10),
            handoff_timeout: Duration::from_secs(1),
            ipc_max_line: DEFAULT_MAX_LINE,
            ipc_queue_size: 64 << 20,
            command: Vec::new(),
            env: Vec::new(),
            cwd: None,
            user: None,
            worker_port_base: None,
            restart: RestartPolicy::default(),
            health: HealthConfig::default(),
            drain_timeout: Duration::from_secs(10),
            kill_signal: crate::SignalName::TERM,
            stop_timeout: Duration::from_secs(10),
            wait_ready: false,
            ready_timeout: Duration::from_secs(30),
            gather_timeout: Duration::from_secs(1),
            max_memory: None,
            log_max_size: 10 * 1024 * 1024,
            log_keep: 5,
            log_date_format: crate::timestamp::DEFAULT_DATE_FORMAT.into(),
            log_json: false,
            log_split: false,
            drop_log_interval: DEFAULT_DROP_LOG_INTERVAL,
            log_max_line: 16 << 10,
            spare: 0,
            watch: WatchConfig::default(),
            cron_restart: None,
            hooks: crate::hooks::HookConfig::default(),
            admin: AdminConfig::default(),
        }
    }
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            first_restart_at_once: true,
            initial_delay: Duration::from_millis(100),
            factor: 1.5,
            max_delay: Duration::from_secs(15),
            reset_after: Duration::from_secs(30),
            min_uptime: Duration::from_secs(1),
            max_fast_exits: 16,
            stop_exit_codes: Vec::new(),
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(3),
            max_misses: 3,
            url: None,
            tcp: false,
        }
    }
}

/// The largest restart factor: beyond it a delay times the factor may not fit a duration, and
/// no useful backoff grows faster.
pub const MAX_FACTOR: f64 = 1000.0;

/// One worker per CPU.
pub fn default_instances() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A setting that cannot work; the message names it and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl AppConfig {
    /// Checks what serde cannot: ranges and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError(msg));
        if !valid_name(&self.name) {
            return bad(format!(
                "invalid app name '{}': use 1-64 letters, digits, '-', '_' or '.'",
                self.name
            ));
        }
        if self.instances == 0 || self.instances > 1024 {
            return bad(format!(
                "instances must be between 1 and 1024, not {}",
                self.instances
            ));
        }
        if self.no_listen && self.capabilities().serves_http {
            return bad(
                "--no-listen is for programs that serve no port; the chat app serves HTTP: drop --no-listen, or give the program after --".into(),
            );
        }
        if self.node_id > sticky::route_tag::MAX_ID {
            return bad(format!(
                "node id must be between 0 and {}, not {}",
                sticky::route_tag::MAX_ID,
                self.node_id
            ));
        }
        if self.peek_timeout.is_zero() {
            return bad("peek timeout must be above zero".into());
        }
        if self.ipc_max_line < 1024 {
            return bad(format!(
                "IPC max line must be at least 1K, not {}",
                self.ipc_max_line
            ));
        }
        if self.ipc_queue_size < self.ipc_max_line {
            return bad(format!(
                "IPC queue size ({}) must be at least the IPC max line ({}): one message must fit; raise --ipc-queue-size or lower --ipc-max-line",
                self.ipc_queue_size, self.ipc_max_line
            ));
        }
        if self.restart.factor < 1.0 || !self.restart.factor.is_finite() {
            return bad(format!(
                "restart factor must be at least 1, not {}",
                self.restart.factor
            ));
        }
        if self.restart.factor > MAX_FACTOR {
            return bad(format!(
                "restart factor must be at most {MAX_FACTOR}, not {} (the next delay would overflow; the maximum delay caps it anyway)",
                self.restart.factor
            ));
        }
        if self.restart.initial_delay > self.restart.max_delay {
            return bad("restart initial delay must not exceed the maximum delay".into());
        }
        if self.health.interval.is_zero()
            || self.health.timeout.is_zero()
            || self.health.max_misses == 0
        {
            return bad("health interval, timeout and misses must be above zero".into());
        }
        if let Some(url) = &self.health.url {
            if !url.starts_with('/') || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return bad(format!(
                    "health URL {url:?} must be a path like /healthz (the master adds http://127.0.0.1:PORT)"
                ));
            }
        }
        let program_probe = self.health.url.is_some() || self.health.tcp;
        if program_probe && self.capabilities().health_endpoint {
            return bad("--health-url and --health-tcp are for programs other than the chat, which is probed on its private socket: drop them".into());
        }
        if self.wait_ready && self.capabilities().speaks_ipc {
            return bad("--wait-ready is for programs other than the chat, which reports ready over its IPC channel: drop it".into());
        }
        if self.health.url.is_some() && self.health.tcp {
            return bad("choose --health-url or --health-tcp, not both".into());
        }
        if program_probe && self.worker_port_base.is_none() {
            return bad("--health-url and --health-tcp probe each worker on a port of its own: give --worker-port-base PORT (worker N gets PORT+N, as {port} in its command and PORT in its environment)".into());
        }
        if let Some(base) = self.worker_port_base {
            if usize::from(base) + self.instances > 65_536 || base == 0 {
                return bad(format!(
                    "--worker-port-base {base} with {} workers leaves the port range: choose a base between 1 and {}",
                    self.instances,
                    65_536 - self.instances
                ));
            }
        }
        if self.log_max_line < 80 {
            return bad(format!(
                "log max line must be at least 80 bytes, not {}",
                self.log_max_line
            ));
        }
        if let Some(format) = self.worker_date_format() {
            crate::timestamp::check_format(format).map_err(ConfigError)?;
        }
        if self.log_max_size < 1024 {
            return bad("log max size must be at least 1K".into());
        }
        if self.spare > 64 {
            return bad(format!(
                "spare workers must be at most 64, not {}",
                self.spare
            ));
        }
        if self.spare > 0
            && !(self.capabilities().takes_handoff && self.scheduling == Scheduling::Sticky)
        {
            return bad("--spare needs connections handed out by the master (the chat with sticky scheduling): a program sharing the listening socket would take connections while it waits as a spare".into());
        }
        self.hooks.validate().map_err(ConfigError)?;
        if self.admin.token_file.is_some() && self.admin.listen.is_none() {
            return bad("--admin-token-file needs --admin ADDR (the address it guards)".into());
        }
        if let Some(admin) = self.admin.listen {
            if admin.port() == 0 {
                return bad(format!(
                    "--admin {admin}: give the admin address a port (0 would pick one no scraper knows), e.g. --admin 127.0.0.1:9300"
                ));
            }
            let same_ip = admin.ip() == self.listen.ip()
                || admin.ip().is_unspecified()
                || self.listen.ip().is_unspecified();
            if !self.no_listen && admin.port() == self.listen.port() && same_ip {
                return bad(format!(
                    "--admin {admin} is the public address (--listen {}): give the admin address a port of its own, e.g. --admin 127.0.0.1:9300",
                    self.listen
                ));
            }
        }
        crate::triggers::check(
            &self.watch,
            self.cron_restart.as_deref(),
            self.cwd.as_deref(),
        )
        .map_err(ConfigError)?;
        Ok(())
    }

    /// The format worker lines are stamped with, if they are.
    pub fn worker_date_format(&self) -> Option<&str> {
        Some(self.log_date_format.as_str()).filter(|format| !format.is_empty() && *format != "none")
    }

    /// The port of its own that worker `slot` of a program gets, if the program gets one.
    pub fn worker_port(&self, slot: usize) -> Option<u16> {
        let base = self.worker_port_base?;
        u16::try_from(usize::from(base) + slot).ok()
    }

    /// What the workers run (see [`Program`]).
    pub fn program(&self) -> Program<'_> {
        Program::of(&self.command)
    }

    /// What the master may rely on in the workers' program.
    pub fn capabilities(&self) -> Capabilities {
        self.program().capabilities()
    }
}

/// App names become directory names: keep them plain.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name != "all"
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Several apps in one TOML file: `[[app]]` tables with the fields of [`AppConfig`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub app: Vec<AppConfig>,
}

impl ConfigFile {
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let file: ConfigFile =
            toml::from_str(text).map_err(|e| ConfigError(format!("invalid config file: {e}")))?;
        if file.app.is_empty() {
            return Err(ConfigError("config file has no [[app]] table".into()));
        }
        for app in &file.app {
            app.validate()?;
        }
        Ok(file)
    }
}

/// Parses sizes like `512M`, `1G`, `100K`, `1048576`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size like 512M or 1G"))?;
    let multiplier: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" => 1 << 10,
        "M" | "MB" => 1 << 20,
        "G" | "GB" => 1 << 30,
        _ => return Err(format!("'{text}': unknown size unit (use K, M or G)")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("'{text}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_design() {
        let config = AppConfig::default();
        config.validate().unwrap();
        assert_eq!(config.restart.initial_delay, Duration::from_millis(100));
        assert_eq!(config.restart.max_delay, Duration::from_secs(15));
        assert_eq!(config.restart.max_fast_exits, 16);
    }

    #[test]
    fn round_trips_through_json() {
        let config = AppConfig {
            command: vec!["app".into(), "--x".into()],
            max_memory: Some(1 << 20),
            ..AppConfig::default()
        };
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<AppConfig>(&json).unwrap(), config);
    }

    #[test]
    fn reads_several_apps_from_toml() {
        let file = ConfigFile::parse(
            "[[app]]\nname = \"chat\"\nlisten = \"127.0.0.1:3000\"\ninstances = 2\n\
             [[app]]\nname = \"api\"\nlisten = \"127.0.0.1:4000\"\ncommand = [\"./api\"]\n[app.restart]\nmax_delay = 5000\n",
        )
        .unwrap();
        assert_eq!(file.app.len(), 2);
        assert_eq!(file.app[1].restart.max_delay, Duration::from_secs(5));
        assert!(ConfigFile::parse("[[app]]\nname = \"x\"\nbogus = 1\n").is_err());
        assert!(ConfigFile::parse("").is_err());
    }

    #[test]
    fn refuses_bad_values() {
        assert!(AppConfig {
            instances: 0,
            ..AppConfig::default()
        }
        .validate()
        .is_err());
        assert!(AppConfig {
            name: "../etc".into(),
            ..AppConfig::default()
        }
        .validate()
        .is_err());
        for factor in [1e300, f64::INFINITY, f64::NAN, 0.5] {
            let text = format!("[[app]]\nname = \"x\"\n[app.restart]\nfactor = {factor:e}\n");
            let text = text.replace("NaN", "nan");
            assert!(
                ConfigFile::parse(&text).is_err(),
                "factor {factor} accepted"
            );
        }
        let overflowing =
            ConfigFile::parse("[[app]]\nname = \"x\"\n[app.restart]\nfactor = 1e300\n");
        assert!(
            overflowing.is_err_and(|e| e.0.contains("at most 1000")),
            "a factor that overflows is not refused as such"
        );
        assert!(AppConfig {
            name: "all".into(),
            ..AppConfig::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn program_probes_need_a_port_and_a_program() {
        let program = AppConfig {
            command: vec!["./api".into(), "--port={port}".into()],
            health: HealthConfig {
                url: Some("/healthz".into()),
                ..HealthConfig::default()
            },
            ..AppConfig::default()
        };
        assert!(program
            .validate()
            .is_err_and(|e| e.0.contains("--worker-port-base")));
        let with_port = AppConfig {
            worker_port_base: Some(9100),
            ..program.clone()
        };
        with_port.validate().unwrap();
        assert_eq!(with_port.worker_port(2), Some(9102));
        let chat = AppConfig {
            command: Vec::new(),
            ..with_port.clone()
        };
        assert!(chat.validate().is_err());
        let bad_path = AppConfig {
            health: HealthConfig {
                url: Some("healthz".into()),
                ..HealthConfig::default()
            },
            ..with_port
        };
        assert!(bad_path.validate().is_err());
    }

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("100k"), Ok(100 << 10));
        assert_eq!(parse_size("42"), Ok(42));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
    }
}

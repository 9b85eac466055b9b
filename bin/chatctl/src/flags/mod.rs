//! Command-line flags, with their documentation next to them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod proxy;
mod serve;

pub use proxy::ProxyArgs;
pub use serve::ServeArgs;

#[derive(Debug, Parser)]
#[command(
    name = "chatctl",
    version,
    about = "Run, supervise and scale a Socket.IO chat"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start an app in the background: a master and its workers. Returns once every worker is
    /// online, or fails with the reason and the last log lines.
    Start(AppArgs),
    /// Run an app's master in the foreground (for systemd `Type=notify` and containers).
    Run(AppArgs),
    /// Show every running app's workers.
    #[command(visible_alias = "ls")]
    List {
        /// Print JSON instead of a table.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Refresh the table in place every --interval until Ctrl-C (into a pipe: one table
        /// after the other, each under its time).
        #[arg(long)]
        watch: bool,
        /// Time between two refreshes of --watch (100ms to 1h).
        #[arg(long, default_value = "2s", value_parser = parse_interval, requires = "watch")]
        interval: Duration,
    },
    /// A live view of every running app's workers in the terminal (or of app NAME's): status,
    /// pid, uptime, restarts, CPU, memory and connections with their recent history, and the
    /// app's recent warnings. q (or Ctrl-C) quits; it ends by itself when a master goes away.
    Monit {
        /// Only this app (every running app without it).
        name: Option<String>,
        /// Time between two refreshes (100ms to 1h).
        #[arg(long, default_value = "1s", value_parser = parse_interval)]
        interval: Duration,
    },
    /// `list --json` (PM2's `jlist`).
    #[command(hide = true)]
    Jlist,
    /// Show one app's workers (every app's without a name), with the reason of any failure.
    #[command(visible_aliases = ["show", "describe"])]
    Status {
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Replace every worker one at a time without dropping a request (`all`: every app). Flags
    /// given change the app's settings for the new workers (and are saved); --update-env gives
    /// them this shell's environment.
    Reload(AppArgs),
    /// Stop and start every worker (not zero-downtime: see reload; `all`: every app).
    Restart { name: String },
    /// Move an app to the chatctl executable now on disk without closing its port: a new
    /// master starts from it, takes the listening socket and starts its workers; once they
    /// are online the old master stops accepting, its workers drain and it exits. If the new
    /// master fails, the old one keeps serving and this says why.
    Upgrade {
        name: String,
        /// The new executable (default: the file the master was started from).
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// How long the new master may take to have every worker online (default: the app's
        /// --ready-timeout plus 10s).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// Change the number of workers.
    Scale {
        name: String,
        #[arg(value_parser = parse_instances)]
        instances: usize,
    },
    /// Send a signal (SIGUSR2, HUP, 10...) to every worker of an app, or to one by id (PM2's
    /// `sendSignal`); the app decides what it means.
    #[command(alias = "sendSignal")]
    Signal {
        #[arg(value_parser = parse_signal)]
        signal: supervisor::SignalName,
        name: String,
        /// Only this worker (its id in `chatctl status`).
        worker: Option<usize>,
    },
    /// Stop an app (or `all`): drain its workers, then kill whatever is left. Its definition
    /// stays (`chatctl start NAME` starts it again; `chatctl delete NAME` removes it).
    Stop { name: String },
    /// Stop an app (or `all`) and remove it: its definition, logs and cookie key.
    #[command(visible_alias = "del")]
    Delete { name: String },
    /// Write the running apps' definitions to $CHATCTL_HOME/dump.json, for `resurrect`.
    Save,
    /// Start every app `save` wrote that is not running.
    Resurrect,
    /// Turn a PM2 ecosystem file (.js, .cjs or .json) into a chatctl config file (TOML, for
    /// `chatctl start -c FILE`) on stdout; a line on stderr for each field left out.
    #[command(name = "import-pm2")]
    ImportPm2 { file: PathBuf },
    /// Print the systemd unit that starts the saved apps at boot (one `chatctl@NAME` each),
    /// and the commands that enable them.
    Startup {
        /// Write the unit to /etc/systemd/system and enable one instance per saved app (root).
        #[arg(long)]
        install: bool,
    },
    /// Print an app's log, workers' output and the master's own lines, then follow it as new
    /// lines come (Ctrl-C to stop).
    Logs {
        name: String,
        /// Print the last lines and exit instead of following.
        #[arg(long)]
        nostream: bool,
        /// Follow (the default; kept for `logs -f` habits).
        #[arg(short, long, hide = true)]
        follow: bool,
        /// How many of the last lines to print first.
        #[arg(short = 'n', long, default_value_t = 100)]
        lines: usize,
    },
    /// Empty an app's log files (the rotated ones are removed); a running master keeps
    /// writing to them.
    Flush { name: String },
    /// Serve the chat app in this process (what each worker of `chatctl start` runs).
    Serve(ServeArgs),
    /// Run a sticky reverse proxy in front of several hosts: each request with a sid goes to
    /// the node that opened the session; handshakes go to a healthy node.
    Proxy(ProxyArgs),
    /// The daemonized master of `start` (internal).
    #[command(hide = true)]
    Master {
        #[arg(long)]
        name: String,
    },
}

/// Settings of an app, for `start` and `run`.
#[derive(Debug, Args)]
pub struct AppArgs {
    /// A defined app to start with its saved settings (a stopped one, see `chatctl list`);
    /// flags given as well change those settings.
    #[arg(value_name = "APP", conflicts_with_all = ["config_file", "name", "command"])]
    pub app: Option<String>,
    /// Start every app of this TOML file ([[app]] tables) instead of one from flags.
    #[arg(short = 'c', long = "config", conflicts_with_all = ["name", "listen", "instances", "command"])]
    pub config_file: Option<PathBuf>,
    /// If the app already runs, reload it (rolling) with these settings instead of failing:
    /// for deploy scripts.
    #[arg(long)]
    pub reload_if_running: bool,
    /// On reload: the new workers start from this shell's environment instead of the one the
    /// master started with (PM2's --update-env). Kept in the master's memory, not on disk.
    #[arg(long)]
    pub update_env: bool,
    /// Name of the app [default: `chat` for the chat app, else the program's file name].
    #[arg(long)]
    pub name: Option<String>,
    /// Address the workers share.
    #[arg(long, default_value = "0.0.0.0:3000")]
    pub listen: std::net::SocketAddr,
    /// The program serves no port (a queue worker): bind nothing, pass no socket and no
    /// LISTEN_FDS. Not for the chat app.
    #[arg(long, conflicts_with = "listen")]
    pub no_listen: bool,
    /// Number of workers: a number, or `max` for one per CPU [default: `max` for the chat
    /// app, 1 for another program].
    #[arg(short = 'i', long, value_parser = parse_instances)]
    pub instances: Option<usize>,
    /// Run workers as this unprivileged user. As root without it, workers run as
    /// $CHATCTL_USER, else `nobody`; never as root.
    #[arg(long)]
    pub user: Option<String>,
    /// Replace a worker whose memory exceeds this (e.g. 512M).
    #[arg(long, alias = "max-memory-restart", value_parser = supervisor::config::parse_size)]
    pub max_memory: Option<u64>,
    /// Rotate the app log above this size.
    #[arg(long, default_value = "10M", value_parser = supervisor::config::parse_size)]
    pub log_max_size: u64,
    /// Rotated log files kept.
    #[arg(long, default_value_t = 5)]
    pub log_keep: usize,
    /// How worker lines are stamped: strftime-like in UTC (%Y %m %d %H %M %S %L %f %F %T %s %z
    /// %Z); `none` for programs that stamp their own lines.
    #[arg(long, default_value = supervisor::timestamp::DEFAULT_DATE_FORMAT)]
    pub log_date_format: String,
    /// Log one JSON object per line: time, app, worker, stream, message.
    #[arg(long)]
    pub log_json: bool,
    /// Workers' stdout and stderr in out.log and err.log beside app.log (PM2's out_file and
    /// error_file); the master's lines stay in app.log.
    #[arg(long)]
    pub log_split: bool,
    /// Longest line of a worker's output kept in the log; longer ones are cut.
    #[arg(long, default_value = "16K", value_parser = supervisor::config::parse_size)]
    pub log_max_line: u64,
    /// Restart a worker's first crash (since --restart-reset of uptime) at once (`on`), or
    /// after --restart-delay like the later ones (`off`).
    #[arg(long, default_value = "on", value_name = "on|off", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub first_restart_at_once: bool,
    /// Restart delay after a crash that follows another within --restart-reset (after every
    /// crash with --first-restart-at-once off); it grows by 1.5 each time.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub restart_delay: Duration,
    /// Longest restart delay.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub restart_max_delay: Duration,
    /// Uptime after which a crashed worker's delay starts over.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub restart_reset: Duration,
    /// An exit before this uptime counts towards a crash loop.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub min_uptime: Duration,
    /// Crash-loop exits in a row that mark a worker errored (it keeps retrying slowly).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub crash_loop_exits: u32,
    /// Exit code that means "done, do not restart" (repeatable).
    #[arg(long = "stop-exit-code")]
    pub stop_exit_codes: Vec<i32>,
    /// Time between health probes of each worker.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub health_interval: Duration,
    /// Time a health probe may take.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub health_timeout: Duration,
    /// Missed probes in a row before a worker is replaced.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub health_misses: u32,
    /// Programs other than the chat: probe each worker with GET
    /// http://127.0.0.1:PORT/PATH on its own port (see --worker-port-base); 2xx is healthy,
    /// --health-misses failures in a row replace it.
    #[arg(long, value_name = "PATH", requires = "worker_port_base")]
    pub health_url: Option<String>,
    /// Programs other than the chat: probe each worker with a TCP connect to its own port.
    #[arg(long, requires = "worker_port_base", conflicts_with = "health_url")]
    pub health_tcp: bool,
    /// Programs other than the chat: worker N gets port BASE+N of its own, as `{port}` in its
    /// command line and PORT in its environment (where --health-url / --health-tcp probe it).
    #[arg(long, value_name = "BASE", value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_port_base: Option<u16>,
    /// Programs other than the chat: a worker is online only once it sends READY=1 to the
    /// unix datagram socket in its NOTIFY_SOCKET (systemd's sd_notify protocol), within
    /// --ready-timeout; without it, once it has run --min-uptime.
    #[arg(long)]
    pub wait_ready: bool,
    /// Time a worker may take to report ready.
    #[arg(long, alias = "listen-timeout", default_value = "30s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
    /// Time a replaced worker may take to finish its requests on reload.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// The signal that asks a program to finish on stop, reload and scale down (e.g. SIGINT);
    /// after --stop-timeout, SIGKILL. The chat app is asked over its IPC channel instead.
    #[arg(long, default_value = "SIGTERM", value_parser = parse_signal)]
    pub kill_signal: supervisor::SignalName,
    /// Warm workers kept started and ready but given no connection: one takes a crashed
    /// worker's place at once, and a reload swaps each worker for one (chat app, sticky
    /// scheduling).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub spare: u16,
    /// Reload (rolling) when files change: `--watch` alone watches the app's working
    /// directory, `--watch=PATH,PATH` those files and directories (recursively).
    #[arg(long, value_name = "PATHS", num_args = 0..=1, require_equals = true,
          default_missing_value = "", value_delimiter = ',')]
    pub watch: Option<Vec<String>>,
    /// Changes of files matching this glob cause no reload (repeatable), besides **/.git/**,
    /// **/node_modules/** and **/*.log.
    #[arg(long, value_name = "GLOB")]
    pub watch_ignore: Vec<String>,
    /// Changes are gathered this long before the reload (a deploy writing many files: one
    /// reload).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub watch_delay: Duration,
    /// Reload (rolling) on a schedule: a cron expression in UTC, 5 fields (`0 3 * * *`) or 6
    /// with seconds first (PM2's cron_restart).
    #[arg(long, alias = "cron", value_name = "EXPR")]
    pub cron_restart: Option<String>,
    /// Run this command (with `sh -c`, as the master's user) when a worker crashes, is
    /// errored (crash loop), fails its health checks or is replaced for its memory, and when a
    /// reload is done or fails. It gets CHATCTL_EVENT, CHATCTL_APP, CHATCTL_WORKER,
    /// CHATCTL_PID, CHATCTL_EXIT_CODE / CHATCTL_EXIT_SIGNAL, CHATCTL_MESSAGE and the worker's
    /// last output lines in CHATCTL_LOG_LINES, and no other variable of the master's but PATH,
    /// HOME, USER, LANG, TZ and the like.
    #[arg(long, value_name = "CMD")]
    pub on_event: Option<String>,
    /// An event hook still running after this is killed, with every process it started.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub on_event_timeout: Duration,
    /// Event hooks started in any minute at most; the events beyond are logged as skipped.
    #[arg(long, default_value_t = 10, value_name = "PER_MINUTE",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(supervisor::hooks::MAX_PER_MINUTE)))]
    pub on_event_rate: u32,
    /// Serve Prometheus metrics (`/metrics`) and a live dashboard (`/`) on this address of
    /// the master's own, e.g. 127.0.0.1:9300 (never the --listen one). On loopback, reading
    /// needs no token; anywhere else it needs `Authorization: Bearer TOKEN`; the dashboard's
    /// buttons always do. Off unless given.
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<std::net::SocketAddr>,
    /// The file holding the admin token (first line, at least 16 characters, mode 0600).
    /// Default: `admin-token` in the app's directory ($CHATCTL_HOME/apps/NAME), made on the
    /// first start with --admin.
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Time workers get to exit on stop before SIGKILL.
    #[arg(long, alias = "kill-timeout", default_value = "10s", value_parser = parse_duration)]
    pub stop_timeout: Duration,
    /// How connections reach the chat workers: `sticky` (the master reads the session id of
    /// each new connection's first request and hands the connection to the worker owning that
    /// session; long-polling works) or `shared` (the workers accept on one socket; websocket
    /// only across workers). Programs other than the chat app always get `shared`.
    #[arg(long, default_value = "sticky")]
    pub scheduling: supervisor::Scheduling,
    /// This host's node id (0-4095), written into every session id, for `chatctl proxy
    /// --backend HOST:PORT=NODE_ID` in front of several hosts.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=4095))]
    pub node_id: u16,
    /// Sticky scheduling: a new connection that has not sent its request line within this
    /// time is closed (slowloris).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub peek_timeout: Duration,
    /// Sticky scheduling: longest a new connection waits for a worker that does not take its
    /// connections (its hand-off socket is full) when every worker is full; then 503. A full
    /// worker is skipped at once when another has room.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub handoff_timeout: Duration,
    /// Longest IPC message (one line) a worker may send the master; a worker that sends a
    /// longer one is replaced.
    #[arg(long, default_value = "16M", value_parser = supervisor::config::parse_size)]
    pub ipc_max_line: u64,
    /// Bytes the master queues for one worker, for broadcasts relayed to it and for its
    /// replies each: beyond it broadcasts are dropped (counted and logged), and a worker that
    /// leaves that much of its replies unread is replaced.
    #[arg(long, default_value = "64M", value_parser = supervisor::config::parse_size)]
    pub ipc_queue_size: u64,
    /// Share rooms, broadcasts, sessions and history through this Redis instead of the master
    /// (needed across machines): redis://host:port, rediss://..., unix:///path. Passed to the
    /// chat workers as REDIS_URL.
    #[arg(long = "redis", value_name = "URL", value_parser = parse_redis_url)]
    pub redis: Option<String>,
    /// Environment for the workers, KEY=VALUE (repeatable).
    #[arg(long = "env", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// The program the workers run, with its arguments, after `--`. It gets the listening
    /// socket as fd 3 (LISTEN_FDS=1). Without it the workers run the chat app; `-- serve
    /// FLAGS` runs the chat app with those flags (see `chatctl serve --help`).
    #[arg(last = true)]
    pub command: Vec<String>,
    /// The flags given on the command line (clap ids), which `-c FILE` applies to every app.
    #[arg(skip)]
    pub given: Vec<String>,
}

impl Cli {
    /// Parses `args` like `Cli::try_parse_from`, and records which app flags of `start` and
    /// `run` were given on the command line.
    pub fn parse_recording_flags<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let command = Cli::command();
        let matches = command.clone().try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        if let (Command::Start(app) | Command::Run(app) | Command::Reload(app), Some((name, sub))) =
            (&mut cli.command, matches.subcommand())
        {
            // The arguments only: the matches also hold the group clap makes of `AppArgs`.
            let arguments = command
                .find_subcommand(name)
                .into_iter()
                .flat_map(|c| c.get_arguments());
            app.given = arguments
                .map(|argument| argument.get_id().as_str())
                .filter(|id| sub.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
                .map(str::to_owned)
                .collect();
        }
        Ok(cli)
    }
}

/// `N` or `max`.
pub fn parse_instances(text: &str) -> Result<usize, String> {
    if text == "max" {
        return Ok(supervisor::config::default_instances());
    }
    match text.parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!(
            "'{text}' is not a number of workers (1-1024) or 'max'"
        )),
    }
}

fn parse_signal(text: &str) -> Result<supervisor::SignalName, String> {
    text.parse()
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("'{text}' is not KEY=VALUE")),
    }
}

pub(crate) fn parse_redis_url(text: &str) -> Result<String, String> {
    coord::redis::validate_url(text)
        .map(|()| text.to_owned())
        .map_err(|error| error.to_string())
}

/// A refresh interval: a duration from 100ms to 1h.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&interval) {
        return Err(format!("'{text}' is not an interval from 100ms to 1h"));
    }
    Ok(interval)
}

/// Parses `300ms`, `25s`, `5m`, `1h`, and a plain number as milliseconds (as PM2 does).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration like 300ms, 25s, 5m"))?;
    let millis = match unit {
        "" | "ms" => number,
        "s" => number.saturating_mul(1000),
        "m" => number.saturating_mul(60_000),
        "h" => number.saturating_mul(3_600_000),
        _ => {
            return Err(format!(
                "'{text}' is not a duration like 300ms, 25s, 5m (or milliseconds)"
            ))
        }
    };
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations_with_units() {
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("25s"), Ok(Duration::from_secs(25)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        // A plain number is milliseconds, as in PM2.
        assert_eq!(parse_duration("25"), Ok(Duration::from_millis(25)));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5 days").is_err());
    }

    #[test]
    fn redis_settings_come_from_flags() {
        let cli = Cli::try_parse_from([
            "chatctl",
            "serve",
            "--redis",
            "redis://127.0.0.1:6379/2",
            "--redis-prefix",
            "app",
            "--redis-sharded",
            "--redis-cluster",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.redis_url.as_deref(), Some("redis://127.0.0.1:6379/2"));
        assert_eq!(args.redis_prefix, "app");
        assert!(args.redis_sharded);
        assert!(args.redis_cluster);
        assert!(Cli::try_parse_from(["chatctl", "serve", "--redis", "nonsense"]).is_err());
    }

    #[test]
    fn proxy_flags_become_a_config() {
        let cli = Cli::try_parse_from([
            "chatctl",
            "proxy",
            "--listen",
            "127.0.0.1:8080",
            "--backend",
            "10.0.0.1:3000=1",
            "--backend",
            "10.0.0.2:3000=2",
            "--policy",
            "round-robin",
            "--health-misses",
            "4",
        ])
        .unwrap();
        let Command::Proxy(args) = cli.command else {
            panic!("not proxy")
        };
        let config = args.into_config();
        assert_eq!(config.backends.len(), 2);
        assert_eq!(config.backends[1].node, 2);
        assert_eq!(config.policy, sticky::Policy::RoundRobin);
        assert_eq!(config.health_misses, 4);
        assert_eq!(config.health_interval, Duration::from_secs(2));
        assert!(Cli::try_parse_from(["chatctl", "proxy", "--listen", "127.0.0.1:1"]).is_err());
        assert!(Cli::try_parse_from([
            "chatctl",
            "proxy",
            "--listen",
            "127.0.0.1:1",
            "--backend",
            "nonode:1"
        ])
        .is_err());
    }

    #[test]
    fn the_flags_given_with_a_config_file_are_recorded() {
        let cli = Cli::parse_recording_flags([
            "chatctl",
            "start",
            "-c",
            "apps.toml",
            "--user",
            "chat",
            "--env",
            "A=1",
        ])
        .unwrap();
        let Command::Start(args) = cli.command else {
            panic!("not start")
        };
        let mut given = args.given.clone();
        given.sort();
        assert_eq!(given, ["config_file", "env", "user"]);
    }

    #[test]
    fn flags_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

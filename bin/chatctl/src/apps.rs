//! The app commands: start, run, list, status, reload, restart, scale, stop, logs. Each is a
//! call into the supervisor crate plus printing.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use supervisor::client::{self, ClientError};
use supervisor::paths::{home, AppPaths};
use supervisor::{AppConfig, AppStatus, ConfigFile, Master, Request, Response};

use crate::flags::AppArgs;

/// The app configurations the flags (or the config file) describe. With a config file, every
/// app flag given on the command line applies to every app of the file (a `--user` is never
/// dropped).
pub fn configs(args: &AppArgs) -> anyhow::Result<Vec<AppConfig>> {
    let flags = config_from_flags(args);
    let Some(path) = &args.config_file else {
        flags.validate()?;
        return Ok(vec![flags]);
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut apps = ConfigFile::parse(&text)?.app;
    for app in &mut apps {
        for flag in &args.given {
            apply_flag(app, &flags, flag)?;
        }
        app.validate()?;
    }
    Ok(apps)
}

/// Copies the setting of the command-line flag `flag` (a clap id) from `flags` onto `app`.
fn apply_flag(app: &mut AppConfig, flags: &AppConfig, flag: &str) -> Result<(), UsageError> {
    match flag {
        "config_file" => {}
        "user" => app.user.clone_from(&flags.user),
        "max_memory" => app.max_memory = flags.max_memory,
        "log_max_size" => app.log_max_size = flags.log_max_size,
        "log_keep" => app.log_keep = flags.log_keep,
        "log_max_line" => app.log_max_line = flags.log_max_line,
        "restart_delay" => app.restart.initial_delay = flags.restart.initial_delay,
        "restart_max_delay" => app.restart.max_delay = flags.restart.max_delay,
        "restart_reset" => app.restart.reset_after = flags.restart.reset_after,
        "min_uptime" => app.restart.min_uptime = flags.restart.min_uptime,
        "crash_loop_exits" => app.restart.max_fast_exits = flags.restart.max_fast_exits,
        "stop_exit_codes" => app
            .restart
            .stop_exit_codes
            .clone_from(&flags.restart.stop_exit_codes),
        "health_interval" => app.health.interval = flags.health.interval,
        "health_timeout" => app.health.timeout = flags.health.timeout,
        "health_misses" => app.health.max_misses = flags.health.max_misses,
        "ready_timeout" => app.ready_timeout = flags.ready_timeout,
        "drain_timeout" => app.drain_timeout = flags.drain_timeout,
        "stop_timeout" => app.stop_timeout = flags.stop_timeout,
        "scheduling" => app.scheduling = flags.scheduling,
        "node_id" => app.node_id = flags.node_id,
        "peek_timeout" => app.peek_timeout = flags.peek_timeout,
        "handoff_timeout" => app.handoff_timeout = flags.handoff_timeout,
        "ipc_max_line" => app.ipc_max_line = flags.ipc_max_line,
        "ipc_queue_size" => app.ipc_queue_size = flags.ipc_queue_size,
        // `--env` and `--redis` both become environment entries; later entries win.
        "env" | "redis" => {
            for entry in &flags.env {
                if !app.env.contains(entry) {
                    app.env.push(entry.clone());
                }
            }
        }
        other => {
            return Err(UsageError(format!(
                "--{} cannot be combined with -c FILE: set it in the file's [[app]] tables",
                other.replace('_', "-")
            )))
        }
    }
    Ok(())
}

/// A command line that cannot work as given: `main` prints it in one line and exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn config_from_flags(args: &AppArgs) -> AppConfig {
    let defaults = AppConfig::default();
    AppConfig {
        name: args.name.clone(),
        listen: args.listen,
        instances: args.instances.unwrap_or(defaults.instances),
        scheduling: args.scheduling,
        node_id: args.node_id,
        peek_timeout: args.peek_timeout,
        handoff_timeout: args.handoff_timeout,
        ipc_max_line: usize::try_from(args.ipc_max_line).unwrap_or(usize::MAX),
        ipc_queue_size: usize::try_from(args.ipc_queue_size).unwrap_or(usize::MAX),
        command: args.command.clone(),
        env: args
            .env
            .iter()
            .cloned()
            .chain(
                args.redis
                    .iter()
                    .map(|url| ("REDIS_URL".to_owned(), url.clone())),
            )
            .collect(),
        cwd: std::env::current_dir().ok(),
        user: args.user.clone(),
        restart: supervisor::RestartPolicy {
            initial_delay: args.restart_delay,
            max_delay: args.restart_max_delay,
            reset_after: args.restart_reset,
            min_uptime: args.min_uptime,
            max_fast_exits: args.crash_loop_exits,
            stop_exit_codes: args.stop_exit_codes.clone(),
            ..defaults.restart
        },
        health: supervisor::HealthConfig {
            interval: args.health_interval,
            timeout: args.health_timeout,
            max_misses: args.health_misses,
        },
        drain_timeout: args.drain_timeout,
        stop_timeout: args.stop_timeout,
        ready_timeout: args.ready_timeout,
        max_memory: args.max_memory,
        log_max_size: args.log_max_size,
        log_keep: args.log_keep,
        log_max_line: usize::try_from(args.log_max_line).unwrap_or(usize::MAX),
        ..defaults
    }
}

pub async fn start(args: AppArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the chatctl executable")?;
    let mut failed = false;
    for config in configs(&args)? {
        if supervisor::running_as_root() && config.user.is_none() {
            println!(
                "{}: chatctl runs as root, so the workers run as '{}' (choose the account with --user NAME)",
                config.name,
                supervisor::default_user()
            );
        }
        let started = client::start(&config, &exe).await?;
        print_table(std::slice::from_ref(&started.status));
        if started.all_online {
            println!(
                "{}: {} workers online on {}",
                config.name,
                started.status.workers.len(),
                started.status.listen
            );
        } else {
            failed = true;
            for worker in &started.status.workers {
                if let Some(error) = worker
                    .last_error
                    .as_deref()
                    .filter(|_| worker.status != "online")
                {
                    eprintln!("worker {} {}: {error}", worker.id, worker.status);
                }
            }
            eprintln!("last log lines (chatctl logs {}):", config.name);
            for line in &started.log_tail {
                eprintln!("  {line}");
            }
            eprintln!("{}: not every worker came online; the master keeps retrying (chatctl stop {} to give up)", config.name, config.name);
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

/// The master of `start`, detached: reads the config `start` wrote.
pub fn master(name: &str) -> anyhow::Result<()> {
    let paths = AppPaths::new(&home(), name);
    let text = std::fs::read_to_string(&paths.config)
        .with_context(|| format!("cannot read {}", paths.config.display()))?;
    let config: AppConfig = serde_json::from_str(&text).context("invalid app config")?;
    run_master(config, paths, false)
}

/// `run`: one app's master in the foreground, logging to stderr too.
pub fn run(args: AppArgs) -> anyhow::Result<()> {
    let mut configs = configs(&args)?;
    if configs.len() != 1 {
        bail!(
            "`run` runs one app; the config file has {} (use `start -c` for several)",
            configs.len()
        );
    }
    let config = configs.remove(0);
    let paths = AppPaths::new(&home(), &config.name);
    run_master(config, paths, true)
}

fn run_master(config: AppConfig, paths: AppPaths, foreground: bool) -> anyhow::Result<()> {
    // One thread: the master's work (hand-offs, relays, probes) is many small steps, which
    // threads would only add wake-ups to. Its log has a thread of its own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let runs_chat = config.runs_chat();
        let secret = if runs_chat {
            chat_secret(&config, &paths).await?
        } else {
            None
        };
        let master = Master::prepare(config, paths).await?;
        if runs_chat {
            // No Redis: the master keeps the chat's shared state and relays broadcasts.
            master.set_service(std::sync::Arc::new(coord::StoreService::default()));
        }
        if let Some(secret) = secret {
            master.set_secret(secret);
        }
        init_master_logging(master.log(), foreground);
        master.run(client::sd_notify_ready).await;
        Ok(())
    })
}

/// The cookie key the chat workers share, unless the app's environment brings its own
/// (`--env CHAT_SECRET=...`): with Redis, the one stored there for every host on it (the first
/// master stores a new one); else this app's key file, created once.
async fn chat_secret(config: &AppConfig, paths: &AppPaths) -> anyhow::Result<Option<String>> {
    let env = |key: &str| {
        config
            .env
            .iter()
            .rev()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    };
    if let Some(key) = env("CHAT_SECRET") {
        anyhow::ensure!(
            key.len() >= chat::MIN_SECRET_LEN,
            "--env CHAT_SECRET=... is shorter than {} bytes: give a longer key (e.g. `openssl rand -hex 32`)",
            chat::MIN_SECRET_LEN
        );
        return Ok(None);
    }
    let key = match env("REDIS_URL") {
        Some(url) => {
            let redis = coord::RedisConfig {
                prefix: env("CHATCTL_REDIS_PREFIX").unwrap_or("chatctl").to_owned(),
                cluster: env("CHATCTL_REDIS_CLUSTER") == Some("true"),
                ..coord::RedisConfig::new(url)
            };
            shared_secret(redis).await?
        }
        None => {
            paths.create()?;
            chat::load_or_create_secret(&paths.secret).with_context(|| {
                format!(
                    "cannot read or create the cookie key at {}",
                    paths.secret.display()
                )
            })?
        }
    };
    Ok(Some(
        String::from_utf8(key).context("the cookie key is not text")?,
    ))
}

/// The cookie key stored in Redis for every host that shares it (see
/// [`coord::RedisLink::shared_secret`]).
async fn shared_secret(redis: coord::RedisConfig) -> anyhow::Result<Vec<u8>> {
    shared_secret_of(&*coord::RedisLink::new(redis)?).await
}

/// Like [`shared_secret`], through a link the caller already has.
pub async fn shared_secret_of(link: &coord::RedisLink) -> anyhow::Result<Vec<u8>> {
    let prefix = &link.config().prefix;
    let key = link.shared_secret(&chat::new_secret()).await.map_err(|error| {
        anyhow::anyhow!(
            "cannot read the cookie key that hosts on one Redis share ({prefix}:cookie-key): {error} — start Redis first, or give every host the same key with --env CHAT_SECRET=..."
        )
    })?;
    anyhow::ensure!(
        key.len() >= chat::MIN_SECRET_LEN,
        "the cookie key in Redis ({prefix}:cookie-key) is shorter than {} bytes: delete it, or set a longer one",
        chat::MIN_SECRET_LEN
    );
    Ok(key)
}

fn init_master_logging(sink: supervisor::logs::LogSink, foreground: bool) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let file = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(sink);
    let stderr = foreground.then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(file)
        .with(stderr)
        .try_init();
}

pub async fn list(json: bool) -> anyhow::Result<()> {
    let apps = client::list().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&apps)?);
    } else if apps.is_empty() {
        println!("no app running (start one with `chatctl start`)");
    } else {
        print_table(&apps);
    }
    Ok(())
}

pub async fn status(name: &str, json: bool) -> anyhow::Result<()> {
    let status = client::status(name).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!(
        "app {}  master pid {}  listen {}  scheduling {}  up {}",
        status.name,
        status.master_pid,
        status.listen,
        status.scheduling,
        human_duration(status.uptime_ms)
    );
    print_table(std::slice::from_ref(&status));
    for worker in &status.workers {
        if let Some(error) = &worker.last_error {
            println!("worker {}: last failure: {error}", worker.id);
        }
    }
    Ok(())
}

/// reload / restart / scale: prints progress lines, then the result.
pub async fn control(name: &str, request: Request) -> anyhow::Result<()> {
    let response = client::send(name, &request, |line| println!("{line}")).await?;
    match response {
        Response::Done { message } => {
            println!("{name}: {message}");
            Ok(())
        }
        Response::Error { message } => bail!("{name}: {message}"),
        other => bail!("{name}: unexpected answer {other:?}"),
    }
}

pub async fn stop(name: &str) -> anyhow::Result<()> {
    let names = if name == "all" {
        client::running_apps()
    } else {
        vec![name.to_owned()]
    };
    if names.is_empty() {
        println!("no app running");
    }
    for name in names {
        match client::stop(&name).await {
            Ok(()) => println!("{name}: stopped"),
            Err(ClientError::Control(error)) => bail!("{error}"),
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

pub fn logs(name: &str, follow: bool, lines: usize) -> anyhow::Result<()> {
    let paths = AppPaths::new(&home(), name);
    let tail = supervisor::logs::tail(&paths.log_file, lines)
        .with_context(|| format!("no log for app '{name}' at {}", paths.log_file.display()))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in tail {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    if follow {
        supervisor::logs::follow(&paths.log_file, out, || true)?;
    }
    Ok(())
}

fn print_table(apps: &[AppStatus]) {
    println!(
        "{:<12} {:>6} {:>8} {:<16} {:>8} {:>8} {:>6} {:>9} {:>6}",
        "APP", "WORKER", "PID", "STATUS", "UPTIME", "RESTARTS", "CPU", "MEM", "CONNS"
    );
    for app in apps {
        for w in &app.workers {
            println!(
                "{:<12} {:>6} {:>8} {:<16} {:>8} {:>8} {:>5.1}% {:>9} {:>6}",
                app.name,
                w.id,
                w.pid.map_or("-".to_owned(), |p| p.to_string()),
                w.status,
                human_duration(w.uptime_ms),
                w.restarts,
                w.cpu_percent,
                human_bytes(w.memory_bytes),
                w.connections
            );
        }
    }
}

fn human_duration(ms: u64) -> String {
    let d = Duration::from_millis(ms);
    match d.as_secs() {
        0 => format!("{ms}ms"),
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.0}K", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}

//! The app commands: start, run, list, status, reload, restart, scale, stop, logs. Each is a
//! call into the supervisor crate plus printing.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use supervisor::client::{self, AppEntry, ClientError};
use supervisor::paths::{home, AppPaths};
use supervisor::program::Program;
use supervisor::{AppConfig, AppStatus, ConfigFile, Master, Request, Response, Status};

use crate::flags::AppArgs;

/// The app configurations the flags (or the config file) describe. With a config file, every
/// app flag given on the command line applies to every app of the file (a `--user` is never
/// dropped).
pub fn configs(args: &AppArgs) -> anyhow::Result<Vec<AppConfig>> {
    let flags = config_from_flags(args);
    let mut apps = if let Some(name) = &args.app {
        let saved = client::saved(name).with_context(|| {
            format!("no app '{name}' is defined: start one with flags (chatctl start --name {name} ...), or see `chatctl list`")
        })?;
        vec![saved]
    } else if let Some(path) = &args.config_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        ConfigFile::parse(&text)?.app
    } else {
        // Flags that cannot work together are a usage error, like a flag clap refuses.
        flags.validate().map_err(|e| UsageError(e.to_string()))?;
        return Ok(vec![flags]);
    };
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
        "config_file" | "app" | "reload_if_running" | "update_env" => {}
        "listen" => app.listen = flags.listen,
        "no_listen" => app.no_listen = flags.no_listen,
        "instances" => app.instances = flags.instances,
        "user" => app.user.clone_from(&flags.user),
        "max_memory" => app.max_memory = flags.max_memory,
        "log_max_size" => app.log_max_size = flags.log_max_size,
        "log_keep" => app.log_keep = flags.log_keep,
        "log_max_line" => app.log_max_line = flags.log_max_line,
        "log_date_format" => app.log_date_format.clone_from(&flags.log_date_format),
        "log_json" => app.log_json = flags.log_json,
        "log_split" => app.log_split = flags.log_split,
        "first_restart_at_once" => {
            app.restart.first_restart_at_once = flags.restart.first_restart_at_once
        }
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
        "health_url" => app.health.url.clone_from(&flags.health.url),
        "health_tcp" => app.health.tcp = flags.health.tcp,
        "worker_port_base" => app.worker_port_base = flags.worker_port_base,
        "ready_timeout" => app.ready_timeout = flags.ready_timeout,
        "wait_ready" => app.wait_ready = flags.wait_ready,
        "drain_timeout" => app.drain_timeout = flags.drain_timeout,
        "stop_timeout" => app.stop_timeout = flags.stop_timeout,
        "kill_signal" => app.kill_signal = flags.kill_signal,
        "scheduling" => app.scheduling = flags.scheduling,
        "node_id" => app.node_id = flags.node_id,
        "spare" => app.spare = flags.spare,
        "watch" => app.watch.paths.clone_from(&flags.watch.paths),
        "watch_ignore" => app.watch.ignore.clone_from(&flags.watch.ignore),
        "watch_delay" => app.watch.delay = flags.watch.delay,
        "cron_restart" => app.cron_restart.clone_from(&flags.cron_restart),
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

/// The name of an app started without `--name`: `chat` for the chat app, else the file name of
/// the program, or of the script an interpreter runs (`node api.js` is `api`, as in PM2; not
/// code given inline, as in `sh -c '...'`).
fn default_name(command: &[String]) -> String {
    const INTERPRETERS: [&str; 10] = [
        "node", "nodejs", "python", "python3", "ruby", "perl", "php", "bash", "sh", "bun",
    ];
    let file_stem = |path: &str| {
        std::path::Path::new(path)
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
    };
    let Program::External { argv } = Program::of(command) else {
        return "chat".to_owned();
    };
    let Some((program, arguments)) = argv.split_first() else {
        return "chat".to_owned();
    };
    let program_name = file_stem(program).unwrap_or_default();
    let script_at = arguments.iter().position(|arg| !arg.starts_with('-'));
    let inline_code = |at: usize| arguments[..at].iter().any(|arg| arg == "-c" || arg == "-e");
    let script = script_at
        .filter(|at| INTERPRETERS.contains(&program_name.as_str()) && !inline_code(*at))
        .and_then(|at| file_stem(&arguments[at]));
    let name: String = script
        .unwrap_or(program_name)
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if supervisor::config::valid_name(&name) {
        name
    } else {
        "app".to_owned()
    }
}

/// A command line that cannot work as given: `main` prints it in one line and exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `--watch` alone: the working directory; `--watch=A,B`: those, made absolute.
fn watched_paths(args: &AppArgs, cwd: Option<&std::path::Path>) -> Vec<std::path::PathBuf> {
    let Some(given) = &args.watch else {
        return Vec::new();
    };
    let given: Vec<&String> = given.iter().filter(|path| !path.is_empty()).collect();
    let Some(cwd) = cwd else {
        return given.into_iter().map(Into::into).collect();
    };
    if given.is_empty() {
        return vec![cwd.to_owned()];
    }
    given.into_iter().map(|path| cwd.join(path)).collect()
}

fn config_from_flags(args: &AppArgs) -> AppConfig {
    let defaults = AppConfig::default();
    let cwd = std::env::current_dir().ok();
    let chat = Program::of(&args.command).is_built_in();
    AppConfig {
        name: args
            .name
            .clone()
            .unwrap_or_else(|| default_name(&args.command)),
        listen: args.listen,
        no_listen: args.no_listen,
        // One worker per CPU for the chat; one for another program (PM2's default), which may
        // not be written to share a port.
        instances: args
            .instances
            .unwrap_or(if chat { defaults.instances } else { 1 }),
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
        user: args.user.clone(),
        restart: supervisor::RestartPolicy {
            first_restart_at_once: args.first_restart_at_once,
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
            url: args.health_url.clone(),
            tcp: args.health_tcp,
        },
        worker_port_base: args.worker_port_base,
        drain_timeout: args.drain_timeout,
        stop_timeout: args.stop_timeout,
        kill_signal: args.kill_signal,
        ready_timeout: args.ready_timeout,
        wait_ready: args.wait_ready,
        max_memory: args.max_memory,
        log_max_size: args.log_max_size,
        log_keep: args.log_keep,
        log_date_format: args.log_date_format.clone(),
        log_json: args.log_json,
        log_split: args.log_split,
        log_max_line: usize::try_from(args.log_max_line).unwrap_or(usize::MAX),
        spare: usize::from(args.spare),
        watch: supervisor::WatchConfig {
            paths: watched_paths(args, cwd.as_deref()),
            ignore: defaults
                .watch
                .ignore
                .iter()
                .chain(&args.watch_ignore)
                .cloned()
                .collect(),
            delay: args.watch_delay,
        },
        cron_restart: args.cron_restart.clone(),
        cwd,
        ..defaults
    }
}

pub async fn start(args: AppArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the chatctl executable")?;
    let mut failed = false;
    for config in configs(&args)? {
        if args.reload_if_running && client::status(&config.name).await.is_ok() {
            let request = Request::Reload {
                config: Some(Box::new(config.clone())),
                env: args.update_env.then(shell_env),
            };
            control(&config.name, request).await?;
            continue;
        }
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
                    .filter(|_| worker.status != Status::Online)
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
    // The master holds each connection until it is handed to a worker, and its workers inherit
    // the limit it leaves them.
    supervisor::limits::raise_open_files();
    // One thread: the master's work (hand-offs, relays, probes) is many small steps, which
    // threads would only add wake-ups to. Its log has a thread of its own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let name = config.name.clone();
        let built_in = config.program().is_built_in();
        let secret = if built_in {
            chat_secret(&config, &paths).await?
        } else {
            None
        };
        let master = Master::prepare(config, paths).await?;
        if built_in {
            // No Redis: the master keeps the chat's shared state and relays broadcasts.
            master.set_service(std::sync::Arc::new(coord::StoreService::default()));
        }
        if let Some(secret) = secret {
            master.set_secret(secret);
        }
        init_master_logging(master.log(), foreground);
        if let Some(interval) = client::watchdog_interval() {
            tokio::spawn(feed_watchdog(name, interval));
        }
        master.run(client::sd_notify_ready).await;
        Ok(())
    })
}

/// Under systemd with `WatchdogSec=`: pings the watchdog twice per interval while the master
/// answers its own control socket (a hung master is restarted by systemd), with a `STATUS=`
/// line (`2/2 workers online`) for `systemctl status`.
async fn feed_watchdog(name: String, interval: Duration) {
    let mut ticks = tokio::time::interval(interval / 2);
    loop {
        ticks.tick().await;
        if let Ok(status) = client::status(&name).await {
            let online = status
                .workers
                .iter()
                .filter(|w| w.status == Status::Online)
                .count();
            client::sd_notify(&format!(
                "WATCHDOG=1\nSTATUS={online}/{} workers online",
                status.workers.len()
            ));
        }
    }
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
    let given = env("CHAT_SECRET");
    let shared = env("REDIS_URL").map(|url| {
        let redis = coord::RedisConfig {
            prefix: env("CHATCTL_REDIS_PREFIX").unwrap_or("chatctl").to_owned(),
            cluster: env("CHATCTL_REDIS_CLUSTER") == Some("true"),
            ..coord::RedisConfig::new(url)
        };
        async move {
            shared_secret(redis)
                .await
                .map_err(|error| format!("{error:#}"))
        }
    });
    paths.create()?;
    let key = chat::cookie_key(given, shared, &paths.secret).await?;
    // A key of the app's own environment reaches the workers with it (through the secrets
    // pipe): the master has none to hand out.
    if given.is_some() {
        return Ok(None);
    }
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

/// Every defined app: running ones with their workers, stopped ones, and those whose master
/// died (with the last lines of their log).
pub async fn list(json: bool) -> anyhow::Result<()> {
    let entries = client::entries().await;
    if json {
        let listed: Vec<serde_json::Value> = entries.iter().map(entry_json).collect();
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("no app defined (start one with `chatctl start`)");
        return Ok(());
    }
    let running: Vec<AppStatus> = entries
        .iter()
        .filter_map(|entry| match entry {
            AppEntry::Running(status) => Some(status.clone()),
            _ => None,
        })
        .collect();
    if !running.is_empty() {
        print_table(&running);
    }
    for entry in &entries {
        match entry {
            AppEntry::Running(_) => {}
            AppEntry::Stopped(config) => println!(
                "{:<12} stopped (chatctl start {} to run it again)",
                config.name, config.name
            ),
            AppEntry::Dead {
                config, log_tail, ..
            } => {
                println!(
                    "{:<12} master dead: nothing supervises it (chatctl start {} to run it again); last log lines:",
                    config.name, config.name
                );
                for line in log_tail {
                    println!("    {line}");
                }
            }
        }
    }
    Ok(())
}

/// An entry of `list --json`: a running app's status with `"state": "running"`, else its name,
/// address and state (`stopped`, or `dead` with the master's pid and last log lines).
fn entry_json(entry: &AppEntry) -> serde_json::Value {
    use serde_json::json;
    match entry {
        AppEntry::Running(status) => {
            let mut value = serde_json::to_value(status).unwrap_or_default();
            if let Some(object) = value.as_object_mut() {
                object.insert("state".into(), json!("running"));
            }
            value
        }
        AppEntry::Stopped(config) => json!({
            "name": config.name,
            "listen": config.listen.to_string(),
            "state": "stopped",
            "workers": [],
        }),
        AppEntry::Dead {
            config,
            pid,
            log_tail,
        } => json!({
            "name": config.name,
            "listen": config.listen.to_string(),
            "state": "dead",
            "master_pid": pid,
            "log_tail": log_tail,
            "workers": [],
        }),
    }
}

/// `delete NAME|all`.
pub async fn delete(name: &str) -> anyhow::Result<()> {
    let names = if name == "all" {
        supervisor::paths::defined_apps(&home())
    } else {
        vec![name.to_owned()]
    };
    for name in names {
        client::delete(&name).await?;
        println!("{name}: deleted");
    }
    Ok(())
}

/// `save`: what `resurrect` will start.
pub async fn save() -> anyhow::Result<()> {
    let names = client::save().await?;
    println!(
        "saved {} app(s) to {}: {}",
        names.len(),
        client::dump_path().display(),
        names.join(", ")
    );
    Ok(())
}

/// `import-pm2 FILE`: the ecosystem's apps as our TOML on stdout, a note per field left out on
/// stderr. A `.js` ecosystem is a Node module: node reads it, as PM2 does.
pub fn import_pm2(file: &std::path::Path) -> anyhow::Result<()> {
    let json = match file.extension().and_then(|e| e.to_str()) {
        Some("json") => {
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?
        }
        _ => {
            let path = std::path::absolute(file).context("cannot resolve the file's path")?;
            let output = std::process::Command::new("node")
                .args(["-e", "process.stdout.write(JSON.stringify(require(process.argv[1])))"])
                .arg(&path)
                .output()
                .context("reading a .js ecosystem file needs node (Node.js) on the PATH; or give its JSON")?;
            anyhow::ensure!(
                output.status.success(),
                "node could not load {}: {}",
                file.display(),
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
            );
            output.stdout
        }
    };
    let ecosystem: serde_json::Value =
        serde_json::from_slice(&json).with_context(|| format!("{} is not JSON", file.display()))?;
    let imported = supervisor::pm2::import(&ecosystem)?;
    print!("{}", imported.toml);
    for note in &imported.notes {
        eprintln!("chatctl: {note}");
    }
    Ok(())
}

/// `startup`: prints the boot unit and how to enable it; `--install` does it (as root).
pub fn startup(install: bool) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the chatctl executable")?;
    let home = std::path::absolute(home()).context("cannot resolve CHATCTL_HOME")?;
    let user = (!supervisor::running_as_root())
        .then(|| std::env::var("USER").ok())
        .flatten();
    let unit = supervisor::startup::unit(&exe, &home, user.as_deref());
    let saved: Vec<String> = client::saved_apps()
        .map(|apps| apps.into_iter().map(|app| app.name).collect())
        .unwrap_or_default();
    if !install {
        print!("{unit}");
        println!(
            "# as root: put this in {}, then:",
            supervisor::startup::UNIT_PATH
        );
        println!("#   systemctl daemon-reload");
        for name in &saved {
            println!("#   systemctl enable chatctl@{name}");
        }
        if saved.is_empty() {
            println!("#   (no app saved: `chatctl save` while your apps run)");
        }
        return Ok(());
    }
    anyhow::ensure!(
        supervisor::running_as_root(),
        "startup --install writes to /etc/systemd/system: run it as root (or print the unit without --install)"
    );
    std::fs::write(supervisor::startup::UNIT_PATH, unit)
        .with_context(|| format!("cannot write {}", supervisor::startup::UNIT_PATH))?;
    let systemctl = |args: &[&str]| -> anyhow::Result<()> {
        let status = std::process::Command::new("systemctl")
            .args(args)
            .status()
            .context("cannot run systemctl")?;
        anyhow::ensure!(
            status.success(),
            "systemctl {} failed: {status}",
            args.join(" ")
        );
        Ok(())
    };
    systemctl(&["daemon-reload"])?;
    for name in &saved {
        systemctl(&["enable", &format!("chatctl@{name}")])?;
        println!("{name}: enabled (chatctl@{name}.service)");
    }
    println!("wrote {}", supervisor::startup::UNIT_PATH);
    Ok(())
}

/// `resurrect`: starts each saved app that is not running.
pub async fn resurrect() -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the chatctl executable")?;
    for config in client::saved_apps()? {
        if client::status(&config.name).await.is_ok() {
            println!("{}: already running", config.name);
            continue;
        }
        let started = client::start(&config, &exe).await?;
        let online = started
            .status
            .workers
            .iter()
            .filter(|w| w.status == Status::Online)
            .count();
        println!(
            "{}: {online} of {} workers online on {}",
            config.name,
            started.status.workers.len(),
            started.status.listen
        );
    }
    Ok(())
}

/// `status NAME`, or every app's status without a name.
pub async fn status(name: Option<&str>, json: bool) -> anyhow::Result<()> {
    let Some(name) = name else {
        let apps = client::list().await;
        if json {
            println!("{}", serde_json::to_string_pretty(&apps)?);
        } else if apps.is_empty() {
            println!("no app running (start one with `chatctl start`)");
        }
        for app in apps.iter().filter(|_| !json) {
            print_status(app);
        }
        return Ok(());
    };
    let status = client::status(name).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    print_status(&status);
    Ok(())
}

fn print_status(status: &AppStatus) {
    println!(
        "app {}  master pid {}  listen {}  scheduling {}  up {}",
        status.name,
        status.master_pid,
        status.listen,
        status.scheduling,
        human_duration(status.uptime_ms)
    );
    print_table(std::slice::from_ref(status));
    for worker in &status.workers {
        if let Some(error) = &worker.last_error {
            println!("worker {}: last failure: {error}", worker.id);
        }
    }
}

/// `chatctl reload NAME|all [FLAGS]`: with flags (or `-c FILE`), the app's saved settings
/// changed by them; with `--update-env`, this shell's environment.
pub async fn reload(args: AppArgs) -> anyhow::Result<()> {
    let env = args.update_env.then(shell_env);
    let settings_given = args
        .given
        .iter()
        .any(|flag| !matches!(flag.as_str(), "app" | "update_env"));
    let Some(name) = args.app.clone().filter(|_| !settings_given) else {
        if args.app.as_deref() == Some("all") {
            return Err(UsageError(
                "flags given to `reload all` would change every app alike: reload one app by name"
                    .into(),
            )
            .into());
        }
        if args.app.is_none() && args.config_file.is_none() {
            return Err(UsageError("reload needs an app name, `all`, or -c FILE".into()).into());
        }
        for config in configs(&args)? {
            let request = Request::Reload {
                config: Some(Box::new(config.clone())),
                env: env.clone(),
            };
            control(&config.name, request).await?;
        }
        return Ok(());
    };
    control(&name, Request::Reload { config: None, env }).await
}

/// This process's environment, for `--update-env`.
fn shell_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// reload / restart / scale of `name` (`all`: every running app, one after the other): prints
/// progress lines, then the result.
pub async fn control(name: &str, request: Request) -> anyhow::Result<()> {
    for name in app_names(name) {
        let response = client::send(&name, &request, |line| println!("{line}")).await?;
        match response {
            Response::Done { message } => println!("{name}: {message}"),
            Response::Error { message } => bail!("{name}: {message}"),
            other => bail!("{name}: unexpected answer {other:?}"),
        }
    }
    Ok(())
}

/// The apps `name` stands for: every running app for `all`, else itself. Says so when `all`
/// finds none.
fn app_names(name: &str) -> Vec<String> {
    if name != "all" {
        return vec![name.to_owned()];
    }
    let names = client::running_apps();
    if names.is_empty() {
        println!("no app running");
    }
    names
}

pub async fn stop(name: &str) -> anyhow::Result<()> {
    for name in app_names(name) {
        match client::stop(&name).await {
            Ok(()) => println!("{name}: stopped"),
            // Stopping a stopped app is done already.
            Err(ClientError::Control(_)) if client::saved(&name).is_some() => {
                println!("{name}: stopped")
            }
            Err(ClientError::Control(error)) => bail!("{error}"),
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// `chatctl flush NAME` (or `all`).
pub fn flush(name: &str) -> anyhow::Result<()> {
    let names = if name == "all" {
        client::running_apps()
    } else {
        vec![name.to_owned()]
    };
    for name in names {
        let paths = AppPaths::new(&home(), &name);
        if !paths.dir.is_dir() {
            bail!("no app '{name}' is defined: see `chatctl list`");
        }
        let flushed = supervisor::logs::flush(&paths)
            .with_context(|| format!("cannot empty the logs in {}", paths.logs.display()))?;
        println!("{name}: flushed {} log files", flushed.len());
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
        for spare in &app.spares {
            println!(
                "{:<12} {:>6} {:>8} {:<16} {:>8}",
                app.name,
                "spare",
                spare.pid,
                if spare.ready {
                    "spare"
                } else {
                    "spare-starting"
                },
                human_duration(spare.uptime_ms),
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

#[cfg(test)]
mod tests {
    use super::default_name;

    fn name_of(command: &[&str]) -> String {
        default_name(&command.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn an_app_is_named_after_its_program_or_script() {
        assert_eq!(name_of(&[]), "chat");
        assert_eq!(name_of(&["serve", "--port", "1"]), "chat");
        assert_eq!(name_of(&["node", "api.js"]), "api");
        assert_eq!(
            name_of(&["/usr/bin/python3", "-u", "jobs/worker.py"]),
            "worker"
        );
        assert_eq!(name_of(&["/bin/sh", "-c", "exec sleep 1"]), "sh");
        assert_eq!(name_of(&["node", "-e", "1"]), "node");
        assert_eq!(name_of(&["/opt/bin/my server"]), "my-server");
    }
}

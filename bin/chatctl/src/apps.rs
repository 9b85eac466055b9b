//! The commands on apps that run: list, status, reload, restart, scale, stop, logs, and the
//! saved list (save, resurrect, delete, startup, import-pm2). Each is a call into the
//! supervisor crate plus printing.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use supervisor::client::{self, AppEntry, ClientError};
use supervisor::paths::{home, AppPaths};
use supervisor::{AppStatus, Request, Response, Status};

use crate::app_config::{configs, UsageError};
use crate::flags::AppArgs;

/// Every defined app: running ones with their workers, stopped ones, and those whose master
/// died (with the last lines of their log).
pub async fn list(json: bool) -> anyhow::Result<()> {
    let entries = client::entries().await;
    if json {
        let listed: Vec<serde_json::Value> = entries.iter().map(entry_json).collect();
        println!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    print!("{}", list_text(&entries));
    Ok(())
}

/// What `list` prints for `entries`: the running apps' workers as a table, then a line for
/// each app that does not run.
pub(crate) fn list_text(entries: &[AppEntry]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if entries.is_empty() {
        out.push_str("no app defined (start one with `chatctl start`)\n");
        return out;
    }
    let running: Vec<AppStatus> = entries
        .iter()
        .filter_map(|entry| match entry {
            AppEntry::Running(status) => Some(status.clone()),
            _ => None,
        })
        .collect();
    if !running.is_empty() {
        out.push_str(&table_text(&running));
        for app in &running {
            let _ = writeln!(
                out,
                "{:<12} master {} (chatctl {}) on {}",
                app.name, app.master_pid, app.version, app.listen
            );
        }
    }
    for entry in entries {
        match entry {
            AppEntry::Running(_) => {}
            AppEntry::Stopped(config) => {
                let _ = writeln!(
                    out,
                    "{:<12} stopped (chatctl start {} to run it again)",
                    config.name, config.name
                );
            }
            AppEntry::Dead {
                config, log_tail, ..
            } => {
                let _ = writeln!(
                    out,
                    "{:<12} master dead: nothing supervises it (chatctl start {} to run it again); last log lines:",
                    config.name, config.name
                );
                for line in log_tail {
                    let _ = writeln!(out, "    {line}");
                }
            }
        }
    }
    out
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
        "app {}  master pid {}  version {}  listen {}  scheduling {}  up {}",
        status.name,
        status.master_pid,
        status.version,
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

/// `chatctl upgrade NAME`: the app's master replaced by one started from `binary` (by default
/// the file the master was started from), its port open throughout.
pub async fn upgrade(
    name: &str,
    binary: Option<std::path::PathBuf>,
    timeout: Option<Duration>,
) -> anyhow::Result<()> {
    // The master runs in `/`: a relative path means this shell's directory.
    let binary = binary
        .map(std::path::absolute)
        .transpose()
        .context("cannot resolve the --binary path")?;
    let request = Request::Upgrade {
        binary,
        timeout_ms: timeout.map(|t| t.as_millis() as u64),
    };
    control(name, request).await
}

/// This process's environment, for `--update-env`.
pub(crate) fn shell_env() -> Vec<(String, String)> {
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

pub(crate) fn print_table(apps: &[AppStatus]) {
    print!("{}", table_text(apps));
}

/// The workers of `apps` as `list` shows them, one line each.
fn table_text(apps: &[AppStatus]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:>6} {:>8} {:<16} {:>8} {:>8} {:>6} {:>9} {:>6}",
        "APP", "WORKER", "PID", "STATUS", "UPTIME", "RESTARTS", "CPU", "MEM", "CONNS"
    );
    for app in apps {
        for w in &app.workers {
            let _ = writeln!(
                out,
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
            let _ = writeln!(
                out,
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
    out
}

pub(crate) fn human_duration(ms: u64) -> String {
    let d = Duration::from_millis(ms);
    match d.as_secs() {
        0 => format!("{ms}ms"),
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub(crate) fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.0}K", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}

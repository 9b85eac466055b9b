//! What the `chatctl` commands do against masters: start one as a daemon and wait for its
//! workers, ask for status, send control requests, stop apps.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::config::AppConfig;
use crate::control::{self, AppStatus, ControlError, Request, Response, Status};
use crate::paths::{app_names, defined_apps, home, AppPaths};
use crate::procstat;

/// Why a command against an app failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Config(#[from] crate::ConfigError),
    #[error("app '{0}' is already running — see `chatctl list`, or `chatctl stop {0}` first")]
    AlreadyRunning(String),
    #[error("cannot start the master: {0}")]
    Spawn(std::io::Error),
    #[error("the master of '{name}' could not start: {details}")]
    MasterFailed { name: String, details: String },
    #[error("the master of '{0}' did not answer within {1:?}; see `chatctl logs {0}`")]
    Timeout(String, Duration),
    #[error("{0}")]
    Control(#[from] ControlError),
    #[error("{0}")]
    Refused(String),
    #[error("cannot write {path}: {source}")]
    Files {
        path: String,
        source: std::io::Error,
    },
}

/// The outcome of `start`: the app's status once every worker is online, or once one failed.
pub struct Started {
    pub status: AppStatus,
    pub all_online: bool,
    /// The last log lines, when something failed.
    pub log_tail: Vec<String>,
}

/// Starts a daemonized master for `config` by running `exe master --name NAME`, and waits until
/// every worker is online or one of them has failed.
pub async fn start(config: &AppConfig, exe: &Path) -> Result<Started, ClientError> {
    config.validate()?;
    let paths = AppPaths::new(&home(), &config.name);
    if control::is_alive(&paths.control).await {
        return Err(ClientError::AlreadyRunning(config.name.clone()));
    }
    let files = |path: &Path| {
        let path = path.display().to_string();
        move |source| ClientError::Files { path, source }
    };
    paths.create().map_err(files(&paths.dir))?;
    // The definition this start replaces: put back if the master cannot start, so a failed
    // start leaves the app as it was (a new app: not defined at all).
    let previous = std::fs::read(&paths.config).ok();
    let json = serde_json::to_vec_pretty(config).unwrap_or_default();
    std::fs::write(&paths.config, json).map_err(files(&paths.config))?;
    let result = spawn_master(config, exe, &paths).await;
    if matches!(
        result,
        Err(ClientError::MasterFailed { .. } | ClientError::Spawn(_))
    ) {
        match previous {
            Some(previous) => {
                let _ = std::fs::write(&paths.config, previous);
            }
            None => {
                let _ = std::fs::remove_file(&paths.config);
            }
        }
    }
    result
}

/// Runs `exe master --name NAME` as a daemon and waits for its workers.
async fn spawn_master(
    config: &AppConfig,
    exe: &Path,
    paths: &AppPaths,
) -> Result<Started, ClientError> {
    let files = |path: &Path| {
        let path = path.display().to_string();
        move |source| ClientError::Files { path, source }
    };
    let stderr =
        std::fs::File::create(&paths.master_stderr).map_err(files(&paths.master_stderr))?;

    // A listening socket systemd (or systemd-socket-activate) gave `start`: the master serves
    // on it, as fd 3 with `LISTEN_FDS=1`, started through `sh` for its `LISTEN_PID`.
    let inherited = sticky::listen::inherited().ok().flatten();
    let mut command = match &inherited {
        Some(_) => {
            let mut command = std::process::Command::new("/bin/sh");
            command
                .arg("-c")
                .arg(crate::inherited::EXEC_WITH_LISTEN_PID)
                .arg("chatctl-master")
                .arg(exe)
                .env("LISTEN_FDS", "1");
            command
        }
        None => std::process::Command::new(exe),
    };
    let keep_inherited = inherited.is_some();
    command
        .arg("master")
        .arg("--name")
        .arg(&config.name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid and close_range are async-signal-safe. setsid detaches the master from
    // our terminal and makes it the leader of the app's process group; close_range (which nix
    // does not wrap) drops whatever descriptors our caller leaked to us, so a daemon holds no
    // one else's pipes.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid()?;
            let first_closed = if keep_inherited {
                // The inherited socket stays, open across exec (fcntl is async-signal-safe).
                libc::fcntl(crate::inherited::LISTEN_FD, libc::F_SETFD, 0);
                crate::inherited::LISTEN_FD as u32 + 1
            } else {
                3
            };
            libc::syscall(libc::SYS_close_range, first_closed, u32::MAX, 0u32);
            Ok(())
        });
    }
    let mut master = command.spawn().map_err(ClientError::Spawn)?;
    // The master has its copy.
    drop(inherited);

    let deadline = Instant::now() + config.ready_timeout + Duration::from_secs(10);
    loop {
        if let Ok(Some(exit)) = master.try_wait() {
            let stderr = std::fs::read_to_string(&paths.master_stderr).unwrap_or_default();
            return Err(ClientError::MasterFailed {
                name: config.name.clone(),
                details: start_up_failure(&stderr, exit),
            });
        }
        if let Ok(status) = status(&config.name).await {
            let all_online = status.workers.iter().all(|w| w.status == Status::Online);
            let failed = status
                .workers
                .iter()
                .any(|w| w.status != Status::Online && (w.restarts > 0 || w.last_error.is_some()));
            if all_online || failed {
                let log_tail = if all_online {
                    Vec::new()
                } else {
                    crate::logs::tail(&paths.log_file, 15).unwrap_or_default()
                };
                return Ok(Started {
                    status,
                    all_online,
                    log_tail,
                });
            }
        }
        if Instant::now() > deadline {
            return Err(ClientError::Timeout(
                config.name.clone(),
                config.ready_timeout,
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Why a master exited during start-up, from its stderr. A refusal (address in use, bad user)
/// is one `chatctl: reason` line: that reason alone, so that `start` says it in one line too.
/// Anything else (a panic) is shown whole.
fn start_up_failure(stderr: &str, exit: std::process::ExitStatus) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        [] => format!("master {exit}"),
        [line] => line.strip_prefix("chatctl: ").unwrap_or(line).to_owned(),
        _ => lines.join("\n"),
    }
}

/// The status of one running app.
pub async fn status(name: &str) -> Result<AppStatus, ClientError> {
    match send(name, &Request::Status, |_| {}).await? {
        Response::Status(status) => Ok(status),
        other => Err(ClientError::Refused(format!(
            "unexpected answer: {other:?}"
        ))),
    }
}

/// The status of every running app.
pub async fn list() -> Vec<AppStatus> {
    let mut all = Vec::new();
    for name in app_names(&home()) {
        if let Ok(status) = status(&name).await {
            all.push(status);
        }
    }
    all
}

/// One defined app, as `chatctl list` shows it.
#[derive(Debug)]
pub enum AppEntry {
    Running(AppStatus),
    /// Stopped by `chatctl stop` (or never started since `save` / `resurrect`): its definition
    /// waits for `chatctl start NAME`.
    Stopped(AppConfig),
    /// Its master died without stopping (killed, crashed): nothing supervises its workers. The
    /// last lines of its log say why.
    Dead {
        config: AppConfig,
        pid: Option<u32>,
        log_tail: Vec<String>,
    },
}

impl AppEntry {
    pub fn name(&self) -> &str {
        match self {
            AppEntry::Running(status) => &status.name,
            AppEntry::Stopped(config) | AppEntry::Dead { config, .. } => &config.name,
        }
    }
}

/// Every defined app: running, stopped or with a dead master.
pub async fn entries() -> Vec<AppEntry> {
    let home = home();
    let mut all = Vec::new();
    for name in defined_apps(&home) {
        let paths = AppPaths::new(&home, &name);
        if let Ok(status) = status(&name).await {
            all.push(AppEntry::Running(status));
            continue;
        }
        let Some(config) = definition(&paths) else {
            continue;
        };
        // A clean stop removes the control socket and the pid file; a master that died
        // leaves them.
        if paths.control.exists() || paths.pid.exists() {
            all.push(AppEntry::Dead {
                config,
                pid: master_pid(&paths),
                log_tail: crate::logs::tail(&paths.log_file, 5).unwrap_or_default(),
            });
        } else {
            all.push(AppEntry::Stopped(config));
        }
    }
    all
}

/// The saved definition of app `name`, if it has one.
pub fn saved(name: &str) -> Option<AppConfig> {
    definition(&AppPaths::new(&home(), name))
}

fn definition(paths: &AppPaths) -> Option<AppConfig> {
    let text = std::fs::read(&paths.config).ok()?;
    serde_json::from_slice(&text).ok()
}

fn master_pid(paths: &AppPaths) -> Option<u32> {
    std::fs::read_to_string(&paths.pid)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .filter(|pid| *pid > 1 && *pid <= i32::MAX as u32)
}

/// Stops app `name` if it runs, then removes everything of it: definition, logs, key.
pub async fn delete(name: &str) -> Result<(), ClientError> {
    let paths = AppPaths::new(&home(), name);
    if !paths.config.exists() && !paths.control.exists() {
        return Err(ClientError::Refused(format!(
            "no app '{name}' — see `chatctl list`"
        )));
    }
    match stop(name).await {
        Ok(()) | Err(ClientError::Control(ControlError::NotRunning(..))) => {}
        Err(error) => return Err(error),
    }
    std::fs::remove_dir_all(&paths.dir).map_err(|source| ClientError::Files {
        path: paths.dir.display().to_string(),
        source,
    })
}

/// Where `save` keeps the apps `resurrect` starts: `$CHATCTL_HOME/dump.json`.
pub fn dump_path() -> std::path::PathBuf {
    home().join("dump.json")
}

/// `save`: the definitions of the running apps, for `resurrect`. Returns their names.
pub async fn save() -> Result<Vec<String>, ClientError> {
    let home = home();
    let configs: Vec<AppConfig> = list()
        .await
        .iter()
        .filter_map(|status| definition(&AppPaths::new(&home, &status.name)))
        .collect();
    let path = dump_path();
    let json = serde_json::to_vec_pretty(&configs).unwrap_or_default();
    let files = |source| ClientError::Files {
        path: path.display().to_string(),
        source,
    };
    // Written whole or not at all: a crash mid-write must not lose the previous dump.
    let partial = path.with_extension("json.partial");
    std::fs::create_dir_all(&home).map_err(files)?;
    std::fs::write(&partial, json).map_err(files)?;
    std::fs::rename(&partial, &path).map_err(files)?;
    Ok(configs.into_iter().map(|config| config.name).collect())
}

/// The apps `save` wrote, for `resurrect`.
pub fn saved_apps() -> Result<Vec<AppConfig>, ClientError> {
    let path = dump_path();
    let text = std::fs::read(&path).map_err(|_| {
        ClientError::Refused(format!(
            "nothing saved at {}: run `chatctl save` while your apps run",
            path.display()
        ))
    })?;
    serde_json::from_slice(&text).map_err(|error| {
        ClientError::Refused(format!("{} is not a chatctl dump: {error}", path.display()))
    })
}

/// Sends a control request; progress lines go to `on_progress`.
pub async fn send(
    name: &str,
    request: &Request,
    on_progress: impl FnMut(&str),
) -> Result<Response, ClientError> {
    let paths = AppPaths::new(&home(), name);
    Ok(control::request(name, &paths.control, request, on_progress).await?)
}

/// Names of the running apps.
pub fn running_apps() -> Vec<String> {
    app_names(&home())
}

/// Stops an app and makes sure nothing of it is left: the master drains and stops its workers,
/// then its whole process group is killed.
pub async fn stop(name: &str) -> Result<(), ClientError> {
    let paths = AppPaths::new(&home(), name);
    let master_pid = master_pid(&paths);
    let answered = control::request(name, &paths.control, &Request::Stop, |_| {}).await;
    if let Some(pid) = master_pid {
        let group_is_ours = if answered.is_ok() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while procstat::is_running(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            true
        } else {
            // No answer: the pid file may be stale (the master was killed), and its pid may
            // belong to another program by now. The group is ours if the pid still names this
            // app's master (hung), or names no process: a group id stays reserved while the
            // group has members, so then it can only be the dead master's leftovers.
            !procstat::is_running(pid)
                || procstat::command_line(pid).is_some_and(|args| {
                    args.windows(3)
                        .any(|w| w[0] == "master" && w[1] == "--name" && w[2] == name)
                })
        };
        if group_is_ours {
            // Anything left in the app's process group (programs the workers started) goes too.
            // The master was a group leader (setsid). A group that is gone has nothing to kill.
            if let Ok(group) = i32::try_from(pid) {
                let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
            }
            // SIGKILL takes effect asynchronously: return once the group is gone, so that what
            // it held (the app's port) is free for the next `start`.
            let deadline = Instant::now() + Duration::from_secs(5);
            while procstat::group_running(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    paths.remove_runtime_files();
    match answered {
        Ok(_) => Ok(()),
        Err(ControlError::NotRunning(..)) if master_pid.is_some() => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Tells systemd (`NOTIFY_SOCKET`) that the service is ready.
pub fn sd_notify_ready() {
    sd_notify("READY=1");
}

/// `CLOCK_MONOTONIC` in microseconds, as `MONOTONIC_USEC=` of sd_notify(3) wants it.
pub fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|now| now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

/// The watchdog interval systemd asks of this process (`WatchdogSec=`: `WATCHDOG_USEC`, for
/// this pid), if any.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_us = std::env::var("WATCHDOG_PID")
        .ok()
        .is_none_or(|pid| pid.parse::<u32>().ok() == Some(std::process::id()));
    (for_us && usec > 0).then(|| Duration::from_micros(usec))
}

/// Sends `state` (`READY=1`, `STATUS=...`, `WATCHDOG=1`, ...) to systemd's `NOTIFY_SOCKET`;
/// does nothing outside systemd.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(error) = sent {
        tracing::warn!(%error, "cannot notify systemd ({state})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_start_up_refusal_is_reported_in_one_line() {
        let exit = std::process::ExitStatus::from_raw(1 << 8);
        assert_eq!(
            start_up_failure("chatctl: cannot bind 127.0.0.1:3000: in use\n", exit),
            "cannot bind 127.0.0.1:3000: in use"
        );
        assert_eq!(start_up_failure("", exit), "master exit status: 1");
        let panic = "thread 'main' panicked at x.rs:1:1:\nboom\nnote: run with RUST_BACKTRACE=1\n";
        assert_eq!(start_up_failure(panic, exit).lines().count(), 3);
    }
}

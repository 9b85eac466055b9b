//! Event hooks (`--on-event CMD`): a command the operator gives, run through `sh -c` when
//! something happens to the app that a person should hear about (a crash, a crash loop, a
//! failed health check, a memory replacement, a reload's outcome), with what happened in its
//! environment.
//!
//! A hook must never hurt what it reports on: it is spawned and never waited for under the
//! master's state lock, at most `max_per_minute` start in any minute (the rest are counted and
//! logged as skipped), and one still running after `timeout` is killed with its whole process
//! group. It runs as the master's user with a cleared environment: the master's own variables
//! (which may hold the operator's secrets) do not reach it, only the few a shell needs and the
//! event's `CHATCTL_*` variables.

use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::lines::{BoundedLines, Line};
use crate::logs::LogSink;

/// The hook settings of an app (`--on-event`, `--on-event-timeout`, `--on-event-rate`; the
/// `[app.hooks]` table of a config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HookConfig {
    /// The command, run with `sh -c`; none: no hook.
    pub on_event: Option<String>,
    /// Longest a hook may run before it is killed, with every process it started.
    #[serde(with = "crate::millis")]
    pub timeout: Duration,
    /// Hooks started in any minute at most; further events are counted and logged as skipped
    /// (a crash loop must not fork a mailer per crash).
    pub max_per_minute: u32,
    /// How many of the worker's last output lines the hook gets (`CHATCTL_LOG_LINES`), within
    /// [`MAX_LOG_BYTES`].
    pub log_lines: usize,
}

impl Default for HookConfig {
    fn default() -> Self {
        HookConfig {
            on_event: None,
            timeout: Duration::from_secs(10),
            max_per_minute: 10,
            log_lines: 20,
        }
    }
}

impl HookConfig {
    /// Checks what serde cannot; the message names the fix.
    pub fn validate(&self) -> Result<(), String> {
        if self
            .on_event
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err("--on-event is empty: give a command, e.g. --on-event 'mail -s \"$CHATCTL_EVENT\" ops@example.com'".into());
        }
        if self.timeout.is_zero() {
            return Err("--on-event-timeout must be above zero".into());
        }
        if self.max_per_minute == 0 || self.max_per_minute > MAX_PER_MINUTE {
            return Err(format!(
                "--on-event-rate must be between 1 and {MAX_PER_MINUTE} hooks a minute, not {}",
                self.max_per_minute
            ));
        }
        if self.log_lines > MAX_LOG_LINES {
            return Err(format!(
                "hook log lines must be at most {MAX_LOG_LINES}, not {}",
                self.log_lines
            ));
        }
        Ok(())
    }
}

/// The most hooks a minute `--on-event-rate` allows: more is a fork bomb, not a notification.
pub const MAX_PER_MINUTE: u32 = 600;
/// The most log lines a hook may ask for.
pub const MAX_LOG_LINES: usize = 200;
/// The most bytes of log lines a hook gets, the newest kept: an environment variable is
/// limited (128 KiB on Linux) and a mail body should stay readable.
pub const MAX_LOG_BYTES: usize = 8 << 10;
/// How much of the end of a log file is searched for a worker's lines.
const TAIL_WINDOW: u64 = 256 << 10;
/// Longest line of a hook's own output copied into the app log.
const HOOK_MAX_LINE: usize = 4 << 10;

/// What a hook is run for (`CHATCTL_EVENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookEvent {
    /// A worker exited without being asked to.
    Crash,
    /// A worker crashed so often in a row that it is marked errored (it keeps retrying slowly).
    Errored,
    /// A worker missed its health probes and was killed.
    HealthFailure,
    /// A worker went above `--max-memory` and is being replaced.
    MemoryRestart,
    /// A reload replaced every worker.
    ReloadDone,
    /// A reload stopped: a new worker did not come up; the old ones keep serving.
    ReloadFailed,
}

impl HookEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::Crash => "crash",
            HookEvent::Errored => "errored",
            HookEvent::HealthFailure => "health_failure",
            HookEvent::MemoryRestart => "memory_restart",
            HookEvent::ReloadDone => "reload_done",
            HookEvent::ReloadFailed => "reload_failed",
        }
    }
}

/// One thing that happened, as the state machine saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Occurrence {
    pub event: HookEvent,
    /// The worker's position (its `w0` in the log), if it is about one.
    pub worker: Option<usize>,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    /// What happened, in one sentence (`CHATCTL_MESSAGE`).
    pub message: String,
}

impl Occurrence {
    /// An occurrence about worker `worker` (process `pid`).
    pub fn about(
        event: HookEvent,
        worker: usize,
        pid: Option<u32>,
        message: impl Into<String>,
    ) -> Occurrence {
        Occurrence {
            worker: Some(worker),
            pid,
            ..Occurrence::about_app(event, message)
        }
    }

    /// An occurrence about the whole app (a reload).
    pub fn about_app(event: HookEvent, message: impl Into<String>) -> Occurrence {
        Occurrence {
            event,
            worker: None,
            pid: None,
            exit_code: None,
            exit_signal: None,
            message: message.into(),
        }
    }
}

/// Which hooks may start: at most `max` in any minute.
#[derive(Debug, Default)]
pub struct RateWindow {
    /// When the hooks of the last minute started, oldest first (at most `max`).
    started: VecDeque<Instant>,
    /// Events skipped since the last hook that ran.
    skipped: u64,
}

impl RateWindow {
    /// Whether a hook may start at `now`: Ok with the number skipped before it, or Err with
    /// the number skipped so far, this one included.
    pub fn admit(&mut self, now: Instant, max: u32) -> Result<u64, u64> {
        while self
            .started
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= Duration::from_secs(60))
        {
            self.started.pop_front();
        }
        if self.started.len() >= max as usize {
            self.skipped += 1;
            return Err(self.skipped);
        }
        self.started.push_back(now);
        Ok(std::mem::take(&mut self.skipped))
    }
}

/// Where a worker's output lines are, and how they are written.
#[derive(Debug, Clone)]
pub struct WorkerLogs {
    /// The files holding workers' lines (app.log, or out.log and err.log when split).
    pub files: Vec<PathBuf>,
    /// Lines are JSON objects (`--log-json`).
    pub json: bool,
}

/// Runs an app's hooks; one per master.
pub struct Hooks {
    window: Mutex<RateWindow>,
    /// Process groups of the hooks still running, killed when the master exits.
    running: Arc<Mutex<HashSet<u32>>>,
    log: LogSink,
}

impl Hooks {
    pub fn new(log: LogSink) -> Hooks {
        Hooks {
            window: Mutex::new(RateWindow::default()),
            running: Arc::default(),
            log,
        }
    }

    /// Starts the hook for `occurrence`, if one is configured and the rate allows. Returns at
    /// once: the hook runs on a task of its own. Must be called within a tokio runtime.
    pub fn fire(&self, app: &str, config: &HookConfig, logs: WorkerLogs, occurrence: Occurrence) {
        let Some(command) = config.on_event.clone() else {
            return;
        };
        let event = occurrence.event.as_str();
        let admitted = self
            .window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .admit(Instant::now(), config.max_per_minute);
        match admitted {
            Err(skipped) => {
                tracing::warn!(
                    event,
                    worker = occurrence.worker,
                    skipped,
                    "event hook skipped: {} hooks ran in the last minute (--on-event-rate); {skipped} skipped since the last one ran",
                    config.max_per_minute
                );
                return;
            }
            Ok(skipped) if skipped > 0 => {
                tracing::info!(
                    event,
                    skipped,
                    "event hook runs again after {skipped} skipped"
                );
            }
            Ok(_) => {}
        }
        let run = HookRun {
            command,
            app: app.to_owned(),
            timeout: config.timeout,
            log_lines: config.log_lines,
            logs,
            occurrence,
            log: self.log.clone(),
            running: self.running.clone(),
        };
        tokio::spawn(run.run());
    }

    /// Kills every hook still running, with its process group (the master is exiting).
    pub fn kill_all(&self) {
        let running = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for group in running.iter() {
            kill_group(*group);
        }
    }
}

/// One hook on its way.
struct HookRun {
    command: String,
    app: String,
    timeout: Duration,
    log_lines: usize,
    logs: WorkerLogs,
    occurrence: Occurrence,
    log: LogSink,
    running: Arc<Mutex<HashSet<u32>>>,
}

impl HookRun {
    async fn run(self) {
        let event = self.occurrence.event.as_str();
        let worker = self.occurrence.worker;
        let lines = match worker {
            Some(worker) if self.log_lines > 0 => {
                let (sink, logs, wanted) = (self.log.clone(), self.logs.clone(), self.log_lines);
                tokio::task::spawn_blocking(move || {
                    // The worker's last words may still be queued for the log writer.
                    sink.flush(Duration::from_millis(500));
                    worker_lines(&logs, worker, wanted, MAX_LOG_BYTES)
                })
                .await
                .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        let mut command = tokio::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(&self.command)
            .env_clear()
            .envs(kept_environment())
            .envs(event_environment(&self.app, &self.occurrence, &lines))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            // A group of its own: a deadline kills everything the hook started, never the
            // master or its workers.
            .process_group(0);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                tracing::error!(event, worker, %error, "cannot run the event hook with /bin/sh");
                return;
            }
        };
        let Some(pid) = child.id() else {
            return;
        };
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(pid);
        let mut output = tokio::task::JoinSet::new();
        if let Some(stdout) = child.stdout.take() {
            output.spawn(copy_output(stdout, self.log.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            output.spawn(copy_output(stderr, self.log.clone()));
        }
        match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(Ok(status)) if status.success() => {
                tracing::info!(event, worker, pid, "event hook done");
            }
            Ok(Ok(status)) => {
                tracing::warn!(event, worker, pid, "event hook failed: {status}");
            }
            Ok(Err(error)) => {
                tracing::warn!(event, worker, pid, %error, "lost track of the event hook");
            }
            Err(_) => {
                kill_group(pid);
                let _ = child.wait().await;
                tracing::warn!(
                    event,
                    worker,
                    pid,
                    "event hook still running after {:?}: killed it and every process it started (see --on-event-timeout)",
                    self.timeout
                );
            }
        }
        // Reaped: its pid may name another process from now on, never to be signalled.
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&pid);
        // What the hook printed last; a process it left in the background may hold its
        // output open, and is not waited for.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while output.join_next().await.is_some() {}
        })
        .await;
        output.abort_all();
    }
}

/// Copies a hook's output into the app log as `hook | ...` lines.
async fn copy_output(output: impl tokio::io::AsyncRead + Unpin, log: LogSink) {
    let mut lines = BoundedLines::new(tokio::io::BufReader::new(output), HOOK_MAX_LINE);
    while let Ok(Some(line)) = lines.next_line().await {
        let (Line::Complete(bytes) | Line::Overlong(bytes)) = line;
        log.line("hook", &String::from_utf8_lossy(&bytes));
    }
}

fn kill_group(group: u32) {
    if let Ok(group) = i32::try_from(group) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(group),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// What a hook keeps of the master's environment: what a shell and its tools need to run,
/// nothing that could be a secret.
fn kept_environment() -> Vec<(String, String)> {
    const KEPT: [&str; 10] = [
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "TZ",
        "TMPDIR",
        "CHATCTL_HOME",
    ];
    let mut kept: Vec<(String, String)> = KEPT
        .iter()
        .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
        .collect();
    if !kept.iter().any(|(name, _)| name == "PATH") {
        kept.push(("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()));
    }
    kept
}

/// The `CHATCTL_*` variables that tell a hook what happened.
pub fn event_environment(
    app: &str,
    occurrence: &Occurrence,
    log_lines: &[String],
) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "CHATCTL_EVENT".to_owned(),
            occurrence.event.as_str().to_owned(),
        ),
        ("CHATCTL_APP".to_owned(), app.to_owned()),
        ("CHATCTL_MESSAGE".to_owned(), occurrence.message.clone()),
        (
            "CHATCTL_TIME".to_owned(),
            crate::timestamp::format_utc(std::time::SystemTime::now(), "%Y-%m-%dT%H:%M:%SZ"),
        ),
        ("CHATCTL_LOG_LINES".to_owned(), log_lines.join("\n")),
    ];
    let optional = [
        ("CHATCTL_WORKER", occurrence.worker.map(|w| w.to_string())),
        ("CHATCTL_PID", occurrence.pid.map(|p| p.to_string())),
        (
            "CHATCTL_EXIT_CODE",
            occurrence.exit_code.map(|c| c.to_string()),
        ),
        (
            "CHATCTL_EXIT_SIGNAL",
            occurrence.exit_signal.map(|s| s.to_string()),
        ),
    ];
    env.extend(
        optional
            .into_iter()
            .filter_map(|(name, value)| Some((name.to_owned(), value?))),
    );
    env
}

/// The last `wanted` lines worker `worker` wrote, from the ends of its log files, newest last,
/// at most `max_bytes` in all (the newest kept).
pub fn worker_lines(
    logs: &WorkerLogs,
    worker: usize,
    wanted: usize,
    max_bytes: usize,
) -> Vec<String> {
    let plain = [format!("w{worker} | "), format!("w{worker} err | ")];
    let mut found = Vec::new();
    for file in &logs.files {
        let Ok(lines) = crate::logs::tail_within(file, TAIL_WINDOW) else {
            continue;
        };
        found.extend(lines.into_iter().filter(|line| {
            if logs.json {
                serde_json::from_str::<serde_json::Value>(line)
                    .is_ok_and(|v| v["worker"].as_u64() == Some(worker as u64))
            } else {
                plain.iter().any(|prefix| line.starts_with(prefix.as_str()))
            }
        }));
    }
    // Split logs: out.log's lines, then err.log's; the last `wanted` of each file are what
    // the hook gets either way.
    let mut kept = VecDeque::new();
    let mut bytes = 0;
    for line in found.into_iter().rev() {
        if kept.len() == wanted || bytes + line.len() + 1 > max_bytes {
            break;
        }
        bytes += line.len() + 1;
        kept.push_front(line);
    }
    kept.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_hooks_start_in_a_minute_and_the_skipped_are_counted() {
        let mut window = RateWindow::default();
        let start = Instant::now();
        assert_eq!(window.admit(start, 2), Ok(0));
        assert_eq!(window.admit(start + Duration::from_secs(1), 2), Ok(0));
        assert_eq!(window.admit(start + Duration::from_secs(2), 2), Err(1));
        assert_eq!(window.admit(start + Duration::from_secs(30), 2), Err(2));
        // A minute after the first, one may start again, and says how many were skipped.
        assert_eq!(window.admit(start + Duration::from_secs(60), 2), Ok(2));
        assert_eq!(window.admit(start + Duration::from_secs(60), 2), Err(1));
    }

    #[test]
    fn a_hook_gets_the_event_and_only_the_fields_it_has() {
        let occurrence = Occurrence {
            exit_signal: Some(9),
            ..Occurrence::about(HookEvent::Crash, 1, Some(4321), "worker 1 was killed")
        };
        let env = event_environment("chat", &occurrence, &["w1 | bye".into()]);
        let get = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(get("CHATCTL_EVENT"), Some("crash"));
        assert_eq!(get("CHATCTL_APP"), Some("chat"));
        assert_eq!(get("CHATCTL_WORKER"), Some("1"));
        assert_eq!(get("CHATCTL_PID"), Some("4321"));
        assert_eq!(get("CHATCTL_EXIT_SIGNAL"), Some("9"));
        assert_eq!(get("CHATCTL_EXIT_CODE"), None);
        assert_eq!(get("CHATCTL_LOG_LINES"), Some("w1 | bye"));
    }

    #[test]
    fn a_workers_last_lines_are_found_and_bounded() {
        let dir = std::env::temp_dir().join(format!("chatctl-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("app.log");
        let mut text = String::new();
        for i in 0..50 {
            text.push_str(&format!(
                "w0 | zero {i}\nw1 | one {i}\nw10 | ten {i}\nmaster | x\n"
            ));
        }
        text.push_str("w1 err | last words\n");
        std::fs::write(&path, text).unwrap();
        let logs = WorkerLogs {
            files: vec![path],
            json: false,
        };
        let lines = worker_lines(&logs, 1, 3, MAX_LOG_BYTES);
        assert_eq!(lines, ["w1 | one 48", "w1 | one 49", "w1 err | last words"]);
        // The byte bound keeps the newest lines whole.
        let lines = worker_lines(&logs, 0, 20, 30);
        assert_eq!(lines, ["w0 | zero 48", "w0 | zero 49"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_config_file_sets_hooks_in_an_app_hooks_table() {
        let file = crate::ConfigFile::parse(
            "[[app]]\nname = \"api\"\n[app.hooks]\non_event = \"logger -t chatctl\"\ntimeout = 500\n",
        )
        .unwrap();
        let hooks = &file.app[0].hooks;
        assert_eq!(hooks.on_event.as_deref(), Some("logger -t chatctl"));
        assert_eq!(hooks.timeout, Duration::from_millis(500));
        assert_eq!(hooks.max_per_minute, HookConfig::default().max_per_minute);
        assert!(crate::ConfigFile::parse(
            "[[app]]\nname = \"api\"\n[app.hooks]\non_event = \"x\"\nmax_per_minute = 0\n"
        )
        .is_err());
        assert!(crate::ConfigFile::parse(
            "[[app]]\nname = \"api\"\n[app.hooks]\ncommand = \"x\"\n"
        )
        .is_err());
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        assert!(HookConfig::default().validate().is_ok());
        let bad = [
            HookConfig {
                on_event: Some("  ".into()),
                ..HookConfig::default()
            },
            HookConfig {
                timeout: Duration::ZERO,
                ..HookConfig::default()
            },
            HookConfig {
                max_per_minute: 0,
                ..HookConfig::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}

//! What the cross-process tests of `chatctl` share: an app under test with its own state
//! directory and loopback port (stopped when the test ends, even by a panic), waiting on
//! conditions instead of sleeping, and looking at processes through /proc.

#![allow(dead_code, unused_imports)] // each test file uses its own part of this module

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub mod admin;
pub mod http_load;

/// How long any condition may take before the test fails. Generous: the machine may be busy
/// running other tests, and a deadline only costs time when something is broken.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Fast health probes, so a hung worker is found in about a second.
pub const QUICK_HEALTH: &[&str] = &[
    "--health-interval",
    "300ms",
    "--health-timeout",
    "200ms",
    "--health-misses",
    "2",
    "--restart-delay",
    "50ms",
];

/// How often conditions are re-checked.
const POLL: Duration = Duration::from_millis(75);

pub fn chatctl_exe() -> &'static str {
    env!("CARGO_BIN_EXE_chatctl")
}

/// Whether the tests run as root (where workers run as `nobody` unless `--user` says otherwise).
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// One app under test: its own `CHATCTL_HOME` and port. Dropping it stops the app (whatever
/// state the test left it in) and removes the state directory.
pub struct App {
    pub name: String,
    pub home: PathBuf,
    pub port: u16,
}

impl App {
    pub fn new(name: &str) -> App {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let home = std::env::temp_dir().join(format!(
            "chatctl-test-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home).expect("cannot create the test's CHATCTL_HOME");
        // Workers run as `nobody` under root and start in the directory `start` ran in: make
        // it one they may enter.
        set_mode(&home, 0o755);
        App {
            name: name.to_owned(),
            home,
            port: testkit::port(),
        }
    }

    pub fn listen(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `chatctl ARGS` against this app's state directory.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_of(Path::new(chatctl_exe()), args)
    }

    /// Like [`App::command`], running the chatctl executable at `exe` (a copy of the one
    /// under test).
    pub fn command_of(&self, exe: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(exe);
        command
            .args(args)
            .env("CHATCTL_HOME", &self.home)
            .env("RUST_LOG", "info")
            .current_dir(&self.home);
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run chatctl {args:?}: {e}"))
    }

    /// `chatctl start` of this app on its port with `flags`, running `program` (the chat app
    /// when empty). As root, the workers run as `nobody` (the default account).
    pub fn start(&self, flags: &[&str], program: &[&str]) -> Output {
        let mut command = self.start_command(flags, program);
        command
            .output()
            .unwrap_or_else(|e| panic!("cannot run chatctl start {flags:?}: {e}"))
    }

    /// The command of [`App::start`], for a test to change (its environment) before it runs.
    pub fn start_command(&self, flags: &[&str], program: &[&str]) -> Command {
        let listen = self.listen();
        let mut args = vec!["start", "--name", &self.name, "--listen", &listen];
        args.extend_from_slice(flags);
        if !program.is_empty() {
            args.push("--");
            args.extend_from_slice(program);
        }
        self.command(&args)
    }

    /// Like [`App::start`], but the test cannot go on unless it succeeds.
    pub fn start_ok(&self, flags: &[&str], program: &[&str]) -> Value {
        let output = self.start(flags, program);
        assert!(
            output.status.success(),
            "chatctl start failed ({}):\n{}\n{}\nlog:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log_text()
        );
        self.status()
            .expect("no status right after a successful start")
    }

    /// `chatctl status NAME --json`, or None when the app does not answer.
    pub fn status(&self) -> Option<Value> {
        let output = self.run(&["status", &self.name, "--json"]);
        if !output.status.success() {
            return None;
        }
        serde_json::from_slice(&output.stdout).ok()
    }

    /// `chatctl list --json`.
    pub fn list(&self) -> Vec<Value> {
        let output = self.run(&["list", "--json"]);
        assert!(output.status.success(), "chatctl list --json failed");
        serde_json::from_slice(&output.stdout).expect("chatctl list --json printed no JSON array")
    }

    /// This app's entry of `list --json`.
    pub fn listed(&self) -> Option<Value> {
        self.list()
            .into_iter()
            .find(|app| app["name"] == self.name.as_str())
    }

    /// Polls `list --json` until `condition` holds on this app's entry; returns that entry.
    pub fn wait_listed(&self, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let mut last = None;
        let found = wait_for_value(what, || {
            let app = self.listed();
            let done = app.as_ref().is_some_and(&condition);
            last = app.clone();
            done.then_some(app).flatten()
        });
        found.unwrap_or_else(|| {
            panic!(
                "timed out waiting for {what}; last listing: {}\nlog:\n{}",
                last.map_or("none".into(), |v| v.to_string()),
                self.log_text()
            )
        })
    }

    pub fn master_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.home.join("apps").join(&self.name).join("master.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn app_dir(&self) -> PathBuf {
        self.home.join("apps").join(&self.name)
    }

    /// The app log, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.app_dir().join("logs").join("app.log")).unwrap_or_default()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        // Every app of this state directory, not only `name`: a test may have started others,
        // and a panic must not leave their masters running.
        let _ = self.command(&["stop", "all"]).output();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// The workers of a `status` / `list` entry.
pub fn workers(app: &Value) -> &[Value] {
    app["workers"].as_array().map_or(&[], |w| w.as_slice())
}

pub fn worker_pids(app: &Value) -> Vec<u32> {
    workers(app)
        .iter()
        .filter_map(|w| w["pid"].as_u64())
        .map(|pid| pid as u32)
        .collect()
}

/// The pid of worker `worker` of a `status` / `list` entry (0 when it has none).
pub fn pid_of(app: &Value, worker: usize) -> u32 {
    workers(app)
        .get(worker)
        .and_then(|w| w["pid"].as_u64())
        .unwrap_or(0) as u32
}

pub fn all_online(app: &Value, count: usize) -> bool {
    let workers = workers(app);
    workers.len() == count
        && workers
            .iter()
            .all(|w| w["status"] == "online" && w["pid"].is_u64())
}

/// Calls `probe` until it returns Some, for at most [`DEADLINE`].
pub fn wait_for_value<T>(what: &str, probe: impl FnMut() -> Option<T>) -> Option<T> {
    let value = testkit::poll_until(DEADLINE, POLL, probe);
    if value.is_none() {
        eprintln!("gave up waiting for {what}");
    }
    value
}

/// Waits until `condition` holds; panics after [`DEADLINE`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    if wait_for_value(what, || condition().then_some(())).is_none() {
        panic!("timed out after {DEADLINE:?} waiting for {what}");
    }
}

/// Whether a process is running. A zombie is not: it has exited and only waits for its parent
/// (often init, for a daemon) to collect it.
pub fn alive(pid: u32) -> bool {
    match process_state(pid) {
        Some(state) => state != 'Z' && state != 'X',
        None => false,
    }
}

/// The state letter of /proc/PID/stat (R, S, T, Z, ...).
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: fields follow the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Live processes whose process group is `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let fields: Vec<String> = stat
                        .rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect();
                    // state, ppid, pgrp
                    Some(fields.get(2)?.parse::<u32>().ok()? == pgid && fields[0] != "Z")
                })
                .unwrap_or(false)
        })
        .collect()
}

pub fn signal(pid: u32, signal: libc::c_int) {
    assert!(pid > 1, "refusing to signal pid {pid}");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("a pid fits an i32"));
    let signal = nix::sys::signal::Signal::try_from(signal).expect("a signal number");
    // A process already gone is what some tests wait for.
    let _ = nix::sys::signal::kill(pid, signal);
}

/// The stdout of a command that must have succeeded; its output in the failure otherwise.
pub fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Non-empty lines of a command's stderr.
pub fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

/// `GET path` on a fresh connection; the status code and body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    testkit::http::get(port, path)
}

/// `http_get` on a connection opened before.
pub fn http_get_on(stream: std::net::TcpStream, path: &str) -> std::io::Result<(u16, String)> {
    testkit::http::get_on(stream, path)
}

/// `node` with the npm Socket.IO client, and the Python with python-socketio, as the test kit
/// finds them.
pub use testkit::clients::{node as node_program, python as python_program};

/// A Node.js client program of `tests/clients/` (npm socket.io-client users) that prints one
/// JSON report per line and reads its next phase from stdin; killed if the test ends early.
pub struct ClientScript {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    reports: mpsc::Receiver<Value>,
}

impl ClientScript {
    /// `node tests/clients/SCRIPT ARGS...`.
    pub fn start(node: &Path, script: &str, args: &[&str]) -> ClientScript {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/clients")
            .join(script);
        let mut child = Command::new(node)
            .arg(&path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", node.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, reports) = mpsc::channel();
        let name = script.to_owned();
        let prefix = name.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(report) => {
                        if tx.send(report).is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("{prefix}: {line}"),
                }
            }
        });
        ClientScript {
            name,
            stdin: child.stdin.take(),
            child,
            reports,
        }
    }

    /// The users of `polling_room.mjs`: `transports` is `polling` (long-polling only) or
    /// `upgrade` (polling, then websocket).
    pub fn polling_room(node: &Path, url: &str, count: usize, transports: &str) -> ClientScript {
        let count = count.to_string();
        ClientScript::start(node, "polling_room.mjs", &[url, &count, transports])
    }

    /// The next report line; a program that goes quiet fails the test.
    pub fn next_report(&mut self) -> Value {
        // The programs' own watchdogs fire first; this only catches a hung `node`.
        match self.reports.recv_timeout(DEADLINE * 3) {
            Ok(report) => report,
            Err(_) => panic!(
                "{} reported nothing (exit status {:?})",
                self.name,
                self.child.try_wait().ok().flatten()
            ),
        }
    }

    /// Sends the program one line: what the test just did.
    pub fn tell(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("cannot write to {}: {e}", self.name));
    }

    /// Tells the program `line` (what the test did), and returns its `done` report once it
    /// exited successfully; `log` (the app's) goes into a failure's message.
    pub fn tell_and_wait_done(&mut self, line: &str, log: impl Fn() -> String) -> Value {
        self.tell(line);
        let done = self.next_report();
        assert_eq!(
            done["event"],
            "done",
            "{}: {done}\nlog:\n{}",
            self.name,
            log()
        );
        self.wait_success();
        done
    }

    pub fn wait_success(&mut self) {
        let status = self
            .child
            .wait()
            .expect("cannot wait for the client program");
        assert!(status.success(), "{} failed: {status}", self.name);
    }
}

impl Drop for ClientScript {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub use testkit::redis::RedisServer;

/// The report of clients/recovering_room.mjs after a fault: every receiver got every message
/// the server accepted exactly once, every socket that was disconnected came back recovered,
/// and nobody was announced as leaving.
pub fn assert_nothing_lost(done: &Value) {
    assert_eq!(done["lost"], 0, "messages lost: {done}");
    // What the sender said on its connection as its worker died never reached the server
    // (a client's emit without an ack has no delivery guarantee): one message at 70 ms
    // intervals, two with long-polling's batching.
    assert!(
        done["never_arrived"].as_u64() <= Some(2),
        "messages said while the worker died: {done}"
    );
    assert_eq!(done["repeated"], 0, "messages repeated: {done}");
    // The kill hit users: their sockets came back, each recovered.
    assert!(
        done["disconnects"].as_u64() > Some(0),
        "the kill disconnected nobody: {done}"
    );
    assert_eq!(done["not_recovered"], 0, "sockets not recovered: {done}");
    assert_eq!(done["sender_not_recovered"], 0, "{done}");
    assert_eq!(
        done["recovered"], done["disconnects"],
        "every disconnected socket comes back recovered: {done}"
    );
    // Back within the presence grace: nobody was announced as leaving.
    assert_eq!(done["user_left"], serde_json::json!([]), "{done}");
    // Nor as entering again when it came back.
    assert_eq!(done["user_entered"], serde_json::json!([]), "{done}");
}

/// Every socket was handed to a new worker (live hand-off, see handoff.rs): none had to come
/// back, and none missed or repeated a message.
pub fn assert_moved_live(done: &serde_json::Value) {
    assert_eq!(done["lost"], 0, "messages lost: {done}");
    assert_eq!(done["never_arrived"], 0, "{done}");
    assert_eq!(done["repeated"], 0, "messages repeated: {done}");
    assert_eq!(done["disconnects"], 0, "sockets disconnected: {done}");
    assert_eq!(done["sender_disconnects"], 0, "{done}");
    assert_eq!(done["user_left"], serde_json::json!([]), "{done}");
    assert_eq!(done["user_entered"], serde_json::json!([]), "{done}");
}

//! The real clients the interop tests drive: `node` with the npm packages of `ops/js`, the
//! Python venv of `ops/python` (both installed by `ops/test-deps.sh`), and running a client
//! program to completion under a deadline.
//!
//! A missing client fails the test, telling the reader what to run: an interop test that skips
//! proves nothing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The workspace's root folder (where `ops/` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `node`, once `ops/js/node_modules/PACKAGE` is known to be installed (e.g.
/// `socket.io-client`, `socket.io-client-0.9`) and `node` runs.
pub fn node_with(package: &str) -> PathBuf {
    let module = workspace_root().join("ops/js/node_modules").join(package);
    assert!(
        module.exists(),
        "{} is missing: the npm package {package} is not installed; run ops/test-deps.sh",
        module.display()
    );
    match node_major_version() {
        Ok(_) => PathBuf::from("node"),
        Err(message) => panic!("{message}"),
    }
}

/// `node` with the npm Socket.IO client installed.
pub fn node() -> PathBuf {
    node_with("socket.io-client")
}

/// The major version of `node` (`node --version` is asked once per test process).
pub fn node_major_version() -> Result<u32, String> {
    static VERSION: OnceLock<Result<u32, String>> = OnceLock::new();
    VERSION
        .get_or_init(|| {
            let output = Command::new("node")
                .arg("--version")
                .output()
                .map_err(|error| {
                    format!("cannot run `node` ({error}): install Node.js; run ops/test-deps.sh")
                })?;
            if !output.status.success() {
                return Err(format!(
                    "`node --version` failed ({}): run ops/test-deps.sh",
                    output.status
                ));
            }
            let version = String::from_utf8_lossy(&output.stdout);
            version
                .trim()
                .trim_start_matches('v')
                .split('.')
                .next()
                .and_then(|major| major.parse().ok())
                .ok_or_else(|| format!("unexpected `node --version` output {version:?}"))
        })
        .clone()
}

/// The Python with python-socketio's client, websocket-client and requests: `$CHATCTL_PYTHON`,
/// else the venv `ops/test-deps.sh` makes. Checked once per test process.
pub fn python() -> PathBuf {
    static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let python = std::env::var_os("CHATCTL_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("ops/python/.venv/bin/python"));
        let imports = Command::new(&python)
            .args(["-c", "import socketio, engineio, websocket, requests"])
            .output();
        match imports {
            Ok(output) if output.status.success() => Ok(python),
            Ok(output) => Err(format!(
                "{} cannot import python-socketio[client] and requests ({}): run ops/test-deps.sh",
                python.display(),
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .last()
                    .unwrap_or("no error output")
            )),
            Err(error) => Err(format!(
                "cannot run {} ({error}): the Python client venv is missing; run ops/test-deps.sh \
                 (or set CHATCTL_PYTHON)",
                python.display()
            )),
        }
    });
    match checked {
        Ok(path) => path.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// How a client program run ended.
pub struct ChildRun {
    /// `None` when the program overran its deadline and was killed.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl ChildRun {
    /// Both outputs, for a failure message.
    pub fn report(&self) -> String {
        format!(
            "--- stdout ---\n{}--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

fn collect(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs `command` to completion, or stops it at `deadline`: SIGTERM first (a browser driver
/// then closes the browser it started), SIGKILL after `grace`. Only this child's pid is
/// signalled.
pub fn run_bounded(mut command: Command, deadline: Duration, grace: Duration) -> ChildRun {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {command:?} ({error}): run ops/test-deps.sh"));
    let pid = child.id().to_string();
    let stdout = collect(child.stdout.take().expect("stdout is piped"));
    let stderr = collect(child.stderr.take().expect("stderr is piped"));
    let (exited, exit) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited.send(child.wait());
    });
    let status = match exit.recv_timeout(deadline) {
        Ok(status) => Some(status.expect("waiting for the client program")),
        Err(_) => {
            // `child` belongs to the waiting thread; its pid is still ours to signal, since that
            // thread has not reaped it.
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            if exit.recv_timeout(grace).is_err() {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                let _ = exit.recv_timeout(Duration::from_secs(5));
            }
            None
        }
    };
    ChildRun {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}

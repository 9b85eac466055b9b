//! What the interop tests share: a real server in a runtime of its own, the real clients as
//! child processes, and waits that are conditions with deadlines.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use socketio::{SocketIo, SocketIoConfig};

/// How long any one client process may run before it is killed and the test fails. Generous:
/// the scenarios take well under a second, but CI machines run many tests at once.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(30);
/// How long a server-side condition may take to become true.
pub const CONDITION_DEADLINE: Duration = Duration::from_secs(15);

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

pub use testkit::wait_until;

/// Timers short enough that heartbeats run during every scenario, long enough for a loaded CI
/// machine.
pub fn test_config() -> SocketIoConfig {
    let mut config = SocketIoConfig {
        connect_timeout: Duration::from_secs(5),
        ack_timeout: Duration::from_secs(10),
        ..SocketIoConfig::default()
    };
    config.engine.ping_interval = Duration::from_millis(500);
    config.engine.ping_timeout = Duration::from_secs(10);
    config.engine.upgrade_timeout = Duration::from_secs(5);
    config
}

/// A Socket.IO server on loopback, with a tokio runtime of its own so that stopping it is like
/// a process exiting: every task, listener and TCP connection goes away, kept-alive polling
/// connections included.
pub struct TestServer {
    pub io: SocketIo,
    pub addr: SocketAddr,
    /// The accept loop; stopping it first is what keeps clients from reaching a stopping server.
    accepting: Option<tokio::task::JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TestServer {
    /// Serves, on any free port, the namespaces `setup` declares.
    pub fn start(setup: impl FnOnce(&SocketIo)) -> Self {
        Self::start_with(test_config(), setup)
    }

    /// Like [`TestServer::start`], with `config` instead of [`test_config`].
    pub fn start_with(config: SocketIoConfig, setup: impl FnOnce(&SocketIo)) -> Self {
        let listener =
            Self::bind(0).unwrap_or_else(|error| panic!("cannot bind 127.0.0.1:0: {error}"));
        Self::serve_with(listener, config, setup)
    }

    /// Like [`TestServer::start`], on a port of the test kit (outside the kernel's ephemeral
    /// range and reserved for this test process): while this server is stopped, nothing else can
    /// take its port, so [`TestServer::restart_on`] can bind it.
    pub fn start_restartable(setup: impl FnOnce(&SocketIo)) -> Self {
        let port = testkit::port();
        let listener = Self::bind(port)
            .unwrap_or_else(|error| panic!("cannot bind the reserved port {port}: {error}"));
        Self::serve(listener, setup)
    }

    /// Serves again on the port of a stopped server.
    pub fn restart_on(port: u16, setup: impl FnOnce(&SocketIo)) -> Self {
        let listener = Self::bind(port)
            .unwrap_or_else(|error| panic!("cannot bind 127.0.0.1:{port} again: {error}"));
        Self::serve(listener, setup)
    }

    /// The standard library sets `SO_REUSEADDR` on Unix listeners, so connections of a stopped
    /// server still in TIME_WAIT do not keep the next one from binding the port.
    fn bind(port: u16) -> std::io::Result<std::net::TcpListener> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    fn serve(listener: std::net::TcpListener, setup: impl FnOnce(&SocketIo)) -> Self {
        Self::serve_with(listener, test_config(), setup)
    }

    fn serve_with(
        listener: std::net::TcpListener,
        config: SocketIoConfig,
        setup: impl FnOnce(&SocketIo),
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime for the test server");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let listener = {
            let _runtime = runtime.enter();
            tokio::net::TcpListener::from_std(listener).expect("a listener the runtime can poll")
        };
        let io = SocketIo::new(config);
        setup(&io);
        let serving = io.clone();
        let accepting = runtime.spawn(async move {
            if let Err(error) = serving.serve(listener).await {
                eprintln!("test server stopped accepting: {error}");
            }
        });
        TestServer {
            io,
            addr,
            accepting: Some(accepting),
            runtime: Some(runtime),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Runs `work` on the server's runtime, as its handlers run, and waits for it.
    pub fn block_on<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        self.runtime
            .as_ref()
            .expect("the server runs until stopped")
            .block_on(work)
    }

    pub fn session_count(&self) -> usize {
        self.io.engine().session_count()
    }

    /// Stops the way a server process exits: it stops accepting (the listener closes, so a
    /// reconnecting client cannot reach this server again), closes every session (clients are
    /// told where their transport allows it), then drops the runtime with every connection.
    /// The port is then free for the next server.
    pub fn stop(mut self) {
        let runtime = self
            .runtime
            .take()
            .expect("a running server has its runtime");
        if let Some(accepting) = self.accepting.take() {
            accepting.abort();
            // Returns once the task, and with it the listener, is dropped.
            let _ = runtime.block_on(accepting);
        }
        self.io.close();
        wait_until(
            "the stopped server's sessions to end",
            CONDITION_DEADLINE,
            || self.session_count() == 0,
        );
        runtime.shutdown_timeout(Duration::from_secs(5));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What the server's handlers saw, for the test to assert on. Handlers push JSON values; the
/// test waits for the ones it expects.
#[derive(Clone, Default)]
pub struct Observations(Arc<Mutex<Vec<Value>>>);

impl Observations {
    pub fn record(&self, value: Value) {
        self.0.lock().expect("observations lock").push(value);
    }

    pub fn all(&self) -> Vec<Value> {
        self.0.lock().expect("observations lock").clone()
    }

    /// The first observation with this `"what"`, waiting for it.
    pub fn wait_for(&self, what: &str) -> Value {
        let until = Instant::now() + CONDITION_DEADLINE;
        loop {
            if let Some(found) = self.all().into_iter().find(|v| v["what"] == what) {
                return found;
            }
            assert!(
                Instant::now() < until,
                "timed out after {CONDITION_DEADLINE:?} waiting for the server to observe \
                 {what:?}; it observed {:?}",
                self.all()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Which real client a test drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// npm socket.io-client 4.x, from ops/js/node_modules.
    Node,
    /// PyPI python-socketio 5.x, from the ops/python venv.
    Python,
}

impl ClientKind {
    /// The program and leading arguments that run this client's script. Panics, telling the
    /// reader what to run, when the client is not installed: a missing client must fail the
    /// test, never skip it.
    fn command(self) -> Command {
        match self {
            ClientKind::Node => {
                let mut command = Command::new(testkit::clients::node());
                command.arg(clients_dir().join("node_client.mjs"));
                command
            }
            ClientKind::Python => {
                let mut command = Command::new(testkit::clients::python());
                command
                    .arg("-u")
                    .arg(clients_dir().join("python_client.py"));
                command
            }
        }
    }
}

/// A real client running one scenario in a child process. It prints one JSON object per line;
/// the test reads them as they come. Killed (by its pid, through `Child::kill`) when the test
/// is over or its deadline passes.
pub struct ClientProcess {
    label: String,
    child: Child,
    /// Where a scenario that waits for the test's go reads it.
    stdin: Option<std::process::ChildStdin>,
    lines: Receiver<Value>,
    /// Every line so far, for the failure message.
    seen: Vec<Value>,
    /// Lines no `expect` has taken yet: what a client's handlers print on one connection is
    /// ordered, but across handlers and promise continuations it need not be.
    unread: Vec<Value>,
    stderr: Option<JoinHandle<String>>,
    deadline: Instant,
}

impl ClientProcess {
    /// Starts `<client> <url> <scenario> <transport> <rooms>`.
    pub fn spawn(
        kind: ClientKind,
        url: &str,
        scenario: &str,
        transport: &str,
        rooms: &str,
    ) -> Self {
        let label = format!("{kind:?} client, scenario {scenario} ({transport})");
        let mut child = kind
            .command()
            .args([url, scenario, transport, rooms])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start the {label}: {error}"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "event": "unparsed", "line": line }));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        ClientProcess {
            label,
            child,
            stdin,
            lines,
            seen: Vec::new(),
            unread: Vec::new(),
            stderr: Some(stderr),
            deadline: Instant::now() + CLIENT_DEADLINE,
        }
    }

    /// Takes the earliest line not taken yet whose `"event"` is `event`, waiting for it; fails
    /// on an error line, an early exit or the deadline.
    pub fn expect(&mut self, event: &str) -> Value {
        loop {
            if let Some(at) = self.unread.iter().position(|v| v["event"] == event) {
                return self.unread.remove(at);
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(value) => {
                    self.seen.push(value.clone());
                    if value["event"] == "error" {
                        self.fail(&format!("reported an error while waiting for {event:?}"));
                    }
                    self.unread.push(value);
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.fail(&format!("printed no {event:?} within {CLIENT_DEADLINE:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.fail(&format!("exited before it printed {event:?}"))
                }
            }
        }
    }

    /// Writes `line` to the client's stdin (scenarios that wait for the test's go).
    pub fn say(&mut self, line: &str) {
        use std::io::Write;
        let written = self
            .stdin
            .as_mut()
            .map(|stdin| writeln!(stdin, "{line}").and_then(|()| stdin.flush()));
        if !matches!(written, Some(Ok(()))) {
            self.fail(&format!("could not be told {line:?}"));
        }
    }

    /// Waits for the client to print `done` and exit with status 0.
    pub fn finish(mut self) {
        self.expect("done");
        let status = self.wait_exit();
        if !status.success() {
            self.fail(&format!("exited with {status}"));
        }
    }

    fn wait_exit(&mut self) -> ExitStatus {
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() >= self.deadline {
                self.fail("did not exit after it printed done");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the client and panics with everything it printed.
    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(value) = self.lines.try_recv() {
            self.seen.push(value);
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|handle| handle.join().ok())
            .unwrap_or_default();
        let stdout: Vec<String> = self.seen.iter().map(Value::to_string).collect();
        panic!(
            "the {} {what}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.label,
            stdout.join("\n"),
            stderr.trim_end()
        );
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

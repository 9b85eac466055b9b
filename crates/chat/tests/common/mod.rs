//! What the chat's cross-process tests share: running a real client program to completion,
//! bounded by a deadline, and keeping everything it printed for the failure message.

#![allow(dead_code)] // Each test file uses part of it.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

/// A real `ChatServer` on a loopback port, in a runtime of its own, for a client program to
/// talk to. [`BackgroundServer::stop`] ends it and fails the test if it stopped with an error.
pub struct BackgroundServer {
    runtime: tokio::runtime::Runtime,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
    pub url: String,
}

impl BackgroundServer {
    pub fn start(config: chat::ChatConfig) -> BackgroundServer {
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("the bound address");
        let server =
            chat::ChatServer::new(config, std::sync::Arc::new(chat::MemoryStore::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = runtime.spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                    // The client has exited: nothing is left to drain.
                    Duration::from_secs(1)
                })
                .await
        });
        BackgroundServer {
            runtime,
            stop,
            serving,
            url: format!("http://{address}"),
        }
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        let served = self.runtime.block_on(self.serving);
        self.runtime.shutdown_timeout(Duration::from_secs(5));
        match served {
            Ok(Ok(())) => {}
            Ok(Err(error)) => panic!("the server stopped with an error: {error}"),
            Err(error) => panic!("the server task failed: {error}"),
        }
    }
}

//! The chat's login and Socket.IO events (DESIGN §7) as a real Python client sees them: a
//! `ChatServer` runs in this process and `tests/py/chat_protocol.py` drives it with `requests`
//! and python-socketio 5.x, step by step (see that script for the steps).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chat::{ChatConfig, ChatServer, MemoryStore};

/// The scenario takes a few seconds; this only bounds a hung client or server.
const CLIENT_DEADLINE: Duration = Duration::from_secs(60);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's interpreter (or `$CHATCTL_PYTHON`), checked to have the client libraries. A
/// missing client fails the test: an interop test that skips proves nothing.
fn python_program() -> PathBuf {
    let python = std::env::var_os("CHATCTL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("ops/python/.venv/bin/python"));
    match Command::new(&python)
        .args(["-c", "import socketio, engineio, websocket, requests"])
        .output()
    {
        Ok(output) if output.status.success() => python,
        Ok(output) => panic!(
            "{} cannot import python-socketio[client] and requests ({}): run ops/test-deps.sh",
            python.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => panic!(
            "cannot run {} ({error}): the Python client venv is missing; run ops/test-deps.sh \
             (or set CHATCTL_PYTHON)",
            python.display()
        ),
    }
}

/// Limits small enough for the script to reach them quickly; it relies on these values.
fn test_config() -> ChatConfig {
    ChatConfig {
        secret: b"events_python test secret".to_vec(),
        max_message_chars: 100,
        messages_per_second: 5,
        ..ChatConfig::default()
    }
}

fn collect(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

struct ClientRun {
    /// `None` when the client overran [`CLIENT_DEADLINE`] and was killed.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs the script against `base_url` to completion, or kills it (by pid) at the deadline.
fn run_client(base_url: &str) -> ClientRun {
    let python = python_program();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/chat_protocol.py");
    let started = Instant::now();
    let mut child = Command::new(&python)
        .arg("-u")
        .arg(&script)
        .arg(base_url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", python.display()));
    let pid = child.id();
    let stdout = collect(child.stdout.take().expect("stdout is piped"));
    let stderr = collect(child.stderr.take().expect("stderr is piped"));
    let (exited, exit) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = exited.send(child.wait());
    });
    let status = match exit.recv_timeout(CLIENT_DEADLINE) {
        Ok(status) => Some(status.expect("waiting for the Python client")),
        Err(_) => {
            // `child` belongs to the waiting thread; its pid is still ours to kill, since that
            // thread has not reaped it.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            let _ = exit.recv_timeout(Duration::from_secs(5));
            None
        }
    };
    ClientRun {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}

#[test]
fn python_client_sees_login_rooms_messages_and_refusals() {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind 127.0.0.1:0");
    let address = listener.local_addr().expect("the bound address");
    let server = ChatServer::new(test_config(), Arc::new(MemoryStore::default()));
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

    let run = run_client(&format!("http://{address}"));

    let _ = stop.send(());
    let served = runtime.block_on(serving);
    runtime.shutdown_timeout(Duration::from_secs(5));

    let report = format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        run.stdout, run.stderr
    );
    match run.status {
        None => panic!(
            "the Python client did not finish within {CLIENT_DEADLINE:?} and was killed\n{report}"
        ),
        Some(status) => assert!(
            status.success(),
            "the Python client failed ({status}) after {:?}\n{report}",
            run.elapsed
        ),
    }
    println!("{report}");
    match served {
        Ok(Ok(())) => {}
        Ok(Err(error)) => panic!("the server stopped with an error: {error}"),
        Err(error) => panic!("the server task failed: {error}"),
    }
}

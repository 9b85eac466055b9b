//! The chat's login and Socket.IO events (DESIGN §7) as a real Python client sees them: a
//! `ChatServer` runs in this process and `tests/py/chat_protocol.py` drives it with `requests`
//! and python-socketio 5.x, step by step (see that script for the steps).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{run_bounded, BackgroundServer, ChildRun};

use chat::ChatConfig;

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

/// Runs the script against `base_url` to completion, or kills it at the deadline.
fn run_client(base_url: &str) -> ChildRun {
    let python = python_program();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/chat_protocol.py");
    let mut command = Command::new(&python);
    command.arg("-u").arg(&script).arg(base_url);
    run_bounded(command, CLIENT_DEADLINE, Duration::ZERO)
}

#[test]
fn python_client_sees_login_rooms_messages_and_refusals() {
    let server = BackgroundServer::start(test_config());
    let run = run_client(&server.url);
    server.stop();

    let report = run.report();
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
}

//! The chat's login and Socket.IO events (DESIGN §7) as a real Python client sees them: a
//! `ChatServer` runs in this process and `tests/py/chat_protocol.py` drives it with `requests`
//! and python-socketio 5.x, step by step (see that script for the steps).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{run_bounded, ChildRun};

use chat::ChatConfig;

/// The scenario takes a few seconds; this only bounds a hung client or server.
const CLIENT_DEADLINE: Duration = Duration::from_secs(60);

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
    let python = testkit::clients::python();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/chat_protocol.py");
    let mut command = Command::new(&python);
    command.arg("-u").arg(&script).arg(base_url);
    run_bounded(command, CLIENT_DEADLINE, Duration::ZERO)
}

#[test]
fn python_client_sees_login_rooms_messages_and_refusals() {
    let server = common::chat_server(test_config());
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

//! Our browser Socket.IO client (`assets/socket.io.js`, served as `chat::CLIENT_JS`) against real
//! servers: the scenarios of `tests/js/client_test.mjs` run in Node, once against our
//! `socketio::SocketIo` server in this process and once against the Node.js reference server
//! (npm `socket.io`, `tests/js/reference_server.mjs`). Both servers implement the same events, so
//! a scenario that passes on one and fails on the other points at a server difference.
//!
//! Needs `node` and the npm packages of `ops/js` (`ops/test-deps.sh` installs both).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use engineio::EngineConfig;
use serde_json::{json, Value};
use socketio::{ConnectError, RecoveryConfig, Socket, SocketIo, SocketIoConfig};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// The whole scenario run: about 5 s when idle, much more when the machine is busy.
const CLIENT_RUN_DEADLINE: Duration = Duration::from_secs(240);
/// How long the reference server may take to print its port.
const REFERENCE_START_DEADLINE: Duration = Duration::from_secs(60);

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// The flags node needs, after checking that node and the npm packages are installed.
fn node_flags() -> Vec<&'static str> {
    let ops_js = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/js/node_modules/socket.io");
    assert!(
        ops_js.exists(),
        "{} is missing: run ops/test-deps.sh",
        ops_js.display()
    );
    let version = std::process::Command::new("node")
        .arg("--version")
        .output()
        .unwrap_or_else(|error| panic!("cannot run node ({error}): run ops/test-deps.sh"));
    let version = String::from_utf8_lossy(&version.stdout);
    let major: u32 = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .unwrap_or_else(|| panic!("unexpected `node --version` output {version:?}"));
    assert!(
        major >= 20,
        "node {version} is too old: the client needs Node 20 or later"
    );
    // Node 22 has a global WebSocket; Node 20 has it behind this flag.
    if major < 22 {
        vec!["--experimental-websocket"]
    } else {
        Vec::new()
    }
}

/// Our server with the events the scenarios use (the same as `reference_server.mjs`). Frequent
/// pings, so that the heartbeat scenario sees many quickly; a pong timeout generous enough for a
/// busy machine.
fn scenario_server() -> SocketIo {
    let io = SocketIo::new(SocketIoConfig {
        engine: EngineConfig {
            ping_interval: Duration::from_millis(250),
            ping_timeout: Duration::from_millis(2500),
            ..EngineConfig::default()
        },
        ..SocketIoConfig::default()
    });
    io.ns("/", register_scenario_events);
    io.ns("/admin", register_scenario_events);
    io.ns("/private", |_socket| async move {})
        .use_middleware(|_socket| async move {
            Err(ConnectError {
                message: "not authorized".to_owned(),
                data: Some(json!({ "code": 42 })),
            })
        });
    io
}

async fn register_scenario_events(socket: Arc<Socket>) {
    // Answers an ack with the event's own arguments (binary included).
    socket.on("echo", |_socket, event| async move {
        if let Some(ack) = event.ack {
            let args: Vec<_> = event.args.iter().map(AsRef::as_ref).collect();
            let _ = ack.send_raw(&args, &event.binary);
        }
    });
    // Sends the event's arguments back as a server event.
    socket.on("echo-event", |socket, event| async move {
        let _ = socket.emit_raw("echo-event", &event.raw_args(), &event.binary);
    });
    // Asks the client a question with an ack and reports the answer. The answer arrives after
    // this handler returns (a connection's handlers run one at a time), so the wait is a task.
    socket.on("request-ack", |socket, event| async move {
        let question: Value = event.data().unwrap_or_default();
        tokio::spawn(async move {
            let answer = match socket.emit_with_ack("question", &question).await {
                Ok(answer) => answer.data::<Value>().unwrap_or_default(),
                Err(error) => json!({ "error": error.to_string() }),
            };
            let _ = socket.emit("answer-received", &answer);
        });
    });
    socket.on("transport", |socket, event| async move {
        if let Some(ack) = event.ack {
            let _ = ack.send(socket.transport().as_str());
        }
    });
    socket.on("whoami", |socket, event| async move {
        if let Some(ack) = event.ack {
            let handshake = socket.handshake();
            let auth: Value = handshake.auth().unwrap_or_default();
            let _ = ack.send(&json!({
                "nsp": socket.ns().path(),
                "tag": handshake.query("tag"),
                "auth": auth,
            }));
        }
    });
    socket.on("close-me", |socket, _event| async move {
        socket.close_connection();
    });
    socket.on("disconnect-me", |socket, _event| async move {
        socket.disconnect().await;
    });
}

/// A second server, with connection-state recovery (the same as `reference_server.mjs`'s):
/// `join-room` puts the socket in a room, `to-room` sends that room `n`.
fn recovery_server() -> SocketIo {
    let io = SocketIo::new(SocketIoConfig {
        engine: EngineConfig {
            ping_interval: Duration::from_millis(250),
            ping_timeout: Duration::from_millis(2500),
            ..EngineConfig::default()
        },
        recovery: Some(RecoveryConfig::default()),
        ..SocketIoConfig::default()
    });
    io.ns("/", |socket: Arc<Socket>| async move {
        socket.on("join-room", |socket, event| async move {
            if let Ok(room) = event.data::<String>() {
                socket.join(room);
            }
            if let Some(ack) = event.ack {
                let _ = ack.send_raw(&[], &[]);
            }
        });
        socket.on("to-room", |socket, event| async move {
            if let (Some(room), Some(n)) = (event.args.first(), event.args.get(1)) {
                if let Ok(room) = serde_json::from_str::<String>(room.get()) {
                    let _ = socket.ns().to(room).emit_raw("n", &[n.as_ref()], &[]);
                }
            }
            if let Some(ack) = event.ack {
                let _ = ack.send_raw(&[], &[]);
            }
        });
        socket.on("close-me", |socket, _event| async move {
            socket.close_connection();
        });
    });
    io
}

async fn read_all(mut pipe: impl AsyncRead + Unpin) -> String {
    let mut text = String::new();
    let _ = pipe.read_to_string(&mut text).await;
    text
}

/// Runs `client_test.mjs` against `url` (and its recovery scenarios against `recovery_url`) and
/// fails with its report unless every scenario passed.
async fn run_client_scenarios(url: &str, recovery_url: &str, server: &str) {
    let mut child = Command::new("node")
        .args(node_flags())
        .arg(js_dir().join("client_test.mjs"))
        .arg(url)
        .arg(recovery_url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start node ({error}): run ops/test-deps.sh"));
    let stdout = tokio::spawn(read_all(child.stdout.take().expect("piped stdout")));
    let stderr = tokio::spawn(read_all(child.stderr.take().expect("piped stderr")));
    let status = match tokio::time::timeout(CLIENT_RUN_DEADLINE, child.wait()).await {
        Ok(status) => Some(status.expect("waiting for node")),
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            None
        }
    };
    let stdout = stdout.await.unwrap_or_default();
    let stderr = stderr.await.unwrap_or_default();
    // Shown by `cargo test -- --nocapture`, and with any failure.
    println!("client_test.mjs against {server}:\n{stdout}{stderr}");

    let Some(status) = status else {
        panic!("client_test.mjs against {server} did not finish within {CLIENT_RUN_DEADLINE:?}");
    };
    let results: Vec<Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let failed: Vec<&str> = results
        .iter()
        .filter(|result| result["ok"] != json!(true))
        .filter_map(|result| result["scenario"].as_str())
        .collect();
    assert!(
        status.success() && failed.is_empty() && !results.is_empty(),
        "client_test.mjs against {server} exited with {status}; failed scenarios: {failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_client_passes_its_scenarios_against_our_server() {
    let io = scenario_server();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    let serving = io.clone();
    let server = tokio::spawn(async move { serving.serve(listener).await });
    let recovering = recovery_server();
    let recovery_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let recovery_addr = recovery_listener.local_addr().expect("local address");
    let serving = recovering.clone();
    let recovery = tokio::spawn(async move { serving.serve(recovery_listener).await });

    run_client_scenarios(
        &format!("http://{addr}"),
        &format!("http://{recovery_addr}"),
        "our socketio server",
    )
    .await;

    io.close();
    server.abort();
    recovering.close();
    recovery.abort();
}

/// Starts `reference_server.mjs`; it prints `{"port":N,"recovery_port":M}` and exits when its
/// stdin closes.
async fn start_reference_server() -> (Child, u16, u16) {
    let mut child = Command::new("node")
        .arg(js_dir().join("reference_server.mjs"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start node ({error}): run ops/test-deps.sh"));
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let first = tokio::time::timeout(REFERENCE_START_DEADLINE, lines.next_line()).await;
    let started = match first {
        Ok(Ok(Some(line))) => serde_json::from_str::<Value>(&line).ok(),
        _ => None,
    };
    let port = |key: &str| {
        let port = started.as_ref()?[key].as_u64()?;
        u16::try_from(port).ok()
    };
    match (port("port"), port("recovery_port")) {
        (Some(port), Some(recovery_port)) => (child, port, recovery_port),
        _ => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            panic!("reference_server.mjs did not print its ports (see its stderr above)");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_client_passes_its_scenarios_against_node_reference_server() {
    node_flags(); // the clear message when node or the npm packages are missing
    let (mut reference, port, recovery_port) = start_reference_server().await;

    run_client_scenarios(
        &format!("http://127.0.0.1:{port}"),
        &format!("http://127.0.0.1:{recovery_port}"),
        "the Node.js reference server",
    )
    .await;

    let _ = reference.start_kill();
    let _ = reference.wait().await;
}

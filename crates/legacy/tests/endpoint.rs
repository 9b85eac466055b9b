//! The 0.9 endpoint on its own (no chat): the real npm 0.9 client over websocket and
//! xhr-polling (events and acks both ways, `send`/`json.send`, heartbeats, disconnects), the
//! 0.9 timers seen from a raw client, and malformed input.
//!
//! Needs `node` and the npm packages of `ops/js` (`ops/test-deps.sh` installs both).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use engineio::EngineConfig;
use futures_util::{SinkExt, StreamExt};
use legacy::{LegacyConfig, LegacyEndpoint};
use socketio::{SocketIo, SocketIoConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every wait of these tests: generous, for a loaded two-core machine.
const DEADLINE: Duration = Duration::from_secs(20);

/// Short 0.9 timers, so that heartbeats and timeouts happen within a test.
fn short_timers() -> LegacyConfig {
    LegacyConfig {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(1),
        close_timeout: Duration::from_secs(1),
        polling_duration: Duration::from_millis(500),
        ..LegacyConfig::default()
    }
}

struct Server {
    addr: SocketAddr,
    io: SocketIo,
    legacy: Arc<LegacyEndpoint>,
}

/// A v4 server with an `/echo` namespace, and its 0.9 endpoint, on one loopback port.
async fn server() -> Server {
    server_with(EngineConfig::default()).await
}

/// The same with these engine limits, which bound 0.9 sessions like v4 ones.
async fn server_with(engine: EngineConfig) -> Server {
    let io = SocketIo::new(SocketIoConfig {
        engine,
        ..SocketIoConfig::default()
    });
    io.ns("/echo", |socket| async move {
        socket.on("echo", |_, event| async move {
            if let Some(ack) = event.ack {
                let _ = ack.send_raw(
                    &event.args.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
                    &[],
                );
            }
        });
        socket.on("message", |socket, event| async move {
            let _ = socket.emit_raw("message", &event.raw_args(), &[]);
        });
        socket.on("ask-me", |socket, event| async move {
            let n: i64 = event.data().unwrap_or_default();
            tokio::spawn(async move {
                if let Ok(answer) = socket.emit_with_ack("question", &n).await {
                    let answer: i64 = answer.data().unwrap_or_default();
                    let _ = socket.emit("answered", &answer);
                }
            });
        });
        socket.on(
            "kick-me",
            |socket, _| async move { socket.disconnect().await },
        );
    });
    let legacy = LegacyEndpoint::new(io.clone(), short_timers(), None);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (serving_io, serving_legacy) = (io.clone(), legacy.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (io, legacy) = (serving_io.clone(), serving_legacy.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (io, legacy) = (io.clone(), legacy.clone());
                    async move {
                        let response = if legacy.handles(req.uri().path()) {
                            legacy.handle(req).await
                        } else {
                            io.handle(req).await
                        };
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Server { addr, io, legacy }
}

/// One HTTP/1.1 request on its own connection: the status and the body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("no answer in time")
        .unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A 0.9 handshake; the new sid.
async fn handshake(addr: SocketAddr) -> String {
    let (status, body) = http(addr, "GET", "/socket.io/1/?t=1", "").await;
    assert_eq!(status, 200, "{body}");
    let fields: Vec<&str> = body.split(':').collect();
    assert_eq!(fields[1..], ["1", "1", "websocket,xhr-polling"], "{body}");
    fields[0].to_owned()
}

/// Waits until `condition` holds, at most [`DEADLINE`].
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn run_npm_client(transport: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/client09.cjs");
    let client = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../ops/js/node_modules/socket.io-client-0.9");
    assert!(
        client.exists(),
        "{} is missing: run ops/test-deps.sh",
        client.display()
    );
    let server = server().await;
    let child = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("http://{}", server.addr))
        .arg(transport)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE * 4, child)
        .await
        .expect("the 0.9 client overran its deadline")
        .unwrap_or_else(|error| panic!("cannot run node ({error}): run ops/test-deps.sh"));
    let report = format!(
        "--- stdout ---\n{}--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{report}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout)
            .matches("\"ok\":true")
            .count(),
        4,
        "{report}"
    );
}

#[tokio::test]
async fn npm_0_9_client_talks_over_websocket() {
    run_npm_client("websocket").await;
}

#[tokio::test]
async fn npm_0_9_client_talks_over_xhr_polling() {
    run_npm_client("xhr-polling").await;
}

#[tokio::test]
async fn a_session_no_transport_comes_for_ends_at_the_close_timeout() {
    let server = server().await;
    let sid = handshake(server.addr).await;
    assert_eq!(server.legacy.session_count(), 1);
    assert!(server.io.engine().session(&sid).is_some());
    eventually("the session to end", || server.legacy.session_count() == 0).await;
    eventually("the engine session to end", || {
        server.io.engine().session_count() == 0
    })
    .await;
    // The client is told to handshake again, not answered with an error page.
    let (status, body) = http(
        server.addr,
        "GET",
        &format!("/socket.io/1/xhr-polling/{sid}"),
        "",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "7:::1+0"));
}

#[tokio::test]
async fn a_websocket_client_that_stops_answering_heartbeats_is_dropped() {
    let server = server().await;
    let sid = handshake(server.addr).await;
    let url = format!("ws://{}/socket.io/1/websocket/{sid}", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let first = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.to_text().unwrap(), "1::");
    // Heartbeats come, unanswered; then the server gives up and closes the websocket.
    let mut heartbeats = 0;
    loop {
        match tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("no close in time")
        {
            Some(Ok(message)) if message.is_text() => {
                let text = message.to_text().unwrap().to_owned();
                if text == "2::" {
                    heartbeats += 1;
                }
            }
            Some(Ok(message)) if message.is_close() => break,
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    assert!(
        heartbeats >= 2,
        "only {heartbeats} heartbeats before the close"
    );
    eventually("the session to end", || server.legacy.session_count() == 0).await;
}

#[tokio::test]
async fn a_websocket_client_that_answers_heartbeats_stays() {
    let server = server().await;
    let sid = handshake(server.addr).await;
    let url = format!("ws://{}/socket.io/1/websocket/{sid}", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send("1::/echo".into()).await.unwrap();
    let mut heartbeats = 0;
    // Ten heartbeats at 200 ms: twice the one-second timeout.
    while heartbeats < 10 {
        let message = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if message.to_text().unwrap() == "2::" {
            heartbeats += 1;
            ws.send("2::".into()).await.unwrap();
        }
    }
    ws.send("5:1+:/echo:{\"name\":\"echo\",\"args\":[\"alive\"]}".into())
        .await
        .unwrap();
    loop {
        let message = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if message.to_text().unwrap() == "6::/echo:1+[\"alive\"]" {
            break;
        }
    }
    assert_eq!(server.legacy.session_count(), 1);
}

#[tokio::test]
async fn malformed_input_closes_that_session_only() {
    let server = server().await;
    let bystander = handshake(server.addr).await;
    let bystander_path = format!("/socket.io/1/xhr-polling/{bystander}");
    assert_eq!(http(server.addr, "GET", &bystander_path, "").await.1, "1::");
    // The bystander is a well-behaved polling client: always a GET pending, heartbeats answered.
    let polling = tokio::spawn({
        let (addr, path) = (server.addr, bystander_path.clone());
        async move {
            loop {
                let (status, body) = http(addr, "GET", &path, "").await;
                if status != 200 || body.starts_with("7:") {
                    return body;
                }
                if body.contains("2::") {
                    http(addr, "POST", &path, "2::").await;
                }
            }
        }
    });
    for bad in [
        "\u{fffd}5\u{fffd}2::",
        "\u{fffd}99999999999\u{fffd}2::",
        "\u{fffd}3\u{fffd}2::\u{fffd}x",
        "\u{fffd}3\u{fffd}2::junk",
        "9::",
        "5:::{\"name\":",
        "6:::x",
        "hello",
    ] {
        let sid = handshake(server.addr).await;
        let path = format!("/socket.io/1/xhr-polling/{sid}");
        let (status, _) = http(server.addr, "POST", &path, bad).await;
        assert_eq!(status, 200, "{bad:?}");
        eventually(&format!("{bad:?} to close its session"), || {
            server.io.engine().session(&sid).is_none()
        })
        .await;
        assert!(
            server.io.engine().session(&bystander).is_some(),
            "{bad:?} closed another session"
        );
        let (status, answer) = http(server.addr, "POST", &bystander_path, "8::").await;
        assert_eq!((status, answer.as_str()), (200, "1"));
    }
    // Oversized bodies are refused at the limit, before they are read whole.
    let sid = handshake(server.addr).await;
    let huge = "3:::".to_owned() + &"x".repeat(server.io.engine().config().max_payload);
    let (status, _) = http(
        server.addr,
        "POST",
        &format!("/socket.io/1/xhr-polling/{sid}"),
        &huge,
    )
    .await;
    assert_eq!(status, 413);
    eventually("the oversized body to close its session", || {
        server.io.engine().session(&sid).is_none()
    })
    .await;
    assert!(server.io.engine().session(&bystander).is_some());
    assert!(!polling.is_finished(), "the bystander's polling ended");
    polling.abort();
}

#[tokio::test]
async fn sessions_are_bounded_by_the_engine_limit() {
    let server = server_with(EngineConfig {
        max_sessions: 2,
        ..EngineConfig::default()
    })
    .await;
    handshake(server.addr).await;
    handshake(server.addr).await;
    let (status, _) = http(server.addr, "GET", "/socket.io/1/?t=3", "").await;
    assert_eq!(status, 503, "a handshake beyond max_sessions was accepted");
    assert_eq!(server.legacy.session_count(), 2);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_at_the_buffer_limit() {
    let server = server_with(EngineConfig {
        max_buffered_packets: 16,
        ..EngineConfig::default()
    })
    .await;
    let sid = handshake(server.addr).await;
    let path = format!("/socket.io/1/xhr-polling/{sid}");
    assert_eq!(http(server.addr, "GET", &path, "").await.1, "1::");
    http(server.addr, "POST", &path, "1::/echo").await;
    // 100 events for a client that does not poll: more than 16 may not pile up.
    let (status, _) = http(
        server.addr,
        "POST",
        &path,
        "5::/echo:{\"name\":\"flood\",\"args\":[100]}",
    )
    .await;
    assert_eq!(status, 200);
    eventually("the slow client to be closed", || {
        server.io.engine().session(&sid).is_none()
    })
    .await;
}

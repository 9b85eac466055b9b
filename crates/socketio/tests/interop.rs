//! Interop with the real clients: npm `socket.io-client` 4.x (Node.js) and PyPI
//! `python-socketio` 5.x, run as child processes against a server of this crate on loopback.
//! The client scripts are in `tests/clients/`; `ops/test-deps.sh` installs the clients.
//!
//! Each test starts a server, runs one client scenario, and checks both what the client printed
//! and what the server saw. Every wait is a condition with a deadline; a client that hangs is
//! killed after [`common::CLIENT_DEADLINE`].

mod common;

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{json, Value};
use socketio::{Event, Socket, SocketIo};

use common::{wait_until, ClientKind, ClientProcess, Observations, TestServer, CONDITION_DEADLINE};

/// The rooms a client asks to be put in, through its CONNECT `auth`.
#[derive(Debug, Default, Deserialize)]
struct JoinRooms {
    #[serde(default)]
    rooms: Vec<String>,
}

/// The binary payloads the client scripts send (they build the same bytes).
fn blob() -> Vec<u8> {
    (0..1000u32).map(|i| (i % 251) as u8).collect()
}
const SMALL: [u8; 3] = [0xff, 0x00, 0x7f];

/// The server every scenario talks to: `/` and `/admin` with the same events. `generation`
/// tells the servers of a restart apart; `seen` collects what the handlers observed.
fn interop_app(generation: u64, seen: Observations) -> impl FnOnce(&SocketIo) {
    move |io| {
        for path in ["/", "/admin"] {
            let seen = seen.clone();
            io.ns(path, move |socket| {
                let seen = seen.clone();
                async move { on_connect(socket, generation, seen) }
            });
        }
    }
}

fn on_connect(socket: Arc<Socket>, generation: u64, seen: Observations) {
    let rooms = socket
        .handshake()
        .auth::<JoinRooms>()
        .unwrap_or_default()
        .rooms;
    for room in &rooms {
        socket.join(room.as_str());
    }

    socket.on("whoami", |socket, event| async move {
        ack(event, &json!({ "ns": socket.ns().path() }));
    });
    socket.on("transport", |socket, event| async move {
        ack(event, socket.transport().as_str());
    });
    socket.on("generation", move |_socket, event| async move {
        ack(event, &generation);
    });
    socket.on("kick-me", |socket, _event| async move {
        socket.disconnect().await;
    });

    let ask_seen = seen.clone();
    socket.on("ask", move |socket, event| {
        let seen = ask_seen.clone();
        async move {
            let n = event
                .data::<Value>()
                .map(|v| v["n"].clone())
                .unwrap_or(Value::Null);
            ack(event, &json!({ "double": n.as_i64().map(|n| n * 2) }));
            // The client's answer arrives after this handler returns (handlers of a connection
            // run one at a time), so the wait runs in its own task.
            tokio::spawn(async move {
                let verdict = match socket
                    .emit_with_ack("question", &json!({ "q": "ping" }))
                    .await
                {
                    Ok(answer) => {
                        let data = answer.data::<Value>().unwrap_or(Value::Null);
                        seen.record(json!({ "what": "question-answer", "data": data }));
                        json!({ "server_got": data })
                    }
                    Err(error) => json!({ "error": error.to_string() }),
                };
                let _ = socket.emit("verdict", &verdict);
            });
        }
    });

    let binary_seen = seen.clone();
    socket.on("binary", move |socket, event| {
        let seen = binary_seen.clone();
        async move {
            let args: Vec<Value> = event
                .args
                .iter()
                .map(|arg| serde_json::from_str(arg.get()).unwrap_or(Value::Null))
                .collect();
            // Which attachment is which, as the client's placeholders say.
            let attachment = |placeholder: &Value| {
                placeholder["num"]
                    .as_u64()
                    .and_then(|num| event.binary.get(num as usize))
                    .map(|bytes| bytes.to_vec())
            };
            seen.record(json!({
                "what": "binary",
                "label": args.first().map(|a| a["label"].clone()),
                "attachments": event.binary.len(),
                "blob_equal": args.first().and_then(|a| attachment(&a["data"])) == Some(blob()),
                "small_equal": args.get(1).and_then(attachment) == Some(SMALL.to_vec()),
            }));
            let _ = socket.emit_raw("binary-back", &event.raw_args(), &event.binary);
            if let Some(ack) = event.ack {
                let _ = ack.send_raw(
                    &event.args.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
                    &event.binary,
                );
            }
        }
    });

    let path = socket.ns().path().to_owned();
    seen.record(json!({ "what": "connected", "ns": path, "rooms": rooms }));
    let disconnect_seen = seen;
    socket.on_disconnect(move |_socket, reason| async move {
        disconnect_seen
            .record(json!({ "what": "disconnect", "ns": path, "reason": reason.as_str() }));
    });
}

fn ack<T: serde::Serialize + ?Sized>(event: Event, data: &T) {
    if let Some(ack) = event.ack {
        let _ = ack.send(data);
    }
}

fn start_app() -> (TestServer, Observations) {
    let seen = Observations::default();
    let server = TestServer::start(interop_app(1, seen.clone()));
    (server, seen)
}

fn root(server: &TestServer) -> Arc<socketio::Namespace> {
    server.io.of("/").expect("the app declares /")
}

fn admin(server: &TestServer) -> Arc<socketio::Namespace> {
    server.io.of("/admin").expect("the app declares /admin")
}

// --- two namespaces over one connection -------------------------------------------------------

fn namespaces_share_one_session(kind: ClientKind) {
    let (server, _seen) = start_app();
    let mut client = ClientProcess::spawn(kind, &server.url(), "namespaces", "default", "");
    let ready = client.expect("ready");
    assert_eq!(ready["namespaces"], json!(["/", "/admin"]), "{ready}");
    if kind == ClientKind::Node {
        assert_eq!(ready["same_manager"], true, "{ready}");
    }
    // Both namespace sockets are connected, and one Engine.IO session carries them.
    assert_eq!(root(&server).sockets().len(), 1);
    assert_eq!(admin(&server).sockets().len(), 1);
    assert_eq!(server.session_count(), 1, "one session for both namespaces");
    root(&server).emit("finish", &()).expect("finish is JSON");
    client.finish();
}

#[test]
fn node_client_multiplexes_two_namespaces_over_one_session() {
    namespaces_share_one_session(ClientKind::Node);
}

#[test]
fn python_client_multiplexes_two_namespaces_over_one_session() {
    namespaces_share_one_session(ClientKind::Python);
}

// --- transports -------------------------------------------------------------------------------

/// Connects with `transport` ("polling", "websocket" or "default") and checks which transport
/// carries the session at the end, on the client and on the server.
fn session_ends_up_on(kind: ClientKind, transport: &str, expected: engineio::Transport) {
    let (server, _seen) = start_app();
    let mut client = ClientProcess::spawn(kind, &server.url(), "transport", transport, "");
    let report = client.expect("transport");
    assert_eq!(report["client"], expected.as_str(), "{report}");
    assert_eq!(report["server"], expected.as_str(), "{report}");
    let sockets = root(&server).sockets();
    assert_eq!(sockets.len(), 1);
    assert_eq!(sockets[0].transport(), expected);
    assert_eq!(server.session_count(), 1);
    root(&server).emit("finish", &()).expect("finish is JSON");
    client.finish();
}

#[test]
fn node_client_stays_on_polling_when_it_only_allows_polling() {
    session_ends_up_on(ClientKind::Node, "polling", engineio::Transport::Polling);
}

#[test]
fn python_client_stays_on_polling_when_it_only_allows_polling() {
    session_ends_up_on(ClientKind::Python, "polling", engineio::Transport::Polling);
}

#[test]
fn node_client_connects_over_websocket_only() {
    session_ends_up_on(
        ClientKind::Node,
        "websocket",
        engineio::Transport::Websocket,
    );
}

#[test]
fn python_client_connects_over_websocket_only() {
    session_ends_up_on(
        ClientKind::Python,
        "websocket",
        engineio::Transport::Websocket,
    );
}

#[test]
fn node_client_upgrades_polling_to_websocket() {
    session_ends_up_on(ClientKind::Node, "default", engineio::Transport::Websocket);
}

#[test]
fn python_client_upgrades_polling_to_websocket() {
    session_ends_up_on(
        ClientKind::Python,
        "default",
        engineio::Transport::Websocket,
    );
}

// --- acks both ways ---------------------------------------------------------------------------

fn acks_go_both_ways(kind: ClientKind) {
    let (server, seen) = start_app();
    let mut client = ClientProcess::spawn(kind, &server.url(), "acks", "default", "");
    let ack = client.expect("ack");
    assert_eq!(
        ack["data"],
        json!({ "double": 42 }),
        "client→server ack: {ack}"
    );
    let question = client.expect("question");
    assert_eq!(question["data"], json!({ "q": "ping" }), "{question}");
    let verdict = client.expect("verdict");
    let answer = json!({ "answer": "ping-pong" });
    assert_eq!(
        verdict["data"],
        json!({ "server_got": answer }),
        "server→client ack: {verdict}"
    );
    assert_eq!(seen.wait_for("question-answer")["data"], answer);
    client.finish();
}

#[test]
fn node_client_exchanges_acks_both_ways() {
    acks_go_both_ways(ClientKind::Node);
}

#[test]
fn python_client_exchanges_acks_both_ways() {
    acks_go_both_ways(ClientKind::Python);
}

// --- binary -----------------------------------------------------------------------------------

fn binary_round_trips(kind: ClientKind, transport: &str) {
    let (server, seen) = start_app();
    let mut client = ClientProcess::spawn(kind, &server.url(), "binary", transport, "");
    let expected = json!({ "label": "blob", "blob_equal": true, "small_equal": true });
    for event in ["binary-ack", "binary-back"] {
        let mut got = client.expect(event);
        got.as_object_mut().map(|o| o.remove("event"));
        assert_eq!(got, expected, "server→client bytes, as {event}");
    }
    let received = seen.wait_for("binary");
    assert_eq!(received["attachments"], 2, "{received}");
    assert_eq!(received["label"], "blob", "{received}");
    assert_eq!(
        received["blob_equal"], true,
        "client→server bytes: {received}"
    );
    assert_eq!(
        received["small_equal"], true,
        "client→server bytes: {received}"
    );
    client.finish();
}

#[test]
fn node_client_sends_and_receives_binary_over_polling() {
    binary_round_trips(ClientKind::Node, "polling");
}

#[test]
fn node_client_sends_and_receives_binary_over_websocket() {
    binary_round_trips(ClientKind::Node, "websocket");
}

#[test]
fn python_client_sends_and_receives_binary_over_polling() {
    binary_round_trips(ClientKind::Python, "polling");
}

#[test]
fn python_client_sends_and_receives_binary_over_websocket() {
    binary_round_trips(ClientKind::Python, "websocket");
}

// --- rooms ------------------------------------------------------------------------------------

/// Three clients: one in "r", one in "r" and "x", one in neither. `to("r").except("x")` reaches
/// exactly the first.
fn room_broadcast_skips_excepted_room(kind: ClientKind) {
    let (server, _seen) = start_app();
    let memberships = ["r", "r,x", ""];
    let clients = room_clients(kind, &server, "default", &memberships);
    let ns = root(&server);
    let members = |room: &str| {
        ns.rooms()
            .iter()
            .find(|(name, _)| name.as_ref() == room)
            .map_or(0, |(_, count)| *count)
    };
    wait_until(
        "three sockets, two in r, one in x",
        CONDITION_DEADLINE,
        || ns.sockets().len() == 3 && members("r") == 2 && members("x") == 1,
    );

    ns.to("r")
        .except("x")
        .emit("news", "for r but not x")
        .expect("news is JSON");
    // Sent after the news on every connection, so a client that sees "finish" has seen any news
    // meant for it.
    ns.emit("finish", &()).expect("finish is JSON");

    news_reached_r_alone(&memberships, clients, json!(["for r but not x"]));
}

/// One client per entry of `memberships` (its rooms, comma-separated) on the "rooms" scenario,
/// each connected.
fn room_clients(
    kind: ClientKind,
    server: &TestServer,
    transport: &str,
    memberships: &[&str],
) -> Vec<ClientProcess> {
    let mut clients: Vec<ClientProcess> = memberships
        .iter()
        .map(|rooms| ClientProcess::spawn(kind, &server.url(), "rooms", transport, rooms))
        .collect();
    for client in &mut clients {
        client.expect("connected");
    }
    clients
}

/// Once "finish" reaches them, the clients in room "r" alone have seen `news`, the others none.
fn news_reached_r_alone(memberships: &[&str], clients: Vec<ClientProcess>, news: Value) {
    for (rooms, mut client) in memberships.iter().zip(clients) {
        let finish = client.expect("finish");
        let expected = if *rooms == "r" { &news } else { &json!([]) };
        assert_eq!(
            &finish["news"], expected,
            "client in rooms {rooms:?}: {finish}"
        );
        client.finish();
    }
}

#[test]
fn node_clients_get_room_broadcast_minus_excepted_room() {
    room_broadcast_skips_excepted_room(ClientKind::Node);
}

#[test]
fn python_clients_get_room_broadcast_minus_excepted_room() {
    room_broadcast_skips_excepted_room(ClientKind::Python);
}

/// Every broadcast through the flush pass (`max_straight_recipients` 0): the members of "r"
/// get its news in order over their websockets, whether the broadcasts came from the server's
/// runtime (the pass's task writes them) or from outside any runtime (written in place), and
/// the client in no room gets none.
fn broadcasts_through_the_flush_pass_arrive_in_order(kind: ClientKind) {
    let mut config = socketio::SocketIoConfig {
        max_straight_recipients: 0,
        ..common::test_config()
    };
    // No ping wakes a writer during the test: a frame the pass failed to write would stay.
    config.engine.ping_interval = std::time::Duration::from_secs(300);
    config.engine.ping_timeout = std::time::Duration::from_secs(300);
    config.engine.upgrade_timeout = std::time::Duration::from_secs(300);
    config.connect_timeout = std::time::Duration::from_secs(300);
    let server = TestServer::start_with(config, interop_app(1, Observations::default()));
    let memberships = ["r", "r", ""];
    let clients = room_clients(kind, &server, "websocket", &memberships);
    let ns = root(&server);
    wait_until("three sockets, two in r", CONDITION_DEADLINE, || {
        ns.sockets().len() == 3
            && ns
                .rooms()
                .iter()
                .any(|(name, count)| name.as_ref() == "r" && *count == 2)
    });

    for i in 0..10 {
        ns.to("r").emit("news", &i).expect("news is JSON");
    }
    server.block_on(async {
        for i in 10..20 {
            ns.to("r").emit("news", &i).expect("news is JSON");
        }
    });
    ns.emit("finish", &()).expect("finish is JSON");

    news_reached_r_alone(&memberships, clients, json!((0..20).collect::<Vec<u32>>()));
}

#[test]
fn node_clients_get_broadcasts_through_the_flush_pass_in_order() {
    broadcasts_through_the_flush_pass_arrive_in_order(ClientKind::Node);
}

#[test]
fn python_clients_get_broadcasts_through_the_flush_pass_in_order() {
    broadcasts_through_the_flush_pass_arrive_in_order(ClientKind::Python);
}

// --- server-side disconnect -------------------------------------------------------------------

/// The server disconnects the client's "/" socket; "/" sees the server-disconnect reason, and
/// "/admin" on the same connection still works.
fn server_disconnects_one_namespace(kind: ClientKind) {
    let (server, seen) = start_app();
    let mut client = ClientProcess::spawn(kind, &server.url(), "kick", "default", "");
    let disconnect = client.expect("disconnect");
    assert_eq!(disconnect["ns"], "/", "{disconnect}");
    match kind {
        ClientKind::Node => {
            assert_eq!(disconnect["reason"], "io server disconnect", "{disconnect}");
            // After a server disconnect the client does not try to reconnect by itself.
            assert_eq!(disconnect["active"], false, "{disconnect}");
        }
        // python-socketio names the same event "server disconnect".
        ClientKind::Python => {
            assert_eq!(disconnect["reason"], "server disconnect", "{disconnect}");
            assert_eq!(disconnect["server_disconnect"], true, "{disconnect}");
        }
    }
    let alive = client.expect("admin-alive");
    assert_eq!(alive["ns"], "/admin", "{alive}");
    assert_eq!(alive["connected"], true, "{alive}");
    let left = seen.wait_for("disconnect");
    assert_eq!(
        left,
        json!({ "what": "disconnect", "ns": "/", "reason": "server namespace disconnect" })
    );
    client.finish();
}

#[test]
fn node_client_sees_io_server_disconnect_when_the_server_disconnects_it() {
    server_disconnects_one_namespace(ClientKind::Node);
}

#[test]
fn python_client_sees_server_disconnect_when_the_server_disconnects_it() {
    server_disconnects_one_namespace(ClientKind::Python);
}

// --- reconnect after a restart ----------------------------------------------------------------

/// The server stops (sessions closed, listener and connections gone) and a new one starts on
/// the same port; the client reconnects by itself and talks to the new one.
fn client_reconnects_after_restart(kind: ClientKind, transport: &str) {
    let first = TestServer::start_restartable(interop_app(1, Observations::default()));
    let port = first.port();
    let mut client = ClientProcess::spawn(kind, &first.url(), "reconnect", transport, "");
    assert_eq!(client.expect("generation")["value"], 1);
    first.stop();

    let second_seen = Observations::default();
    let second = TestServer::restart_on(port, interop_app(2, second_seen.clone()));
    // "transport close" when the client got the close (a pending GET answered with a close
    // packet, a websocket close frame), "transport error" when its next request found the
    // session or the server gone: either way not a server disconnect, so the client reconnects.
    let disconnect = client.expect("disconnect");
    let reason = disconnect["reason"].as_str().unwrap_or_default();
    assert!(
        ["transport close", "transport error"].contains(&reason),
        "{disconnect}"
    );
    // The next answer comes from the new server: the stopped one accepts nothing any more.
    assert_eq!(client.expect("generation")["value"], 2);
    second_seen.wait_for("connected");
    client.finish();
    drop(second);
}

#[test]
fn node_client_reconnects_after_the_server_restarts() {
    client_reconnects_after_restart(ClientKind::Node, "default");
}

#[test]
fn node_polling_client_reconnects_after_the_server_restarts() {
    client_reconnects_after_restart(ClientKind::Node, "polling");
}

#[test]
fn python_client_reconnects_after_the_server_restarts() {
    client_reconnects_after_restart(ClientKind::Python, "default");
}

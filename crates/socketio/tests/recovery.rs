//! Connection-state recovery with the real npm socket.io-client 4.x (which supports it with no
//! option): a client whose connection breaks comes back to the same socket, in the same rooms,
//! and gets the events sent while it was away, once and in order; a client that brings a pid
//! that is not its own gets a new socket and nothing of the old one.

mod common;

use std::sync::Arc;
use std::time::Duration;

use engineio::Frame;
use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use socketio::{
    BroadcastOptions, EmitError, Event, Namespace, Own, RecoveryConfig, RestoreRequest, Restored,
    SessionRecord, SessionStore, Socket, SocketIo, SocketIoConfig,
};

use common::{test_config, ClientKind, ClientProcess, Observations, TestServer};

fn config() -> SocketIoConfig {
    config_with(RecoveryConfig {
        window: Duration::from_secs(60),
        ..RecoveryConfig::default()
    })
}

fn config_with(recovery: RecoveryConfig) -> SocketIoConfig {
    SocketIoConfig {
        recovery: Some(recovery),
        ..test_config()
    }
}

/// `join` puts the socket in room `r` and sends that room `n = 1`; `again` sends it `n = 4`.
fn app(seen: Observations) -> impl FnOnce(&SocketIo) {
    move |io| {
        io.ns("/", move |socket: Arc<Socket>| {
            let seen = seen.clone();
            async move {
                seen.record(json!({
                    "what": "connect",
                    "id": socket.id().as_ref(),
                    "recovered": socket.recovered(),
                    "rooms": socket.rooms().iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                    "auth": socket.handshake().auth_raw(),
                }));
                socket.on("join", |socket, event: Event| async move {
                    socket.join("r");
                    let _ = socket.ns().to("r").emit("n", &1);
                    answer(event);
                });
                socket.on("again", |socket, event: Event| async move {
                    let _ = socket.ns().to("r").emit("n", &4);
                    answer(event);
                });
                socket.on_disconnect(move |socket, reason| async move {
                    seen.record(json!({
                        "what": "disconnect",
                        "id": socket.id().as_ref(),
                        "reason": reason.as_str(),
                    }));
                });
            }
        });
    }
}

fn answer(event: Event) {
    if let Some(ack) = event.ack {
        let _ = ack.send("ok");
    }
}

/// Runs the `recovery` scenario: events while the client is away go to its room (`n = 2`), to
/// it alone (`n = 3`), and to a room it is not in (`n = 99`).
fn run(transport: &str, mode: &str) -> (Value, Value, Vec<Value>) {
    run_with(config(), transport, mode, Duration::ZERO)
}

/// [`run`] with `config`, the client away for at least `away`.
fn run_with(
    config: SocketIoConfig,
    transport: &str,
    mode: &str,
    away: Duration,
) -> (Value, Value, Vec<Value>) {
    let seen = Observations::default();
    let server = TestServer::start_with(config, app(seen.clone()));
    let mut client =
        ClientProcess::spawn(ClientKind::Node, &server.url(), "recovery", transport, mode);
    let joined = client.expect("joined");
    assert_eq!(joined["got"], json!([1]), "{joined}");
    client.expect("disconnected");
    let left = seen.wait_for("disconnect");
    let id = joined["id"].as_str().expect("an id").to_owned();
    let ns = server.io.of("/").expect("the namespace");
    ns.to("r").emit("n", &2).expect("emit to r");
    ns.to(id.as_str())
        .emit("n", &3)
        .expect("emit to the socket");
    ns.to("other").emit("n", &99).expect("emit to another room");
    // Longer than a short window: what is being tested is that the window has passed.
    std::thread::sleep(away);
    client.say("reconnect");
    let back = client.expect("reconnected");
    let live = client.expect("live");
    client.finish();
    let connects = seen
        .all()
        .into_iter()
        .filter(|v| v["what"] == "connect")
        .collect::<Vec<_>>();
    assert_eq!(left["id"], json!(id));
    (back, live, connects)
}

#[test]
fn a_client_whose_websocket_breaks_gets_its_socket_rooms_and_missed_events_back() {
    let (back, live, connects) = run("websocket", "");
    assert_eq!(back["recovered"], json!(true), "{back}");
    assert_eq!(back["sameId"], json!(true), "{back}");
    assert_eq!(back["got"], json!([1, 2, 3]), "{back}");
    // Back in its room: live events reach it again.
    assert_eq!(live["got"], json!([1, 2, 3, 4]), "{live}");
    assert_eq!(connects.len(), 2);
    assert_eq!(connects[1]["recovered"], json!(true));
    assert_eq!(connects[1]["id"], connects[0]["id"]);
    let rooms = connects[1]["rooms"].as_array().expect("rooms");
    assert!(rooms.contains(&json!("r")), "{rooms:?}");
    // The private id stays out of what the application sees of the handshake.
    assert_eq!(connects[1]["auth"], json!("{}"), "{connects:?}");
}

#[test]
fn a_polling_client_whose_connection_breaks_gets_its_socket_and_missed_events_back() {
    let (back, live, _) = run("polling", "");
    assert_eq!(back["recovered"], json!(true), "{back}");
    assert_eq!(back["sameId"], json!(true), "{back}");
    assert_eq!(back["got"], json!([1, 2, 3]), "{back}");
    assert_eq!(live["got"], json!([1, 2, 3, 4]), "{live}");
}

#[test]
fn a_client_with_a_pid_that_is_not_its_own_gets_a_new_socket_and_nothing_of_the_old() {
    let (back, live, connects) = run("websocket", "forge");
    assert_fresh(&back, &live, &connects);
}

/// A fresh socket and nothing of the old one (not in its room): what a client gets when its
/// socket cannot be given back whole.
fn assert_fresh(back: &Value, live: &Value, connects: &[Value]) {
    assert_eq!(back["recovered"], json!(false), "{back}");
    assert_eq!(back["sameId"], json!(false), "{back}");
    assert_eq!(back["got"], json!([1]), "{back}");
    assert_eq!(live["got"], json!([1]), "{live}");
    assert_eq!(connects[1]["recovered"], json!(false));
    assert_eq!(connects[1]["rooms"], json!([connects[1]["id"]]));
}

#[test]
fn a_client_back_after_the_window_gets_a_new_socket() {
    let config = config_with(RecoveryConfig {
        window: Duration::from_millis(300),
        ..RecoveryConfig::default()
    });
    let (back, live, connects) = run_with(config, "websocket", "", Duration::from_millis(600));
    assert_fresh(&back, &live, &connects);
}

#[test]
fn a_client_that_missed_more_than_the_log_keeps_gets_a_new_socket() {
    // Three events while it is away, two kept: never a partial replay.
    let config = config_with(RecoveryConfig {
        window: Duration::from_secs(60),
        max_packets: 2,
        ..RecoveryConfig::default()
    });
    let (back, live, connects) = run_with(config, "websocket", "", Duration::ZERO);
    assert_fresh(&back, &live, &connects);
}

/// A store shared with other processes that lets this one deliver its own events first, and
/// keeps the marks of the events it was handed: the test plays its feed back.
#[derive(Default)]
struct HandedStore {
    handed: std::sync::Mutex<Vec<Own>>,
    /// Takes the next event as if the master could not be reached.
    refuse: std::sync::atomic::AtomicBool,
}

impl HandedStore {
    fn handed(&self) -> Vec<Own> {
        self.handed.lock().unwrap().clone()
    }
}

impl SessionStore for HandedStore {
    fn append(
        &self,
        _ns: &Namespace,
        _frames: &[Frame],
        _opts: &BroadcastOptions,
        own: Option<Own>,
    ) -> Result<(), EmitError> {
        self.handed.lock().unwrap().extend(own);
        match self
            .refuse
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            true => Err(EmitError::NotRelayed("the master is out of reach".into())),
            false => Ok(()),
        }
    }

    fn own_first(&self) -> bool {
        true
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn detached(&self, _record: SessionRecord) {}

    fn restore(&self, _request: RestoreRequest) -> BoxFuture<'static, Option<Restored>> {
        Box::pin(std::future::ready(None))
    }
}

#[test]
fn an_own_event_that_never_comes_back_numbered_is_counted_as_a_gap() {
    let store = Arc::new(HandedStore::default());
    let shared = store.clone();
    let io = SocketIo::new(config_with(RecoveryConfig {
        store: Some(Arc::new(move |_, _| shared.clone())),
        ..RecoveryConfig::default()
    }));
    let ns = io.ns("/", |_socket: Arc<Socket>| async {});
    let gaps = || io.recovery_stats().expect("recovery is on").gaps;
    // Before the first numbered event the offsets' epoch is not known here: each own event
    // goes to be numbered, and is delivered here when it comes back. The first one the
    // store cannot take: delivered here at once, and never to come back.
    store
        .refuse
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(ns.emit("n", &0).is_err(), "the store refused it");
    for n in 1..=3 {
        ns.emit("n", &n).expect("handed to the store");
    }
    let handed = store.handed();
    assert_eq!(handed.len(), 4, "{handed:?}");
    assert!(handed.iter().all(|own| !own.delivered), "{handed:?}");
    let frames = [Frame::Text(r#"2["n",0]"#.into())];
    let opts = BroadcastOptions::default();
    ns.deliver_sequenced("e", 1, Some(handed[1]), &frames, &opts);
    assert_eq!(
        gaps(),
        0,
        "the refused one was had here, the next came back"
    );
    // The next is lost on its way back (the store's queue to this process was full).
    ns.deliver_sequenced("e", 3, Some(handed[3]), &frames, &opts);
    assert_eq!(gaps(), 1, "one never came back");
    // Every own event sent has come back or is counted: the next is delivered here first.
    ns.emit("n", &4).expect("handed to the store");
    let next = store.handed()[4];
    assert!(next.delivered, "{next:?}");
    assert_eq!(gaps(), 1);
}

//! One broadcast to 10 000 sockets of this process: what a busy chat room costs the server per
//! message, without the network. The sessions are real polling sessions opened through
//! `SocketIo::handle`, exactly as HTTP requests would open them, and every one joins room `r`
//! through an event handler.
//!
//! Only the `emit` is timed. The recipients' queues are drained (one polling GET per session,
//! untimed) every [`DRAIN_EVERY`] broadcasts, so no queue ever fills and every drain checks that
//! each client really received every broadcast.
//!
//! `cargo bench -p socketio --bench broadcast`. Results go to `docs/BENCHMARKS.md`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use engineio::{EngineConfig, RECORD_SEPARATOR};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use socketio::{SocketIo, SocketIoConfig};
use tokio::runtime::Runtime;

/// Sockets in the room.
const SOCKETS: usize = 10_000;
/// Broadcasts queued per client between two drains; well under `max_buffered_packets`.
const DRAIN_EVERY: usize = 64;

/// A server with `SOCKETS` polling clients in room `r` of namespace `/`, and the runtime their
/// sessions live on.
struct Room {
    runtime: Runtime,
    io: SocketIo,
    sids: Vec<String>,
}

impl Room {
    fn new() -> Room {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime starts");
        let config = SocketIoConfig {
            engine: EngineConfig {
                // The bench clients never answer pings: without this their sessions would
                // time out in the middle of a run.
                ping_interval: Duration::from_secs(3600),
                ping_timeout: Duration::from_secs(3600),
                max_buffered_packets: 4 * DRAIN_EVERY,
                max_sessions: SOCKETS + 1,
                ..EngineConfig::default()
            },
            ..SocketIoConfig::default()
        };
        let io = SocketIo::new(config);
        io.ns("/", |socket| async move {
            socket.on("join", |socket, event| async move {
                if let Ok(room) = event.data::<String>() {
                    socket.join(room);
                }
            });
        });
        let sids = runtime.block_on(async {
            let mut sids = Vec::with_capacity(SOCKETS);
            for _ in 0..SOCKETS {
                sids.push(join_room(&io).await);
            }
            sids
        });
        let room = Room { runtime, io, sids };
        let members = room
            .io
            .of("/")
            .expect("namespace / is declared")
            .to("r")
            .sockets()
            .len();
        assert_eq!(members, SOCKETS, "every client joined room r");
        room
    }

    /// Empties every client's queue with one polling GET each, and checks that each got exactly
    /// `broadcasts` messages.
    fn drain(&self, broadcasts: usize) {
        self.runtime.block_on(async {
            for sid in &self.sids {
                let (status, body) = request(&self.io, Method::GET, Some(sid), "").await;
                assert_eq!(status, StatusCode::OK);
                let received = body.split(RECORD_SEPARATOR).count();
                assert_eq!(received, broadcasts, "client {sid} missed broadcasts");
            }
        });
    }
}

/// One HTTP request to the Socket.IO path, answered in process.
async fn request(
    io: &SocketIo,
    method: Method,
    sid: Option<&str>,
    body: &str,
) -> (StatusCode, String) {
    let uri = match sid {
        Some(sid) => format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
        None => "/socket.io/?EIO=4&transport=polling".to_owned(),
    };
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("a valid request");
    let response = io.handle(req).await;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("in-process bodies do not fail")
        .to_bytes();
    (
        status,
        String::from_utf8(bytes.to_vec()).expect("polling bodies are text"),
    )
}

/// Opens a polling session, joins namespace `/` and room `r` in one POST (as a client that
/// batches does), and reads the CONNECT answer. Returns the session id.
async fn join_room(io: &SocketIo) -> String {
    let (_, open) = request(io, Method::GET, None, "").await;
    let handshake: serde_json::Value =
        serde_json::from_str(&open[1..]).expect("the open packet is 0 + JSON");
    let sid = handshake["sid"]
        .as_str()
        .expect("the handshake has a sid")
        .to_owned();
    let (status, _) = request(io, Method::POST, Some(&sid), "40\u{1e}42[\"join\",\"r\"]").await;
    assert_eq!(status, StatusCode::OK);
    let (_, connected) = request(io, Method::GET, Some(&sid), "").await;
    assert!(
        connected.starts_with("40{"),
        "unexpected answer {connected:?}"
    );
    sid
}

fn broadcast(c: &mut Criterion) {
    let room = Room::new();
    let payload = serde_json::json!({
        "room": "r",
        "user": "alice",
        "text": "hello everyone",
        "ts": 1718000000000u64,
    });
    let mut group = c.benchmark_group("broadcast");
    group.throughput(Throughput::Elements(SOCKETS as u64));
    // Every sample gets the same number of broadcasts, so a sample that happens to start on a
    // cold cache (right after a drain) weighs no more than the others.
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function("to_room_10000_sockets", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut queued = 0;
            for _ in 0..iters {
                let start = Instant::now();
                room.io
                    .of("/")
                    .expect("namespace / is declared")
                    .to("r")
                    .emit("msg", &payload)
                    .expect("the payload serialises");
                timed += start.elapsed();
                queued += 1;
                if queued == DRAIN_EVERY {
                    room.drain(queued);
                    queued = 0;
                }
            }
            // Leave every queue empty for the next sample.
            if queued > 0 {
                room.drain(queued);
            }
            timed
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // A broadcast takes milliseconds, and every DRAIN_EVERY of them a drain adds tens of
    // milliseconds: twenty samples over 20 s keep the run under a minute on two cores.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(3))
        .measurement_time(Duration::from_secs(20));
    targets = broadcast
}
criterion_main!(benches);

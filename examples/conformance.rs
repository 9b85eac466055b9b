//! The server the official conformance suites expect (socketio/engine.io-protocol and
//! socketio/socket.io-protocol, test-suite/): ping 300 ms / timeout 200 ms, maxPayload 1e6, any
//! origin, on 127.0.0.1:3000.
//!
//!     cargo run --release --example conformance               # Socket.IO suite
//!     cargo run --release --example conformance -- --engineio # Engine.IO suite (echo at /engine.io/)

use std::sync::Arc;
use std::time::Duration;

use engineio::{
    CorsPolicy, DisconnectReason, Engine, EngineConfig, Frame, Handler, Message, Socket,
};
use serde_json::value::RawValue;
use socketio::{SocketIo, SocketIoConfig};

/// Sends every message back to the client that sent it.
struct Echo;

impl Handler for Echo {
    type Data = ();

    fn on_connect(&self, _socket: &Arc<Socket<()>>) {}

    async fn on_message(&self, socket: &Arc<Socket<()>>, message: Message) {
        let frame = match message {
            Message::Text(text) => Frame::message(&text),
            Message::Binary(data) => Frame::binary(data),
        };
        let _ = socket.send(frame);
    }

    async fn on_disconnect(&self, _socket: Arc<Socket<()>>, _reason: DisconnectReason) {}
}

fn suite_config(path: &str) -> EngineConfig {
    EngineConfig {
        path: path.to_owned(),
        ping_interval: Duration::from_millis(300),
        ping_timeout: Duration::from_millis(200),
        max_payload: 1_000_000,
        cors: CorsPolicy::Any,
        ..EngineConfig::default()
    }
}

/// The reference server of the Socket.IO suite: `auth` on connect, `message` echoed back as
/// `message-back`, `message-with-ack` acknowledged with its own arguments; `/` and `/custom`.
fn socketio_suite_server() -> SocketIo {
    let io = SocketIo::new(SocketIoConfig {
        engine: suite_config("/socket.io/"),
        connect_timeout: Duration::from_millis(1000),
        ..SocketIoConfig::default()
    });
    io.ns("/", |socket| async move {
        send_auth(&socket);
        socket.on("message", |socket, event| async move {
            let _ = socket.emit_raw("message-back", &event.raw_args(), &event.binary);
        });
        socket.on("message-with-ack", |_socket, event| async move {
            if let Some(ack) = event.ack {
                let _ = ack.send_raw(
                    &event.args.iter().map(AsRef::as_ref).collect::<Vec<_>>(),
                    &event.binary,
                );
            }
        });
    });
    io.ns("/custom", |socket| async move { send_auth(&socket) });
    io
}

fn send_auth(socket: &socketio::Socket) {
    let auth: &RawValue = serde_json::from_str(socket.handshake().auth_raw())
        .unwrap_or_else(|_| serde_json::from_str("{}").expect("an empty object is JSON"));
    let _ = socket.emit_raw("auth", &[auth], &[]);
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let engineio_only = std::env::args().any(|arg| arg == "--engineio");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on 127.0.0.1:3000");
    if engineio_only {
        Engine::new(suite_config("/engine.io/"), Echo)
            .serve(listener)
            .await
    } else {
        socketio_suite_server().serve(listener).await
    }
}

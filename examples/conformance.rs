//! The server the official conformance suites expect (socketio/engine.io-protocol and
//! socketio/socket.io-protocol, test-suite/): ping 300 ms / timeout 200 ms, maxPayload 1e6, any
//! origin, on 127.0.0.1:3000.
//!
//!     cargo run --release --example conformance               # Socket.IO suite
//!     cargo run --release --example conformance -- --engineio # Engine.IO suite (echo at /engine.io/)

use std::sync::Arc;
use std::time::Duration;

use engineio::{CorsPolicy, DisconnectReason, Engine, EngineConfig, Frame, Handler, Message, Socket};

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

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on 127.0.0.1:3000");
    Engine::new(suite_config("/engine.io/"), Echo).serve(listener).await
}

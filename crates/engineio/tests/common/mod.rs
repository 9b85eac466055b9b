//! A real echo Engine on a loopback port, and the clients the integration tests use to talk to
//! it: hyper's HTTP client for polling and tungstenite's client for websockets.
//!
//! Nothing here sleeps to synchronise: every wait is for a condition (a reply, a recorded
//! disconnect, a closed websocket) and is bounded by [`DEADLINE`], which is generous because the
//! timers under test are short.

#![allow(dead_code, unused_imports)] // each test binary uses its own part of this module

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use engineio::{DisconnectReason, Engine, EngineConfig, Frame, Handler, Message, Socket};

/// Longest any single step of a test may take before the test fails instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// `max_payload` of the test server: small, so oversized input is cheap to build.
pub const MAX_PAYLOAD: usize = 10_000;

pub use testkit::engineio::{Handshake, Ws, UNKNOWN_SID_BODY};

/// Awaits `future`, failing the test if it takes longer than [`DEADLINE`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    testkit::within(DEADLINE, what, future).await
}

/// The test configuration: a small payload limit, and timers out of the way of tests that are
/// not about them (those shorten them with [`fast_heartbeat`] or their own config), so that no
/// test races a ping it does not expect.
pub fn config() -> EngineConfig {
    EngineConfig {
        ping_interval: Duration::from_secs(60),
        ping_timeout: Duration::from_secs(60),
        max_payload: MAX_PAYLOAD,
        upgrade_timeout: Duration::from_secs(60),
        ..EngineConfig::default()
    }
}

/// [`config`] with a server ping every 200 ms and 100 ms to answer it.
pub fn fast_heartbeat() -> EngineConfig {
    EngineConfig {
        ping_interval: Duration::from_millis(200),
        ping_timeout: Duration::from_millis(100),
        ..config()
    }
}

/// Sends every message back to its sender and records how each session ended.
pub struct Echo {
    /// Session id -> why it ended; tests wait on it instead of sleeping.
    disconnects: watch::Sender<HashMap<String, DisconnectReason>>,
}

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

    async fn on_disconnect(&self, socket: Arc<Socket<()>>, reason: DisconnectReason) {
        self.disconnects.send_modify(|ended| {
            ended.insert(socket.id().to_owned(), reason);
        });
    }
}

/// A running echo server and a client for it. Clones share both.
#[derive(Clone)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub engine: Arc<Engine<Echo>>,
    http: Client<HttpConnector, Full<Bytes>>,
    disconnects: watch::Receiver<HashMap<String, DisconnectReason>>,
}

/// A finished HTTP exchange.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// Starts an echo engine with `config` on 127.0.0.1 and an ephemeral port. The server lives
/// as long as the test's runtime.
pub async fn start(config: EngineConfig) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let (disconnects, watcher) = watch::channel(HashMap::new());
    let engine = Engine::new(config, Echo { disconnects });
    tokio::spawn(engine.clone().serve(listener));
    let http = Client::builder(TokioExecutor::new()).build_http();
    TestServer {
        addr,
        engine,
        http,
        disconnects: watcher,
    }
}

impl TestServer {
    /// The engine's URL with this query.
    pub fn url(&self, query: &str) -> String {
        format!("http://{}/socket.io/?{query}", self.addr)
    }

    pub fn polling_url(&self, sid: &str) -> String {
        self.url(&format!("EIO=4&transport=polling&sid={sid}"))
    }

    /// The `Origin` a page served by this server would send.
    pub fn own_origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends a request and reads the whole response.
    pub async fn request(&self, request: Request<Full<Bytes>>) -> Reply {
        let what = format!("{} {}", request.method(), request.uri());
        within(&what, async {
            let response = self.http.request(request).await.expect("HTTP request");
            let status = response.status();
            let headers = response.headers().clone();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("response body")
                .to_bytes();
            let body = String::from_utf8(body.to_vec()).expect("UTF-8 response body");
            Reply {
                status,
                headers,
                body,
            }
        })
        .await
    }

    pub async fn get_url(&self, url: &str) -> Reply {
        self.request(Request::get(url).body(Full::default()).expect("request"))
            .await
    }

    /// A polling GET for this session.
    pub async fn poll(&self, sid: &str) -> Reply {
        self.get_url(&self.polling_url(sid)).await
    }

    /// A polling POST carrying `body` for this session.
    pub async fn post(&self, sid: &str, body: impl Into<Bytes>) -> Reply {
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.polling_url(sid))
            .header(http::header::CONTENT_TYPE, "text/plain;charset=UTF-8")
            .body(Full::new(body.into()))
            .expect("request");
        self.request(request).await
    }

    /// Opens a polling session and returns its handshake packet, parsed.
    pub async fn polling_handshake(&self) -> Handshake {
        let reply = self.get_url(&self.url("EIO=4&transport=polling")).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "handshake refused: {}",
            reply.body
        );
        Handshake::parse(&reply.body)
    }

    /// A websocket client request for the engine, with or without a session id.
    pub fn ws_request(&self, sid: Option<&str>) -> Request<()> {
        testkit::engineio::websocket_url(self.addr, sid)
            .into_client_request()
            .expect("websocket request")
    }

    /// Connects a websocket; panics if the server refuses the handshake.
    pub async fn ws_connect(&self, request: Request<()>) -> Ws {
        within(
            "websocket handshake",
            tokio_tungstenite::connect_async(request),
        )
        .await
        .expect("websocket handshake accepted")
        .0
    }

    /// Opens a session that lives on a websocket from the start.
    pub async fn websocket_session(&self) -> (Ws, Handshake) {
        let mut ws = self.ws_connect(self.ws_request(None)).await;
        let open = next_text(&mut ws).await;
        (ws, Handshake::parse(&open))
    }

    /// Waits until the session has ended and says why.
    pub async fn disconnect_reason(&self, sid: &str) -> DisconnectReason {
        let mut watcher = self.disconnects.clone();
        let ended = within(&format!("session {sid} to end"), async {
            watcher
                .wait_for(|ended| ended.contains_key(sid))
                .await
                .map(|ended| ended[sid])
        })
        .await;
        ended.expect("the engine is still running")
    }

    /// Whether the session has ended, right now.
    pub fn has_ended(&self, sid: &str) -> bool {
        self.disconnects.borrow().contains_key(sid)
    }
}

/// The next websocket message, whatever it is (`None` when the connection ended).
pub async fn next_message(ws: &mut Ws) -> Option<WsMessage> {
    testkit::engineio::next_message(ws, DEADLINE).await
}

/// The next websocket text frame; panics on anything else.
pub async fn next_text(ws: &mut Ws) -> String {
    match next_message(ws).await {
        Some(WsMessage::Text(text)) => text.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    within("a websocket send", ws.send(WsMessage::text(text)))
        .await
        .expect("websocket send");
}

/// Waits until the server ends the websocket (a close frame, or the connection just ending).
pub async fn expect_ws_closed(ws: &mut Ws) {
    match next_message(ws).await {
        None | Some(WsMessage::Close(_)) => {}
        Some(other) => panic!("expected the websocket to close, got {other:?}"),
    }
}

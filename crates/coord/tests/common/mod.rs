//! What the Redis tests share: `ChatServer` workers with the Redis bus and store, and a raw
//! Socket.IO client of the chat. `redis-server` itself comes from the test kit.

#![allow(dead_code, unused_imports)] // Each test file uses part of it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chat::{ChatConfig, ChatServer};
use coord::{RedisBus, RedisConfig, RedisLink, RedisStore};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Bounds every wait: a hung server or client fails the test instead of stalling it.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub use testkit::redis::RedisServer;

// ---- chat workers ----------------------------------------------------------------------------

/// A `ChatServer` with the Redis bus and store, as `chatctl serve --redis` sets it up.
pub struct Worker {
    pub addr: SocketAddr,
    pub bus: Arc<RedisBus>,
    /// Its connection to Redis, whose counts of dropped messages a test reads.
    pub link: Arc<RedisLink>,
    /// The server's Socket.IO side, for operations a test makes from the server.
    pub io: socketio::SocketIo,
    pub serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// The settings of the test workers: a fixed cookie key.
pub fn chat_config() -> ChatConfig {
    ChatConfig {
        secret: b"coord redis test secret".to_vec(),
        ..ChatConfig::default()
    }
}

pub async fn worker(config: RedisConfig) -> Worker {
    worker_with(config, chat_config()).await
}

/// A Redis worker with chat settings of the test's choosing.
pub async fn worker_with(config: RedisConfig, mut chat: ChatConfig) -> Worker {
    let link = RedisLink::new(config).expect("valid Redis URL");
    let bus = RedisBus::new(link.clone());
    let adapter_bus = bus.clone();
    chat.io.adapter = Arc::new(move |ns| adapter_bus.adapter(ns));
    let store = Arc::new(RedisStore::new(link.clone()));
    let server = ChatServer::new(chat, store.clone());
    let io = server.io().clone();
    bus.start(server.io().clone());
    store.start_heartbeat(server.io().clone());
    let (addr, serving) = serve(server).await;
    Worker {
        addr,
        bus,
        link,
        io,
        serving,
    }
}

/// A `ChatServer` alone, with the store of one process (the one the master keeps for the
/// embedded mode), as `chatctl serve` without a master or Redis sets it up.
pub async fn memory_worker(chat: ChatConfig, store: Arc<chat::MemoryStore>) -> SocketAddr {
    serve(ChatServer::new(chat, store)).await.0
}

/// Serves `server` on a loopback port of its own.
async fn serve(server: ChatServer) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let serving = tokio::spawn(async move {
        server
            .serve(listener, std::future::pending::<Duration>())
            .await
    });
    (addr, serving)
}

/// Logs in through the landing form and returns the session cookie (`name=value`).
pub fn login(addr: SocketAddr, nickname: &str) -> String {
    let body = format!("nickname={nickname}");
    let mut stream = TcpStream::connect(addr).expect("connect for login");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(
        stream,
        "POST /login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send login");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("login response");
    response
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie")
                .then(|| value.trim().split(';').next().unwrap_or("").to_owned())
        })
        .unwrap_or_else(|| panic!("login of {nickname} set no cookie:\n{response}"))
}

/// History limits that keep the last `n` messages for the length of a test.
pub fn keep(n: usize) -> chat::HistoryLimits {
    chat::HistoryLimits {
        keep: n,
        ttl: Duration::from_secs(3600),
    }
}

// ---- a raw Socket.IO client ------------------------------------------------------------------

/// An event the server sent: namespace, name, first argument.
#[derive(Debug, Clone)]
pub struct Received {
    pub ns: String,
    pub name: String,
    pub data: Value,
}

/// A Socket.IO client on a websocket, connected to `/chat_infra` and `/chat_com`. A task reads
/// the socket (answering pings) and queues the events.
pub struct Client {
    pub nickname: String,
    outgoing: mpsc::UnboundedSender<String>,
    pub events: mpsc::UnboundedReceiver<Received>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, cookie: &str, nickname: &str) -> Self {
        let mut request = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket")
            .into_client_request()
            .expect("websocket request");
        request
            .headers_mut()
            .insert("cookie", cookie.parse().expect("cookie header"));
        let (mut ws, _) = within(
            "websocket handshake",
            tokio_tungstenite::connect_async(request),
        )
        .await
        .expect("websocket accepted");
        let open = within("open packet", ws.next()).await;
        assert!(
            matches!(&open, Some(Ok(WsMessage::Text(text))) if text.starts_with('0')),
            "expected an open packet, got {open:?}"
        );
        let (outgoing, mut to_send) = mpsc::unbounded_channel::<String>();
        let (events_tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    text = to_send.recv() => match text {
                        Some(text) => if ws.send(WsMessage::text(text)).await.is_err() { return },
                        None => return,
                    },
                    message = ws.next() => match message {
                        Some(Ok(WsMessage::Text(text))) => {
                            if text.as_str() == "2" {
                                if ws.send(WsMessage::text("3")).await.is_err() { return }
                            } else if let Some(event) = parse_packet(&text) {
                                let _ = events_tx.send(event);
                            }
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return,
                    },
                }
            }
        });
        let mut client = Client {
            nickname: nickname.to_owned(),
            outgoing,
            events,
        };
        client.send("40/chat_infra,");
        client.send("40/chat_com,");
        client.expect("/chat_infra", "connect").await;
        client.expect("/chat_com", "connect").await;
        client
    }

    pub fn send(&self, packet: &str) {
        self.outgoing
            .send(packet.to_owned())
            .expect("client task alive");
    }

    pub fn emit(&self, ns: &str, event: &str, data: Value) {
        self.send(&format!("42{ns},{}", json!([event, data])));
    }

    pub fn say(&self, text: &str) {
        let line = json!({"type": "userMessage", "message": text}).to_string();
        self.emit("/chat_com", "message", Value::String(line));
    }

    /// The next event, or `None` when none arrives within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Received> {
        tokio::time::timeout(wait, self.events.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits for the next `name` event on `ns`, skipping others.
    pub async fn expect(&mut self, ns: &str, name: &str) -> Value {
        let what = format!("{} to get {name} on {ns}", self.nickname);
        within(&what, async {
            loop {
                let event = self.events.recv().await.expect("client connection open");
                if event.ns == ns && event.name == name {
                    return event.data;
                }
            }
        })
        .await
    }

    pub async fn join(&mut self, room: &str) {
        self.emit("/chat_infra", "join_room", json!({ "name": room }));
        self.expect("/chat_infra", "name_set").await;
    }

    pub async fn rooms(&mut self) -> Value {
        self.emit("/chat_infra", "get_rooms", json!(null));
        self.expect("/chat_infra", "rooms_list").await
    }
}

/// `40/ns,{...}` (connected), `44/ns,{...}` (refused, as event `connect_error`), `41/ns,`
/// (disconnected by the server, as event `disconnect`) or `42/ns,["event",data]`.
pub fn parse_packet(text: &str) -> Option<Received> {
    let (kind, rest) = text.split_at_checked(2)?;
    let (ns, payload) = match rest.strip_prefix('/') {
        Some(_) => rest.split_once(',')?,
        None => ("/", rest),
    };
    match kind {
        "40" => Some(Received {
            ns: ns.to_owned(),
            name: "connect".into(),
            data: serde_json::from_str(payload).ok()?,
        }),
        "44" => Some(Received {
            ns: ns.to_owned(),
            name: "connect_error".into(),
            data: serde_json::from_str(payload).ok()?,
        }),
        "41" => Some(Received {
            ns: ns.to_owned(),
            name: "disconnect".into(),
            data: Value::Null,
        }),
        "42" => {
            let mut array: Vec<Value> = serde_json::from_str(payload).ok()?;
            let data = if array.len() > 1 {
                array.remove(1)
            } else {
                Value::Null
            };
            Some(Received {
                ns: ns.to_owned(),
                name: array.first()?.as_str()?.to_owned(),
                data,
            })
        }
        _ => None,
    }
}

/// A chat line a client received: (username, message) of a `userMessage`.
pub fn user_message(event: &Received) -> Option<(String, String)> {
    if event.ns != "/chat_com" || event.name != "message" {
        return None;
    }
    let line: Value = serde_json::from_str(event.data.as_str()?).ok()?;
    if line["type"] != "userMessage" {
        return None;
    }
    Some((
        line["username"].as_str()?.to_owned(),
        line["message"].as_str()?.to_owned(),
    ))
}

pub async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    testkit::within(DEADLINE, what, future).await
}

/// Reads `client`'s events until `done` says the collected chat lines are complete.
pub async fn collect_lines(
    client: &mut Client,
    lines: &mut Vec<(String, String)>,
    done: impl Fn(&[(String, String)]) -> bool,
) {
    let what = format!("{}'s chat lines", client.nickname);
    within(&what, async {
        while !done(lines) {
            let event = client.events.recv().await.expect("client connection open");
            lines.extend(user_message(&event));
        }
    })
    .await
}

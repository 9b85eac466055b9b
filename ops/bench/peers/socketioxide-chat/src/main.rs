//! The socketioxide peer of ops/bench/run.sh: the chat of crates/chat (its HTTP and Socket.IO
//! surface, see crates/chat/src/{routes.rs,events.rs}) written on socketioxide and axum, one
//! process on tokio's multi-thread runtime, everything in memory.
//!
//! Usage: socketioxide-chat --port 3000 [--host 127.0.0.1]   (or PORT, HOST; SECRET signs the
//! cookies, random when unset). Prints "socketioxide-chat listening on HOST:PORT" when ready.
//!
//! Differences from crates/chat, on purpose: no per-socket message rate limit (the benchmark
//! measures throughput), no pages (only `POST /login` and `GET /healthz`). A room joined on
//! /chat_infra applies to the /chat_com sockets of the same login (crates/chat: of the same
//! Engine.IO connection), because socketioxide does not tell which sockets share a connection;
//! a benchmark client logs in once per connection, so both select the same socket.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::Form;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;
use socketioxide::extract::{Data, SocketRef, State};
use socketioxide::handler::ConnectHandler;
use socketioxide::SocketIo;

const COOKIE_NAME: &str = "chat_session";
const SESSION_TTL_S: u64 = 7 * 24 * 3600;
const HISTORY_LEN: usize = 50;
const MAX_MESSAGE_CHARS: usize = 2000;
const INFRA: &str = "/chat_infra";
const COM: &str = "/chat_com";
/// Prefix of the Socket.IO rooms that are chat rooms.
const ROOM_PREFIX: &str = "room:";

/// What the HTTP routes and the event handlers share.
struct Chat {
    /// Signs the session cookies.
    secret: Vec<u8>,
    /// Session id → nickname: the logins a cookie may name.
    sessions: Mutex<HashMap<String, String>>,
    /// Members and history of each room, for `users_list`, `user_entered`/`user_left` and `history`.
    rooms: Mutex<HashMap<String, Room>>,
}

#[derive(Default)]
struct Room {
    /// Nickname → sockets of it in the room: a nickname leaves when its last socket does.
    members: HashMap<String, usize>,
    /// The last HISTORY_LEN `userMessage` lines, oldest first.
    history: VecDeque<String>,
}

type SharedChat = Arc<Chat>;

/// Who a socket belongs to; set by the cookie middleware.
#[derive(Clone)]
struct User {
    nickname: Arc<str>,
    session: Arc<str>,
    /// The chat rooms of this /chat_infra socket, kept here because socketioxide may have taken
    /// the socket out of its rooms by the time the disconnect handler runs.
    rooms: Arc<Mutex<Vec<String>>>,
}

#[derive(Deserialize)]
struct NamePayload {
    name: String,
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    nickname: String,
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    message: String,
}

/// A line of the chat as clients receive it, a JSON string with its keys in this order.
#[derive(Serialize)]
struct ChatLine<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    message: &'a str,
}

impl ChatLine<'_> {
    fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[derive(Debug)]
struct ConnectRefused(&'static str);

impl std::fmt::Display for ConnectRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl Chat {
    fn signature(&self, value: &str) -> String {
        // HMAC takes keys of any length.
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!());
        mac.update(value.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// The session id of a signed cookie value `<id>.<signature>`, if the signature matches.
    fn verify<'a>(&self, signed: &'a str) -> Option<&'a str> {
        let (id, signature) = signed.rsplit_once('.')?;
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .ok()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).ok()?;
        mac.update(id.as_bytes());
        mac.verify_slice(&signature).ok().map(|()| id)
    }
}

/// A nickname or room name: trimmed, 1..=max characters, no control characters.
fn bounded_text(text: &str, max: usize) -> Option<&str> {
    let text = text.trim();
    let ok = !text.is_empty() && text.chars().count() <= max && !text.chars().any(char::is_control);
    ok.then_some(text)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
}

fn room_key(room: &str) -> String {
    format!("{ROOM_PREFIX}{room}")
}

fn session_room(session: &str) -> String {
    format!("session:{session}")
}

fn user(socket: &SocketRef) -> Option<User> {
    socket.extensions.get::<User>()
}

async fn login(
    axum::extract::State(chat): axum::extract::State<SharedChat>,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(nickname) = bounded_text(&form.nickname, 32) else {
        return (StatusCode::BAD_REQUEST, "invalid nickname").into_response();
    };
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
    if let Ok(mut sessions) = chat.sessions.lock() {
        sessions.insert(id.clone(), nickname.to_owned());
    }
    let cookie = format!(
        "{COOKIE_NAME}={id}.{}; Path=/; Max-Age={SESSION_TTL_S}; HttpOnly; SameSite=Lax",
        chat.signature(&id)
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/rooms".to_owned()),
            (header::SET_COOKIE, cookie),
        ],
    )
        .into_response()
}

/// Admits a namespace connection only with a valid signed cookie of a known session.
fn authenticate(socket: &SocketRef, chat: &Chat) -> Result<(), ConnectRefused> {
    let signed = cookie(&socket.req_parts().headers, COOKIE_NAME)
        .ok_or(ConnectRefused("No cookie transmitted."))?;
    let session = chat
        .verify(signed)
        .ok_or(ConnectRefused("Invalid session"))?;
    let nickname = chat
        .sessions
        .lock()
        .ok()
        .and_then(|sessions| sessions.get(session).cloned())
        .ok_or(ConnectRefused("Invalid session"))?;
    socket.extensions.insert(User {
        nickname: nickname.into(),
        session: session.into(),
        rooms: Arc::default(),
    });
    Ok(())
}

// The namespaces are set up in middlewares, not in connect handlers: socketioxide sends the
// CONNECT packet before it spawns the connect handler, so a client that emits at once (join_room
// right after the CONNECT) could otherwise reach a socket without its event handlers.

async fn on_connected() {}

async fn infra_middleware(
    socket: SocketRef,
    State(chat): State<SharedChat>,
) -> Result<(), ConnectRefused> {
    authenticate(&socket, &chat)?;
    set_up_infra(&socket);
    Ok(())
}

async fn com_middleware(
    socket: SocketRef,
    io: SocketIo,
    State(chat): State<SharedChat>,
) -> Result<(), ConnectRefused> {
    authenticate(&socket, &chat)?;
    set_up_com(&socket, &io);
    Ok(())
}

fn set_up_infra(socket: &SocketRef) {
    // Found there by the login's /chat_com socket when it connects after a join_room.
    if let Some(user) = user(socket) {
        socket.join(session_room(&user.session));
    }
    socket.on("join_room", join_room);
    socket.on(
        "leave_room",
        async |socket: SocketRef,
               io: SocketIo,
               State(chat): State<SharedChat>,
               Data(payload): Data<NamePayload>| {
            let joined = user(&socket)
                .is_some_and(|u| u.rooms.lock().is_ok_and(|r| r.contains(&payload.name)));
            if joined {
                leave_room(&chat, &io, &socket, &payload.name).await;
            }
        },
    );
    socket.on_disconnect(
        async |socket: SocketRef, io: SocketIo, State(chat): State<SharedChat>| {
            let rooms = user(&socket)
                .and_then(|u| u.rooms.lock().ok().map(|r| r.clone()))
                .unwrap_or_default();
            for room in rooms {
                leave_room(&chat, &io, &socket, &room).await;
            }
        },
    );
}

async fn join_room(
    socket: SocketRef,
    io: SocketIo,
    State(chat): State<SharedChat>,
    Data(payload): Data<NamePayload>,
) {
    let Some(user) = user(&socket) else { return };
    let Some(room) = bounded_text(&payload.name, 64).map(str::to_owned) else {
        let _ = socket.emit(
            "error",
            &json!({ "message": "join_room expects {\"name\": ROOM}" }),
        );
        return;
    };
    socket.join(room_key(&room));
    if let Ok(mut rooms) = user.rooms.lock() {
        if !rooms.contains(&room) {
            rooms.push(room.clone());
        }
    }
    // The same login's /chat_com sockets receive the room's messages.
    if let Some(com) = io.of(COM) {
        let _ = com
            .within(session_room(&user.session))
            .join(room_key(&room))
            .await;
    }
    let (new_user, history, users) = {
        let Ok(mut rooms) = chat.rooms.lock() else {
            return;
        };
        let state = rooms.entry(room.clone()).or_default();
        let count = state.members.entry(user.nickname.to_string()).or_insert(0);
        *count += 1;
        let new_user = *count == 1;
        let history: Vec<String> = state.history.iter().cloned().collect();
        let users: Vec<String> = state.members.keys().cloned().collect();
        (new_user, history, users)
    };
    let _ = socket.emit("name_set", &json!({ "name": user.nickname.as_ref() }));
    let _ = socket.emit("history", &history);
    let welcome = format!("Welcome to {room}!");
    let welcome = ChatLine {
        kind: "serverMessage",
        username: None,
        message: &welcome,
    };
    let _ = socket.emit("message", &welcome.to_json());
    if new_user {
        let _ = socket
            .to(room_key(&room))
            .emit("user_entered", &json!({ "name": user.nickname.as_ref() }))
            .await;
    }
    let _ = socket
        .within(room_key(&room))
        .emit("users_list", &users)
        .await;
}

/// Takes a /chat_infra socket (and its login's /chat_com sockets) out of a room.
async fn leave_room(chat: &Chat, io: &SocketIo, socket: &SocketRef, room: &str) {
    let Some(user) = user(socket) else { return };
    if let Ok(mut rooms) = user.rooms.lock() {
        rooms.retain(|r| r != room);
    }
    let (gone, users) = {
        let Ok(mut rooms) = chat.rooms.lock() else {
            return;
        };
        let state = rooms.entry(room.to_owned()).or_default();
        let gone = match state.members.get_mut(user.nickname.as_ref()) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                state.members.remove(user.nickname.as_ref());
                true
            }
            None => false,
        };
        (gone, state.members.keys().cloned().collect::<Vec<_>>())
    };
    if gone {
        let _ = socket
            .to(room_key(room))
            .emit("user_left", &json!({ "name": user.nickname.as_ref() }))
            .await;
    }
    let _ = socket.to(room_key(room)).emit("users_list", &users).await;
    socket.leave(room_key(room));
    if let Some(com) = io.of(COM) {
        let _ = com
            .within(session_room(&user.session))
            .leave(room_key(room))
            .await;
    }
}

fn set_up_com(socket: &SocketRef, io: &SocketIo) {
    let Some(user) = user(socket) else { return };
    socket.join(session_room(&user.session));
    // The client may join a room on /chat_infra before this socket is in its session room (where
    // join_room looks for it): catch up. Joining first, reading second, while join_room records
    // the room first and looks second, leaves no order in which both miss each other.
    if let Some(infra) = io.of(INFRA) {
        for infra_socket in infra.within(session_room(&user.session)).sockets() {
            let rooms = crate::user(&infra_socket)
                .and_then(|u| u.rooms.lock().ok().map(|r| r.clone()))
                .unwrap_or_default();
            for room in rooms {
                socket.join(room_key(&room));
            }
        }
    }
    socket.on("message", chat_message);
}

/// `message` on /chat_com: a JSON string `{"type":"userMessage","message":...}` goes to the
/// others in the socket's rooms as `userMessage` and back to the sender as `myMessage`.
async fn chat_message(socket: SocketRef, State(chat): State<SharedChat>, Data(text): Data<String>) {
    let Some(user) = user(&socket) else { return };
    let incoming = serde_json::from_str::<Incoming>(&text)
        .ok()
        .filter(|i| i.kind == "userMessage")
        .filter(|i| !i.message.trim().is_empty() && i.message.chars().count() <= MAX_MESSAGE_CHARS);
    let Some(incoming) = incoming else {
        let _ = socket.emit(
            "error",
            &json!({ "message": "message expects a JSON string {\"type\":\"userMessage\",\"message\":TEXT}" }),
        );
        return;
    };
    let rooms: Vec<String> = socket
        .rooms()
        .into_iter()
        .filter(|r| r.starts_with(ROOM_PREFIX))
        .map(|r| r.into_owned())
        .collect();
    if rooms.is_empty() {
        let _ = socket.emit(
            "error",
            &json!({ "message": "join a room before sending messages" }),
        );
        return;
    }
    let line = |kind| {
        ChatLine {
            kind,
            username: Some(&user.nickname),
            message: &incoming.message,
        }
        .to_json()
    };
    let theirs = line("userMessage");
    if let Ok(mut all) = chat.rooms.lock() {
        for room in &rooms {
            let history = &mut all
                .entry(room[ROOM_PREFIX.len()..].to_owned())
                .or_default()
                .history;
            history.push_back(theirs.clone());
            if history.len() > HISTORY_LEN {
                history.pop_front();
            }
        }
    }
    let _ = socket.to(rooms).emit("message", &theirs).await;
    let _ = socket.emit("message", &line("myMessage"));
}

fn flag(name: &str, env: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == name {
            return args.next();
        }
        if let Some(value) = arg.strip_prefix(&format!("{name}=")) {
            return Some(value.to_owned());
        }
    }
    std::env::var(env).ok()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = flag("--port", "PORT")
        .unwrap_or_else(|| "3000".into())
        .parse()?;
    let host = flag("--host", "HOST").unwrap_or_else(|| "127.0.0.1".into());
    let secret = std::env::var("SECRET")
        .map(String::into_bytes)
        .unwrap_or_else(|_| rand::random::<[u8; 32]>().to_vec());
    let chat: SharedChat = Arc::new(Chat {
        secret,
        sessions: Mutex::default(),
        rooms: Mutex::default(),
    });

    // socketioxide buffers 128 packets per client by default and drops what does not fit (the
    // pings too, so the client is then timed out): a join in a room of 2 000 queues a users_list
    // for everyone at once. chatctl's engineio buffers 4 096 packets: the same here.
    let (layer, io) = SocketIo::builder()
        .max_buffer_size(4096)
        .with_state(chat.clone())
        .build_layer();
    io.ns(INFRA, on_connected.with(infra_middleware));
    io.ns(COM, on_connected.with(com_middleware));

    let app = axum::Router::new()
        .route("/login", post(login))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(chat)
        .layer(layer);
    let listener = tokio::net::TcpListener::bind((host.as_str(), port)).await?;
    println!(
        "socketioxide-chat listening on {host}:{port} (pid {})",
        std::process::id()
    );
    axum::serve(listener, app).await?;
    Ok(())
}

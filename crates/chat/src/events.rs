//! The chat's Socket.IO namespaces and events, with the book's names:
//! `/chat_infra` manages rooms and presence, `/chat_com` carries messages.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;
use socketio::{ConnectError, Event, Namespace, Socket, SocketIo};

use crate::cookie::{CookieSigner, COOKIE_NAME};
use crate::departure::Departure;
use crate::rate_limit::{ConnectionBudget, Cost};
use crate::rooms::{chat_room_of, room_key, session_room, user_room, COM, INFRA};
use crate::store::{HistoryLimits, Store};
use crate::validate;
use crate::ChatConfig;

/// What the event handlers share.
pub(crate) struct ChatState {
    pub(crate) config: ChatConfig,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) signer: CookieSigner,
    /// What each client address may still spend on logins.
    pub(crate) logins: crate::login_budget::LoginBudgets,
}

impl ChatState {
    /// The login of a request's session cookie, if valid.
    pub(crate) async fn session_of(&self, headers: &http::HeaderMap) -> Option<crate::Session> {
        let value = socketio::cookie(headers, COOKIE_NAME)?;
        let id = self.signer.verify(value).ok()?;
        self.store.session(id).await.ok().flatten()
    }
}

/// Who a socket belongs to; set by the cookie middleware.
#[derive(Debug, Clone)]
struct User {
    nickname: Arc<str>,
    /// The login this socket belongs to: logging out disconnects its sockets everywhere.
    session: Arc<str>,
}

#[derive(Deserialize)]
struct NamePayload {
    name: String,
}

#[derive(Deserialize)]
struct PrivateMessage {
    to: String,
    message: String,
}

#[derive(Serialize)]
struct ChatLine<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    username: &'a str,
    message: &'a str,
}

/// Declares both namespaces on `io`.
pub(crate) fn register(io: &SocketIo, state: Arc<ChatState>) {
    let infra = io.ns(INFRA, {
        let state = state.clone();
        move |socket| on_infra_connect(state.clone(), socket)
    });
    let com = io.ns(COM, on_com_connect);
    // Registered once per namespace, not per socket: an idle socket carries no handler map.
    let on = |event: &str, cost: Cost, handler: EventHandler| {
        on_limited(&infra, &state, event, cost, handler)
    };
    on("join_room", Cost::Request, |state, socket, event| {
        Box::pin(join_room(state, socket, event))
    });
    on("leave_room", Cost::Request, |state, socket, event| {
        Box::pin(leave_room_event(state, socket, event))
    });
    on("get_rooms", Cost::Request, |state, socket, _| {
        Box::pin(get_rooms(state, socket))
    });
    on("set_name", Cost::Request, |_, socket, event| {
        Box::pin(set_name(socket, event))
    });
    on("private_message", Cost::Message, |state, socket, event| {
        Box::pin(private_message(state, socket, event))
    });
    on_limited(
        &com,
        &state,
        "message",
        Cost::Message,
        |state, socket, event| Box::pin(chat_message(state, socket, event)),
    );
    for ns in [infra, com] {
        let state = state.clone();
        ns.use_middleware(move |socket| authenticate(state.clone(), socket));
    }
}

/// Admits a namespace connection only within the connection's budget and with a valid signed
/// session cookie.
async fn authenticate(state: Arc<ChatState>, socket: Arc<Socket>) -> Result<(), ConnectError> {
    if !spend(&state, &socket, Cost::Connect) {
        return Err(ConnectError::new(rate_error(&state, Cost::Connect)));
    }
    let cookie = socket
        .handshake()
        .cookie(COOKIE_NAME)
        .ok_or_else(|| ConnectError::new("No cookie transmitted."))?;
    let session_id = state
        .signer
        .verify(cookie)
        .map_err(|_| ConnectError::new("Invalid session"))?;
    let session = state
        .store
        .session(session_id)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "session lookup failed; refusing the connection");
            ConnectError::new("Session store unavailable, try again")
        })?
        .ok_or_else(|| ConnectError::new("Invalid session"))?;
    // Kept once for the connection, which both namespaces share (and one cookie logs in).
    if let Ok(mut extensions) = socket.connection_extensions().write() {
        extensions.insert(User {
            nickname: session.nickname.into(),
            session: session.id.into(),
        });
    }
    Ok(())
}

fn user(socket: &Socket) -> Option<User> {
    socket
        .connection_extensions()
        .read()
        .ok()?
        .get::<User>()
        .cloned()
}

/// Spends `cost` from the budget of the socket's connection, which its sockets in every
/// namespace share; false when the budget does not allow it.
fn spend(state: &ChatState, socket: &Socket, cost: Cost) -> bool {
    let now = Instant::now();
    let Ok(mut extensions) = socket.connection_extensions().write() else {
        return false;
    };
    let budget = extensions
        .get_or_insert_with(|| Arc::new(Mutex::new(ConnectionBudget::new(&state.config, now))));
    let Ok(mut budget) = budget.lock() else {
        return false;
    };
    budget.spend(cost, &state.config, now)
}

/// Registers `handler` for `event`, behind the connection's budget: an event beyond it is
/// answered with an `error` event and not handled.
fn on_limited(
    ns: &Namespace,
    state: &Arc<ChatState>,
    event: &str,
    cost: Cost,
    handler: EventHandler,
) {
    let state = state.clone();
    ns.on(event, move |socket, event| {
        let state = state.clone();
        async move {
            if spend(&state, &socket, cost) {
                handler(state, socket, event).await;
            } else {
                send_error(&socket, rate_error(&state, cost));
            }
        }
    });
}

/// An event handler of the chat.
type EventHandler =
    fn(Arc<ChatState>, Arc<Socket>, Event) -> futures_util::future::BoxFuture<'static, ()>;

fn send_error(socket: &Socket, message: impl std::fmt::Display) {
    let _ = socket.emit("error", &json!({ "message": message.to_string() }));
}

/// The chat rooms (not per-user or per-socket rooms) a socket is in.
fn chat_rooms(socket: &Socket) -> Vec<String> {
    socket
        .rooms()
        .iter()
        .filter_map(|room| chat_room_of(room).map(str::to_owned))
        .collect()
}

async fn on_infra_connect(state: Arc<ChatState>, socket: Arc<Socket>) {
    if socket.recovered() {
        // Back with its rooms: its place in each is taken again before its grace ends, and
        // nobody was told it left.
        if let Some(user) = user(&socket) {
            for room in chat_rooms(&socket) {
                rejoin(&state, &socket, &user, &room).await;
            }
        }
    } else if let Some(user) = user(&socket) {
        socket.join(user_room(&user.nickname));
        socket.join(session_room(&user.session));
    }
    let state = state.clone();
    socket.on_disconnect(move |socket, reason| async move {
        let grace = state.config.presence_grace();
        if reason.is_recoverable() && !grace.is_zero() {
            return depart_later(&state, &socket, grace).await;
        }
        for room in chat_rooms(&socket) {
            leave_room(&state, &socket, &room).await;
        }
    });
}

/// A recovered socket takes its place in a room again; announced only if it had been given
/// up (its grace ended first).
async fn rejoin(state: &ChatState, socket: &Socket, user: &User, room: &str) {
    match state
        .store
        .join_room(room, &user.nickname, socket.id())
        .await
    {
        Ok(true) => {
            let _ = socket
                .to(room_key(room))
                .emit("user_entered", &json!({ "name": user.nickname.as_ref() }));
        }
        Ok(false) => {}
        Err(error) => tracing::warn!(%error, "cannot record room membership"),
    }
}

/// A socket whose connection broke may come back: its memberships end after `grace` (see
/// [`crate::Store::depart_later`]); a store without grace says who left now.
async fn depart_later(state: &ChatState, socket: &Socket, grace: std::time::Duration) {
    let rooms = chat_rooms(socket);
    match state.store.depart_later(socket.id(), rooms, grace).await {
        Ok(left) => {
            for (room, nickname) in left {
                let _ = Departure {
                    room: &room,
                    nickname: &nickname,
                }
                .announce_from(socket);
            }
        }
        Err(error) => tracing::warn!(%error, "cannot record leaving the rooms"),
    }
}

/// Tells the rooms about the users whose grace ended without them coming back, every
/// `presence_sweep`, until the server stops.
pub(crate) async fn announce_departures(state: Arc<ChatState>, io: socketio::SocketIo) {
    let mut every = tokio::time::interval(state.config.presence_sweep);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match state.store.expired_departures().await {
            Ok(left) => {
                for (room, nickname) in left {
                    let _ = Departure {
                        room: &room,
                        nickname: &nickname,
                    }
                    .announce(&io);
                }
            }
            Err(error) => tracing::debug!(%error, "cannot read the departures to announce"),
        }
    }
}

async fn on_com_connect(socket: Arc<Socket>) {
    if socket.recovered() {
        return;
    }
    if let Some(user) = user(&socket) {
        socket.join(session_room(&user.session));
    }
    // The client may join a room on /chat_infra before /chat_com connects: catch up.
    if let Some(infra) = socket.sibling(INFRA) {
        for room in chat_rooms(&infra) {
            socket.join(room_key(&room));
        }
    }
}

async fn join_room(state: Arc<ChatState>, socket: Arc<Socket>, event: Event) {
    let Some(user) = user(&socket) else { return };
    let Ok(payload) = event.data::<NamePayload>() else {
        return send_error(&socket, "join_room expects {\"name\": ROOM}");
    };
    let room = match validate::room(&payload.name) {
        Ok(room) => room.to_owned(),
        Err(error) => return send_error(&socket, error),
    };
    let current = chat_rooms(&socket);
    if !current.contains(&room) && current.len() >= state.config.max_rooms_per_socket {
        return send_error(
            &socket,
            format!(
                "at most {} rooms at once",
                state.config.max_rooms_per_socket
            ),
        );
    }
    socket.join(room_key(&room));
    if let Some(com) = socket.sibling(COM) {
        com.join(room_key(&room));
    }
    let new_user = match state
        .store
        .join_room(&room, &user.nickname, socket.id())
        .await
    {
        Ok(new_user) => new_user,
        Err(error) => {
            tracing::warn!(%error, "cannot record room membership");
            false
        }
    };
    let _ = socket.emit("name_set", &json!({ "name": user.nickname.as_ref() }));
    // The history before the welcome: a page replaces everything it shows with the history (so
    // that a rejoin after a reconnect does not repeat lines), which would erase a greeting sent
    // before it.
    let history = state.store.history(&room).await.unwrap_or_default();
    let _ = socket.emit("history", &history);
    let welcome = json!({ "type": "serverMessage", "message": format!("Welcome to {room}!") });
    let _ = socket.emit("message", &welcome.to_string());
    if new_user {
        let _ = socket
            .to(room_key(&room))
            .emit("user_entered", &json!({ "name": user.nickname.as_ref() }));
    }
    // The joiner gets the whole list; the others only the change (`user_entered` above), so
    // a join costs bytes in proportion to the room, not to its square.
    let users = state.store.room_users(&room).await.unwrap_or_default();
    let _ = socket.emit("users_list", &users);
}

async fn leave_room_event(state: Arc<ChatState>, socket: Arc<Socket>, event: Event) {
    let Ok(payload) = event.data::<NamePayload>() else {
        return;
    };
    if chat_rooms(&socket).contains(&payload.name) {
        leave_room(&state, &socket, &payload.name).await;
    }
}

/// Takes a socket out of a room: presence, and `user_left` for the others when the nickname's
/// last socket leaves.
/// The store says who left: the nickname the socket joined under, not the one it may have
/// taken since with `set_name`.
async fn leave_room(state: &Arc<ChatState>, socket: &Socket, room: &str) {
    let left = state
        .store
        .leave_room(room, socket.id())
        .await
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot record leaving a room");
            None
        });
    if let Some(nickname) = left {
        let _ = Departure {
            room,
            nickname: &nickname,
        }
        .announce_from(socket);
    }
    socket.leave(&room_key(room));
    if let Some(com) = socket.sibling(COM) {
        com.leave(&room_key(room));
    }
}

async fn get_rooms(state: Arc<ChatState>, socket: Arc<Socket>) {
    match state.store.room_counts().await {
        Ok(counts) => {
            let rooms: serde_json::Map<String, serde_json::Value> = counts
                .into_iter()
                .map(|(room, n)| (room, json!(n)))
                .collect();
            let _ = socket.emit("rooms_list", &rooms);
        }
        Err(error) => send_error(&socket, format!("rooms unavailable: {error}")),
    }
}

/// The book's chapter 3 flow: choose the name shown for this connection.
async fn set_name(socket: Arc<Socket>, event: Event) {
    let Ok(payload) = event.data::<NamePayload>() else {
        return;
    };
    let name = match validate::nickname(&payload.name) {
        Ok(name) => name.to_owned(),
        Err(error) => return send_error(&socket, error),
    };
    if let Some(user) = user(&socket) {
        if let Ok(mut extensions) = socket.connection_extensions().write() {
            extensions.insert(User {
                nickname: name.as_str().into(),
                ..user
            });
        }
    }
    let _ = socket.emit("name_set", &json!({ "name": name }));
}

async fn private_message(state: Arc<ChatState>, socket: Arc<Socket>, event: Event) {
    let Some(user) = user(&socket) else { return };
    let Ok(payload) = event.data::<PrivateMessage>() else {
        return send_error(
            &socket,
            "private_message expects {\"to\": NICKNAME, \"message\": TEXT}",
        );
    };
    let to = match validate::nickname(&payload.to) {
        Ok(to) => to,
        Err(error) => return send_error(&socket, error),
    };
    let message = match validate::message(&payload.message, state.config.max_message_chars) {
        Ok(message) => message,
        Err(error) => return send_error(&socket, error),
    };
    // Whether the nickname is online on any worker: a message to nobody is an error, not a
    // silent drop.
    let recipients = socket.ns().to(user_room(to));
    if recipients.count().await == 0 {
        return send_error(&socket, format!("{to} is not online"));
    }
    let body = json!({ "from": user.nickname.as_ref(), "to": to, "message": message });
    let relayed = recipients.emit("private_message", &body);
    if to != user.nickname.as_ref() {
        let _ = socket.emit("private_message", &body);
    }
    if let Err(error) = relayed {
        send_error(&socket, not_relayed(&error));
    }
}

/// What the sender of a message that did not reach the other workers is told.
fn not_relayed(error: &socketio::EmitError) -> String {
    format!(
        "your message may not have reached the users connected to other servers ({error}); \
         send it again later"
    )
}

fn rate_error(state: &ChatState, cost: Cost) -> String {
    match cost {
        Cost::Message => format!(
            "too many messages: at most {} per second",
            state.config.messages_per_second
        ),
        Cost::Request | Cost::Connect => format!(
            "too many requests: at most {} events and namespace connects per second",
            state.config.events_per_second
        ),
    }
}

/// `message` on /chat_com: a JSON string `{"type":"userMessage","message":...}` goes to the
/// others in the socket's rooms as `userMessage` and back to the sender as `myMessage`.
async fn chat_message(state: Arc<ChatState>, socket: Arc<Socket>, event: Event) {
    let Some(user) = user(&socket) else { return };
    #[derive(Deserialize)]
    struct Incoming {
        #[serde(rename = "type")]
        kind: String,
        message: String,
    }
    let incoming = event
        .data::<String>()
        .ok()
        .and_then(|text| serde_json::from_str::<Incoming>(&text).ok())
        .filter(|incoming| incoming.kind == "userMessage");
    let Some(incoming) = incoming else {
        return send_error(
            &socket,
            "message expects a JSON string {\"type\":\"userMessage\",\"message\":TEXT}",
        );
    };
    let message = match validate::message(&incoming.message, state.config.max_message_chars) {
        Ok(message) => message,
        Err(error) => return send_error(&socket, error),
    };
    let rooms = chat_rooms(&socket);
    if rooms.is_empty() {
        return send_error(&socket, "join a room before sending messages");
    }
    let line = |kind| {
        serde_json::to_string(&ChatLine {
            kind,
            username: &user.nickname,
            message,
        })
        .unwrap_or_default()
    };
    let theirs = line("userMessage");
    let limits = HistoryLimits {
        keep: state.config.history_len,
        ttl: state.config.history_ttl,
    };
    let mut relayed = Ok(());
    for room in &rooms {
        if let Err(error) = socket.to(room_key(room)).emit("message", &theirs) {
            relayed = Err(error);
        }
        state.store.record_history(room, theirs.clone(), limits);
    }
    // The users on this worker got the line, so the sender sees it as sent; a loss on the
    // way to the other workers is said right after it, not kept silent.
    let _ = socket.emit("message", &line("myMessage"));
    // A client that asked for an acknowledgement learns whether every worker got the line.
    if let Some(ack) = event.ack {
        let _ = ack.send(&json!({ "relayed": relayed.is_ok() }));
    }
    if let Err(error) = relayed {
        send_error(&socket, not_relayed(&error));
    }
}

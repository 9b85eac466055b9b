//! The embedded bus and store: through the master, over each worker's IPC channel.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat::{HistoryLimits, MemoryStore, Session, Store, StoreError};
use engineio::Frame;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use socketio::{
    Adapter, BroadcastOptions, EmitError, LocalAdapter, Namespace, Room, Sid, SocketInfo, SocketIo,
};
use supervisor::drops::Drops;
use supervisor::ipc::WorkerLink;
use supervisor::MasterService;

use crate::wire::{StoreOp, WireBroadcast};

/// Rooms of this worker's sockets, plus publication of every broadcast to the other workers,
/// which deliver it to their own members of the same rooms.
pub struct EmbeddedAdapter {
    local: LocalAdapter,
    link: Arc<WorkerLink>,
}

impl EmbeddedAdapter {
    pub fn new(link: Arc<WorkerLink>) -> Self {
        EmbeddedAdapter {
            local: LocalAdapter::default(),
            link,
        }
    }

    fn publish(&self, wire: WireBroadcast) -> Result<(), EmitError> {
        let body = serde_json::value::to_raw_value(&wire).map_err(|error| {
            tracing::warn!(%error, "cannot encode a broadcast for the other workers");
            EmitError::NotRelayed(format!("cannot encode it: {error}"))
        })?;
        self.link
            .publish(body)
            .map_err(|error| EmitError::NotRelayed(error.to_string()))
    }
}

impl Adapter for EmbeddedAdapter {
    fn join(&self, sid: &Sid, rooms: &[Room]) {
        self.local.join(sid, rooms)
    }

    fn leave(&self, sid: &Sid, room: &str) {
        self.local.leave(sid, room)
    }

    fn leave_all(&self, sid: &Sid) {
        self.local.leave_all(sid)
    }

    fn rooms_of(&self, sid: &str) -> Vec<Room> {
        self.local.rooms_of(sid)
    }

    fn sockets(&self, opts: &BroadcastOptions) -> Vec<Sid> {
        self.local.sockets(opts)
    }

    fn rooms(&self) -> Vec<(Room, usize)> {
        self.local.rooms()
    }

    fn broadcast(
        &self,
        ns: &Namespace,
        frames: &[Frame],
        opts: &BroadcastOptions,
    ) -> Result<(), EmitError> {
        // The other workers first: their share of a big room then goes out while this worker
        // writes its own, instead of after it (the way to them is a task that would otherwise
        // wait behind every local writer this delivery wakes).
        let relayed = if opts.local {
            Ok(())
        } else {
            self.publish(WireBroadcast::new(ns.path(), frames, opts))
        };
        ns.deliver(&self.local.sockets(opts), frames, opts.volatile);
        relayed
    }

    fn disconnect_sockets(&self, ns: &Namespace, opts: &BroadcastOptions) {
        ns.disconnect_local(&self.local.sockets(opts));
        if !opts.local {
            // Fails only when the master is gone, and this worker with it.
            let _ = self.publish(WireBroadcast::disconnect(ns.path(), opts));
        }
    }

    fn fetch_sockets(
        &self,
        ns: &Namespace,
        opts: &BroadcastOptions,
    ) -> BoxFuture<'static, Vec<SocketInfo>> {
        let mut sockets = ns.socket_infos(&self.local.sockets(opts));
        let question = serde_json::to_value(WireBroadcast::new(ns.path(), &[], opts));
        let link = self.link.clone();
        async move {
            let Ok(question) = question else {
                return sockets;
            };
            match link.gather(question).await {
                Ok(answers) => {
                    for answer in answers {
                        sockets.extend(
                            serde_json::from_value::<Vec<SocketInfo>>(answer).unwrap_or_default(),
                        );
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot ask the other workers for their sockets")
                }
            }
            sockets
        }
        .boxed()
    }
}

/// Delivers the broadcasts other workers publish to this worker's sockets, and answers their
/// questions about this worker's sockets, until the master goes away.
pub async fn deliver_remote_broadcasts(
    io: SocketIo,
    link: Arc<WorkerLink>,
    mut messages: tokio::sync::mpsc::UnboundedReceiver<Box<RawValue>>,
) {
    let answering = io.clone();
    link.on_query(move |body| answer_query(&answering, body));
    while let Some(body) = messages.recv().await {
        let applied =
            serde_json::from_str::<WireBroadcast>(body.get()).is_ok_and(|wire| wire.apply(&io));
        if !applied {
            tracing::warn!("skipping a malformed broadcast from another worker");
        }
    }
}

/// This worker's sockets that match a [`WireBroadcast`]'s rooms, as another worker asked.
fn answer_query(io: &SocketIo, body: Value) -> Value {
    let decoded = serde_json::from_value::<WireBroadcast>(body)
        .ok()
        .and_then(WireBroadcast::decode);
    let Some((ns, _, opts)) = decoded else {
        return json!([]);
    };
    match io.of(&ns) {
        Some(ns) => json!(ns.socket_infos(&ns.adapter().sockets(&opts))),
        None => json!([]),
    }
}

/// The chat store of a worker: every operation asks the master.
pub struct EmbeddedStore {
    link: Arc<WorkerLink>,
    /// History entries it could not hand to the master (those the master fails to write are
    /// counted there).
    drops: Arc<Drops>,
}

impl EmbeddedStore {
    pub fn new(link: Arc<WorkerLink>, drops: Arc<Drops>) -> Self {
        EmbeddedStore { link, drops }
    }

    async fn ask<T: serde::de::DeserializeOwned>(&self, op: StoreOp) -> Result<T, StoreError> {
        let body = serde_json::to_value(op).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let reply = self
            .link
            .request(body)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        if let Some(error) = reply.get("error").and_then(Value::as_str) {
            return Err(StoreError::Unavailable(error.to_owned()));
        }
        serde_json::from_value(reply.get("ok").cloned().unwrap_or(Value::Null))
            .map_err(|e| StoreError::Unavailable(format!("unexpected answer from the master: {e}")))
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct WireSession {
    id: String,
    nickname: String,
}

impl Store for EmbeddedStore {
    fn create_session(
        &self,
        nickname: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Session, StoreError>> {
        let op = StoreOp::CreateSession {
            nickname: nickname.to_owned(),
            ttl_ms: crate::wire::millis(ttl),
        };
        async move {
            let session: WireSession = self.ask(op).await?;
            Ok(Session {
                id: session.id,
                nickname: session.nickname,
            })
        }
        .boxed()
    }

    fn session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Session>, StoreError>> {
        async move {
            let session: Option<WireSession> =
                self.ask(StoreOp::Session { id: id.to_owned() }).await?;
            Ok(session.map(|s| Session {
                id: s.id,
                nickname: s.nickname,
            }))
        }
        .boxed()
    }

    fn delete_session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.ask(StoreOp::DeleteSession { id: id.to_owned() })
            .boxed()
    }

    fn join_room<'a>(
        &'a self,
        room: &'a str,
        nickname: &'a str,
        socket: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let op = StoreOp::JoinRoom {
            room: room.to_owned(),
            nickname: nickname.to_owned(),
            socket: socket.to_owned(),
        };
        self.ask(op).boxed()
    }

    fn leave_room<'a>(
        &'a self,
        room: &'a str,
        socket: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let op = StoreOp::LeaveRoom {
            room: room.to_owned(),
            socket: socket.to_owned(),
        };
        self.ask(op).boxed()
    }

    fn room_counts(&self) -> BoxFuture<'_, Result<Vec<(String, usize)>, StoreError>> {
        self.ask(StoreOp::RoomCounts).boxed()
    }

    fn room_users<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.ask(StoreOp::RoomUsers {
            room: room.to_owned(),
        })
        .boxed()
    }

    fn push_history<'a>(
        &'a self,
        room: &'a str,
        entry: String,
        limits: HistoryLimits,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.ask(StoreOp::push_history(room, entry, limits)).boxed()
    }

    fn record_history(&self, room: &str, entry: String, limits: HistoryLimits) {
        let op = StoreOp::push_history(room, entry, limits);
        match serde_json::to_value(op) {
            Ok(body) => self.link.tell(body),
            Err(error) => self.drops.count(
                "history_write_failed",
                1,
                format_args!("a history entry could not be encoded for the master: {error}"),
            ),
        }
    }

    fn history<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.ask(StoreOp::History {
            room: room.to_owned(),
        })
        .boxed()
    }
}

/// A socket a worker put in a room: (room, socket id). The store knows its nickname.
type Membership = (String, String);

/// The master's side: one [`MemoryStore`] for every worker, and a record of which worker
/// process put which socket in which room, so a worker that dies leaves no ghost users.
#[derive(Default)]
pub struct StoreService {
    store: MemoryStore,
    /// worker process -> (room, socket) it joined
    members: Mutex<HashMap<u64, HashSet<Membership>>>,
}

impl StoreService {
    fn run(&self, worker: u64, op: StoreOp) -> Result<Value, StoreError> {
        // The memory store answers at once; its futures are ready when created.
        let now = |f: BoxFuture<'_, Result<Value, StoreError>>| {
            f.now_or_never()
                .unwrap_or_else(|| Err(StoreError::Unavailable("store busy".into())))
        };
        let store = &self.store;
        match op {
            StoreOp::CreateSession { nickname, ttl_ms } => now(async move {
                let s = store
                    .create_session(&nickname, Duration::from_millis(ttl_ms))
                    .await?;
                Ok(json!({ "id": s.id, "nickname": s.nickname }))
            }
            .boxed()),
            StoreOp::Session { id } => now(async move {
                let s = store.session(&id).await?;
                Ok(s.map_or(
                    Value::Null,
                    |s| json!({ "id": s.id, "nickname": s.nickname }),
                ))
            }
            .boxed()),
            StoreOp::DeleteSession { id } => {
                now(async move { store.delete_session(&id).await.map(|()| Value::Null) }.boxed())
            }
            StoreOp::JoinRoom {
                room,
                nickname,
                socket,
            } => {
                if let Ok(mut members) = self.members.lock() {
                    members
                        .entry(worker)
                        .or_default()
                        .insert((room.clone(), socket.clone()));
                }
                now(async move {
                    store
                        .join_room(&room, &nickname, &socket)
                        .await
                        .map(Value::Bool)
                }
                .boxed())
            }
            StoreOp::LeaveRoom { room, socket } => {
                if let Ok(mut members) = self.members.lock() {
                    if let Some(owned) = members.get_mut(&worker) {
                        owned.remove(&(room.clone(), socket.clone()));
                    }
                }
                now(async move { Ok(json!(store.leave_room(&room, &socket).await?)) }.boxed())
            }
            StoreOp::RoomCounts => {
                now(async move { Ok(json!(store.room_counts().await?)) }.boxed())
            }
            StoreOp::RoomUsers { room } => {
                now(async move { Ok(json!(store.room_users(&room).await?)) }.boxed())
            }
            StoreOp::PushHistory {
                room,
                entry,
                keep,
                ttl_ms,
            } => now(async move {
                let limits = HistoryLimits {
                    keep,
                    ttl: Duration::from_millis(ttl_ms),
                };
                store
                    .push_history(&room, entry, limits)
                    .await
                    .map(|()| Value::Null)
            }
            .boxed()),
            StoreOp::History { room } => {
                now(async move { Ok(json!(store.history(&room).await?)) }.boxed())
            }
        }
    }
}

impl MasterService for StoreService {
    fn request(&self, worker: u64, body: Value) -> Value {
        let op = match serde_json::from_value::<StoreOp>(body) {
            Ok(op) => op,
            Err(error) => return json!({ "error": format!("unknown store request: {error}") }),
        };
        match self.run(worker, op) {
            Ok(value) => json!({ "ok": value }),
            Err(error) => json!({ "error": error.to_string() }),
        }
    }

    fn worker_gone(&self, worker: u64) -> Vec<Box<RawValue>> {
        let owned = self
            .members
            .lock()
            .ok()
            .and_then(|mut members| members.remove(&worker))
            .unwrap_or_default();
        let mut left: Vec<(String, String)> = Vec::new();
        for (room, socket) in owned {
            let gone = self.store.leave_room(&room, &socket).now_or_never();
            if let Some(Ok(Some(nickname))) = gone {
                left.push((room, nickname));
            }
        }
        // The others in those rooms hear who left, as if each had disconnected normally.
        let mut messages = Vec::new();
        for (room, nickname) in &left {
            messages.extend(room_event(room, "user_left", &json!({ "name": nickname })));
        }
        messages
    }
}

/// A `/chat_infra` event to the members of a chat room on every worker, as a relayed broadcast.
fn room_event(room: &str, event: &str, data: &Value) -> Option<Box<RawValue>> {
    let json = serde_json::to_string(&(event, data)).ok()?;
    let frames = socketio::packet::encode(
        socketio::packet::PacketType::Event,
        chat::INFRA,
        None,
        Some(&json),
        &[],
    );
    let opts = BroadcastOptions {
        rooms: vec![Room::from(chat::room_key(room))],
        ..Default::default()
    };
    serde_json::value::to_raw_value(&WireBroadcast::new(chat::INFRA, &frames, &opts)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(service: &StoreService, worker: u64, body: Value) -> Value {
        service.request(worker, body)
    }

    #[test]
    fn a_dead_worker_leaves_no_ghost_members() {
        let service = StoreService::default();
        ask(
            &service,
            1,
            json!({"op": "join_room", "room": "r", "nickname": "ann", "socket": "s1"}),
        );
        ask(
            &service,
            2,
            json!({"op": "join_room", "room": "r", "nickname": "bob", "socket": "s2"}),
        );
        assert_eq!(
            ask(&service, 2, json!({"op": "room_counts"})),
            json!({"ok": [["r", 2]]})
        );
        service.worker_gone(1);
        assert_eq!(
            ask(&service, 2, json!({"op": "room_users", "room": "r"})),
            json!({"ok": ["bob"]})
        );
    }

    #[test]
    fn members_leave_under_the_nickname_they_joined_with() {
        let service = StoreService::default();
        for room in ["a", "b"] {
            ask(
                &service,
                1,
                json!({"op": "join_room", "room": room, "nickname": "old", "socket": "s1"}),
            );
        }
        // The socket renamed itself: it leaves as who it joined as.
        assert_eq!(
            ask(
                &service,
                1,
                json!({"op": "leave_room", "room": "a", "socket": "s1"})
            ),
            json!({"ok": "old"})
        );
        // Its worker dies: the room it was still in is announced and emptied.
        let announced = service.worker_gone(1);
        assert!(announced.iter().any(|m| m.get().contains("user_left")));
        assert_eq!(
            ask(&service, 2, json!({"op": "room_counts"})),
            json!({"ok": []})
        );
        assert!(service.members.lock().unwrap().is_empty());
    }

    #[test]
    fn sessions_are_shared_and_bad_requests_answered() {
        let service = StoreService::default();
        let created = ask(
            &service,
            1,
            json!({"op": "create_session", "nickname": "ann", "ttl_ms": 60000}),
        );
        let id = created["ok"]["id"].as_str().unwrap().to_owned();
        assert_eq!(
            ask(&service, 2, json!({"op": "session", "id": id}))["ok"]["nickname"],
            "ann"
        );
        assert!(ask(&service, 2, json!({"op": "nonsense"}))["error"].is_string());
    }
}

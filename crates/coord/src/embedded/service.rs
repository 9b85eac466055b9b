//! The master's side of the embedded store: one [`MemoryStore`] for every worker, answering
//! their requests, and the cleanup after a worker that died.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use chat::{Departure, MemoryStore, Store, StoreError};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use socketio::BroadcastOptions;
use supervisor::MasterService;

use super::recovery::RecoveryService;
use super::store_op::{HistoryEntry, StoreOp};
use crate::wire::WireBroadcast;

/// A socket a worker put in a room: (room, socket id). The store knows its nickname. Boxed
/// strings: one entry per socket and room, kept as long as the socket is.
type Membership = (Box<str>, Box<str>);

fn membership(room: &str, socket: &str) -> Membership {
    (room.into(), socket.into())
}

/// The answer of the memory store, which answers at once: its futures are ready when created.
fn now<T>(answer: BoxFuture<'_, Result<T, StoreError>>) -> Result<T, StoreError> {
    answer
        .now_or_never()
        .unwrap_or_else(|| Err(StoreError::Unavailable("store busy".into())))
}

/// The master's side: one [`MemoryStore`] for every worker, and a record of which worker
/// process put which socket in which room, so a worker that dies leaves no ghost users.
#[derive(Default)]
pub struct StoreService {
    store: MemoryStore,
    /// worker process -> (room, socket) it joined
    members: Mutex<HashMap<u64, HashSet<Membership>>>,
    /// The logs and kept sockets of connection-state recovery.
    recovery: RecoveryService,
    /// How long a dead worker's users stay in their rooms, in milliseconds, for them to come
    /// back on another worker (see [`StoreOp::PresenceGrace`]).
    presence_grace_ms: std::sync::atomic::AtomicU64,
}

impl StoreService {
    /// Keeps a line of a room's history.
    fn push_history(&self, entry: HistoryEntry) -> Result<(), StoreError> {
        let limits = entry.limits();
        now(self.store.push_history(&entry.room, entry.entry, limits))
    }

    fn run(&self, worker: u64, op: StoreOp) -> Result<Value, StoreError> {
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
                    let membership = membership(&room, &socket);
                    // A socket handed to another worker (live hand-off on reload) joins again
                    // there: the membership is that worker's now, and the old one's exit must
                    // not end it.
                    for (_, owned) in members.iter_mut().filter(|(owner, _)| **owner != worker) {
                        owned.remove(&membership);
                    }
                    members.entry(worker).or_default().insert(membership);
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
                        owned.remove(&membership(&room, &socket));
                    }
                }
                now(async move { Ok(json!(store.leave_room(&room, &socket).await?)) }.boxed())
            }
            StoreOp::DepartLater {
                socket,
                rooms,
                grace_ms,
            } => {
                // No longer this worker's: a worker that dies now leaves them as they are.
                if let Ok(mut members) = self.members.lock() {
                    if let Some(owned) = members.get_mut(&worker) {
                        for room in &rooms {
                            owned.remove(&membership(room, &socket));
                        }
                    }
                }
                let grace = Duration::from_millis(grace_ms);
                now(
                    async move { Ok(json!(store.depart_later(&socket, rooms, grace).await?)) }
                        .boxed(),
                )
            }
            StoreOp::ExpiredDepartures => {
                now(async move { Ok(json!(store.expired_departures().await?)) }.boxed())
            }
            StoreOp::PresenceGrace { grace_ms } => {
                self.presence_grace_ms
                    .store(grace_ms, std::sync::atomic::Ordering::Relaxed);
                Ok(Value::Null)
            }
            StoreOp::RoomCounts => {
                now(async move { Ok(json!(store.room_counts().await?)) }.boxed())
            }
            StoreOp::RoomUsers { room } => {
                now(async move { Ok(json!(store.room_users(&room).await?)) }.boxed())
            }
            StoreOp::PushHistory(entry) => self.push_history(entry).map(|()| Value::Null),
            StoreOp::History { room } => {
                now(async move { Ok(json!(store.history(&room).await?)) }.boxed())
            }
        }
    }
}

impl MasterService for StoreService {
    fn request(&self, worker: u64, body: Value) -> Value {
        if RecoveryService::handles(&body) {
            return self.recovery.request(worker, body);
        }
        let op = match serde_json::from_value::<StoreOp>(body) {
            Ok(op) => op,
            Err(error) => return json!({ "error": format!("unknown store request: {error}") }),
        };
        match self.run(worker, op) {
            Ok(value) => json!({ "ok": value }),
            Err(error) => json!({ "error": error.to_string() }),
        }
    }

    fn tell(&self, worker: u64, body: &RawValue) -> Result<(), String> {
        if let Some(entry) = HistoryEntry::read(body.get()) {
            return self.push_history(entry).map_err(|error| error.to_string());
        }
        supervisor::master::tell_by_request(self, worker, body)
    }

    fn sequence(&self, _worker: u64, body: &RawValue) -> Option<supervisor::master::Numbered> {
        self.recovery.sequence(body)
    }

    fn status(&self) -> Option<Value> {
        let logs = self.recovery.stats();
        (!logs.is_empty()).then(|| {
            Value::Object(
                logs.into_iter()
                    .map(|(ns, stats)| (ns, json!(stats)))
                    .collect(),
            )
        })
    }

    /// The logged-in sessions (without them every user's cookie would be refused by the new
    /// master's workers), the rooms (members, history, departures) with which worker put
    /// whom in them (so the old workers' users are not announced again as they come back, and
    /// leave no ghosts when the old workers end), and the recovery logs (so the users of the
    /// old workers come back to the new ones recovered, numbering and all).
    fn hand_over(&self) -> Option<Value> {
        let members: Vec<(u64, Vec<Membership>)> = self
            .members
            .lock()
            .map(|members| {
                members
                    .iter()
                    .map(|(worker, owned)| (*worker, owned.iter().cloned().collect()))
                    .collect()
            })
            .unwrap_or_default();
        Some(json!({
            "sessions": self.store.session_records(),
            "rooms": self.store.room_records(),
            "members": members,
            "recovery": self.recovery.hand_over(),
        }))
    }

    fn take_over(&self, mut state: Value) -> Result<String, String> {
        fn part<T: serde::de::DeserializeOwned + Default>(
            state: &mut Value,
            name: &str,
        ) -> Result<T, String> {
            match state.get_mut(name).map(Value::take) {
                Some(part) => serde_json::from_value(part)
                    .map_err(|error| format!("the {name} handed over are malformed: {error}")),
                None => Ok(T::default()),
            }
        }
        let sessions: Vec<chat::SessionRecord> = part(&mut state, "sessions")?;
        let rooms: Vec<chat::RoomRecord> = part(&mut state, "rooms")?;
        let members: Vec<(u64, Vec<Membership>)> = part(&mut state, "members")?;
        let sockets = match state.get_mut("recovery").map(Value::take) {
            Some(logs) => self.recovery.take_over(logs)?,
            None => 0,
        };
        let taken = self.store.restore_sessions(sessions);
        let memberships = self.store.restore_rooms(rooms);
        if let Ok(mut mine) = self.members.lock() {
            for (worker, owned) in members {
                mine.entry(worker).or_default().extend(owned);
            }
        }
        tracing::info!(
            sessions = taken,
            memberships,
            sockets,
            "took over the old master's store and recovery logs"
        );
        Ok(format!(
            "{taken} sessions, {memberships} room memberships, {sockets} recoverable sockets"
        ))
    }

    fn worker_gone(&self, worker: u64) -> Vec<Box<RawValue>> {
        self.recovery.worker_gone(worker);
        let owned = self
            .members
            .lock()
            .ok()
            .and_then(|mut members| members.remove(&worker))
            .unwrap_or_default();
        let grace = Duration::from_millis(
            self.presence_grace_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let mut left: Vec<(String, String)> = Vec::new();
        for (room, socket) in owned {
            if !grace.is_zero() {
                // Its users may come back on another worker (connection-state recovery):
                // they leave when the grace ends, unless they did (a worker's sweep tells).
                let _ = self
                    .store
                    .depart_later(&socket, vec![room.into()], grace)
                    .now_or_never();
                continue;
            }
            let gone = self.store.leave_room(&room, &socket).now_or_never();
            if let Some(Ok(Some(nickname))) = gone {
                left.push((room.into(), nickname));
            }
        }
        // The others in those rooms hear who left, as if each had disconnected normally.
        left.iter()
            .filter_map(|(room, nickname)| relayed(Departure { room, nickname }))
            .collect()
    }
}

/// A departure as a broadcast for the master to relay to every worker.
fn relayed(departure: Departure) -> Option<Box<RawValue>> {
    let (ns, room, frames) = departure.encoded();
    let opts = BroadcastOptions {
        rooms: vec![room],
        ..Default::default()
    };
    serde_json::value::to_raw_value(&WireBroadcast::new(ns, &frames, &opts)).ok()
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

    #[test]
    fn a_new_master_carries_on_with_the_sessions_and_the_numbering_and_refuses_a_bad_hand_over() {
        let old = StoreService::default();
        let created = ask(
            &old,
            1,
            json!({"op": "create_session", "nickname": "ann", "ttl_ms": 60000}),
        );
        let id = created["ok"]["id"].as_str().unwrap().to_owned();
        let open = json!({"op": "recovery_open", "ns": "/", "window_ms": 60000,
            "max_packets": 10, "max_bytes": 4096, "max_sessions": 10});
        ask(&old, 1, open.clone());
        let event = serde_json::value::to_raw_value(&WireBroadcast::new(
            "/",
            &[engineio::Frame::Text("2[\"hi\"]".into())],
            &BroadcastOptions::default(),
        ))
        .unwrap();
        let numbered = |service: &StoreService| -> WireBroadcast {
            serde_json::from_str(service.sequence(1, &event).unwrap().line.get()).unwrap()
        };
        let first = numbered(&old);
        let handed = old.hand_over().unwrap();

        let new = StoreService::default();
        // The new master's workers opened the namespace with a log of their own.
        ask(&new, 2, open);
        assert!(new.take_over(handed.clone()).is_ok());
        assert_eq!(
            ask(&new, 2, json!({"op": "session", "id": id}))["ok"]["nickname"],
            "ann"
        );
        let next = numbered(&new);
        assert_eq!(next.epoch, first.epoch);
        assert_eq!(next.seq, Some(2));

        let mut bad = handed;
        bad["recovery"]["/"]["epoch"] = json!("");
        let refused = StoreService::default().take_over(bad).unwrap_err();
        assert!(
            refused.contains("namespace /") && refused.contains("epoch"),
            "{refused}"
        );
        let refused = StoreService::default()
            .take_over(json!({"sessions": "nonsense"}))
            .unwrap_err();
        assert!(
            refused.contains("sessions handed over are malformed"),
            "{refused}"
        );
    }

    #[test]
    fn history_told_as_workers_write_it_is_kept_whichever_way_it_is_read() {
        let service = StoreService::default();
        let limits = chat::HistoryLimits {
            keep: 2,
            ttl: Duration::from_secs(60),
        };
        let told = |entry: &str| {
            let op = StoreOp::push_history("r", entry.to_owned(), limits);
            serde_json::value::to_raw_value(&op).unwrap()
        };
        // As workers write it: read straight into its fields.
        let first = told("one");
        assert!(HistoryEntry::read(first.get()).is_some(), "{first}");
        service.tell(1, &first).unwrap();
        service.tell(1, &told("two \"quoted\"")).unwrap();
        // Written another way (keys in another order): read as any other request.
        let reordered = RawValue::from_string(
            r#"{"room":"r","entry":"three","keep":2,"ttl_ms":60000,"op":"push_history"}"#
                .to_owned(),
        )
        .unwrap();
        assert!(HistoryEntry::read(reordered.get()).is_none());
        service.tell(1, &reordered).unwrap();
        assert_eq!(
            ask(&service, 1, json!({"op": "history", "room": "r"})),
            json!({"ok": ["two \"quoted\"", "three"]})
        );
        let unknown = RawValue::from_string(r#"{"op":"push_histories"}"#.to_owned()).unwrap();
        assert!(service.tell(1, &unknown).is_err());
        let malformed = RawValue::from_string(r#"{"op":"push_history","room":1}"#.to_owned());
        assert!(service.tell(1, &malformed.unwrap()).is_err());
    }
}

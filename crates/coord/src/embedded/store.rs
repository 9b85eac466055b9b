//! The chat store of a worker under a chatctl master without Redis: every operation is a
//! request to the master's [`super::StoreService`].

use std::sync::Arc;
use std::time::Duration;

use chat::{HistoryLimits, Session, Store, StoreError};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::Value;
use supervisor::drops::Drops;
use supervisor::ipc::WorkerLink;

use super::store_op::StoreOp;

/// The chat store of a worker: every operation asks the master.
pub struct EmbeddedStore {
    link: Arc<WorkerLink>,
    /// History entries it could not hand to the master (those the master fails to write are
    /// counted there).
    drops: Arc<Drops>,
}

impl EmbeddedStore {
    /// The store of a worker whose users' memberships outlive a broken connection (or this
    /// worker's death) by `presence_grace`, for them to come back (connection-state recovery).
    pub fn new(link: Arc<WorkerLink>, drops: Arc<Drops>, presence_grace: Duration) -> Self {
        if let Ok(body) = serde_json::value::to_raw_value(&StoreOp::PresenceGrace {
            grace_ms: crate::millis(presence_grace),
        }) {
            link.tell(body);
        }
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
            ttl_ms: crate::millis(ttl),
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

    fn depart_later<'a>(
        &'a self,
        socket: &'a str,
        rooms: Vec<String>,
        grace: Duration,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>> {
        let op = StoreOp::DepartLater {
            socket: socket.to_owned(),
            rooms,
            grace_ms: crate::millis(grace),
        };
        self.ask(op).boxed()
    }

    fn expired_departures(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, StoreError>> {
        self.ask(StoreOp::ExpiredDepartures).boxed()
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
        match serde_json::value::to_raw_value(&op) {
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

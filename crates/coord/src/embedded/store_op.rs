//! The store operations of [`chat::Store`] as requests from a worker to the master, in JSON.

use serde::{Deserialize, Serialize};

/// The store operations of [`chat::Store`], as requests to the master.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum StoreOp {
    CreateSession {
        nickname: String,
        ttl_ms: u64,
    },
    Session {
        id: String,
    },
    DeleteSession {
        id: String,
    },
    JoinRoom {
        room: String,
        nickname: String,
        socket: String,
    },
    LeaveRoom {
        room: String,
        socket: String,
    },
    /// A broken connection's memberships, kept for `grace_ms` (see
    /// [`chat::Store::depart_later`]).
    DepartLater {
        socket: String,
        rooms: Vec<String>,
        grace_ms: u64,
    },
    ExpiredDepartures,
    /// How long the memberships of a worker that died are kept for its users to come back
    /// (told by each worker as it starts; 0: they leave at once).
    PresenceGrace {
        grace_ms: u64,
    },
    RoomCounts,
    RoomUsers {
        room: String,
    },
    PushHistory {
        room: String,
        entry: String,
        keep: usize,
        ttl_ms: u64,
    },
    History {
        room: String,
    },
}

impl StoreOp {
    pub(super) fn push_history(room: &str, entry: String, limits: chat::HistoryLimits) -> Self {
        StoreOp::PushHistory {
            room: room.to_owned(),
            entry,
            keep: limits.keep,
            ttl_ms: crate::millis(limits.ttl),
        }
    }
}

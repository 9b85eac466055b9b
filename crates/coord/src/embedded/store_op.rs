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
    PushHistory(HistoryEntry),
    History {
        room: String,
    },
}

/// A line for a room's history: one per chat line, so the master reads it straight into these
/// fields (see [`HistoryEntry::read`]).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct HistoryEntry {
    pub(super) room: String,
    pub(super) entry: String,
    pub(super) keep: usize,
    pub(super) ttl_ms: u64,
}

impl HistoryEntry {
    /// How a [`StoreOp::PushHistory`] begins, as workers write it (the tag first).
    const START: &'static str = r#"{"op":"push_history","#;

    /// The entry of a [`StoreOp::PushHistory`] in `text`, read without the buffering that
    /// finding the tag of an enum costs (its other fields are ignored); `None` for any other
    /// text.
    pub(super) fn read(text: &str) -> Option<HistoryEntry> {
        text.starts_with(Self::START)
            .then(|| serde_json::from_str(text).ok())
            .flatten()
    }

    pub(super) fn limits(&self) -> chat::HistoryLimits {
        chat::HistoryLimits {
            keep: self.keep,
            ttl: std::time::Duration::from_millis(self.ttl_ms),
        }
    }
}

impl StoreOp {
    pub(super) fn push_history(room: &str, entry: String, limits: chat::HistoryLimits) -> Self {
        StoreOp::PushHistory(HistoryEntry {
            room: room.to_owned(),
            entry,
            keep: limits.keep,
            ttl_ms: crate::millis(limits.ttl),
        })
    }
}

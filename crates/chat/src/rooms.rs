//! The chat's Socket.IO names: its two namespaces (the book's), and the rooms it keeps in
//! them besides each socket's own.

pub const INFRA: &str = "/chat_infra";
pub const COM: &str = "/chat_com";

/// Prefix of the Socket.IO rooms that are chat rooms (other rooms are per user or per socket).
const ROOM_PREFIX: &str = "room:";
/// Prefix of the Socket.IO room every socket of one nickname joins, for private messages.
const USER_PREFIX: &str = "user:";

/// The Socket.IO room (in both namespaces) that holds the members of a chat room.
pub fn room_key(room: &str) -> String {
    format!("{ROOM_PREFIX}{room}")
}

/// The chat room a Socket.IO room holds the members of, if it is one.
pub fn chat_room_of(room: &str) -> Option<&str> {
    room.strip_prefix(ROOM_PREFIX)
}

/// The Socket.IO room of every socket of one nickname (private messages reach them all).
pub fn user_room(nickname: &str) -> String {
    format!("{USER_PREFIX}{nickname}")
}

/// The Socket.IO room (in both namespaces) of every socket of one login.
pub fn session_room(session_id: &str) -> String {
    format!("session:{session_id}")
}

//! What the others in a chat room hear when a user leaves it. A user leaves in three ways: its
//! last socket in the room leaves or disconnects (its worker announces it), its worker dies
//! under a chatctl master (the master announces it), or its worker stops renewing its liveness
//! in Redis (another worker announces it). All three say the same thing, defined here.

use engineio::Frame;
use serde_json::json;
use socketio::packet::{encode, PacketType};
use socketio::{BroadcastOperator, EmitError, Room, Socket, SocketIo};

use crate::rooms::{room_key, INFRA};

/// The event the others in the room get, with `{"name": nickname}`.
const USER_LEFT: &str = "user_left";

/// A user whose last socket in a chat room is gone.
#[derive(Debug, Clone, Copy)]
pub struct Departure<'a> {
    pub room: &'a str,
    /// The nickname the user joined the room under (the store remembers it), not one it may
    /// have taken since with `set_name`.
    pub nickname: &'a str,
}

impl Departure<'_> {
    /// Tells the room's other members on every worker, from the socket that left: the
    /// socket itself is not told.
    pub(crate) fn announce_from(&self, socket: &Socket) -> Result<(), EmitError> {
        self.announce_to(socket.to(self.audience()))
    }

    /// Tells every member of the room on every worker, for a worker that can no longer say it
    /// itself. Nothing to tell when `io` does not serve the chat.
    pub fn announce(&self, io: &SocketIo) -> Result<(), EmitError> {
        match io.of(INFRA) {
            Some(infra) => self.announce_to(infra.to(self.audience())),
            None => Ok(()),
        }
    }

    /// The announcement, encoded, for a process that relays it to the workers without a
    /// Socket.IO server of its own (the chatctl master): its namespace, the Socket.IO room of
    /// its recipients, and the packet's frames.
    pub fn encoded(&self) -> (&'static str, Room, Vec<Frame>) {
        // What `emit` sends: the event name and its one argument, as a JSON array.
        let json = json!([USER_LEFT, self.payload()]).to_string();
        let frames = encode(PacketType::Event, INFRA, None, Some(&json), &[]);
        (INFRA, Room::from(self.audience()), frames)
    }

    fn announce_to(&self, recipients: BroadcastOperator) -> Result<(), EmitError> {
        recipients.emit(USER_LEFT, &self.payload())
    }

    /// The Socket.IO room of the chat room's members, in `/chat_infra`.
    fn audience(&self) -> String {
        room_key(self.room)
    }

    fn payload(&self) -> serde_json::Value {
        json!({ "name": self.nickname })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoded_announcement_names_the_user_to_the_room() {
        let departure = Departure {
            room: "lobby",
            nickname: "ann \"a\"",
        };
        let (ns, room, frames) = departure.encoded();
        assert_eq!(ns, "/chat_infra");
        assert_eq!(&*room, "room:lobby");
        assert_eq!(
            frames,
            vec![Frame::message(
                r#"2/chat_infra,["user_left",{"name":"ann \"a\""}]"#
            )]
        );
    }
}

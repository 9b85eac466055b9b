//! The wire format the clients speak: Engine.IO v4 packets carrying Socket.IO v5 packets, and
//! the stamp a benchmark message carries so receivers can time and count it.
//!
//! Only what a chat client needs is decoded, and nothing is parsed as JSON on the delivery
//! path: the stamp is found by its marker inside the packet text.

use std::fmt::Write;

pub const INFRA: &str = "/chat_infra";
pub const COM: &str = "/chat_com";

/// Separates packets in one long-polling payload.
pub const RECORD_SEPARATOR: u8 = 0x1e;

/// An Engine.IO packet from the server, decoded as far as a chat client needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `0{...}`: the handshake, with the session id and timings as JSON.
    Open(&'a str),
    /// `1`: the server closes the session.
    Close,
    /// `2`: a heartbeat to answer with `3`.
    Ping,
    /// `40/ns,{...}`: the namespace accepted us; `data` holds the socket's `sid` and, with
    /// connection-state recovery, its private `pid`.
    Connected { namespace: &'a str, data: &'a str },
    /// `44/ns,{...}`: the namespace refused us.
    ConnectError { namespace: &'a str, data: &'a str },
    /// `41/ns,`: the server disconnected us from the namespace.
    Disconnected { namespace: &'a str },
    /// `42/ns,["name",...]`: an event.
    Event {
        namespace: &'a str,
        name: &'a str,
        data: &'a str,
    },
    /// Anything a chat client has no use for (noop, pong, acks, binary).
    Other,
}

impl<'a> Packet<'a> {
    pub fn decode(text: &'a str) -> Packet<'a> {
        let bytes = text.as_bytes();
        match bytes.first() {
            Some(b'0') => Packet::Open(&text[1..]),
            Some(b'1') => Packet::Close,
            Some(b'2') => Packet::Ping,
            Some(b'4') => decode_socketio(&text[1..]),
            _ => Packet::Other,
        }
    }
}

fn decode_socketio(text: &str) -> Packet<'_> {
    // An ASCII type digit, so that the rest starts on a character boundary.
    let kind = match text.as_bytes().first() {
        Some(&kind) if kind.is_ascii_digit() => kind,
        _ => return Packet::Other,
    };
    let rest = &text[1..];
    let (namespace, rest) = match rest.strip_prefix('/') {
        Some(_) => match rest.find(',') {
            Some(comma) => (&rest[..comma], &rest[comma + 1..]),
            None => (rest, ""),
        },
        None => ("/", rest),
    };
    // An ack id may precede the data.
    let data = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    match kind {
        b'0' => Packet::Connected { namespace, data },
        b'1' => Packet::Disconnected { namespace },
        b'4' => Packet::ConnectError { namespace, data },
        b'2' => match event_name(data) {
            Some(name) => Packet::Event {
                namespace,
                name,
                data,
            },
            None => Packet::Other,
        },
        _ => Packet::Other,
    }
}

/// The event name of `["name",...]`. Event names here never contain escapes.
fn event_name(data: &str) -> Option<&str> {
    let rest = data.strip_prefix("[\"")?;
    let end = rest.find('"')?;
    Some(&rest[..end])
}

/// `40/ns,`: asks to join a namespace.
pub fn connect_namespace(namespace: &str) -> String {
    format!("40{namespace},")
}

/// `40/ns,{"pid":PID,"offset":OFFSET}`: asks to join a namespace again as the socket `pid` was,
/// with the events after `offset` replayed (connection-state recovery); plain `40/ns,` while
/// either is unknown, as the server tries a recovery only with both. `offset` is a JSON string's
/// body as the server sent it (see [`last_string_argument`]), so it goes back as it came.
pub fn reconnect_namespace(namespace: &str, pid: Option<&str>, offset: Option<&str>) -> String {
    match (pid, offset) {
        (Some(pid), Some(offset)) => {
            let pid = serde_json::to_string(pid).unwrap_or_else(|_| "\"\"".into());
            format!("40{namespace},{{\"pid\":{pid},\"offset\":\"{offset}\"}}")
        }
        _ => connect_namespace(namespace),
    }
}

/// The private id in a CONNECT reply's data (`{"sid":"..","pid":".."}`); `None` when the
/// server does not offer recovery.
pub fn connect_pid(data: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Connected {
        pid: Option<String>,
    }
    serde_json::from_str::<Connected>(data).ok()?.pid
}

/// The last argument of an event's data (`["name",...,"last"]`) when it is a string, without
/// its quotes and as sent (escapes left in): where a server with recovery puts the event's
/// offset. Found by scanning back from the end, so nothing is parsed or allocated.
pub fn last_string_argument(data: &str) -> Option<&str> {
    let inner = data.strip_suffix("\"]")?;
    let bytes = inner.as_bytes();
    // Back to the opening quote: the first quote not escaped by an odd run of backslashes.
    let mut at = inner.len();
    while at > 0 {
        at -= 1;
        if bytes[at] != b'"' {
            continue;
        }
        let backslashes = bytes[..at]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if backslashes % 2 == 0 {
            // The event name alone is not an argument.
            return match bytes[..at].last() {
                Some(b',') => Some(&inner[at + 1..]),
                _ => None,
            };
        }
    }
    None
}

/// `42/chat_infra,["join_room",{"name":ROOM}]`.
pub fn join_room(room: &str) -> String {
    let name = serde_json::to_string(room).unwrap_or_else(|_| "\"\"".into());
    format!("42{INFRA},[\"join_room\",{{\"name\":{name}}}]")
}

/// What a benchmark message carries in its text so that every receiver can tell who sent it,
/// which of the sender's messages it is, which phase of the run it belongs to and when it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The sending client's index.
    pub sender: u32,
    /// The sender's message counter: receivers detect duplicates with it.
    pub seq: u32,
    /// 0 for warmup (not counted), then one per measured phase or fanout step.
    pub phase: u16,
    /// Microseconds since the process's shared clock epoch.
    pub sent_us: u64,
}

/// Starts the stamp; chosen so it cannot occur in our nicknames or the JSON around it.
const STAMP_MARKER: &str = "~b";

impl Stamp {
    /// Writes the whole Engine.IO packet of a chat message with this stamp into `out`, padded
    /// with `x` so that the message text is `text_len` characters long (or the stamp's length,
    /// if that is longer). The text needs no JSON escaping, at either level.
    pub fn write_message(&self, out: &mut String, text_len: usize) {
        out.clear();
        out.push_str("42");
        out.push_str(COM);
        out.push_str(",[\"message\",\"{\\\"type\\\":\\\"userMessage\\\",\\\"message\\\":\\\"");
        let start = out.len();
        let _ = write!(
            out,
            "{STAMP_MARKER}{}.{}.{}.{}~",
            self.sender, self.seq, self.phase, self.sent_us
        );
        let written = out.len() - start;
        for _ in written..text_len {
            out.push('x');
        }
        out.push_str("\\\"}\"]");
    }

    /// Finds the stamp inside a delivered message (the event's data).
    pub fn find(data: &str) -> Option<Stamp> {
        let at = data.find(STAMP_MARKER)?;
        let mut fields = data[at + STAMP_MARKER.len()..].splitn(5, ['.', '~']);
        let sender = fields.next()?.parse().ok()?;
        let seq = fields.next()?.parse().ok()?;
        let phase = fields.next()?.parse().ok()?;
        let sent_us = fields.next()?.parse().ok()?;
        Some(Stamp {
            sender,
            seq,
            phase,
            sent_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_a_chat_client_meets() {
        assert_eq!(
            Packet::decode("0{\"sid\":\"a\"}"),
            Packet::Open("{\"sid\":\"a\"}")
        );
        assert_eq!(Packet::decode("2"), Packet::Ping);
        assert_eq!(
            Packet::decode("40/chat_infra,{\"sid\":\"x\"}"),
            Packet::Connected {
                namespace: "/chat_infra",
                data: "{\"sid\":\"x\"}"
            }
        );
        assert_eq!(
            Packet::decode("44/chat_com,{\"message\":\"No cookie transmitted.\"}"),
            Packet::ConnectError {
                namespace: "/chat_com",
                data: "{\"message\":\"No cookie transmitted.\"}"
            }
        );
        assert_eq!(
            Packet::decode("42/chat_infra,[\"name_set\",{\"name\":\"b1\"}]"),
            Packet::Event {
                namespace: "/chat_infra",
                name: "name_set",
                data: "[\"name_set\",{\"name\":\"b1\"}]"
            }
        );
        assert_eq!(
            Packet::decode("4212[\"error\",{}]"),
            Packet::Event {
                namespace: "/",
                name: "error",
                data: "[\"error\",{}]"
            }
        );
        assert_eq!(Packet::decode("6"), Packet::Other);
        assert_eq!(Packet::decode(""), Packet::Other);
    }

    #[test]
    fn any_text_decodes_without_panicking() {
        let samples = [
            "42/chat_com,[\"message\",\"{\\\"message\\\":\\\"~b1.2.3.4~x\\\"}\"]",
            "44/chat_infra,{\"message\":\"no\"}",
            "4é",
            "42é/ns,",
            "0{\"sid\":\"é\"}",
            "42/ns,12[\"ev\"",
            "~b1.2.3.~b4.5.6.7~",
            "[\"a\",\"\\\\\\\"\"]",
        ];
        for sample in samples {
            for (at, _) in sample.char_indices() {
                let _ = Packet::decode(&sample[..at]);
                let _ = Packet::decode(&sample[at..]);
                let _ = Stamp::find(&sample[at..]);
                let _ = last_string_argument(&sample[..at]);
                let _ = last_string_argument(&sample[at..]);
            }
        }
    }

    #[test]
    fn message_is_valid_socketio_and_its_stamp_survives_delivery() {
        let stamp = Stamp {
            sender: 7,
            seq: 42,
            phase: 1,
            sent_us: 123_456,
        };
        let mut packet = String::new();
        stamp.write_message(&mut packet, 64);
        let data = packet.strip_prefix("42/chat_com,").unwrap();
        let args: Vec<String> = serde_json::from_str(data).unwrap();
        assert_eq!(args[0], "message");
        let inner: serde_json::Value = serde_json::from_str(&args[1]).unwrap();
        assert_eq!(inner["type"], "userMessage");
        assert_eq!(inner["message"].as_str().unwrap().len(), 64);
        // What a receiver gets: the server's re-encoding with the sender's name.
        let line = serde_json::json!({"type": "userMessage", "username": "b7", "message": inner["message"]});
        let delivered = serde_json::to_string(&("message", line.to_string())).unwrap();
        assert_eq!(Stamp::find(&delivered), Some(stamp));
        assert_eq!(Stamp::find("[\"message\",\"hello\"]"), None);
    }

    #[test]
    fn the_offset_is_the_last_string_argument() {
        let offset = |data| last_string_argument(data);
        assert_eq!(offset("[\"message\",\"hi\",\"1733-42\"]"), Some("1733-42"));
        assert_eq!(
            offset("[\"name_set\",{\"name\":\"b1\"},\"1733-1\"]"),
            Some("1733-1")
        );
        // A string with escaped quotes and backslashes is taken whole, as sent.
        assert_eq!(
            offset("[\"message\",\"{\\\"a\\\":\\\"x\\\\\\\"}\"]"),
            Some("{\\\"a\\\":\\\"x\\\\\\\"}")
        );
        assert_eq!(offset("[\"a\",\"x\\\\\"]"), Some("x\\\\"));
        // No string last, or no argument at all: no offset.
        assert_eq!(offset("[\"users_list\",[\"a\",\"b\"]]"), None);
        assert_eq!(offset("[\"name_set\",{\"name\":\"b1\"}]"), None);
        assert_eq!(offset("[\"ping\"]"), None);
        assert_eq!(offset("\"]"), None);
        assert_eq!(offset(""), None);
        // What a benchmark message looks like once the server added its offset.
        let stamp = Stamp {
            sender: 3,
            seq: 9,
            phase: 1,
            sent_us: 77,
        };
        let mut packet = String::new();
        stamp.write_message(&mut packet, 32);
        let data = format!(
            "{}\"5-12\"]",
            packet
                .strip_prefix("42/chat_com,")
                .unwrap()
                .strip_suffix(']')
                .unwrap()
                .to_owned()
                + ","
        );
        assert_eq!(offset(&data), Some("5-12"));
        assert_eq!(Stamp::find(&data), Some(stamp));
    }

    #[test]
    fn connect_replies_and_reconnects_carry_the_pid() {
        assert_eq!(
            connect_pid("{\"sid\":\"s\",\"pid\":\"p\"}").as_deref(),
            Some("p")
        );
        assert_eq!(connect_pid("{\"sid\":\"s\"}"), None);
        assert_eq!(connect_pid("not json"), None);
        assert_eq!(
            reconnect_namespace(COM, Some("p\"q"), Some("1-2")),
            "40/chat_com,{\"pid\":\"p\\\"q\",\"offset\":\"1-2\"}"
        );
        // The offset goes back with the escapes it came with.
        assert_eq!(
            reconnect_namespace(COM, Some("p"), Some("a\\\"b")),
            "40/chat_com,{\"pid\":\"p\",\"offset\":\"a\\\"b\"}"
        );
        assert_eq!(reconnect_namespace(COM, Some("p"), None), "40/chat_com,");
        assert_eq!(reconnect_namespace(INFRA, None, None), "40/chat_infra,");
    }

    #[test]
    fn join_room_escapes_the_name() {
        assert_eq!(
            join_room("a\"b"),
            "42/chat_infra,[\"join_room\",{\"name\":\"a\\\"b\"}]"
        );
    }
}

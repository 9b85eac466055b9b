//! Engine.IO v4 packets: the one-character type, text and binary payloads, and the polling
//! payload format that joins packets with the record separator `\x1e`.

use base64::Engine as _;
use bytes::Bytes;

use crate::Str;

/// Separates packets in a polling body.
pub const RECORD_SEPARATOR: char = '\x1e';

/// Why bytes from a client are not a valid packet. Any of these closes that client's session.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    #[error("binary packet is not valid base64")]
    Base64,
    #[error("binary websocket frame while the session is not open for messages")]
    UnexpectedBinary,
}

/// A decoded Engine.IO packet as the server receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Open,
    Close,
    /// `2` or `2probe`; the payload is kept so the probe can be answered in kind.
    Ping(Str),
    Pong(Str),
    Message(Message),
    Upgrade,
    Noop,
}

/// An application message: what the layer above (Socket.IO) sends and receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(Str),
    Binary(Bytes),
}

impl Packet {
    /// Decodes one text packet (a websocket text frame, or one record of a polling body).
    pub fn decode_text(text: Str) -> Result<Packet, PacketError> {
        let kind = text.chars().next().ok_or(PacketError::Empty)?;
        let rest = || -> Str {
            let bytes: Bytes = text.clone().into();
            // The type is one ASCII byte, so the rest is valid UTF-8 again.
            Str::try_from(bytes.slice(1..)).unwrap_or_default()
        };
        Ok(match kind {
            '0' => Packet::Open,
            '1' => Packet::Close,
            '2' => Packet::Ping(rest()),
            '3' => Packet::Pong(rest()),
            '4' => Packet::Message(Message::Text(rest())),
            '5' => Packet::Upgrade,
            '6' => Packet::Noop,
            'b' => {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(&text.as_bytes()[1..])
                    .map_err(|_| PacketError::Base64)?;
                Packet::Message(Message::Binary(data.into()))
            }
            other => return Err(PacketError::UnknownType(other)),
        })
    }
}

/// Splits a polling request body into packets. Fails on the first invalid one: a client that
/// sends garbage loses its session, and nothing of that body is delivered.
pub fn decode_payload(body: &str) -> Result<Vec<Packet>, PacketError> {
    body.split(RECORD_SEPARATOR)
        .map(|record| Packet::decode_text(Str::from(record)))
        .collect()
}

/// A packet encoded once for the wire, ready to be queued to any number of clients: cloning a
/// frame clones a reference, not the bytes, which is how a broadcast is encoded only once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A whole text packet, type character included (`4hello`, `2`, `6`).
    Text(Str),
    /// The payload of a binary message packet (websocket: a binary frame; polling: `b<base64>`).
    Binary(Bytes),
}

impl Frame {
    pub const PING: Frame = Frame::Text(Str::from_static("2"));
    pub const PONG_PROBE: Frame = Frame::Text(Str::from_static("3probe"));
    pub const NOOP: Frame = Frame::Text(Str::from_static("6"));
    pub const CLOSE: Frame = Frame::Text(Str::from_static("1"));

    /// A text message packet: `4` followed by `text`.
    pub fn message(text: &str) -> Frame {
        let mut encoded = String::with_capacity(text.len() + 1);
        encoded.push('4');
        encoded.push_str(text);
        Frame::Text(encoded.into())
    }

    /// A text message packet whose payload the caller builds after the `4` that
    /// [`Frame::message_buffer`] put in place, saving a copy of large payloads.
    pub fn message_from_buffer(encoded: String) -> Frame {
        debug_assert!(encoded.starts_with('4'));
        Frame::Text(encoded.into())
    }

    /// A string that already holds the message packet type, for [`Frame::message_from_buffer`].
    pub fn message_buffer(capacity: usize) -> String {
        let mut buffer = String::with_capacity(capacity + 1);
        buffer.push('4');
        buffer
    }

    pub fn binary(data: Bytes) -> Frame {
        Frame::Binary(data)
    }

    /// Bytes this frame takes in a polling body (binary is base64 and prefixed with `b`).
    pub fn polling_len(&self) -> usize {
        match self {
            Frame::Text(text) => text.len(),
            Frame::Binary(data) => 1 + data.len().div_ceil(3) * 4,
        }
    }

    /// Appends this frame to a polling response body.
    pub fn write_polling(&self, body: &mut String) {
        match self {
            Frame::Text(text) => body.push_str(text),
            Frame::Binary(data) => {
                body.push('b');
                base64::engine::general_purpose::STANDARD.encode_string(data, body);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Packet {
        Packet::decode_text(Str::from(s)).unwrap()
    }

    #[test]
    fn decodes_every_packet_type_of_the_spec() {
        assert_eq!(text("0"), Packet::Open);
        assert_eq!(text("1"), Packet::Close);
        assert_eq!(text("2"), Packet::Ping(Str::from("")));
        assert_eq!(text("2probe"), Packet::Ping(Str::from("probe")));
        assert_eq!(text("3probe"), Packet::Pong(Str::from("probe")));
        assert_eq!(
            text("4hello"),
            Packet::Message(Message::Text(Str::from("hello")))
        );
        assert_eq!(text("5"), Packet::Upgrade);
        assert_eq!(text("6"), Packet::Noop);
        assert_eq!(
            text("bAQIDBA=="),
            Packet::Message(Message::Binary(Bytes::from_static(&[1, 2, 3, 4])))
        );
    }

    #[test]
    fn keeps_utf8_after_the_type() {
        assert_eq!(
            text("4€ 😀"),
            Packet::Message(Message::Text(Str::from("€ 😀")))
        );
    }

    #[test]
    fn rejects_malformed_packets() {
        assert_eq!(Packet::decode_text(Str::from("")), Err(PacketError::Empty));
        assert_eq!(
            Packet::decode_text(Str::from("abc")),
            Err(PacketError::UnknownType('a'))
        );
        assert_eq!(
            Packet::decode_text(Str::from("9")),
            Err(PacketError::UnknownType('9'))
        );
        assert_eq!(
            Packet::decode_text(Str::from("b!!!")),
            Err(PacketError::Base64)
        );
    }

    #[test]
    fn splits_polling_payloads_like_the_spec() {
        let packets = decode_payload("4hello\x1ebAQIDBA==").unwrap();
        assert_eq!(
            packets,
            vec![
                Packet::Message(Message::Text(Str::from("hello"))),
                Packet::Message(Message::Binary(Bytes::from_static(&[1, 2, 3, 4]))),
            ]
        );
        assert_eq!(
            decode_payload("4test1\x1e4test2\x1e4test3").unwrap().len(),
            3
        );
        assert_eq!(decode_payload("4a\x1e\x1e4b"), Err(PacketError::Empty));
        assert_eq!(
            decode_payload("4a\x1exyz"),
            Err(PacketError::UnknownType('x'))
        );
    }

    #[test]
    fn encodes_frames_for_polling() {
        let mut body = String::new();
        Frame::message("hello").write_polling(&mut body);
        body.push(RECORD_SEPARATOR);
        Frame::binary(Bytes::from_static(&[1, 2, 3, 4])).write_polling(&mut body);
        assert_eq!(body, "4hello\x1ebAQIDBA==");
        assert_eq!(
            Frame::binary(Bytes::from_static(&[1, 2, 3, 4])).polling_len(),
            9
        );
        assert_eq!(Frame::message("hello").polling_len(), 6);
    }

    #[test]
    fn message_buffer_starts_with_the_type() {
        let mut buffer = Frame::message_buffer(5);
        buffer.push_str("hello");
        assert_eq!(Frame::message_from_buffer(buffer), Frame::message("hello"));
    }
}

//! The Socket.IO v5 packet codec: `<type>[<attachments>-][<nsp>,][<ack id>][<json>]`, carried
//! in Engine.IO message packets, with binary attachments following as separate messages.

use bytes::Bytes;
use engineio::Frame;
use serde_json::value::RawValue;

/// Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    Connect = 0,
    Disconnect = 1,
    Event = 2,
    Ack = 3,
    ConnectError = 4,
    BinaryEvent = 5,
    BinaryAck = 6,
}

impl PacketType {
    fn from_char(c: u8) -> Option<Self> {
        Some(match c {
            b'0' => PacketType::Connect,
            b'1' => PacketType::Disconnect,
            b'2' => PacketType::Event,
            b'3' => PacketType::Ack,
            b'4' => PacketType::ConnectError,
            b'5' => PacketType::BinaryEvent,
            b'6' => PacketType::BinaryAck,
            _ => return None,
        })
    }

    fn is_binary(self) -> bool {
        matches!(self, PacketType::BinaryEvent | PacketType::BinaryAck)
    }
}

/// Why a message is not a valid Socket.IO packet. Any of these closes the connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("unknown packet type")]
    UnknownType,
    #[error("invalid attachment count")]
    InvalidAttachments,
    #[error("invalid namespace")]
    InvalidNamespace,
    #[error("invalid ack id")]
    InvalidAckId,
    #[error("invalid JSON payload")]
    InvalidJson,
    #[error("payload not allowed for this packet type")]
    InvalidPayload,
}

/// Ack ids are unsigned and fit in a JavaScript number without loss.
const MAX_ACK_ID: u64 = (1 << 53) - 1;
/// More attachments than this in one packet is an attack, not an application.
const MAX_ATTACHMENTS: usize = 1_000;

/// A decoded packet. `data` is the raw JSON text as it came, so that forwarding or echoing it
/// costs no re-serialisation and keeps the client's formatting.
#[derive(Debug, Clone)]
pub struct Packet {
    pub kind: PacketType,
    pub nsp: String,
    pub id: Option<u64>,
    pub data: Option<Box<RawValue>>,
    /// Binary attachments announced by the packet header.
    pub attachments: usize,
    /// The attachments received so far (complete when `binary.len() == attachments`).
    pub binary: Vec<Bytes>,
}

impl Packet {
    /// Decodes the text of one Engine.IO message.
    pub fn decode(text: &str) -> Result<Packet, ParseError> {
        let bytes = text.as_bytes();
        let kind = bytes
            .first()
            .copied()
            .and_then(PacketType::from_char)
            .ok_or(ParseError::UnknownType)?;
        let mut pos = 1;

        let mut attachments = 0;
        if kind.is_binary() {
            let digits = bytes[pos..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits == 0 || bytes.get(pos + digits) != Some(&b'-') {
                return Err(ParseError::InvalidAttachments);
            }
            attachments = text[pos..pos + digits]
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= MAX_ATTACHMENTS)
                .ok_or(ParseError::InvalidAttachments)?;
            pos += digits + 1;
        }

        let mut nsp = String::from("/");
        if bytes.get(pos) == Some(&b'/') {
            let end = text[pos..].find(',').map_or(text.len(), |i| pos + i);
            nsp = text[pos..end].to_owned();
            pos = (end + 1).min(text.len());
        }

        let digits = bytes[pos..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let id = if digits > 0 {
            let id = text[pos..pos + digits]
                .parse::<u64>()
                .ok()
                .filter(|id| *id <= MAX_ACK_ID)
                .ok_or(ParseError::InvalidAckId)?;
            pos += digits;
            Some(id)
        } else {
            None
        };

        let rest = &text[pos..];
        let data = if rest.is_empty() {
            None
        } else {
            let raw: Box<RawValue> =
                serde_json::from_str(rest).map_err(|_| ParseError::InvalidJson)?;
            Some(raw)
        };
        let packet = Packet {
            kind,
            nsp,
            id,
            data,
            attachments,
            binary: Vec::new(),
        };
        packet.validate()?;
        Ok(packet)
    }

    /// The payload rules of the protocol, per packet type.
    fn validate(&self) -> Result<(), ParseError> {
        let first = self.data.as_ref().map(|d| d.get().as_bytes()[0]);
        let ok = match self.kind {
            PacketType::Connect => matches!(first, None | Some(b'{')),
            PacketType::Disconnect => first.is_none(),
            PacketType::ConnectError => matches!(first, Some(b'{') | Some(b'"')),
            PacketType::Event | PacketType::BinaryEvent => self
                .data
                .as_ref()
                .is_some_and(|d| event_name_of(d).is_some()),
            PacketType::Ack | PacketType::BinaryAck => first == Some(b'['),
        };
        if ok {
            Ok(())
        } else {
            Err(ParseError::InvalidPayload)
        }
    }

    /// Whether every announced attachment has arrived.
    pub fn is_complete(&self) -> bool {
        self.binary.len() >= self.attachments
    }
}

/// Event names the protocol reserves for the library itself; a client may not send them.
const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// The event name of an event payload: the first element of a non-empty array, a string that is
/// not reserved, or a number (which the reference parser also accepts).
pub fn event_name_of(data: &RawValue) -> Option<String> {
    let items: Vec<&RawValue> = serde_json::from_str(data.get()).ok()?;
    let first = items.first()?.get();
    if first.starts_with('"') {
        let name: String = serde_json::from_str(first).ok()?;
        (!RESERVED_EVENTS.contains(&name.as_str())).then_some(name)
    } else {
        serde_json::from_str::<serde_json::Number>(first)
            .ok()
            .map(|n| n.to_string())
    }
}

/// Encodes a packet header and JSON payload into an Engine.IO message frame, followed by one
/// binary frame per attachment. The result is what gets queued to every recipient.
pub fn encode(
    kind: PacketType,
    nsp: &str,
    id: Option<u64>,
    json: Option<&str>,
    binary: &[Bytes],
) -> Vec<Frame> {
    let kind = match (kind, binary.is_empty()) {
        (PacketType::Event, false) => PacketType::BinaryEvent,
        (PacketType::Ack, false) => PacketType::BinaryAck,
        (kind, _) => kind,
    };
    let json_len = json.map_or(0, str::len);
    let mut text = Frame::message_buffer(nsp.len() + json_len + 24);
    text.push(char::from(b'0' + kind as u8));
    if kind.is_binary() {
        text.push_str(&binary.len().to_string());
        text.push('-');
    }
    if nsp != "/" {
        text.push_str(nsp);
        text.push(',');
    }
    if let Some(id) = id {
        text.push_str(&id.to_string());
    }
    if let Some(json) = json {
        text.push_str(json);
    }
    let mut frames = Vec::with_capacity(1 + binary.len());
    frames.push(Frame::message_from_buffer(text));
    frames.extend(binary.iter().cloned().map(Frame::binary));
    frames
}

/// The JSON array `["event", arg, ...]` from already-encoded arguments.
pub fn event_array(event: &str, args: &[&RawValue]) -> String {
    let name = serde_json::Value::String(event.to_owned()).to_string();
    let mut json = String::with_capacity(
        name.len() + 2 + args.iter().map(|a| a.get().len() + 1).sum::<usize>(),
    );
    json.push('[');
    json.push_str(&name);
    for arg in args {
        json.push(',');
        json.push_str(arg.get());
    }
    json.push(']');
    json
}

/// The JSON array `[arg, ...]` of an ack from already-encoded arguments.
pub fn ack_array(args: &[&RawValue]) -> String {
    let mut json = String::from("[");
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(arg.get());
    }
    json.push(']');
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frames: &[Frame]) -> String {
        match &frames[0] {
            Frame::Text(t) => t.to_string(),
            Frame::Binary(_) => panic!("expected text"),
        }
    }

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[test]
    fn decodes_the_spec_examples() {
        let p = Packet::decode("0").unwrap();
        assert_eq!(
            (p.kind, p.nsp.as_str(), p.id),
            (PacketType::Connect, "/", None)
        );
        assert!(p.data.is_none());

        let p = Packet::decode("0/admin,{\"token\":\"1\"}").unwrap();
        assert_eq!(p.nsp, "/admin");
        assert_eq!(p.data.unwrap().get(), "{\"token\":\"1\"}");

        let p = Packet::decode("1/admin,").unwrap();
        assert_eq!((p.kind, p.nsp.as_str()), (PacketType::Disconnect, "/admin"));

        let p = Packet::decode("2[\"chat\",{\"a\":1}]").unwrap();
        assert_eq!(p.kind, PacketType::Event);
        assert_eq!(p.data.unwrap().get(), "[\"chat\",{\"a\":1}]");

        let p = Packet::decode("212[\"ask\"]").unwrap();
        assert_eq!(p.id, Some(12));

        let p = Packet::decode("2/admin,456[\"project:delete\",123]").unwrap();
        assert_eq!((p.nsp.as_str(), p.id), ("/admin", Some(456)));

        let p = Packet::decode("3/admin,456[]").unwrap();
        assert_eq!((p.kind, p.id), (PacketType::Ack, Some(456)));

        let p = Packet::decode("4{\"message\":\"Not authorized\"}").unwrap();
        assert_eq!(p.kind, PacketType::ConnectError);

        let p = Packet::decode("51-[\"up\",{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!((p.kind, p.attachments), (PacketType::BinaryEvent, 1));
        assert!(!p.is_complete());

        let p = Packet::decode("61-/admin,456[{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!(
            (p.kind, p.attachments, p.nsp.as_str(), p.id),
            (PacketType::BinaryAck, 1, "/admin", Some(456))
        );
    }

    #[test]
    fn accepts_a_namespace_without_trailing_comma() {
        let p = Packet::decode("0/custom").unwrap();
        assert_eq!(p.nsp, "/custom");
        assert!(p.data.is_none());
        let p = Packet::decode("1/custom").unwrap();
        assert_eq!(p.nsp, "/custom");
    }

    #[test]
    fn rejects_malformed_packets() {
        assert_eq!(Packet::decode("").unwrap_err(), ParseError::UnknownType);
        assert_eq!(Packet::decode("abc").unwrap_err(), ParseError::UnknownType);
        assert_eq!(Packet::decode("7").unwrap_err(), ParseError::UnknownType);
        assert_eq!(
            Packet::decode("2{}").unwrap_err(),
            ParseError::InvalidPayload
        );
        assert_eq!(
            Packet::decode("2[]").unwrap_err(),
            ParseError::InvalidPayload
        );
        assert_eq!(
            Packet::decode("2[null]").unwrap_err(),
            ParseError::InvalidPayload
        );
        assert_eq!(
            Packet::decode("2[\"disconnect\"]").unwrap_err(),
            ParseError::InvalidPayload
        );
        assert!(Packet::decode("2[1]").is_ok());
        assert_eq!(Packet::decode("2").unwrap_err(), ParseError::InvalidPayload);
        assert_eq!(
            Packet::decode("2abc[\"a\"]").unwrap_err(),
            ParseError::InvalidJson
        );
        assert_eq!(
            Packet::decode("2[\"a\"").unwrap_err(),
            ParseError::InvalidJson
        );
        assert_eq!(
            Packet::decode("0[]").unwrap_err(),
            ParseError::InvalidPayload
        );
        assert_eq!(
            Packet::decode("1{}").unwrap_err(),
            ParseError::InvalidPayload
        );
        assert_eq!(
            Packet::decode("3{}").unwrap_err(),
            ParseError::InvalidPayload
        );
        assert_eq!(
            Packet::decode("5[\"a\"]").unwrap_err(),
            ParseError::InvalidAttachments
        );
        assert_eq!(
            Packet::decode("5x-[\"a\"]").unwrap_err(),
            ParseError::InvalidAttachments
        );
        assert_eq!(
            Packet::decode("599999-[\"a\"]").unwrap_err(),
            ParseError::InvalidAttachments
        );
        assert_eq!(
            Packet::decode("299999999999999999999[\"a\"]").unwrap_err(),
            ParseError::InvalidAckId
        );
    }

    #[test]
    fn encodes_the_spec_examples() {
        assert_eq!(
            text(&encode(
                PacketType::Connect,
                "/",
                None,
                Some("{\"sid\":\"x\"}"),
                &[]
            )),
            "40{\"sid\":\"x\"}"
        );
        assert_eq!(
            text(&encode(PacketType::Disconnect, "/admin", None, None, &[])),
            "41/admin,"
        );
        assert_eq!(
            text(&encode(
                PacketType::Event,
                "/",
                Some(12),
                Some("[\"ask\"]"),
                &[]
            )),
            "4212[\"ask\"]"
        );
        assert_eq!(
            text(&encode(
                PacketType::ConnectError,
                "/x",
                None,
                Some("{\"message\":\"Invalid namespace\"}"),
                &[]
            )),
            "44/x,{\"message\":\"Invalid namespace\"}"
        );
        let frames = encode(
            PacketType::Event,
            "/",
            None,
            Some("[\"up\",{\"_placeholder\":true,\"num\":0}]"),
            &[Bytes::from_static(&[1, 2, 3])],
        );
        assert_eq!(
            text(&frames),
            "451-[\"up\",{\"_placeholder\":true,\"num\":0}]"
        );
        assert_eq!(frames[1], Frame::binary(Bytes::from_static(&[1, 2, 3])));
        let frames = encode(
            PacketType::Ack,
            "/",
            Some(789),
            Some("[1]"),
            &[Bytes::new(), Bytes::new()],
        );
        assert_eq!(text(&frames), "462-789[1]");
    }

    #[test]
    fn round_trips() {
        for wire in [
            "40",
            "40/admin,{\"token\":\"1\"}",
            "42[\"chat\",{\"a\":1}]",
            "4212[\"ask\"]",
            "43/x,5[1,\"2\"]",
            "41/admin,",
        ] {
            let p = Packet::decode(&wire[1..]).unwrap();
            let frames = encode(
                p.kind,
                &p.nsp,
                p.id,
                p.data.as_deref().map(RawValue::get),
                &[],
            );
            assert_eq!(text(&frames), wire);
        }
    }

    #[test]
    fn builds_event_and_ack_arrays() {
        let args = [raw("1"), raw("\"2\""), raw("{\"3\":[true]}")];
        let refs: Vec<&RawValue> = args.iter().map(|a| a.as_ref()).collect();
        assert_eq!(
            event_array("message-back", &refs),
            "[\"message-back\",1,\"2\",{\"3\":[true]}]"
        );
        assert_eq!(ack_array(&refs), "[1,\"2\",{\"3\":[true]}]");
        assert_eq!(ack_array(&[]), "[]");
        assert_eq!(event_array("quote\"d", &[]), "[\"quote\\\"d\"]");
    }
}

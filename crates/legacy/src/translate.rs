//! 0.9 messages to Socket.IO v5 packets and back: what lets a 0.9 session live in the v4
//! server's namespaces and rooms.
//!
//! Client to server: `send(text)` and `json.send(value)` become the `message` event, `emit`
//! an event; an id with `+` becomes the v5 ack id, a bare id is acknowledged here at once.
//! Server to client: the `message` event with one argument goes out as the 0.9 reference's
//! `socket.send` would (type 3 for a string, 4 for other JSON), so the book's
//! `socket.on('message', ...)` sees what it expects; other events as type 5. The default
//! namespace is connected by the transport itself, as in 0.9.

use serde_json::value::RawValue;
use socketio::packet::{Packet, PacketType};

use crate::error::CodecError;
use crate::message::{json_array, AckRequest, Body, ErrorReason, Message};

/// What a client's message asks for.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A Socket.IO v5 packet for the v4 server, and, for a bare ack id, the 0.9 ack to send
    /// back at once.
    Packet {
        text: String,
        receipt: Option<Message>,
    },
    /// The client leaves: every namespace and the session.
    CloseSession,
    /// Nothing beyond proving the client alive (heartbeats, noops, its own errors).
    Nothing,
}

/// Translates one client message.
pub(crate) fn inbound(message: Message) -> Result<Inbound, CodecError> {
    let nsp = namespace_of(&message.endpoint)?;
    let (ack_id, receipt) = match message.ack {
        None => (None, None),
        Some(AckRequest::WithData(id)) => (Some(id), None),
        Some(AckRequest::Bare(id)) => (
            None,
            Some(Message {
                ack: None,
                endpoint: message.endpoint.clone(),
                body: Body::Ack { id, args: vec![] },
            }),
        ),
    };
    let text = match message.body {
        Body::Disconnect if nsp == "/" => return Ok(Inbound::CloseSession),
        Body::Disconnect => v5(PacketType::Disconnect, nsp, None, None),
        // The default namespace is joined when the transport opens.
        Body::Connect if nsp == "/" => return Ok(Inbound::Nothing),
        Body::Connect => v5(PacketType::Connect, nsp, None, None),
        Body::Heartbeat | Body::Noop | Body::Error { .. } => return Ok(Inbound::Nothing),
        Body::Text(text) => {
            let text =
                serde_json::to_string(&text).map_err(|_| CodecError::InvalidJson("message"))?;
            v5(
                PacketType::Event,
                nsp,
                ack_id,
                Some(&format!("[\"message\",{text}]")),
            )
        }
        Body::Json(value) => v5(
            PacketType::Event,
            nsp,
            ack_id,
            Some(&format!("[\"message\",{}]", value.get())),
        ),
        Body::Event { name, mut args } => {
            let name = serde_json::value::to_raw_value(&name)
                .map_err(|_| CodecError::InvalidJson("event"))?;
            args.insert(0, name);
            v5(PacketType::Event, nsp, ack_id, Some(&json_array(&args)))
        }
        Body::Ack { id, args } => v5(PacketType::Ack, nsp, Some(id), Some(&json_array(&args))),
    };
    Ok(Inbound::Packet { text, receipt })
}

/// Translates one v5 packet of the v4 server for the client; `None` for what 0.9 cannot
/// express (binary attachments) or does not need (the default namespace's own connect).
pub(crate) fn outbound(packet_text: &str) -> Option<Message> {
    let packet = match Packet::decode(packet_text) {
        Ok(packet) => packet,
        Err(error) => {
            tracing::debug!(%error, "the server sent a packet the 0.9 translation cannot read");
            return None;
        }
    };
    let endpoint = if packet.nsp == "/" {
        String::new()
    } else {
        packet.nsp.clone()
    };
    let body = match packet.kind {
        PacketType::Connect if endpoint.is_empty() => return None,
        PacketType::Connect => Body::Connect,
        PacketType::Disconnect => Body::Disconnect,
        PacketType::ConnectError if endpoint.is_empty() => return None,
        PacketType::ConnectError => Body::Error {
            reason: Some(ErrorReason::Unauthorized),
            reconnect: false,
        },
        PacketType::Event => {
            let mut items: Vec<Box<RawValue>> = serde_json::from_str(packet.data?.get()).ok()?;
            if items.is_empty() {
                return None;
            }
            let name: String = serde_json::from_str(items.remove(0).get()).ok()?;
            match (name.as_str(), packet.id, items.as_slice()) {
                ("message", None, [only]) if only.get().starts_with('"') => {
                    Body::Text(serde_json::from_str(only.get()).ok()?)
                }
                ("message", None, [_]) => Body::Json(items.remove(0)),
                _ => Body::Event { name, args: items },
            }
        }
        PacketType::Ack => Body::Ack {
            id: packet.id?,
            args: serde_json::from_str(packet.data?.get()).ok()?,
        },
        PacketType::BinaryEvent | PacketType::BinaryAck => {
            tracing::debug!("a binary packet cannot reach a 0.9 client; dropped");
            return None;
        }
    };
    let ack = match (packet.kind, packet.id) {
        (PacketType::Event, Some(id)) => Some(AckRequest::WithData(id)),
        _ => None,
    };
    Some(Message {
        ack,
        endpoint,
        body,
    })
}

/// The v5 namespace of a 0.9 endpoint. Endpoints are namespace paths; anything that would not
/// survive in a v5 packet header is refused.
fn namespace_of(endpoint: &str) -> Result<&str, CodecError> {
    if endpoint.is_empty() {
        Ok("/")
    } else if endpoint.starts_with('/') && !endpoint.contains(',') {
        Ok(endpoint)
    } else {
        Err(CodecError::InvalidEndpoint(
            endpoint.chars().take(32).collect(),
        ))
    }
}

/// The text of a v5 packet: `<type>[<nsp>,][<id>][<json>]`.
fn v5(kind: PacketType, nsp: &str, id: Option<u64>, json: Option<&str>) -> String {
    let mut text = String::with_capacity(nsp.len() + json.map_or(0, str::len) + 24);
    text.push(char::from(b'0' + kind as u8));
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
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet_of(text: &str) -> (String, Option<String>) {
        match inbound(Message::decode(text).unwrap()).unwrap() {
            Inbound::Packet { text, receipt } => (text, receipt.map(|r| r.encode())),
            other => panic!("{other:?}"),
        }
    }

    fn out(text: &str) -> Option<String> {
        outbound(text).map(|m| m.encode())
    }

    #[test]
    fn client_messages_become_v5_packets() {
        assert_eq!(packet_of("1::/chat_com").0, "0/chat_com,");
        assert_eq!(packet_of("0::/chat_com").0, "1/chat_com,");
        assert_eq!(
            packet_of("3:::{\"a\":\"b\"}").0,
            "2[\"message\",\"{\\\"a\\\":\\\"b\\\"}\"]"
        );
        assert_eq!(
            packet_of("4::/x:{\"a\":1}").0,
            "2/x,[\"message\",{\"a\":1}]"
        );
        assert_eq!(
            packet_of("5:3+:/chat_infra:{\"name\":\"join_room\",\"args\":[{\"name\":\"r\"}]}").0,
            "2/chat_infra,3[\"join_room\",{\"name\":\"r\"}]"
        );
        assert_eq!(
            packet_of("5:::{\"name\":\"get_rooms\"}").0,
            "2[\"get_rooms\"]"
        );
        assert_eq!(packet_of("6::/x:7+[\"ok\"]").0, "3/x,7[\"ok\"]");
        let (text, receipt) = packet_of("3:9:/x:hi");
        assert_eq!(text, "2/x,[\"message\",\"hi\"]");
        assert_eq!(receipt.as_deref(), Some("6::/x:9"));
        assert!(matches!(
            inbound(Message::decode("0::").unwrap()).unwrap(),
            Inbound::CloseSession
        ));
        for nothing in ["1::", "2::", "8::", "7:::1+0"] {
            assert!(matches!(
                inbound(Message::decode(nothing).unwrap()).unwrap(),
                Inbound::Nothing
            ));
        }
        for bad in ["1::chat", "3::/a,b:x"] {
            assert!(inbound(Message::decode(bad).unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_packets_become_0_9_messages() {
        assert_eq!(
            out("0/chat_com,{\"sid\":\"x\"}").as_deref(),
            Some("1::/chat_com")
        );
        assert_eq!(out("0{\"sid\":\"x\"}"), None);
        assert_eq!(
            out("4/chat_com,{\"message\":\"No cookie transmitted.\"}").as_deref(),
            Some("7::/chat_com:2")
        );
        assert_eq!(out("1/chat_com,").as_deref(), Some("0::/chat_com"));
        assert_eq!(
            out("2/chat_com,[\"message\",\"{\\\"a\\\":1}\"]").as_deref(),
            Some("3::/chat_com:{\"a\":1}")
        );
        assert_eq!(
            out("2[\"message\",{\"a\":1}]").as_deref(),
            Some("4:::{\"a\":1}")
        );
        assert_eq!(
            out("2/chat_infra,[\"user_entered\",{\"name\":\"ann\"}]").as_deref(),
            Some("5::/chat_infra:{\"name\":\"user_entered\",\"args\":[{\"name\":\"ann\"}]}")
        );
        assert_eq!(
            out("2/x,5[\"ask\",1]").as_deref(),
            Some("5:5+:/x:{\"name\":\"ask\",\"args\":[1]}")
        );
        assert_eq!(
            out("3/x,4[\"data\"]").as_deref(),
            Some("6::/x:4+[\"data\"]")
        );
        assert_eq!(out("34[\"data\"]").as_deref(), Some("6:::4+[\"data\"]"));
        assert_eq!(out("51-[\"up\",{\"_placeholder\":true,\"num\":0}]"), None);
        assert_eq!(out("garbage"), None);
    }
}

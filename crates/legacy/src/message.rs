//! Socket.IO 0.9 messages: `type:id:endpoint:data` (the book's chapter 5).
//!
//! Types: 0 disconnect, 1 connect, 2 heartbeat, 3 message, 4 json, 5 event, 6 ack, 7 error,
//! 8 noop. An `id` asks for an acknowledgement: `12` for a bare one, `12+` for one with data.
//! The endpoint is the namespace (`/chat_com`), empty for the default one. The decoder is
//! stricter than the 0.9 reference (which turned anything unparsable into an empty packet):
//! what it refuses closes the sender's session.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::CodecError;

/// Largest message id accepted: ids must survive a JavaScript number unchanged.
const MAX_ID: u64 = (1 << 53) - 1;

/// Why an `error` message was sent; 0.9 clients know these by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReason {
    TransportNotSupported = 0,
    ClientNotHandshaken = 1,
    Unauthorized = 2,
}

/// The acknowledgement a client asked for with a message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckRequest {
    /// `id`: the server acknowledges receipt itself, without data.
    Bare(u64),
    /// `id+`: the application answers with data.
    WithData(u64),
}

impl AckRequest {
    pub fn id(self) -> u64 {
        match self {
            AckRequest::Bare(id) | AckRequest::WithData(id) => id,
        }
    }
}

/// What a message carries, by type.
#[derive(Debug, Clone)]
pub enum Body {
    Disconnect,
    /// A namespace connection; `query` is what followed `?` in the endpoint, if anything.
    Connect,
    Heartbeat,
    /// `send(text)`: the `message` event with a string.
    Text(String),
    /// `json.send(value)`: the `message` event with a JSON value.
    Json(Box<RawValue>),
    /// `emit(name, args...)`.
    Event {
        name: String,
        args: Vec<Box<RawValue>>,
    },
    /// The answer to message `id`, with its arguments (`[]` for a bare ack).
    Ack {
        id: u64,
        args: Vec<Box<RawValue>>,
    },
    Error {
        reason: Option<ErrorReason>,
        reconnect: bool,
    },
    Noop,
}

/// One 0.9 message.
#[derive(Debug, Clone)]
pub struct Message {
    pub ack: Option<AckRequest>,
    /// The namespace, `""` for the default one.
    pub endpoint: String,
    pub body: Body,
}

#[derive(Deserialize)]
struct EventJson {
    name: String,
    #[serde(default)]
    args: Option<Vec<Box<RawValue>>>,
}

impl Message {
    /// A message for the default namespace, without ack.
    pub fn new(body: Body) -> Self {
        Message {
            ack: None,
            endpoint: String::new(),
            body,
        }
    }

    /// The same message for namespace `endpoint`.
    pub fn on(mut self, endpoint: &str) -> Self {
        self.endpoint = endpoint.to_owned();
        self
    }

    /// Decodes one message.
    pub fn decode(text: &str) -> Result<Message, CodecError> {
        let mut parts = text.splitn(3, ':');
        let (Some(kind), Some(id), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(CodecError::MissingHeader);
        };
        // The endpoint may be followed by `:data`; data may hold colons, the endpoint may not.
        let (endpoint, data) = rest.split_once(':').unwrap_or((rest, ""));
        let ack = parse_ack_request(id)?;
        let body = match kind {
            "0" => Body::Disconnect,
            "1" => Body::Connect,
            "2" => Body::Heartbeat,
            "3" => Body::Text(data.to_owned()),
            "4" => {
                Body::Json(serde_json::from_str(data).map_err(|_| CodecError::InvalidJson("json"))?)
            }
            "5" => {
                let event: EventJson =
                    serde_json::from_str(data).map_err(|error| match error.classify() {
                        serde_json::error::Category::Data => CodecError::MissingEventName,
                        _ => CodecError::InvalidJson("event"),
                    })?;
                Body::Event {
                    name: event.name,
                    args: event.args.unwrap_or_default(),
                }
            }
            "6" => parse_ack(data)?,
            "7" => {
                let (reason, advice) = data.split_once('+').unwrap_or((data, ""));
                Body::Error {
                    reason: match reason {
                        "0" => Some(ErrorReason::TransportNotSupported),
                        "1" => Some(ErrorReason::ClientNotHandshaken),
                        "2" => Some(ErrorReason::Unauthorized),
                        _ => None,
                    },
                    reconnect: advice == "0",
                }
            }
            "8" => Body::Noop,
            other => return Err(CodecError::UnknownType(other.chars().take(16).collect())),
        };
        // A namespace connection may carry a query string (`1::/chat?x=1`); namespaces do not.
        let endpoint = endpoint.split('?').next().unwrap_or_default().to_owned();
        Ok(Message {
            ack,
            endpoint,
            body,
        })
    }

    /// Encodes the message as the 0.9 reference does.
    pub fn encode(&self) -> String {
        let (kind, data): (char, Option<String>) = match &self.body {
            Body::Disconnect => ('0', None),
            Body::Connect => ('1', None),
            Body::Heartbeat => ('2', None),
            Body::Text(text) => ('3', (!text.is_empty()).then(|| text.clone())),
            Body::Json(value) => ('4', Some(value.get().to_owned())),
            Body::Event { name, args } => {
                let mut json = serde_json::json!({ "name": name }).to_string();
                if !args.is_empty() {
                    json.pop();
                    json.push_str(",\"args\":");
                    json.push_str(&json_array(args));
                    json.push('}');
                }
                ('5', Some(json))
            }
            Body::Ack { id, args } => {
                let mut data = id.to_string();
                if !args.is_empty() {
                    data.push('+');
                    data.push_str(&json_array(args));
                }
                ('6', Some(data))
            }
            Body::Error { reason, reconnect } => {
                let mut data = reason.map(|r| (r as u8).to_string()).unwrap_or_default();
                if *reconnect {
                    data.push_str("+0");
                }
                ('7', (!data.is_empty()).then_some(data))
            }
            Body::Noop => ('8', None),
        };
        let id = match self.ack {
            None => String::new(),
            Some(AckRequest::Bare(id)) => id.to_string(),
            Some(AckRequest::WithData(id)) => format!("{id}+"),
        };
        let mut encoded = format!("{kind}:{id}:{}", self.endpoint);
        if let Some(data) = data {
            encoded.push(':');
            encoded.push_str(&data);
        }
        encoded
    }
}

/// `[a,b,...]` from already-encoded values.
pub(crate) fn json_array(args: &[Box<RawValue>]) -> String {
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

fn parse_id(digits: &str) -> Result<u64, CodecError> {
    digits
        .parse::<u64>()
        .ok()
        .filter(|id| *id <= MAX_ID && digits.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| CodecError::InvalidId(digits.chars().take(24).collect()))
}

fn parse_ack_request(id: &str) -> Result<Option<AckRequest>, CodecError> {
    if id.is_empty() {
        return Ok(None);
    }
    Ok(Some(match id.strip_suffix('+') {
        Some(digits) => AckRequest::WithData(parse_id(digits)?),
        None => AckRequest::Bare(parse_id(id)?),
    }))
}

/// `6` data: `<id>` or `<id>+[args]`.
fn parse_ack(data: &str) -> Result<Body, CodecError> {
    let invalid = || CodecError::InvalidAck(data.chars().take(24).collect());
    let (digits, args) = match data.split_once('+') {
        Some((digits, args)) => (digits, Some(args)),
        None => (data, None),
    };
    let id = parse_id(digits).map_err(|_| invalid())?;
    let args = match args {
        None | Some("") => Vec::new(),
        Some(args) => serde_json::from_str(args).map_err(|_| invalid())?,
    };
    Ok(Body::Ack { id, args })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    /// Bodies compare by their debug form: `RawValue` has no equality of its own.
    fn same(a: &Body, b: &Body) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    #[test]
    fn decodes_the_books_examples() {
        let connect = Message::decode("1::/chat_com").unwrap();
        assert_eq!(connect.endpoint, "/chat_com");
        assert!(same(&connect.body, &Body::Connect));
        assert!(same(
            &Message::decode("2::").unwrap().body,
            &Body::Heartbeat
        ));
        assert!(same(
            &Message::decode("0::").unwrap().body,
            &Body::Disconnect
        ));
        assert!(same(&Message::decode("8::").unwrap().body, &Body::Noop));
        let text = Message::decode("3:::hello: world").unwrap();
        assert!(same(&text.body, &Body::Text("hello: world".into())));
        let json = Message::decode("4::/chat_com:{\"a\":1}").unwrap();
        assert!(same(&json.body, &Body::Json(raw("{\"a\":1}"))));
        let event = Message::decode(
            "5:4+:/chat_infra:{\"name\":\"join_room\",\"args\":[{\"name\":\"r\"}]}",
        )
        .unwrap();
        assert_eq!(event.ack, Some(AckRequest::WithData(4)));
        assert_eq!(event.endpoint, "/chat_infra");
        assert!(same(
            &event.body,
            &Body::Event {
                name: "join_room".into(),
                args: vec![raw("{\"name\":\"r\"}")]
            }
        ));
        let ack = Message::decode("6:::4+[\"data\"]").unwrap();
        assert!(same(
            &ack.body,
            &Body::Ack {
                id: 4,
                args: vec![raw("\"data\"")]
            }
        ));
        assert!(same(
            &Message::decode("6:::12").unwrap().body,
            &Body::Ack {
                id: 12,
                args: vec![]
            }
        ));
        assert!(same(
            &Message::decode("7:::1+0").unwrap().body,
            &Body::Error {
                reason: Some(ErrorReason::ClientNotHandshaken),
                reconnect: true
            }
        ));
        assert_eq!(Message::decode("1::/chat?x=1").unwrap().endpoint, "/chat");
        assert_eq!(
            Message::decode("3:7:").unwrap().ack,
            Some(AckRequest::Bare(7))
        );
    }

    #[test]
    fn encodes_as_the_reference_does() {
        assert_eq!(Message::new(Body::Connect).encode(), "1::");
        assert_eq!(
            Message::new(Body::Connect).on("/chat_com").encode(),
            "1::/chat_com"
        );
        assert_eq!(Message::new(Body::Heartbeat).encode(), "2::");
        assert_eq!(Message::new(Body::Noop).encode(), "8::");
        assert_eq!(
            Message::new(Body::Ack {
                id: 4,
                args: vec![raw("\"data\"")]
            })
            .encode(),
            "6:::4+[\"data\"]"
        );
        assert_eq!(
            Message::new(Body::Ack {
                id: 4,
                args: vec![]
            })
            .on("/x")
            .encode(),
            "6::/x:4"
        );
        let event = Message {
            ack: Some(AckRequest::WithData(1)),
            endpoint: "/chat_infra".into(),
            body: Body::Event {
                name: "ask".into(),
                args: vec![raw("1"), raw("{\"b\":2}")],
            },
        };
        assert_eq!(
            event.encode(),
            "5:1+:/chat_infra:{\"name\":\"ask\",\"args\":[1,{\"b\":2}]}"
        );
        assert_eq!(
            Message::new(Body::Event {
                name: "x".into(),
                args: vec![]
            })
            .encode(),
            "5:::{\"name\":\"x\"}"
        );
        assert_eq!(
            Message::new(Body::Error {
                reason: Some(ErrorReason::Unauthorized),
                reconnect: false
            })
            .on("/chat_com")
            .encode(),
            "7::/chat_com:2"
        );
        assert_eq!(Message::new(Body::Text("a:b".into())).encode(), "3:::a:b");
        for text in [
            "5:1+:/a:{\"name\":\"x\",\"args\":[1]}",
            "6::/a:3+[1,2]",
            "3:::hi",
        ] {
            assert_eq!(Message::decode(text).unwrap().encode(), text);
        }
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for bad in [
            "",
            "5",
            "5:",
            "9::",
            "x::",
            "55::",
            "3:a:",
            "3:1a:",
            "3:99999999999999999999:",
            "4:::{",
            "5:::{\"args\":[]}",
            "5:::[1]",
            "5:::{\"name\":1}",
            "6:::",
            "6:::x+[]",
            "6:::1+{",
            "-1::",
        ] {
            assert!(Message::decode(bad).is_err(), "{bad:?} was accepted");
        }
    }
}

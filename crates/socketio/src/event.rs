//! An event received from a client, and the acknowledgements in both directions.

use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::error::EmitError;
use crate::packet::{ack_array, PacketType};
use crate::socket::Socket;

/// An event from a client: its arguments as raw JSON, its binary attachments (referenced from
/// the JSON by `{"_placeholder":true,"num":N}`), and the ack the client asked for, if any.
#[derive(Debug)]
pub struct Event {
    pub name: String,
    pub args: Vec<Box<RawValue>>,
    pub binary: Vec<Bytes>,
    pub ack: Option<AckSender>,
}

impl Event {
    /// The first argument, typed. Errors name what did not match.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        let first = self.args.first().map_or("null", |arg| arg.get());
        serde_json::from_str(first)
    }

    /// The arguments, as references for forwarding without re-encoding.
    pub fn raw_args(&self) -> Vec<&RawValue> {
        self.args.iter().map(AsRef::as_ref).collect()
    }
}

/// Answers one client event that asked for an acknowledgement. Consumed by sending: each ack
/// is answered at most once.
#[derive(Debug)]
pub struct AckSender {
    socket: Arc<Socket>,
    id: u64,
}

impl AckSender {
    pub(crate) fn new(socket: Arc<Socket>, id: u64) -> Self {
        AckSender { socket, id }
    }

    /// Acknowledges with one argument.
    pub fn send<T: Serialize + ?Sized>(self, data: &T) -> Result<(), EmitError> {
        let json =
            serde_json::to_string(&[data]).map_err(|e| EmitError::Serialize(e.to_string()))?;
        self.socket
            .send_packet(PacketType::Ack, Some(self.id), &json, &[])
    }

    /// Acknowledges with already-encoded arguments and binary attachments.
    pub fn send_raw(self, args: &[&RawValue], binary: &[Bytes]) -> Result<(), EmitError> {
        self.socket
            .send_packet(PacketType::Ack, Some(self.id), &ack_array(args), binary)
    }
}

/// A client's answer to `emit_with_ack`.
#[derive(Debug)]
pub struct AckResponse {
    pub args: Vec<Box<RawValue>>,
    pub binary: Vec<Bytes>,
}

impl AckResponse {
    /// The first argument of the answer, typed.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        let first = self.args.first().map_or("null", |arg| arg.get());
        serde_json::from_str(first)
    }
}

//! Arbitrary client text through the Socket.IO packet decoder. The decoder must never panic,
//! and whatever it accepts must survive a round trip through the encoder: the server re-encodes
//! decoded packets when it forwards them, so a packet that changes kind, namespace or ack id on
//! the way would reach other clients as something the sender never sent.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use socketio::packet::{encode, Packet};

fuzz_target!(|bytes: &[u8]| {
    // Engine.IO hands the decoder valid UTF-8 only; lossy conversion keeps every input useful.
    let text = String::from_utf8_lossy(bytes);
    let Ok(packet) = Packet::decode(&text) else {
        return;
    };
    // The encoder emits binary kinds from the attachments it is given, so pass as many
    // (empty) attachments as the header announced.
    let attachments = vec![bytes::Bytes::new(); packet.attachments];
    let frames = encode(
        packet.kind,
        &packet.nsp,
        packet.id,
        packet.data.as_deref().map(RawValue::get),
        &attachments,
    );
    let engineio::Frame::Text(wire) = &frames[0] else {
        panic!("the first frame of an encoded packet is text");
    };
    // The encoder's first frame is an Engine.IO message: `4` + the Socket.IO packet.
    let again = Packet::decode(&wire[1..])
        .unwrap_or_else(|error| panic!("re-encoded {wire:?} (from {text:?}) fails: {error}"));
    assert_eq!(
        again.kind, packet.kind,
        "kind changed: {text:?} -> {wire:?}"
    );
    assert_eq!(
        again.nsp, packet.nsp,
        "namespace changed: {text:?} -> {wire:?}"
    );
    assert_eq!(again.id, packet.id, "ack id changed: {text:?} -> {wire:?}");
    assert_eq!(
        again.attachments, packet.attachments,
        "attachments changed: {text:?} -> {wire:?}"
    );
});

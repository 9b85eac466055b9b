//! The wire codecs on the hot path of every message: the Socket.IO packet decoder and encoder,
//! and the Engine.IO polling body splitter underneath them.
//!
//! `cargo bench -p socketio --bench codec`. Results go to `docs/BENCHMARKS.md`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use socketio::packet::{encode, event_array, Packet, PacketType};

/// A chat message as a client sends it: the Socket.IO part of the Engine.IO message
/// `42["chat",{...}]` (the engine strips the leading `4` before the decoder sees it).
const SMALL_EVENT: &str =
    r#"2["chat",{"room":"lobby","user":"alice","text":"hello everyone","ts":1718000000000}]"#;

/// An acknowledgement of event 17 on a custom namespace, with two arguments.
const ACK: &str = r#"3/chat,17[{"ok":true},"delivered"]"#;

/// The header of an event with two binary attachments; the attachments follow as separate
/// Engine.IO messages and cost the decoder nothing.
const BINARY_EVENT_HEADER: &str = r#"52-["upload",{"name":"a.png","chunk":{"_placeholder":true,"num":0},"thumb":{"_placeholder":true,"num":1}}]"#;

/// `2["chat",{...}]` whose text makes the whole packet about 1 KB, with escapes and non-ASCII
/// characters as real chat text has.
fn large_event() -> String {
    let sentence = "Ünïcode and \\\"quoted\\\" words, then plain ASCII text. ";
    let mut text = String::new();
    while text.len() < 940 {
        text.push_str(sentence);
    }
    format!(r#"2["chat",{{"room":"lobby","user":"alice","text":"{text}","ts":1718000000000}}]"#)
}

/// The JSON payload (everything after the packet header) of an event packet.
fn payload(packet: &str) -> &str {
    &packet[1..]
}

fn decode(c: &mut Criterion) {
    let large = large_event();
    let mut group = c.benchmark_group("decode");
    for (name, wire) in [
        ("event_small", SMALL_EVENT),
        ("event_1k", large.as_str()),
        ("ack", ACK),
        ("binary_event_header", BINARY_EVENT_HEADER),
    ] {
        // Every input must be a valid packet, or the bench measures the error path.
        assert!(Packet::decode(wire).is_ok(), "{name} does not decode");
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_function(name, |b| b.iter(|| Packet::decode(black_box(wire))));
    }
    group.finish();
}

fn encode_packets(c: &mut Criterion) {
    let large = large_event();
    let placeholders = r#"["upload",{"name":"a.png","chunk":{"_placeholder":true,"num":0},"thumb":{"_placeholder":true,"num":1}}]"#;
    let attachments = [Bytes::from(vec![0u8; 4096]), Bytes::from(vec![1u8; 512])];
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Bytes(SMALL_EVENT.len() as u64));
    group.bench_function("event_small", |b| {
        b.iter(|| {
            encode(
                PacketType::Event,
                "/",
                None,
                Some(black_box(payload(SMALL_EVENT))),
                &[],
            )
        })
    });
    group.throughput(Throughput::Bytes(large.len() as u64));
    group.bench_function("event_1k", |b| {
        b.iter(|| {
            encode(
                PacketType::Event,
                "/",
                None,
                Some(black_box(payload(&large))),
                &[],
            )
        })
    });
    group.throughput(Throughput::Bytes(ACK.len() as u64));
    group.bench_function("ack", |b| {
        b.iter(|| {
            encode(
                PacketType::Ack,
                "/chat",
                Some(17),
                Some(black_box(r#"[{"ok":true},"delivered"]"#)),
                &[],
            )
        })
    });
    group.throughput(Throughput::Bytes(BINARY_EVENT_HEADER.len() as u64));
    group.bench_function("binary_event_header", |b| {
        b.iter(|| {
            encode(
                PacketType::Event,
                "/",
                None,
                Some(black_box(placeholders)),
                &attachments,
            )
        })
    });
    // What `emit` does with a typed argument: serialise it into the event array, then encode.
    let message = serde_json::json!({
        "room": "lobby",
        "user": "alice",
        "text": "hello everyone",
        "ts": 1718000000000u64,
    });
    group.throughput(Throughput::Bytes(SMALL_EVENT.len() as u64));
    group.bench_function("emit_small_from_value", |b| {
        b.iter(|| {
            let arg = serde_json::value::to_raw_value(black_box(&message))
                .expect("a JSON value serialises");
            let json = event_array("chat", &[&arg]);
            encode(PacketType::Event, "/", None, Some(&json), &[])
        })
    });
    group.finish();
}

/// A polling POST body as a busy client sends it: three events, an ack, a pong and a binary
/// attachment, joined by the record separator.
fn polling_body() -> String {
    let records = [
        format!("4{SMALL_EVENT}"),
        format!("4{}", r#"2["typing",{"room":"lobby"}]"#),
        format!("4{SMALL_EVENT}"),
        format!("4{}", r#"31[{"ok":true}]"#),
        "3".to_owned(),
        // The bytes 0..96 as an attachment, base64.
        "bAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0BBQkNERUZHSElKS0xNTk9QUVJTVFVWV1hZWltcXV5f".to_owned(),
    ];
    records.join("\u{1e}")
}

fn decode_polling_payload(c: &mut Criterion) {
    let body = polling_body();
    let packets = engineio::decode_payload(&body).expect("the bench body is valid");
    assert_eq!(packets.len(), 6);
    let mut group = c.benchmark_group("engineio");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("decode_payload_6_packets", |b| {
        b.iter(|| engineio::decode_payload(black_box(&body)))
    });
    group.finish();
}

criterion_group! {
    name = codec;
    // Each of these runs in nanoseconds: 3 s of samples per function is plenty and keeps the
    // whole file near a minute on two cores.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = decode, encode_packets, decode_polling_payload
}
criterion_main!(codec);

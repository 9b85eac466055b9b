//! Whatever a client sends in a polling body or a websocket text frame, the parser returns a
//! packet or an error, never a panic.

#![no_main]

use engineio::{decode_payload, Packet, Str};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The transports reject invalid UTF-8 before parsing; the parser only ever sees text.
    let text = String::from_utf8_lossy(data);
    let _ = decode_payload(&text);
    let _ = Packet::decode_text(Str::from(text.as_ref()));
});

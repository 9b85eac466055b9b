//! Whatever a server sends, the client's decoder returns a packet (or `Other`) and the stamp
//! search a stamp or nothing, never a panic.

#![no_main]

use chat_bench::protocol::{Packet, Stamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The transports hand over text only (websocket text frames are UTF-8 by then).
    let text = String::from_utf8_lossy(data);
    if let Packet::Event { data, .. } = Packet::decode(&text) {
        let _ = Stamp::find(data);
    }
    let _ = Stamp::find(&text);
});

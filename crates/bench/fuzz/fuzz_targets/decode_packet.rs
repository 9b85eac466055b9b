//! Whatever a server sends, the client's decoder returns a packet (or `Other`), the stamp
//! search a stamp or nothing, and the offset and pid searches (connection-state recovery) an
//! offset, a pid or nothing, never a panic.

#![no_main]

use chat_bench::protocol::{connect_pid, last_string_argument, Packet, Stamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The transports hand over text only (websocket text frames are UTF-8 by then).
    let text = String::from_utf8_lossy(data);
    match Packet::decode(&text) {
        Packet::Event { data, .. } => {
            let _ = Stamp::find(data);
            let _ = last_string_argument(data);
        }
        Packet::Connected { data, .. } => {
            let _ = connect_pid(data);
        }
        _ => {}
    }
    let _ = last_string_argument(&text);
    let _ = Stamp::find(&text);
});

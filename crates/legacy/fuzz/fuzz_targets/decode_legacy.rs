//! Whatever a 0.9 client sends in a polling body or a websocket frame, the decoders return
//! messages or an error, never a panic; what they accept encodes again.

#![no_main]

use legacy::framing::decode_payload;
use legacy::message::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The transports reject invalid UTF-8 before decoding; the decoders only ever see text.
    let text = String::from_utf8_lossy(data);
    if let Ok(messages) = decode_payload(&text) {
        for message in messages {
            if let Ok(decoded) = Message::decode(message) {
                let _ = Message::decode(&decoded.encode());
            }
        }
    }
});

//! Several 0.9 messages in one polling body: each is framed as `\u{fffd}<length>\u{fffd}<message>`;
//! a body with a single message carries it bare. Lengths count UTF-16 code units, because
//! the 0.9 reference measured JavaScript strings: `"€"` counts 1, `"😀"` counts 2.

use crate::error::CodecError;

/// Opens and closes a frame's length.
pub const FRAME_MARK: char = '\u{fffd}';

/// Length digits accepted: more than any body within `max_payload` needs.
const MAX_LENGTH_DIGITS: usize = 10;

/// Splits a polling body into the text of its messages.
pub fn decode_payload(body: &str) -> Result<Vec<&str>, CodecError> {
    let Some(mut rest) = body.strip_prefix(FRAME_MARK) else {
        return Ok(vec![body]);
    };
    let mut messages = Vec::new();
    loop {
        let (digits, after) = rest
            .split_once(FRAME_MARK)
            .ok_or(CodecError::BadFrameHeader)?;
        let length = (!digits.is_empty()
            && digits.len() <= MAX_LENGTH_DIGITS
            && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse::<usize>().ok())
        .flatten()
        .ok_or_else(|| CodecError::BadFrameLength(digits.chars().take(16).collect()))?;
        let end = utf16_offset(after, length)
            .ok_or_else(|| CodecError::BadFrameLength(digits.to_owned()))?;
        messages.push(&after[..end]);
        rest = &after[end..];
        if rest.is_empty() {
            return Ok(messages);
        }
        rest = rest
            .strip_prefix(FRAME_MARK)
            .ok_or(CodecError::BadFrameHeader)?;
    }
}

/// Joins encoded messages into one polling body.
pub fn encode_payload(messages: &[String]) -> String {
    if let [only] = messages {
        return only.clone();
    }
    let mut body = String::with_capacity(messages.iter().map(|m| m.len() + 8).sum());
    for message in messages {
        body.push(FRAME_MARK);
        body.push_str(&utf16_len(message).to_string());
        body.push(FRAME_MARK);
        body.push_str(message);
    }
    body
}

/// How long a frame carrying `message` is, header included, in bytes of UTF-8.
pub fn framed_len(message: &str) -> usize {
    message.len() + 2 * FRAME_MARK.len_utf8() + 10
}

/// The length of `text` as JavaScript measures it.
pub fn utf16_len(text: &str) -> usize {
    text.chars().map(char::len_utf16).sum()
}

/// The byte offset after the first `units` UTF-16 code units of `text`; `None` if `text` is
/// shorter or the count ends inside a character.
fn utf16_offset(text: &str, units: usize) -> Option<usize> {
    let mut counted = 0;
    for (offset, c) in text.char_indices() {
        if counted == units {
            return Some(offset);
        }
        counted += c.len_utf16();
        if counted > units {
            return None;
        }
    }
    (counted == units).then_some(text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_javascript_lengths() {
        let messages = vec![
            "1::".to_owned(),
            "3:::€ and 😀".to_owned(),
            "5:::{\"name\":\"x\"}".to_owned(),
        ];
        let body = encode_payload(&messages);
        assert!(body.starts_with("\u{fffd}3\u{fffd}1::\u{fffd}12\u{fffd}3:::€ and 😀"));
        assert_eq!(decode_payload(&body).unwrap(), messages);
        assert_eq!(encode_payload(&messages[..1]), "1::");
        assert_eq!(decode_payload("2::").unwrap(), vec!["2::"]);
    }

    #[test]
    fn bad_framing_is_an_error_not_a_panic() {
        for bad in [
            "\u{fffd}",
            "\u{fffd}3",
            "\u{fffd}\u{fffd}1::",
            "\u{fffd}x\u{fffd}1::",
            "\u{fffd}4\u{fffd}1::",
            "\u{fffd}99999999999999999999\u{fffd}1::",
            "\u{fffd}18446744073709551615\u{fffd}1::",
            "\u{fffd}3\u{fffd}1::junk",
            "\u{fffd}1\u{fffd}😀",
            "\u{fffd}-1\u{fffd}1::",
        ] {
            assert!(decode_payload(bad).is_err(), "{bad:?} was accepted");
        }
    }
}

//! Session ids: an optional routing tag followed by 128 random bits in base64url.

use base64::Engine as _;
use rand::RngCore;

/// Random bytes in every id: 128 bits, above the 120 the sticky design requires.
const RANDOM_BYTES: usize = 16;

/// Makes a new session id: `tag` (chosen by sticky routing, may be empty) then 22 characters of
/// randomness from the operating system's CSPRNG, so ids cannot be guessed or enumerated.
pub fn generate_sid(tag: &str) -> String {
    let mut random = [0u8; RANDOM_BYTES];
    rand::rng().fill_bytes(&mut random);
    let mut sid = String::with_capacity(tag.len() + 22);
    sid.push_str(tag);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(random, &mut sid);
    sid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_tag_and_are_url_safe() {
        let sid = generate_sid("w3");
        assert!(sid.starts_with("w3"));
        assert_eq!(sid.len(), 24);
        assert!(sid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn ids_do_not_repeat() {
        let ids: std::collections::HashSet<_> = (0..10_000).map(|_| generate_sid("")).collect();
        assert_eq!(ids.len(), 10_000);
    }
}

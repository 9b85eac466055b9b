//! Self-routing session ids (DESIGN §5): the worker that opens an Engine.IO session writes its
//! node id and worker slot at the start of the sid, so whoever routes requests (the master, a
//! proxy in front of several hosts) finds the owner from the sid alone, with no shared table.
//! The random part that follows keeps 128 bits, so the tag never makes ids guessable.

/// The base64url alphabet, which Engine.IO ids already use.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Node ids and worker slots each take two characters: 0 to 4095.
pub const MAX_ID: u16 = 4095;

/// Where a session lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub node: u16,
    pub slot: u16,
}

/// The four-character tag for sessions of `owner`. Ids above [`MAX_ID`] wrap.
pub fn encode(owner: Owner) -> String {
    let mut tag = String::with_capacity(4);
    for value in [owner.node, owner.slot] {
        let value = value & MAX_ID;
        tag.push(ALPHABET[usize::from(value >> 6)] as char);
        tag.push(ALPHABET[usize::from(value & 63)] as char);
    }
    tag
}

/// The owner a sid names, if it starts with a valid tag. A forged tag names some worker, which
/// then answers "Session ID unknown" like for any other unknown id.
pub fn decode(sid: &str) -> Option<Owner> {
    let bytes = sid.as_bytes();
    if bytes.len() < 4 {
        return None;
    }
    let digit = |b: u8| ALPHABET.iter().position(|a| *a == b).map(|p| p as u16);
    let pair = |hi: u8, lo: u8| Some((digit(hi)? << 6) | digit(lo)?);
    Some(Owner {
        node: pair(bytes[0], bytes[1])?,
        slot: pair(bytes[2], bytes[3])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_for_every_slot_of_a_node() {
        for slot in 0..=MAX_ID {
            let owner = Owner { node: 7, slot };
            let sid = format!("{}{}", encode(owner), engine_like_random());
            assert_eq!(decode(&sid), Some(owner));
        }
        assert_eq!(encode(Owner { node: 0, slot: 0 }), "AAAA");
        assert_eq!(
            encode(Owner {
                node: MAX_ID,
                slot: 1
            }),
            "__AB"
        );
    }

    #[test]
    fn garbage_names_no_owner() {
        assert_eq!(decode(""), None);
        assert_eq!(decode("AB"), None);
        assert_eq!(decode("A.AA"), None);
        assert_eq!(decode("€€"), None);
    }

    fn engine_like_random() -> &'static str {
        "0123456789abcdefghijkl"
    }
}

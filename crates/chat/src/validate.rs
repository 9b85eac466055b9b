//! Rules for what users type: nicknames, room names and messages are bounded text.

/// Why a nickname, room name or message is refused; shown to the user as is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidInput {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} must be at most {max} characters")]
    TooLong { what: &'static str, max: usize },
    #[error("{what} must not contain control characters")]
    ControlCharacter { what: &'static str },
}

fn bounded_text<'a>(
    what: &'static str,
    text: &'a str,
    max: usize,
) -> Result<&'a str, InvalidInput> {
    let text = text.trim();
    if text.is_empty() {
        return Err(InvalidInput::Empty { what });
    }
    if text.chars().count() > max {
        return Err(InvalidInput::TooLong { what, max });
    }
    if text.chars().any(char::is_control) {
        return Err(InvalidInput::ControlCharacter { what });
    }
    Ok(text)
}

pub const MAX_NICKNAME_CHARS: usize = 32;
pub const MAX_ROOM_CHARS: usize = 64;

/// A nickname: 1–32 characters once trimmed, no control characters.
pub fn nickname(text: &str) -> Result<&str, InvalidInput> {
    bounded_text("nickname", text, MAX_NICKNAME_CHARS)
}

/// A room name: 1–64 characters once trimmed, no control characters.
pub fn room(text: &str) -> Result<&str, InvalidInput> {
    bounded_text("room name", text, MAX_ROOM_CHARS)
}

/// A chat message: 1–`max` characters; line breaks and tabs are allowed, other controls not.
pub fn message(text: &str, max: usize) -> Result<&str, InvalidInput> {
    let what = "message";
    if text.trim().is_empty() {
        return Err(InvalidInput::Empty { what });
    }
    if text.chars().count() > max {
        return Err(InvalidInput::TooLong { what, max });
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(InvalidInput::ControlCharacter { what });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicknames_are_trimmed_and_bounded() {
        assert_eq!(nickname("  ann "), Ok("ann"));
        assert_eq!(
            nickname("   "),
            Err(InvalidInput::Empty { what: "nickname" })
        );
        assert!(nickname(&"x".repeat(32)).is_ok());
        assert_eq!(
            nickname(&"x".repeat(33)),
            Err(InvalidInput::TooLong {
                what: "nickname",
                max: 32
            })
        );
        assert_eq!(
            nickname("a\u{0}b"),
            Err(InvalidInput::ControlCharacter { what: "nickname" })
        );
        assert_eq!(nickname("é😀"), Ok("é😀"));
    }

    #[test]
    fn rooms_and_messages_are_bounded() {
        assert!(room(&"r".repeat(64)).is_ok());
        assert!(room(&"r".repeat(65)).is_err());
        assert_eq!(message("line\nnext", 20), Ok("line\nnext"));
        assert!(message(&"m".repeat(21), 20).is_err());
        assert!(message("bell\u{7}", 20).is_err());
    }
}

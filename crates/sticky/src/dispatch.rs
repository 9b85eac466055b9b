//! Sticky scheduling in the master, the reading half: which worker a new connection belongs
//! to, from its first request line, read with MSG_PEEK so the bytes stay in the socket for the
//! worker; and the answer to a connection no worker takes.

use std::time::Duration;

use tokio::net::TcpStream;

use crate::route_tag::{self, Owner};
use crate::sid;

/// Longest request line read before routing; longer ones are refused.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// The longest method name accepted (RFC 9110 methods and common extensions are shorter).
const MAX_METHOD: usize = 16;

/// What the first request line of a connection says.
#[derive(Debug, PartialEq, Eq)]
pub enum Peeked {
    /// An HTTP request, and where it belongs.
    Request(Target),
    /// Bytes that are not an HTTP/1 request line, or one longer than [`MAX_REQUEST_LINE`].
    Invalid,
    /// The client closed, or sent nothing complete in time.
    Gone,
}

/// Where a request belongs, as its target says.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Target {
    /// A request of an open session: to the worker its `sid` names.
    Session(Owner),
    /// A handshake: it opens a session on whichever worker takes it, so it counts towards
    /// that worker's load.
    Handshake,
    /// Anything else (a page, a login): served by any worker, and no session follows.
    Other,
}

/// Waits for the connection's request line, at most `timeout`, without consuming it.
pub async fn peek(stream: &TcpStream, timeout: Duration) -> Peeked {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buffer = vec![0u8; MAX_REQUEST_LINE];
    // Peeking again returns at once while the data is unchanged, so a partial line is
    // re-read after a short pause; a request line nearly always arrives in one segment.
    let mut pause = Duration::from_millis(1);
    loop {
        let read = match tokio::time::timeout_at(deadline, stream.peek(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Peeked::Gone,
            Ok(Ok(read)) => read,
        };
        let seen = &buffer[..read];
        if let Some(end) = seen.iter().position(|b| *b == b'\n') {
            return parse(&seen[..end]);
        }
        if !plausible_start(seen) || read == buffer.len() {
            return Peeked::Invalid;
        }
        if tokio::time::Instant::now() + pause >= deadline {
            return Peeked::Gone;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Whether `seen` can still become a request line: a method of capitals, then a space.
fn plausible_start(seen: &[u8]) -> bool {
    let method = seen.split(|b| *b == b' ').next().unwrap_or_default();
    method.len() <= MAX_METHOD && method.iter().all(u8::is_ascii_uppercase)
}

/// Parses `METHOD SP TARGET SP HTTP/x.y` (a trailing CR allowed).
fn parse(line: &[u8]) -> Peeked {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Peeked::Invalid;
    };
    if method.is_empty()
        || method.len() > MAX_METHOD
        || !method.iter().all(u8::is_ascii_uppercase)
        || target.is_empty()
        || !version.starts_with(b"HTTP/1.")
    {
        return Peeked::Invalid;
    }
    Peeked::Request(classify(target))
}

/// Where a request target belongs: its session's owner, a handshake, or neither. A target that
/// is not UTF-8 names no session (HTTP/1 targets are ASCII; the worker answers what it is).
pub fn classify(target: &[u8]) -> Target {
    let Ok(target) = std::str::from_utf8(target) else {
        return Target::Other;
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if let Some(owner) = sid::of_request(path, query).and_then(route_tag::decode) {
        return Target::Session(owner);
    }
    if opens_session(path, query) {
        Target::Handshake
    } else {
        Target::Other
    }
}

/// Whether a target without a session id is a handshake: an Engine.IO request (`EIO=` in
/// the query), or the Socket.IO 0.9 handshake `/socket.io/1/`.
fn opens_session(path: &str, query: Option<&str>) -> bool {
    let engine_io = query.is_some_and(|query| sid::query_value(query, "EIO").is_some());
    let legacy = path.strip_suffix('/').unwrap_or(path).ends_with("/1");
    engine_io || legacy
}

/// Answers a connection the master does not hand over, and closes it. What the client sent
/// is read and dropped first (briefly, and only so much): closing a socket with unread input
/// would reset the connection and lose the answer.
pub async fn refuse(mut stream: TcpStream, answer: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let linger = async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut left: usize = 64 * 1024;
        while left > 0 {
            let read = stream.read(&mut sink).await?;
            if read == 0 {
                break;
            }
            left = left.saturating_sub(read);
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), linger).await;
}

/// The answer to bytes that are not a request.
pub const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// The answer when no worker is online to take a connection.
pub const UNAVAILABLE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 20\r\nretry-after: 1\r\nconnection: close\r\n\r\nno worker is online\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(node: u16, slot: u16) -> Owner {
        Owner { node, slot }
    }

    #[test]
    fn request_lines_route_by_their_sid() {
        let sid = format!("{}abcdefghijklmnopqrstuv", route_tag::encode(owner(3, 17)));
        let line = format!("GET /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r");
        assert_eq!(
            parse(line.as_bytes()),
            Peeked::Request(Target::Session(owner(3, 17)))
        );
        let first = format!("POST /socket.io/?sid={sid}&EIO=4&transport=polling HTTP/1.1");
        assert_eq!(
            parse(first.as_bytes()),
            Peeked::Request(Target::Session(owner(3, 17)))
        );
        let handshake = b"GET /socket.io/?EIO=4&transport=polling&t=Pabc HTTP/1.1\r";
        assert_eq!(parse(handshake), Peeked::Request(Target::Handshake));
        assert_eq!(parse(b"GET / HTTP/1.0"), Peeked::Request(Target::Other));
        assert_eq!(
            parse(b"POST /login HTTP/1.1"),
            Peeked::Request(Target::Other)
        );
        // Socket.IO 0.9 clients carry the sid in the path.
        let legacy = format!("GET /socket.io/1/xhr-polling/{sid}?t=1 HTTP/1.1\r");
        assert_eq!(
            parse(legacy.as_bytes()),
            Peeked::Request(Target::Session(owner(3, 17)))
        );
        let legacy = format!("GET /socket.io/1/websocket/{sid} HTTP/1.1");
        assert_eq!(
            parse(legacy.as_bytes()),
            Peeked::Request(Target::Session(owner(3, 17)))
        );
        assert_eq!(
            parse(b"GET /socket.io/1/?t=1 HTTP/1.1"),
            Peeked::Request(Target::Handshake)
        );
        // A parameter that only ends in "sid" is not the sid.
        let other = format!("GET /x?nosid={sid} HTTP/1.1");
        assert_eq!(parse(other.as_bytes()), Peeked::Request(Target::Other));
    }

    #[test]
    fn a_sid_is_read_as_sent_and_a_target_that_is_not_utf8_names_no_session() {
        let tag = route_tag::encode(owner(3, 17));
        let escaped: String = tag.bytes().map(|b| format!("%{b:02X}")).collect();
        let target = format!("/socket.io/?EIO=4&transport=polling&sid={escaped}rest");
        assert_eq!(classify(target.as_bytes()), Target::Handshake);
        let mut target = b"/socket.io/\xff?EIO=4&sid=".to_vec();
        target.extend_from_slice(format!("{tag}rest").as_bytes());
        assert_eq!(classify(&target), Target::Other);
    }

    #[test]
    fn anything_else_is_invalid() {
        for line in [
            &b""[..],
            b"\x16\x03\x01\x02\x00\x01",
            b"get / HTTP/1.1",
            b"GET / HTTP/2",
            b"GET  / HTTP/1.1",
            b"GET /",
            b"GET / HTTP/1.1 extra",
            b"AVERYLONGMETHODNAMEINDEED / HTTP/1.1",
        ] {
            assert_eq!(parse(line), Peeked::Invalid, "{line:?}");
        }
        assert!(plausible_start(b"GE"));
        assert!(plausible_start(b"GET /socket.io/?EIO=4"));
        assert!(!plausible_start(b"\x16\x03"));
        assert!(!plausible_start(b"{\"json\":1}"));
    }
}

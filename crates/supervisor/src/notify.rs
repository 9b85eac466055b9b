//! systemd's readiness protocol for programs other than the chat (`--wait-ready`): each
//! worker gets a unix datagram socket of its own in `NOTIFY_SOCKET` (an abstract name, so
//! nothing is left on disk and any account the worker runs as can reach it) and is online when
//! it sends `READY=1` there, as `sd_notify(0, "READY=1")` does under systemd.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr;

use tokio::net::UnixDatagram;

/// The largest notification read; systemd's own messages are a few lines. A longer datagram is
/// cut, never buffered whole.
const MAX_MESSAGE: usize = 4096;

/// Binds the socket of worker process `generation`; returns it and the `NOTIFY_SOCKET` value
/// (`@name`: abstract, as systemd writes it).
pub fn bind(token: &str, generation: u64) -> std::io::Result<(UnixDatagram, String)> {
    let name = format!("chatctl-notify-{token}-{}-{generation}", std::process::id());
    let address = SocketAddr::from_abstract_name(name.as_bytes())?;
    let socket = std::os::unix::net::UnixDatagram::bind_addr(&address)?;
    socket.set_nonblocking(true)?;
    Ok((UnixDatagram::from_std(socket)?, format!("@{name}")))
}

/// Waits for a notification with a `READY=1` line; false when the socket fails.
pub async fn wait_ready(socket: UnixDatagram) -> bool {
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        let Ok(length) = socket.recv(&mut buffer).await else {
            return false;
        };
        if says_ready(&buffer[..length]) {
            return true;
        }
    }
}

/// Whether a notification holds the line `READY=1` (among others such as `STATUS=...`).
fn says_ready(message: &[u8]) -> bool {
    message
        .split(|b| *b == b'\n')
        .any(|line| line == b"READY=1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_a_line_of_its_own() {
        assert!(says_ready(b"READY=1"));
        assert!(says_ready(b"STATUS=up\nREADY=1\n"));
        assert!(!says_ready(b"READY=0"));
        assert!(!says_ready(b"NOTREADY=1"));
        assert!(!says_ready(b"STATUS=READY=1"));
    }

    #[tokio::test]
    async fn a_ready_datagram_to_the_named_socket_is_seen() {
        let (socket, name) = bind("test", 1).unwrap();
        let address = name.strip_prefix('@').unwrap();
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let to = SocketAddr::from_abstract_name(address.as_bytes()).unwrap();
        sender.send_to_addr(b"STATUS=warming", &to).unwrap();
        sender.send_to_addr(b"READY=1", &to).unwrap();
        assert!(wait_ready(socket).await);
    }
}

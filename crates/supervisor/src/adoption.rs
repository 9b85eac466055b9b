//! Live hand-off between workers: the channel a worker being replaced sends its sessions
//! down, to the worker that adopts them.
//!
//! The departing worker connects to the adopter's private socket (an abstract unix address,
//! carried as data in [`Adopter`] so that any process of the app's master can be named, a new
//! master's workers included) and checks that the master listens there, as for forwarding.
//! The adopter accepts only peers [`crate::handoff::trusted_peer`] trusts. The stream starts
//! with [`GREETING`] (an HTTP request, which the private socket also serves, never starts
//! with a NUL byte), then carries records:
//!
//! ```text
//! departing -> adopter: [u32 big-endian length][u8 kind] body
//!                       kind 0: a session without a connection (long-polling)
//!                       kind 1: a session, its connection by SCM_RIGHTS on the header
//!                       kind 2: no body, a private socket's listener by SCM_RIGHTS
//! adopter -> departing: [u8 1 taken, 0 refused]
//! ```
//!
//! After its sessions, the departing worker passes its private socket's listener (and those it
//! had adopted): the adopter accepts on it from then on, so that another worker passing on a
//! request for a moved session, by the worker id its sid carries, reaches the adopter; and the
//! master, which sees the name still bound, does not give that id to a new worker meanwhile.
//!
//! A record the adopter cannot use is refused alone; a header out of bounds ends the stream
//! (the sessions not sent yet drain).

use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr;

use nix::sys::socket::{self, ControlMessage, MsgFlags};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::UnixStream;

/// Where a departing worker sends its sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adopter {
    /// The abstract name of the adopter's private socket.
    pub address: String,
    /// The master that bound it: a socket of that name bound by anyone else is not used.
    pub master_pid: u32,
    /// Whether long-polling sessions move too: only when every request for them reaches the
    /// adopter (sticky scheduling, where the master routes their ids to it). Otherwise they
    /// drain, and their clients reconnect.
    #[serde(default)]
    pub polling: bool,
}

impl Adopter {
    /// Worker `id` of the master with `token` and pid `master_pid`; `polling`: see
    /// [`Adopter::polling`].
    pub fn worker(token: &str, id: u16, master_pid: u32, polling: bool) -> io::Result<Adopter> {
        let address = crate::handoff::private_address(token, id)?;
        let name = address
            .as_abstract_name()
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .ok_or_else(|| io::Error::other("a private address is abstract"))?;
        Ok(Adopter {
            address: name,
            master_pid,
            polling,
        })
    }
}

/// What came of a worker's live hand-off: sessions adopted by the new worker, sessions that
/// drained (could not be quiesced in time, or were in a state that cannot move: their clients
/// reconnect), and sessions frozen for the move that the adopter did not take (their clients
/// reconnect too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandOffCounts {
    pub handed_off: u64,
    pub drained: u64,
    pub failed: u64,
}

/// What comes down a hand-off stream.
#[derive(Debug)]
pub enum Handed {
    /// A session's record, and its connection if it has one (a websocket).
    Session {
        record: Vec<u8>,
        connection: Option<OwnedFd>,
    },
    /// A private socket's listener, to accept on from now on.
    Listener(std::os::unix::net::UnixListener),
}

const SESSION: u8 = 0;
const SESSION_WITH_CONNECTION: u8 = 1;
const LISTENER: u8 = 2;

/// The first bytes of a hand-off stream.
pub const GREETING: &[u8; 8] = b"\0chatho1";

/// The largest record accepted (engineio's bound on a session record).
pub const MAX_RECORD: usize = 8 << 20;

/// Longest a record may take to arrive once its header has: a departing worker that stalls
/// mid-record ends the stream (its remaining sessions drain) rather than hold the adopter.
const RECORD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The departing side of a hand-off stream.
pub struct Courier {
    stream: UnixStream,
}

impl Courier {
    /// Connects to `adopter`, checking that its master listens there.
    pub async fn connect(adopter: &Adopter) -> io::Result<Courier> {
        let address = SocketAddr::from_abstract_name(adopter.address.as_bytes())?;
        let mut stream =
            crate::handoff::connect_checked(address, adopter.master_pid, "the adopting worker")
                .await?;
        stream.write_all(GREETING).await?;
        // The adopter answers with its own: one that speaks another version of the records
        // (a new binary) is known before any session is frozen for it.
        let mut answer = [0u8; GREETING.len()];
        tokio::time::timeout(RECORD_TIMEOUT, stream.read_exact(&mut answer))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the adopter did not answer"))??;
        if &answer != GREETING {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the adopting worker speaks another hand-off version: its sessions drain",
            ));
        }
        Ok(Courier { stream })
    }

    /// Sends one session's record, and its connection if it has one; whether the adopter took
    /// it.
    pub async fn send(&mut self, record: &[u8], connection: Option<&OwnedFd>) -> io::Result<bool> {
        let kind = match connection {
            Some(_) => SESSION_WITH_CONNECTION,
            None => SESSION,
        };
        self.send_kind(kind, record, connection).await
    }

    /// Passes a private socket's listener; whether the adopter took it.
    pub async fn send_listener(&mut self, listener: &OwnedFd) -> io::Result<bool> {
        self.send_kind(LISTENER, &[], Some(listener)).await
    }

    async fn send_kind(
        &mut self,
        kind: u8,
        record: &[u8],
        descriptor: Option<&OwnedFd>,
    ) -> io::Result<bool> {
        let length = u32::try_from(record.len())
            .ok()
            .filter(|&length| length as usize <= MAX_RECORD)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
        let mut header = [0u8; 5];
        header[..4].copy_from_slice(&length.to_be_bytes());
        header[4] = kind;
        let socket = self.stream.as_raw_fd();
        let fds: Vec<RawFd> = descriptor.map(|fd| fd.as_raw_fd()).into_iter().collect();
        // The header goes in one message with the descriptor: a stream socket keeps it with
        // these bytes.
        loop {
            self.stream.writable().await?;
            let sent = self.stream.try_io(Interest::WRITABLE, || {
                let cmsgs: &[ControlMessage] = if fds.is_empty() {
                    &[]
                } else {
                    &[ControlMessage::ScmRights(&fds)]
                };
                socket::sendmsg::<()>(
                    socket,
                    &[IoSlice::new(&header)],
                    cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            });
            match sent {
                Ok(n) if n == header.len() => break,
                Ok(n) => {
                    self.stream.write_all(&header[n..]).await?;
                    break;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => return Err(error),
            }
        }
        self.stream.write_all(record).await?;
        let mut answer = [0u8; 1];
        self.stream.read_exact(&mut answer).await?;
        Ok(answer[0] == 1)
    }
}

/// Whether a connection to a private socket is a hand-off stream (its first byte is NUL),
/// rather than HTTP. Reads nothing.
pub async fn is_hand_off(stream: &UnixStream) -> io::Result<bool> {
    let socket = stream.as_raw_fd();
    loop {
        stream.readable().await?;
        let mut first = [0u8; 1];
        let peeked = stream.try_io(Interest::READABLE, || {
            socket::recv(socket, &mut first, MsgFlags::MSG_PEEK).map_err(io::Error::from)
        });
        match peeked {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(first[0] == 0),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
    }
}

/// Takes what a hand-off stream brings: each session or listener goes to `take`, whose answer
/// goes back. Ends at the end of the stream or at a header out of bounds.
pub async fn receive<F, Fut>(mut stream: UnixStream, mut take: F) -> io::Result<()>
where
    F: FnMut(Handed) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut greeting = [0u8; GREETING.len()];
    stream.read_exact(&mut greeting).await?;
    if &greeting != GREETING {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a hand-off stream of this version",
        ));
    }
    stream.write_all(GREETING).await?;
    while let Some((length, kind, fds)) = read_header(&mut stream).await? {
        if length > MAX_RECORD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a hand-off record of {length} bytes, above {MAX_RECORD}"),
            ));
        }
        let mut record = vec![0u8; length];
        tokio::time::timeout(RECORD_TIMEOUT, stream.read_exact(&mut record))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "a hand-off record stalled"))??;
        let handed = match (kind, <[OwnedFd; 1]>::try_from(fds)) {
            (SESSION_WITH_CONNECTION, Ok([fd])) => Some(Handed::Session {
                record,
                connection: Some(fd),
            }),
            (SESSION, Err(fds)) if fds.is_empty() => Some(Handed::Session {
                record,
                connection: None,
            }),
            (LISTENER, Ok([fd])) if record.is_empty() => listener(fd).map(Handed::Listener),
            // The descriptors do not match the header: refused, and whatever came is closed.
            _ => None,
        };
        let taken = match handed {
            Some(handed) => take(handed).await,
            None => false,
        };
        stream.write_all(&[u8::from(taken)]).await?;
    }
    Ok(())
}

/// `fd` as a listener, if it is a listening unix socket on an abstract name (a private
/// socket); `None` for anything else.
fn listener(fd: OwnedFd) -> Option<std::os::unix::net::UnixListener> {
    let listening = socket::getsockopt(&fd, socket::sockopt::AcceptConn).ok()?;
    let listener = std::os::unix::net::UnixListener::from(fd);
    let address = listener.local_addr().ok()?;
    (listening && address.as_abstract_name().is_some()).then_some(listener)
}

/// The next record header and the descriptors that came with it; `None` at the end.
async fn read_header(stream: &mut UnixStream) -> io::Result<Option<(usize, u8, Vec<OwnedFd>)>> {
    let mut header = [0u8; 5];
    let socket = stream.as_raw_fd();
    let (read, fds) = loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || {
            crate::handoff::recv_with_descriptors(socket, &mut header)
        }) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            result => break result?,
        }
    };
    if read == 0 {
        return Ok(None);
    }
    stream.read_exact(&mut header[read..]).await?;
    let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    Ok(Some((length, header[4], fds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A courier whose greeting is on its way, and the adopter's end; the courier reads the
    /// adopter's answer to it first.
    async fn pair() -> (Courier, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let mut courier = Courier { stream: a };
        courier.stream.write_all(GREETING).await.unwrap();
        (courier, b)
    }

    async fn greeted(courier: &mut Courier) {
        let mut answer = [0u8; GREETING.len()];
        courier.stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, GREETING);
    }

    #[tokio::test]
    async fn records_and_their_connections_cross_and_each_is_answered() {
        let (mut courier, adopter) = pair().await;
        assert!(is_hand_off(&adopter).await.unwrap());
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let into = received.clone();
        let adopting = tokio::spawn(receive(adopter, move |handed| {
            let into = into.clone();
            async move {
                let Handed::Session { record, connection } = handed else {
                    return false;
                };
                let refuse = record == b"refuse";
                into.lock().unwrap().push((record, connection));
                !refuse
            }
        }));
        greeted(&mut courier).await;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let fd = OwnedFd::from(accepted);
        assert!(courier.send(b"{\"a\":1}", Some(&fd)).await.unwrap());
        assert!(courier.send(b"polling", None).await.unwrap());
        assert!(!courier.send(b"refuse", None).await.unwrap());
        // A listener is refused by this taker, and a TCP socket is not a private socket's.
        let private = std::os::unix::net::UnixListener::bind_addr(
            &SocketAddr::from_abstract_name(format!("chatctl-test-{}", std::process::id()))
                .unwrap(),
        )
        .unwrap();
        assert!(!courier
            .send_listener(&OwnedFd::from(private))
            .await
            .unwrap());
        drop(courier);
        adopting.await.unwrap().unwrap();
        let received = received.lock().unwrap();
        assert_eq!(received.len(), 3);
        assert_eq!(received[0].0, b"{\"a\":1}");
        let moved = std::net::TcpStream::from(received[0].1.as_ref().unwrap().try_clone().unwrap());
        assert_eq!(moved.peer_addr().unwrap(), client.local_addr().unwrap());
        assert!(received[1].1.is_none());
    }

    #[tokio::test]
    async fn a_header_out_of_bounds_ends_the_stream_and_http_is_not_a_hand_off() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut a = a;
        a.write_all(GREETING).await.unwrap();
        a.write_all(&[0xff, 0xff, 0xff, 0xff, 0]).await.unwrap();
        let ended = receive(b, |_| async { true }).await;
        assert_eq!(ended.unwrap_err().kind(), io::ErrorKind::InvalidData);

        // Another version of the records is refused at the greeting, before anything is sent.
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"\0chatho0").await.unwrap();
        let ended = receive(b, |_| async { true }).await;
        assert_eq!(ended.unwrap_err().kind(), io::ErrorKind::InvalidData);

        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        assert!(!is_hand_off(&b).await.unwrap());

        // A descriptor the header does not announce: that record is refused, the next taken.
        let (mut courier, adopter) = pair().await;
        let adopting = tokio::spawn(receive(adopter, |handed| async move {
            match handed {
                Handed::Session { connection, .. } => connection.is_none(),
                Handed::Listener(_) => true,
            }
        }));
        greeted(&mut courier).await;
        let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = OwnedFd::from(x);
        // Sent with a descriptor, but the header's flag says none.
        let header = [0, 0, 0, 1, 0];
        let raw = courier.stream.as_raw_fd();
        courier.stream.writable().await.unwrap();
        socket::sendmsg::<()>(
            raw,
            &[IoSlice::new(&header)],
            &[ControlMessage::ScmRights(&[fd.as_raw_fd()])],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        courier.stream.write_all(b"x").await.unwrap();
        let mut answer = [9u8];
        courier.stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(answer, [0]);
        assert!(courier.send(b"y", None).await.unwrap());
        // A TCP listener is no private socket: refused before the taker sees it.
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!courier.send_listener(&OwnedFd::from(tcp)).await.unwrap());
        let private = std::os::unix::net::UnixListener::bind_addr(
            &SocketAddr::from_abstract_name(format!("chatctl-test2-{}", std::process::id()))
                .unwrap(),
        )
        .unwrap();
        assert!(courier
            .send_listener(&OwnedFd::from(private))
            .await
            .unwrap());
        drop(courier);
        adopting.await.unwrap().unwrap();
    }
}

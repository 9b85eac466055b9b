//! How connections and requests move between the processes of one app on one host.
//!
//! - Hand-off (sticky scheduling): the master accepts a TCP connection, reads nothing from it,
//!   and passes the descriptor to a worker over a unix socket pair (SCM_RIGHTS), one
//!   descriptor per one-byte message. When the master stops routing to a worker it shuts its end down:
//!   the worker takes every connection already queued, then sees the end of the stream.
//! - Private sockets: each worker process listens on an abstract unix socket whose name is
//!   derived from the master's secret token and the worker's id (the id its session ids
//!   carry). The master probes health there, and a worker forwards a request for a session of
//!   another worker there. Abstract names need no directory the workers' user could not enter,
//!   but any local user may bind any free name, and every bound name is listed in
//!   `/proc/net/unix`. So:
//!   - a name is a hash of the token and the id ([`private_address`]): the names in use give
//!     away neither the token nor the names of the next workers, which another user therefore
//!     cannot take in advance; a name that is taken all the same is skipped ([`bind_private`]
//!     fails with `AddrInUse` and the master tries the next id);
//!   - the master binds (and so `listen`s on) every private socket itself: whoever connects
//!     checks that the listening end is the master's ([`connect_private`], by the peer's
//!     credentials), so a name taken over after its worker died gets no forwarded request
//!     and no health probe;
//!   - who may connect is checked on accept with the peer's credentials ([`trusted_peer`]).
//!
//!   Processes of the workers' own account are trusted (they could read the token from a
//!   worker's environment or trace it): docs/PRODUCTION.md advises a dedicated account.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags, Shutdown};
use nix::unistd::geteuid;
use tokio::io::Interest;
use tokio::net::UnixStream;

/// A connected unix stream pair, close-on-exec: (master's end, worker's end).
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (master, worker) = std::os::unix::net::UnixStream::pair()?;
    Ok((master.into(), worker.into()))
}

/// One end of a hand-off pair, registered with the runtime.
fn async_end(fd: OwnedFd) -> io::Result<UnixStream> {
    let stream = std::os::unix::net::UnixStream::from(fd);
    stream.set_nonblocking(true)?;
    UnixStream::from_std(stream)
}

/// The master's end of one worker's hand-off pair.
#[derive(Debug)]
pub struct Sender {
    socket: UnixStream,
}

impl Sender {
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        Ok(Sender {
            socket: async_end(fd)?,
        })
    }

    /// Passes `connection` to the worker if its socket has room now: `WouldBlock` when it is
    /// full (the worker does not take its connections), another error when the worker is gone
    /// or no longer takes connections ([`Sender::close`]). The caller still owns the
    /// connection on error.
    pub fn try_send(&self, connection: RawFd) -> io::Result<()> {
        let socket = self.socket.as_raw_fd();
        self.socket
            .try_io(Interest::WRITABLE, || send_fd(socket, connection))
    }

    /// Like [`Sender::try_send`], but waits for room.
    pub async fn send(&self, connection: RawFd) -> io::Result<()> {
        let socket = self.socket.as_raw_fd();
        loop {
            self.socket.writable().await?;
            match self
                .socket
                .try_io(Interest::WRITABLE, || send_fd(socket, connection))
            {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }

    /// No more connections: the worker takes those already sent, then sees the end.
    pub fn close(&self) {
        // An error means the socket is no longer connected: there is no worker left to tell.
        let _ = socket::shutdown(self.socket.as_raw_fd(), Shutdown::Write);
    }
}

/// The most descriptors one message can carry (`SCM_MAX_FD` in the kernel). The receiving
/// buffer has room for them all, so that a message with more than one (not our master's)
/// is never truncated: the kernel installs every descriptor it carries, and we close them.
const MOST_DESCRIPTORS_PER_MESSAGE: usize = 253;

fn send_fd(socket: RawFd, fd: RawFd) -> io::Result<()> {
    let fds = [fd];
    socket::sendmsg::<()>(
        socket,
        &[IoSlice::new(&[0])],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// The worker's end: the connections the master hands over.
#[derive(Debug)]
pub struct Receiver {
    socket: UnixStream,
}

impl Receiver {
    /// Takes the worker's end of a hand-off pair.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        // Not inherited by programs we might run (an inherited end comes without the flag).
        // Fails only on a closed descriptor, which an OwnedFd is not.
        let _ = fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
        Ok(Receiver {
            socket: async_end(fd)?,
        })
    }

    /// The next connection, or `None` once the master has closed its end and every
    /// connection it sent was taken.
    pub async fn recv(&self) -> io::Result<Option<std::net::TcpStream>> {
        loop {
            self.socket.readable().await?;
            match self.try_recv() {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }

    /// A connection already waiting, without waiting for one: `WouldBlock` when there is none
    /// yet, `None` at the end.
    pub fn try_recv(&self) -> io::Result<Option<std::net::TcpStream>> {
        let socket = self.socket.as_raw_fd();
        loop {
            match self.socket.try_io(Interest::READABLE, || recv_fd(socket)) {
                Ok(Some(fd)) => return Ok(Some(std::net::TcpStream::from(fd))),
                Ok(None) => return Ok(None),
                // A byte without a descriptor (not from our master): skip it.
                Err(error) if error.kind() == io::ErrorKind::InvalidData => continue,
                Err(error) => return Err(error),
            }
        }
    }
}

fn recv_fd(socket: RawFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let (read, received) = recv_with_descriptors(socket, &mut byte)?;
    if read == 0 {
        return Ok(None);
    }
    // Our master sends one descriptor per message: any other count is closed (on drop),
    // not taken for a client.
    match <[OwnedFd; 1]>::try_from(received) {
        Ok([fd]) => Ok(Some(fd)),
        Err(received) if received.is_empty() => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "hand-off message without a descriptor",
        )),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "hand-off message with more than one descriptor",
        )),
    }
}

/// Reads into `buf` from a unix stream socket, with the descriptors that came with those
/// bytes (close-on-exec). Room is kept for as many as a message can carry, so that none is
/// lost to truncation: the caller closes (drops) those it does not expect.
pub(crate) fn recv_with_descriptors(
    socket: RawFd,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut control = nix::cmsg_space!([RawFd; MOST_DESCRIPTORS_PER_MESSAGE]);
    let mut iov = [IoSliceMut::new(buf)];
    let message = socket::recvmsg::<()>(
        socket,
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    // Control data larger than the room for SCM_MAX_FD descriptors is not our master's;
    // nix reads nothing from a truncated buffer.
    let cmsgs = message.cmsgs().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "hand-off message with truncated control data",
        )
    })?;
    let mut received = Vec::new();
    for cmsg in cmsgs {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            // SAFETY: the kernel installed these descriptors in this process for this
            // message (close-on-exec, MSG_CMSG_CLOEXEC); nothing else knows them.
            received.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok((message.bytes, received))
}

/// The abstract socket address of worker `id` of the master with `token`:
/// `chatctl-` and 32 hex digits of SHA-256(token, id), so that the name reveals neither the
/// token nor the names of other ids.
pub fn private_address(token: &str, id: u16) -> io::Result<SocketAddr> {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(token.as_bytes())
        .chain_update(b"\0")
        .chain_update(id.to_be_bytes())
        .finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    SocketAddr::from_abstract_name(format!("chatctl-{hex}").as_bytes())
}

/// Binds a worker's private socket (done by the master, which passes it to the worker). Fails
/// with `AddrInUse` when another process holds the name: pick another id.
pub fn bind_private(token: &str, id: u16) -> io::Result<std::os::unix::net::UnixListener> {
    std::os::unix::net::UnixListener::bind_addr(&private_address(token, id)?)
}

/// Connects to the private socket of worker `id`, and checks that its listening end was made
/// by process `master_pid` (the master binds every private socket of its workers): a process
/// that took the name of a dead worker gets nothing (`PermissionDenied`).
pub async fn connect_private(
    token: &str,
    id: u16,
    master_pid: u32,
) -> io::Result<tokio::net::UnixStream> {
    connect_checked(
        private_address(token, id)?,
        master_pid,
        &format!("the private socket of worker {id}"),
    )
    .await
}

/// Connects to the private socket at `address` (`what` names it in errors), and checks that
/// its listening end was made by process `master_pid`, as [`connect_private`] does.
pub async fn connect_checked(
    address: SocketAddr,
    master_pid: u32,
    what: &str,
) -> io::Result<tokio::net::UnixStream> {
    // A unix connect completes at once or fails; it blocks only while the listener's
    // backlog is full, which must not stall a runtime thread.
    let stream =
        tokio::task::spawn_blocking(move || std::os::unix::net::UnixStream::connect_addr(&address))
            .await
            .map_err(io::Error::other)??;
    stream.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(stream)?;
    // On a connected unix socket, the peer's credentials are those of the process that called
    // listen() on the other end, whoever accepts.
    let cred = stream.peer_cred()?;
    if cred.pid() != i32::try_from(master_pid).ok() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{what} is held by pid {} (uid {}), not by this \
                 app's master (pid {master_pid}): another local account took its name; run the \
                 workers under a dedicated account (see docs/PRODUCTION.md)",
                cred.pid().unwrap_or(-1),
                cred.uid()
            ),
        ));
    }
    Ok(stream)
}

/// Whether a process connected to a private socket may use it: the same user as this
/// process (another worker of the app), or root (the master, when it runs as root).
pub fn trusted_peer(stream: &tokio::net::UnixStream) -> bool {
    let own = geteuid().as_raw();
    stream
        .peer_cred()
        .is_ok_and(|cred| cred.uid() == own || cred.uid() == 0)
}

/// A random token for the private socket names of one master's workers; a secret (known to the
/// master and its workers only), since the names are derived from it.
pub fn new_token() -> io::Result<String> {
    use std::io::Read;
    let mut random = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
    Ok(random.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends one byte carrying every descriptor of `fds` (the master sends one at a time).
    fn send_fds(socket: RawFd, fds: &[RawFd]) {
        let sent = socket::sendmsg::<()>(
            socket,
            &[IoSlice::new(&[0])],
            &[ControlMessage::ScmRights(fds)],
            MsgFlags::empty(),
            None,
        );
        assert_eq!(sent, Ok(1));
    }

    #[tokio::test]
    async fn a_message_with_more_descriptors_than_room_is_skipped() {
        let (master, worker) = pair().unwrap();
        let receiver = Receiver::new(worker).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        let mut accepted = Vec::new();
        for _ in 0..4 {
            clients.push(std::net::TcpStream::connect(address).unwrap());
            accepted.push(listener.accept().unwrap().0);
        }
        // Three descriptors in one message: not our master's, so all three are closed.
        let three: Vec<RawFd> = accepted[..3].iter().map(|s| s.as_raw_fd()).collect();
        send_fds(master.as_raw_fd(), &three);
        send_fds(master.as_raw_fd(), &[accepted[3].as_raw_fd()]);
        let received = receiver.recv().await.unwrap().expect("a connection");
        assert_eq!(
            received.peer_addr().unwrap(),
            clients[3].local_addr().unwrap()
        );
    }

    #[tokio::test]
    async fn connections_cross_the_pair_and_the_close_ends_the_stream_after_them() {
        let (master, worker) = pair().unwrap();
        let sender = Sender::new(master).unwrap();
        let receiver = Receiver::new(worker).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(std::net::TcpStream::connect(address).unwrap());
            let (accepted, _) = listener.accept().unwrap();
            sender.send(accepted.as_raw_fd()).await.unwrap();
        }
        sender.close();
        for client in &clients {
            let received = receiver.recv().await.unwrap().expect("a connection");
            assert_eq!(received.peer_addr().unwrap(), client.local_addr().unwrap());
        }
        assert!(receiver.recv().await.unwrap().is_none());
        assert!(sender.send(clients[0].as_raw_fd()).await.is_err());
    }

    #[tokio::test]
    async fn a_private_socket_is_used_only_when_the_master_listens_on_it() {
        let token = new_token().unwrap();
        let listener = bind_private(&token, 7).unwrap();
        assert_eq!(
            bind_private(&token, 7).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        connect_private(&token, 7, std::process::id())
            .await
            .unwrap();
        let refused = connect_private(&token, 7, std::process::id() + 1)
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::PermissionDenied);
        drop(listener);
    }

    #[test]
    fn private_names_give_away_neither_the_token_nor_other_names() {
        let token = new_token().unwrap();
        let name = |id| {
            let address = private_address(&token, id).unwrap();
            String::from_utf8_lossy(address.as_abstract_name().unwrap()).into_owned()
        };
        assert!(!name(1).contains(&token));
        assert_ne!(name(1), name(2));
        assert_eq!(name(1).len(), "chatctl-".len() + 32);
    }
}

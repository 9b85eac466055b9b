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

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr;

use tokio::io::Interest;
use tokio::net::UnixStream;

/// The environment variable naming the worker's end of the hand-off pair.
pub const HANDOFF_FD_ENV: &str = "CHATCTL_HANDOFF_FD";
/// The environment variable holding the master's token for private socket names.
pub const PEERS_ENV: &str = "CHATCTL_PEERS";

/// A connected unix stream pair, close-on-exec: (master's end, worker's end).
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two new descriptors into `fds`.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
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
        // SAFETY: shutdown on a descriptor we own.
        unsafe {
            libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_WR);
        }
    }
}

/// Runs `f` with a message of one byte and room for one descriptor, for sendmsg/recvmsg.
fn with_fd_message<R>(f: impl FnOnce(&mut libc::msghdr) -> R) -> R {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; the buffers it points to outlive `f`.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = space as _;
    f(&mut message)
}

fn send_fd(socket: RawFd, fd: RawFd) -> io::Result<()> {
    with_fd_message(|message| {
        // SAFETY: the control buffer has room for one header carrying one descriptor, and
        // every pointer in `message` is valid during the call.
        unsafe {
            let header = libc::CMSG_FIRSTHDR(message);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<RawFd>(), fd);
            if libc::sendmsg(socket, message, libc::MSG_NOSIGNAL) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    })
}

/// The worker's end: the connections the master hands over.
#[derive(Debug)]
pub struct Receiver {
    socket: UnixStream,
}

impl Receiver {
    /// Takes the worker's end passed as descriptor `fd`.
    ///
    /// # Safety
    /// `fd` must be an open hand-off socket that nothing else in the process owns.
    pub unsafe fn from_raw_fd(fd: RawFd) -> io::Result<Self> {
        // SAFETY: ownership is the caller's promise.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: fcntl on a descriptor we own: not inherited by programs we might run.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
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
    with_fd_message(|message| {
        // SAFETY: the kernel writes at most msg_controllen bytes of control data, and a
        // descriptor read from it is new in this process (MSG_CMSG_CLOEXEC) and ours.
        unsafe {
            let read = libc::recvmsg(socket, message, libc::MSG_CMSG_CLOEXEC);
            if read < 0 {
                return Err(io::Error::last_os_error());
            }
            if read == 0 {
                return Ok(None);
            }
            let header = libc::CMSG_FIRSTHDR(message);
            if header.is_null()
                || (*header).cmsg_level != libc::SOL_SOCKET
                || (*header).cmsg_type != libc::SCM_RIGHTS
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "hand-off message without a descriptor",
                ));
            }
            let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(
                libc::CMSG_DATA(header).cast::<RawFd>(),
            ));
            // More descriptors than room (not our master's one per message): the kernel
            // closed the rest; the one received is closed too, not taken for a client.
            if message.msg_flags & libc::MSG_CTRUNC != 0 {
                drop(fd);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "hand-off message with more than one descriptor",
                ));
            }
            Ok(Some(fd))
        }
    })
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
    let address = private_address(token, id)?;
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
                "the private socket of worker {id} is held by pid {} (uid {}), not by this \
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
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
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
        let size = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE only computes a size.
        let mut control = vec![0u8; unsafe { libc::CMSG_SPACE(size) } as usize];
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // SAFETY: the buffers outlive the call; the header fits the control buffer.
        unsafe {
            let mut message: libc::msghdr = std::mem::zeroed();
            message.msg_iov = &mut iov;
            message.msg_iovlen = 1;
            message.msg_control = control.as_mut_ptr().cast();
            message.msg_controllen = control.len() as _;
            let header = libc::CMSG_FIRSTHDR(&message);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(size) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(header).cast(), fds.len());
            assert_eq!(libc::sendmsg(socket, &message, 0), 1);
        }
    }

    #[tokio::test]
    async fn a_message_with_more_descriptors_than_room_is_skipped() {
        let (master, worker) = pair().unwrap();
        // SAFETY: `worker` is handed over whole.
        let receiver =
            unsafe { Receiver::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(worker)) }.unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        let mut accepted = Vec::new();
        for _ in 0..4 {
            clients.push(std::net::TcpStream::connect(address).unwrap());
            accepted.push(listener.accept().unwrap().0);
        }
        // Three descriptors overflow the room for one (which alignment makes room for two).
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
        // SAFETY: `worker` is handed over whole.
        let receiver =
            unsafe { Receiver::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(worker)) }.unwrap();
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

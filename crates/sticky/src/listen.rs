//! Listening sockets, from one place: the master's public socket, `chatctl serve`'s own, and
//! the proxy's (inherited from a supervisor, or bound here), all with the same backlog; and
//! what every accept loop does when accepting fails.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::socket::Backlog;

use crate::error::Error;

/// Connections the kernel queues on a listening socket before it drops new ones. Rust's
/// default, 128, overflows when thousands of clients reconnect at once (a restart, a storm):
/// the dropped ones wait a second for their SYN to be retried. The kernel caps this at
/// `net.core.somaxconn` (4096 by default).
pub const BACKLOG: i32 = 4096;

/// Binds `address` with a backlog of [`BACKLOG`].
pub fn bind(address: impl ToSocketAddrs) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(address)?;
    // Some C libraries declare a SOMAXCONN below what the kernel takes (musl says 128), and
    // nix refuses a backlog above it; -1 then asks for the kernel's own cap.
    let backlog = Backlog::new(BACKLOG).unwrap_or(Backlog::MAXALLOWABLE);
    // Listening again on a bound, listening socket only changes its backlog.
    nix::sys::socket::listen(&listener, backlog)?;
    Ok(listener)
}

/// systemd's `SD_LISTEN_FDS_START`: the first inherited socket.
const LISTEN_FDS_START: i32 = 3;

/// Set once fd 3 has been given to a listener: the descriptor has one owner, even if a process
/// binds several proxies.
static INHERITED_TAKEN: AtomicBool = AtomicBool::new(false);

/// The proxy's socket: the inherited one when `LISTEN_FDS=1` and `LISTEN_PID` names this
/// process (it then replaces `address`, which the supervisor bound for us), otherwise a new
/// socket on `address` (see [`bind`]).
pub(crate) fn inherited_or_bound(address: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    let bind_error = |source| Error::Bind { address, source };
    let std_listener = match inherited()? {
        Some(listener) => listener,
        None => bind(address).map_err(bind_error)?,
    };
    std_listener.set_nonblocking(true).map_err(bind_error)?;
    tokio::net::TcpListener::from_std(std_listener).map_err(bind_error)
}

/// The listening socket a supervisor passed this process (`LISTEN_FDS=1` with `LISTEN_PID`
/// naming it: chatctl's master and systemd alike), at most once per process.
pub fn inherited() -> Result<Option<TcpListener>, Error> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        == Some(std::process::id());
    let Some(count) = std::env::var("LISTEN_FDS").ok().filter(|_| for_us) else {
        return Ok(None);
    };
    if count != "1" {
        return Err(Error::InheritedSockets(count));
    }
    if INHERITED_TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(None);
    }
    // SAFETY: by the LISTEN_FDS protocol fd 3 is a listening socket handed to this process,
    // and the flag above makes this the only place that takes ownership of it.
    Ok(Some(unsafe { TcpListener::from_raw_fd(LISTEN_FDS_START) }))
}

/// How long an accept loop waits after a failed accept before it tries again.
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// What an accept loop does after a failed accept. Running out of descriptors or memory
/// (EMFILE, ENFILE, ENOBUFS, ENOMEM) passes when connections close, and an aborted connection
/// is only that one's problem: the loop waits a moment and goes on, never ends and never spins.
/// Clients can cause these failures, so only one in 100 is logged.
pub async fn after_accept_error(error: &std::io::Error) {
    static FAILURES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let failures = FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    if failures % 100 == 1 {
        tracing::warn!(%error, failures, "accept failed; retrying (raise `ulimit -n` if this says too many open files)");
    }
    tokio::time::sleep(ACCEPT_RETRY).await;
}

/// Accepts connections on `listener` for ever, at most `max` served at once (more wait in
/// the kernel's backlog), each by a task running `serve`; a failed accept is handled as
/// [`after_accept_error`] says.
pub async fn accept_bounded<F, Fut>(listener: &tokio::net::TcpListener, max: usize, serve: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                after_accept_error(&error).await;
                continue;
            }
        };
        let served = serve(stream);
        tokio::spawn(async move {
            served.await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_socket_accepts_connections() {
        let listener = bind("127.0.0.1:0").expect("loopback binds");
        let address = listener.local_addr().expect("a bound address");
        let client = std::net::TcpStream::connect(address);
        assert!(client.is_ok(), "{client:?}");
        assert!(listener.accept().is_ok());
    }
}

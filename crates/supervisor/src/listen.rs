//! Binding the listening socket of an app or of `chatctl serve`.

use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::AsRawFd;

/// Connections the kernel queues on a listening socket before it drops new ones. Rust's
/// default, 128, overflows when thousands of clients reconnect at once (a restart, a storm):
/// the dropped ones wait a second for their SYN to be retried. The kernel caps this at
/// `net.core.somaxconn` (4096 by default).
pub const BACKLOG: i32 = 4096;

/// Binds `address` with a backlog of [`BACKLOG`].
pub fn bind(address: impl ToSocketAddrs) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(address)?;
    // SAFETY: listen on a socket we own; calling it again only changes the backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(listener)
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

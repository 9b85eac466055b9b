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

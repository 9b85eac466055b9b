//! Where the proxy's listening socket comes from: inherited from a supervisor (`chatctl start
//! -- chatctl proxy ...`, or systemd socket activation), or bound to the configured address.

use std::net::SocketAddr;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;

use crate::error::Error;

/// systemd's `SD_LISTEN_FDS_START`: the first inherited socket.
const LISTEN_FDS_START: i32 = 3;

/// Set once fd 3 has been given to a listener: the descriptor has one owner, even if a process
/// binds several proxies.
static INHERITED_TAKEN: AtomicBool = AtomicBool::new(false);

/// The inherited socket when `LISTEN_FDS=1` and `LISTEN_PID` names this process (it then
/// replaces `address`, which the supervisor bound for us), otherwise a new socket on `address`.
pub fn listen(address: SocketAddr) -> Result<TcpListener, Error> {
    let bind_error = |source| Error::Bind { address, source };
    let std_listener = match inherited()? {
        Some(listener) => listener,
        None => std::net::TcpListener::bind(address).map_err(bind_error)?,
    };
    std_listener.set_nonblocking(true).map_err(bind_error)?;
    TcpListener::from_std(std_listener).map_err(bind_error)
}

fn inherited() -> Result<Option<std::net::TcpListener>, Error> {
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
    Ok(Some(unsafe {
        std::net::TcpListener::from_raw_fd(LISTEN_FDS_START)
    }))
}

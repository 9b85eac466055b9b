//! The contract a master starts its workers with: which descriptor carries what, and which
//! variable says so. `spawn.rs` is the master's side; [`Inherited::take`] is the worker's,
//! taken once, before the worker's runtime starts threads (taking edits the environment, so
//! nothing is inherited twice or passed on to a program the worker runs).
//!
//! | what | descriptor | variable |
//! | --- | --- | --- |
//! | the listening socket (shared scheduling; systemd's too) | 3 | `LISTEN_FDS=1`, `LISTEN_PID` |
//! | the IPC channel (see `ipc.rs`), and the longest line it carries | 4 | `CHATCTL_IPC_FD`, `CHATCTL_IPC_MAX_LINE` |
//! | this executable, run as `/proc/self/fd/5 serve` | 5 | – |
//! | the private socket (health probes, requests other workers forward) | 6 | `CHATCTL_PRIVATE_FD` |
//! | the hand-off socket (sticky scheduling) | 7 | `CHATCTL_HANDOFF_FD` |
//! | the secrets pipe (cookie key, Redis URL), read once | 8 | `CHATCTL_SECRETS_FD` |
//! | the worker's identity: its id, its host's node id, its master's private-socket token | – | `CHATCTL_WORKER_ID`, `CHATCTL_NODE_ID`, `CHATCTL_PEERS` |

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// systemd's `SD_LISTEN_FDS_START`, taken by `sticky::listen::inherited`.
pub const LISTEN_FD: RawFd = 3;
pub const IPC_FD: RawFd = 4;
pub const EXE_FD: RawFd = 5;
pub const PRIVATE_FD: RawFd = 6;
pub const HANDOFF_FD: RawFd = 7;
pub const SECRETS_FD: RawFd = 8;

/// What `/bin/sh -c` runs to start a program that inherits a listening socket: it names its
/// own pid in `LISTEN_PID`, then execs the program (its arguments) in place, so that is the
/// pid the program runs as, which the `LISTEN_FDS` protocol (`sd_listen_fds()`) checks.
pub const EXEC_WITH_LISTEN_PID: &str = "LISTEN_PID=$$; export LISTEN_PID; exec \"$@\"";

pub const IPC_FD_ENV: &str = "CHATCTL_IPC_FD";
/// The longest IPC line the master accepts (`--ipc-max-line`): the worker reads lines of up to
/// the same bound, since the master passes them on.
pub const IPC_MAX_LINE_ENV: &str = "CHATCTL_IPC_MAX_LINE";
pub const PRIVATE_SOCKET_ENV: &str = "CHATCTL_PRIVATE_FD";
pub const HANDOFF_FD_ENV: &str = "CHATCTL_HANDOFF_FD";
pub const SECRETS_FD_ENV: &str = "CHATCTL_SECRETS_FD";
/// The worker's id, written into its session ids so that requests find it.
pub const WORKER_ID_ENV: &str = "CHATCTL_WORKER_ID";
/// This host's id among the hosts behind one `chatctl proxy`.
pub const NODE_ID_ENV: &str = "CHATCTL_NODE_ID";
/// Names the private sockets of this master's workers (see `handoff::bind_private`).
pub const PEERS_ENV: &str = "CHATCTL_PEERS";

/// Who a worker is among its master's workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub worker_id: u16,
    pub node_id: u16,
    /// The token naming the private sockets of the master's workers.
    pub peers: Option<String>,
}

/// What this process was started with by a chatctl master (or, for the listening socket, by
/// systemd); each is `None` when it was not.
#[derive(Debug, Default)]
pub struct Inherited {
    /// The socket to accept on: `LISTEN_FDS=1` with `LISTEN_PID` naming this process.
    pub listener: Option<std::net::TcpListener>,
    /// The worker's end of the IPC channel, and the longest line it may carry.
    pub ipc: Option<(OwnedFd, usize)>,
    /// The socket the master hands connections over on (sticky scheduling).
    pub handoff: Option<OwnedFd>,
    /// The worker's private socket, already listening.
    pub private: Option<std::os::unix::net::UnixListener>,
    /// The secrets the master passed through the pipe (names as in `secrets.rs`).
    pub secrets: BTreeMap<String, String>,
    pub identity: Option<Identity>,
}

/// An inheritance that cannot be used as it is.
#[derive(Debug, thiserror::Error)]
pub enum InheritedError {
    #[error(transparent)]
    Listener(#[from] sticky::Error),
}

impl Inherited {
    /// Takes everything passed to this process, and removes the variables that named it.
    /// Call it once, before starting threads.
    pub fn take() -> Result<Inherited, InheritedError> {
        let listener = take_listener()?;
        // SAFETY (each): the master passed these descriptors for this process alone, under
        // these variables, and they are taken only here, once: the variable goes with it.
        let ipc = take_fd(IPC_FD_ENV).map(|fd| {
            let max_line = var(IPC_MAX_LINE_ENV).unwrap_or(crate::config::DEFAULT_MAX_LINE);
            (unsafe { OwnedFd::from_raw_fd(fd) }, max_line)
        });
        let handoff = take_fd(HANDOFF_FD_ENV).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
        let private = take_fd(PRIVATE_SOCKET_ENV)
            .map(|fd| unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) });
        let secrets = take_fd(SECRETS_FD_ENV)
            .map(|fd| read_secrets(unsafe { std::fs::File::from_raw_fd(fd) }))
            .unwrap_or_default();
        let identity = var(WORKER_ID_ENV).map(|worker_id| Identity {
            worker_id,
            node_id: var(NODE_ID_ENV).unwrap_or(0),
            peers: std::env::var(PEERS_ENV).ok(),
        });
        Ok(Inherited {
            listener,
            ipc,
            handoff,
            private,
            secrets,
            identity,
        })
    }
}

fn var<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.parse().ok()
}

/// The descriptor variable `name` names, if any; the variable goes.
fn take_fd(name: &str) -> Option<RawFd> {
    let fd = var(name);
    std::env::remove_var(name);
    fd
}

/// The listening socket of the `LISTEN_FDS` protocol (systemd's, which the master follows),
/// if it names this process; the variables go with it.
fn take_listener() -> Result<Option<std::net::TcpListener>, InheritedError> {
    let listener = sticky::listen::inherited()?;
    if listener.is_some() {
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_PID");
    }
    Ok(listener)
}

fn read_secrets(mut pipe: std::fs::File) -> BTreeMap<String, String> {
    let mut blob = Vec::new();
    if let Err(error) = pipe.read_to_end(&mut blob) {
        tracing::warn!(%error, "cannot read the secrets the master passed");
    }
    serde_json::from_slice(&blob).unwrap_or_default()
}

//! One client connection (an Engine.IO session) and the namespace sockets multiplexed on it.

use std::sync::{Arc, Mutex};

use crate::reassembly::Reassembly;
use crate::socket::Socket;

/// What the Socket.IO layer keeps per Engine.IO session.
#[derive(Default)]
pub struct ConnState {
    /// The client's socket in each namespace it joined. A list, not a map by path: a client
    /// joins a namespace or two, and a map would cost every connection its table and a copy
    /// of each path; a socket knows its namespace's.
    sockets: Mutex<Vec<Arc<Socket>>>,
    /// A binary packet waiting for its attachments, which arrive as separate messages.
    pub(crate) partial: Mutex<Reassembly>,
    /// Application state of the whole connection: shared by its sockets in every namespace and
    /// kept across their connects and disconnects (a rate limit a reconnect must not reset).
    pub(crate) extensions: std::sync::RwLock<http::Extensions>,
}

/// A shared handle on a client connection.
#[derive(Clone)]
pub(crate) struct Conn(pub(crate) Arc<engineio::Socket<ConnState>>);

impl std::ops::Deref for Conn {
    type Target = engineio::Socket<ConnState>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Conn {
    pub(crate) fn socket(&self, nsp: &str) -> Option<Arc<Socket>> {
        let sockets = self.data.sockets.lock().ok()?;
        sockets
            .iter()
            .find(|socket| socket.ns().path == nsp)
            .cloned()
    }

    /// The client's sockets, one per namespace it joined.
    pub(crate) fn sockets(&self) -> Vec<Arc<Socket>> {
        self.data
            .sockets
            .lock()
            .map(|sockets| sockets.clone())
            .unwrap_or_default()
    }

    /// Attaches the client's socket in its namespace, in place of one it had there.
    pub(crate) fn insert(&self, socket: Arc<Socket>) {
        if let Ok(mut sockets) = self.data.sockets.lock() {
            sockets.retain(|known| known.ns().path != socket.ns().path);
            sockets.push(socket);
        }
    }

    /// Detaches a namespace socket from the connection.
    pub(crate) fn forget(&self, nsp: &str) -> Option<Arc<Socket>> {
        let mut sockets = self.data.sockets.lock().ok()?;
        let at = sockets.iter().position(|socket| socket.ns().path == nsp)?;
        Some(sockets.swap_remove(at))
    }

    /// Detaches every namespace socket (the connection ended).
    pub(crate) fn forget_all(&self) -> Vec<Arc<Socket>> {
        self.data
            .sockets
            .lock()
            .map(|mut sockets| std::mem::take(&mut *sockets))
            .unwrap_or_default()
    }

    pub(crate) fn has_namespaces(&self) -> bool {
        self.data
            .sockets
            .lock()
            .map(|s| !s.is_empty())
            .unwrap_or(false)
    }
}

//! One client connection (an Engine.IO session) and the namespace sockets multiplexed on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::reassembly::Reassembly;
use crate::socket::Socket;

/// What the Socket.IO layer keeps per Engine.IO session.
#[derive(Default)]
pub struct ConnState {
    /// The namespaces this client joined, by path.
    sockets: Mutex<HashMap<String, Arc<Socket>>>,
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
        self.data.sockets.lock().ok()?.get(nsp).cloned()
    }

    pub(crate) fn insert(&self, nsp: &str, socket: Arc<Socket>) {
        if let Ok(mut sockets) = self.data.sockets.lock() {
            sockets.insert(nsp.to_owned(), socket);
        }
    }

    /// Detaches a namespace socket from the connection.
    pub(crate) fn forget(&self, nsp: &str) -> Option<Arc<Socket>> {
        self.data.sockets.lock().ok()?.remove(nsp)
    }

    /// Detaches every namespace socket (the connection ended).
    pub(crate) fn forget_all(&self) -> Vec<Arc<Socket>> {
        self.data
            .sockets
            .lock()
            .map(|mut sockets| sockets.drain().map(|(_, socket)| socket).collect())
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

//! A namespace: its connect handler and middlewares, its connected sockets, its adapter.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use engineio::Frame;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::adapter::{Adapter, BroadcastOptions};
use crate::broadcast::BroadcastOperator;
use crate::config::SocketIoConfig;
use crate::error::{ConnectError, EmitError};
use crate::event::Event;
use crate::recovery::Recovery;
use crate::socket::{EventHandler, Socket};
use crate::{Room, Sid};

type ConnectFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
type MiddlewareFuture = Pin<Box<dyn Future<Output = Result<(), ConnectError>> + Send + 'static>>;
pub(crate) type ConnectHandler = Arc<dyn Fn(Arc<Socket>) -> ConnectFuture + Send + Sync>;
pub(crate) type Middleware = Arc<dyn Fn(Arc<Socket>) -> MiddlewareFuture + Send + Sync>;

/// What happens when a client joins a namespace. Shared by the namespaces a dynamic pattern
/// creates.
#[derive(Clone, Default)]
pub(crate) struct NamespaceHandlers {
    pub(crate) on_connect: Option<ConnectHandler>,
    pub(crate) middlewares: Vec<Middleware>,
}

/// A Socket.IO namespace (`/`, `/chat_com`, ...).
pub struct Namespace {
    pub(crate) path: String,
    config: SocketIoConfig,
    adapter: Arc<dyn Adapter>,
    handlers: RwLock<NamespaceHandlers>,
    /// Event handlers of every socket (see [`Namespace::on`]).
    events: RwLock<HashMap<String, EventHandler>>,
    sockets: RwLock<HashMap<Sid, Arc<Socket>>>,
    /// What is kept for clients that come back (with [`SocketIoConfig::recovery`]).
    recovery: Option<Recovery>,
    /// Writes what a broadcast to many of this namespace's sockets queued for them.
    flush: engineio::FlushPass<crate::connection::ConnState>,
}

impl Namespace {
    pub(crate) fn new(
        path: &str,
        config: SocketIoConfig,
        handlers: NamespaceHandlers,
    ) -> Arc<Self> {
        let adapter = (config.adapter)(path);
        let recovery = config
            .recovery
            .clone()
            .map(|recovery| Recovery::new(path, recovery));
        Arc::new(Namespace {
            path: path.to_owned(),
            recovery,
            config,
            adapter,
            handlers: RwLock::new(handlers),
            events: RwLock::new(HashMap::new()),
            sockets: RwLock::new(HashMap::new()),
            flush: engineio::FlushPass::new(),
        })
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn adapter(&self) -> &Arc<dyn Adapter> {
        &self.adapter
    }

    pub(crate) fn config(&self) -> &SocketIoConfig {
        &self.config
    }

    pub(crate) fn recovery(&self) -> Option<&Recovery> {
        self.recovery.as_ref()
    }

    /// Delivers an event its recovery store numbered (see [`crate::SessionStore`]) to the
    /// local sockets it is for. A store calls it for every event, in number order, with the
    /// sender's mark it was given (see [`crate::SessionStore::own_first`]).
    pub fn deliver_sequenced(
        &self,
        epoch: &str,
        seq: u64,
        own: Option<crate::Own>,
        frames: &[Frame],
        opts: &BroadcastOptions,
    ) {
        match &self.recovery {
            Some(recovery) => recovery.deliver_sequenced(self, epoch, seq, own, frames, opts),
            None => self.deliver(&self.adapter.sockets(opts), frames, opts.volatile),
        }
    }

    /// What connection-state recovery did in this process, if it is on.
    pub fn recovery_stats(&self) -> Option<crate::RecoveryStats> {
        self.recovery.as_ref().map(Recovery::stats)
    }

    pub(crate) fn handlers(&self) -> NamespaceHandlers {
        self.handlers.read().map(|h| h.clone()).unwrap_or_default()
    }

    /// Runs before a client is admitted; an error refuses it with CONNECT_ERROR. Middlewares
    /// see the handshake (headers, cookies, auth) and may attach state to the socket.
    pub fn use_middleware<F, Fut>(&self, middleware: F)
    where
        F: Fn(Arc<Socket>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ConnectError>> + Send + 'static,
    {
        if let Ok(mut handlers) = self.handlers.write() {
            handlers
                .middlewares
                .push(Arc::new(move |socket| Box::pin(middleware(socket))));
        }
    }

    /// Handles an event for every socket of this namespace, as [`Socket::on`] does for one
    /// socket (which wins for its socket). Registered once, it costs a socket nothing: a
    /// server with many clients keeps one map, not one per socket.
    pub fn on<F, Fut>(&self, event: &str, handler: F)
    where
        F: Fn(Arc<Socket>, Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if let Ok(mut events) = self.events.write() {
            events.insert(event.to_owned(), crate::socket::event_handler(handler));
        }
    }

    pub(crate) fn event_handler(&self, event: &str) -> Option<EventHandler> {
        self.events.read().ok()?.get(event).cloned()
    }

    /// A connected socket of this process.
    pub fn socket(&self, sid: &str) -> Option<Arc<Socket>> {
        self.sockets.read().ok()?.get(sid).cloned()
    }

    /// Every connected socket of this process.
    pub fn sockets(&self) -> Vec<Arc<Socket>> {
        self.sockets
            .read()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many sockets of this process are connected.
    pub fn socket_count(&self) -> usize {
        self.sockets.read().map(|s| s.len()).unwrap_or(0)
    }

    /// How many rooms have sockets of this process, the sockets' own rooms apart.
    pub fn room_count(&self) -> usize {
        self.adapter.room_count()
    }

    /// Rooms with local members, and how many.
    pub fn rooms(&self) -> Vec<(Room, usize)> {
        self.adapter.rooms()
    }

    /// To everyone in `room`.
    pub fn to(self: &Arc<Self>, room: impl Into<Room>) -> BroadcastOperator {
        BroadcastOperator::new(self.clone()).to(room)
    }

    /// To everyone in the namespace but the members of `room`.
    pub fn except(self: &Arc<Self>, room: impl Into<Room>) -> BroadcastOperator {
        BroadcastOperator::new(self.clone()).except(room)
    }

    /// To everyone in the namespace.
    pub fn emit<T: Serialize + ?Sized>(
        self: &Arc<Self>,
        event: &str,
        data: &T,
    ) -> Result<(), EmitError> {
        BroadcastOperator::new(self.clone()).emit(event, data)
    }

    /// To everyone in the namespace, already-encoded arguments and attachments.
    pub fn emit_raw(
        self: &Arc<Self>,
        event: &str,
        args: &[&RawValue],
        binary: &[Bytes],
    ) -> Result<(), EmitError> {
        BroadcastOperator::new(self.clone()).emit_raw(event, args, binary)
    }

    pub(crate) fn insert(&self, socket: &Arc<Socket>) {
        if let Ok(mut sockets) = self.sockets.write() {
            sockets.insert(socket.id().clone(), socket.clone());
        }
        self.adapter.join(socket.id(), &[socket.id().clone()]);
    }

    pub(crate) fn remove(&self, socket: &Socket) {
        self.adapter.leave_all(socket.id());
        if let Ok(mut sockets) = self.sockets.write() {
            sockets.remove(socket.id());
        }
    }

    /// What cross-process queries report of these local sockets.
    pub fn socket_infos(&self, sids: &[Sid]) -> Vec<crate::SocketInfo> {
        sids.iter()
            .map(|sid| crate::SocketInfo {
                id: sid.to_string(),
                rooms: self
                    .adapter
                    .rooms_of(sid)
                    .iter()
                    .map(|r| r.to_string())
                    .collect(),
            })
            .collect()
    }

    /// Disconnects these local sockets from the namespace (their clients are told).
    pub fn disconnect_local(&self, sids: &[Sid]) {
        for socket in sids.iter().filter_map(|sid| self.socket(sid)) {
            tokio::spawn(async move { socket.disconnect().await });
        }
    }

    /// Sends encoded frames to local sockets: straight to their connections when they are
    /// few, through the namespace's flush pass when they are many (see
    /// [`SocketIoConfig::max_straight_recipients`] and [`engineio::FlushPass`]). A volatile
    /// frame is dropped for a client whose queue is full instead of closing its session.
    pub fn deliver(&self, sids: &[Sid], frames: &[Frame], volatile: bool) {
        let Ok(sockets) = self.sockets.read() else {
            return;
        };
        let straight = sids.len() <= self.config.max_straight_recipients;
        let mut due = Vec::new();
        let mut reached = 0;
        for sid in sids {
            let Some(socket) = sockets.get(sid) else {
                continue;
            };
            reached += 1;
            for frame in frames {
                let sent = match (straight, volatile) {
                    (true, true) => socket.conn.send_volatile(frame.clone()),
                    (true, false) => socket.conn.send(frame.clone()).is_ok(),
                    (false, volatile) => match socket.conn.send_deferred(frame.clone(), volatile) {
                        Ok(true) => {
                            due.push(socket.conn.0.clone());
                            true
                        }
                        Ok(false) => true,
                        Err(_) => false,
                    },
                };
                if !sent {
                    break;
                }
            }
        }
        drop(sockets);
        self.flush.schedule(due);
        crate::counters::delivered(reached);
    }
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

//! A client's connection to one namespace: its event handlers, rooms, emits and acks.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use engineio::Frame;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::adapter::BroadcastOptions;
use crate::broadcast::BroadcastOperator;
use crate::connection::Conn;
use crate::error::{AckError, EmitError};
use crate::event::{AckResponse, AckSender, Event};
use crate::handshake::Handshake;
use crate::namespace::Namespace;
use crate::packet::{encode, event_array, Packet, PacketType};
use crate::recovery::{Digest, Recovery, SessionRecord};
use crate::{Room, Sid};

pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
pub(crate) type EventHandler = Arc<dyn Fn(Arc<Socket>, Event) -> BoxFuture + Send + Sync>;

/// `handler` as the handlers of sockets and namespaces keep it.
pub(crate) fn event_handler<F, Fut>(handler: F) -> EventHandler
where
    F: Fn(Arc<Socket>, Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |socket, event| Box::pin(handler(socket, event)))
}
type DisconnectHandler = Box<dyn FnOnce(Arc<Socket>, DisconnectReason) -> BoxFuture + Send + Sync>;

/// Why a socket left its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client left the namespace (`socket.disconnect()` on the client).
    ClientNamespaceDisconnect,
    /// The server removed the socket (`socket.disconnect()` here).
    ServerNamespaceDisconnect,
    /// The underlying connection ended.
    Transport(engineio::DisconnectReason),
}

impl DisconnectReason {
    /// Whether the client may come back to this socket (connection-state recovery): its
    /// connection broke, rather than it or the server leaving on purpose or the client being
    /// cut off for what it sent.
    pub fn is_recoverable(self) -> bool {
        use engineio::DisconnectReason as Engine;
        matches!(
            self,
            DisconnectReason::Transport(
                Engine::TransportClose
                    | Engine::PingTimeout
                    | Engine::MultipleRequests
                    | Engine::ServerClose
                    | Engine::ClientClose
            )
        )
    }

    /// The wording the Socket.IO reference uses.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::ClientNamespaceDisconnect => "client namespace disconnect",
            DisconnectReason::ServerNamespaceDisconnect => "server namespace disconnect",
            DisconnectReason::Transport(engineio::DisconnectReason::ClientClose) => {
                "client namespace disconnect"
            }
            DisconnectReason::Transport(reason) => reason.as_str(),
        }
    }
}

/// Answers awaited from the client, by ack id.
type PendingAcks = HashMap<u64, oneshot::Sender<AckResponse>>;

/// One client in one namespace. Shared as `Arc<Socket>` by handlers, the namespace and acks.
pub struct Socket {
    id: Sid,
    ns: Arc<Namespace>,
    pub(crate) conn: Conn,
    handshake: Handshake,
    /// Handlers of this socket alone ([`Socket::on`]); boxed once the first is registered,
    /// since most sockets have none (handlers are the namespace's). An empty map would cost
    /// every socket its 48 bytes.
    #[allow(clippy::box_collection)]
    handlers: RwLock<Option<Box<HashMap<String, EventHandler>>>>,
    on_disconnect: Mutex<Option<DisconnectHandler>>,
    /// Ids for server-to-client acks; pending answers wait in `acks`.
    next_ack: AtomicU64,
    /// Boxed once the first is waited for: most sockets never ask for an ack.
    #[allow(clippy::box_collection)]
    acks: Mutex<Option<Box<PendingAcks>>>,
    connected: AtomicBool,
    /// The hash of its private id, with recovery on (see [`crate::RecoveryConfig`]): what its
    /// store knows it by. The id itself goes to its client with the CONNECT reply, and is not
    /// kept here.
    pid_hash: Option<Digest>,
    /// It is the socket of an earlier connection, given back to a client that returned.
    recovered: bool,
    /// Application state attached to this socket (a nickname, a session).
    pub extensions: RwLock<http::Extensions>,
}

impl Socket {
    /// A new socket: a new id, and the hash of its private id if its namespace keeps sockets
    /// for recovery.
    pub(crate) fn new(
        ns: Arc<Namespace>,
        conn: Conn,
        auth: Option<Box<RawValue>>,
        pid_hash: Option<Digest>,
    ) -> Self {
        Socket::with_identity(
            ns,
            conn,
            auth,
            engineio::generate_sid("").into(),
            pid_hash,
            false,
        )
    }

    /// The socket of an earlier connection, for the client that returned with the private id
    /// of hash `pid_hash`.
    pub(crate) fn restored(
        ns: Arc<Namespace>,
        conn: Conn,
        auth: Option<Box<RawValue>>,
        id: Sid,
        pid_hash: Digest,
    ) -> Self {
        Socket::with_identity(ns, conn, auth, id, Some(pid_hash), true)
    }

    /// A socket handed over by another process (live hand-off): the same id and private id,
    /// and, for the application, a recovered socket.
    pub(crate) fn adopted(
        ns: Arc<Namespace>,
        conn: Conn,
        auth: Option<Box<RawValue>>,
        id: Sid,
        pid_hash: Option<Digest>,
    ) -> Self {
        Socket::with_identity(ns, conn, auth, id, pid_hash, true)
    }

    /// The hash of its private id, with recovery on.
    pub(crate) fn pid_hash(&self) -> Option<Digest> {
        self.pid_hash
    }

    /// The id of the next ack this socket asks its client for.
    pub(crate) fn next_ack(&self) -> u64 {
        self.next_ack.load(Ordering::Relaxed)
    }

    pub(crate) fn set_next_ack(&self, id: u64) {
        self.next_ack.store(id, Ordering::Relaxed);
    }

    fn with_identity(
        ns: Arc<Namespace>,
        conn: Conn,
        auth: Option<Box<RawValue>>,
        id: Sid,
        pid_hash: Option<Digest>,
        recovered: bool,
    ) -> Self {
        let handshake = Handshake {
            request: conn.request(),
            auth,
            issued: std::time::SystemTime::now(),
        };
        Socket {
            id,
            ns,
            conn,
            handshake,
            handlers: RwLock::new(None),
            on_disconnect: Mutex::new(None),
            next_ack: AtomicU64::new(0),
            acks: Mutex::new(None),
            connected: AtomicBool::new(false),
            pid_hash,
            recovered,
            extensions: RwLock::new(http::Extensions::new()),
        }
    }

    /// This socket's id, as the client sees it in `socket.id`; also a room of its own.
    pub fn id(&self) -> &Sid {
        &self.id
    }

    pub fn ns(&self) -> &Arc<Namespace> {
        &self.ns
    }

    pub fn handshake(&self) -> &Handshake {
        &self.handshake
    }

    /// The same client's socket in another namespace, if it joined it (namespaces share one
    /// connection).
    pub fn sibling(&self, nsp: &str) -> Option<Arc<Socket>> {
        self.conn.socket(nsp)
    }

    /// Application state of the client's connection (not of this namespace socket): shared
    /// with its sockets in the other namespaces, and outlives namespace reconnects.
    pub fn connection_extensions(&self) -> &RwLock<http::Extensions> {
        &self.conn.data.extensions
    }

    /// The transport the connection uses right now.
    pub fn transport(&self) -> engineio::Transport {
        self.conn.transport()
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Whether this is the socket of an earlier connection, given back with its rooms and the
    /// events it missed to a client that came back (connection-state recovery).
    pub fn recovered(&self) -> bool {
        self.recovered
    }

    pub(crate) fn set_connected(&self) {
        self.connected.store(true, Ordering::Release);
    }

    /// Handles an event. Handlers of one connection run one at a time, in the order the client
    /// sent the events, so a chat keeps its order. A handler that waits for an ack from its own
    /// client must spawn that wait, since the ack arrives after the handler returns. A handler
    /// every socket shares is better registered once, on the namespace ([`Namespace::on`]):
    /// this one costs each socket a map entry; it wins over the namespace's for this socket.
    pub fn on<F, Fut>(&self, event: &str, handler: F)
    where
        F: Fn(Arc<Socket>, Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if let Ok(mut handlers) = self.handlers.write() {
            handlers
                .get_or_insert_with(Box::default)
                .insert(event.to_owned(), event_handler(handler));
        }
    }

    /// Runs once when the socket leaves the namespace, while it is still in its rooms.
    pub fn on_disconnect<F, Fut>(&self, handler: F)
    where
        F: FnOnce(Arc<Socket>, DisconnectReason) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if let Ok(mut slot) = self.on_disconnect.lock() {
            *slot = Some(Box::new(move |socket, reason| {
                Box::pin(handler(socket, reason))
            }));
        }
    }

    /// Emits an event with one argument.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<(), EmitError> {
        let json = event_json(event, data)?;
        self.send_event(&json, &[])
    }

    /// Emits an event with already-encoded arguments and binary attachments.
    pub fn emit_raw(
        &self,
        event: &str,
        args: &[&RawValue],
        binary: &[Bytes],
    ) -> Result<(), EmitError> {
        self.send_event(&event_array(event, args), binary)
    }

    /// An event with no ack to this client: with recovery on, it gets an offset and is kept
    /// for replay, like a broadcast to this socket's own room.
    fn send_event(&self, json: &str, binary: &[Bytes]) -> Result<(), EmitError> {
        let encode =
            |json: &str| encode(PacketType::Event, &self.ns.path, None, Some(json), binary);
        match self.ns.recovery() {
            Some(recovery) => {
                // This process's socket: not relayed to the others by a store of this process.
                let opts = BroadcastOptions {
                    rooms: vec![self.id.clone()],
                    local: true,
                    ..BroadcastOptions::default()
                };
                recovery.append(&self.ns, &encode(json), &opts)
            }
            None => self.queue(encode(json)),
        }
    }

    /// Emits an event and waits for the client's acknowledgement (default timeout from the
    /// configuration).
    pub async fn emit_with_ack<T: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &T,
    ) -> Result<AckResponse, AckError> {
        self.emit_with_ack_timeout(event, data, self.ns.config().ack_timeout)
            .await
    }

    pub async fn emit_with_ack_timeout<T: Serialize + ?Sized>(
        &self,
        event: &str,
        data: &T,
        timeout: Duration,
    ) -> Result<AckResponse, AckError> {
        let json = event_json(event, data)?;
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut acks) = self.acks.lock() {
            acks.get_or_insert_with(Box::default).insert(id, tx);
        }
        let sent = self.send_packet(PacketType::Event, Some(id), &json, &[]);
        let result = match sent {
            Err(error) => Err(AckError::Emit(error)),
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(_)) => Err(AckError::Disconnected),
                Err(_) => Err(AckError::Timeout),
            },
        };
        if let Ok(mut acks) = self.acks.lock() {
            if let Some(acks) = acks.as_mut() {
                acks.remove(&id);
            }
        }
        result
    }

    /// Joins a room.
    pub fn join(&self, room: impl Into<Room>) {
        self.ns.adapter().join(&self.id, &[room.into()]);
        self.write_through();
    }

    /// Leaves a room.
    pub fn leave(&self, room: &str) {
        self.ns.adapter().leave(&self.id, room);
        self.write_through();
    }

    /// This socket as a recovery store keeps it.
    fn record(&self, recovery: &Recovery, pid_hash: Digest) -> SessionRecord {
        SessionRecord {
            sid: self.id.clone(),
            pid_hash,
            rooms: self.rooms(),
            binding: recovery.binding(self.handshake.headers()),
        }
    }

    /// Tells a store that keeps connected sockets (one other processes share) what this
    /// socket is now, so that it recovers even if this process dies.
    pub(crate) fn write_through(&self) {
        if let (Some(recovery), Some(pid_hash)) = (self.ns.recovery(), self.pid_hash) {
            if recovery.store().is_shared() && self.connected() {
                recovery.store().attached(&self.record(recovery, pid_hash));
            }
        }
    }

    /// The rooms this socket is in (its own id included).
    pub fn rooms(&self) -> Vec<Room> {
        self.ns.adapter().rooms_of(&self.id)
    }

    /// To everyone in `room` but this socket.
    pub fn to(&self, room: impl Into<Room>) -> BroadcastOperator {
        self.broadcast().to(room)
    }

    /// To everyone in the namespace but this socket.
    pub fn broadcast(&self) -> BroadcastOperator {
        BroadcastOperator::new(self.ns.clone()).except_sid(self.id.clone())
    }

    /// To everyone in `room`, this socket included if it is a member.
    pub fn within(&self, room: impl Into<Room>) -> BroadcastOperator {
        BroadcastOperator::new(self.ns.clone()).to(room)
    }

    /// Removes this socket from its namespace; the client is told, and its connection stays
    /// open for other namespaces.
    pub async fn disconnect(self: &Arc<Self>) {
        let _ = self.send_packet(PacketType::Disconnect, None, "", &[]);
        self.conn.forget(&self.ns.path);
        self.leave_namespace(DisconnectReason::ServerNamespaceDisconnect)
            .await;
    }

    /// Closes the whole connection: every namespace of this client.
    pub fn close_connection(&self) {
        self.conn.close(engineio::DisconnectReason::ServerClose);
    }

    /// Encodes and queues one packet of this namespace.
    pub(crate) fn send_packet(
        &self,
        kind: PacketType,
        id: Option<u64>,
        json: &str,
        binary: &[Bytes],
    ) -> Result<(), EmitError> {
        let json = (!json.is_empty()).then_some(json);
        self.queue(encode(kind, &self.ns.path, id, json, binary))
    }

    /// Queues encoded frames to this client.
    pub(crate) fn queue(&self, frames: impl IntoIterator<Item = Frame>) -> Result<(), EmitError> {
        for frame in frames {
            self.conn.send(frame).map_err(|_| EmitError::Disconnected)?;
        }
        Ok(())
    }

    /// Dispatches an event to its handler and waits for it (see [`Socket::on`]).
    pub(crate) async fn receive_event(self: &Arc<Self>, packet: Packet) {
        let Some((name, args)) = packet.data.as_deref().and_then(split_event) else {
            return;
        };
        let own = self
            .handlers
            .read()
            .ok()
            .and_then(|handlers| handlers.as_ref()?.get(&name).cloned());
        let handler = own.or_else(|| self.ns.event_handler(&name));
        let Some(handler) = handler else {
            tracing::trace!(event = %name, ns = %self.ns.path, "no handler for event");
            return;
        };
        let ack = packet.id.map(|id| AckSender::new(self.clone(), id));
        handler(
            self.clone(),
            Event {
                name,
                args,
                binary: packet.binary,
                ack,
            },
        )
        .await;
    }

    /// Resolves a pending `emit_with_ack`.
    pub(crate) fn receive_ack(&self, packet: Packet) {
        let Some(id) = packet.id else { return };
        let tx = self
            .acks
            .lock()
            .ok()
            .and_then(|mut acks| acks.as_mut()?.remove(&id));
        let Some(tx) = tx else {
            return;
        };
        let args = packet
            .data
            .and_then(|data| serde_json::from_str::<Vec<Box<RawValue>>>(data.get()).ok())
            .unwrap_or_default();
        let _ = tx.send(AckResponse {
            args,
            binary: packet.binary,
        });
    }

    /// Runs the disconnect handler, then leaves every room and the namespace. Idempotent.
    pub(crate) async fn leave_namespace(self: &Arc<Self>, reason: DisconnectReason) {
        if !self.connected.swap(false, Ordering::AcqRel) {
            return;
        }
        // A socket handed to another process lives on there: the store keeps it as it is,
        // and the application is not told it left (see `handoff.rs`).
        if reason == DisconnectReason::Transport(engineio::DisconnectReason::HandOff) {
            self.ns.remove(self);
            if let Ok(mut acks) = self.acks.lock() {
                *acks = None;
            }
            return;
        }
        // Kept as it is now, before the disconnect handler can leave rooms.
        if let (Some(recovery), Some(pid_hash)) = (self.ns.recovery(), self.pid_hash) {
            if reason.is_recoverable() {
                recovery.store().detached(self.record(recovery, pid_hash));
            } else {
                recovery.store().forgotten(&pid_hash);
            }
        }
        let handler = self
            .on_disconnect
            .lock()
            .ok()
            .and_then(|mut slot| slot.take());
        if let Some(handler) = handler {
            handler(self.clone(), reason).await;
        }
        self.ns.remove(self);
        if let Ok(mut acks) = self.acks.lock() {
            *acks = None;
        }
    }
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.id)
            .field("ns", &self.ns.path)
            .finish()
    }
}

/// `["event", data]` as JSON.
pub(crate) fn event_json<T: Serialize + ?Sized>(
    event: &str,
    data: &T,
) -> Result<String, EmitError> {
    serde_json::to_string(&(event, data)).map_err(|e| EmitError::Serialize(e.to_string()))
}

/// The event name and arguments of a validated event payload.
fn split_event(data: &RawValue) -> Option<(String, Vec<Box<RawValue>>)> {
    let mut items: Vec<Box<RawValue>> = serde_json::from_str(data.get()).ok()?;
    if items.is_empty() {
        return None;
    }
    let first = items.remove(0);
    let name = match serde_json::from_str::<String>(first.get()) {
        Ok(name) => name,
        Err(_) => first.get().to_owned(),
    };
    Some((name, items))
}

//! The Socket.IO server: turns Engine.IO messages into packets and packets into namespace
//! connections, events and acks.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use engineio::{Engine, Message};
use http::{Request, Response};
use serde_json::value::RawValue;

use crate::config::SocketIoConfig;
use crate::connection::{Conn, ConnState};
use crate::error::ConnectError;
use crate::namespace::{ConnectHandler, Namespace, NamespaceHandlers};
use crate::packet::{encode, Packet, PacketType, ParseError};
use crate::reassembly::{AttachmentLimits, Refusal};
use crate::recovery::{parse_offset, Digest, Pid, Recovery, RestoreRequest, Restored};
use crate::socket::{DisconnectReason, Socket};
use crate::EmitError;

type NamespaceMatcher = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The namespaces and the rules for making new ones; the Engine.IO handler of the server.
pub struct Dispatcher {
    config: SocketIoConfig,
    namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
    dynamic: RwLock<Vec<(NamespaceMatcher, NamespaceHandlers)>>,
}

/// A Socket.IO v5 server. Clone it freely: clones share the same server.
#[derive(Clone)]
pub struct SocketIo {
    engine: Arc<Engine<Dispatcher>>,
}

impl SocketIo {
    pub fn new(config: SocketIoConfig) -> Self {
        let dispatcher = Dispatcher {
            config: config.clone(),
            namespaces: RwLock::new(HashMap::new()),
            dynamic: RwLock::new(Vec::new()),
        };
        SocketIo {
            engine: Engine::new(config.engine.clone(), dispatcher),
        }
    }

    fn dispatcher(&self) -> &Dispatcher {
        self.engine.handler()
    }

    /// Declares a namespace and what to do with each client that joins it.
    pub fn ns<F, Fut>(&self, path: &str, on_connect: F) -> Arc<Namespace>
    where
        F: Fn(Arc<Socket>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handlers = NamespaceHandlers {
            on_connect: Some(connect_handler(on_connect)),
            middlewares: Vec::new(),
        };
        let ns = Namespace::new(path, self.dispatcher().config.clone(), handlers);
        if let Ok(mut namespaces) = self.dispatcher().namespaces.write() {
            namespaces.insert(path.to_owned(), ns.clone());
        }
        ns
    }

    /// Declares every namespace whose path matches: each is created on its first connection and
    /// gets the same handler.
    pub fn dynamic_ns<M, F, Fut>(&self, matches: M, on_connect: F)
    where
        M: Fn(&str) -> bool + Send + Sync + 'static,
        F: Fn(Arc<Socket>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handlers = NamespaceHandlers {
            on_connect: Some(connect_handler(on_connect)),
            middlewares: Vec::new(),
        };
        if let Ok(mut dynamic) = self.dispatcher().dynamic.write() {
            dynamic.push((Arc::new(matches), handlers));
        }
    }

    /// A namespace that exists (declared, or created by a dynamic pattern).
    pub fn of(&self, path: &str) -> Option<Arc<Namespace>> {
        self.dispatcher().namespaces.read().ok()?.get(path).cloned()
    }

    /// What connection-state recovery did in this process, every namespace together; `None`
    /// with recovery off.
    pub fn recovery_stats(&self) -> Option<crate::RecoveryStats> {
        let mut total: Option<crate::RecoveryStats> = None;
        for stats in self
            .namespaces()
            .iter()
            .filter_map(|ns| ns.recovery_stats())
        {
            total.get_or_insert_with(Default::default).add(stats);
        }
        total
    }

    /// Every namespace that exists now, for the counts a supervisor exports.
    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        self.dispatcher()
            .namespaces
            .read()
            .map(|namespaces| namespaces.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The Engine.IO layer, for HTTP routing and session counts.
    pub fn engine(&self) -> &Arc<Engine<Dispatcher>> {
        &self.engine
    }

    /// Whether an HTTP request belongs to Socket.IO (its path is the engine path).
    pub fn handles(&self, path: &str) -> bool {
        self.engine.handles(path)
    }

    /// Answers one HTTP request of the Socket.IO path.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<engineio::Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.engine.handle(req).await
    }

    /// Accepts connections and serves only Socket.IO on them.
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        self.engine.clone().serve(listener).await
    }

    /// Closes every connection (shutdown or drain before a reload).
    pub fn close(&self) {
        self.engine
            .close_all(engineio::DisconnectReason::ServerClose);
    }
}

fn connect_handler<F, Fut>(on_connect: F) -> ConnectHandler
where
    F: Fn(Arc<Socket>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    Arc::new(move |socket| Box::pin(on_connect(socket)))
}

impl Dispatcher {
    /// The namespace for a CONNECT, creating it if a dynamic pattern matches.
    pub(crate) fn namespace(&self, path: &str) -> Option<Arc<Namespace>> {
        if let Some(ns) = self.namespaces.read().ok()?.get(path) {
            return Some(ns.clone());
        }
        let handlers = self
            .dynamic
            .read()
            .ok()?
            .iter()
            .find(|(matches, _)| matches(path))
            .map(|(_, handlers)| handlers.clone())?;
        let mut namespaces = self.namespaces.write().ok()?;
        let ns = namespaces
            .entry(path.to_owned())
            .or_insert_with(|| Namespace::new(path, self.config.clone(), handlers));
        Some(ns.clone())
    }

    /// Turns one Engine.IO message into a whole packet: at once for a text packet, after its
    /// last attachment for a binary one (`None` meanwhile).
    fn assemble(&self, conn: &Conn, message: Message) -> Result<Option<Packet>, PacketRefusal> {
        let Ok(mut partial) = conn.data.partial.lock() else {
            return Ok(None);
        };
        let limits = AttachmentLimits {
            max_attachments: self.config.max_attachments,
            max_bytes: self.config.engine.max_payload,
        };
        match message {
            Message::Text(text) => {
                partial.expect_text()?;
                let packet = Packet::decode(&text)?;
                if packet.is_complete() {
                    return Ok(Some(packet));
                }
                // Attachments are only buffered for a namespace this client is in: the
                // packet could reach no handler anyway.
                if conn.socket(&packet.nsp).is_none() {
                    return Err(PacketRefusal::NotJoined(packet.nsp));
                }
                partial.start(packet, text.len(), limits)?;
                Ok(None)
            }
            Message::Binary(data) => Ok(partial.attach(data, limits)?),
        }
    }

    async fn receive(&self, conn: &Conn, packet: Packet) {
        match packet.kind {
            PacketType::Connect => self.connect(conn, packet).await,
            PacketType::Disconnect => {
                if let Some(socket) = conn.forget(&packet.nsp) {
                    socket
                        .leave_namespace(DisconnectReason::ClientNamespaceDisconnect)
                        .await;
                }
            }
            PacketType::Event | PacketType::BinaryEvent => {
                if let Some(socket) = conn.socket(&packet.nsp) {
                    socket.receive_event(packet).await;
                }
            }
            PacketType::Ack | PacketType::BinaryAck => {
                if let Some(socket) = conn.socket(&packet.nsp) {
                    socket.receive_ack(packet);
                }
            }
            // Only servers send CONNECT_ERROR.
            PacketType::ConnectError => conn.close(engineio::DisconnectReason::PacketParsing),
        }
    }

    async fn connect(&self, conn: &Conn, packet: Packet) {
        if conn.socket(&packet.nsp).is_some() {
            return;
        }
        let refuse = |error: ConnectError| {
            let json = error.to_json();
            for frame in encode(
                PacketType::ConnectError,
                &packet.nsp,
                None,
                Some(&json),
                &[],
            ) {
                let _ = conn.send(frame);
            }
        };
        let Some(ns) = self.namespace(&packet.nsp) else {
            refuse(ConnectError::new("Invalid namespace"));
            return;
        };
        // A client that lost its connection comes back with `{pid, offset}` in its auth. They
        // are not the application's: its handshake keeps the rest of the auth.
        let mut auth = packet.data;
        let (pid, restored) = match ns.recovery() {
            Some(recovery) => restore(recovery, conn, &mut auth).await,
            None => None,
        }
        .unzip();
        // The private id goes to the client with the CONNECT reply; the socket keeps its hash.
        let (socket, pid) = match (pid, &restored) {
            (Some(pid), Some(attempt)) => (
                Socket::restored(
                    ns.clone(),
                    conn.clone(),
                    auth,
                    attempt.restored.sid.clone(),
                    attempt.pid_hash,
                ),
                Some(pid),
            ),
            _ => {
                let pid = ns.recovery().map(|_| Pid::new());
                let pid_hash = pid.as_ref().map(Pid::digest);
                (Socket::new(ns.clone(), conn.clone(), auth, pid_hash), pid)
            }
        };
        let socket = Arc::new(socket);
        let handlers = ns.handlers();
        let release = || {
            if let (Some(attempt), Some(recovery)) = (&restored, ns.recovery()) {
                recovery.release(attempt.hold);
            }
        };
        for middleware in &handlers.middlewares {
            if let Err(error) = middleware(socket.clone()).await {
                tracing::debug!(ns = %ns.path(), %error, "connection refused by middleware");
                release();
                refuse(error);
                return;
            }
        }
        if conn.is_closed() {
            release();
            return;
        }
        socket.set_connected();
        conn.insert(socket.clone());
        // A client in a namespace is a user, no longer a pending handshake.
        conn.admit();
        let mut reply = serde_json::json!({ "sid": socket.id().as_ref() });
        if let Some(pid) = pid {
            reply["pid"] = pid.as_str().into();
        }
        let reply = reply.to_string();
        let connected = match (&restored, ns.recovery()) {
            (Some(attempt), Some(recovery)) => {
                // Under the feed's lock, so that no event falls between the replay and the
                // socket's return to its rooms. The missed events go first, as the reference
                // server sends them: the client holds them until its CONNECT reply.
                let restored = &attempt.restored;
                let adopted = recovery.adopt(attempt.hold, &attempt.epoch, restored, |frames| {
                    ns.insert(&socket);
                    ns.adapter().join(socket.id(), &restored.rooms);
                    socket.queue(frames)?;
                    socket.send_packet(PacketType::Connect, None, &reply, &[])
                });
                // Too much came meanwhile to replay it whole: the client starts afresh when it
                // connects again.
                adopted.unwrap_or_else(|| {
                    conn.close(engineio::DisconnectReason::ServerClose);
                    Err(EmitError::Disconnected)
                })
            }
            _ => {
                ns.insert(&socket);
                socket.send_packet(PacketType::Connect, None, &reply, &[])
            }
        };
        if connected.is_err() {
            return;
        }
        socket.write_through();
        if let Some(on_connect) = handlers.on_connect {
            on_connect(socket).await;
        }
    }
}

/// A returning client's socket, found: its private id, the events held here while it was
/// looked up, and the epoch of its offsets.
pub(crate) struct Attempt {
    pub(crate) pid_hash: Digest,
    pub(crate) hold: u64,
    pub(crate) epoch: String,
    pub(crate) restored: Restored,
}

/// Looks up the socket of a client that came back with `{pid, offset}` in its auth; `None`
/// for a fresh socket. Events delivered here meanwhile are held for it.
async fn restore(
    recovery: &Recovery,
    conn: &Conn,
    auth: &mut Option<Box<RawValue>>,
) -> Option<(Pid, Attempt)> {
    let (pid, offset) = take_recovery_attempt(auth)?;
    let pid = Pid::from(pid.as_str());
    let attempt = lookup_kept_socket(recovery, conn, pid.digest(), &offset, true).await?;
    Some((pid, attempt))
}

/// Looks up the socket kept for `pid`, for a client that had every event up to `offset`;
/// events delivered here meanwhile are held for it. `counted`: a recovery (see
/// [`crate::RecoveryStats`]), not a hand-off.
pub(crate) async fn lookup_kept_socket(
    recovery: &Recovery,
    conn: &Conn,
    pid_hash: Digest,
    offset: &str,
    counted: bool,
) -> Option<Attempt> {
    let offset = parse_offset(offset)?;
    let epoch = offset.epoch;
    let request = RestoreRequest {
        pid_hash,
        epoch: epoch.clone(),
        after: offset.seq,
        had_own: offset.own,
        asker: Some(recovery.process()),
        binding: recovery.binding(conn.headers()),
    };
    let hold = recovery.hold(counted);
    match recovery.store().restore(request).await {
        Some(restored) => Some(Attempt {
            pid_hash,
            hold,
            epoch,
            restored,
        }),
        None => {
            recovery.release(hold);
            None
        }
    }
}

/// The `pid` and `offset` of a client that asks for its earlier socket back (both strings in
/// its CONNECT auth, as the reference client sends them), taken out of the auth: a private id
/// must not reach the application's handlers or logs.
fn take_recovery_attempt(auth: &mut Option<Box<RawValue>>) -> Option<(String, String)> {
    let mut fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(auth.as_deref()?.get()).ok()?;
    let pid = fields.remove("pid");
    let offset = fields.remove("offset");
    if pid.is_some() || offset.is_some() {
        // Without them the auth is what the application sent.
        *auth = serde_json::value::to_raw_value(&fields).ok();
    }
    match (pid, offset) {
        (Some(serde_json::Value::String(pid)), Some(serde_json::Value::String(offset))) => {
            Some((pid, offset))
        }
        _ => None,
    }
}

impl engineio::Handler for Dispatcher {
    type Data = ConnState;

    /// A session is pending until it joins a namespace (see [`Dispatcher::connect`]).
    fn admits_explicitly(&self) -> bool {
        true
    }

    fn on_connect(&self, _socket: &Arc<engineio::Socket<ConnState>>) {}

    fn export(
        &self,
        socket: &Arc<engineio::Socket<ConnState>>,
        close: &dyn Fn(),
    ) -> Option<Box<RawValue>> {
        self.export_conn(socket, close)
    }

    async fn import(
        &self,
        socket: &Arc<engineio::Socket<ConnState>>,
        state: &RawValue,
    ) -> Result<(), String> {
        self.import_conn(socket, state).await
    }

    /// A client that is in no namespace `connect_timeout` after its handshake is closed
    /// (`connectTimeout`).
    fn deadline(&self) -> Option<std::time::Duration> {
        Some(self.config.connect_timeout)
    }

    fn on_deadline(&self, socket: &Arc<engineio::Socket<ConnState>>) {
        let conn = Conn(socket.clone());
        if !conn.has_namespaces() {
            conn.close(engineio::DisconnectReason::ServerClose);
        }
    }

    async fn on_message(&self, socket: &Arc<engineio::Socket<ConnState>>, message: Message) {
        let conn = Conn(socket.clone());
        match self.assemble(&conn, message) {
            Ok(Some(packet)) => self.receive(&conn, packet).await,
            Ok(None) => {}
            Err(refusal) => {
                tracing::debug!(sid = conn.id(), %refusal, "refused a Socket.IO packet");
                conn.close(refusal.disconnect_reason());
            }
        }
    }

    async fn on_disconnect(
        &self,
        socket: Arc<engineio::Socket<ConnState>>,
        reason: engineio::DisconnectReason,
    ) {
        let conn = Conn(socket);
        for socket in conn.forget_all() {
            socket
                .leave_namespace(DisconnectReason::Transport(reason))
                .await;
        }
    }
}

/// Why a client message was refused; the connection is closed for it.
#[derive(Debug, thiserror::Error)]
enum PacketRefusal {
    #[error("malformed packet: {0}")]
    Malformed(#[from] ParseError),
    #[error(transparent)]
    Attachments(#[from] Refusal),
    #[error("a binary packet for namespace {0:?}, which this client has not joined")]
    NotJoined(String),
}

impl PacketRefusal {
    fn disconnect_reason(&self) -> engineio::DisconnectReason {
        match self {
            PacketRefusal::Attachments(refusal) => refusal.disconnect_reason(),
            _ => engineio::DisconnectReason::PacketParsing,
        }
    }
}

//! The Engine.IO server's core: the table of open sessions, opening a session, its heartbeat,
//! and handing each packet a transport read to the [`Handler`]. The transports
//! (`transport/{polling,ws}.rs`) and the router (`router.rs`, which picks a transport for each
//! request) call into it; it calls neither.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::header::HeaderName;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::Full;

use crate::config::EngineConfig;
use crate::heartbeat::{Due, Heartbeat, Rhythm};
use crate::log_throttle::LogThrottle;
use crate::packet::{Message, Packet};
use crate::pending::{PeerAddr, PendingSessions};
use crate::sid::generate_sid;
use crate::socket::{DisconnectReason, SessionRequest, Socket, Transport};

/// The body type of every response the engine makes.
pub type Body = Full<Bytes>;

/// What the layer above does with sessions. Messages of one session are delivered one at a time
/// and in order: the transport awaits `on_message` before it reads the next packet.
pub trait Handler: Send + Sync + 'static {
    /// State kept per session by the layer above.
    type Data: Default + Send + Sync + 'static;

    /// Whether a new session counts as pending (under `max_pending_sessions` and
    /// `max_pending_sessions_per_address`) until the handler calls [`Socket::admit`]. A layer
    /// with a step of its own after the handshake (Socket.IO: joining a namespace) says yes,
    /// so that handshakes which never take that step cannot fill `max_sessions`. By default a
    /// session is admitted with its handshake.
    fn admits_explicitly(&self) -> bool {
        false
    }

    /// A session is open and its handshake is sent.
    fn on_connect(&self, socket: &Arc<Socket<Self::Data>>);

    /// How long after its handshake a session gets [`Handler::on_deadline`], if at all: a
    /// layer above that must hear from the client in time (Socket.IO's `connectTimeout`)
    /// checks it there. The session's own task keeps the time, so it costs no task of its own.
    fn deadline(&self) -> Option<std::time::Duration> {
        None
    }

    /// The [`Handler::deadline`] of a session still open has come.
    fn on_deadline(&self, _socket: &Arc<Socket<Self::Data>>) {}

    /// A message from the client.
    fn on_message(
        &self,
        socket: &Arc<Socket<Self::Data>>,
        message: Message,
    ) -> impl Future<Output = ()> + Send;

    /// Freezes the session's state for a hand-off to another process (see `handoff.rs`): the
    /// session is quiesced (no packet of it is being handled), and `close` must be called,
    /// under whatever keeps new frames for it from being made elsewhere, for the state
    /// returned to be all there is. `None`: this session cannot move (it drains instead,
    /// `close` not called). By default nothing can move.
    fn export(
        &self,
        _socket: &Arc<Socket<Self::Data>>,
        _close: &dyn Fn(),
    ) -> Option<Box<serde_json::value::RawValue>> {
        None
    }

    /// Rebuilds the state [`Handler::export`] made, in the process that adopts the session,
    /// before its transport serves it. `Err` refuses the session (its record came from a
    /// trusted peer, but may still be malformed or name what does not exist here).
    fn import(
        &self,
        _socket: &Arc<Socket<Self::Data>>,
        _state: &serde_json::value::RawValue,
    ) -> impl Future<Output = Result<(), String>> + Send {
        async { Err("this server does not adopt sessions".to_owned()) }
    }

    /// The session ended; called exactly once, after it left the session table.
    fn on_disconnect(
        &self,
        socket: Arc<Socket<Self::Data>>,
        reason: DisconnectReason,
    ) -> impl Future<Output = ()> + Send;
}

/// Engine.IO error codes, as the reference server sends them in 400 bodies.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ErrorCode {
    UnknownTransport = 0,
    UnknownSid = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    Forbidden = 4,
    UnsupportedProtocolVersion = 5,
}

impl ErrorCode {
    fn message(self) -> &'static str {
        match self {
            ErrorCode::UnknownTransport => "Transport unknown",
            ErrorCode::UnknownSid => "Session ID unknown",
            ErrorCode::BadHandshakeMethod => "Bad handshake method",
            ErrorCode::BadRequest => "Bad request",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }
}

/// Who keeps a new session's heartbeat and ends it once closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionTime {
    /// A task of the session's own, alongside its transport.
    OwnTask,
    /// The task that carries its websocket, which then calls [`Engine::end_session`].
    Websocket,
}

/// Open sessions by id: the table every request with a `sid` is looked up in.
pub(crate) type SessionTable<D> = RwLock<HashMap<Arc<str>, Arc<Socket<D>>>>;

/// An Engine.IO server for one path. Cheap to share: handlers and transports hold an `Arc`.
pub struct Engine<H: Handler> {
    pub(crate) config: EngineConfig,
    pub(crate) handler: H,
    pub(crate) sessions: SessionTable<H::Data>,
    /// Caps on sessions the handler has not admitted yet, apart from `max_sessions`.
    pending: Arc<PendingSessions>,
    /// Keeps a handshake flood from writing one log line per refused request.
    refusal_log: LogThrottle,
    /// Where sessions go once [`Engine::hand_off_all`] was called (a worker being replaced).
    pub(crate) departures: std::sync::OnceLock<crate::handoff::Departures>,
    /// The sessions that left for the adopter: requests for them are its now. Empty unless
    /// this process hands its sessions off, and never more than it had.
    pub(crate) moved: std::sync::Mutex<std::collections::HashSet<Box<str>>>,
    /// Websocket sessions to hand off once those on their way have gone (see
    /// [`Engine::hand_off_all`]).
    pub(crate) waiting: std::sync::Mutex<std::collections::VecDeque<Arc<Socket<H::Data>>>>,
}

impl<H: Handler> Engine<H> {
    pub fn new(config: EngineConfig, handler: H) -> Arc<Self> {
        Arc::new(Engine {
            pending: PendingSessions::new(
                config.max_pending_sessions,
                config.max_pending_sessions_per_address,
            ),
            refusal_log: LogThrottle::new(config.refusal_log_interval),
            config,
            handler,
            sessions: RwLock::new(HashMap::new()),
            departures: std::sync::OnceLock::new(),
            moved: std::sync::Mutex::default(),
            waiting: std::sync::Mutex::default(),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Whether a request path belongs to this engine.
    pub fn handles(&self, path: &str) -> bool {
        path == self.config.path || path == self.config.path.trim_end_matches('/')
    }

    /// Open sessions right now.
    pub fn session_count(&self) -> usize {
        self.sessions.read().map(|s| s.len()).unwrap_or(0)
    }

    /// Open sessions right now, by the transport they use: (polling, websocket).
    pub fn sessions_by_transport(&self) -> (usize, usize) {
        let Ok(sessions) = self.sessions.read() else {
            return (0, 0);
        };
        let websocket = sessions
            .values()
            .filter(|s| s.transport() == crate::Transport::Websocket)
            .count();
        (sessions.len() - websocket, websocket)
    }

    /// The open session with this id.
    pub fn session(&self, sid: &str) -> Option<Arc<Socket<H::Data>>> {
        self.sessions.read().ok()?.get(sid).cloned()
    }

    /// Closes every session (shutdown and reload drain).
    pub fn close_all(&self, reason: DisconnectReason) {
        let sessions: Vec<_> = match self.sessions.read() {
            Ok(s) => s.values().cloned().collect(),
            Err(_) => return,
        };
        for socket in sessions {
            socket.close(reason);
        }
    }

    /// Creates a session, registers it and starts its heartbeat (unless its websocket's task
    /// keeps it: `keeps_time`). The session keeps copies of
    /// the request's target and of the headers the layer above reads (see
    /// [`detached_headers`]). It starts pending: see [`Socket::admit`].
    pub(crate) fn open_session<B>(
        self: &Arc<Self>,
        transport: Transport,
        keeps_time: SessionTime,
        req: &Request<B>,
    ) -> Result<Arc<Socket<H::Data>>, Response<Body>> {
        let peer = req.extensions().get::<PeerAddr>().map(|peer| peer.0);
        let pending = if self.handler.admits_explicitly() {
            match self.pending.reserve(peer) {
                Ok(slot) => Some(slot),
                Err(refusal) => {
                    crate::counters::refused_pending();
                    if let Some(left_out) = self.refusal_log.admit() {
                        tracing::warn!(%refusal, left_out, "refused a handshake");
                    }
                    return Err(json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        ErrorCode::BadRequest,
                    ));
                }
            }
        } else {
            None
        };
        let socket = Arc::new(Socket::new(
            generate_sid(&self.config.sid_tag),
            transport,
            self.config.max_buffered_packets,
            pending,
            SessionRequest {
                headers: detached_headers(req.headers(), &self.config.session_headers),
                uri: detached_uri(req.uri()),
            },
            H::Data::default(),
        ));
        {
            let Ok(mut sessions) = self.sessions.write() else {
                return Err(json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::BadRequest,
                ));
            };
            if sessions.len() >= self.config.max_sessions {
                crate::counters::refused_full();
                if let Some(left_out) = self.refusal_log.admit() {
                    tracing::warn!(
                        max_sessions = self.config.max_sessions,
                        left_out,
                        "refused a handshake: the session limit is reached (raise max_sessions)"
                    );
                }
                return Err(json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::BadRequest,
                ));
            }
            sessions.insert(socket.id_arc(), socket.clone());
        }
        if keeps_time == SessionTime::OwnTask {
            tokio::spawn(run_session(
                self.clone(),
                socket.clone(),
                self.heartbeat(tokio::time::Instant::now()),
            ));
        }
        self.handler.on_connect(&socket);
        Ok(socket)
    }

    /// A new heartbeat for a session whose handshake was at `opened`.
    pub(crate) fn heartbeat(&self, opened: tokio::time::Instant) -> Heartbeat {
        Heartbeat::new(opened, self.rhythm(), self.handler.deadline())
    }

    /// How often sessions are pinged and how long their answers may take.
    pub(crate) fn rhythm(&self) -> Rhythm {
        Rhythm {
            interval: self.config.ping_interval,
            timeout: self.config.ping_timeout,
        }
    }

    /// Does what `heartbeat` says is due now. `false` once the session is over.
    pub(crate) fn beat(&self, socket: &Arc<Socket<H::Data>>, heartbeat: &mut Heartbeat) -> bool {
        match heartbeat.due(tokio::time::Instant::now(), self.rhythm()) {
            None => true,
            Some(Due::Ping) => socket.send(crate::packet::Frame::PING).is_ok(),
            Some(Due::Deadline) => {
                self.handler.on_deadline(socket);
                true
            }
            Some(Due::Timeout) => {
                socket.close(DisconnectReason::PingTimeout);
                false
            }
        }
    }

    /// Ends a closed session: it leaves the table, frees its place among pending sessions, and
    /// the handler hears of it.
    pub(crate) async fn end_session(&self, socket: Arc<Socket<H::Data>>) {
        // A session handed off stays in the table until its adopter has it (see
        // `Engine::departed`): requests for it wait meanwhile, rather than find no session.
        if socket.close_reason() != Some(DisconnectReason::HandOff) {
            if let Ok(mut sessions) = self.sessions.write() {
                sessions.remove(socket.id());
            }
        }
        // Whoever still holds the socket, its place among pending sessions is free again.
        socket.release_pending();
        self.ended_before_departure(&socket);
        let reason = socket
            .close_reason()
            .unwrap_or(DisconnectReason::ServerClose);
        self.handler.on_disconnect(socket, reason).await;
    }

    /// The `0{...}` open packet for a session.
    pub(crate) fn open_packet(&self, socket: &Socket<H::Data>) -> String {
        let upgrades: &[&str] = if socket.transport() == Transport::Polling {
            &["websocket"]
        } else {
            &[]
        };
        let open = serde_json::json!({
            "sid": socket.id(),
            "upgrades": upgrades,
            "pingInterval": self.config.ping_interval.as_millis() as u64,
            "pingTimeout": self.config.ping_timeout.as_millis() as u64,
            "maxPayload": self.config.max_payload,
        });
        format!("0{open}")
    }

    /// Handles one packet from the client, whatever transport carried it.
    pub(crate) async fn receive(&self, socket: &Arc<Socket<H::Data>>, packet: Packet) {
        // Any packet proves the client alive, as in the reference server: a pong stuck behind a
        // large upload must not cost the session.
        socket.pong.notify_one();
        crate::counters::received();
        match packet {
            Packet::Pong(_) => {}
            Packet::Message(message) => self.handler.on_message(socket, message).await,
            Packet::Close => socket.close(DisconnectReason::ClientClose),
            Packet::Noop => {}
            // Clients do not ping in v4, open or upgrade outside a handshake: a broken client.
            Packet::Ping(_) | Packet::Open | Packet::Upgrade => {
                socket.close(DisconnectReason::PacketParsing)
            }
        }
    }
}

/// Keeps the heartbeat of a session that has no task of its own (polling, an upgraded
/// websocket, an external transport), then ends it: one task per session.
pub(crate) async fn run_session<H: Handler>(
    engine: Arc<Engine<H>>,
    socket: Arc<Socket<H::Data>>,
    mut heartbeat: Heartbeat,
) {
    let beat = async {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(heartbeat.wake_at()) => {
                    if !engine.beat(&socket, &mut heartbeat) {
                        return;
                    }
                }
                _ = socket.pong.notified() => heartbeat.heard(tokio::time::Instant::now(), engine.rhythm()),
            }
        }
    };
    tokio::select! {
        _ = beat => {}
        _ = socket.closed() => {}
    }
    engine.end_session(socket).await;
}

/// Engine.IO's answer to a request for a session that does not exist (`400`, code 1), on which
/// clients reconnect; for whoever answers for the engine (e.g. a process that forwards requests
/// to a session's owner and finds it gone).
pub fn unknown_session() -> Response<Body> {
    error_response(ErrorCode::UnknownSid)
}

pub(crate) fn error_response(code: ErrorCode) -> Response<Body> {
    json_error(StatusCode::BAD_REQUEST, code)
}

pub(crate) fn json_error(status: StatusCode, code: ErrorCode) -> Response<Body> {
    let body = serde_json::json!({ "code": code as u8, "message": code.message() }).to_string();
    let mut response = Response::new(Body::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A copy of the headers named in `keep` that owns its values. hyper's values are slices of the
/// connection's read buffer: a session holding them for its whole life would hold that buffer
/// (8 KiB and more) too.
fn detached_headers(headers: &HeaderMap, keep: &[HeaderName]) -> HeaderMap {
    let kept = keep
        .iter()
        .map(|name| headers.get_all(name).iter().count())
        .sum();
    let mut copy = HeaderMap::with_capacity(kept);
    for name in keep {
        for value in headers.get_all(name) {
            let owned = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
            copy.append(name.clone(), owned);
        }
    }
    copy
}

/// A copy of `uri` that owns its bytes, for the same reason as [`detached_headers`].
fn detached_uri(uri: &Uri) -> Uri {
    uri.to_string().parse().unwrap_or_else(|_| uri.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_keep_copies_of_the_request_not_the_read_buffer() {
        let buffer = Bytes::from(vec![b'a'; 8192]);
        let mut headers = HeaderMap::new();
        let value = HeaderValue::from_maybe_shared(buffer.slice(10..20)).unwrap();
        headers.insert(header::COOKIE, value);
        headers.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("en"));
        let copy = detached_headers(&headers, &EngineConfig::default().session_headers);
        assert!(
            copy.get(header::ACCEPT_LANGUAGE).is_none(),
            "a header the app does not read was kept"
        );
        let kept = copy.get(header::COOKIE).unwrap().as_bytes();
        assert_eq!(kept, &buffer[10..20]);
        let inside = buffer.as_ptr_range();
        assert!(
            !inside.contains(&kept.as_ptr()),
            "the copy still points into the buffer"
        );
        let uri: Uri = "/socket.io/?EIO=4&transport=websocket".parse().unwrap();
        assert_eq!(detached_uri(&uri), uri);
    }
}

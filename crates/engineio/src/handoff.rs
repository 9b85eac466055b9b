//! Live hand-off: a session leaves this process for another one (a worker replaced on reload)
//! without its client noticing.
//!
//! The departing side asks every session to quiesce ([`Engine::hand_off_all`]). A websocket
//! session stops reading at the next packet boundary (its task is between two turns, so no
//! packet is half handled), the layer above freezes its state and closes the session with
//! [`DisconnectReason::HandOff`] (nothing is queued after that), what was queued is written to
//! the client, and the connection's descriptor leaves with the bytes read but not decoded. A
//! polling session waits for its POST in flight, ends its pending GET, freezes the same way and
//! leaves as state alone, its queue included. Each comes out of the engine as a [`Departure`];
//! moving it is the caller's (a unix socket with SCM_RIGHTS, in the supervisor), and so is
//! telling the engine it is gone ([`Engine::departed`]), after which requests for it are for
//! the adopter ([`Engine::moved_away`]).
//!
//! The adopting side rebuilds the session from its [`SessionRecord`] ([`Engine::adopt`]): the
//! same sid, the queue, the layer above's state ([`Handler::import`]), and the websocket served
//! from the descriptor with the unread bytes first. Its heartbeat pings at once: the client's
//! own timer started with the last ping of the old process.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::engine::{Engine, Handler};
use crate::heartbeat::Heartbeat;
use crate::packet::Frame;
use crate::socket::{DisconnectReason, SessionRequest, Socket, Transport};

/// How a websocket's connection is taken back from hyper for a hand-off: its descriptor and
/// the bytes hyper had read past the upgrade request. Only the server that made the connection
/// knows its type (`hyper::upgrade::Upgraded::downcast`); `None` for one that cannot move
/// (a connection forwarded over a unix socket, say), which then drains.
#[derive(Clone)]
pub struct DetachStream(
    pub Arc<dyn Fn(hyper::upgrade::Upgraded) -> Option<(OwnedFd, Bytes)> + Send + Sync>,
);

impl std::fmt::Debug for DetachStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DetachStream(..)")
    }
}

/// A quiesced session on its way out: its state, and its websocket's connection.
#[derive(Debug)]
pub struct Departure {
    pub record: SessionRecord,
    /// The websocket's connection; `None` for a polling session.
    pub stream: Option<OwnedFd>,
}

/// Where departing sessions go, and what came of those that could not leave.
pub type Departures = tokio::sync::mpsc::UnboundedSender<Result<Departure, DepartureError>>;

/// Why a session did not leave; it is closed instead (its client reconnects, and recovers if
/// recovery is on).
#[derive(Debug, thiserror::Error)]
pub enum DepartureError {
    #[error("session {0}: in the middle of an upgrade or a fragmented message")]
    Busy(String),
    #[error("session {0}: the layer above could not export its state")]
    NotExported(String),
    #[error("session {0}: its queued frames could not be written: {1}")]
    Flush(String, String),
    #[error("session {0}: its connection cannot be detached from this process")]
    NotDetachable(String),
    #[error("session {0}: it ended before it could move")]
    Gone(String),
}

impl DepartureError {
    /// The session, if it was frozen for the move before it failed: it is closed for good
    /// here, and stays in the table until [`Engine::departed`].
    pub fn frozen(&self) -> Option<&str> {
        match self {
            DepartureError::Flush(sid, _) | DepartureError::NotDetachable(sid) => Some(sid),
            DepartureError::Busy(_) | DepartureError::NotExported(_) | DepartureError::Gone(_) => {
                None
            }
        }
    }
}

/// Everything an adopter needs to serve a session: what crosses from process to process.
/// Bounded and checked on decoding ([`SessionRecord::decode`]): a malformed record is refused,
/// whoever sent it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub sid: String,
    pub websocket: bool,
    /// The headers the session kept of the request that opened it (`session_headers`).
    pub headers: Vec<(String, Base64)>,
    pub uri: String,
    /// Frames queued for the client and not sent yet (polling).
    pub queued: Vec<RecordFrame>,
    /// Bytes read from the websocket and not decoded yet.
    pub unread: Base64,
    /// The layer above's state of the session.
    pub upper: Box<RawValue>,
}

/// A queued frame in a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordFrame {
    Text(String),
    Binary(Base64),
}

/// Bytes as base64 text in a record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Base64(pub Vec<u8>);

impl Serialize for Base64 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Base64)
            .map_err(|_| serde::de::Error::custom("not base64"))
    }
}

/// Why a record was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("the record is {0} bytes, above the limit of {MAX_RECORD_BYTES}")]
    TooLarge(usize),
    #[error("the record is not a session record: {0}")]
    Malformed(String),
    #[error("the record's {0} is out of bounds")]
    OutOfBounds(&'static str),
    #[error("a session {0} exists here already")]
    Duplicate(String),
    #[error("the session limit is reached")]
    Full,
    #[error("a websocket record without its connection, or a polling one with one")]
    StreamMismatch,
    #[error("the layer above refused the session: {0}")]
    Refused(String),
}

/// The largest record accepted: a full queue of large frames is refused rather than buffered.
pub const MAX_RECORD_BYTES: usize = 8 << 20;
const MAX_SID: usize = 64;
const MAX_HEADERS: usize = 32;
const MAX_HEADER_BYTES: usize = 8 << 10;
const MAX_URI: usize = 8 << 10;
/// Frame headers and a partial frame on top of the largest message.
const UNREAD_SLACK: usize = 1 << 10;

impl SessionRecord {
    pub fn encode(&self) -> Vec<u8> {
        // A record is made of strings and vectors only: it always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a record and checks it against this engine's limits (`max_payload`,
    /// `max_buffered_packets`).
    pub fn decode(
        bytes: &[u8],
        max_payload: usize,
        max_queued: usize,
    ) -> Result<SessionRecord, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(bytes.len()));
        }
        let record: SessionRecord =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(e.to_string()))?;
        let sid_ok = !record.sid.is_empty()
            && record.sid.len() <= MAX_SID
            && record
                .sid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !sid_ok {
            return Err(RecordError::OutOfBounds("sid"));
        }
        if record.headers.len() > MAX_HEADERS
            || record
                .headers
                .iter()
                .any(|(name, value)| name.len() + value.0.len() > MAX_HEADER_BYTES)
        {
            return Err(RecordError::OutOfBounds("headers"));
        }
        if record.uri.len() > MAX_URI || record.uri.parse::<Uri>().is_err() {
            return Err(RecordError::OutOfBounds("uri"));
        }
        if record.queued.len() > max_queued {
            return Err(RecordError::OutOfBounds("queue"));
        }
        if record.unread.0.len() > max_payload.saturating_add(UNREAD_SLACK) {
            return Err(RecordError::OutOfBounds("unread bytes"));
        }
        if record.websocket && !record.queued.is_empty() {
            // A websocket's queue was written to its client before it left.
            return Err(RecordError::OutOfBounds("websocket queue"));
        }
        Ok(record)
    }

    fn request(&self) -> Result<SessionRequest, RecordError> {
        let mut headers = HeaderMap::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| RecordError::OutOfBounds("header name"))?;
            let value = HeaderValue::from_bytes(&value.0)
                .map_err(|_| RecordError::OutOfBounds("header value"))?;
            headers.append(name, value);
        }
        let uri = self
            .uri
            .parse()
            .map_err(|_| RecordError::OutOfBounds("uri"))?;
        Ok(SessionRequest { headers, uri })
    }

    fn frames(&self) -> Vec<Frame> {
        self.queued
            .iter()
            .map(|frame| match frame {
                RecordFrame::Text(text) => Frame::Text(text.as_str().into()),
                RecordFrame::Binary(data) => Frame::Binary(Bytes::from(data.0.clone())),
            })
            .collect()
    }
}

fn record_frames(frames: Vec<Frame>) -> Vec<RecordFrame> {
    frames
        .into_iter()
        .map(|frame| match frame {
            Frame::Text(text) => RecordFrame::Text(text.as_str().to_owned()),
            Frame::Binary(data) => RecordFrame::Binary(Base64(data.to_vec())),
        })
        .collect()
}

impl<H: Handler> Engine<H> {
    /// Asks every session to leave through `departures`; returns how many were asked. Each
    /// sends exactly one outcome: a departure, or why it did not leave (it could not, or it
    /// ended first). Once called, requests for sessions not here are for the adopter (see
    /// [`Engine::moved_away`]).
    ///
    /// `polling`: whether long-polling sessions leave too; only when requests for them will
    /// reach the adopter (or this process, which passes them on while it lives). Otherwise
    /// they stay, to drain, as do sessions of external transports, whose connections are
    /// not this crate's.
    pub fn hand_off_all(self: &Arc<Self>, departures: Departures, polling: bool) -> usize {
        if self.departures.set(departures).is_err() {
            return 0;
        }
        let sessions: Vec<_> = match self.sessions.read() {
            Ok(sessions) => sessions.values().cloned().collect(),
            Err(_) => return 0,
        };
        let mut asked = 0;
        let mut websockets = std::collections::VecDeque::new();
        for socket in sessions {
            let websocket = socket.transport() == Transport::Websocket;
            let moves = !socket.is_external() && (websocket || polling);
            if !moves || socket.is_closed() || socket.handing_off.load(Ordering::Acquire) {
                continue;
            }
            asked += 1;
            if websocket {
                websockets.push_back(socket);
            } else {
                socket.handing_off.store(true, Ordering::Release);
                tokio::spawn(hand_off_polling(self.clone(), socket));
            }
        }
        // A few websockets at a time: each stays frozen only while the few before it move,
        // not while every session of the process does (the events it misses meanwhile are
        // replayed from its store, which keeps only so many).
        if let Ok(mut waiting) = self.waiting.lock() {
            *waiting = websockets;
        }
        for _ in 0..HAND_OFF_WINDOW {
            self.ask_next_to_leave();
        }
        asked
    }

    /// Asks the next waiting websocket session to leave (its task takes the turn at its next
    /// packet boundary): the caller of [`Engine::hand_off_all`] calls it once per outcome it
    /// is done with, so that a few sessions at a time are frozen. One that ended meanwhile
    /// says so, and the next is asked.
    pub fn ask_next_to_leave(&self) {
        loop {
            let Some(socket) = self.waiting.lock().ok().and_then(|mut w| w.pop_front()) else {
                return;
            };
            if socket.handing_off.swap(true, Ordering::AcqRel) {
                continue;
            }
            if socket.is_closed() {
                socket.handing_off.store(false, Ordering::Release);
                if let Some(departures) = self.departures.get() {
                    let _ = departures.send(Err(DepartureError::Gone(socket.id().to_owned())));
                }
                continue;
            }
            socket.queue.ready.wake();
            return;
        }
    }

    /// Freezes a quiesced session: the layer above exports its state and the session closes
    /// (for hand-off) under whatever the layer above must hold for that (see
    /// [`Handler::export`]). `None` when the layer above cannot export it: the session is then
    /// left open, for the caller to close as a drain would.
    pub(crate) fn freeze(&self, socket: &Arc<Socket<H::Data>>) -> Option<Box<RawValue>> {
        let close = || socket.close(DisconnectReason::HandOff);
        let upper = self.handler.export(socket, &close)?;
        // The layer above closed it; a close for another reason first means the session is
        // gone anyway.
        (socket.close_reason() == Some(DisconnectReason::HandOff)).then_some(upper)
    }

    /// The record of a frozen session.
    pub(crate) fn record(
        &self,
        socket: &Socket<H::Data>,
        queued: Vec<Frame>,
        unread: Vec<u8>,
        upper: Box<RawValue>,
    ) -> SessionRecord {
        SessionRecord {
            sid: socket.id().to_owned(),
            websocket: socket.transport() == Transport::Websocket,
            headers: socket
                .headers()
                .iter()
                .map(|(name, value)| (name.as_str().to_owned(), Base64(value.as_bytes().to_vec())))
                .collect(),
            uri: socket.uri().to_string(),
            queued: record_frames(queued),
            unread: Base64(unread),
            upper,
        }
    }

    /// Sends the one outcome of [`Engine::hand_off_all`] for `socket`; the first said counts.
    pub(crate) fn depart(
        &self,
        socket: &Socket<H::Data>,
        outcome: Result<Departure, DepartureError>,
    ) {
        if !socket.handing_off.swap(false, Ordering::AcqRel) {
            return;
        }
        if let Some(departures) = self.departures.get() {
            let _ = departures.send(outcome);
        }
    }

    /// A session asked to leave that ended before it could (its client went away, its
    /// upgrade failed): its outcome all the same, so that the hand-off does not wait for it.
    pub(crate) fn ended_before_departure(&self, socket: &Socket<H::Data>) {
        let sid = socket.id().to_owned();
        self.depart(socket, Err(DepartureError::Gone(sid)));
    }

    /// A session handed off (to its adopter, or not: then its client reconnects) leaves the
    /// table; requests for it are now the adopter's ([`Engine::moved_away`]).
    pub fn departed(&self, sid: &str) {
        if let Ok(mut moved) = self.moved.lock() {
            moved.insert(sid.into());
        }
        let socket = match self.sessions.write() {
            Ok(mut sessions) => sessions.remove(sid),
            Err(_) => None,
        };
        if let Some(socket) = socket {
            socket.transport_changes.notify_waiters();
        }
    }

    /// Whether a request for `sid` should go to the process this one handed its sessions to:
    /// sessions handed off are, as soon as they are out of the table; one on its way is
    /// waited for (up to `wait`). `false` before any hand-off, and for a session that ended
    /// here (a long-polling one that drained rather than moved: its client is told the
    /// session is unknown, and starts another).
    pub async fn moved_away(&self, sid: &str, wait: Duration) -> bool {
        if self.departures.get().is_none() {
            return false;
        }
        let Some(socket) = self.session(sid) else {
            return self.moved.lock().is_ok_and(|moved| moved.contains(sid));
        };
        // Asked to leave, or frozen and on its way.
        let leaving = socket.handing_off.load(Ordering::Acquire)
            || socket.close_reason() == Some(DisconnectReason::HandOff);
        if !leaving {
            return false;
        }
        let gone = async {
            loop {
                let changed = socket.transport_changes.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.session(sid).is_none() {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(wait, gone).await.is_ok()
    }

    /// Serves a session handed over by another process: same sid, its queue, the layer
    /// above's state, and its websocket (`stream`, with the record's unread bytes first).
    pub async fn adopt(
        self: &Arc<Self>,
        record: SessionRecord,
        stream: Option<OwnedFd>,
    ) -> Result<(), RecordError> {
        if record.websocket != stream.is_some() {
            return Err(RecordError::StreamMismatch);
        }
        let request = record.request()?;
        let transport = if record.websocket {
            Transport::Websocket
        } else {
            Transport::Polling
        };
        let socket = Arc::new(Socket::new(
            record.sid.clone(),
            transport,
            self.config.max_buffered_packets,
            None,
            request,
            H::Data::default(),
        ));
        {
            let mut sessions = self
                .sessions
                .write()
                .map_err(|_| RecordError::Refused("session table unavailable".into()))?;
            if sessions.contains_key(record.sid.as_str()) {
                return Err(RecordError::Duplicate(record.sid));
            }
            if sessions.len() >= self.config.max_sessions {
                return Err(RecordError::Full);
            }
            sessions.insert(socket.id_arc(), socket.clone());
        }
        for frame in record.frames() {
            let _ = socket.send(frame);
        }
        if let Err(refusal) = self.handler.import(&socket, &record.upper).await {
            if let Ok(mut sessions) = self.sessions.write() {
                sessions.remove(socket.id());
            }
            return Err(RecordError::Refused(refusal));
        }
        // The client's timer runs since the last ping of the old process: ping at once. The
        // layer above's deadline after the handshake is not kept: its time was the old
        // process's to count.
        let now = tokio::time::Instant::now();
        let opened = now.checked_sub(self.config.ping_interval).unwrap_or(now);
        let heartbeat = Heartbeat::new(opened, self.rhythm(), None);
        match stream {
            Some(stream) => {
                if let Err(error) = crate::transport::ws::adopt(
                    self,
                    socket.clone(),
                    stream,
                    record.unread.0,
                    heartbeat,
                ) {
                    socket.close(DisconnectReason::TransportClose);
                    return Err(RecordError::Refused(error.to_string()));
                }
            }
            None => {
                tokio::spawn(crate::engine::run_session(self.clone(), socket, heartbeat));
            }
        }
        Ok(())
    }
}

/// Websocket sessions frozen for the move at once (see [`Engine::ask_next_to_leave`]).
const HAND_OFF_WINDOW: usize = 16;

/// Quiesces a polling session and sends it off as state.
async fn hand_off_polling<H: Handler>(engine: Arc<Engine<H>>, socket: Arc<Socket<H::Data>>) {
    let sid = socket.id().to_owned();
    if socket.upgrading.load(Ordering::Acquire) {
        return engine.depart(&socket, Err(DepartureError::Busy(sid)));
    }
    // A POST in flight finishes first: its packets are handled here, their answers queued.
    let _in_order = socket.post_lock.lock().await;
    // A pending GET answers at once (with what is queued, or a noop) and gives the queue up.
    let mut outbox = loop {
        socket.transport_changes.notify_waiters();
        tokio::select! {
            outbox = socket.outbox.lock() => break outbox,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = socket.closed() => return,
        }
    };
    if socket.is_closed() {
        return;
    }
    let Some(upper) = engine.freeze(&socket) else {
        return engine.depart(&socket, Err(DepartureError::NotExported(sid)));
    };
    let mut queued = Vec::new();
    while let Some(frame) = outbox.try_next(&socket.queue) {
        queued.push(frame);
    }
    let record = engine.record(&socket, queued, Vec::new(), upper);
    engine.depart(
        &socket,
        Ok(Departure {
            record,
            stream: None,
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SessionRecord {
        SessionRecord {
            sid: "w1abcdefghijklmnopqrstuv".into(),
            websocket: false,
            headers: vec![("cookie".into(), Base64(b"session=1".to_vec()))],
            uri: "/socket.io/?EIO=4&transport=polling".into(),
            queued: vec![
                RecordFrame::Text("42[\"chat\",\"hi\"]".into()),
                RecordFrame::Binary(Base64(vec![0, 1, 255])),
            ],
            unread: Base64(vec![0x81, 0x85]),
            upper: RawValue::from_string(r#"{"sockets":[]}"#.into()).unwrap(),
        }
    }

    #[test]
    fn a_record_round_trips() {
        let record = record();
        let decoded = SessionRecord::decode(&record.encode(), 1000, 10).unwrap();
        assert_eq!(decoded.sid, record.sid);
        assert_eq!(decoded.headers, record.headers);
        assert_eq!(decoded.queued, record.queued);
        assert_eq!(decoded.unread, record.unread);
        assert_eq!(decoded.upper.get(), record.upper.get());
        let request = decoded.request().unwrap();
        assert_eq!(request.headers["cookie"], "session=1");
        assert_eq!(
            decoded.frames()[1],
            Frame::Binary(Bytes::from_static(&[0, 1, 255]))
        );
    }

    #[test]
    fn malformed_records_are_refused() {
        let bad = |edit: &dyn Fn(&mut SessionRecord)| {
            let mut record = record();
            edit(&mut record);
            SessionRecord::decode(&record.encode(), 1000, 10).unwrap_err()
        };
        assert_eq!(
            bad(&|r| r.sid = String::new()),
            RecordError::OutOfBounds("sid")
        );
        assert_eq!(
            bad(&|r| r.sid = "../x".into()),
            RecordError::OutOfBounds("sid")
        );
        assert_eq!(
            bad(&|r| r.sid = "a".repeat(65)),
            RecordError::OutOfBounds("sid")
        );
        assert_eq!(
            bad(&|r| r.uri = "not a uri".into()),
            RecordError::OutOfBounds("uri")
        );
        assert_eq!(
            bad(&|r| r.queued = vec![RecordFrame::Text("4".into()); 11]),
            RecordError::OutOfBounds("queue")
        );
        assert_eq!(
            bad(&|r| r.unread = Base64(vec![0; 1000 + UNREAD_SLACK + 1])),
            RecordError::OutOfBounds("unread bytes")
        );
        assert_eq!(
            bad(&|r| r.headers = vec![("x".into(), Base64(vec![b'a'; 9000]))]),
            RecordError::OutOfBounds("headers")
        );
        assert_eq!(
            bad(&|r| r.websocket = true),
            RecordError::OutOfBounds("websocket queue")
        );
        for junk in [&b""[..], b"{}", b"[1,2]", b"\xff\xfe", br#"{"sid":1}"#] {
            assert!(matches!(
                SessionRecord::decode(junk, 1000, 10),
                Err(RecordError::Malformed(_))
            ));
        }
        let huge = vec![b' '; MAX_RECORD_BYTES + 1];
        assert_eq!(
            SessionRecord::decode(&huge, 1000, 10).unwrap_err(),
            RecordError::TooLarge(MAX_RECORD_BYTES + 1)
        );
        let mut record = record();
        record.headers = vec![("bad name".into(), Base64(b"v".to_vec()))];
        let decoded = SessionRecord::decode(&record.encode(), 1000, 10).unwrap();
        assert_eq!(
            decoded.request().unwrap_err(),
            RecordError::OutOfBounds("header name")
        );
        let mut record = self::record();
        record.upper = RawValue::from_string("{}".into()).unwrap();
        // Binary junk in base64 fields is refused by the decoder.
        let text = String::from_utf8(record.encode())
            .unwrap()
            .replace("AAH/", "!!");
        assert!(matches!(
            SessionRecord::decode(text.as_bytes(), 1000, 10),
            Err(RecordError::Malformed(_))
        ));
    }
}

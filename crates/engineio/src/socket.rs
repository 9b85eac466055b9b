//! One Engine.IO session: its outgoing queue, its state, and how it ends.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use http::{HeaderMap, Uri};
use tokio::sync::{Mutex, Notify};

use crate::packet::Frame;
use crate::pending::PendingSlot;

/// The transport that currently carries a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Polling,
    Websocket,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Polling => "polling",
            Transport::Websocket => "websocket",
        }
    }
}

/// Why a session ended; given to [`crate::Handler::on_disconnect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent a close packet.
    ClientClose,
    /// The websocket closed or failed under us.
    TransportClose,
    /// No pong within `ping_timeout` of a ping.
    PingTimeout,
    /// The client sent bytes that are not a valid packet.
    PacketParsing,
    /// A polling body or websocket message above `max_payload`.
    PayloadTooLarge,
    /// A second GET (or POST) while one was pending: only one of each may be in flight.
    MultipleRequests,
    /// More than `max_buffered_packets` queued: the client does not read fast enough.
    SlowClient,
    /// The server closed the session (application request or shutdown).
    ServerClose,
    /// The session moved to another process, which serves it from now on (see
    /// [`crate::Engine::hand_off_all`]): for this process it ends, for its client it goes on.
    HandOff,
}

impl DisconnectReason {
    /// The wording Socket.IO clients and servers use for the same reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::ClientClose => "client namespace disconnect",
            DisconnectReason::TransportClose => "transport close",
            DisconnectReason::PingTimeout => "ping timeout",
            DisconnectReason::PacketParsing => "parse error",
            DisconnectReason::PayloadTooLarge => "payload too large",
            DisconnectReason::MultipleRequests => "transport error",
            DisconnectReason::SlowClient => "slow client",
            DisconnectReason::ServerClose => "server shutting down",
            DisconnectReason::HandOff => "handed off",
        }
    }

    /// A name for metrics and logs: `slow_client`, `ping_timeout`, ...
    pub fn name(self) -> &'static str {
        match self {
            DisconnectReason::ClientClose => "client_close",
            DisconnectReason::TransportClose => "transport_close",
            DisconnectReason::PingTimeout => "ping_timeout",
            DisconnectReason::PacketParsing => "parse_error",
            DisconnectReason::PayloadTooLarge => "payload_too_large",
            DisconnectReason::MultipleRequests => "multiple_requests",
            DisconnectReason::SlowClient => "slow_client",
            DisconnectReason::ServerClose => "server_close",
            DisconnectReason::HandOff => "handed_off",
        }
    }
}

/// Why a frame could not be queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("the session is closed")]
    Closed,
    #[error("the client is too slow: its queue is full, so its session was closed")]
    Full,
}

/// The frames waiting for the client. A plain deque under a lock, not a channel: an idle
/// session holds no buffer at all (a channel keeps a block of slots for good), and the deque
/// is given back once it has been emptied after a burst.
pub(crate) struct Queue {
    frames: std::sync::Mutex<VecDeque<Frame>>,
    /// The one transport that writes (whoever holds the outbox) waits here; woken by every
    /// frame queued and by the session's close. A waker slot, not a `Notify`: waiting on it
    /// needs no future, so the websocket's task keeps nothing for it while idle.
    pub(crate) ready: AtomicWaker,
    limit: usize,
}

/// Capacity an emptied queue keeps; more is given back.
const IDLE_CAPACITY: usize = 4;

impl Queue {
    fn new(limit: usize) -> Self {
        Queue {
            frames: std::sync::Mutex::new(VecDeque::new()),
            ready: AtomicWaker::new(),
            limit: limit.max(1),
        }
    }

    fn frames(&self) -> std::sync::MutexGuard<'_, VecDeque<Frame>> {
        self.frames
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a frame; gives it back when `limit` frames are already waiting.
    fn push(&self, frame: Frame) -> Result<(), Frame> {
        {
            let mut frames = self.frames();
            if frames.len() >= self.limit {
                return Err(frame);
            }
            frames.push_back(frame);
        }
        self.ready.wake();
        Ok(())
    }

    fn pop(&self) -> Option<Frame> {
        let mut frames = self.frames();
        let frame = frames.pop_front();
        if frames.is_empty() && frames.capacity() > IDLE_CAPACITY {
            *frames = VecDeque::new();
        }
        frame
    }
}

/// The right to write to the client: whoever holds the session's `outbox` lock is the one
/// transport that writes, the pending polling GET or the websocket writer. Holding it is how
/// "one GET at a time" and "websocket takes over after the upgrade" are enforced.
pub(crate) struct Outbox {
    /// A frame that did not fit in the last polling response; it goes first in the next one.
    carry: Option<Frame>,
}

impl Outbox {
    /// The next frame for the client, once there is one.
    pub(crate) async fn next(&mut self, queue: &Queue) -> Frame {
        std::future::poll_fn(|cx| self.poll_next(queue, cx)).await
    }

    fn poll_next(&mut self, queue: &Queue, cx: &mut Context<'_>) -> Poll<Frame> {
        if let Some(frame) = self.try_next(queue) {
            return Poll::Ready(frame);
        }
        queue.ready.register(cx.waker());
        // A frame queued after the registration wakes the task; one queued before it is
        // found here.
        match self.try_next(queue) {
            Some(frame) => Poll::Ready(frame),
            None => Poll::Pending,
        }
    }

    pub(crate) fn try_next(&mut self, queue: &Queue) -> Option<Frame> {
        self.carry.take().or_else(|| queue.pop())
    }

    pub(crate) fn put_back(&mut self, frame: Frame) {
        self.carry = Some(frame);
    }
}

/// What a session keeps of the request that opened it: the headers the layer above reads
/// (`session_headers`) and the target. One per session, shared by the layer above's views of
/// it (a Socket.IO handshake per namespace).
#[derive(Debug)]
pub struct SessionRequest {
    pub headers: HeaderMap,
    pub uri: Uri,
}

/// An Engine.IO session, shared by its transports, its heartbeat task and the layer above.
/// `D` is the state the layer above keeps per session (Socket.IO keeps its namespaces here).
pub struct Socket<D> {
    id: Arc<str>,
    pub(crate) queue: Queue,
    pub(crate) outbox: Mutex<Outbox>,
    transport: AtomicU8,
    /// Set while a websocket is probing this polling session, so a second probe is refused.
    pub(crate) upgrading: AtomicBool,
    /// Set when the session is asked to move to another process (see `handoff.rs`): its
    /// transport stops reading at the next packet boundary.
    pub(crate) handing_off: AtomicBool,
    /// Carried by a transport of another crate ([`crate::ExternalWebSocket`]), which cannot
    /// hand its connection off.
    pub(crate) external: AtomicBool,
    /// Serialises polling POSTs: packets of one client are handled in order.
    pub(crate) post_lock: Mutex<()>,
    /// Woken when the session's transports change hands: a websocket probes it (a pending GET
    /// answers at once, so that the client can pause polling and finish the upgrade), that
    /// upgrade ends either way, or a GET takes the session.
    pub(crate) transport_changes: Notify,
    /// Woken by every pong; the heartbeat waits on it.
    pub(crate) pong: Notify,
    /// Set once, by the close; read without a lock on the send path (a broadcast makes one
    /// check per recipient).
    is_closed: AtomicBool,
    /// Wakes whoever waits in [`Socket::closed`]. A `Notify` in place rather than a
    /// cancellation token, which would cost every session an allocation of its own.
    closing: Notify,
    close_reason: OnceLock<DisconnectReason>,
    /// The session's place among those not admitted yet; given back on admission or close.
    pending: std::sync::Mutex<Option<PendingSlot>>,
    /// Shared: the layer above keeps it too (a Socket.IO handshake per namespace).
    request: Arc<SessionRequest>,
    /// The upper layer's per-session state.
    pub data: D,
}

impl<D> Socket<D> {
    pub(crate) fn new(
        id: String,
        transport: Transport,
        queue: usize,
        pending: Option<PendingSlot>,
        request: SessionRequest,
        data: D,
    ) -> Self {
        Socket {
            id: id.into(),
            queue: Queue::new(queue),
            outbox: Mutex::new(Outbox { carry: None }),
            transport: AtomicU8::new(transport as u8),
            upgrading: AtomicBool::new(false),
            handing_off: AtomicBool::new(false),
            external: AtomicBool::new(false),
            post_lock: Mutex::new(()),
            transport_changes: Notify::new(),
            pong: Notify::new(),
            is_closed: AtomicBool::new(false),
            closing: Notify::new(),
            close_reason: OnceLock::new(),
            pending: std::sync::Mutex::new(pending),
            request: Arc::new(request),
            data,
        }
    }

    /// Whether the session is on its way to another process.
    pub fn is_handing_off(&self) -> bool {
        self.handing_off.load(Ordering::Acquire)
    }

    pub(crate) fn is_external(&self) -> bool {
        self.external.load(Ordering::Acquire)
    }

    /// The session id the client sends back as `sid`.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn id_arc(&self) -> Arc<str> {
        self.id.clone()
    }

    pub fn transport(&self) -> Transport {
        if self.transport.load(Ordering::Acquire) == Transport::Websocket as u8 {
            Transport::Websocket
        } else {
            Transport::Polling
        }
    }

    pub(crate) fn set_transport(&self, transport: Transport) {
        self.transport.store(transport as u8, Ordering::Release);
    }

    /// A websocket's upgrade of this session ended, done or not (the transport says which).
    pub(crate) fn end_upgrade(&self) {
        self.upgrading.store(false, Ordering::Release);
        self.transport_changes.notify_waiters();
    }

    /// The layer above accepts this client (Socket.IO: it joined a namespace): from now on the
    /// session no longer counts against the caps on pending sessions. Idempotent.
    pub fn admit(&self) {
        self.release_pending();
    }

    /// Whether the session still waits to be admitted.
    pub fn is_pending(&self) -> bool {
        self.pending
            .lock()
            .map(|slot| slot.is_some())
            .unwrap_or(false)
    }

    pub(crate) fn release_pending(&self) {
        let slot = self.pending.lock().ok().and_then(|mut slot| slot.take());
        drop(slot);
    }

    /// Headers of the request that opened the session, those of `session_headers` only
    /// (by default cookie, user agent, forwarded-for).
    pub fn headers(&self) -> &HeaderMap {
        &self.request.headers
    }

    /// The URI of the request that opened the session (its query is the client's `query`).
    pub fn uri(&self) -> &Uri {
        &self.request.uri
    }

    /// What the session keeps of the request that opened it, shared rather than copied.
    pub fn request(&self) -> Arc<SessionRequest> {
        self.request.clone()
    }

    /// Queues a frame for the client without waiting. A client whose queue is full is too slow
    /// to keep; its session is closed rather than letting it pin unbounded memory.
    pub fn send(&self, frame: Frame) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        match self.queue.push(frame) {
            Ok(()) => {
                crate::counters::sent();
                Ok(())
            }
            Err(_) => {
                self.close(DisconnectReason::SlowClient);
                Err(SendError::Full)
            }
        }
    }

    /// Queues a frame the client may miss (volatile): dropped, not fatal, when the queue is
    /// full. Returns whether it was queued.
    pub fn send_volatile(&self, frame: Frame) -> bool {
        let queued = !self.is_closed() && self.queue.push(frame).is_ok();
        if queued {
            crate::counters::sent();
        }
        queued
    }

    /// Ends the session. Idempotent: the first reason wins. Frames already queued are still
    /// flushed by the transport before it closes.
    pub fn close(&self, reason: DisconnectReason) {
        if self.close_reason.set(reason).is_ok() {
            crate::counters::closed(reason);
            tracing::debug!(sid = %self.id, reason = reason.as_str(), "session closing");
            self.is_closed.store(true, Ordering::Release);
            self.closing.notify_waiters();
            // The websocket writer waits on the queue alone (see `Socket::poll_next_frame`).
            self.queue.ready.wake();
        }
    }

    /// The next frame for the client, once there is one; `None` once the session is closed
    /// and nothing is queued. A writer waiting here needs no second future for the close.
    pub(crate) fn poll_next_frame(
        &self,
        outbox: &mut Outbox,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Frame>> {
        match outbox.poll_next(&self.queue, cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
            // Registered for the close's wake-up before looking: none is missed.
            Poll::Pending if self.is_closed() => Poll::Ready(outbox.try_next(&self.queue)),
            Poll::Pending => Poll::Pending,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.is_closed.load(Ordering::Acquire)
    }

    /// Completes when the session has been closed.
    pub async fn closed(&self) {
        // Made before the check: a close after it wakes this future even though it has not
        // been polled yet (`notify_waiters` reaches every `Notified` already made).
        let closing = self.closing.notified();
        if self.is_closed() {
            return;
        }
        closing.await
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<DisconnectReason> {
        self.close_reason.get().copied()
    }
}

impl<D> std::fmt::Debug for Socket<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.id)
            .field("transport", &self.transport())
            .field("closed", &self.is_closed())
            .finish()
    }
}

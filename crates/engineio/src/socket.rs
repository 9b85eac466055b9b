//! One Engine.IO session: its outgoing queue, its state, and how it ends.

use std::collections::VecDeque;
use std::os::fd::RawFd;
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
///
/// The same lock decides who writes to a websocket: while its task waits with nothing to
/// write (`Waiting::writer_idle`), a frame sent to one client goes straight to the connection
/// from the code that sent it ([`Queue::push_now`]): no task is woken and no frame queued,
/// which is most of what a delivery costs in user space. As soon as the task has something of
/// its own to do it takes the right back under the lock, so writes never interleave.
pub(crate) struct Queue {
    waiting: std::sync::Mutex<Waiting>,
    /// The one transport that writes (whoever holds the outbox) waits here; woken by every
    /// frame queued and by the session's close. A waker slot, not a `Notify`: waiting on it
    /// needs no future, so the websocket's task keeps nothing for it while idle.
    pub(crate) ready: AtomicWaker,
    limit: usize,
}

struct Waiting {
    frames: VecDeque<Frame>,
    /// The end of a frame written straight to the connection in part (the kernel's send
    /// buffer was nearly full): the task writes it before anything else.
    unwritten: Vec<u8>,
    /// The websocket's TCP connection, while a task carries it and the server that accepted
    /// it said which descriptor it is (see [`crate::TcpConnection`]).
    connection: Option<RawFd>,
    /// Whether that task waits with nothing to write: only then may a frame go straight to
    /// the connection. Set by the task as it parks, cleared by the task before it writes or
    /// lets go of the connection, and by a straight write that could not write everything.
    writer_idle: bool,
    /// Frames are queued for a flush pass (see [`crate::FlushPass`]) and the writer was not
    /// woken for them: the pass writes them, or wakes the writer.
    flush_due: bool,
}

impl Waiting {
    /// The connection to write to now: the writer waits, idle, on one.
    fn idle_connection(&self) -> Option<RawFd> {
        self.connection.filter(|_| self.writer_idle)
    }

    /// Queues a frame; gives it back when `limit` frames are already waiting.
    fn enqueue(&mut self, frame: Frame, limit: usize) -> Result<(), Frame> {
        if self.frames.len() >= limit {
            return Err(frame);
        }
        self.frames.push_back(frame);
        Ok(())
    }

    /// The first frame queued; a queue emptied after a burst gives its room back.
    fn pop_front(&mut self) -> Option<Frame> {
        let frame = self.frames.pop_front();
        if self.frames.is_empty() && self.frames.capacity() > IDLE_CAPACITY {
            self.frames = VecDeque::new();
        }
        frame
    }
}

/// What the websocket's writer takes from the queue.
pub(crate) enum Outgoing {
    Frame(Frame),
    /// See [`Waiting::unwritten`].
    Unwritten(Vec<u8>),
}

/// Capacity an emptied queue keeps; more is given back.
const IDLE_CAPACITY: usize = 4;

impl Queue {
    fn new(limit: usize) -> Self {
        Queue {
            waiting: std::sync::Mutex::new(Waiting {
                frames: VecDeque::new(),
                unwritten: Vec::new(),
                connection: None,
                writer_idle: false,
                flush_due: false,
            }),
            ready: AtomicWaker::new(),
            limit: limit.max(1),
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes a frame straight to the websocket's connection when its writer is idle, and
    /// queues it for the writer otherwise (or what the kernel did not take of it); gives it
    /// back when `limit` frames are already waiting.
    fn push_now(&self, frame: Frame) -> Result<(), Frame> {
        let mut waiting = self.waiting();
        let Some(fd) = waiting.idle_connection() else {
            waiting.enqueue(frame, self.limit)?;
            drop(waiting);
            self.ready.wake();
            return Ok(());
        };
        if waiting.flush_due {
            // Behind frames a flush pass is about to write: it writes this one too.
            return waiting.enqueue(frame, self.limit);
        }
        // Under the lock: the task cannot take the connection back, or close it, meanwhile.
        match crate::transport::ws::write_now(fd, &frame) {
            Ok(None) => return Ok(()),
            Ok(Some(unwritten)) => waiting.unwritten = unwritten,
            // Full, or failed: the task writes it, and meets the error if there is one.
            Err(_) => waiting.frames.push_back(frame),
        }
        waiting.writer_idle = false;
        drop(waiting);
        self.ready.wake();
        Ok(())
    }

    /// Queues a frame for a flush pass when the writer is idle, without waking it; wakes it
    /// otherwise, as [`Queue::push_now`] does. `Ok(true)`: the caller is to schedule a pass for
    /// this session (the first frame it owes one).
    fn push_deferred(&self, frame: Frame) -> Result<bool, Frame> {
        let mut waiting = self.waiting();
        waiting.enqueue(frame, self.limit)?;
        if waiting.idle_connection().is_some() {
            return Ok(!std::mem::replace(&mut waiting.flush_due, true));
        }
        drop(waiting);
        self.ready.wake();
        Ok(false)
    }

    /// The flush pass's turn: writes everything queued to the connection in one write while
    /// the writer is idle; wakes the writer for what the kernel did not take, or when it is
    /// not idle (it writes them itself).
    fn flush(&self, scratch: &mut Vec<u8>) {
        let mut waiting = self.waiting();
        waiting.flush_due = false;
        if waiting.frames.is_empty() {
            return;
        }
        if let Some(fd) = waiting.idle_connection() {
            scratch.clear();
            crate::transport::ws::frame_all(scratch, &waiting.frames);
            let sent = crate::transport::ws::send_now(fd, [&scratch[..], &[]]);
            if let Ok(unwritten) = sent {
                waiting.frames = VecDeque::new();
                let Some(unwritten) = unwritten else {
                    return;
                };
                waiting.unwritten = unwritten;
            }
            waiting.writer_idle = false;
        }
        drop(waiting);
        self.ready.wake();
    }

    fn pop(&self) -> Option<Frame> {
        self.waiting().pop_front()
    }

    /// The websocket's next write, for its task: what a straight write left, then the queue.
    /// The task writes next, so nothing else may.
    fn next_outgoing(&self) -> Option<Outgoing> {
        let mut waiting = self.waiting();
        waiting.writer_idle = false;
        waiting.flush_due = false;
        if !waiting.unwritten.is_empty() {
            return Some(Outgoing::Unwritten(std::mem::take(&mut waiting.unwritten)));
        }
        waiting.pop_front().map(Outgoing::Frame)
    }

    /// The websocket's task parks: frames may go straight to its connection until it takes
    /// the right back. Not when something is left to write: it comes first.
    pub(crate) fn writer_parks(&self) -> Option<Outgoing> {
        let mut waiting = self.waiting();
        if waiting.unwritten.is_empty() && waiting.frames.is_empty() {
            waiting.writer_idle = waiting.connection.is_some();
            return None;
        }
        drop(waiting);
        self.next_outgoing()
    }

    /// The websocket's task is about to write, or read and handle a packet: nothing goes
    /// straight to the connection until it parks again.
    pub(crate) fn writer_busy(&self) {
        self.waiting().writer_idle = false;
    }

    /// A task carries the websocket on connection `fd` (`None`: one it cannot write to
    /// directly) from now on; it calls this with `None` before it lets go of the connection.
    pub(crate) fn carried_on(&self, fd: Option<RawFd>) {
        let mut waiting = self.waiting();
        waiting.connection = fd;
        waiting.writer_idle = false;
    }
}

/// Clears the connection of a websocket's queue when the task that carries it ends, however
/// it ends (a dropped task too): declared after the websocket, it is dropped before it, so no
/// frame is written to a descriptor closed, or reused, meanwhile.
pub(crate) struct CarriedConnection<'a, D>(pub(crate) &'a Arc<Socket<D>>);

impl<D> std::ops::Deref for CarriedConnection<'_, D> {
    type Target = Arc<Socket<D>>;

    fn deref(&self) -> &Self::Target {
        self.0
    }
}

impl<D> Drop for CarriedConnection<'_, D> {
    fn drop(&mut self) {
        self.0.queue.carried_on(None);
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

    /// Sends a frame to the client without waiting: straight to its websocket's connection
    /// when its writer is idle (see [`Queue`]), queued for the writer otherwise. A client
    /// whose queue is full is too slow to keep; its session is closed rather than letting it
    /// pin unbounded memory.
    pub fn send(&self, frame: Frame) -> Result<(), SendError> {
        self.offer(frame, false, Queue::push_now)
    }

    /// Sends a frame the client may miss (volatile): dropped, not fatal, when the queue is
    /// full. Returns whether it was sent.
    pub fn send_volatile(&self, frame: Frame) -> bool {
        self.offer(frame, true, Queue::push_now).is_ok()
    }

    /// Queues a frame for a broadcast to many clients: a writer that is idle is not woken,
    /// a [`crate::FlushPass`] writes what is queued for it, several frames at once when
    /// broadcasts come faster than passes. `Ok(true)`: the caller is to give the session to its
    /// pass (see [`crate::FlushPass::schedule`]). `volatile` as in [`Socket::send_volatile`].
    pub fn send_deferred(&self, frame: Frame, volatile: bool) -> Result<bool, SendError> {
        self.offer(frame, volatile, Queue::push_deferred)
    }

    /// The flush pass's turn for this session (see [`crate::FlushPass`]); `scratch` is the
    /// pass's buffer.
    pub(crate) fn flush(&self, scratch: &mut Vec<u8>) {
        self.queue.flush(scratch);
    }

    /// Gives a frame to the queue by `push`, for an open session, and counts it. A full queue
    /// closes the session unless the frame is `volatile` (then only that frame is dropped).
    fn offer<T>(
        &self,
        frame: Frame,
        volatile: bool,
        push: impl FnOnce(&Queue, Frame) -> Result<T, Frame>,
    ) -> Result<T, SendError> {
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        match push(&self.queue, frame) {
            Ok(pushed) => {
                crate::counters::sent();
                Ok(pushed)
            }
            Err(_) => {
                if !volatile {
                    self.close(DisconnectReason::SlowClient);
                }
                Err(SendError::Full)
            }
        }
    }

    /// Ends the session. Idempotent: the first reason wins. Frames already queued are still
    /// flushed by the transport before it closes.
    pub fn close(&self, reason: DisconnectReason) {
        if self.close_reason.set(reason).is_ok() {
            crate::counters::closed(reason);
            tracing::debug!(sid = %self.id, reason = reason.as_str(), "session closing");
            self.is_closed.store(true, Ordering::Release);
            self.closing.notify_waiters();
            // The websocket writer waits on the queue alone (see `Socket::poll_next_outgoing`).
            self.queue.ready.wake();
        }
    }

    /// The websocket's next write, if there is one now: what the last polling response could
    /// not take, what a straight write left, then the queue.
    pub(crate) fn take_outgoing(&self, outbox: &mut Outbox) -> Option<Outgoing> {
        match outbox.carry.take() {
            Some(frame) => {
                self.queue.writer_busy();
                Some(Outgoing::Frame(frame))
            }
            None => self.queue.next_outgoing(),
        }
    }

    /// The websocket's next write, once there is one; `None` once the session is closed and
    /// nothing is left to write. A writer waiting here needs no second future for the close.
    /// While it waits, frames go straight to its connection (see [`Queue`]).
    pub(crate) fn poll_next_outgoing(
        &self,
        outbox: &mut Outbox,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Outgoing>> {
        if let Some(outgoing) = self.take_outgoing(outbox) {
            return Poll::Ready(Some(outgoing));
        }
        self.queue.ready.register(cx.waker());
        // A frame queued after the registration wakes the task; one queued before it is
        // found here. Registered for the close's wake-up before looking: none is missed.
        if self.is_closed() {
            return Poll::Ready(self.queue.next_outgoing());
        }
        match self.queue.writer_parks() {
            Some(outgoing) => Poll::Ready(Some(outgoing)),
            None => Poll::Pending,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// A queue whose websocket's connection is one end of a socket pair; the other end, where
    /// the client would read.
    fn carried_queue() -> (Queue, UnixStream, UnixStream) {
        let (server, client) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        client.set_nonblocking(true).unwrap();
        let queue = Queue::new(100);
        queue.carried_on(Some(server.as_raw_fd()));
        (queue, server, client)
    }

    /// What the client can read now.
    fn readable(client: &mut UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = client.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    fn frame_of(outgoing: Option<Outgoing>) -> Frame {
        match outgoing {
            Some(Outgoing::Frame(frame)) => frame,
            _ => panic!("no queued frame"),
        }
    }

    #[test]
    fn a_frame_for_an_idle_writer_goes_straight_to_the_connection() {
        let (queue, _server, mut client) = carried_queue();
        assert!(queue.writer_parks().is_none());
        queue.push_now(Frame::message("hi")).unwrap();
        assert!(queue.waiting().frames.is_empty(), "the frame was queued");
        assert_eq!(readable(&mut client), [0x81, 3, b'4', b'h', b'i']);
        queue.push_now(Frame::binary(vec![1, 2].into())).unwrap();
        assert_eq!(readable(&mut client), [0x82, 2, 1, 2]);
    }

    #[test]
    fn a_writer_that_is_not_idle_gets_the_frame_queued() {
        let (queue, _server, mut client) = carried_queue();
        // Never parked: busy.
        queue.push_now(Frame::message("a")).unwrap();
        // Parked, then busy again (a packet from the client to handle).
        assert_eq!(frame_of(queue.writer_parks()), Frame::message("a"));
        assert!(queue.writer_parks().is_none());
        queue.writer_busy();
        queue.push_now(Frame::message("b")).unwrap();
        // Parked, but its connection let go of.
        assert_eq!(frame_of(queue.writer_parks()), Frame::message("b"));
        queue.carried_on(None);
        assert!(queue.writer_parks().is_none());
        queue.push_now(Frame::message("c")).unwrap();
        assert_eq!(frame_of(queue.next_outgoing()), Frame::message("c"));
        assert!(readable(&mut client).is_empty(), "a frame went straight");
    }

    #[test]
    fn a_straight_frame_never_overtakes_a_queued_one() {
        let (queue, _server, mut client) = carried_queue();
        assert!(queue.writer_parks().is_none());
        // A broadcast to many queues for a pass, which has not run yet.
        assert_eq!(queue.push_deferred(Frame::message("first")), Ok(true));
        queue.push_now(Frame::message("second")).unwrap();
        assert!(readable(&mut client).is_empty(), "the second went ahead");
        assert_eq!(frame_of(queue.next_outgoing()), Frame::message("first"));
        assert_eq!(frame_of(queue.next_outgoing()), Frame::message("second"));
    }

    #[test]
    fn what_the_kernel_did_not_take_goes_first_then_the_queue() {
        let (queue, _server, mut client) = carried_queue();
        assert!(queue.writer_parks().is_none());
        // More than a socket buffer holds: the kernel takes a part of it.
        let payload = "x".repeat(4 << 20);
        queue.push_now(Frame::message(&payload)).unwrap();
        queue.push_now(Frame::message("next")).unwrap();
        let sent = readable(&mut client);
        let Some(Outgoing::Unwritten(rest)) = queue.next_outgoing() else {
            panic!("nothing left of a frame larger than the socket's buffer");
        };
        // Header: 0x81, 127, 8 bytes of length; then `4` and the payload.
        assert_eq!(sent.len() + rest.len(), 10 + 1 + payload.len());
        assert_eq!(&sent[..2], [0x81, 127]);
        assert_eq!(frame_of(queue.next_outgoing()), Frame::message("next"));
    }

    #[test]
    fn a_flush_pass_writes_what_a_broadcast_queued_in_one_write() {
        let (queue, _server, mut client) = carried_queue();
        assert!(queue.writer_parks().is_none());
        assert_eq!(queue.push_deferred(Frame::message("a")), Ok(true));
        // Owed one pass already.
        assert_eq!(queue.push_deferred(Frame::message("b")), Ok(false));
        // A frame for this client alone waits behind them, for the same pass.
        queue.push_now(Frame::message("c")).unwrap();
        assert!(readable(&mut client).is_empty(), "written before the pass");
        queue.flush(&mut Vec::new());
        assert_eq!(
            readable(&mut client),
            [0x81, 2, b'4', b'a', 0x81, 2, b'4', b'b', 0x81, 2, b'4', b'c']
        );
        // Idle again: the next frame goes straight.
        queue.push_now(Frame::message("d")).unwrap();
        assert_eq!(readable(&mut client), [0x81, 2, b'4', b'd']);
    }

    #[test]
    fn a_busy_writer_is_woken_for_a_broadcast_and_owes_no_pass() {
        let (queue, _server, mut client) = carried_queue();
        assert_eq!(queue.push_deferred(Frame::message("a")), Ok(false));
        queue.flush(&mut Vec::new());
        assert!(
            readable(&mut client).is_empty(),
            "the pass wrote for a busy writer"
        );
        assert_eq!(frame_of(queue.next_outgoing()), Frame::message("a"));
    }
}

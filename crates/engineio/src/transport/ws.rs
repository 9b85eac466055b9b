//! The websocket transport: sessions that start on a websocket, and polling sessions upgraded to
//! one (`2probe` / `3probe`, a noop to end the pending GET, then `5`).

use std::future::Future;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::Data;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;
use tokio_util::either::Either;

use super::websocket::{frame_head, put_frame, WebSocket};
use crate::engine::{error_response, Body, Engine, ErrorCode, Handler, SessionTime};
use crate::heartbeat::Heartbeat;
use crate::packet::{Frame, Message, Packet};
use crate::socket::{
    CarriedConnection, DisconnectReason, Outbox, Outgoing, Queue, Socket, Transport,
};

/// The websocket of a session of ours.
pub(crate) type Ws = WebSocket<WsIo>;

/// The connection under a websocket: one hyper upgraded (`Left`), or one another process handed
/// over (`Right`, see `handoff.rs`).
pub(crate) type WsIo = Either<TokioIo<hyper::upgrade::Upgraded>, tokio::net::TcpStream>;

/// The websocket of an external transport: tungstenite's, whose messages it reads itself.
pub(crate) type ExternalWs = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The TCP connection a request came on, put in its extensions by the server that accepted it
/// (a connection of another kind, a unix socket say, has none). A websocket on it
/// - lets the kernel coalesce its small writes once its session is open (TCP_NODELAY off),
///   unless the server keeps them immediate: the handshake goes out at once (a client waits
///   for the open packet before it says anything, so a held write would wait for its delayed
///   acknowledgement), and from then on the frames a busy room sends a client share packets;
/// - takes frames straight from the code that sends them while its task is idle (see
///   `Queue::push_now`), a write on this descriptor.
#[derive(Debug, Clone, Copy)]
pub struct TcpConnection {
    fd: RawFd,
    coalesce: bool,
}

impl TcpConnection {
    /// The connection on descriptor `fd`; `coalesce`: whether its websocket turns Nagle's
    /// algorithm back on once open.
    ///
    /// # Safety
    /// `fd` is the TCP connection hyper serves the request on, non-blocking, and stays open
    /// for as long as that connection's I/O object (the websocket's, after an upgrade) lives.
    pub unsafe fn new(fd: RawFd, coalesce: bool) -> Self {
        TcpConnection { fd, coalesce }
    }

    fn of<B>(req: &Request<B>) -> Option<Self> {
        req.extensions().get::<TcpConnection>().copied()
    }

    /// The session is open on the websocket: from now on the connection may coalesce, and
    /// take frames straight from their senders.
    fn start<D>(connection: Option<Self>, socket: &Socket<D>) {
        let Some(TcpConnection { fd, coalesce }) = connection else {
            return;
        };
        if coalesce {
            // SAFETY: `fd` is open (see `new`): the websocket that owns it is being started.
            let connection = unsafe { BorrowedFd::borrow_raw(fd) };
            // A failure leaves Nagle off, which costs writes, not correctness.
            let _ = socket2::SockRef::from(&connection).set_tcp_nodelay(false);
        }
        socket.queue.carried_on(Some(fd));
    }
}

/// A websocket handshake with no sid: a new session that lives on the websocket. Its one task
/// carries the websocket, keeps the heartbeat and ends the session.
pub(crate) fn open<H: Handler, B: Send + 'static>(
    engine: &Arc<Engine<H>>,
    mut req: Request<B>,
) -> Response<Body> {
    let response = match switching_protocols(&req) {
        Ok(response) => response,
        Err(response) => return response,
    };
    let socket = match engine.open_session(Transport::Websocket, SessionTime::Websocket, &req) {
        Ok(socket) => socket,
        Err(response) => return response,
    };
    let opened = tokio::time::Instant::now();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let connection = TcpConnection::of(&req);
    // Boxed, and gone once done: the session's task keeps no room for the handshake.
    let handshake = boxed({
        let engine = engine.clone();
        let socket = socket.clone();
        async move {
            let mut ws = accept(&engine, on_upgrade).await?;
            let open = engine.open_packet(&socket);
            let deadline = engine.config.ws_write_timeout;
            match tokio::time::timeout(deadline, ws.write_text(&open)).await {
                Ok(Ok(())) => {
                    TcpConnection::start(connection, &socket);
                    Some(ws)
                }
                _ => None,
            }
        }
    });
    let heartbeat = engine.heartbeat(opened);
    tokio::spawn(carry_session(
        engine.clone(),
        socket,
        handshake,
        Some(heartbeat),
    ));
    response
}

/// A websocket handshake for an existing polling session: probe, then take the session over.
/// The session's heartbeat stays where it was, in a task of its own.
pub(crate) fn upgrade<H: Handler, B: Send + 'static>(
    engine: &Arc<Engine<H>>,
    socket: Arc<Socket<H::Data>>,
    mut req: Request<B>,
) -> Response<Body> {
    let response = match switching_protocols(&req) {
        Ok(response) => response,
        Err(response) => return response,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let connection = TcpConnection::of(&req);
    let engine = engine.clone();
    if socket.transport() != Transport::Polling || socket.upgrading.swap(true, Ordering::AcqRel) {
        // Already upgraded, or another websocket is probing: this one is opened and closed at
        // once, which clients handle as a plain close rather than a handshake error.
        tokio::spawn(async move {
            if let Some(ws) = accept(&engine, on_upgrade).await {
                close_within(ws, engine.config.ws_write_timeout).await;
            }
        });
        return response;
    }
    // Boxed, as for a session opened on a websocket: the task that carries the session keeps
    // no room for the upgrade.
    let upgrading = boxed({
        let engine = engine.clone();
        let socket = socket.clone();
        async move {
            let mut ws = accept(&engine, on_upgrade).await;
            let probed = match ws.as_mut() {
                Some(ws) => tokio::select! {
                    probed = tokio::time::timeout(engine.config.upgrade_timeout, probe(&socket, ws)) => {
                        matches!(probed, Ok(Ok(())))
                    }
                    _ = socket.closed() => false,
                },
                None => false,
            };
            if !probed {
                socket.end_upgrade();
                tracing::debug!(
                    sid = socket.id(),
                    "upgrade not completed; staying on polling"
                );
                if let Some(ws) = ws {
                    close_within(ws, engine.config.ws_write_timeout).await;
                }
                return None;
            }
            // The transport switches before `upgrading` clears, so no GET slips in between.
            socket.set_transport(Transport::Websocket);
            socket.end_upgrade();
            TcpConnection::start(connection, &socket);
            ws
        }
    });
    tokio::spawn(carry_session(engine, socket, upgrading, None));
    response
}

/// The upgrade dialogue on the new websocket, until the client's `5`.
async fn probe<D>(socket: &Socket<D>, ws: &mut Ws) -> Result<(), ()> {
    let mut probed = false;
    while let Some(message) = ws.read().await {
        let text = match message.map_err(|_| ())? {
            WsMessage::Text(text) => text,
            WsMessage::Ping(payload) => {
                ws.pong(payload).await.map_err(|_| ())?;
                continue;
            }
            WsMessage::Close(_) => return Err(()),
            _ => continue,
        };
        match Packet::decode_text(text) {
            Ok(Packet::Ping(payload)) if payload == "probe" && !probed => {
                write_frame(ws, &Frame::PONG_PROBE).await.map_err(|_| ())?;
                // Ends the pending GET so the client can pause polling.
                socket.transport_changes.notify_waiters();
                probed = true;
            }
            Ok(Packet::Upgrade) if probed => return Ok(()),
            _ => return Err(()),
        }
    }
    Err(())
}

/// The one task of a session on a websocket, from when `taking_over` gives it the websocket
/// (a handshake, or an upgrade) until the session or the websocket ends. Every write has a
/// deadline (`ws_write_timeout`): a client that stops reading is dropped, not waited for.
/// With a `heartbeat`, this task keeps the session's time and ends the session too (one opened
/// on the websocket); without, a task of its own does both (an upgraded one).
///
/// Not an `async fn`: one would keep its arguments twice in its state, once as given and once
/// as bound (rust-lang/rust#62958), and this state is most of what an idle connection costs.
#[allow(clippy::manual_async_fn)]
fn carry_session<H: Handler>(
    engine: Arc<Engine<H>>,
    socket: Arc<Socket<H::Data>>,
    taking_over: BoxedFuture<'static, Option<Ws>>,
    mut heartbeat: Option<Heartbeat>,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let ends_session = heartbeat.is_some();
        // Not `match` or `if let`: their scrutinee would be kept, websocket-sized, for the
        // session's life.
        let Some(mut ws) = taking_over.await else {
            if ends_session {
                socket.close(DisconnectReason::TransportClose);
                boxed(engine.end_session(socket.clone())).await;
            }
            return;
        };
        let carried = CarriedConnection(&socket);
        let ending = exchange(&engine, carried, &mut ws, &mut heartbeat).await;
        // Boxed: only a closing session needs room for it, not every open one.
        boxed(finish(&engine, &socket, ws, ending, ends_session)).await;
    }
}

/// Ends a websocket whose session is closed, within the write deadline or not at all; and the
/// session too if `ends_session`, at once rather than after the last writes.
async fn finish<H: Handler>(
    engine: &Arc<Engine<H>>,
    socket: &Arc<Socket<H::Data>>,
    mut ws: Ws,
    ending: Ending<'_>,
    ends_session: bool,
) {
    let ending = match ending {
        // Here rather than in the session's task: a `match` there would keep its scrutinee
        // in every idle session's state.
        Ending::HandOff(outbox) => {
            return boxed(hand_off(engine, socket, ws, outbox, ends_session)).await
        }
        ending => ending,
    };
    let farewell = async {
        match ending {
            // What was queued before the close still goes out, then the websocket ends.
            Ending::Flush(mut outbox) => {
                let left = everything_left(socket, &mut outbox);
                ws.write_all(&left).await?;
                ws.close().await
            }
            // The client ended the websocket: its close is answered, and nothing follows.
            Ending::AnswerClose(close) => ws.answer_close(close).await,
            Ending::Abrupt | Ending::HandOff(_) => Ok(()),
        }
    };
    let farewell = async {
        let _ = tokio::time::timeout(engine.config.ws_write_timeout, farewell).await;
    };
    if ends_session {
        tokio::join!(farewell, engine.end_session(socket.clone()));
    } else {
        farewell.await;
    }
}

/// Moves a session quiesced at a packet boundary to another process (see `handoff.rs`):
/// freezes it, writes what is queued, and gives its connection and unread bytes up. A
/// session that cannot move is closed as a drain would close it.
async fn hand_off<H: Handler>(
    engine: &Arc<Engine<H>>,
    socket: &Arc<Socket<H::Data>>,
    ws: Ws,
    mut outbox: tokio::sync::MutexGuard<'_, Outbox>,
    ends_session: bool,
) {
    use crate::handoff::{Departure, DepartureError};
    let sid = socket.id().to_owned();
    let detachable = matches!(ws.io(), Either::Right(_)) || engine.config.detach_stream.is_some();
    let upper = if ws.is_mid_message() || !detachable {
        engine.depart(socket, Err(DepartureError::Busy(sid.clone())));
        None
    } else {
        let upper = engine.freeze(socket);
        if upper.is_none() {
            engine.depart(socket, Err(DepartureError::NotExported(sid.clone())));
        }
        upper
    };
    let mut ws = ws;
    let deadline = engine.config.ws_write_timeout;
    let Some(upper) = upper else {
        // Closed as a drain closes it: what is queued goes out, then a close frame.
        socket.close(DisconnectReason::ServerClose);
        let left = everything_left(socket, &mut outbox);
        drop(outbox);
        let farewell = async {
            ws.write_all(&left).await?;
            ws.close().await
        };
        let _ = tokio::time::timeout(deadline, farewell).await;
        if ends_session {
            engine.end_session(socket.clone()).await;
        }
        return;
    };
    let left = everything_left(socket, &mut outbox);
    drop(outbox);
    let flushed = tokio::time::timeout(deadline, ws.write_all(&left)).await;
    let outcome = match flushed {
        Ok(Ok(())) => {
            let (io, unread) = ws.into_parts();
            let detached = match io {
                Either::Right(stream) => stream
                    .into_std()
                    .ok()
                    .map(|stream| (std::os::fd::OwnedFd::from(stream), bytes::Bytes::new())),
                Either::Left(io) => engine
                    .config
                    .detach_stream
                    .as_ref()
                    .and_then(|detach| (detach.0)(io.into_inner())),
            };
            match detached {
                // Bytes of the websocket read already come first, then those hyper kept.
                Some((fd, kept)) => {
                    let mut unread = unread;
                    unread.extend_from_slice(&kept);
                    Ok(Departure {
                        record: engine.record(socket, Vec::new(), unread, upper),
                        stream: Some(fd),
                    })
                }
                None => Err(DepartureError::NotDetachable(sid)),
            }
        }
        Ok(Err(error)) => Err(DepartureError::Flush(sid, error.to_string())),
        Err(_) => Err(DepartureError::Flush(
            sid,
            "the client does not read".into(),
        )),
    };
    engine.depart(socket, outcome);
    if ends_session {
        engine.end_session(socket.clone()).await;
    }
}

/// Serves a websocket handed over by another process (see `handoff.rs`): the session is in
/// the table already, with its state; `unread` are bytes the old process read and did not
/// decode.
pub(crate) fn adopt<H: Handler>(
    engine: &Arc<Engine<H>>,
    socket: Arc<Socket<H::Data>>,
    stream: std::os::fd::OwnedFd,
    unread: Vec<u8>,
    heartbeat: Heartbeat,
) -> std::io::Result<()> {
    let stream = std::net::TcpStream::from(stream);
    stream.set_nonblocking(true)?;
    let stream = tokio::net::TcpStream::from_std(stream)?;
    // The connection came from a process that had it open already: no coalescing to turn on.
    let fd = stream.as_raw_fd();
    socket.queue.carried_on(Some(fd));
    let ws = WebSocket::resumed(Either::Right(stream), engine.config.max_payload, unread);
    let ready = boxed(async move { Some(ws) });
    tokio::spawn(carry_session(
        engine.clone(),
        socket,
        ready,
        Some(heartbeat),
    ));
    Ok(())
}

/// How a websocket ends once its session is closed.
enum Ending<'a> {
    /// Frames still queued go out, then a close frame.
    Flush(tokio::sync::MutexGuard<'a, Outbox>),
    /// The client closed the websocket: the answer to its close frame.
    AnswerClose(Option<CloseFrame>),
    /// Nothing more is written: the websocket failed.
    Abrupt,
    /// The session moves to another process (see `handoff.rs`).
    HandOff(tokio::sync::MutexGuard<'a, Outbox>),
}

/// The session's life on the websocket, both directions and its heartbeat, until it closes.
///
/// One loop does everything, on the websocket unsplit: an idle session is one small task,
/// with no lock, timer task or buffer besides. Queued frames go first; a packet from the
/// client is handled before the next frame is written.
///
/// What an idle session's task keeps is what this function keeps across the wait for its
/// next turn, so that wait holds no future of its own (the queue, the websocket and the timer
/// are polled in place) and everything else it awaits is boxed: a task reserves room for every
/// future it awaits in place, for its whole life.
async fn exchange<'a, H: Handler>(
    engine: &Arc<Engine<H>>,
    // Dropped with this future, before the websocket: see `CarriedConnection`.
    socket: CarriedConnection<'a, H::Data>,
    ws: &mut Ws,
    heartbeat: &mut Option<Heartbeat>,
) -> Ending<'a> {
    // Waits for a GET still pending from before the upgrade to hand the queue over.
    let session: &'a Arc<Socket<H::Data>> = socket.0;
    let outbox = boxed(async move {
        tokio::select! {
            outbox = session.outbox.lock() => Some(outbox),
            _ = session.closed() => None,
        }
    });
    let Some(mut outbox) = outbox.await else {
        return Ending::Abrupt;
    };
    // One timer, moved as the heartbeat's next event moves.
    let timer = tokio::time::sleep_until(
        heartbeat
            .as_ref()
            .map_or_else(far_future, Heartbeat::wake_at),
    );
    tokio::pin!(timer);
    let mut timer_fired = false;
    // Whether the frames queued now answer a packet the client just sent.
    let mut replies = false;
    loop {
        if let Some(heartbeat) = heartbeat.as_ref() {
            let next = heartbeat.wake_at();
            if timer_fired || timer.deadline() != next {
                timer.as_mut().reset(next);
                timer_fired = false;
            }
        }
        let turn = std::future::poll_fn(|cx| {
            // Between two turns: no packet of the client is half handled.
            if socket.handing_off.load(Ordering::Acquire) && !socket.is_closed() {
                return Poll::Ready(Turn::HandOff);
            }
            if let Poll::Ready(outgoing) = socket.poll_next_outgoing(&mut outbox, cx) {
                return Poll::Ready(Turn::Write(outgoing));
            }
            if let Poll::Ready(message) = ws.poll_read(cx) {
                return Poll::Ready(Turn::Read(message));
            }
            if heartbeat.is_some() && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Turn::Beat);
            }
            Poll::Pending
        })
        .await;
        if !matches!(turn, Turn::Write(_)) {
            // The task may write from here on (a pong, an answer, its close).
            socket.queue.writer_busy();
        }
        let take = match turn {
            Turn::Write(None) => return Ending::Flush(outbox),
            Turn::HandOff => return Ending::HandOff(outbox),
            Turn::Beat => {
                timer_fired = true;
                let ended = heartbeat
                    .as_mut()
                    .is_some_and(|heartbeat| !engine.beat(&socket, heartbeat));
                if ended {
                    return Ending::Flush(outbox);
                }
                continue;
            }
            // Boxed, and `turn` moved in: nothing of the turn stays in this task.
            turn => boxed(take_turn(
                engine,
                &socket,
                ws,
                &mut outbox,
                heartbeat,
                turn,
                &mut replies,
            )),
        };
        let flow = take.await;
        match flow {
            Flow::Continue => {}
            Flow::Flush => return Ending::Flush(outbox),
            Flow::AnswerClose(close) => return Ending::AnswerClose(close),
            Flow::Abrupt => return Ending::Abrupt,
        }
    }
}

/// What the session's loop does after a turn.
enum Flow {
    Continue,
    /// The session is closed: see [`Ending`].
    Flush,
    AnswerClose(Option<CloseFrame>),
    Abrupt,
}

/// A frame to write or a message from the client: written, or handled.
async fn take_turn<H: Handler>(
    engine: &Arc<Engine<H>>,
    socket: &Arc<Socket<H::Data>>,
    ws: &mut Ws,
    outbox: &mut Outbox,
    heartbeat: &mut Option<Heartbeat>,
    turn: Turn,
    replies: &mut bool,
) -> Flow {
    let deadline = engine.config.ws_write_timeout;
    let message = match turn {
        Turn::Write(Some(first)) => {
            let written = write_queued(ws, first, outbox, &socket.queue, *replies, deadline).await;
            *replies = false;
            if let Err(reason) = written {
                tracing::debug!(
                    sid = socket.id(),
                    reason = reason.as_str(),
                    "websocket write failed"
                );
                socket.close(reason);
                return Flow::Abrupt;
            }
            return Flow::Continue;
        }
        Turn::Write(None) | Turn::Beat | Turn::HandOff => return Flow::Continue,
        Turn::Read(message) => message,
    };
    let packet = match message {
        Some(Ok(WsMessage::Text(text))) => match Packet::decode_text(text) {
            Ok(packet) => packet,
            Err(error) => {
                tracing::debug!(sid = socket.id(), %error, "malformed websocket packet");
                socket.close(DisconnectReason::PacketParsing);
                return Flow::Flush;
            }
        },
        Some(Ok(WsMessage::Binary(data))) => Packet::Message(Message::Binary(data)),
        Some(Ok(WsMessage::Ping(payload))) => {
            let answered = tokio::time::timeout(deadline, ws.pong(payload)).await;
            if !matches!(answered, Ok(Ok(()))) {
                socket.close(DisconnectReason::TransportClose);
                return Flow::Abrupt;
            }
            return Flow::Continue;
        }
        Some(Ok(WsMessage::Pong(_) | WsMessage::Frame(_))) => return Flow::Continue,
        Some(Ok(WsMessage::Close(close))) => {
            socket.close(DisconnectReason::TransportClose);
            return Flow::AnswerClose(close);
        }
        Some(Err(tungstenite::Error::Capacity(_))) => {
            socket.close(DisconnectReason::PayloadTooLarge);
            return Flow::Flush;
        }
        None | Some(Err(_)) => {
            socket.close(DisconnectReason::TransportClose);
            return Flow::Flush;
        }
    };
    if let Some(heartbeat) = heartbeat.as_mut() {
        heartbeat.heard(tokio::time::Instant::now(), engine.rhythm());
    }
    engine.receive(socket, packet).await;
    *replies = true;
    Flow::Continue
}

/// An instant no session lives to see: where a timer waits while it is not used.
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365 * 30)
}

/// What woke the session's task.
enum Turn {
    /// Something to write to the client, or `None` once the session is closed and nothing is
    /// left to write.
    Write(Option<Outgoing>),
    /// A message from the client, or the end of its stream.
    Read(Option<Result<WsMessage, tungstenite::Error>>),
    /// The session's heartbeat has something due.
    Beat,
    /// The session is asked to move to another process.
    HandOff,
}

/// `future` on the heap. A task reserves room for every future it awaits in place, for its
/// whole life: the write and the handling of a packet would make every idle session as large
/// as they are.
fn boxed<'a, T>(future: impl std::future::Future<Output = T> + Send + 'a) -> BoxedFuture<'a, T> {
    Box::pin(future)
}

type BoxedFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Writes `first` and whatever else is queued behind it, within `deadline`.
///
/// Frames that piled up while the task was away (a busy room's messages) go out together, a
/// batch of up to [`BATCH_BYTES`] per write rather than one write per frame: most of a busy
/// room's cost is the kernel's send path, paid once per write. The answers to a packet the
/// client just sent (`replies`) go out one write each, as they were made: clients may rely on
/// that. The official Socket.IO suite, for one, waits for the CONNECT answer, then listens for
/// the event the server sent right after it, and misses it when both came in one read.
async fn write_queued(
    ws: &mut Ws,
    first: Outgoing,
    outbox: &mut Outbox,
    queue: &Queue,
    replies: bool,
    deadline: std::time::Duration,
) -> Result<(), DisconnectReason> {
    let write = async {
        let (mut batch, mut next) = match first {
            Outgoing::Frame(frame) => (Vec::new(), Some(frame)),
            // The end of a frame that went out in part: it goes on, with what follows.
            Outgoing::Unwritten(bytes) => (bytes, outbox.try_next(queue)),
        };
        while let Some(frame) = next.take() {
            put_engine_frame(&mut batch, &frame);
            next = outbox.try_next(queue);
            if replies || batch.len() >= BATCH_BYTES {
                ws.write_all(&batch).await?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            ws.write_all(&batch).await?;
        }
        Ok::<(), std::io::Error>(())
    };
    match tokio::time::timeout(deadline, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(DisconnectReason::TransportClose),
        // The client does not read.
        Err(_) => Err(DisconnectReason::SlowClient),
    }
}

/// Writes one frame.
async fn write_frame(ws: &mut Ws, frame: &Frame) -> std::io::Result<()> {
    let mut out = Vec::new();
    put_engine_frame(&mut out, frame);
    ws.write_all(&out).await
}

/// Everything still to write to a websocket whose task stops writing, as the bytes to write.
fn everything_left<D>(socket: &Socket<D>, outbox: &mut Outbox) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(outgoing) = socket.take_outgoing(outbox) {
        match outgoing {
            Outgoing::Frame(frame) => put_engine_frame(&mut out, &frame),
            Outgoing::Unwritten(bytes) => out.extend_from_slice(&bytes),
        }
    }
    out
}

/// Writes `frame` as one websocket frame to the connection `fd` without waiting (see
/// `Queue::push_now`): `None` once all of it went, what is left when the kernel took a part.
/// An error when it took nothing (its send buffer is full: `WouldBlock`), or the connection
/// failed; the caller then queues the frame for the task, which meets the failure itself.
pub(crate) fn write_now(fd: RawFd, frame: &Frame) -> std::io::Result<Option<Vec<u8>>> {
    let (data, payload) = match frame {
        Frame::Text(text) => (Data::Text, text.as_bytes()),
        Frame::Binary(data) => (Data::Binary, &data[..]),
    };
    let head = frame_head(data, payload.len());
    send_now(fd, [head.as_slice(), payload])
}

/// Appends the frames to `out` as websocket frames, for [`send_now`].
pub(crate) fn frame_all<'a>(out: &mut Vec<u8>, frames: impl IntoIterator<Item = &'a Frame>) {
    for frame in frames {
        put_engine_frame(out, frame);
    }
}

/// Writes the two `parts`, in order, to the connection `fd` in one call without waiting:
/// `None` once all went, the bytes left when the kernel took a part, an error when it took
/// nothing.
pub(crate) fn send_now(fd: RawFd, parts: [&[u8]; 2]) -> std::io::Result<Option<Vec<u8>>> {
    // SAFETY: `fd` is the open connection of the websocket whose queue's lock the caller
    // holds (see `Queue`).
    let connection = unsafe { BorrowedFd::borrow_raw(fd) };
    // No SIGPIPE for a connection the client closed: an EPIPE error instead.
    let mut sent = socket2::SockRef::from(&connection).send_vectored_with_flags(
        &parts.map(std::io::IoSlice::new),
        libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
    )?;
    let total: usize = parts.iter().map(|part| part.len()).sum();
    if sent >= total {
        return Ok(None);
    }
    if sent == 0 {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    let mut unwritten = Vec::with_capacity(total - sent);
    for part in parts {
        let skip = sent.min(part.len());
        unwritten.extend_from_slice(&part[skip..]);
        sent -= skip;
    }
    Ok(Some(unwritten))
}

/// Bytes of frames written at once when more are queued.
pub(crate) const BATCH_BYTES: usize = 64 * 1024;

/// Appends `frame` as one websocket frame: text as text, binary as binary.
fn put_engine_frame(out: &mut Vec<u8>, frame: &Frame) {
    match frame {
        Frame::Text(text) => put_frame(out, Data::Text, text.as_bytes()),
        Frame::Binary(data) => put_frame(out, Data::Binary, data),
    }
}

/// Closes a websocket that carries no session, giving up after `deadline` (a client that does
/// not read never takes the close frame).
async fn close_within(mut ws: Ws, deadline: std::time::Duration) {
    let _ = tokio::time::timeout(deadline, ws.close()).await;
}

/// The websocket of an upgraded request, with the engine's limit on message size.
pub(crate) async fn accept<H: Handler>(
    engine: &Engine<H>,
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Option<Ws> {
    let upgraded = upgraded(on_upgrade).await?;
    Some(WebSocket::new(
        Either::Left(TokioIo::new(upgraded)),
        engine.config.max_payload,
    ))
}

/// The same, as tungstenite's websocket, for external transports (see
/// [`crate::ExternalWebSocket`]).
pub(crate) async fn accept_external<H: Handler>(
    engine: &Engine<H>,
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Option<ExternalWs> {
    let upgraded = upgraded(on_upgrade).await?;
    let config = &engine.config;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.ws_read_buffer_size)
        .write_buffer_size(config.ws_write_buffer_size)
        .max_message_size(Some(config.max_payload))
        .max_frame_size(Some(config.max_payload));
    Some(
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config))
            .await,
    )
}

async fn upgraded(on_upgrade: hyper::upgrade::OnUpgrade) -> Option<hyper::upgrade::Upgraded> {
    match on_upgrade.await {
        Ok(upgraded) => Some(upgraded),
        Err(error) => {
            tracing::debug!(%error, "websocket upgrade failed");
            None
        }
    }
}

/// Validates a websocket handshake request and builds its 101 answer.
pub(crate) fn switching_protocols<B>(req: &Request<B>) -> Result<Response<Body>, Response<Body>> {
    let headers = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .unwrap_or("")
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    };
    let key = headers.get(header::SEC_WEBSOCKET_KEY);
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let (Some(key), true, true, true) = (
        key,
        version_ok,
        has_token(header::CONNECTION, "upgrade"),
        has_token(header::UPGRADE, "websocket"),
    ) else {
        return Err(error_response(ErrorCode::BadRequest));
    };
    let accept = derive_accept_key(key.as_bytes());
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EngineConfig;

    struct Silent;

    impl Handler for Silent {
        type Data = ();
        fn on_connect(&self, _: &Arc<Socket<()>>) {}
        async fn on_message(&self, _: &Arc<Socket<()>>, _: Message) {}
        async fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
    }

    /// The size of the future `make` returns, without making it.
    fn future_size<A, F>(_make: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// The task of an idle websocket session is most of what the connection costs the server
    /// (`docs/BENCHMARKS.md`, "Where the bytes go"). It was 1.7 KiB with tungstenite's
    /// websocket, a select of futures and a heartbeat task beside it; the future is 408 bytes
    /// now, a 512-byte task with tokio's header (tasks come in steps of 128 bytes). A future
    /// awaited in place in the session's loop, or an argument kept twice, would quietly grow
    /// it again.
    #[test]
    fn an_idle_websocket_session_keeps_a_small_task() {
        let engine = Engine::new(EngineConfig::default(), Silent);
        let request = Request::new(());
        let socket = engine
            .open_session(Transport::Websocket, SessionTime::Websocket, &request)
            .unwrap();
        let size = future_size(|handshake: BoxedFuture<'static, Option<Ws>>| {
            carry_session(engine.clone(), socket.clone(), handshake, None)
        });
        assert!(size <= 408, "the session's future takes {size} bytes");
    }
}

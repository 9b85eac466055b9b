//! The websocket transport: sessions that start on a websocket, and polling sessions upgraded to
//! one (`2probe` / `3probe`, a noop to end the pending GET, then `5`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

use crate::engine::{error_response, Body, Engine, ErrorCode, Handler};
use crate::packet::{Frame, Message, Packet};
use crate::socket::{DisconnectReason, Outbox, Queue, Socket, Transport};

pub(crate) type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// How to let the kernel coalesce small writes on the connection of a request (turn
/// TCP_NODELAY off), put in its extensions by the server that accepted it. A websocket calls it
/// once its session is open: the handshake goes out at once (a client waits for the open packet
/// before it says anything, so a held write would wait for its delayed acknowledgement), and
/// from then on the frames a busy room sends a client share packets.
#[derive(Clone)]
pub struct CoalesceWrites(pub Arc<dyn Fn() + Send + Sync>);

impl CoalesceWrites {
    fn of<B>(req: &Request<B>) -> Option<Self> {
        req.extensions().get::<CoalesceWrites>().cloned()
    }

    fn start(coalesce: Option<Self>) {
        if let Some(CoalesceWrites(start)) = coalesce {
            start();
        }
    }
}

/// A websocket handshake with no sid: a new session that lives on the websocket.
pub(crate) fn open<H: Handler, B: Send + 'static>(
    engine: &Arc<Engine<H>>,
    mut req: Request<B>,
) -> Response<Body> {
    let response = match switching_protocols(&req) {
        Ok(response) => response,
        Err(response) => return response,
    };
    let socket = match engine.open_session(Transport::Websocket, &req) {
        Ok(socket) => socket,
        Err(response) => return response,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let coalesce = CoalesceWrites::of(&req);
    let engine = engine.clone();
    tokio::spawn(async move {
        let Some(mut ws) = accept(&engine, on_upgrade).await else {
            socket.close(DisconnectReason::TransportClose);
            return;
        };
        let open = engine.open_packet(&socket);
        let deadline = engine.config.ws_write_timeout;
        if !matches!(
            tokio::time::timeout(deadline, ws.send(WsMessage::text(open))).await,
            Ok(Ok(()))
        ) {
            socket.close(DisconnectReason::TransportClose);
            return;
        }
        CoalesceWrites::start(coalesce);
        carry_session(&engine, &socket, ws).await;
    });
    response
}

/// A websocket handshake for an existing polling session: probe, then take the session over.
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
    let coalesce = CoalesceWrites::of(&req);
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
    tokio::spawn(async move {
        let Some(mut ws) = accept(&engine, on_upgrade).await else {
            socket.end_upgrade();
            return;
        };
        let probed = tokio::select! {
            probed = tokio::time::timeout(engine.config.upgrade_timeout, probe(&socket, &mut ws)) => {
                matches!(probed, Ok(Ok(())))
            }
            _ = socket.closed() => false,
        };
        if !probed {
            socket.end_upgrade();
            tracing::debug!(
                sid = socket.id(),
                "upgrade not completed; staying on polling"
            );
            close_within(ws, engine.config.ws_write_timeout).await;
            return;
        }
        // The transport switches before `upgrading` clears, so no GET slips in between.
        socket.set_transport(Transport::Websocket);
        socket.end_upgrade();
        CoalesceWrites::start(coalesce);
        carry_session(&engine, &socket, ws).await;
    });
    response
}

/// The upgrade dialogue on the new websocket, until the client's `5`.
async fn probe<D>(socket: &Socket<D>, ws: &mut Ws) -> Result<(), ()> {
    let mut probed = false;
    while let Some(message) = ws.next().await {
        let WsMessage::Text(text) = message.map_err(|_| ())? else {
            continue;
        };
        match Packet::decode_text(text) {
            Ok(Packet::Ping(payload)) if payload == "probe" && !probed => {
                ws.send(ws_frame(&Frame::PONG_PROBE))
                    .await
                    .map_err(|_| ())?;
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

/// Carries a session on a websocket until the session or the websocket ends. Every write has
/// a deadline (`ws_write_timeout`): a client that stops reading is dropped, not waited for.
///
/// One loop does both directions, on the websocket unsplit: an idle session is one small
/// task, with no lock or second allocation around the stream. Queued frames go first; a
/// packet from the client is handled before the next frame is written.
async fn carry_session<H: Handler>(
    engine: &Arc<Engine<H>>,
    socket: &Arc<Socket<H::Data>>,
    mut ws: Ws,
) {
    let deadline = engine.config.ws_write_timeout;
    // Waits for a GET still pending from before the upgrade to hand the queue over.
    let mut outbox = tokio::select! {
        outbox = socket.outbox.lock() => outbox,
        _ = socket.closed() => return,
    };
    // Made once: a future per turn would register with the session's token again each time.
    let closed = socket.closed();
    tokio::pin!(closed);
    // Whether the frames queued now answer a packet the client just sent.
    let mut replies = false;
    loop {
        let turn = tokio::select! {
            biased;
            frame = outbox.next(&socket.queue) => Turn::Write(frame),
            message = ws.next() => Turn::Read(message),
            _ = &mut closed => break,
        };
        let message = match turn {
            Turn::Write(frame) => {
                let written = boxed(write_queued(
                    &mut ws,
                    frame,
                    &mut outbox,
                    &socket.queue,
                    replies,
                    deadline,
                ));
                replies = false;
                if let Err(reason) = written.await {
                    tracing::debug!(
                        sid = socket.id(),
                        reason = reason.as_str(),
                        "websocket write failed"
                    );
                    socket.close(reason);
                    return;
                }
                continue;
            }
            Turn::Read(message) => message,
        };
        let reason = match message {
            Some(Ok(WsMessage::Text(text))) => match Packet::decode_text(text) {
                Ok(packet) => {
                    // The handling of a packet (the layers above, the application) is a
                    // large future.
                    let handled = boxed(engine.receive(socket, packet));
                    handled.await;
                    replies = true;
                    continue;
                }
                Err(error) => {
                    tracing::debug!(sid = socket.id(), %error, "malformed websocket packet");
                    DisconnectReason::PacketParsing
                }
            },
            Some(Ok(WsMessage::Binary(data))) => {
                let handled = boxed(engine.receive(socket, Packet::Message(Message::Binary(data))));
                handled.await;
                replies = true;
                continue;
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => continue,
            Some(Ok(WsMessage::Close(_))) | None => DisconnectReason::TransportClose,
            Some(Err(tungstenite::Error::Capacity(_))) => DisconnectReason::PayloadTooLarge,
            Some(Err(_)) => DisconnectReason::TransportClose,
        };
        socket.close(reason);
        break;
    }
    // Closed: what was queued before the close still goes out, then the websocket ends;
    // within the deadline, or not at all.
    let farewell = async {
        while let Some(frame) = outbox.try_next(&socket.queue) {
            ws.feed(ws_frame(&frame)).await?;
        }
        ws.close(None).await
    };
    // Boxed: only a closing session needs room for it, not every open one.
    let _ = boxed(tokio::time::timeout(deadline, farewell)).await;
}

/// What woke the session's task.
enum Turn {
    /// A frame for the client.
    Write(Frame),
    /// A message from the client, or the end of its stream.
    Read(Option<Result<WsMessage, tungstenite::Error>>),
}

/// `future` on the heap. A task reserves room for every future it awaits in place, for its
/// whole life: the write and the handling of a packet would make every idle session as large
/// as they are.
fn boxed<'a, T>(
    future: impl std::future::Future<Output = T> + Send + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>> {
    Box::pin(future)
}

/// Writes `first` and whatever else is queued behind it, within `deadline`.
///
/// Frames that piled up while the task was away (a busy room's messages) go out together, a
/// batch of up to [`BATCH_BYTES`] per write rather than one write per frame: most of a busy
/// room's cost is the kernel's send path, paid once per write. The answers to a packet the
/// client just sent (`replies`) go out one write each, as they were made: clients may rely on
/// that. The official Socket.IO suite, for one, waits for the CONNECT answer, then listens for
/// the event the server sent right after it, and misses it when both came in one read.
///
/// The frames are framed here and written under tungstenite, which keeps the reading side (and
/// writes only the pongs and the close it owes the client, flushed first).
async fn write_queued(
    ws: &mut Ws,
    first: Frame,
    outbox: &mut Outbox,
    queue: &Queue,
    replies: bool,
    deadline: std::time::Duration,
) -> Result<(), DisconnectReason> {
    let write = async {
        ws.flush().await.map_err(std::io::Error::other)?;
        let io = ws.get_mut();
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(frame) = next.take() {
            put_frame(&mut batch, &frame);
            next = outbox.try_next(queue);
            if replies || next.is_none() || batch.len() >= BATCH_BYTES {
                io.write_all(&batch).await?;
                batch.clear();
            }
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

/// Bytes of frames written at once when more are queued.
const BATCH_BYTES: usize = 64 * 1024;

/// Appends `frame` as one final, unmasked websocket frame (a server does not mask), its
/// header written by tungstenite's own encoder.
fn put_frame(out: &mut Vec<u8>, frame: &Frame) {
    use tungstenite::protocol::frame::coding::{Data, OpCode};
    use tungstenite::protocol::frame::FrameHeader;
    let (data, payload): (Data, &[u8]) = match frame {
        Frame::Text(text) => (Data::Text, text.as_bytes()),
        Frame::Binary(data) => (Data::Binary, data),
    };
    let header = FrameHeader {
        opcode: OpCode::Data(data),
        ..FrameHeader::default()
    };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// Closes a websocket that carries no session, giving up after `deadline` (a client that does
/// not read never takes the close frame).
async fn close_within(mut ws: Ws, deadline: std::time::Duration) {
    let _ = tokio::time::timeout(deadline, ws.close(None)).await;
}

fn ws_frame(frame: &Frame) -> WsMessage {
    match frame {
        Frame::Text(text) => WsMessage::Text(text.clone()),
        Frame::Binary(data) => WsMessage::Binary(data.clone()),
    }
}

pub(crate) async fn accept<H: Handler>(
    engine: &Engine<H>,
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Option<Ws> {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            tracing::debug!(%error, "websocket upgrade failed");
            return None;
        }
    };
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

    #[test]
    fn frames_carry_the_shortest_length_that_fits() {
        let head = |frame: Frame| {
            let mut out = Vec::new();
            put_frame(&mut out, &frame);
            let payload = match &frame {
                Frame::Text(text) => text.len(),
                Frame::Binary(data) => data.len(),
            };
            out.truncate(out.len() - payload);
            out
        };
        let text = |len: usize| Frame::Text("x".repeat(len).into());
        assert_eq!(head(text(0)), [0x81, 0]);
        assert_eq!(head(text(125)), [0x81, 125]);
        assert_eq!(head(text(126)), [0x81, 126, 0, 126]);
        assert_eq!(head(text(0xFFFF)), [0x81, 126, 0xFF, 0xFF]);
        assert_eq!(head(text(0x10000)), [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(
            head(Frame::Binary(bytes::Bytes::from_static(b"ab"))),
            [0x82, 2]
        );
    }
}

//! HTTP long-polling: a GET waits for frames and returns them joined by `\x1e`; a POST carries
//! packets from the client.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{read_body, BodyError};
use crate::engine::{error_response, Body, Engine, ErrorCode, Handler};
use crate::packet::{decode_payload, Frame, Packet, RECORD_SEPARATOR};
use crate::socket::{DisconnectReason, Socket, Transport};

pub(crate) fn text_response(body: String) -> Response<Body> {
    let mut response = Response::new(Body::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    response
}

/// A GET: waits until there is something for the client, then sends all that is queued, up to
/// `max_payload` bytes.
pub(crate) async fn poll<H: Handler>(
    engine: &Arc<Engine<H>>,
    socket: &Arc<Socket<H::Data>>,
) -> Response<Body> {
    wait_for_upgrade(socket, engine.config.upgrade_poll_wait).await;
    if socket.transport() != Transport::Polling {
        // The websocket took the session over: polling with its sid is refused from now on.
        return error_response(ErrorCode::BadRequest);
    }
    let Ok(mut outbox) = socket.outbox.try_lock() else {
        // Another GET (or the websocket writer after an upgrade) already holds the session.
        socket.close(DisconnectReason::MultipleRequests);
        return error_response(ErrorCode::BadRequest);
    };
    // A POST closing the session may be waiting for this GET (see `wait_for_poll`).
    socket.transport_changes.notify_waiters();
    let probed = socket.transport_changes.notified();
    tokio::pin!(probed);
    probed.as_mut().enable();
    let first = if socket.upgrading.load(Ordering::Acquire) {
        None
    } else {
        tokio::select! {
            biased;
            frame = outbox.next(&socket.queue) => Some(frame),
            _ = socket.closed() => None,
            _ = probed => None,
        }
    };
    let mut body = String::new();
    let limit = engine.config.max_payload;
    let mut next = first.or_else(|| outbox.try_next(&socket.queue));
    let mut more_queued = false;
    while let Some(frame) = next {
        let separator = usize::from(!body.is_empty());
        if !body.is_empty() && body.len() + separator + frame.polling_len() > limit {
            outbox.put_back(frame);
            more_queued = true;
            break;
        }
        if separator == 1 {
            body.push(RECORD_SEPARATOR);
        }
        frame.write_polling(&mut body);
        next = outbox.try_next(&socket.queue);
    }
    if body.is_empty() && !socket.is_closed() {
        // Woken by an upgrade probe with nothing to send: a noop ends this poll.
        Frame::NOOP.write_polling(&mut body);
    } else if socket.is_closed() && !more_queued {
        // The client asked to close: end its GET cleanly with a noop. We close: say so.
        let last = match socket.close_reason() {
            Some(DisconnectReason::ClientClose) => Frame::NOOP,
            _ => Frame::CLOSE,
        };
        if !body.is_empty() {
            body.push(RECORD_SEPARATOR);
        }
        last.write_polling(&mut body);
    }
    text_response(body)
}

/// A POST: decodes the body and hands its packets, in order, to the engine.
pub(crate) async fn post<H, B>(
    engine: &Arc<Engine<H>>,
    socket: &Arc<Socket<H::Data>>,
    body: B,
) -> Response<Body>
where
    H: Handler,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Ok(_in_order) = socket.post_lock.try_lock() else {
        socket.close(DisconnectReason::MultipleRequests);
        return error_response(ErrorCode::BadRequest);
    };
    let config = &engine.config;
    let bytes = match read_body(body, config.max_payload, config.body_read_timeout).await {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::debug!(sid = socket.id(), %error, "polling POST refused");
            let reason = match error {
                BodyError::TooLarge { .. } => DisconnectReason::PayloadTooLarge,
                BodyError::TooSlow { .. } => DisconnectReason::SlowClient,
                BodyError::Failed(_) => DisconnectReason::TransportClose,
            };
            socket.close(reason);
            let mut response = error_response(ErrorCode::BadRequest);
            *response.status_mut() = error.status();
            return response;
        }
    };
    let packets = std::str::from_utf8(&bytes)
        .map_err(|_| crate::PacketError::Empty)
        .and_then(decode_payload);
    let packets = match packets {
        Ok(packets) => packets,
        Err(error) => {
            tracing::debug!(sid = socket.id(), %error, "malformed polling body");
            socket.close(DisconnectReason::PacketParsing);
            return error_response(ErrorCode::BadRequest);
        }
    };
    for packet in packets {
        if packet == Packet::Close {
            wait_for_poll(socket, config.close_poll_wait).await;
        }
        engine.receive(socket, packet).await;
    }
    let mut response = Response::new(Body::new(Bytes::from_static(b"ok")));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    response
}

/// Waits, up to `wait`, for a websocket's upgrade of the session to end, so that a GET the
/// client sent after its `5` is refused as coming after the upgrade, whichever of the two
/// connections the server reads first. A GET of a client still finishing its upgrade is
/// answered after `wait` (with a noop), which lets it pause polling and send its `5`.
async fn wait_for_upgrade<D>(socket: &Socket<D>, wait: Duration) {
    if !socket.upgrading.load(Ordering::Acquire) {
        return;
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let progress = socket.transport_changes.notified();
        tokio::pin!(progress);
        progress.as_mut().enable();
        if !socket.upgrading.load(Ordering::Acquire)
            || tokio::time::timeout_at(deadline, progress).await.is_err()
        {
            return;
        }
    }
}

/// Before a client's close: waits, up to `wait`, for a GET of the session to be pending, so that
/// the poll the client sent along with its close ends with a noop, as it does when the GET is
/// read first, rather than with "session unknown".
async fn wait_for_poll<D>(socket: &Socket<D>, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let progress = socket.transport_changes.notified();
        tokio::pin!(progress);
        progress.as_mut().enable();
        let polling = socket.transport() == Transport::Polling;
        if !polling
            || socket.outbox.try_lock().is_err()
            || tokio::time::timeout_at(deadline, progress).await.is_err()
        {
            return;
        }
    }
}

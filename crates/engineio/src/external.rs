//! Sessions carried by a transport this crate does not implement: a gateway that speaks another
//! wire protocol to its clients (the Socket.IO 0.9 endpoint, for one) opens an ordinary session
//! here, moves its messages in and out itself, and the layer above cannot tell the difference.
//! Such a transport keeps its own heartbeat with its client, so the engine's pings are answered
//! on the client's behalf.

use std::sync::Arc;

use std::future::Future;

use http::{Request, Response};

use crate::engine::{Body, Engine, Handler, SessionTime};
use crate::packet::{Frame, Message, Packet};
use crate::socket::{Socket, Transport};
use crate::transport::ws;

/// A websocket an external transport accepted (see [`Engine::accept_websocket`]).
pub type ExternalWebSocket = ws::ExternalWs;

impl<H: Handler> Engine<H> {
    /// Opens a session for an external transport, from the request that asked for it (its
    /// headers and target are what the layer above sees as the handshake). Counts towards
    /// `max_sessions`; `Err` is the ready refusal.
    pub fn open_external<B>(
        self: &Arc<Self>,
        req: &Request<B>,
    ) -> Result<Arc<Socket<H::Data>>, Response<Body>> {
        // A push transport, as far as the layer above is concerned.
        let socket = self.open_session(Transport::Websocket, SessionTime::OwnTask, req)?;
        socket
            .external
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(socket)
    }

    /// Accepts a websocket handshake for an external transport, with the engine's limits
    /// (message size, buffers): the `101` answer to return, and the websocket, which is ready
    /// once that answer went out (`None` if the client went away first). `Err` is the ready
    /// refusal of a request that is not a valid websocket handshake.
    pub fn accept_websocket<B>(
        self: &Arc<Self>,
        req: &mut Request<B>,
    ) -> Result<
        (
            Response<Body>,
            impl Future<Output = Option<ExternalWebSocket>> + Send + 'static,
        ),
        Response<Body>,
    > {
        let response = ws::switching_protocols(req)?;
        let on_upgrade = hyper::upgrade::on(req);
        let engine = self.clone();
        Ok((response, async move {
            ws::accept_external(&engine, on_upgrade).await
        }))
    }

    /// Hands a client's message to the layer above, as a transport of this crate would.
    pub async fn receive_external(&self, socket: &Arc<Socket<H::Data>>, message: Message) {
        self.receive(socket, Packet::Message(message)).await
    }
}

impl<D> Socket<D> {
    /// The next frame for an external transport's client; `None` once the session is closed
    /// and drained. Only one caller at a time gets frames (the others wait), which is how a
    /// gateway keeps "one writer per session". Engine pings never come out: they are answered
    /// here, since the external transport checks its client's liveness itself.
    pub async fn next_external_frame(&self) -> Option<Frame> {
        let mut outbox = self.outbox.lock().await;
        loop {
            let frame = tokio::select! {
                biased;
                frame = outbox.next(&self.queue) => Some(frame),
                _ = self.closed() => outbox.try_next(&self.queue),
            }?;
            if frame == Frame::PING {
                self.pong.notify_one();
                continue;
            }
            return Some(frame);
        }
    }

    /// A frame already queued for an external transport's client, without waiting.
    pub fn try_next_external_frame(&self) -> Option<Frame> {
        let mut outbox = self.outbox.try_lock().ok()?;
        loop {
            let frame = outbox.try_next(&self.queue)?;
            if frame == Frame::PING {
                self.pong.notify_one();
                continue;
            }
            return Some(frame);
        }
    }
}

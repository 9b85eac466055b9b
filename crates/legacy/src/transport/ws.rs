//! The 0.9 websocket transport: `/socket.io/1/websocket/SID`, one message per text frame.

use std::sync::Arc;

use engineio::{DisconnectReason, Engine, ExternalWebSocket};
use futures_util::{SinkExt, StreamExt};
use socketio::Dispatcher;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use crate::session::{reconnect_advice, Outgoing, Session};

/// Carries a session on a websocket until the session or the websocket ends.
pub(crate) async fn carry_session(
    engine: Arc<Engine<Dispatcher>>,
    session: Arc<Session>,
    ws: ExternalWebSocket,
) {
    let _attached = session.attach();
    let (mut sink, mut stream) = ws.split();
    let limit = engine.config().max_payload;
    let writer = async {
        if let Some(connect) = session.take_connect() {
            if sink.send(WsMessage::text(connect)).await.is_err() {
                session.socket.close(DisconnectReason::TransportClose);
                return;
            }
        }
        loop {
            match session.next_messages(limit).await {
                Outgoing::Messages(messages) => {
                    let mut result = Ok(());
                    for message in messages {
                        result = sink.feed(WsMessage::text(message)).await;
                        if result.is_err() {
                            break;
                        }
                    }
                    if result.is_err() || sink.flush().await.is_err() {
                        session.socket.close(DisconnectReason::TransportClose);
                        return;
                    }
                }
                Outgoing::Closed { reconnect } => {
                    if reconnect {
                        let _ = sink.send(WsMessage::text(reconnect_advice())).await;
                    }
                    let _ = sink.close().await;
                    return;
                }
            }
        }
    };
    let reader = async {
        loop {
            let message = tokio::select! {
                message = stream.next() => message,
                _ = session.socket.closed() => return,
            };
            let reason = match message {
                Some(Ok(WsMessage::Text(text))) => {
                    session.receive_payload(&engine, text.as_str()).await;
                    continue;
                }
                Some(Ok(WsMessage::Binary(_))) => {
                    tracing::debug!(sid = session.id(), "binary frame on a 0.9 websocket");
                    DisconnectReason::PacketParsing
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {
                    session.touch();
                    continue;
                }
                Some(Ok(WsMessage::Close(_))) | None => DisconnectReason::TransportClose,
                Some(Err(tungstenite::Error::Capacity(_))) => DisconnectReason::PayloadTooLarge,
                Some(Err(_)) => DisconnectReason::TransportClose,
            };
            // A websocket that drops leaves the session to the close timeout: a 0.9 client
            // may come back on the same sid. Broken input ends it now.
            if reason != DisconnectReason::TransportClose {
                session.socket.close(reason);
            }
            return;
        }
    };
    // The reader ending (the client went away) ends the writer too.
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
}

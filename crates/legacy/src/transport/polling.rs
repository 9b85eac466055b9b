//! 0.9 xhr-polling: `GET /socket.io/1/xhr-polling/SID` waits for messages (at most the polling
//! duration, then a noop); `POST` to the same path carries the client's messages and is
//! answered `1`.

use std::sync::Arc;

use bytes::Bytes;
use engineio::{Body, DisconnectReason, Engine};
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use socketio::Dispatcher;

use crate::config::LegacyConfig;
use crate::framing::encode_payload;
use crate::message::{Body as MessageBody, Message};
use crate::session::{reconnect_advice, Outgoing, Session};

pub(crate) fn text_response(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    response
}

/// A GET: the first one of a session answers `1::` at once; later ones wait for messages.
pub(crate) async fn poll(
    engine: &Arc<Engine<Dispatcher>>,
    config: &LegacyConfig,
    session: &Arc<Session>,
) -> Response<Body> {
    let _attached = session.attach();
    if let Some(connect) = session.take_connect() {
        return text_response(StatusCode::OK, connect);
    }
    let limit = engine.config().max_payload;
    let waited = tokio::time::timeout(config.polling_duration, session.next_messages(limit)).await;
    let body = match waited {
        Ok(Outgoing::Messages(messages)) => encode_payload(&messages),
        Ok(Outgoing::Closed { reconnect: true }) => reconnect_advice(),
        Ok(Outgoing::Closed { reconnect: false }) | Err(_) => {
            Message::new(MessageBody::Noop).encode()
        }
    };
    text_response(StatusCode::OK, body)
}

/// A POST: decodes the body and hands its messages, in order, to the session.
pub(crate) async fn post<B>(
    engine: &Arc<Engine<Dispatcher>>,
    session: &Arc<Session>,
    body: B,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    session.touch();
    let bytes = match Limited::new(body, engine.config().max_payload)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let too_large = error.is::<http_body_util::LengthLimitError>();
            let (reason, status) = if too_large {
                (
                    DisconnectReason::PayloadTooLarge,
                    StatusCode::PAYLOAD_TOO_LARGE,
                )
            } else {
                (DisconnectReason::TransportClose, StatusCode::BAD_REQUEST)
            };
            session.socket.close(reason);
            return text_response(status, "payload refused\n".to_owned());
        }
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        tracing::debug!(
            sid = session.id(),
            "0.9 polling body is not UTF-8; closing the session"
        );
        session.socket.close(DisconnectReason::PacketParsing);
        return text_response(StatusCode::BAD_REQUEST, "body is not UTF-8\n".to_owned());
    };
    session.receive_payload(engine, text).await;
    text_response(StatusCode::OK, "1".to_owned())
}

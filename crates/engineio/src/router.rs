//! Which transport answers an HTTP request of the engine's path: CORS, the protocol version,
//! the handshake, a polling GET or POST, or a websocket (new or upgrading a session); and the
//! accept loop of servers that serve nothing but the engine. The router calls the transports
//! and the engine; neither calls it.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::engine::{error_response, json_error, Body, Engine, ErrorCode, Handler, SessionTime};
use crate::pending::PeerAddr;
use crate::socket::{Socket, Transport};
use crate::transport::ws::TcpConnection;
use crate::transport::{polling, ws};

/// The query parameters Engine.IO reads.
#[derive(Debug, Default)]
struct EngineQuery<'a> {
    eio: Option<&'a str>,
    transport: Option<&'a str>,
    sid: Option<&'a str>,
}

impl<'a> EngineQuery<'a> {
    fn parse(query: &'a str) -> Self {
        let mut parsed = EngineQuery::default();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "EIO" => parsed.eio = Some(value),
                "transport" => parsed.transport = Some(value),
                "sid" => parsed.sid = Some(value),
                _ => {}
            }
        }
        parsed
    }
}

impl<H: Handler> Engine<H> {
    /// Answers one HTTP request for the engine's path.
    pub async fn handle<B>(self: &Arc<Self>, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let allow_origin = match self.check_origin(&req) {
            Ok(allow) => allow,
            Err(response) => return response,
        };
        let mut response = self.route(req).await;
        if let Some(origin) = allow_origin {
            let headers = response.headers_mut();
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        response
    }

    async fn route<B>(self: &Arc<Self>, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if req.method() == Method::OPTIONS {
            return preflight();
        }
        let query = req.uri().query().unwrap_or("").to_owned();
        let query = EngineQuery::parse(&query);
        if query.eio != Some("4") {
            return error_response(ErrorCode::UnsupportedProtocolVersion);
        }
        let transport = match query.transport {
            Some("polling") => Transport::Polling,
            Some("websocket") => Transport::Websocket,
            _ => return error_response(ErrorCode::UnknownTransport),
        };
        let method = req.method().clone();
        match (method, transport, query.sid) {
            (Method::GET, Transport::Polling, None) => self.open_polling(req),
            (Method::GET, Transport::Websocket, None) => ws::open(self, req),
            (Method::GET, Transport::Websocket, Some(sid)) => match self.live_session(sid) {
                Some(socket) => ws::upgrade(self, socket, req),
                None => error_response(ErrorCode::UnknownSid),
            },
            (method @ (Method::GET | Method::POST), Transport::Polling, Some(sid)) => {
                let Some(socket) = self.live_session(sid) else {
                    return error_response(ErrorCode::UnknownSid);
                };
                if socket.transport() != Transport::Polling {
                    return error_response(ErrorCode::BadRequest);
                }
                if method == Method::GET {
                    polling::poll(self, &socket).await
                } else {
                    polling::post(self, &socket, req.into_body()).await
                }
            }
            _ => error_response(ErrorCode::BadHandshakeMethod),
        }
    }

    fn live_session(&self, sid: &str) -> Option<Arc<Socket<H::Data>>> {
        self.session(sid).filter(|socket| !socket.is_closed())
    }

    /// Applies the CORS policy. `Ok(Some(origin))` means the response must allow that origin.
    fn check_origin<B>(&self, req: &Request<B>) -> Result<Option<HeaderValue>, Response<Body>> {
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            // Not a browser, or a same-origin GET: nothing to allow or refuse.
            return Ok(None);
        };
        let origin_str = origin.to_str().unwrap_or("");
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok());
        if self.config.cors.allows(origin_str, host) {
            Ok(Some(origin.clone()))
        } else {
            tracing::debug!(
                origin = origin_str,
                "refused a request from a foreign origin"
            );
            Err(json_error(StatusCode::FORBIDDEN, ErrorCode::Forbidden))
        }
    }

    fn open_polling<B>(self: &Arc<Self>, req: Request<B>) -> Response<Body> {
        match self.open_session(Transport::Polling, SessionTime::OwnTask, &req) {
            Ok(socket) => {
                let open = self.open_packet(&socket);
                polling::text_response(open)
            }
            Err(response) => response,
        }
    }

    /// Accepts connections on `listener` and serves this engine on them (other paths get 404).
    /// For servers whose only job is Engine.IO: examples, tests, the conformance server.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer): (_, SocketAddr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like pass: keep serving the others.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let engine = self.clone();
            // SAFETY: the descriptor travels only in requests read from this connection, whose
            // I/O object owns it until it closes (the websocket's, after an upgrade); tokio's
            // streams are non-blocking. Nagle's algorithm stays as the listener made it.
            let tcp = unsafe { TcpConnection::new(stream.as_raw_fd(), false) };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |mut req: Request<_>| {
                    let engine = engine.clone();
                    req.extensions_mut().insert(PeerAddr(peer.ip()));
                    if req.headers().contains_key(header::UPGRADE) {
                        req.extensions_mut().insert(tcp);
                    }
                    async move {
                        let response = if engine.handles(req.uri().path()) {
                            engine.handle(req).await
                        } else {
                            not_found()
                        };
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .with_upgrades();
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "connection ended with an error");
                }
            });
        }
    }
}

fn preflight() -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    response
}

fn not_found() -> Response<Body> {
    let mut response = Response::new(Body::new(Bytes::from_static(b"Not Found")));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_engine_query() {
        let q = EngineQuery::parse("EIO=4&transport=polling&t=abc&sid=x1");
        assert_eq!(q.eio, Some("4"));
        assert_eq!(q.transport, Some("polling"));
        assert_eq!(q.sid, Some("x1"));
        let q = EngineQuery::parse("");
        assert!(q.eio.is_none() && q.transport.is_none() && q.sid.is_none());
    }
}

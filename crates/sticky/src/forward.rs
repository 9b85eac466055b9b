//! Forwarding one HTTP request to its backend, and tunnelling a websocket once the backend
//! switches protocols.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::activity::{ActiveIo, Activity};
use crate::backends::{Backend, Backends, OpenConnection};
use crate::body_deadline::{is_body_too_slow, BoxError, DeadlineBody};
use crate::error::Error;

/// Bodies the proxy passes on, streamed either way, or its own short error text.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Request bodies on their way to a backend: the client's, under a deadline, or none.
type RequestBody = BoxBody<Bytes, BoxError>;

/// The HTTP client towards the backends: keep-alive connections, pooled per backend address.
type BackendClient = Client<HttpConnector, RequestBody>;

/// What forwarding needs from the proxy.
#[derive(Debug)]
pub struct Forwarder {
    backends: Arc<Backends>,
    /// Reuses backend connections: without a pool every proxied request (one per long-poll,
    /// one per packet sent) would pay a TCP connect and the backend an accept. A connection
    /// that upgrades leaves the pool for its tunnel.
    client: BackendClient,
    tunnel_idle_timeout: Duration,
    response_timeout: Duration,
    body_read_timeout: Duration,
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1); never passed on, except
/// `Connection` and `Upgrade` of a websocket handshake, which the backend needs to switch.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// How long a backend connection may sit unused in the pool. Shorter than the keep-alive
/// timeouts servers commonly use, so the proxy closes first and seldom sends on a connection the
/// backend is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

impl Forwarder {
    pub fn new(
        backends: Arc<Backends>,
        connect_timeout: Duration,
        tunnel_idle_timeout: Duration,
        response_timeout: Duration,
        body_read_timeout: Duration,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Forwarder {
            backends,
            client,
            tunnel_idle_timeout,
            response_timeout,
            body_read_timeout,
        }
    }

    /// Sends `request` to the backend it routes to and returns that backend's answer, or a 502
    /// saying why there is none.
    pub async fn forward(
        &self,
        mut request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let owner = self
            .backends
            .owner(request.uri().path(), request.uri().query());
        let upgrade = wants_upgrade(request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        prepare_request(&mut request, peer, upgrade);
        // A request of no session and with no body (a handshake, a page) can be sent again: a
        // backend that refuses the connection passes it on to the next healthy one, so new
        // sessions avoid a stopped host before the health checks notice.
        let replay =
            (owner.is_none() && request.body().is_end_stream()).then(|| Replay::of(&request));
        let body_read_timeout = self.body_read_timeout;
        let mut request =
            Some(request.map(|body| DeadlineBody::new(body, body_read_timeout).boxed()));
        let mut refused = Vec::new();
        let (mut response, open) = loop {
            let backend = owner
                .clone()
                .or_else(|| self.backends.pick_healthy_except(&refused));
            let (Some(backend), Some(to_send)) = (backend, request.take()) else {
                let why = if refused.is_empty() {
                    "no healthy backend\n"
                } else {
                    "bad gateway: every healthy backend refused the connection\n"
                };
                return error_response(StatusCode::BAD_GATEWAY, why);
            };
            let open = OpenConnection::new(backend.clone());
            let error = match self.send(&backend, to_send).await {
                Ok(response) => break (response, open),
                Err(error) => error,
            };
            tracing::warn!(node = backend.spec.node, "{error}");
            let retry = replay
                .as_ref()
                .filter(|_| matches!(error, Error::Connect { .. }));
            let Some(replay) = retry else {
                return match error {
                    // The host of the session is gone, and its sessions with it: Engine.IO's
                    // answer for an unknown session, on which clients reconnect at once.
                    Error::Connect { .. } if owner.is_some() => unknown_session(),
                    Error::Timeout { .. } => {
                        error_response(StatusCode::GATEWAY_TIMEOUT, &format!("{error}\n"))
                    }
                    // The client keeps the rest of its body: the connection ends with this
                    // answer.
                    Error::SlowBody { .. } => {
                        let mut response =
                            error_response(StatusCode::REQUEST_TIMEOUT, &format!("{error}\n"));
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        response
                    }
                    _ => {
                        error_response(StatusCode::BAD_GATEWAY, &format!("bad gateway: {error}\n"))
                    }
                };
            };
            refused.push(backend.spec.node);
            request = Some(replay.again());
        };
        if let (StatusCode::SWITCHING_PROTOCOLS, Some(client_upgrade)) =
            (response.status(), client_upgrade)
        {
            let backend_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(
                client_upgrade,
                backend_upgrade,
                open,
                self.tunnel_idle_timeout,
            ));
            return response.map(|_| empty());
        }
        strip_hop_by_hop(response.headers_mut(), false);
        // The backend's load counts until its answer has been streamed to the client.
        response.map(|body| {
            body.map_frame(move |frame| {
                let _ = &open;
                frame
            })
            .boxed()
        })
    }

    /// Sends `request` to `backend` on a pooled connection (a new one when none is idle; the
    /// host name is resolved on every connect).
    async fn send(
        &self,
        backend: &Backend,
        mut request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, Error> {
        let address = &backend.spec.address;
        let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
        *request.uri_mut() = format!("http://{address}{target}").parse().map_err(
            |error: http::uri::InvalidUri| Error::Connect {
                address: address.clone(),
                reason: format!("not a usable address: {error}"),
            },
        )?;
        let answer = tokio::time::timeout(self.response_timeout, self.client.request(request));
        let answer = answer.await.map_err(|_| Error::Timeout {
            address: address.clone(),
            timeout: self.response_timeout,
        })?;
        answer.map_err(|error| {
            if is_body_too_slow(&error) {
                return Error::SlowBody {
                    timeout: self.body_read_timeout,
                };
            }
            let (address, reason) = (address.clone(), root_cause(&error));
            if error.is_connect() {
                Error::Connect { address, reason }
            } else {
                Error::Backend { address, reason }
            }
        })
    }
}

/// The innermost error of a chain, which says what happened: "Connection refused (os error
/// 111)" rather than "client error (Connect)".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// The head of a request without a body, to send it again to another backend.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    fn of(request: &Request<Incoming>) -> Replay {
        Replay {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
        }
    }

    fn again(&self) -> Request<RequestBody> {
        let mut request = Request::new(
            Empty::new()
                .map_err(|never: Infallible| match never {})
                .boxed(),
        );
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Whether the client asks to switch protocols (a websocket handshake).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Rewrites a client request's headers for the backend: hop-by-hop headers gone, forwarding
/// headers added. (A request without `Host` gets the backend's address from the client.)
fn prepare_request(request: &mut Request<Incoming>, peer: SocketAddr, upgrade: bool) {
    let headers = request.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    let earlier: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    let peer_ip = peer.ip().to_string();
    let forwarded_for = if earlier.is_empty() {
        peer_ip
    } else {
        format!("{}, {peer_ip}", earlier.join(", "))
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), value);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
}

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Headers that `Connection` names are hop-by-hop too.
    let mut names: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    names.extend(HOP_BY_HOP.iter().map(|name| HeaderName::from_static(name)));
    for name in names {
        if keep_upgrade && (name == header::CONNECTION || name == header::UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
}

/// Copies bytes both ways between the client and the backend until either side closes or
/// nothing moves for `idle_timeout`.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    _open: OpenConnection,
    idle_timeout: Duration,
) {
    let (client, backend) = match tokio::join!(client, backend) {
        (Ok(client), Ok(backend)) => (client, backend),
        (Err(error), _) | (_, Err(error)) => {
            tracing::debug!("websocket upgrade failed: {error}");
            return;
        }
    };
    let activity = Activity::new();
    let mut client = ActiveIo::new(TokioIo::new(client), activity.clone());
    let mut backend = TokioIo::new(backend);
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
            if let Err(error) = result {
                tracing::debug!("websocket tunnel ended: {error}");
            }
        }
        () = activity.idle(idle_timeout) => {
            tracing::debug!("websocket tunnel idle for {idle_timeout:?}: closed");
        }
    }
}

fn empty() -> ProxyBody {
    Empty::new()
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Engine.IO's own answer for a session it does not know, on which clients reconnect.
fn unknown_session() -> Response<ProxyBody> {
    engineio::unknown_session().map(|body| body.map_err(|never| match never {}).boxed())
}

/// A short plain-text answer of the proxy itself.
pub fn error_response(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(text.to_owned()))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

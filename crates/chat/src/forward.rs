//! Requests for sessions of another process of the same app (DESIGN §5): HTTP keep-alive lets
//! one connection carry requests of several sessions, but each session lives in the process
//! that opened it. Such a request is passed to that process over its private socket, and its
//! answer relayed; a websocket upgrade is then tunnelled both ways.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use engineio::Body;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

/// A connection to a peer process, being opened.
pub type Connecting = Pin<Box<dyn Future<Output = std::io::Result<UnixStream>> + Send>>;

/// The other processes of this app on this host.
pub trait Peers: Send + Sync + std::fmt::Debug {
    /// The peer that owns session `sid`, if that is not this process.
    fn owner(&self, sid: &str) -> Option<u16>;
    /// Opens a connection to peer `id`.
    fn connect(&self, id: u16) -> Connecting;
    /// Opens a connection to the process this one handed its live sessions to (on reload),
    /// once it has: requests for those sessions that still come here go there.
    fn successor(&self) -> Option<Connecting> {
        None
    }
}

/// The session id of a request, by the rule every router shares.
pub(crate) fn sid_of<B>(req: &Request<B>) -> Option<&str> {
    sticky::sid::of_request(req.uri().path(), req.uri().query())
}

/// Passes `req` to the peer behind `connecting` and returns its answer; answers larger than
/// `max_body` are refused.
pub(crate) async fn forward(
    mut req: Request<Incoming>,
    connecting: Connecting,
    max_body: usize,
) -> Response<Body> {
    let upgrade = wants_upgrade(req.headers());
    let client_side = upgrade.then(|| hyper::upgrade::on(&mut req));
    let stream = match connecting.await {
        Ok(stream) => stream,
        // The owner is gone: its sessions are, too. The client reconnects.
        Err(_) => return engineio::unknown_session(),
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(stream)).await
    else {
        return engineio::unknown_session();
    };
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "forwarded connection ended with an error");
        }
    });
    let mut response = match sender.send_request(req).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%error, "the owner of a session did not answer");
            return engineio::unknown_session();
        }
    };
    if let (Some(client_side), StatusCode::SWITCHING_PROTOCOLS) = (client_side, response.status()) {
        let owner_side = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (Ok(client), Ok(owner)) = tokio::join!(client_side, owner_side) else {
                return;
            };
            let (mut client, mut owner) = (TokioIo::new(client), TokioIo::new(owner));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut owner).await;
        });
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, Full::new(Bytes::new()));
    }
    let (parts, body) = response.into_parts();
    match Limited::new(body, max_body).collect().await {
        Ok(body) => Response::from_parts(parts, Full::new(body.to_bytes())),
        Err(_) => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"bad gateway\n")));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            response
        }
    }
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

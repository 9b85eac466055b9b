//! The 0.9 endpoint: the handshake (with the application's authorization, as the book's
//! chapter 4 does it from the login cookie), the session table, and routing of
//! `/socket.io/1/<transport>/<sid>` requests.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use engineio::Body;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use socketio::SocketIo;

use crate::config::LegacyConfig;
use crate::session::{reconnect_advice, Session};
use crate::transport::polling::{self, text_response};
use crate::transport::ws;

/// The protocol number in 0.9 paths (`/socket.io/1/...`).
const PROTOCOL: &str = "1";

/// Decides at handshake whether a client may open a session, from its request headers (its
/// cookies). `true` admits it.
pub type Authorize =
    Arc<dyn Fn(&HeaderMap) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// The transports offered in the handshake, in the client's order of preference.
const TRANSPORTS: &str = "websocket,xhr-polling";

/// The Socket.IO 0.9 endpoint of a v4 server.
pub struct LegacyEndpoint {
    io: SocketIo,
    config: LegacyConfig,
    authorize: Option<Authorize>,
    /// `/socket.io/1`: the engine's path and the protocol number.
    prefix: String,
    sessions: RwLock<HashMap<Arc<str>, Arc<Session>>>,
}

/// Where a request of the endpoint goes.
enum Route<'a> {
    Handshake,
    Polling(&'a str),
    Websocket(&'a str),
    Unsupported,
}

impl LegacyEndpoint {
    /// An endpoint whose sessions live in `io`'s namespaces. `authorize`, if given, runs at
    /// every handshake.
    pub fn new(io: SocketIo, config: LegacyConfig, authorize: Option<Authorize>) -> Arc<Self> {
        let prefix = format!("{}{PROTOCOL}", io.engine().config().path);
        Arc::new(LegacyEndpoint {
            io,
            config,
            authorize,
            prefix,
            sessions: RwLock::new(HashMap::new()),
        })
    }

    /// Whether a request path is the 0.9 endpoint's (never, when it is switched off).
    pub fn handles(&self, path: &str) -> bool {
        self.config.enabled
            && path
                .strip_prefix(self.prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// 0.9 sessions open right now.
    pub fn session_count(&self) -> usize {
        self.sessions.read().map(|s| s.len()).unwrap_or(0)
    }

    fn route<'a>(&self, path: &'a str) -> Route<'a> {
        let rest = path
            .strip_prefix(self.prefix.as_str())
            .unwrap_or_default()
            .trim_start_matches('/');
        let mut parts = rest.splitn(2, '/');
        match (parts.next(), parts.next()) {
            (Some(""), None) => Route::Handshake,
            (Some("xhr-polling"), Some(sid)) if !sid.is_empty() => {
                Route::Polling(sid.trim_end_matches('/'))
            }
            (Some("websocket"), Some(sid)) if !sid.is_empty() => {
                Route::Websocket(sid.trim_end_matches('/'))
            }
            _ => Route::Unsupported,
        }
    }

    /// Answers one request of the endpoint.
    pub async fn handle<B>(self: &Arc<Self>, mut req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path().to_owned();
        let engine = self.io.engine();
        match (self.route(&path), req.method().clone()) {
            (Route::Handshake, Method::GET) => self.handshake(&req).await,
            (Route::Polling(sid), Method::GET) => match self.session(sid) {
                Some(session) => polling::poll(engine, &self.config, &session).await,
                None => not_handshaken(),
            },
            (Route::Polling(sid), Method::POST) => match self.session(sid) {
                Some(session) => polling::post(engine, &session, req.into_body()).await,
                None => not_handshaken(),
            },
            (Route::Websocket(sid), Method::GET) => {
                let session = self.session(sid);
                let (response, websocket) = match engine.accept_websocket(&mut req) {
                    Ok(accepted) => accepted,
                    Err(refusal) => return refusal,
                };
                let engine = engine.clone();
                tokio::spawn(async move {
                    let Some(mut websocket) = websocket.await else {
                        return;
                    };
                    match session {
                        Some(session) => ws::carry_session(engine, session, websocket).await,
                        None => {
                            use futures_util::SinkExt;
                            let advice = reconnect_advice();
                            let _ = websocket.send(advice.into()).await;
                            let _ = websocket.close(None).await;
                        }
                    }
                });
                response
            }
            (Route::Unsupported, _) => text_response(
                StatusCode::BAD_REQUEST,
                "transport not supported: 0.9 clients may use websocket or xhr-polling\n"
                    .to_owned(),
            ),
            _ => text_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".to_owned(),
            ),
        }
    }

    fn session(&self, sid: &str) -> Option<Arc<Session>> {
        let session = self.sessions.read().ok()?.get(sid).cloned()?;
        (!session.socket.is_closed()).then_some(session)
    }

    /// `GET /socket.io/1/`: authorizes the client, opens its session and answers
    /// `sid:heartbeat timeout:close timeout:transports`.
    async fn handshake<B>(self: &Arc<Self>, req: &Request<B>) -> Response<Body> {
        if let Some(authorize) = &self.authorize {
            if !authorize(req.headers()).await {
                return text_response(StatusCode::UNAUTHORIZED, "handshake unauthorized".into());
            }
        }
        let socket = match self.io.engine().open_external(req) {
            Ok(socket) => socket,
            Err(refusal) => return refusal,
        };
        let session = Session::new(socket, self.config.clone());
        if let Ok(mut sessions) = self.sessions.write() {
            sessions.insert(session.id().into(), session.clone());
        }
        // The default namespace is joined at once, as 0.9 clients expect; an application
        // without one refuses it, and the session lives on for its other namespaces.
        let engine = self.io.engine().clone();
        let connect_default = socketio_connect_default();
        engine
            .receive_external(&session.socket, connect_default)
            .await;
        let endpoint = self.clone();
        let timers = session.clone();
        tokio::spawn(async move {
            timers.clone().run_timers().await;
            timers.socket.closed().await;
            if let Ok(mut sessions) = endpoint.sessions.write() {
                sessions.remove(timers.id());
            }
        });
        let body = format!(
            "{}:{}:{}:{TRANSPORTS}",
            session.id(),
            seconds(self.config.heartbeat_timeout),
            seconds(self.config.close_timeout),
        );
        text_response(StatusCode::OK, body)
    }
}

/// The v5 CONNECT to the default namespace.
fn socketio_connect_default() -> engineio::Message {
    engineio::Message::Text("0".into())
}

/// What a request for an unknown or ended session gets: the 0.9 advice to handshake again.
fn not_handshaken() -> Response<Body> {
    text_response(StatusCode::OK, reconnect_advice())
}

/// Seconds as the handshake writes them; 0.9 clients multiply by 1000, so fractions work.
fn seconds(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        duration.as_secs().to_string()
    } else {
        format!("{}", duration.as_millis() as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_times_are_seconds_with_fractions_when_needed() {
        assert_eq!(seconds(Duration::from_secs(60)), "60");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5");
        assert_eq!(seconds(Duration::from_millis(250)), "0.25");
    }
}

//! The chat's HTTP routes: the pages, login and logout, the static assets and the browser
//! client; Socket.IO requests go on to the Socket.IO servers (or to the worker that owns their
//! session).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use engineio::Body;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::cookie::{clear_cookie_header, COOKIE_NAME};
use crate::rooms;
use crate::server::ChatServer;
use crate::store::{Session, StoreError};
use crate::{pages, validate, ChatConfig};

/// Largest login form accepted; a nickname needs far less. Read within the engine's
/// `body_read_timeout`.
const MAX_FORM_BYTES: usize = 4096;

const CSS: &str = include_str!("../assets/chat.css");
const ROOMS_JS: &str = include_str!("../assets/rooms.js");
const CHATROOM_JS: &str = include_str!("../assets/chatroom.js");

impl ChatServer {
    /// Answers one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        if self.io.handles(path) || self.legacy.handles(path) {
            let peers = self.state.config.peers.as_ref();
            let max_body = self.state.config.io.engine.max_payload.saturating_mul(2);
            let sid = crate::forward::sid_of(&req);
            // A session handed to another process on reload is served there, whatever the id
            // in its sid; one adopted from another process is served here.
            if let (Some(peers), Some(sid)) = (peers, sid) {
                let wait = self.state.config.io.engine.ws_write_timeout;
                if self.io.engine().moved_away(sid, wait).await {
                    if let Some(successor) = peers.successor() {
                        return crate::forward::forward(req, successor, max_body).await;
                    }
                }
            }
            let here = sid.is_some_and(|sid| self.io.engine().session(sid).is_some());
            let owner = peers
                .filter(|_| !here)
                .and_then(|peers| Some((peers, peers.owner(sid?)?)));
            if let Some((peers, owner)) = owner {
                return crate::forward::forward(req, peers.connect(owner), max_body).await;
            }
            if self.legacy.handles(path) {
                return self.legacy.handle(req).await;
            }
            return self.io.handle(req).await;
        }
        let mut response = match (req.method(), path) {
            (&Method::GET, "/") => html(StatusCode::OK, pages::landing(None, "")),
            (&Method::POST, "/login") => self.login(req).await,
            (&Method::GET, "/rooms") => self.rooms(&req).await,
            (&Method::GET, "/chatroom") => self.chatroom(&req).await,
            (&Method::POST, "/logout") => self.logout(&req).await,
            (&Method::GET, "/healthz") => plain(StatusCode::OK, "ok"),
            (&Method::GET, "/socket.io/socket.io.js") => {
                asset("application/javascript; charset=utf-8", crate::CLIENT_JS)
            }
            (&Method::GET, "/static/chat.css") => asset("text/css; charset=utf-8", CSS),
            (&Method::GET, "/static/rooms.js") => {
                asset("application/javascript; charset=utf-8", ROOMS_JS)
            }
            (&Method::GET, "/static/chatroom.js") => {
                asset("application/javascript; charset=utf-8", CHATROOM_JS)
            }
            (_, "/" | "/login" | "/rooms" | "/chatroom" | "/logout" | "/healthz") => {
                plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
            _ => html(
                StatusCode::NOT_FOUND,
                pages::message_page("Not found", "There is no page here."),
            ),
        };
        sticky::page_headers::secure_headers(response.headers_mut());
        response
    }

    /// The session of the request's cookie, if valid.
    async fn session<B>(&self, req: &Request<B>) -> Option<Session> {
        self.state.session_of(req.headers()).await
    }

    /// Whether a form POST comes from one of our own pages: a page on another site must not
    /// log a visitor in or out (login CSRF). Browsers say where a request comes from with
    /// `Origin` (and `Sec-Fetch-Site`); a client that says nothing is not a browser on a
    /// foreign page.
    fn sent_by_our_pages<B>(&self, req: &Request<B>) -> bool {
        let headers = req.headers();
        match headers.get(header::ORIGIN) {
            // The origins the app allows (--allow-origin) may post too.
            Some(origin) => {
                let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
                origin
                    .to_str()
                    .is_ok_and(|origin| self.state.config.io.engine.cors.allows(origin, host))
            }
            None => !matches!(
                headers
                    .get("sec-fetch-site")
                    .and_then(|site| site.to_str().ok()),
                Some("cross-site" | "same-site")
            ),
        }
    }

    /// The address a request comes from: its peer, or what a trusted proxy says.
    fn client_address<B>(&self, req: &Request<B>) -> Option<IpAddr> {
        let peer = req.extensions().get::<engineio::PeerAddr>()?.0;
        if !self.state.config.trusted_proxies.contains(&peer) {
            return Some(peer);
        }
        // The proxy appends the address it saw last: earlier entries are the client's word.
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .next_back()
            .and_then(|last| last.trim().parse().ok());
        Some(forwarded.unwrap_or(peer))
    }

    async fn login(&self, req: Request<Incoming>) -> Response<Body> {
        if !self.sent_by_our_pages(&req) {
            return plain(
                StatusCode::FORBIDDEN,
                "login refused: the form was sent from a page of another site",
            );
        }
        if let Some(address) = self.client_address(&req) {
            if let Err(wait) = self.state.logins.spend(address, Instant::now()) {
                return too_many_logins(wait, &self.state.config);
            }
        }
        // The same whole-body deadline as Engine.IO's POSTs: a slow login form holds a
        // connection no longer than a slow polling POST.
        let deadline = self.state.config.io.engine.body_read_timeout;
        let body = match engineio::read_body(req.into_body(), MAX_FORM_BYTES, deadline).await {
            Ok(body) => body,
            Err(error @ engineio::BodyError::TooLarge { .. }) => {
                return plain(error.status(), "form too large")
            }
            Err(error @ engineio::BodyError::TooSlow { .. }) => {
                return plain(error.status(), "the form did not arrive in time")
            }
            Err(error) => return plain(error.status(), "the form could not be read"),
        };
        let nickname = form_urlencoded::parse(&body)
            .find(|(key, _)| key == "nickname")
            .map(|(_, value)| value.into_owned())
            .unwrap_or_default();
        let valid = match validate::nickname(&nickname) {
            Ok(valid) => valid,
            Err(error) => {
                return html(
                    StatusCode::BAD_REQUEST,
                    pages::landing(Some(&error.to_string()), &nickname),
                );
            }
        };
        let config = &self.state.config;
        match self
            .state
            .store
            .create_session(valid, config.session_ttl)
            .await
        {
            Ok(session) => {
                let cookie = self.state.signer.set_cookie_header(
                    &session.id,
                    config.session_ttl,
                    config.secure_cookies,
                );
                let mut response = redirect("/rooms");
                if let Ok(cookie) = HeaderValue::from_str(&cookie) {
                    response.headers_mut().insert(header::SET_COOKIE, cookie);
                }
                response
            }
            Err(error @ StoreError::Full(_)) => {
                log_refused_login(&error);
                html(
                    StatusCode::SERVICE_UNAVAILABLE,
                    pages::landing(
                        Some("Too many people are logged in right now, try again later."),
                        valid,
                    ),
                )
            }
            Err(error) => {
                tracing::warn!(%error, "cannot create a session");
                html(
                    StatusCode::SERVICE_UNAVAILABLE,
                    pages::landing(Some("Sessions are unavailable, try again."), valid),
                )
            }
        }
    }

    async fn rooms(&self, req: &Request<Incoming>) -> Response<Body> {
        let Some(session) = self.session(req).await else {
            return redirect("/");
        };
        let rooms = self.state.store.room_counts().await.unwrap_or_default();
        html(StatusCode::OK, pages::rooms(&session.nickname, &rooms))
    }

    async fn chatroom(&self, req: &Request<Incoming>) -> Response<Body> {
        let Some(session) = self.session(req).await else {
            return redirect("/");
        };
        let room = req
            .uri()
            .query()
            .and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "room")
                    .map(|(_, v)| v.into_owned())
            })
            .unwrap_or_default();
        match validate::room(&room) {
            Ok(room) => html(StatusCode::OK, pages::chatroom(&session.nickname, room)),
            Err(error) => html(
                StatusCode::BAD_REQUEST,
                pages::message_page("Invalid room", &error.to_string()),
            ),
        }
    }

    async fn logout(&self, req: &Request<Incoming>) -> Response<Body> {
        if !self.sent_by_our_pages(req) {
            return plain(
                StatusCode::FORBIDDEN,
                "logout refused: the form was sent from a page of another site",
            );
        }
        if let Some(id) = cookie(req, COOKIE_NAME).and_then(|v| self.state.signer.verify(v).ok()) {
            let _ = self.state.store.delete_session(id).await;
            // The login's open chat connections end too, on whichever worker they are.
            for path in [rooms::INFRA, rooms::COM] {
                if let Some(ns) = self.io.of(path) {
                    ns.to(rooms::session_room(id)).disconnect();
                }
            }
        }
        let mut response = redirect("/");
        if let Ok(clear) = HeaderValue::from_str(&clear_cookie_header()) {
            response.headers_mut().insert(header::SET_COOKIE, clear);
        }
        response
    }
}

/// 429 with the number of seconds until the address may log in again.
fn too_many_logins(wait: Duration, config: &ChatConfig) -> Response<Body> {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let message = format!(
        "Too many logins from your address: at most {} per {} s. Try again in {} s.",
        config.logins_per_address,
        config.login_window.as_secs(),
        seconds.max(1)
    );
    let mut response = html(
        StatusCode::TOO_MANY_REQUESTS,
        pages::landing(Some(&message), ""),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

/// Logs a login refused because the session store is full, at most once a minute: a crowd
/// of clients triggers it.
fn log_refused_login(error: &StoreError) {
    static LAST: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let Ok(mut last) = LAST.lock() else { return };
    let now = Instant::now();
    if last.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(60)) {
        *last = Some(now);
        tracing::warn!(%error, "refusing logins: the session store is full (raise --max-stored-sessions, or shorten the session TTL)");
    }
}

fn cookie<'a, B>(req: &'a Request<B>, name: &str) -> Option<&'a str> {
    socketio::cookie(req.headers(), name)
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Body::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut response = response(status, "text/html; charset=utf-8", page);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    response(status, "text/plain; charset=utf-8", text)
}

fn asset(content_type: &'static str, text: &'static str) -> Response<Body> {
    let mut response = response(StatusCode::OK, content_type, text);
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

fn redirect(to: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    response
}

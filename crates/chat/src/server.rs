//! The chat's HTTP server: page routes, static assets, the browser client, and Socket.IO, on
//! one listening socket.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use engineio::Body;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use legacy::{Authorize, LegacyEndpoint};
use socketio::SocketIo;
use tokio::net::{TcpListener, TcpStream};

use crate::connection_slot::SlottedIo;
use crate::cookie::{clear_cookie_header, CookieSigner, COOKIE_NAME};
use crate::events::{self, ChatState};
use crate::login_budget::LoginBudgets;
use crate::rate_limit::Rate;
use crate::store::{Session, Store, StoreError};
use crate::{pages, validate, ChatConfig};

/// Largest login form accepted; a nickname needs far less. Read within the engine's
/// `body_read_timeout`.
const MAX_FORM_BYTES: usize = 4096;

const CSS: &str = include_str!("../assets/chat.css");
const ROOMS_JS: &str = include_str!("../assets/rooms.js");
const CHATROOM_JS: &str = include_str!("../assets/chatroom.js");

/// Where a server's connections come from: a listening socket, or a supervisor handing
/// accepted ones over.
pub trait Accept {
    /// The next connection; `None` when no more will come.
    fn accept(&mut self) -> impl Future<Output = std::io::Result<Option<TcpStream>>>;
    /// After shutdown: a connection already on its way to this server (handed over before the
    /// supervisor stopped sending), if there is one right now.
    fn queued(&mut self) -> Option<TcpStream> {
        None
    }
}

impl Accept for TcpListener {
    async fn accept(&mut self) -> std::io::Result<Option<TcpStream>> {
        TcpListener::accept(self)
            .await
            .map(|(stream, _)| Some(stream))
    }
}

/// The chat application: construct it, then [`ChatServer::serve`] a listener.
#[derive(Clone)]
pub struct ChatServer {
    io: SocketIo,
    /// The book's 0.9 clients, in the same namespaces and rooms as `io`'s.
    legacy: Arc<LegacyEndpoint>,
    state: Arc<ChatState>,
}

impl ChatServer {
    pub fn new(config: ChatConfig, store: Arc<dyn Store>) -> Self {
        let io = SocketIo::new(config.io.clone());
        let signer = CookieSigner::new(&config.secret);
        let login_rate = Rate {
            burst: config.logins_per_address,
            window: config.login_window,
        };
        let logins = LoginBudgets::new(login_rate, config.max_login_addresses);
        let state = Arc::new(ChatState {
            config,
            store,
            signer,
            logins,
        });
        events::register(&io, state.clone());
        // As in the book's chapter 4: a 0.9 client needs a login before its handshake.
        let authorize: Authorize = {
            let state = state.clone();
            Arc::new(move |headers| {
                let state = state.clone();
                let headers = headers.clone();
                Box::pin(async move { session_of(&state, &headers).await.is_some() })
            })
        };
        let legacy = LegacyEndpoint::new(io.clone(), state.config.legacy.clone(), Some(authorize));
        ChatServer { io, legacy, state }
    }

    /// The Socket.IO server underneath (for counts, broadcasts, shutdown).
    pub fn io(&self) -> &SocketIo {
        &self.io
    }

    /// Serves connections from `listener` until `shutdown` completes with a drain timeout.
    /// Then it stops accepting, closes the Socket.IO sessions (clients reconnect to another
    /// worker at once), lets in-flight requests finish and closes idle keep-alive connections,
    /// waiting at most the drain timeout.
    pub async fn serve(
        &self,
        mut listener: impl Accept,
        shutdown: impl Future<Output = std::time::Duration>,
    ) -> std::io::Result<()> {
        let max = self.state.config.max_connections;
        let slots = Arc::new(tokio::sync::Semaphore::new(max));
        let (draining, _) = tokio::sync::watch::channel(false);
        tokio::pin!(shutdown);
        let drain_timeout = loop {
            // At the connection cap, wait for a slot before accepting: excess clients queue in
            // the kernel backlog instead of costing memory here.
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.map_err(std::io::Error::other)?,
                timeout = &mut shutdown => break timeout,
            };
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(Some(stream)) => stream,
                    // No more connections will come: wait for the drain order.
                    Ok(None) => break shutdown.await,
                    Err(error) => {
                        // EMFILE and friends are transient: log, back off, keep serving.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                timeout = &mut shutdown => break timeout,
            };
            self.spawn_connection(stream, &draining, Some(permit));
        };
        tracing::info!(?drain_timeout, "draining");
        draining.send_replace(true);
        // Connections handed over before the supervisor stopped sending are answered too
        // (with `Connection: close`); the cap does not apply to these few.
        while let Some(stream) = listener.queued() {
            self.spawn_connection(stream, &draining, None);
        }
        drop(listener);
        self.io.close();
        let all_closed = slots.acquire_many(max as u32);
        if tokio::time::timeout(drain_timeout, all_closed)
            .await
            .is_err()
        {
            tracing::warn!("drain timeout: closing the remaining connections");
        }
        Ok(())
    }

    fn spawn_connection(
        &self,
        stream: TcpStream,
        draining: &tokio::sync::watch::Sender<bool>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        // Requests and handshakes go out at once; a websocket lets the kernel coalesce its
        // frames once open, unless --tcp-nodelay (see `engineio::CoalesceWrites`).
        let _ = stream.set_nodelay(true);
        let coalesce = (!self.state.config.tcp_nodelay).then(|| coalesce_writes(&stream));
        let peer = stream.peer_addr().ok().map(|address| address.ip());
        // The socket holds its place under max_connections, also after a websocket upgrade.
        let stream = SlottedIo::new(stream, permit);
        let server = self.clone();
        let mut drain = draining.subscribe();
        tokio::spawn(async move {
            server
                .serve_connection(stream, Origin { peer, coalesce }, async move {
                    let _ = drain.wait_for(|d| *d).await;
                })
                .await;
        });
    }

    /// Serves HTTP/1.1 (with websocket upgrades) on one connection, of any transport (TCP, or
    /// a worker's private unix socket). `origin` says what is known of the connection (see
    /// [`Origin`]). When `drain` completes, the request in flight finishes and the connection
    /// closes.
    pub async fn serve_connection<T>(&self, io: T, origin: Origin, drain: impl Future<Output = ()>)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let server = self.clone();
        // Set when draining: every answer from then on says `Connection: close`, so the client
        // sends its next request on a new connection (to a worker that is not going away)
        // rather than on one this worker is about to close.
        let closing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let closing_flag = closing.clone();
        let Origin { peer, coalesce } = origin;
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let server = server.clone();
            let closing = closing_flag.clone();
            if let Some(peer) = peer {
                req.extensions_mut().insert(engineio::PeerAddr(peer));
            }
            // Only a websocket upgrade uses it: a polling request is spared the clone.
            if let Some(coalesce) = coalesce
                .as_ref()
                .filter(|_| req.headers().contains_key(header::UPGRADE))
            {
                req.extensions_mut().insert(coalesce.clone());
            }
            async move {
                let mut response = server.handle(req).await;
                if closing.load(std::sync::atomic::Ordering::Acquire)
                    && response.status() != StatusCode::SWITCHING_PROTOCOLS
                {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(self.state.config.header_read_timeout)
            .serve_connection(hyper_util::rt::TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(connection);
        tokio::pin!(drain);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            _ = &mut drain => {
                closing.store(true, std::sync::atomic::Ordering::Release);
                // A connection that gets a request within the grace closes after answering it;
                // a quiet one is closed when the grace is over (hyper finishes a request in
                // flight first).
                let quiet = tokio::time::sleep(self.state.config.drain_idle_grace);
                tokio::select! {
                    result = connection.as_mut() => result,
                    _ = quiet => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                }
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "connection ended with an error");
        }
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        if self.io.handles(path) || self.legacy.handles(path) {
            let peers = self.state.config.peers.as_ref();
            let owner =
                peers.and_then(|peers| Some((peers, peers.owner(crate::forward::sid_of(&req)?)?)));
            if let Some((peers, owner)) = owner {
                let max_body = self.state.config.io.engine.max_payload.saturating_mul(2);
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
        secure_headers(response.headers_mut());
        response
    }

    /// The session of the request's cookie, if valid.
    async fn session<B>(&self, req: &Request<B>) -> Option<Session> {
        session_of(&self.state, req.headers()).await
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
            for path in [events::INFRA, events::COM] {
                if let Some(ns) = self.io.of(path) {
                    ns.to(events::session_room(id)).disconnect();
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

/// The login of a request's session cookie, if valid.
async fn session_of(state: &ChatState, headers: &HeaderMap) -> Option<Session> {
    let value = cookie_in(headers, COOKIE_NAME)?;
    let id = state.signer.verify(value).ok()?;
    state.store.session(id).await.ok().flatten()
}

fn cookie<'a, B>(req: &'a Request<B>, name: &str) -> Option<&'a str> {
    cookie_in(req.headers(), name)
}

fn cookie_in<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        })
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

/// Defence in depth on every page: no inline script, no foreign resources, no framing.
fn secure_headers(headers: &mut http::HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

/// What a server knows of a connection it serves.
#[derive(Default)]
pub struct Origin {
    /// The client's address, when the transport has one: Engine.IO bounds the handshakes one
    /// address may leave pending, and the login budget is per address.
    pub peer: Option<IpAddr>,
    /// How to let the kernel coalesce small writes on it, for a TCP connection.
    pub coalesce: Option<engineio::CoalesceWrites>,
}

/// Turns TCP_NODELAY off on `stream` when called: the hook a websocket calls once its session
/// is open.
fn coalesce_writes(stream: &TcpStream) -> engineio::CoalesceWrites {
    use std::os::fd::{AsRawFd, BorrowedFd};
    let fd = stream.as_raw_fd();
    engineio::CoalesceWrites(Arc::new(move || {
        // SAFETY: the hook travels only in the extensions of requests read from this
        // connection, and runs in the websocket task that owns the connection afterwards:
        // the descriptor is open whenever it runs.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = socket2::SockRef::from(&fd).set_tcp_nodelay(false);
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_draining_worker_answers_the_first_request_of_a_new_connection() {
        let config = ChatConfig {
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
            ..ChatConfig::default()
        };
        let server = ChatServer::new(config, Arc::new(MemoryStore::default()));
        let (mut client, server_side) = tokio::io::duplex(64 * 1024);
        // The drain starts before the connection has sent a byte: a connection accepted just
        // as the worker was told to drain.
        let serving = tokio::spawn(async move {
            server
                .serve_connection(server_side, Origin::default(), std::future::ready(()))
                .await
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        client
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: chat\r\n\r\n")
            .await
            .expect("the draining worker closed a new connection before its first request");
        let mut response = String::new();
        client.read_to_string(&mut response).await.unwrap();
        // Answered, then closed (read_to_string ended): the worker is going away.
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response:?}");
        assert!(response.ends_with("ok"), "{response:?}");
        serving.await.unwrap();
    }
}

//! The chat's HTTP server: the accept loop, the drain, and HTTP/1.1 on each connection, for
//! every transport (TCP, a worker's private socket). What each request gets is in `routes.rs`.

use std::future::Future;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use http::{header, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use legacy::{Authorize, LegacyEndpoint};
use socketio::SocketIo;
use tokio::net::{TcpListener, TcpStream};

use crate::connection_slot::SlottedIo;
use crate::cookie::CookieSigner;
use crate::events::{self, ChatState};
use crate::login_budget::LoginBudgets;
use crate::rate_limit::Rate;
use crate::store::Store;
use crate::ChatConfig;

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
    pub(crate) io: SocketIo,
    /// The book's 0.9 clients, in the same namespaces and rooms as `io`'s.
    pub(crate) legacy: Arc<LegacyEndpoint>,
    pub(crate) state: Arc<ChatState>,
}

impl ChatServer {
    pub fn new(config: ChatConfig, store: Arc<dyn Store>) -> Self {
        let signer = CookieSigner::new(&config.secret);
        let mut io_config = config.io.clone();
        if let Some(recovery) = &mut io_config.recovery {
            // A socket comes back only to the login it was made for: a stolen pid with
            // another login's cookie gets a fresh socket.
            let signer = signer.clone();
            recovery.binding = Some(Arc::new(move |headers| {
                let cookie = socketio::cookie(headers, crate::cookie::COOKIE_NAME)?;
                signer.verify(cookie).ok().map(str::to_owned)
            }));
        }
        // A websocket moves to the worker that replaces this one (live hand-off on reload)
        // as the TCP connection this server accepted.
        io_config.engine.detach_stream = Some(engineio::DetachStream(Arc::new(|upgraded| {
            type Accepted = hyper_util::rt::TokioIo<crate::connection_slot::SlottedIo<TcpStream>>;
            let parts = upgraded.downcast::<Accepted>().ok()?;
            let stream = parts.io.into_inner().into_inner().into_std().ok()?;
            Some((std::os::fd::OwnedFd::from(stream), parts.read_buf))
        })));
        let io = SocketIo::new(io_config);
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
                Box::pin(async move { state.session_of(&headers).await.is_some() })
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
        // Users whose connection broke and who did not come back in time are announced as
        // gone (any worker of the app may do it for another's users).
        let departures = (!self.state.config.presence_grace().is_zero()).then(|| {
            tokio::spawn(crate::events::announce_departures(
                self.state.clone(),
                self.io.clone(),
            ))
        });
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
        if let Some(departures) = departures {
            departures.abort();
        }
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
        // frames once open, unless --tcp-nodelay (see `engineio::TcpConnection`).
        let _ = stream.set_nodelay(true);
        // SAFETY: the descriptor travels only in the extensions of requests read from this
        // connection (see `serve_connection`), and the connection's I/O object owns it until
        // it closes, the websocket's after an upgrade. tokio's streams are non-blocking.
        let tcp = unsafe {
            engineio::TcpConnection::new(stream.as_raw_fd(), !self.state.config.tcp_nodelay)
        };
        let peer = stream.peer_addr().ok().map(|address| address.ip());
        // The socket holds its place under max_connections, also after a websocket upgrade.
        let stream = SlottedIo::new(stream, permit);
        let server = self.clone();
        let mut drain = draining.subscribe();
        tokio::spawn(async move {
            server
                .serve_connection(
                    stream,
                    Origin {
                        peer,
                        tcp: Some(tcp),
                    },
                    async move {
                        let _ = drain.wait_for(|d| *d).await;
                    },
                )
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
        let Origin { peer, tcp } = origin;
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let server = server.clone();
            let closing = closing_flag.clone();
            if let Some(peer) = peer {
                req.extensions_mut().insert(engineio::PeerAddr(peer));
            }
            // Only a websocket upgrade uses it: a polling request is spared the insertion.
            if let Some(tcp) = tcp.filter(|_| req.headers().contains_key(header::UPGRADE)) {
                req.extensions_mut().insert(tcp);
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
}

/// What a server knows of a connection it serves.
#[derive(Default)]
pub struct Origin {
    /// The client's address, when the transport has one: Engine.IO bounds the handshakes one
    /// address may leave pending, and the login budget is per address.
    pub peer: Option<IpAddr>,
    /// The TCP connection, for a websocket on it (see `engineio::TcpConnection`).
    pub tcp: Option<engineio::TcpConnection>,
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

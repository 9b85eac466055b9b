//! The listener: accepts client connections within the connection limit and serves HTTP/1.1
//! on each, routing every request on its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::activity::{ActiveIo, Activity};
use crate::backends::{Backends, HealthSnapshot};
use crate::config::ProxyConfig;
use crate::error::Error;
use crate::forward::Forwarder;
use crate::health;
use crate::listen;

/// A bound sticky proxy; [`Proxy::serve`] runs it.
#[derive(Debug)]
pub struct Proxy {
    listener: TcpListener,
    config: ProxyConfig,
    backends: Arc<Backends>,
}

/// Aborts the health checker when the proxy stops, so a dropped proxy probes nothing.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Proxy {
    /// Checks the configuration and binds the listening socket, or takes the one inherited
    /// from a supervisor (`LISTEN_FDS=1`).
    pub async fn bind(config: ProxyConfig) -> Result<Proxy, Error> {
        if config.backends.is_empty() {
            return Err(Error::NoBackends);
        }
        for (index, backend) in config.backends.iter().enumerate() {
            if config.backends[..index]
                .iter()
                .any(|b| b.node == backend.node)
            {
                return Err(Error::DuplicateNode(backend.node));
            }
        }
        let listener = listen::inherited_or_bound(config.listen)?;
        let backends = Arc::new(Backends::new(config.backends.clone(), config.policy));
        Ok(Proxy {
            listener,
            config,
            backends,
        })
    }

    /// Binds and serves until the task is dropped or accepting fails for good.
    pub async fn run(config: ProxyConfig) -> Result<(), Error> {
        Proxy::bind(config).await?.serve().await
    }

    /// The address clients connect to (useful with port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.listener.local_addr().map_err(|source| Error::Bind {
            address: self.config.listen,
            source,
        })
    }

    /// Each backend's health, updated on every change.
    pub fn health(&self) -> watch::Receiver<HealthSnapshot> {
        self.backends.health()
    }

    /// Accepts and serves clients forever, probing the backends meanwhile.
    pub async fn serve(self) -> Result<(), Error> {
        let config = self.config;
        let _health = AbortOnDrop(tokio::spawn(health::check_forever(
            self.backends.clone(),
            config.health_interval,
            config.health_timeout,
            config.health_misses,
        )));
        let forwarder = Arc::new(Forwarder::new(
            self.backends,
            config.connect_timeout,
            config.tunnel_idle_timeout,
            config.response_timeout,
            config.body_read_timeout,
        ));
        // A permit per client connection: without one, the next accept waits and further
        // clients queue in the kernel's backlog.
        let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let listen = self.listener.local_addr().unwrap_or(config.listen);
        tracing::info!(%listen, backends = config.backends.len(), "sticky proxy listening");
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return Ok(());
            };
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    listen::after_accept_error(&error).await;
                    continue;
                }
            };
            let forwarder = forwarder.clone();
            let limits = ClientLimits {
                idle_timeout: config.idle_timeout,
                header_read_timeout: config.header_read_timeout,
            };
            tokio::spawn(serve_client(stream, peer, permit, forwarder, limits));
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct ClientLimits {
    idle_timeout: Duration,
    header_read_timeout: Duration,
}

/// Serves one client connection: keep-alive requests, each routed on its own, until the
/// client closes, idles out, or upgrades (then the tunnel owns the socket).
async fn serve_client(
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    forwarder: Arc<Forwarder>,
    limits: ClientLimits,
) {
    let _ = stream.set_nodelay(true);
    let activity = Activity::new();
    let io = TokioIo::new(ActiveIo::new(stream, activity.clone()).holding(permit));
    let requests = activity.clone();
    let service = service_fn(move |request| {
        let forwarder = forwarder.clone();
        let in_flight = requests.request();
        async move {
            let response = forwarder.forward(request, peer).await;
            drop(in_flight);
            Ok::<_, Infallible>(response)
        }
    });
    // hyper answers a request it cannot parse with 400 and closes; the header read timeout
    // drops a client that never finishes its request head.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, "client connection ended: {error}");
            }
        }
        () = activity.idle(limits.idle_timeout) => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.header_read_timeout, connection).await;
        }
    }
}

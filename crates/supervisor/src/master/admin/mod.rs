//! The admin address (`--admin 127.0.0.1:9300`): Prometheus metrics at `/metrics`, a live
//! dashboard at `/` (a page with no external assets, fed by server-sent events at
//! `/api/feed`), and the dashboard's buttons at `POST /api/{reload,restart,scale}`. Served by
//! the master on an address of its own, never the public one; [`access`] says who may use it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use super::Inner;

pub mod access;
mod events;
mod exposition;
mod page;
mod snapshot;

pub use access::{load_token, Access};
pub(super) use events::Observer;

/// How often the live feed sends the workers' state. The workers' own counts are as fresh
/// as their last pong (`--health-interval`).
pub const FEED_INTERVAL: Duration = Duration::from_secs(1);
/// Connections the admin address serves at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// Live feeds open at once (each holds a connection for as long as its page is open).
const MAX_FEEDS: usize = 16;
/// A client that does not finish its request head in this time is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

type Body = BoxBody<Bytes, Infallible>;

/// What the admin server holds: its rules and its limits.
struct Admin {
    inner: Arc<Inner>,
    access: Access,
    feeds: Arc<Semaphore>,
}

impl Inner {
    /// Serves the admin address until the master stops.
    pub(super) async fn serve_admin(
        self: Arc<Self>,
        listener: std::net::TcpListener,
        access: Access,
    ) {
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
        {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "cannot serve the admin address");
                return;
            }
        };
        let admin = Arc::new(Admin {
            inner: self,
            access,
            feeds: Arc::new(Semaphore::new(MAX_FEEDS)),
        });
        sticky::listen::accept_bounded(&listener, MAX_CONNECTIONS, |stream| {
            let admin = admin.clone();
            async move {
                let service = service_fn(move |request| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        })
        .await;
    }
}

impl Admin {
    async fn route(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        let headers = request.headers();
        let is_action = path.starts_with("/api/") && path != "/api/feed" && path != "/api/status";
        let checked = if is_action {
            self.access.check_action(request.method(), headers)
        } else if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only");
        } else if page::asset(&path).is_some() {
            // The page itself holds nothing secret: it asks for the token before it reads.
            Ok(())
        } else {
            self.access.check_read(headers)
        };
        if let Err(refusal) = checked {
            let mut response = text(refusal.status(), refusal.message());
            if refusal.status() == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"chatctl admin\""),
                );
            }
            return response;
        }
        let observer = &self.inner.observer;
        match path.as_str() {
            "/metrics" => {
                let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                let openmetrics = exposition::wants_openmetrics(accept);
                let snapshot = self.inner.admin_snapshot(observer);
                let body = exposition::exposition(&snapshot, observer, openmetrics);
                let kind = if openmetrics {
                    exposition::OPENMETRICS
                } else {
                    exposition::TEXT
                };
                respond(StatusCode::OK, kind, body)
            }
            "/api/status" => json(StatusCode::OK, &self.inner.admin_snapshot(observer)),
            "/api/feed" => self.feed(),
            "/api/reload" => {
                let update = super::update::Update::default();
                let result = self.inner.reload_with(update, &|_| {}).await;
                answer(result)
            }
            "/api/restart" => answer(self.inner.restart(&|_| {}).await),
            "/api/scale" => {
                let instances = request.uri().query().and_then(|query| {
                    form_urlencoded::parse(query.as_bytes())
                        .find(|(name, _)| name == "instances")
                        .and_then(|(_, value)| value.parse::<usize>().ok())
                });
                match instances {
                    Some(instances) => answer(self.inner.scale(instances).await),
                    None => json(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({"error": "give ?instances=N (1 to 1024)"}),
                    ),
                }
            }
            _ => match page::asset(&path) {
                Some((kind, body)) => page::secured(respond(StatusCode::OK, kind, body)),
                None => text(StatusCode::NOT_FOUND, "not found"),
            },
        }
    }

    /// The live feed: the recent events first, then each new one and a snapshot every
    /// [`FEED_INTERVAL`], as server-sent events, until the page goes away.
    fn feed(self: &Arc<Self>) -> Response<Body> {
        let Ok(permit) = self.feeds.clone().try_acquire_owned() else {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many dashboards open at once; close one",
            );
        };
        let (recent, events) = self.inner.observer.follow();
        let first = sse("recent", &recent);
        let state = (
            self.clone(),
            events,
            tokio::time::interval(FEED_INTERVAL),
            permit,
        );
        let updates = futures_util::stream::unfold(
            state,
            |(admin, mut events, mut ticks, permit)| async move {
                let message = tokio::select! {
                    _ = ticks.tick() => {
                        let snapshot = admin.inner.admin_snapshot(&admin.inner.observer);
                        sse("snapshot", &snapshot)
                    }
                    event = events.recv() => match event {
                        Ok(event) => sse("event", &event),
                        // A page too slow for the events misses some; it keeps the rest.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Bytes::from_static(b": lagged\n\n"),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    },
                };
                Some((
                    Ok::<_, Infallible>(Frame::data(message)),
                    (admin, events, ticks, permit),
                ))
            },
        );
        let stream = futures_util::stream::iter([Ok(Frame::data(first))]);
        let body = StreamBody::new(futures_util::StreamExt::chain(stream, updates));
        let mut response = Response::new(BodyExt::boxed(body));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// One server-sent event.
fn sse(name: &str, data: &impl serde::Serialize) -> Bytes {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

fn respond(status: StatusCode, kind: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    respond(status, "application/json", body)
}

fn answer(result: Result<String, String>) -> Response<Body> {
    match result {
        Ok(message) => json(StatusCode::OK, &serde_json::json!({ "message": message })),
        Err(error) => json(StatusCode::CONFLICT, &serde_json::json!({ "error": error })),
    }
}

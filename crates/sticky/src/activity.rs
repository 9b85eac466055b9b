//! Idle detection for client connections and websocket tunnels: an I/O wrapper stamps every
//! byte moved, and [`Activity::idle`] resolves once nothing moved and no request was in flight
//! for the whole timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// When a connection last moved a byte, and how many requests it has in flight (a long-polling
/// GET moves nothing for up to a ping interval, yet is not idle).
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    last_millis: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            started: Instant::now(),
            last_millis: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_millis.store(now, Ordering::Relaxed);
    }

    /// Marks a request in flight until the returned guard drops.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Resolves once the connection has been idle for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let last =
                self.started + Duration::from_millis(self.last_millis.load(Ordering::Relaxed));
            let quiet = last.elapsed();
            if quiet >= timeout && self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            tokio::time::sleep(timeout.saturating_sub(quiet).max(Duration::from_millis(10))).await;
        }
    }
}

/// One request in flight on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An I/O object whose reads and writes count as activity.
#[derive(Debug)]
pub struct ActiveIo<T> {
    inner: T,
    activity: Arc<Activity>,
    /// The client connection's place under `max_connections`. It lives as long as the socket,
    /// which after a websocket upgrade is inside the tunnel, so tunnels count towards the limit.
    _permit: Option<OwnedSemaphorePermit>,
}

impl<T> ActiveIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        ActiveIo {
            inner,
            activity,
            _permit: None,
        }
    }

    /// The socket holds `permit` until it is closed.
    pub fn holding(mut self, permit: OwnedSemaphorePermit) -> Self {
        self._permit = Some(permit);
        self
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActiveIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActiveIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

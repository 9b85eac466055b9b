//! A client connection's place under `max_connections`, held by the connection itself.
//!
//! hyper hands the connection's I/O object to the websocket when a request upgrades, and the
//! HTTP connection task ends there. A place released with that task would let upgraded
//! websockets, which are most of a chat's connections, escape the cap; held by the I/O object,
//! it lasts exactly as long as the socket, websocket or not.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

/// An I/O object that keeps `permit` until it is dropped (the socket is closed).
#[derive(Debug)]
pub(crate) struct SlottedIo<T> {
    inner: T,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<T> SlottedIo<T> {
    pub(crate) fn new(inner: T, permit: Option<OwnedSemaphorePermit>) -> Self {
        SlottedIo {
            inner,
            _permit: permit,
        }
    }
}

impl<T> SlottedIo<T> {
    /// The connection, its place given back (it moves to another process).
    pub(crate) fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SlottedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SlottedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

//! A connected pipe: a byte stream in both directions.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use interprocess::local_socket::tokio::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connected pipe, from [`PipeListener::accept`](crate::PipeListener::accept) or
/// [`connect`](crate::connect). Implements Tokio's [`AsyncRead`] and [`AsyncWrite`]; wrap it
/// with [`length_delimited`](crate::length_delimited) to exchange messages.
///
/// ## Platform-specific behavior
///
/// On Unix, [`shutdown`](tokio::io::AsyncWriteExt::shutdown) half-closes the socket: the peer
/// reads end-of-file while it can still send. On Windows, named pipes have no half-close, so
/// `shutdown` and `flush` do nothing and the peer sees end-of-file only when the stream is
/// dropped; data written before the drop is still delivered.
#[derive(Debug)]
pub struct PipeStream {
    inner: Stream,
}

impl PipeStream {
    pub(crate) fn new(inner: Stream) -> PipeStream {
        PipeStream { inner }
    }

    pub(crate) fn inner(&self) -> &Stream {
        &self.inner
    }

    /// The value to write through. interprocess's portable `Stream` makes `poll_shutdown` a
    /// no-op on every platform and drops vectored writes; on Unix we bypass it and use the
    /// socket's own implementation so `shutdown` sends EOF and framed writes can be vectored.
    #[cfg(unix)]
    fn writer(&mut self) -> Pin<&mut impl AsyncWrite> {
        match &mut self.inner {
            Stream::UdSocket(s) => Pin::new(s),
        }
    }

    // On Windows the portable impl is right: flushing a named pipe (FlushFileBuffers) waits
    // until the peer has read everything, which can block indefinitely, and interprocess keeps
    // unread data alive after drop in its linger pool.
    #[cfg(windows)]
    fn writer(&mut self) -> Pin<&mut impl AsyncWrite> {
        Pin::new(&mut self.inner)
    }
}

impl AsyncRead for PipeStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PipeStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().writer().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().writer().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        #[cfg(unix)]
        let vectored = match &self.inner {
            Stream::UdSocket(s) => s.is_write_vectored(),
        };
        #[cfg(windows)]
        let vectored = self.inner.is_write_vectored();
        vectored
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().writer().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().writer().poll_shutdown(cx)
    }
}

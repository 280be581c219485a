//! Streams in a method signature: [`RpcStream<T>`].
//!
//! One type serves both ends of every stream. A producer builds one from local items
//! ([`RpcStream::new`], [`RpcStream::iter`], [`RpcStream::channel`]) and hands it over: a
//! handler returns it, a client passes it as an argument. A consumer receives one and reads
//! it as a `futures::Stream` of `Result<T, RpcError>`.
//!
//! What a consumer sees, in order:
//! - `Some(Ok(item))` for each item, in the order produced;
//! - then `None` when the producer ended normally,
//! - or `Some(Err(e))` then `None` when it did not: [`RpcError::DeadlineExceeded`] (the
//!   exchange's deadline passed), [`RpcError::Server`] (the handler panicked, the server
//!   is shutting down, ...), or a transport error ([`TransportError::Disconnected`]: the
//!   peer went away; `MessageTooLarge`: an item was over the message limit).
//!
//! An application error in the middle of a stream is an item: use `RpcStream<Result<T, E>>`.
//!
//! Flow control: a consumer that reads slowly pauses the producer (credit-based, counted in
//! bytes: a stream holds at most its window, 256 KiB by default, plus one item, on the
//! receiving side). A consumer that drops its stream stops the producer: a handler's
//! [`channel`](RpcStream::channel) sender then fails at its next `send`, and its `closed()`
//! resolves.
//!
//! [`TransportError::Disconnected`]: crate::TransportError::Disconnected

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};

use crate::error::{RpcError, TransportError};

/// A stream of `T` crossing the pipe, in either direction. See the [module docs](self).
pub struct RpcStream<T> {
    inner: BoxStream<'static, Result<T, RpcError>>,
}

impl<T: Send + 'static> RpcStream<T> {
    /// The items of `stream`, to hand over (return it from a handler or pass it as an
    /// argument). The engine polls it on the connection's task only while the receiver
    /// has room, so it should not block; for items that take work to produce, use
    /// [`channel`](Self::channel) and produce them in a task of your own.
    pub fn new(stream: impl Stream<Item = T> + Send + 'static) -> Self {
        RpcStream { inner: stream.map(Ok).boxed() }
    }

    /// The items of `iter`.
    pub fn iter<I>(iter: I) -> Self
    where
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        Self::new(futures::stream::iter(iter))
    }

    /// A stream fed through a channel holding at most `buffer` items (at least 1). The
    /// sender's `send` waits while the buffer is full (the consumer is slow) and fails
    /// once the consumer is gone (its `closed()` resolves then); dropping every sender
    /// ends the stream normally.
    pub fn channel(buffer: usize) -> (tokio::sync::mpsc::Sender<T>, Self) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(buffer.max(1));
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        (tx, Self::new(stream))
    }

    /// A stream whose items may already be errors (inbound streams).
    pub(crate) fn from_results(stream: impl Stream<Item = Result<T, RpcError>> + Send + 'static) -> Self {
        RpcStream { inner: stream.boxed() }
    }

    /// The stream as a wire producer: each item wrapped into the service's message enum.
    #[doc(hidden)]
    pub fn into_wire<M: Send + 'static>(self, wrap: fn(T) -> M) -> BoxStream<'static, Result<M, RpcError>> {
        self.inner.map(move |r| r.map(wrap)).boxed()
    }
}

impl<T> Stream for RpcStream<T> {
    type Item = Result<T, RpcError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl<T> std::fmt::Debug for RpcStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcStream").finish_non_exhaustive()
    }
}

/// Picks the item out of a message of the service's enum; a message of another method is
/// a protocol error.
pub(crate) fn pick_items<M, T>(
    stream: impl Stream<Item = Result<M, RpcError>> + Send + 'static,
    pick: fn(M) -> Option<T>,
) -> impl Stream<Item = Result<T, RpcError>> + Send + 'static
where
    M: Send + 'static,
    T: Send + 'static,
{
    stream.map(move |r| {
        r.and_then(|m| {
            pick(m)
                .ok_or_else(|| TransportError::Protocol { detail: "a stream item of another method".to_owned() }.into())
        })
    })
}

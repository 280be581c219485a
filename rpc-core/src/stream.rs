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
//! receiving side). A consumer that drops its stream stops the producer: a
//! [`channel`](RpcStream::channel) sender then fails at its next `send`, and its `closed()`
//! resolves; a [`sink`](RpcStream::sink) fails with [`SinkClosed`].
//!
//! [`TransportError::Disconnected`]: crate::TransportError::Disconnected

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::BoxStream;
use futures::{Sink, Stream, StreamExt};
use tokio_util::sync::PollSender;

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

    /// A stream fed through a [`Sink`] ([`RpcSink`]) holding at most `buffer` items (at
    /// least 1): for producers written against `futures::Sink` (`send`, `send_all`,
    /// `forward`). The sink is ready while the buffer has room (the consumer keeps up); it
    /// fails with [`SinkClosed`] once the consumer is gone; closing or dropping it ends the
    /// stream normally.
    pub fn sink(buffer: usize) -> (RpcSink<T>, Self) {
        let (tx, stream) = Self::channel(buffer);
        (RpcSink { inner: PollSender::new(tx) }, stream)
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

/// The producing end of [`RpcStream::sink`]: a `futures::Sink` of the stream's items.
pub struct RpcSink<T> {
    inner: PollSender<T>,
}

/// An [`RpcSink`]'s consumer is gone: it dropped the stream, or the exchange ended (the
/// handler returned, the call failed or was cancelled, the connection went away). What the
/// exchange's own outcome was, its call or stream says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stream's consumer is gone (it dropped the stream, or its exchange ended)")]
pub struct SinkClosed;

impl<T: Send + 'static> RpcSink<T> {
    /// Whether the consumer is gone (or the sink was closed): sending would fail.
    pub fn is_closed(&self) -> bool {
        self.inner.get_ref().is_none_or(|tx| tx.is_closed())
    }

    /// Resolves once the consumer is gone (at once if the sink was closed): for a
    /// producer that waits for something else and should stop when nobody reads.
    pub async fn closed(&self) {
        if let Some(tx) = self.inner.get_ref() {
            tx.closed().await;
        }
    }
}

impl<T: Send + 'static> Sink<T> for RpcSink<T> {
    type Error = SinkClosed;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), SinkClosed>> {
        self.get_mut().inner.poll_reserve(cx).map_err(|_| SinkClosed)
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), SinkClosed> {
        self.get_mut().inner.send_item(item).map_err(|_| SinkClosed)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), SinkClosed>> {
        // An item sent is in the stream's buffer: nothing is held back here.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), SinkClosed>> {
        // Dropping the channel's only sender ends the stream after what is buffered.
        self.get_mut().inner.close();
        Poll::Ready(Ok(()))
    }
}

impl<T> std::fmt::Debug for RpcSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcSink").finish_non_exhaustive()
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

#[cfg(test)]
mod tests {
    use futures::SinkExt;

    use super::*;

    #[tokio::test]
    async fn a_sink_feeds_its_stream_in_order_and_closing_it_ends_the_stream() {
        let (mut sink, stream) = RpcStream::sink(2);
        let feeder = tokio::spawn(async move {
            sink.send_all(&mut futures::stream::iter((0..100u32).map(Ok))).await.unwrap();
            sink.close().await.unwrap();
            assert!(sink.is_closed());
            // Closed by its producer: `closed` does not wait.
            sink.closed().await;
        });
        let items: Vec<u32> = stream.map(Result::unwrap).collect().await;
        assert_eq!(items, (0..100).collect::<Vec<_>>());
        feeder.await.unwrap();
    }

    #[tokio::test]
    async fn a_sink_whose_stream_is_dropped_fails_with_sink_closed() {
        let (mut sink, stream) = RpcStream::<u32>::sink(1);
        assert!(!sink.is_closed());
        sink.send(1).await.unwrap();
        drop(stream);
        assert!(sink.is_closed());
        sink.closed().await;
        assert_eq!(sink.send(2).await, Err(SinkClosed));
    }
}

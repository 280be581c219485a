//! Streams in a method signature: [`RpcStream<T>`].
//!
//! One type serves both ends of every stream. A producer builds one from local items
//! ([`RpcStream::new`], [`RpcStream::iter`], [`RpcStream::channel`], [`RpcStream::sink`])
//! and hands it over: a handler returns it, a client passes it as an argument. A consumer
//! receives one and reads it as a `futures::Stream` of `Result<T, RpcError>`, or takes what
//! has arrived in batches with [`RpcStream::recv_many`].
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
//! bytes: a stream holds at most its window, 512 KiB by default, plus one item, on the
//! receiving side, and up to 4 KiB of items `next` took ahead). A consumer that drops its
//! stream stops the producer: a [`channel`](RpcStream::channel) sender then fails at its next `send`, and its `closed()`
//! resolves; a [`sink`](RpcStream::sink) fails with [`SinkClosed`].
//!
//! [`TransportError::Disconnected`]: crate::TransportError::Disconnected

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::BoxStream;
use futures::{Sink, Stream, StreamExt};
use tokio_util::sync::PollSender;

use crate::error::{RpcError, TransportError};

/// A stream of `T` crossing the pipe, in either direction. See the [module docs](self).
pub struct RpcStream<T> {
    inner: Inner<T>,
    /// How a local stream ended, seen by [`recv_many`](Self::recv_many) behind items it
    /// returned: reported by the next read.
    held_end: Option<Option<RpcError>>,
}

enum Inner<T> {
    /// Items produced here, or any stream of results.
    Local(BoxStream<'static, Result<T, RpcError>>),
    /// Items received from the peer.
    Inbound(Received<T>),
}

/// An inbound stream's source, and the items already taken from it that `next` has not
/// returned yet.
struct Received<T> {
    source: Box<dyn Inbound<T>>,
    ahead: VecDeque<T>,
}

impl<T> Received<T> {
    /// The items read ahead, if there are any that may still be handed out: none once the
    /// stream has failed (its error comes now, not after them, and they are dropped).
    fn ahead(&mut self) -> Option<&mut VecDeque<T>> {
        if self.ahead.is_empty() {
            return None;
        }
        if self.source.failed() {
            self.ahead.clear();
            return None;
        }
        Some(&mut self.ahead)
    }
}

/// How many items one `next` takes from an inbound stream's queue at most, for the calls
/// after it: one look at the queue (one virtual call, one pass over the source's layers)
/// per few dozen small items instead of per item.
const AHEAD_ITEMS: usize = 64;

/// What the items taken ahead may add up to at most (their frames' bytes, the first item
/// taken included, which `next` returns at once), so reading ahead adds at most this to a
/// stream's memory: a large item is taken alone, as without it.
const AHEAD_BYTES: usize = 4096;

/// An inbound stream as [`RpcStream`] reads it: the items that are ready, in batches.
pub(crate) trait Inbound<T>: Send {
    /// Moves up to `limit` (at least 1) ready items to `out`: `Some(Ok(n))` with `n >= 1`;
    /// `None` at the normal end; `Some(Err)` when the stream failed (after the items before
    /// the failure, which earlier calls moved); `Pending` while none is ready.
    fn poll_many(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<T>,
        limit: usize,
    ) -> Poll<Option<Result<usize, RpcError>>>;

    /// As [`poll_many`](Self::poll_many) into a queue, stopping before an item whose frame
    /// would bring the bytes moved past `max_bytes` (the first is always moved).
    fn poll_ahead(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<T>,
        limit: usize,
        max_bytes: usize,
    ) -> Poll<Option<Result<usize, RpcError>>>;

    /// Whether the stream has failed (the connection is gone, the exchange failed): its
    /// error then comes before the items taken ahead, which are dropped.
    fn failed(&self) -> bool;
}

/// Where an inbound stream's messages come from: the engine's handle on the exchange.
pub(crate) trait Source<M>: Send {
    /// Hands up to `limit` (at least 1) ready messages to `take`, stopping early when it
    /// returns false or before a message whose frame would bring the bytes handed out past
    /// `max_bytes` (the first is always handed out); otherwise as [`Inbound::poll_many`].
    fn poll_each(
        &mut self,
        cx: &mut Context<'_>,
        limit: usize,
        max_bytes: usize,
        take: impl FnMut(M) -> bool,
    ) -> Poll<Option<Result<usize, RpcError>>>;

    /// Whether the stream has failed (see [`Inbound::failed`]).
    fn failed(&self) -> bool;
}

impl<T: Send + 'static> RpcStream<T> {
    /// The items of `stream`, to hand over (return it from a handler or pass it as an
    /// argument). The engine polls it on the connection's task only while the receiver
    /// has room, so it should not block; for items that take work to produce, use
    /// [`channel`](Self::channel) and produce them in a task of your own.
    pub fn new(stream: impl Stream<Item = T> + Send + 'static) -> Self {
        Self::from_results(stream.map(Ok))
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

    /// A stream whose items may already be errors.
    pub(crate) fn from_results(stream: impl Stream<Item = Result<T, RpcError>> + Send + 'static) -> Self {
        RpcStream { inner: Inner::Local(stream.boxed()), held_end: None }
    }

    /// The items the peer sends through `source`, picked out of its messages by `pick`.
    /// (A closure's own type, not a function pointer: the pick is inlined into the loop
    /// that hands items out, instead of taking and returning each item through memory.)
    pub(crate) fn inbound<M: Send + 'static>(
        source: impl Source<M> + 'static,
        pick: impl Fn(M) -> Option<T> + Send + 'static,
    ) -> Self {
        let picked = Picked { source, pick, _types: std::marker::PhantomData, stray: None, over: false };
        RpcStream {
            inner: Inner::Inbound(Received { source: Box::new(picked), ahead: VecDeque::new() }),
            held_end: None,
        }
    }

    /// The stream as a wire producer: each item wrapped into the service's message enum.
    #[doc(hidden)]
    pub fn into_wire<M: Send + 'static>(self, wrap: fn(T) -> M) -> BoxStream<'static, Result<M, RpcError>> {
        match self {
            // The producer's own stream, without this type's layer around it.
            RpcStream { inner: Inner::Local(stream), held_end: None } => stream.map(move |r| r.map(wrap)).boxed(),
            inbound => inbound.map(move |r| r.map(wrap)).boxed(),
        }
    }

    /// Waits until an item is here, then moves every item already received, at most
    /// `limit`, to the end of `buffer`, in order; returns how many. `Ok(0)` means the stream
    /// has ended normally (or `limit` is 0); `Err`, that it ended otherwise, after the items
    /// before the failure, which earlier calls returned. As tokio's `Receiver::recv_many`.
    ///
    /// For a consumer of many small items: it pays one wake-up and one look at the
    /// stream's queue per batch of items instead of per item.
    ///
    /// ```
    /// # async fn f(mut lines: rpc_core::RpcStream<String>) -> Result<(), rpc_core::RpcError> {
    /// let mut batch = Vec::with_capacity(256);
    /// while lines.recv_many(&mut batch, 256).await? > 0 {
    ///     for line in batch.drain(..) {
    ///         println!("{line}");
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recv_many(&mut self, buffer: &mut Vec<T>, limit: usize) -> Result<usize, RpcError> {
        if limit == 0 {
            return Ok(0);
        }
        std::future::poll_fn(|cx| self.poll_recv_many(cx, buffer, limit)).await
    }

    fn poll_recv_many(
        &mut self,
        cx: &mut Context<'_>,
        buffer: &mut Vec<T>,
        limit: usize,
    ) -> Poll<Result<usize, RpcError>> {
        if let Some(end) = self.held_end.take() {
            return Poll::Ready(end.map_or(Ok(0), Err));
        }
        let stream = match &mut self.inner {
            Inner::Inbound(received) => {
                if let Some(ahead) = received.ahead() {
                    let n = ahead.len().min(limit);
                    buffer.extend(ahead.drain(..n));
                    return Poll::Ready(Ok(n));
                }
                return received.source.poll_many(cx, buffer, limit).map(|r| r.unwrap_or(Ok(0)));
            }
            Inner::Local(stream) => stream,
        };
        let mut n = 0;
        while n < limit {
            let end = match stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(item))) => {
                    buffer.push(item);
                    n += 1;
                    continue;
                }
                Poll::Pending if n == 0 => return Poll::Pending,
                Poll::Pending => break,
                Poll::Ready(Some(Err(e))) => Some(e),
                Poll::Ready(None) => None,
            };
            if n == 0 {
                return Poll::Ready(end.map_or(Ok(0), Err));
            }
            self.held_end = Some(end);
            break;
        }
        Poll::Ready(Ok(n))
    }
}

// Nothing in an `RpcStream` is pinned: the items it holds ahead are plain values it moves out.
impl<T> Unpin for RpcStream<T> {}

impl<T> Stream for RpcStream<T> {
    type Item = Result<T, RpcError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(end) = this.held_end.take() {
            // An end `recv_many` saw; after it, the stream stays ended.
            this.held_end = Some(None);
            return Poll::Ready(end.map(Err));
        }
        match &mut this.inner {
            Inner::Local(stream) => stream.as_mut().poll_next(cx),
            Inner::Inbound(received) => {
                if let Some(ahead) = received.ahead() {
                    return Poll::Ready(ahead.pop_front().map(Ok));
                }
                let Received { source, ahead } = received;
                Poll::Ready(match std::task::ready!(source.poll_ahead(cx, ahead, AHEAD_ITEMS, AHEAD_BYTES)) {
                    Some(Ok(_)) => ahead.pop_front().map(Ok),
                    Some(Err(e)) => Some(Err(e)),
                    None => None,
                })
            }
        }
    }
}

/// An inbound stream's items, picked out of the service's messages; a message of another
/// method fails the stream with a protocol error, which ends it.
struct Picked<S, M, T, P> {
    source: S,
    pick: P,
    _types: std::marker::PhantomData<fn(M) -> T>,
    /// The error of a message of another method, behind items already returned.
    stray: Option<RpcError>,
    /// Set once the stream has failed that way.
    over: bool,
}

fn stray() -> RpcError {
    TransportError::Protocol { detail: "a stream item of another method".to_owned() }.into()
}

impl<S: Source<M>, M: Send, T: Send, P: Fn(M) -> Option<T> + Send> Picked<S, M, T, P> {
    /// Hands up to `limit` items (and `max_bytes`, see [`Source::poll_each`]) to `put`.
    #[inline]
    fn poll_into(
        &mut self,
        cx: &mut Context<'_>,
        limit: usize,
        max_bytes: usize,
        mut put: impl FnMut(T),
    ) -> Poll<Option<Result<usize, RpcError>>> {
        if let Some(e) = self.stray.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if self.over {
            return Poll::Ready(None);
        }
        let (pick, mut strayed) = (&self.pick, false);
        let polled = std::task::ready!(self.source.poll_each(cx, limit, max_bytes, |m| match pick(m) {
            Some(item) => {
                put(item);
                true
            }
            None => {
                strayed = true;
                false
            }
        }));
        if !strayed {
            return Poll::Ready(polled);
        }
        self.over = true;
        // The message of another method was counted among those taken.
        match polled {
            Some(Ok(n)) if n > 1 => {
                self.stray = Some(stray());
                Poll::Ready(Some(Ok(n - 1)))
            }
            _ => Poll::Ready(Some(Err(stray()))),
        }
    }
}

impl<S: Source<M>, M: Send, T: Send, P: Fn(M) -> Option<T> + Send> Inbound<T> for Picked<S, M, T, P> {
    fn poll_many(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<T>,
        limit: usize,
    ) -> Poll<Option<Result<usize, RpcError>>> {
        self.poll_into(cx, limit, usize::MAX, |item| out.push(item))
    }

    fn poll_ahead(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut VecDeque<T>,
        limit: usize,
        max_bytes: usize,
    ) -> Poll<Option<Result<usize, RpcError>>> {
        self.poll_into(cx, limit, max_bytes, |item| out.push_back(item))
    }

    fn failed(&self) -> bool {
        self.source.failed()
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
    async fn recv_many_takes_what_is_ready_in_order_then_reports_the_end_after_the_items() {
        let failed: RpcError = TransportError::Protocol { detail: "boom".into() }.into();
        let mut s = RpcStream::from_results(futures::stream::iter([Ok(1), Ok(2), Ok(3), Err(failed.clone())]));
        let mut got = Vec::new();
        assert_eq!(s.recv_many(&mut got, 2).await, Ok(2), "at most the limit");
        assert_eq!(s.recv_many(&mut got, 0).await, Ok(0), "a limit of 0 takes nothing");
        assert_eq!(s.recv_many(&mut got, 10).await, Ok(1), "the item before the failure first");
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(s.recv_many(&mut got, 10).await, Err(failed.clone()));
        assert_eq!(s.recv_many(&mut got, 10).await, Ok(0), "then the stream has ended");

        // An end held back by `recv_many` is what `next` sees too.
        let mut s = RpcStream::from_results(futures::stream::iter([Ok(1), Err(failed.clone())]));
        assert_eq!(s.recv_many(&mut got, 10).await, Ok(1));
        assert_eq!(s.next().await, Some(Err(failed)));
        assert_eq!(s.next().await, None);
        let mut s = RpcStream::iter([7]);
        assert_eq!(s.recv_many(&mut got, 10).await, Ok(1));
        assert_eq!(s.next().await, None);
        assert_eq!(got, [1, 2, 3, 1, 7]);
    }

    /// A source of messages (`Ok`: this method's items, `Err`: another method's), then
    /// the end; it fails (with `Fake::ERROR`, dropping the rest) once `fail` is set, and
    /// counts what it handed out.
    struct Fake {
        messages: std::collections::VecDeque<Result<u32, u32>>,
        /// Set once the failure was reported.
        ended: bool,
        fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
        handed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Fake {
        const ERROR: &str = "gone";

        fn new(messages: impl IntoIterator<Item = Result<u32, u32>>) -> Self {
            let messages = messages.into_iter().collect();
            Fake { messages, ended: false, fail: Default::default(), handed: Default::default() }
        }
    }

    impl Source<Result<u32, u32>> for Fake {
        fn poll_each(
            &mut self,
            _: &mut Context<'_>,
            limit: usize,
            max_bytes: usize,
            mut take: impl FnMut(Result<u32, u32>) -> bool,
        ) -> Poll<Option<Result<usize, RpcError>>> {
            if self.ended {
                return Poll::Ready(None);
            }
            if self.failed() {
                self.messages.clear();
                self.ended = true;
                return Poll::Ready(Some(Err(TransportError::Protocol { detail: Fake::ERROR.into() }.into())));
            }
            // Each message counts as a 1,000-byte frame.
            let (mut n, mut bytes) = (0, 0);
            while n < limit && (n == 0 || bytes + 1000 <= max_bytes) {
                let Some(m) = self.messages.pop_front() else { break };
                n += 1;
                bytes += 1000;
                self.handed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if !take(m) {
                    break;
                }
            }
            Poll::Ready((n > 0).then_some(Ok(n)))
        }

        fn failed(&self) -> bool {
            self.fail.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    #[tokio::test]
    async fn next_reads_ahead_at_most_its_byte_bound_and_a_failure_comes_before_the_items_read_ahead() {
        let fake = Fake::new((0..100).map(Ok));
        let (fail, handed) = (fake.fail.clone(), fake.handed.clone());
        let mut s = RpcStream::inbound(fake, Result::ok);
        assert_eq!(s.next().await, Some(Ok(0)));
        // 1,000-byte frames: four fit in 4,096 bytes.
        assert_eq!(handed.load(std::sync::atomic::Ordering::Relaxed), 4);
        assert_eq!(s.next().await, Some(Ok(1)));
        let mut got = Vec::new();
        assert_eq!(s.recv_many(&mut got, 1).await, Ok(1), "recv_many takes the items read ahead first");
        assert_eq!(got, [2]);
        assert_eq!(handed.load(std::sync::atomic::Ordering::Relaxed), 4, "none taken from the source");
        fail.store(true, std::sync::atomic::Ordering::Relaxed);
        match s.next().await {
            Some(Err(RpcError::Transport(TransportError::Protocol { detail }))) => assert_eq!(detail, Fake::ERROR),
            other => panic!("the failure must come before item 3, read ahead: got {other:?}"),
        }
        assert_eq!(s.next().await, None);
    }

    #[tokio::test]
    async fn an_item_of_another_method_fails_an_inbound_stream_after_the_items_before_it_and_ends_it() {
        let messages = || Fake::new([Ok(1), Ok(2), Err(9), Ok(3)]);
        let mut s = RpcStream::inbound(messages(), Result::ok);
        let mut got = Vec::new();
        assert_eq!(s.recv_many(&mut got, 10).await, Ok(2));
        assert_eq!(got, [1, 2]);
        assert_eq!(s.recv_many(&mut got, 10).await, Err(stray()));
        assert_eq!(s.recv_many(&mut got, 10).await, Ok(0), "ended: the item after it is not read");
        let s = RpcStream::inbound(messages(), Result::ok);
        assert_eq!(s.collect::<Vec<_>>().await, [Ok(1), Ok(2), Err(stray())]);
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

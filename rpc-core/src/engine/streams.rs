//! Stream machinery shared by both halves: the queue of an inbound stream ([`Inbox`]) and
//! its consumer handle ([`Remote`]), the consumers' messages to the engine
//! ([`StreamControl`]), and the engine's side of an outbound stream ([`OutStream`]).
//!
//! Flow control is credit-based and counted in frame bytes. The receiver of a stream
//! announces a window (in the handshake); the sender may send an item while its credit
//! is positive, so it overshoots by at most one item. As the consumer takes items, the
//! bytes it took go back to the sender in credit frames, a quarter of the window at a
//! time. An inbound stream therefore never holds more than its window plus one message
//! (and what `RpcStream::next` read ahead, which it bounds), and a slow consumer pauses
//! the producer: the engine stops polling a producer without credit, so a channel feeding
//! it fills and its sender waits.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use futures::stream::BoxStream;
use futures::task::AtomicWaker;
use tokio::time::Instant;

use crate::error::{RpcError, TransportError};
use crate::spans::Trace;
use crate::stats::{Counters, Outcome};

/// What consumers of inbound streams tell the engine.
pub(crate) enum Ctl {
    /// Give the sender of exchange `id` this many bytes of credit.
    Credit { id: u64, grant: u32 },
    /// The consumer of exchange `id` dropped its stream.
    Dropped { id: u64 },
}

/// The consumers' mailbox to the engine of one connection.
#[derive(Default)]
pub(crate) struct StreamControl {
    queue: Mutex<Vec<Ctl>>,
    /// Set when `queue` may be non-empty, so the engine's pass (which looks every time)
    /// takes the lock only when there is something to take.
    pending: AtomicBool,
    engine: AtomicWaker,
}

impl StreamControl {
    fn push(&self, ctl: Ctl) {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner).push(ctl);
        self.pending.store(true, Ordering::Release);
        self.engine.wake();
    }

    /// Registers the engine's waker and takes what consumers said since the last look.
    pub(crate) fn take(&self, waker: &Waker, into: &mut Vec<Ctl>) {
        self.engine.register(waker);
        if self.pending.swap(false, Ordering::AcqRel) {
            std::mem::swap(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner), into);
        }
    }
}

/// The queue of one inbound stream: filled by the engine, drained by its consumer.
pub(crate) struct Inbox<M> {
    /// The counters of the end that reads this stream (`crate::stats`).
    counters: Arc<Counters>,
    inner: Mutex<InboxInner<M>>,
    /// Set by [`fail`](Self::fail): the consumer drops the items it already took.
    failed: AtomicBool,
}

struct InboxInner<M> {
    items: VecDeque<(M, u32)>,
    /// Bytes queued and not yet consumed.
    held: usize,
    /// Bytes consumed since the last credit was sent.
    consumed: u32,
    /// How the stream ended, once it has; reported after the queued items.
    end: Option<Result<(), RpcError>>,
    waker: Option<Waker>,
    /// Items and bytes ever queued, for the exchange's span.
    received_items: u64,
    received_bytes: u64,
}

/// The sender sent more than its credit allows.
pub(crate) struct OverCredit;

impl<M> Inbox<M> {
    /// An inbox whose items are counted in `counters` (its end's) as they arrive.
    pub(crate) fn new(counters: Arc<Counters>) -> Arc<Self> {
        Arc::new(Inbox {
            counters,
            inner: Mutex::new(InboxInner {
                items: VecDeque::new(),
                held: 0,
                consumed: 0,
                end: None,
                waker: None,
                received_items: 0,
                received_bytes: 0,
            }),
            failed: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, InboxInner<M>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a run of items read in a row (see [`ItemRun`]) under one lock and one wake;
    /// refuses them all if the queue would hold more than `limit` bytes. Leaves `items`
    /// empty, keeping its allocation.
    pub(crate) fn push_all(&self, items: &mut VecDeque<(M, u32)>, limit: usize) -> Result<(), OverCredit> {
        let bytes: usize = items.iter().map(|(_, len)| *len as usize).sum();
        let mut s = self.lock();
        let over = s.held + bytes > limit;
        if s.end.is_some() || over {
            drop(s);
            items.clear();
            return if over { Err(OverCredit) } else { Ok(()) };
        }
        s.held += bytes;
        s.received_items += items.len() as u64;
        // Only the engine hands items over: one writer, as `Counters` needs.
        self.counters.items_in(items.len());
        s.received_bytes += bytes as u64;
        s.items.append(items);
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Items and bytes queued so far (taken by the consumer or not).
    pub(crate) fn received(&self) -> (u64, u64) {
        let s = self.lock();
        (s.received_items, s.received_bytes)
    }

    /// Ends the stream: the consumer gets what is queued, then `how`.
    pub(crate) fn finish(&self, how: Result<(), RpcError>) {
        let mut s = self.lock();
        if s.end.is_none() {
            s.end = Some(how);
        }
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ends the stream with `why` at once, dropping what is queued (the connection is
    /// gone or the exchange failed: queued items would only delay the error).
    pub(crate) fn fail(&self, why: RpcError) {
        let mut s = self.lock();
        if s.end.is_none() {
            s.end = Some(Err(why));
        }
        self.failed.store(true, Ordering::Release);
        let dropped = std::mem::take(&mut s.items);
        let waker = s.waker.take();
        drop(s);
        drop(dropped);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Items of one inbound stream read one after another (a batch of a fast stream's items),
/// gathered so they reach its inbox under one lock and one wake instead of one each: with
/// 16 B items, the inbox's lock, its atomics and the exchange lookup were a sixth of an
/// item's cost on the receiving end. The engine hands the run over before it acts on any
/// other frame, so items and what follows them (an end, an error) keep their order.
pub(crate) struct ItemRun<M> {
    /// The exchange, while a run is open.
    id: Option<u64>,
    /// Its inbox; `None` for late items of an exchange that is over (they are dropped).
    inbox: Option<Arc<Inbox<M>>>,
    /// The most the inbox may hold (its window plus one message).
    limit: usize,
    items: VecDeque<(M, u32)>,
}

impl<M> Default for ItemRun<M> {
    fn default() -> Self {
        ItemRun { id: None, inbox: None, limit: 0, items: VecDeque::new() }
    }
}

impl<M> ItemRun<M> {
    /// Whether an item of exchange `id` continues the open run.
    pub(crate) fn continues(&self, id: u64) -> bool {
        self.id == Some(id)
    }

    /// Whether a run is open (it must be handed over before anything else is acted on).
    pub(crate) fn is_open(&self) -> bool {
        self.id.is_some()
    }

    /// Opens a run for exchange `id` (the open one must have been handed over).
    pub(crate) fn open(&mut self, id: u64, inbox: Option<Arc<Inbox<M>>>, limit: usize) {
        debug_assert!(self.id.is_none() && self.items.is_empty());
        self.id = Some(id);
        self.inbox = inbox;
        self.limit = limit;
    }

    /// The most the open run's inbox may hold.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Adds an item of `len` frame bytes to the open run. (Inlined into the decode's loop,
    /// so the item goes from the decoder's result into the run without a reload of it.)
    #[inline(always)]
    pub(crate) fn push(&mut self, item: M, len: u32) {
        if self.inbox.is_some() {
            self.items.push_back((item, len));
        }
    }

    /// Hands the open run to its inbox and closes it; `Err` (with the exchange) if the
    /// items exceed the credit the sender was given.
    pub(crate) fn hand_over(&mut self) -> Result<(), (u64, OverCredit)> {
        let Some(id) = self.id.take() else { return Ok(()) };
        let Some(inbox) = self.inbox.take() else { return Ok(()) };
        if self.items.is_empty() {
            return Ok(());
        }
        inbox.push_all(&mut self.items, self.limit).map_err(|e| (id, e))
    }
}

/// The consumer's handle on an inbound stream.
///
/// It takes every queued item at once into `taken`, so a fast stream costs one lock per
/// batch of items rather than one per item (the engine pushes while the consumer pops, on
/// another core: per-item locking moved the lock's cache line back and forth each time).
pub(crate) struct Remote<M> {
    pub(crate) id: u64,
    pub(crate) inbox: Arc<Inbox<M>>,
    pub(crate) ctl: Arc<StreamControl>,
    /// The window this end announced; credit goes back a quarter of it at a time.
    pub(crate) window: u32,
    /// Items taken from the inbox, not yet handed out.
    taken: VecDeque<(M, u32)>,
    /// Bytes handed out from `taken` that the inbox still counts as held. They are settled
    /// (and credited) under the inbox's lock before the sender can be given more credit,
    /// so the inbox's bound stays exact.
    unsettled: u32,
    /// Set once the end was reported.
    done: bool,
    /// Whether dropping the handle must tell the engine (false on the client, whose
    /// stream handle cancels the exchange through its call slot instead).
    notify_drop: bool,
}

impl<M> Remote<M> {
    pub(crate) fn new(id: u64, inbox: Arc<Inbox<M>>, ctl: Arc<StreamControl>, window: u32, notify_drop: bool) -> Self {
        Remote { id, inbox, ctl, window, taken: VecDeque::new(), unsettled: 0, done: false, notify_drop }
    }

    /// Counts what was handed out since the last look in the inbox's totals; returns the
    /// credit to send, if a quarter window's worth is due.
    fn settle(&mut self, s: &mut InboxInner<M>) -> Option<u32> {
        s.held -= self.unsettled as usize;
        s.consumed += std::mem::take(&mut self.unsettled);
        (s.consumed >= (self.window / 4).max(1) && s.end.is_none()).then(|| std::mem::take(&mut s.consumed))
    }
}

impl<M: Send> crate::stream::Source<M> for Remote<M> {
    /// Hands out up to `limit` (at least 1) items to `take`, all that are ready, stopping
    /// early when `take` returns false or before an item whose frame would bring the bytes
    /// handed out past `max_bytes` (the first is always handed out): `Some(Ok(n))` with
    /// `n >= 1`; `None` once the stream ended normally; `Some(Err)` when it failed (the
    /// items before the failure came first); `Pending` while none is ready.
    fn poll_each(
        &mut self,
        cx: &mut Context<'_>,
        limit: usize,
        max_bytes: usize,
        mut take: impl FnMut(M) -> bool,
    ) -> Poll<Option<Result<usize, RpcError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if !self.taken.is_empty() && self.inbox.failed.load(Ordering::Acquire) {
            // The exchange failed: its error comes now, not after what was taken.
            self.taken.clear();
        }
        if self.taken.is_empty() {
            let inbox = Arc::clone(&self.inbox);
            let mut s = inbox.lock();
            let grant = self.settle(&mut s);
            // Take all that is queued (swapping keeps both queues' allocations).
            std::mem::swap(&mut self.taken, &mut s.items);
            let end = if self.taken.is_empty() { Some(s.end.take()) } else { None };
            if let Some(None) = end
                && !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
            {
                s.waker = Some(cx.waker().clone());
            }
            drop(s);
            if let Some(grant) = grant {
                self.ctl.push(Ctl::Credit { id: self.id, grant });
            }
            match end {
                None => {}
                Some(None) => return Poll::Pending,
                Some(Some(end)) => {
                    self.done = true;
                    return Poll::Ready(end.err().map(Err));
                }
            }
        }
        let (mut n, mut bytes) = (0, 0usize);
        while n < limit.max(1) {
            let Some(&(_, len)) = self.taken.front() else { break };
            bytes = bytes.saturating_add(len as usize);
            if n > 0 && bytes > max_bytes {
                break;
            }
            let Some((item, len)) = self.taken.pop_front() else { break };
            self.unsettled += len;
            n += 1;
            if !take(item) {
                break;
            }
        }
        if self.unsettled >= (self.window / 4).max(1) {
            let inbox = Arc::clone(&self.inbox);
            let grant = self.settle(&mut inbox.lock());
            if let Some(grant) = grant {
                self.ctl.push(Ctl::Credit { id: self.id, grant });
            }
        }
        Poll::Ready(Some(Ok(n)))
    }

    fn failed(&self) -> bool {
        self.inbox.failed.load(Ordering::Acquire)
    }
}

impl<M> Drop for Remote<M> {
    fn drop(&mut self) {
        if self.notify_drop && !self.done {
            self.ctl.push(Ctl::Dropped { id: self.id });
        }
    }
}

/// An outbound stream: a local producer the engine polls while the receiver's credit is
/// positive.
pub(crate) struct OutStream<M> {
    pub(crate) stream: BoxStream<'static, Result<M, RpcError>>,
    pub(crate) credit: i64,
    pub(crate) deadline: Option<Instant>,
    /// The rest of a large item being sent in pieces.
    pub(crate) partial: Option<super::outbox::Rest>,
    /// Whether its last item's frame was large enough to hold a blob sent uncopied (true
    /// before the first): only then is the next one looked at for blobs. Items of a stream
    /// are mostly alike, and the look is a real share of a small item's cost.
    pub(crate) large: bool,
    /// The exchange's span, if one is wanted; it counts the items sent.
    pub(crate) trace: Trace,
    /// How the stream ended, once it has (set as its end is written).
    ended: Option<Outcome>,
}

impl<M> OutStream<M> {
    pub(crate) fn new(
        stream: BoxStream<'static, Result<M, RpcError>>,
        credit: u32,
        deadline: Option<Instant>,
        trace: Trace,
    ) -> Self {
        OutStream { stream, credit: i64::from(credit), deadline, partial: None, large: true, trace, ended: None }
    }
}

/// Stream items whose frame is larger than [`WHOLE_MAX`] go out in pieces of this size, so
/// the frames of other exchanges (calls, answers, other streams) interleave with them.
pub(crate) const PIECE: usize = 64 * 1024;

/// The largest item frame sent whole. Twice a piece, so the common 64 KiB item (a little
/// over a piece once framed) is not cut into a full piece and a sliver that the receiver
/// must copy back together; a frame of this size holds the pipe for well under 0.1 ms.
pub(crate) const WHOLE_MAX: usize = 2 * PIECE;

/// What a sink did with an item.
pub(crate) enum ItemSent {
    /// Written whole; its frame's size.
    Whole(u32),
    /// Its first piece is written; the rest goes out piece by piece. Its whole frame's size.
    Started { cost: u32, rest: super::outbox::Rest },
    /// It could not be encoded; the sink ended the exchange, with this outcome.
    Failed(Outcome),
}

/// Puts the pieces of large items together, per exchange.
#[derive(Default)]
pub(crate) struct Pieces {
    partial: crate::deadlines::IdMap<bytes::BytesMut>,
}

impl Pieces {
    /// Adds a piece: `Ok(Some(frame))` once the last piece is in, `Err` if the item grows
    /// past `limit` bytes (a conforming sender never sends more than the message limit).
    pub(crate) fn add(
        &mut self,
        id: u64,
        more: bool,
        bytes: &[u8],
        limit: usize,
    ) -> Result<Option<bytes::BytesMut>, String> {
        let buf = self.partial.entry(id).or_default();
        if buf.len() + bytes.len() > limit {
            self.partial.remove(&id);
            return Err(format!("a stream item in pieces grew past the {limit}-byte message limit"));
        }
        buf.extend_from_slice(bytes);
        Ok(if more { None } else { self.partial.remove(&id) })
    }

    /// The exchange is over: drop its unfinished item.
    pub(crate) fn forget(&mut self, id: u64) {
        if !self.partial.is_empty() {
            self.partial.remove(&id);
        }
    }
}

/// Where [`pump`] writes: the engine's pipe, seen from one half.
pub(crate) trait PumpSink<M> {
    /// True if the pipe has room for a frame now.
    fn ready(&mut self, cx: &mut Context<'_>) -> Result<bool, TransportError>;
    /// Writes item `item` of exchange `id` (whole, or its first piece); `blobs`: look for
    /// blobs in it to send from their own memory (see [`OutStream`]'s `large`).
    fn item(&mut self, id: u64, item: M, blobs: bool) -> Result<ItemSent, TransportError>;
    /// Writes the next piece of exchange `id`'s large item, taking it off `rest`.
    fn piece(&mut self, id: u64, rest: &mut super::outbox::Rest) -> Result<(), TransportError>;
    /// Writes the end of exchange `id`'s stream: normal, or with an error.
    fn end(&mut self, id: u64, how: Result<(), RpcError>) -> Result<(), TransportError>;
    /// Stream `id` is over (its end, or the error that replaced an item, is written) and
    /// out of the pump's list: how it ended, and its span.
    fn over(&mut self, id: u64, outcome: Outcome, trace: Trace);
}

/// Polls the producers in `streams` round-robin, one item each per turn, while they have
/// credit and the pipe has room, so streams interleave fairly (a lone stream keeps its turn
/// without being looked up again per item). Producers that ended, failed or whose item
/// could not be encoded are removed.
pub(crate) fn pump<M>(
    streams: &mut crate::deadlines::IdMap<OutStream<M>>,
    order: &mut Vec<u64>,
    cx: &mut Context<'_>,
    sink: &mut impl PumpSink<M>,
) -> Result<bool, TransportError> {
    let mut progress = false;
    order.clear();
    order.extend(streams.iter().filter(|(_, s)| s.credit > 0 || s.partial.is_some()).map(|(&id, _)| id));
    while !order.is_empty() {
        let mut i = 0;
        while i < order.len() {
            let id = order[i];
            let s = streams.get_mut(&id).expect("listed from the map");
            let turn = loop {
                if !sink.ready(cx)? {
                    return Ok(progress);
                }
                let turn = turn(id, s, cx, sink)?;
                if turn != Turn::Again || order.len() > 1 {
                    break turn;
                }
                progress = true;
            };
            match turn {
                Turn::Pending => {
                    order.swap_remove(i);
                }
                Turn::Over => {
                    progress = true;
                    let s = streams.remove(&id).expect("listed from the map");
                    sink.over(id, s.ended.unwrap_or(Outcome::Internal), s.trace);
                    order.swap_remove(i);
                }
                Turn::Paused => {
                    progress = true;
                    order.swap_remove(i);
                }
                Turn::Again => {
                    progress = true;
                    i += 1;
                }
            }
        }
    }
    Ok(progress)
}

/// What one turn of a stream in [`pump`] did.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// It sent something and may send more.
    Again,
    /// It sent something and is out of credit.
    Paused,
    /// Its producer has nothing yet.
    Pending,
    /// It ended (or failed): remove it.
    Over,
}

/// One turn of stream `id`: the next piece of an item under way, or its producer's next
/// item, end or error.
fn turn<M>(
    id: u64,
    s: &mut OutStream<M>,
    cx: &mut Context<'_>,
    sink: &mut impl PumpSink<M>,
) -> Result<Turn, TransportError> {
    // One piece per turn of an item already under way (its credit was paid).
    if let Some(rest) = &mut s.partial {
        sink.piece(id, rest)?;
        if rest.is_empty() {
            s.partial = None;
            if s.credit <= 0 {
                return Ok(Turn::Paused);
            }
        }
        return Ok(Turn::Again);
    }
    // A producer is user code running on the connection's task: a panic in it ends its
    // stream, not the connection.
    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.stream.as_mut().poll_next(cx)));
    let item = match polled {
        Ok(Poll::Pending) => return Ok(Turn::Pending),
        Ok(Poll::Ready(item)) => item,
        Err(panic) => {
            let msg = crate::error::panic_message(panic.as_ref());
            tracing::error!(id, panic = %msg, "stream producer panicked");
            let error = crate::ServerError::new(crate::ServerErrorKind::HandlerPanicked, msg);
            Some(Err(RpcError::Server(error)))
        }
    };
    match item {
        Some(Ok(m)) => {
            let cost = match sink.item(id, m, s.large)? {
                ItemSent::Whole(len) => len,
                ItemSent::Started { cost, rest } => {
                    s.partial = Some(rest);
                    cost
                }
                ItemSent::Failed(outcome) => {
                    s.ended = Some(outcome);
                    return Ok(Turn::Over);
                }
            };
            s.credit -= i64::from(cost);
            s.large = cost as usize >= crate::Blob::ZERO_COPY_MIN;
            if let Some(t) = s.trace.get_mut() {
                t.items_out += 1;
                t.bytes_out += u64::from(cost);
            }
        }
        Some(Err(e)) => {
            if let Some(t) = s.trace.get_mut() {
                t.error = Some(e.to_string());
            }
            s.ended = Some(match &e {
                // What the other end is told: a server error as it is, anything else as
                // internal (see the sinks' `end`).
                RpcError::Server(se) => Outcome::of_server(se.kind),
                other => Outcome::of_error(other),
            });
            sink.end(id, Err(e))?;
            return Ok(Turn::Over);
        }
        None => {
            s.ended = Some(Outcome::Ok);
            sink.end(id, Ok(()))?;
            return Ok(Turn::Over);
        }
    }
    Ok(if s.credit <= 0 && s.partial.is_none() { Turn::Paused } else { Turn::Again })
}

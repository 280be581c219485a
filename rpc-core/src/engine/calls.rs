//! The table of a connection's outgoing calls, shared by every caller and the engine under
//! one lock.
//!
//! Each call owns a slot from the moment it starts until its future completes or is
//! dropped; the engine only ever fills a slot in (with the response or an error) and
//! wakes its caller. The slot index is the low half of the call's wire id and a per-slot
//! generation the high half, so a late response to a call that gave up (the slot may
//! already serve another call) is recognised by its id and dropped.
//!
//! Why this and not a command channel plus a oneshot per call (the first design): that
//! cost an allocation per call for the oneshot, half a dozen atomic operations between
//! channel and oneshot, and a hash map of pending calls in the engine. Here a call takes
//! the (almost always uncontended) lock twice, once to start and once to collect its
//! result, and the engine takes it once per batch of responses and requests; no
//! allocation per call once the table has grown to the number of calls in flight.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::task::AtomicWaker;
use tokio::time::Instant;

use super::streams::Inbox;
use crate::callback::{ErasedCallback, Registry};

use crate::deadlines::DeadlineQueue;
use crate::error::{RpcError, TransportError};
use crate::stats::{Outcome, Tally};

/// A one-way call as its caller encoded it. One of up to [`EncodedOneWay::INLINE`] bytes (a
/// call with a few small arguments) is kept inline, so queuing it, taking it and writing it
/// allocate nothing: with a `Bytes` each, the allocation and its release were a large part
/// of a one-way call's client-side cost (ARCHITECTURE, "where the time goes").
#[derive(Clone)]
pub(crate) enum EncodedOneWay {
    Inline { len: u8, bytes: [u8; EncodedOneWay::INLINE] },
    Heap(Bytes),
}

impl EncodedOneWay {
    /// The largest frame kept inline (the enum is then 64 bytes).
    pub(crate) const INLINE: usize = 62;

    /// `frame`, inline if it fits, else copied out in one allocation of its own size.
    pub(crate) fn copy_from(frame: &[u8]) -> Self {
        match u8::try_from(frame.len()) {
            Ok(len) if frame.len() <= Self::INLINE => {
                let mut bytes = [0; Self::INLINE];
                bytes[..frame.len()].copy_from_slice(frame);
                EncodedOneWay::Inline { len, bytes }
            }
            _ => EncodedOneWay::Heap(Bytes::copy_from_slice(frame)),
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            EncodedOneWay::Inline { len, bytes } => &bytes[..usize::from(*len)],
            EncodedOneWay::Heap(bytes) => bytes,
        }
    }
}

/// The shared half of a connection's outgoing calls: the table plus the engine's waker.
pub(crate) struct Calls<Req, Resp> {
    table: Mutex<Table<Req, Resp>>,
    /// Callback objects of open calls, by call id (shared with the connection's router).
    callbacks: Arc<Registry>,
    engine: AtomicWaker,
}

/// How the connection is to end, as asked by the handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CloseRequest {
    /// Keep going.
    None,
    /// Every handle is gone: close once nothing is owed.
    Polite,
    /// `Channel::close()`: fail what is in flight and close now.
    Now,
}

pub(crate) struct Table<Req, Resp> {
    slots: Vec<Slot<Resp>>,
    /// Indexes of free slots; reused last-in first-out, so hot slots stay hot.
    free: Vec<u32>,
    /// Started calls and cancellations for the engine, in the order they happened.
    queue: Vec<Queued<Req, Resp>>,
    /// Why the connection ended, once it has: calls started later fail with this at once.
    closed: Option<RpcError>,
    close: CloseRequest,
    /// One-way calls, already encoded by their callers, in the order they were made.
    oneways: VecDeque<EncodedOneWay>,
    /// Callers waiting for room in `oneways`.
    room: Vec<Waker>,
    /// One-way calls ever queued (for `Channel::flush`).
    oneways_pushed: u64,
    /// The connection was lost and a supervisor waits for the next: every new call wakes
    /// it (its deadline may be the earliest), not only the first of a batch.
    detached: bool,
    /// The client's counts of calls (see `crate::stats`), kept under this lock, which every
    /// call takes anyway: a call is counted when it starts and when its slot is freed.
    pub(crate) tally: Tally,
}

struct Slot<Resp> {
    /// Wire id of the call in this slot (generation << 32 | index).
    id: u64,
    state: State<Resp>,
    /// `None` for a stream without a deadline.
    deadline: Option<Instant>,
    /// The time the caller gave, for `DeadlineExceeded`.
    timeout: Duration,
    /// The engine has taken the call for writing, so a cancel must go to the server too.
    sent: bool,
    /// A callback object is registered under this call's id.
    callback: bool,
    /// The call carries a stream (for the counters).
    stream: bool,
}

enum State<Resp> {
    Free,
    Waiting(Option<Waker>),
    Done(Result<Resp, RpcError>),
}

/// What callers hand the engine.
pub(crate) enum Queued<Req, Resp> {
    Call { id: u64, body: Req, streams: Option<Box<CallStreams<Req, Resp>>> },
    Cancel { id: u64 },
}

/// Calls' streams taken from the queue, with each call's timeout.
pub(crate) type TakenStreams<Req, Resp> = Vec<(u64, Box<CallStreams<Req, Resp>>, Option<Duration>)>;

/// The streams of a call that has any.
pub(crate) struct CallStreams<Req, Resp> {
    /// The caller's items, wrapped in the request enum.
    pub(crate) up: Option<BoxStream<'static, Result<Req, RpcError>>>,
    /// Where the callee's items go.
    pub(crate) down: Option<Arc<Inbox<Resp>>>,
    /// The object the callee may call back while the call is open.
    pub(crate) callback: Option<Arc<dyn ErasedCallback>>,
}

/// A call the engine will write, once the pipe has room and the callee's window admits it.
pub(crate) struct OutCall<Req> {
    pub(crate) id: u64,
    /// `None`: a stream without a deadline.
    pub(crate) timeout: Option<Duration>,
    pub(crate) body: Req,
}

pub(crate) fn index(id: u64) -> usize {
    (id & u64::from(u32::MAX)) as usize
}

impl<Req, Resp> Calls<Req, Resp> {
    pub(crate) fn new(callbacks: Arc<Registry>) -> Self {
        Calls {
            callbacks,
            table: Mutex::new(Table {
                slots: Vec::new(),
                free: Vec::new(),
                queue: Vec::new(),
                closed: None,
                close: CloseRequest::None,
                oneways: VecDeque::new(),
                room: Vec::new(),
                oneways_pushed: 0,
                detached: false,
                tally: Tally::default(),
            }),
            engine: AtomicWaker::new(),
        }
    }

    /// Whether a reconnecting client is between connections (see `Table::detach`).
    pub(crate) fn set_detached(&self, detached: bool) {
        self.lock().detached = detached;
    }

    /// The callback objects of open calls (shared with each connection's router).
    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.callbacks.clone()
    }

    /// The lock. Nothing panics while holding it, but a poisoned table is still
    /// consistent (every update is a single assignment), so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Table<Req, Resp>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The engine's waker; registered before it looks at the queue, so a call queued
    /// after that look always wakes it.
    pub(crate) fn register_engine(&self, waker: &Waker) {
        self.engine.register(waker);
    }

    fn wake_engine(&self) {
        self.engine.wake();
    }

    /// Starts a call: takes a slot and queues the request for the engine. Returns the
    /// call's id, or why the connection cannot take calls (`body` is then dropped, after
    /// the lock is released).
    pub(crate) fn start(
        &self,
        body: Req,
        deadline: Option<Instant>,
        timeout: Duration,
        streams: Option<Box<CallStreams<Req, Resp>>>,
        waker: &Waker,
    ) -> Result<u64, RpcError> {
        let stream = streams.as_ref().is_some_and(|s| s.up.is_some() || s.down.is_some());
        let mut t = self.lock();
        let refused = match &t.closed {
            Some(why) => Some(why.clone()),
            None if t.close == CloseRequest::Now => Some(RpcError::Cancelled),
            None => None,
        };
        if let Some(why) = refused {
            t.tally.started(stream);
            t.tally.ended(Outcome::of_error(&why), stream);
            return Err(why);
        }
        t.tally.started(stream);
        let state = State::Waiting(Some(waker.clone()));
        let id = match t.free.pop() {
            Some(i) => {
                let slot = &mut t.slots[i as usize];
                // Next generation of this slot: ids of earlier calls in it never match again.
                let id = slot.id.wrapping_add(1 << 32);
                *slot = Slot { id, state, deadline, timeout, sent: false, callback: false, stream };
                id
            }
            None => {
                let id = t.slots.len() as u64;
                if id > u64::from(u32::MAX) {
                    // 4 billion calls in flight on one connection: not a real program.
                    let detail = "more than 2^32 calls in flight on one connection".to_owned();
                    return Err(TransportError::Protocol { detail }.into());
                }
                t.slots.push(Slot { id, state, deadline, timeout, sent: false, callback: false, stream });
                id
            }
        };
        // Registered before the call can be written: the callee may call back at once.
        let mut streams = streams;
        if let Some(callback) = streams.as_mut().and_then(|s| s.callback.take()) {
            t.slots[index(id)].callback = true;
            self.callbacks.insert(id, callback);
        }
        t.queue.push(Queued::Call { id, body, streams });
        // Only the push onto an empty queue wakes the engine: a non-empty queue has a wake
        // outstanding that the engine has not acted on yet.
        let wake = t.queue.len() == 1 || t.detached;
        drop(t);
        if wake {
            self.wake_engine();
        }
        Ok(id)
    }

    /// The caller's poll: the result once it is in, else registers the caller's waker.
    pub(crate) fn poll_done(&self, id: u64, cx: &mut Context<'_>) -> Poll<Result<Resp, RpcError>> {
        let mut t = self.lock();
        let i = index(id);
        let slot = &mut t.slots[i];
        debug_assert_eq!(slot.id, id, "a slot is only freed by its own call");
        match &mut slot.state {
            State::Waiting(waker) => {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            State::Done(_) => {
                let State::Done(result) = std::mem::replace(&mut slot.state, State::Free) else { unreachable!() };
                let callback = std::mem::take(&mut slot.callback);
                let stream = slot.stream;
                t.free.push(i as u32);
                t.tally.ended(Outcome::of_result(&result), stream);
                drop(t);
                if callback {
                    self.callbacks.remove(id);
                }
                Poll::Ready(result)
            }
            State::Free => Poll::Ready(Err(TransportError::Protocol {
                detail: "internal: a call's slot was freed while it waited".to_owned(),
            }
            .into())),
        }
    }

    /// The caller dropped an unfinished call: frees its slot and, if the server has or
    /// will have seen the call, queues a cancel. `outcome`: how the call ended for its
    /// caller, if the slot does not say (a stream's reader saw its end); otherwise a call
    /// still waiting was cancelled, and one whose result came counts as that result.
    pub(crate) fn abandon(&self, id: u64, outcome: Option<Outcome>) {
        let mut t = self.lock();
        let i = index(id);
        let slot = &mut t.slots[i];
        let state = std::mem::replace(&mut slot.state, State::Free);
        let cancel = matches!(state, State::Waiting(_)) && slot.sent;
        let callback = std::mem::take(&mut slot.callback);
        let stream = slot.stream;
        t.free.push(i as u32);
        let outcome = outcome.unwrap_or(match &state {
            State::Done(result) => Outcome::of_result(result),
            _ => Outcome::Cancelled,
        });
        t.tally.ended(outcome, stream);
        let mut wake = false;
        if cancel && t.closed.is_none() {
            t.queue.push(Queued::Cancel { id });
            wake = t.queue.len() == 1;
        }
        drop(t);
        if callback {
            self.callbacks.remove(id);
        }
        // The waker or result is dropped out here, not under the lock.
        drop(state);
        if wake {
            self.wake_engine();
        }
    }

    /// A handle asks for the connection to close ([`CloseRequest::Polite`] or
    /// [`CloseRequest::Now`]).
    pub(crate) fn request_close(&self, how: CloseRequest) {
        let mut t = self.lock();
        if t.close != CloseRequest::Now {
            t.close = how;
        }
        drop(t);
        self.wake_engine();
    }

    /// Queues an encoded one-way call if fewer than `max` wait; else registers `waker`
    /// to be woken when there is room. `Ready(Err)` once the connection cannot send.
    pub(crate) fn poll_push_oneway(
        &self,
        frame: &mut Option<EncodedOneWay>,
        max: usize,
        waker: &Waker,
    ) -> Poll<Result<(), RpcError>> {
        let mut t = self.lock();
        let refused = match &t.closed {
            Some(why) => Some(why.clone()),
            None if t.close == CloseRequest::Now => Some(RpcError::Cancelled),
            None => None,
        };
        if let Some(why) = refused {
            t.tally.oneway_failed(Outcome::of_error(&why));
            return Poll::Ready(Err(why));
        }
        if t.oneways.len() >= max {
            if !t.room.iter().any(|w| w.will_wake(waker)) {
                t.room.push(waker.clone());
            }
            return Poll::Pending;
        }
        t.oneways.push_back(frame.take().expect("pushed once"));
        t.oneways_pushed += 1;
        t.tally.oneway_sent();
        // As for calls: only the push that makes the queues non-empty wakes the engine.
        let wake = t.oneways.len() == 1 && t.queue.is_empty();
        drop(t);
        if wake {
            self.wake_engine();
        }
        Poll::Ready(Ok(()))
    }

    /// How many one-way calls were ever queued.
    pub(crate) fn oneways_pushed(&self) -> u64 {
        self.lock().oneways_pushed
    }

    /// Why the connection ended, if it has.
    pub(crate) fn closed(&self) -> Option<RpcError> {
        self.lock().closed.clone()
    }
}

impl<Req, Resp> Table<Req, Resp> {
    fn waiting(&mut self, id: u64) -> Option<&mut Slot<Resp>> {
        self.slots.get_mut(index(id)).filter(|s| s.id == id && matches!(s.state, State::Waiting(_)))
    }

    /// The timeout the caller of `id` gave, if it still waits.
    pub(crate) fn timeout_of(&mut self, id: u64) -> Option<Duration> {
        self.waiting(id).map(|s| s.timeout)
    }

    /// Hands `result` to the caller of `id` if it still waits (else it gave up, or the
    /// id is not ours: either way there is nobody to tell). Its waker goes to `wakers`,
    /// to be woken once the lock is released.
    pub(crate) fn complete(&mut self, id: u64, result: Result<Resp, RpcError>, wakers: &mut Vec<Waker>) {
        if let Some(slot) = self.waiting(id)
            && let State::Waiting(waker) = std::mem::replace(&mut slot.state, State::Done(result))
        {
            wakers.extend(waker);
        }
    }

    /// Fails the call `id` with `DeadlineExceeded` if it still waits with this deadline
    /// (heap entries are removed lazily). Returns whether it expired, and the timeout.
    pub(crate) fn expire(&mut self, deadline: Instant, id: u64, wakers: &mut Vec<Waker>) -> Option<Duration> {
        let slot = self.waiting(id).filter(|s| s.deadline == Some(deadline))?;
        let timeout = slot.timeout;
        self.complete(id, Err(RpcError::DeadlineExceeded { timeout }), wakers);
        Some(timeout)
    }

    /// Moves what callers queued to the engine: calls to `outgoing` (marked as sent, their
    /// deadlines entered), cancels to `cancels`. Calls given up before the engine saw them
    /// are dropped.
    pub(crate) fn take_queue(
        &mut self,
        outgoing: &mut VecDeque<OutCall<Req>>,
        cancels: &mut Vec<u64>,
        streams: &mut TakenStreams<Req, Resp>,
        deadlines: &mut DeadlineQueue,
    ) {
        let mut queue = std::mem::take(&mut self.queue);
        for q in queue.drain(..) {
            match q {
                Queued::Call { id, body, streams: s } => {
                    if let Some(slot) = self.waiting(id) {
                        slot.sent = true;
                        let timeout = slot.deadline.map(|d| {
                            deadlines.push(d, id);
                            slot.timeout
                        });
                        if let Some(s) = s {
                            streams.push((id, s, timeout));
                        }
                        outgoing.push_back(OutCall { id, timeout, body });
                    } else if let Some(down) = s.as_ref().and_then(|s| s.down.as_ref()) {
                        // Over before it was sent: given up (nobody reads the stream), or
                        // answered by a peer that was never sent it. Its stream must end
                        // either way, or its reader waits forever.
                        let detail = "the peer answered a streaming call before it was sent".to_owned();
                        down.fail(TransportError::Protocol { detail }.into());
                    }
                }
                Queued::Cancel { id } => cancels.push(id),
            }
        }
        // Hand the (now empty) allocation back for the next batch.
        self.queue = queue;
    }

    /// True if callers queued anything since the last [`take_queue`](Self::take_queue).
    pub(crate) fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// True if one-way calls wait in the table.
    pub(crate) fn has_oneways(&self) -> bool {
        !self.oneways.is_empty()
    }

    /// Takes up to `n` one-way calls, in order, and wakes callers waiting for room.
    pub(crate) fn take_oneways(
        &mut self,
        n: usize,
        into: &mut VecDeque<EncodedOneWay>,
        wakers: &mut Vec<Waker>,
    ) -> bool {
        let n = n.min(self.oneways.len());
        if into.is_empty() && n == self.oneways.len() {
            // All of them, into an empty queue (the usual case): the two queues trade
            // places instead of each call's entry being moved.
            std::mem::swap(into, &mut self.oneways);
        } else {
            into.extend(self.oneways.drain(..n));
        }
        if n > 0 {
            wakers.append(&mut self.room);
        }
        n > 0
    }

    /// Slots owned by calls (waiting or with an uncollected result).
    pub(crate) fn in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The (deadline, id) of every call still waiting, for rebuilding the deadline heap.
    pub(crate) fn live_deadlines(&self) -> impl Iterator<Item = (Instant, u64)> + '_ {
        self.slots.iter().filter(|s| matches!(s.state, State::Waiting(_))).filter_map(|s| s.deadline.map(|d| (d, s.id)))
    }

    pub(crate) fn close_request(&self) -> CloseRequest {
        self.close
    }

    /// The connection was lost and a supervisor will make another (a reconnecting client):
    /// the calls in `requeue` (taken by the engine but never written) go back to the front
    /// of the queue, followed by the calls nobody took yet, and the one-way calls in
    /// `oneways` (taken, not written) back to the front of theirs; every other call the
    /// engine took (written: the server may have run it) fails with `lost`. Cancels still
    /// queued are for the old connection: they are returned, to be dropped outside the lock.
    pub(crate) fn detach(
        &mut self,
        requeue: Vec<Queued<Req, Resp>>,
        oneways: VecDeque<EncodedOneWay>,
        lost: &RpcError,
        wakers: &mut Vec<Waker>,
    ) -> Vec<Queued<Req, Resp>> {
        let again: std::collections::HashSet<u64> = requeue
            .iter()
            .filter_map(|q| match q {
                Queued::Call { id, .. } => Some(*id),
                Queued::Cancel { .. } => None,
            })
            .collect();
        for slot in &mut self.slots {
            if slot.sent && matches!(slot.state, State::Waiting(_)) {
                if again.contains(&slot.id) {
                    slot.sent = false;
                } else if let State::Waiting(waker) = std::mem::replace(&mut slot.state, State::Done(Err(lost.clone())))
                {
                    wakers.extend(waker);
                }
            }
        }
        let (mut calls, cancels): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.queue).into_iter().partition(|q| matches!(q, Queued::Call { .. }));
        self.queue = requeue;
        self.queue.append(&mut calls);
        self.detached = true;
        for frame in oneways.into_iter().rev() {
            self.oneways.push_front(frame);
        }
        cancels
    }

    /// The earliest deadline of a call that waits for a connection (started, not taken by
    /// an engine), after expiring those that passed by `now`: what a supervisor sleeps
    /// for while it has no connection.
    pub(crate) fn expire_unsent(&mut self, now: Instant, wakers: &mut Vec<Waker>) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut due = Vec::new();
        for slot in &self.slots {
            if let (State::Waiting(_), false, Some(deadline)) = (&slot.state, slot.sent, slot.deadline) {
                if deadline <= now {
                    due.push((deadline, slot.id));
                } else {
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                }
            }
        }
        for &(deadline, id) in &due {
            self.expire(deadline, id, wakers);
        }
        if !due.is_empty() {
            self.drop_unwaited();
        }
        next
    }

    /// Takes queued calls whose callers no longer wait off the queue; a stream call among
    /// them ends its stream with its call's outcome (nobody else would: it has no engine).
    fn drop_unwaited(&mut self) {
        let queue = std::mem::take(&mut self.queue);
        for q in queue {
            match q {
                Queued::Call { id, streams, .. } if self.waiting(id).is_none() => {
                    if let Some(down) = streams.as_ref().and_then(|s| s.down.as_ref()) {
                        let why = match &self.slots[index(id)].state {
                            State::Done(Err(e)) => e.clone(),
                            _ => RpcError::Cancelled,
                        };
                        down.fail(why);
                    }
                }
                q => self.queue.push(q),
            }
        }
    }

    /// Fails every call that waits for a connection (started, not taken by an engine) with
    /// `why`: the server refused a new connection for a reason no retry can change (another
    /// version of the service, a permission), so they cannot be served by it.
    pub(crate) fn fail_unsent(&mut self, why: &RpcError, wakers: &mut Vec<Waker>) {
        for slot in &mut self.slots {
            if !slot.sent
                && matches!(slot.state, State::Waiting(_))
                && let State::Waiting(waker) = std::mem::replace(&mut slot.state, State::Done(Err(why.clone())))
            {
                wakers.extend(waker);
            }
        }
        self.drop_unwaited();
    }

    /// The connection is over: every waiting call fails with `why`, queued requests are
    /// dropped, and later calls fail at once.
    pub(crate) fn fail_all(&mut self, why: &RpcError, wakers: &mut Vec<Waker>) -> Vec<Queued<Req, Resp>> {
        if self.closed.is_none() {
            self.closed = Some(why.clone());
        }
        for slot in &mut self.slots {
            if let State::Waiting(waker) = &mut slot.state {
                wakers.extend(waker.take());
                slot.state = State::Done(Err(why.clone()));
            }
        }
        // One-way calls not yet written are lost: their callers were told "queued", and
        // later calls learn why the connection ended.
        self.oneways.clear();
        wakers.append(&mut self.room);
        std::mem::take(&mut self.queue)
    }
}

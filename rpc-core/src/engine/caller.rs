//! The calling half of a connection: the calls this end makes and the replies it gets.
//!
//! Callers put calls into the shared slot table ([`Calls`]); once per pass the engine takes
//! them under one lock, hands the replies read since the last pass to their slots, and
//! expires deadlines. Calls are written only while the callee's admission window (its
//! `max_in_flight`, announced in the handshake) has room; the rest wait here, deadlines
//! running, so a conforming caller never makes the callee refuse a call. Cancels bypass
//! that queue: they are what frees the window.
//!
//! Streams ride on calls: a call's outbound items ([`OutStream`]) are pumped once its call
//! frame is written, while the callee's credit lasts; its inbound items go to the
//! [`Inbox`] its `RpcStream` reads.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use super::calls::{CallStreams, CloseRequest, EncodedOneWay, OutCall, Queued, Table, TakenStreams, index};
use super::streams::{Ctl, Inbox, OutStream, Pieces, StreamControl};
use crate::client::Shared;
use crate::deadlines::{DeadlineQueue, IdHasher, IdMap};
use crate::error::{RpcError, ServerError, ServerErrorKind, TransportError};
use bytes::BytesMut;

/// A reply read from the pipe, before the lock is taken to hand it over.
pub(crate) enum Arrival<Resp> {
    Reply(Resp),
    Error(ServerError),
    Failed(RpcError),
    /// A download stream ended; its slot just needs to be marked done.
    StreamDone,
}

/// An inbound stream of one of our calls.
struct Down<Resp> {
    inbox: Arc<Inbox<Resp>>,
    timeout: Option<Duration>,
}

pub(crate) struct Caller<Req, Resp> {
    pub(crate) shared: Arc<Shared<Req, Resp>>,
    /// Calls taken from the table, waiting for the pipe or the window.
    outgoing: VecDeque<OutCall<Req>>,
    /// Control frames (cancels, stream credits), written before any call.
    control: VecDeque<Next<Req>>,
    /// Cancels taken from the table this pass, not yet sorted into written and unwritten.
    taken_cancels: Vec<u64>,
    taken_streams: TakenStreams<Req, Resp>,
    /// Calls cancelled or expired after the engine took them but before they were written:
    /// skipped when their turn comes, so the callee never sees them.
    withdrawn: HashSet<u64, std::hash::BuildHasherDefault<IdHasher>>,
    /// Replies read in this pass, handed to their callers under one lock.
    arrived: Vec<(u64, Arrival<Resp>)>,
    /// Callers to wake once the lock is released.
    wakers: Vec<Waker>,
    deadlines: DeadlineQueue,
    /// Per slot index, the id of the call written there and not yet answered or cancelled.
    wire: Vec<Option<u64>>,
    on_wire: usize,
    /// The callee's admission limit.
    window: usize,
    /// Encoded one-way calls taken from the table, at most as many as `credit` admits.
    oneways: VecDeque<EncodedOneWay>,
    /// One-way calls the callee admits now (its window, replenished by credit frames).
    credit: u64,
    /// One-way calls handed to the pipe, and how many of those were announced as flushed.
    oneways_written: u64,
    oneways_published: u64,
    /// Outbound streams whose call is not written yet.
    pending_ups: IdMap<OutStream<Req>>,
    /// Outbound streams being pumped.
    pub(crate) ups: IdMap<OutStream<Req>>,
    /// Inbound streams.
    downs: IdMap<Down<Resp>>,
    /// Their large items, arriving in pieces.
    down_pieces: Pieces,
    max_message: usize,
    /// What our streams' consumers said.
    ctl: Arc<StreamControl>,
    ctl_taken: Vec<Ctl>,
    /// The callee's window for our outbound items, in bytes.
    up_window: u32,
    /// Our window for inbound items, and the most a stream may hold (window + message).
    down_limit: usize,
}

/// What one pass of the calling half found.
pub(crate) struct CallerPass {
    pub(crate) progress: bool,
    pub(crate) close: CloseRequest,
}

/// Limits the handshake settled for the calling half.
pub(crate) struct CallerLimits {
    pub(crate) window: usize,
    pub(crate) oneway_window: u32,
    pub(crate) up_window: u32,
    pub(crate) down_window: u32,
    pub(crate) max_message: usize,
}

impl<Req, Resp> Caller<Req, Resp> {
    pub(crate) fn new(shared: Arc<Shared<Req, Resp>>, limits: CallerLimits) -> Self {
        let ctl = shared.ctl.clone();
        // A reconnection's counts go on from the last connection's.
        let flushed = *shared.oneways_flushed.borrow();
        Caller {
            shared,
            outgoing: VecDeque::new(),
            control: VecDeque::new(),
            taken_cancels: Vec::new(),
            taken_streams: Vec::new(),
            withdrawn: HashSet::default(),
            arrived: Vec::new(),
            wakers: Vec::new(),
            deadlines: DeadlineQueue::new(),
            wire: Vec::new(),
            on_wire: 0,
            window: limits.window.max(1),
            oneways: VecDeque::new(),
            credit: u64::from(limits.oneway_window),
            oneways_written: flushed,
            oneways_published: flushed,
            pending_ups: IdMap::default(),
            ups: IdMap::default(),
            downs: IdMap::default(),
            down_pieces: Pieces::default(),
            max_message: limits.max_message,
            ctl,
            ctl_taken: Vec::new(),
            up_window: limits.up_window,
            down_limit: limits.down_window as usize + limits.max_message,
        }
    }

    /// A one-way call was handed to the pipe.
    pub(crate) fn on_oneway_written(&mut self) {
        self.oneways_written += 1;
    }

    /// The pipe was flushed: one-way calls written so far are out (for `Channel::flush`).
    pub(crate) fn on_flushed(&mut self) {
        if self.oneways_written > self.oneways_published {
            self.oneways_published = self.oneways_written;
            self.shared.oneways_flushed.send_replace(self.oneways_written);
        }
    }

    /// The callee admits `grant` more one-way calls.
    pub(crate) fn on_credit(&mut self, grant: u32) {
        self.credit = self.credit.saturating_add(u64::from(grant));
    }

    /// A reply, error or end for call `id` arrived; it reaches its caller at the next pass.
    pub(crate) fn on_reply(&mut self, id: u64, arrival: Arrival<Resp>) {
        if !self.unwire(id) {
            // Not a call the callee has: the late answer to a call we cancelled (the two
            // crossed on the pipe), or an answer to a call not written yet, which only a
            // peer guessing ids could send. Either way nobody may take it for an answer.
            return;
        }
        // The exchange is over: its outbound stream stops, its inbound stream ends. (Most
        // calls have no streams: skip the lookups then.)
        if !self.ups.is_empty() || !self.pending_ups.is_empty() {
            self.ups.remove(&id);
            self.pending_ups.remove(&id);
        }
        self.down_pieces.forget(id);
        let down = if self.downs.is_empty() { None } else { self.downs.remove(&id) };
        let arrival = match down {
            None => arrival,
            Some(down) => {
                match arrival {
                    Arrival::StreamDone => down.inbox.finish(Ok(())),
                    Arrival::Error(e) if e.kind == ServerErrorKind::DeadlineExceeded => {
                        down.inbox.fail(RpcError::DeadlineExceeded { timeout: down.timeout.unwrap_or_default() });
                    }
                    Arrival::Error(e) => down.inbox.fail(RpcError::Server(e)),
                    Arrival::Failed(e) => down.inbox.fail(e),
                    Arrival::Reply(_) => down
                        .inbox
                        .fail(TransportError::Protocol { detail: "a reply to a streaming call".to_owned() }.into()),
                }
                Arrival::StreamDone
            }
        };
        self.arrived.push((id, arrival));
    }

    /// Where items of call `id`'s inbound stream go, and the most it may hold (for an
    /// [`ItemRun`](super::streams::ItemRun)); `None` if the call is over.
    pub(crate) fn down_inbox(&self, id: u64) -> (Option<Arc<Inbox<Resp>>>, usize) {
        (self.downs.get(&id).map(|d| d.inbox.clone()), self.down_limit)
    }

    /// A piece of a large item of call `id`'s inbound stream: `Ok(Some(frame))` when it
    /// completes one. Pieces of a call that is over are dropped.
    pub(crate) fn on_down_piece(&mut self, id: u64, more: bool, bytes: &[u8]) -> Result<Option<BytesMut>, String> {
        if !self.downs.contains_key(&id) {
            return Ok(None);
        }
        self.down_pieces.add(id, more, bytes, self.max_message)
    }

    /// The callee has room for `grant` more bytes of call `id`'s outbound items.
    pub(crate) fn on_up_credit(&mut self, id: u64, grant: u32) {
        for map in [&mut self.ups, &mut self.pending_ups] {
            if let Some(up) = map.get_mut(&id) {
                up.credit = up.credit.saturating_add(i64::from(grant));
            }
        }
    }

    /// The callee stopped reading call `id`'s outbound stream.
    pub(crate) fn on_up_stop(&mut self, id: u64) {
        self.ups.remove(&id);
        self.pending_ups.remove(&id);
    }

    /// Call `id` no longer counts against the window (answered or cancelled). Returns
    /// whether it was written and unanswered.
    fn unwire(&mut self, id: u64) -> bool {
        match self.wire.get_mut(index(id)) {
            Some(w) if *w == Some(id) => {
                *w = None;
                self.on_wire -= 1;
                true
            }
            _ => false,
        }
    }

    /// The call `id` was handed to the pipe: its outbound stream may start.
    pub(crate) fn on_written(&mut self, id: u64) {
        let i = index(id);
        if self.wire.len() <= i {
            self.wire.resize(i + 1, None);
        }
        self.wire[i] = Some(id);
        self.on_wire += 1;
        if let Some(up) = self.pending_ups.remove(&id) {
            self.ups.insert(id, up);
        }
    }

    /// Stops call `id` on the wire: a cancel if the callee has it, else it is never written.
    fn withdraw(&mut self, id: u64) {
        self.ups.remove(&id);
        self.pending_ups.remove(&id);
        self.downs.remove(&id);
        self.down_pieces.forget(id);
        if self.wire.get(index(id)).is_some_and(|w| *w == Some(id)) {
            self.control.push_back(Next::Cancel(id));
        } else {
            self.withdrawn.insert(id);
        }
    }

    /// Under one lock: hands this pass's replies to their callers, expires deadlines and
    /// takes newly queued calls and cancels.
    pub(crate) fn pass(&mut self, cx: &mut Context<'_>) -> CallerPass {
        let mut progress = false;
        let expired = self.deadlines.poll_expired(cx);
        // Registered before the queue is looked at: a call queued after the look wakes us.
        self.shared.calls.register_engine(cx.waker());
        let mut expired_ids = Vec::new();
        let close = {
            let mut t = self.shared.calls.lock();
            deliver(&mut self.arrived, &mut t, &mut self.wakers);
            for (deadline, id) in expired {
                if let Some(timeout) = t.expire(deadline, id, &mut self.wakers) {
                    expired_ids.push((id, timeout));
                }
                progress = true;
            }
            // Take calls off the queue even when the pipe is full, so their deadlines run.
            if t.has_queued() {
                t.take_queue(&mut self.outgoing, &mut self.taken_cancels, &mut self.taken_streams, &mut self.deadlines);
                progress = true;
            }
            // One-way calls only as far as the callee's credit goes; the rest stay in the
            // table, which bounds them and makes their callers wait for room.
            let room = usize::try_from(self.credit).unwrap_or(usize::MAX).saturating_sub(self.oneways.len());
            if room > 0 && t.take_oneways(room, &mut self.oneways, &mut self.wakers) {
                progress = true;
            }
            let waiting = t.in_use();
            self.deadlines.compact(waiting, || t.live_deadlines());
            match t.close_request() {
                // Every handle is gone: close once no call waits and every one-way call
                // made before is written.
                CloseRequest::Polite if waiting == 0 && !t.has_oneways() => CloseRequest::Polite,
                CloseRequest::Polite => CloseRequest::None,
                other => other,
            }
        };
        self.wakers.drain(..).for_each(Waker::wake);
        for (id, streams, timeout) in self.taken_streams.drain(..) {
            let CallStreams { up, down, .. } = *streams;
            if let Some(stream) = up {
                self.pending_ups.insert(id, OutStream::new(stream, self.up_window, None, crate::spans::Trace::NONE));
            }
            if let Some(inbox) = down {
                self.downs.insert(id, Down { inbox, timeout });
            }
        }
        let mut cancels = std::mem::take(&mut self.taken_cancels);
        for id in cancels.drain(..) {
            self.withdraw(id);
        }
        self.taken_cancels = cancels;
        for (id, timeout) in expired_ids {
            if let Some(down) = self.downs.get(&id) {
                down.inbox.fail(RpcError::DeadlineExceeded { timeout });
            }
            self.withdraw(id);
        }
        // Credit for the items our consumers took.
        self.ctl.take(cx.waker(), &mut self.ctl_taken);
        for ctl in self.ctl_taken.drain(..) {
            if let Ctl::Credit { id, grant } = ctl
                && self.downs.contains_key(&id)
            {
                self.control.push_back(Next::DownCredit(id, grant));
                progress = true;
            }
        }
        CallerPass { progress, close }
    }

    /// The next one-way call, if the callee has credit for it and no control frame waits
    /// (those go first, see [`next`](Self::next)).
    pub(crate) fn next_oneway(&mut self) -> Option<EncodedOneWay> {
        if self.credit == 0 || !self.control.is_empty() {
            return None;
        }
        let frame = self.oneways.pop_front()?;
        self.credit -= 1;
        Some(frame)
    }

    /// The next frame to write: control (cancels, credits), else a one-way call the callee
    /// has credit for, else a call if the window has room.
    pub(crate) fn next(&mut self) -> Option<Next<Req>> {
        while let Some(next) = self.control.pop_front() {
            match next {
                // Still unanswered: from now on it does not count against the window (the
                // callee reads this cancel before any later call).
                Next::Cancel(id) if !self.unwire(id) => continue,
                other => return Some(other),
            }
        }
        if let Some(frame) = self.next_oneway() {
            return Some(Next::OneWay(frame));
        }
        while self.on_wire < self.window {
            let call = self.outgoing.pop_front()?;
            if !self.withdrawn.is_empty() && self.withdrawn.remove(&call.id) {
                continue;
            }
            return Some(Next::Call(call));
        }
        None
    }

    /// True if [`next`](Self::next) may have a frame.
    pub(crate) fn has_next(&self) -> bool {
        !self.control.is_empty()
            || (self.credit > 0 && !self.oneways.is_empty())
            || (!self.outgoing.is_empty() && self.on_wire < self.window)
    }

    /// True when nothing taken from the table is waiting to be written.
    pub(crate) fn idle(&self) -> bool {
        self.control.is_empty() && self.outgoing.is_empty() && self.oneways.is_empty() && self.ups.is_empty()
    }

    /// Fails one call whose request (or an item of its stream) could not be encoded; the
    /// callee is told to stop it if it has it.
    pub(crate) fn fail_call(&mut self, id: u64, err: RpcError) {
        if let Some(down) = self.downs.get(&id) {
            down.inbox.fail(err.clone());
        }
        self.withdraw(id);
        self.shared.calls.lock().complete(id, Err(err), &mut self.wakers);
        self.wakers.drain(..).for_each(Waker::wake);
    }

    /// Delivers what arrived before the connection ended, then fails every call still
    /// waiting (and every later one) with `why`.
    pub(crate) fn finish(&mut self, why: &RpcError) {
        // A reconnecting client whose handles still want the connection: a supervisor
        // makes the next one, so only what the server may have seen fails.
        if self.shared.reconnects && self.shared.calls.lock().close_request() == CloseRequest::None {
            self.detach(why);
            return;
        }
        for (_, down) in self.downs.drain() {
            down.inbox.fail(why.clone());
        }
        self.down_pieces = Pieces::default();
        let dropped = {
            let mut t = self.shared.calls.lock();
            deliver(&mut self.arrived, &mut t, &mut self.wakers);
            t.fail_all(why, &mut self.wakers)
        };
        // Requests nobody will send are dropped outside the lock. A stream's call among them
        // was never taken, so nothing else would end its stream (not even its deadline,
        // armed only when a call is taken): fail it here.
        let downs = dropped.iter().filter_map(|queued| match queued {
            Queued::Call { streams: Some(streams), .. } => streams.down.as_ref(),
            _ => None,
        });
        for inbox in downs {
            inbox.fail(why.clone());
        }
        drop(dropped);
        self.outgoing.clear();
        self.oneways.clear();
        self.ups.clear();
        self.pending_ups.clear();
        self.wakers.drain(..).for_each(Waker::wake);
        // Wake `flush` callers: they see the connection is over.
        self.shared.oneways_flushed.send_modify(|_| {});
    }
}

impl<Req, Resp> Caller<Req, Resp> {
    /// The connection was lost and another will be made ([`finish`](Self::finish)): calls
    /// written to the pipe fail with [`TransportError::ConnectionLost`] (the server may
    /// have run them), and so do the streams in flight; calls taken but not written go
    /// back to the table, ahead of those nobody took yet, with their streams; one-way
    /// calls not written go back too. One-way calls written but not yet flushed are lost
    /// with the pipe, as a message in flight is: they count as flushed, so `flush` does
    /// not wait for them.
    fn detach(&mut self, why: &RpcError) {
        let lost: RpcError =
            TransportError::ConnectionLost { detail: format!("{why}; the client is reconnecting") }.into();
        let mut requeue = Vec::with_capacity(self.outgoing.len());
        for call in std::mem::take(&mut self.outgoing) {
            if self.withdrawn.contains(&call.id) {
                continue;
            }
            let up = self.pending_ups.remove(&call.id).map(|o| o.stream);
            let down = self.downs.remove(&call.id).map(|d| d.inbox);
            let streams = (up.is_some() || down.is_some()).then(|| Box::new(CallStreams { up, down, callback: None }));
            requeue.push(Queued::Call { id: call.id, body: call.body, streams });
        }
        for (_, down) in self.downs.drain() {
            down.inbox.fail(lost.clone());
        }
        self.down_pieces = Pieces::default();
        self.ups.clear();
        self.pending_ups.clear();
        let oneways = std::mem::take(&mut self.oneways);
        let dropped = {
            let mut t = self.shared.calls.lock();
            deliver(&mut self.arrived, &mut t, &mut self.wakers);
            t.detach(requeue, oneways, &lost, &mut self.wakers)
        };
        drop(dropped);
        self.wakers.drain(..).for_each(Waker::wake);
        self.shared.oneways_flushed.send_if_modified(|flushed| {
            let moved = self.oneways_written > *flushed;
            *flushed = (*flushed).max(self.oneways_written);
            moved
        });
    }
}

/// Under the lock: hands replies to their callers.
fn deliver<Req, Resp>(arrived: &mut Vec<(u64, Arrival<Resp>)>, t: &mut Table<Req, Resp>, wakers: &mut Vec<Waker>) {
    for (id, arrival) in arrived.drain(..) {
        let result = match arrival {
            Arrival::Reply(body) => Ok(body),
            // The callee's deadline fired: report it as the caller's own deadline.
            Arrival::Error(e) if e.kind == ServerErrorKind::DeadlineExceeded => {
                Err(RpcError::DeadlineExceeded { timeout: t.timeout_of(id).unwrap_or_default() })
            }
            Arrival::Error(e) => Err(RpcError::Server(e)),
            Arrival::Failed(e) => Err(e),
            // A streaming call's slot only marks the exchange as over; nobody reads it (its
            // stream reported the outcome).
            Arrival::StreamDone => Err(RpcError::Cancelled),
        };
        t.complete(id, result, wakers);
    }
}

/// A frame the calling half wants written.
pub(crate) enum Next<Req> {
    Cancel(u64),
    DownCredit(u64, u32),
    /// Encoded by its caller.
    OneWay(EncodedOneWay),
    Call(OutCall<Req>),
}

/// The timeout to announce for a call: the caller's whole timeout, not the time left now.
/// The engine enforces the exact deadline itself; the callee only needs one no earlier
/// than the caller's, and it saves a clock read per call. `u64::MAX`: no deadline (a
/// stream without one).
pub(crate) fn timeout_us(timeout: Option<Duration>) -> u64 {
    timeout.map_or(u64::MAX, |t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX - 1))
}

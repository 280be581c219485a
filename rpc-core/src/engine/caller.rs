//! The calling half of a connection: the calls this end makes and the replies it gets.
//!
//! Callers put calls into the shared slot table ([`Calls`]); once per pass the engine takes
//! them under one lock, hands the replies read since the last pass to their slots, and
//! expires deadlines. Calls are written only while the callee's admission window (its
//! `max_in_flight`, announced in the handshake) has room; the rest wait here, deadlines
//! running, so a conforming caller never makes the callee refuse a call. Cancels bypass
//! that queue: they are what frees the window.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::Bytes;

use super::calls::{CloseRequest, OutCall, Table, index};
use crate::client::Shared;
use crate::deadlines::DeadlineQueue;
use crate::error::{RpcError, ServerError, ServerErrorKind};

/// A reply read from the pipe, before the lock is taken to hand it over.
pub(crate) enum Arrival<Resp> {
    Reply(Resp),
    Error(ServerError),
    Failed(RpcError),
}

pub(crate) struct Caller<Req, Resp> {
    pub(crate) shared: Arc<Shared<Req, Resp>>,
    /// Calls taken from the table, waiting for the pipe or the window.
    outgoing: VecDeque<OutCall<Req>>,
    /// Cancels of calls already written, to write before any call.
    cancels: VecDeque<u64>,
    /// Cancels taken from the table this pass, not yet sorted into written and unwritten.
    taken_cancels: Vec<u64>,
    /// Calls cancelled or expired after the engine took them but before they were written:
    /// skipped when their turn comes, so the callee never sees them.
    withdrawn: HashSet<u64, std::hash::BuildHasherDefault<crate::deadlines::IdHasher>>,
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
    oneways: VecDeque<Bytes>,
    /// One-way calls the callee admits now (its window, replenished by credit frames).
    credit: u64,
}

/// What one pass of the calling half found.
pub(crate) struct CallerPass {
    pub(crate) progress: bool,
    pub(crate) close: CloseRequest,
}

impl<Req, Resp> Caller<Req, Resp> {
    pub(crate) fn new(shared: Arc<Shared<Req, Resp>>, window: usize, oneway_window: u32) -> Self {
        Caller {
            shared,
            outgoing: VecDeque::new(),
            cancels: VecDeque::new(),
            taken_cancels: Vec::new(),
            withdrawn: HashSet::default(),
            arrived: Vec::new(),
            wakers: Vec::new(),
            deadlines: DeadlineQueue::new(),
            wire: Vec::new(),
            on_wire: 0,
            window: window.max(1),
            oneways: VecDeque::new(),
            credit: u64::from(oneway_window),
        }
    }

    /// The callee admits `grant` more one-way calls.
    pub(crate) fn on_credit(&mut self, grant: u32) {
        self.credit = self.credit.saturating_add(u64::from(grant));
    }

    /// A reply (or error) for call `id` arrived; it reaches its caller at the next pass.
    pub(crate) fn on_reply(&mut self, id: u64, arrival: Arrival<Resp>) {
        self.unwire(id);
        self.arrived.push((id, arrival));
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

    /// The call `id` was handed to the pipe.
    pub(crate) fn on_written(&mut self, id: u64) {
        let i = index(id);
        if self.wire.len() <= i {
            self.wire.resize(i + 1, None);
        }
        self.wire[i] = Some(id);
        self.on_wire += 1;
    }

    /// Stops call `id` on the wire: a cancel if the callee has it, else it is never written.
    fn withdraw(&mut self, id: u64) {
        if self.wire.get(index(id)).is_some_and(|w| *w == Some(id)) {
            self.cancels.push_back(id);
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
                if t.expire(deadline, id, &mut self.wakers) {
                    expired_ids.push(id);
                }
                progress = true;
            }
            // Take calls off the queue even when the pipe is full, so their deadlines run.
            if t.has_queued() {
                t.take_queue(&mut self.outgoing, &mut self.taken_cancels, &mut self.deadlines);
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
        let mut cancels = std::mem::take(&mut self.taken_cancels);
        for id in cancels.drain(..).chain(expired_ids) {
            self.withdraw(id);
        }
        self.taken_cancels = cancels;
        CallerPass { progress, close }
    }

    /// The next frame to write: a cancel, else a one-way call the callee has credit for,
    /// else a call if the window has room.
    pub(crate) fn next(&mut self) -> Option<Next<Req>> {
        while let Some(id) = self.cancels.pop_front() {
            // Still unanswered: from now on it does not count against the window (the
            // callee reads this cancel before any later call).
            if self.unwire(id) {
                return Some(Next::Cancel(id));
            }
        }
        if self.credit > 0
            && let Some(frame) = self.oneways.pop_front()
        {
            self.credit -= 1;
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
        !self.cancels.is_empty()
            || (self.credit > 0 && !self.oneways.is_empty())
            || (!self.outgoing.is_empty() && self.on_wire < self.window)
    }

    /// True when nothing taken from the table is waiting to be written.
    pub(crate) fn idle(&self) -> bool {
        self.cancels.is_empty() && self.outgoing.is_empty() && self.oneways.is_empty()
    }

    /// Fails one call whose request could not be encoded.
    pub(crate) fn fail_call(&mut self, id: u64, err: RpcError) {
        self.shared.calls.lock().complete(id, Err(err), &mut self.wakers);
        self.wakers.drain(..).for_each(Waker::wake);
    }

    /// Delivers what arrived before the connection ended, then fails every call still
    /// waiting (and every later one) with `why`.
    pub(crate) fn finish(&mut self, why: &RpcError) {
        let dropped = {
            let mut t = self.shared.calls.lock();
            deliver(&mut self.arrived, &mut t, &mut self.wakers);
            t.fail_all(why, &mut self.wakers)
        };
        // Requests nobody will send are dropped outside the lock.
        drop(dropped);
        self.outgoing.clear();
        self.oneways.clear();
        self.wakers.drain(..).for_each(Waker::wake);
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
        };
        t.complete(id, result, wakers);
    }
}

/// A frame the calling half wants written.
pub(crate) enum Next<Req> {
    Cancel(u64),
    /// Encoded by its caller.
    OneWay(Bytes),
    Call(OutCall<Req>),
}

/// The timeout to announce for a call: the caller's whole timeout, not the time left now.
/// The engine enforces the exact deadline itself; the callee only needs one no earlier
/// than the caller's, and it saves a clock read per call.
pub(crate) fn timeout_us(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX)
}

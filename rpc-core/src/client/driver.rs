//! The task that owns a client connection.
//!
//! Written as a hand-polled future rather than `async` code with `select!`: reading and
//! writing must progress independently (a full outgoing pipe must never stop us from
//! reading responses, or client and server can deadlock each waiting for the other to
//! read), and one poll drains everything that is ready in both directions before a
//! single flush, which is what batches many pipelined calls into few writes.
//!
//! Calls' deadlines are enforced here, behind one timer per connection (see
//! [`DeadlineQueue`]), rather than by a timer in each caller: per-call timers were a fifth
//! of a pipelined client's time.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use transport_pipe::Transport;

use super::Shared;
use super::calls::{CloseRequest, Outgoing, Table};
use crate::codec::{EncodeError, FrameCodec, Inbound, encode_error};
use crate::deadlines::DeadlineQueue;
use crate::error::{Direction, RpcError, ServerError, ServerErrorKind, TransportError, connection_error};
use crate::handshake::Negotiated;
use crate::wire::{ClientFrame, ServerFrame, ServerHead};

/// Items moved per direction in one pass, so one busy connection cannot starve other
/// tasks on the same worker.
const BUDGET: usize = 128;
/// Passes over both directions per poll before yielding.
const ROUNDS: usize = 8;

type ClientTransport<S, Req, Resp> =
    Transport<S, Inbound<ServerFrame<Resp>, ServerHead>, ClientFrame<Req>, FrameCodec<ServerHead>>;

/// A response read from the pipe, before the lock is taken to hand it over.
enum Arrival<Resp> {
    Reply(Resp),
    Error(ServerError),
    Failed(RpcError),
}

pub(crate) struct Driver<S, Req, Resp> {
    /// Boxed so the driver is `Unpin` whatever the message types are.
    transport: Pin<Box<ClientTransport<S, Req, Resp>>>,
    shared: Arc<Shared<Req, Resp>>,
    /// Frames waiting for room in the pipe.
    outgoing: VecDeque<Outgoing<Req>>,
    /// Responses read in this pass, handed to their callers under one lock.
    arrived: Vec<(u64, Arrival<Resp>)>,
    /// Callers to wake once the lock is released.
    wakers: Vec<Waker>,
    deadlines: DeadlineQueue,
    needs_flush: bool,
    /// Set once the connection is over and every caller has been told.
    finished: bool,
}

impl<S, Req, Resp> Driver<S, Req, Resp>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Req: serde::Serialize,
    Resp: serde::de::DeserializeOwned,
{
    pub(crate) fn new(
        framed: Framed<S, LengthDelimitedCodec>,
        negotiated: Negotiated,
        shared: Arc<Shared<Req, Resp>>,
    ) -> Self {
        let codec = FrameCodec::new(negotiated.codec, negotiated.send_limit);
        Driver {
            transport: Box::pin(transport_pipe::serde_transport(framed, codec)),
            shared,
            outgoing: VecDeque::new(),
            arrived: Vec::new(),
            wakers: Vec::new(),
            deadlines: DeadlineQueue::new(),
            needs_flush: false,
            finished: false,
        }
    }

    /// Files a frame from the server under its call id; `Err` if the stream can no longer
    /// be trusted.
    fn on_frame(&mut self, inbound: Inbound<ServerFrame<Resp>, ServerHead>) -> Result<(), RpcError> {
        let (id, arrival) = match inbound {
            Inbound::Frame(ServerFrame::Reply { id, body }) => (id, Arrival::Reply(body)),
            Inbound::Frame(ServerFrame::Error { id, error }) => (id, Arrival::Error(error)),
            Inbound::Frame(ServerFrame::TooLarge { id, size, limit }) => {
                let err = TransportError::MessageTooLarge { size, limit, direction: Direction::Response };
                (id, Arrival::Failed(err.into()))
            }
            Inbound::Malformed { head: Some(head), error } => {
                let err = TransportError::Protocol { detail: format!("malformed response: {error}") };
                (head.id(), Arrival::Failed(err.into()))
            }
            // Without an id we cannot tell whose response this was: the stream is not
            // trustworthy any more.
            Inbound::Malformed { head: None, error } => {
                return Err(
                    TransportError::Protocol { detail: format!("unreadable frame from the server: {error}") }.into()
                );
            }
        };
        self.arrived.push((id, arrival));
        Ok(())
    }

    /// Under the lock: hands this pass's responses to their callers.
    fn deliver(arrived: &mut Vec<(u64, Arrival<Resp>)>, t: &mut Table<Req, Resp>, wakers: &mut Vec<Waker>) {
        for (id, arrival) in arrived.drain(..) {
            let result = match arrival {
                Arrival::Reply(body) => Ok(body),
                // The server's deadline fired: report it as the caller's own deadline.
                Arrival::Error(e) if e.kind == ServerErrorKind::DeadlineExceeded => {
                    Err(RpcError::DeadlineExceeded { timeout: t.timeout_of(id).unwrap_or_default() })
                }
                Arrival::Error(e) => Err(RpcError::Server(e)),
                Arrival::Failed(e) => Err(e),
            };
            t.complete(id, result, wakers);
        }
    }

    /// Fails one call whose request could not be encoded.
    fn fail_call(&mut self, id: u64, err: RpcError) {
        self.shared.calls.lock().complete(id, Err(err), &mut self.wakers);
        self.wakers.drain(..).for_each(Waker::wake);
    }

    /// Writes one queued frame, which `poll_ready` has made room for.
    fn write(&mut self, out: Outgoing<Req>) -> Result<(), RpcError> {
        let (id, frame) = match out {
            Outgoing::Cancel { id } => (id, ClientFrame::Cancel { id }),
            // The caller's whole timeout, not the time left now: this driver enforces the
            // exact deadline itself, the server only needs one no earlier than the
            // caller's, and it saves a clock read per call.
            Outgoing::Call { id, timeout, body } => {
                let timeout_us = u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX);
                (id, ClientFrame::Call { id, timeout_us, body })
            }
        };
        let is_call = matches!(frame, ClientFrame::Call { .. });
        match self.transport.as_mut().start_send(frame) {
            Ok(()) => self.needs_flush = true,
            // Encoding failed before anything was written: only this call fails.
            Err(e) => {
                let err: RpcError = match encode_error(&e) {
                    Some(EncodeError::TooLarge(t)) if is_call => {
                        TransportError::MessageTooLarge { size: t.size, limit: t.limit, direction: Direction::Request }
                            .into()
                    }
                    Some(EncodeError::Serde(msg)) if is_call => {
                        TransportError::Protocol { detail: format!("cannot encode the request: {msg}") }.into()
                    }
                    _ => return Err(connection_error(&e, "server").into()),
                };
                self.fail_call(id, err);
            }
        }
        Ok(())
    }

    /// Runs the connection; ends with why it ended ([`RpcError::Cancelled`] for a polite
    /// close: every handle dropped, or `close()` called).
    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<RpcError> {
        // Keep going while anything moves (a response read may free a caller who queues
        // the next call at once); after a few rounds, yield to other tasks.
        for _ in 0..ROUNDS {
            match self.poll_pass(cx) {
                Poll::Ready(Ok(true)) => continue,
                Poll::Ready(Ok(false)) | Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(e),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// One pass over everything: `Ready(Ok(made_progress))`, `Pending` while a polite
    /// close is still flushing, `Ready(Err(why))` once the connection is over.
    fn poll_pass(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, RpcError>> {
        let mut progress = false;
        // Why the connection ended, if it did during this read; responses that arrived
        // before that are still delivered first.
        let mut ended: Option<RpcError> = None;
        for _ in 0..BUDGET {
            match self.transport.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Err(e) = self.on_frame(frame) {
                        ended = Some(e);
                        break;
                    }
                    progress = true;
                }
                Poll::Ready(Some(Err(e))) => {
                    ended = Some(connection_error(&e, "server").into());
                    break;
                }
                Poll::Ready(None) => {
                    let detail = "the server closed the connection".to_owned();
                    ended = Some(TransportError::Disconnected { detail }.into());
                    break;
                }
                Poll::Pending => break,
            }
        }
        if let Some(why) = ended {
            if !self.arrived.is_empty() {
                Self::deliver(&mut self.arrived, &mut self.shared.calls.lock(), &mut self.wakers);
                self.wakers.drain(..).for_each(Waker::wake);
            }
            return Poll::Ready(Err(why));
        }
        let expired = self.deadlines.poll_expired(cx);
        // Registered before the queue is looked at: a call queued after the look wakes us.
        self.shared.calls.register_driver(cx.waker());
        let close = {
            // One lock for everything this pass: responses in, deadlines, new calls out.
            let mut t = self.shared.calls.lock();
            if !self.arrived.is_empty() {
                Self::deliver(&mut self.arrived, &mut t, &mut self.wakers);
            }
            for (deadline, id) in expired {
                // Tell the server to stop the handler, then fail the call.
                if t.expire(deadline, id, &mut self.wakers) {
                    self.outgoing.push_back(Outgoing::Cancel { id });
                }
                progress = true;
            }
            // Take calls off the queue even when the pipe is full, so their deadlines run.
            if t.has_queued() {
                t.take_queue(&mut self.outgoing, &mut self.deadlines);
                progress = true;
            }
            let waiting = t.in_use();
            self.deadlines.compact(waiting, || t.live_deadlines());
            match t.close_request() {
                CloseRequest::Polite if waiting == 0 => CloseRequest::Polite,
                CloseRequest::Polite => CloseRequest::None,
                other => other,
            }
        };
        self.wakers.drain(..).for_each(Waker::wake);
        if close == CloseRequest::Now {
            return Poll::Ready(Err(RpcError::Cancelled));
        }
        while !self.outgoing.is_empty() {
            match self.transport.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(connection_error(&e, "server").into())),
                Poll::Pending => break,
            }
            let out = self.outgoing.pop_front().expect("outgoing is not empty");
            self.write(out)?;
            progress = true;
        }
        if self.needs_flush {
            match self.transport.as_mut().poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(connection_error(&e, "server").into())),
                Poll::Pending => {}
            }
        }
        if close == CloseRequest::Polite && self.outgoing.is_empty() {
            // Every handle is gone and nothing is owed: close politely.
            return match self.transport.as_mut().poll_close(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(_) => Poll::Ready(Err(RpcError::Cancelled)),
            };
        }
        Poll::Ready(Ok(progress))
    }
}

// No field is ever pinned in place (the transport is boxed; the rest is plain data).
impl<S, Req, Resp> Unpin for Driver<S, Req, Resp> {}

impl<S, Req, Resp> Future for Driver<S, Req, Resp>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Req: serde::Serialize,
    Resp: serde::de::DeserializeOwned,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        match this.poll_io(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(err) => {
                tracing::debug!(error = %err, "client connection ended");
                // Fail everything still waiting now, not at its deadline.
                this.finish(&err);
                Poll::Ready(())
            }
        }
    }
}

impl<S, Req, Resp> Driver<S, Req, Resp> {
    /// The connection is over: everyone still waiting, and everyone who calls later, is
    /// told `why`.
    fn finish(&mut self, why: &RpcError) {
        if self.finished {
            return;
        }
        self.finished = true;
        let dropped = self.shared.calls.lock().fail_all(why, &mut self.wakers);
        // Requests nobody will send are dropped outside the lock.
        drop(dropped);
        self.outgoing.clear();
        self.wakers.drain(..).for_each(Waker::wake);
    }
}

impl<S, Req, Resp> Drop for Driver<S, Req, Resp> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped unfinished: the runtime that ran this task shut down. Callers on other
        // runtimes must not wait for a response that can no longer arrive.
        let why: RpcError = TransportError::Disconnected {
            detail: "the client's connection task stopped (its tokio runtime shut down)".into(),
        }
        .into();
        self.finish(&why);
    }
}

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
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use transport_pipe::Transport;

use super::{Command, Reply};
use crate::codec::{EncodeError, FrameCodec, Inbound, encode_error};
use crate::deadlines::{DeadlineQueue, IdMap};
use crate::error::{Direction, RpcError, ServerErrorKind, TransportError, connection_error};
use crate::handshake::Negotiated;
use crate::wire::{ClientFrame, ServerFrame, ServerHead};

/// Items moved per direction in one pass, so one busy connection cannot starve other
/// tasks on the same worker.
const BUDGET: usize = 128;
/// Passes over both directions per poll before yielding.
const ROUNDS: usize = 8;

type ClientTransport<S, Req, Resp> =
    Transport<S, Inbound<ServerFrame<Resp>, ServerHead>, ClientFrame<Req>, FrameCodec<ServerHead>>;

/// A call whose caller still waits.
struct Pending<Resp> {
    reply: Reply<Resp>,
    deadline: Instant,
    /// The time the caller gave, for the `DeadlineExceeded` error.
    timeout: Duration,
    /// Whether its frame has been written (so a cancel must be sent too).
    sent: bool,
}

/// A frame waiting for room in the pipe.
enum Outgoing<Req> {
    Call { id: u64, body: Req },
    Cancel { id: u64 },
}

pub(crate) struct Driver<S, Req, Resp> {
    /// Boxed so the driver is `Unpin` whatever the message types are.
    transport: Pin<Box<ClientTransport<S, Req, Resp>>>,
    commands: mpsc::UnboundedReceiver<Command<Req, Resp>>,
    commands_open: bool,
    pending: IdMap<Pending<Resp>>,
    outgoing: VecDeque<Outgoing<Req>>,
    /// Reused buffer for draining the command queue.
    batch: Vec<Command<Req, Resp>>,
    deadlines: DeadlineQueue,
    needs_flush: bool,
    closed: Arc<OnceLock<RpcError>>,
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
        commands: mpsc::UnboundedReceiver<Command<Req, Resp>>,
        closed: Arc<OnceLock<RpcError>>,
    ) -> Self {
        let codec = FrameCodec::new(negotiated.codec, negotiated.send_limit);
        Driver {
            transport: Box::pin(transport_pipe::serde_transport(framed, codec)),
            commands,
            commands_open: true,
            pending: IdMap::default(),
            outgoing: VecDeque::new(),
            batch: Vec::new(),
            deadlines: DeadlineQueue::new(),
            needs_flush: false,
            closed,
        }
    }

    fn complete(&mut self, id: u64, result: Result<Resp, RpcError>) {
        if let Some(p) = self.pending.remove(&id) {
            // The caller may have given up in the meantime; nothing to do then.
            let _ = p.reply.send(result);
        }
    }

    fn on_frame(&mut self, inbound: Inbound<ServerFrame<Resp>, ServerHead>) -> Result<(), RpcError> {
        match inbound {
            Inbound::Frame(ServerFrame::Reply { id, body }) => self.complete(id, Ok(body)),
            Inbound::Frame(ServerFrame::Error { id, error }) => {
                let err = if error.kind == ServerErrorKind::DeadlineExceeded {
                    RpcError::DeadlineExceeded { timeout: self.pending.get(&id).map(|p| p.timeout).unwrap_or_default() }
                } else {
                    RpcError::Server(error)
                };
                self.complete(id, Err(err));
            }
            Inbound::Frame(ServerFrame::TooLarge { id, size, limit }) => {
                let err = TransportError::MessageTooLarge { size, limit, direction: Direction::Response };
                self.complete(id, Err(err.into()));
            }
            Inbound::Malformed { head: Some(head), error } => {
                let err = TransportError::Protocol { detail: format!("malformed response: {error}") };
                self.complete(head.id(), Err(err.into()));
            }
            // Without an id we cannot tell whose response this was: the stream is not
            // trustworthy any more.
            Inbound::Malformed { head: None, error } => {
                return Err(
                    TransportError::Protocol { detail: format!("unreadable frame from the server: {error}") }.into()
                );
            }
        }
        Ok(())
    }

    fn on_command(&mut self, cmd: Command<Req, Resp>) -> Result<(), RpcError> {
        match cmd {
            Command::Call { id, deadline, timeout, body, reply } => {
                if reply.is_canceled() {
                    return Ok(()); // the caller is gone already
                }
                self.pending.insert(id, Pending { reply, deadline, timeout, sent: false });
                self.deadlines.push(deadline, id);
                self.outgoing.push_back(Outgoing::Call { id, body });
            }
            Command::Cancel { id } => drop(self.cancel(id)),
            Command::Close => return Err(RpcError::Cancelled),
        }
        Ok(())
    }

    /// Forgets a call; tells the server only if it has seen the call.
    /// Forgets a call, telling the server only if it has seen the call; returns the reply
    /// slot so the caller can still be told why.
    fn cancel(&mut self, id: u64) -> Option<Reply<Resp>> {
        let p = self.pending.remove(&id)?;
        if p.sent {
            self.outgoing.push_back(Outgoing::Cancel { id });
        }
        Some(p.reply)
    }

    /// Writes one queued frame, which `poll_ready` has made room for.
    fn write(&mut self, out: Outgoing<Req>) -> Result<(), RpcError> {
        let (id, frame) = match out {
            Outgoing::Cancel { id } => (id, ClientFrame::Cancel { id }),
            Outgoing::Call { id, body } => {
                // Cancelled or expired while queued: nothing to send.
                let Some(p) = self.pending.get_mut(&id) else { return Ok(()) };
                p.sent = true;
                // The caller's whole timeout, not the time left now: this driver enforces the
                // exact deadline itself, the server only needs one no earlier than the
                // caller's, and it saves a clock read per call.
                let timeout_us = u64::try_from(p.timeout.as_micros()).unwrap_or(u64::MAX);
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
                self.complete(id, Err(err));
            }
        }
        Ok(())
    }

    fn expire(&mut self, deadline: Instant, id: u64) {
        // Entries are removed lazily: only a call still waiting with this deadline expires.
        if let Some(p) = self.pending.get(&id)
            && p.deadline == deadline
        {
            let timeout = p.timeout;
            // Tell the server to stop the handler, then fail the call.
            if let Some(reply) = self.cancel(id) {
                let _ = reply.send(Err(RpcError::DeadlineExceeded { timeout }));
            }
        }
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
        for _ in 0..BUDGET {
            match self.transport.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    self.on_frame(frame)?;
                    progress = true;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(connection_error(&e, "server").into())),
                Poll::Ready(None) => {
                    let detail = "the server closed the connection".to_owned();
                    return Poll::Ready(Err(TransportError::Disconnected { detail }.into()));
                }
                Poll::Pending => break,
            }
        }
        // Take calls off the queue even when the pipe is full, so their deadlines run; in
        // batches, which costs fewer atomic operations than one receive per call.
        if self.commands_open {
            let mut batch = std::mem::take(&mut self.batch);
            match self.commands.poll_recv_many(cx, &mut batch, BUDGET) {
                Poll::Ready(0) => {
                    self.commands_open = false;
                    progress = true;
                }
                Poll::Ready(_) => {
                    progress = true;
                    for cmd in batch.drain(..) {
                        self.on_command(cmd)?;
                    }
                }
                Poll::Pending => {}
            }
            self.batch = batch;
        }
        for (deadline, id) in self.deadlines.poll_expired(cx) {
            self.expire(deadline, id);
            progress = true;
        }
        self.deadlines.compact(self.pending.len(), || self.pending.iter().map(|(&id, p)| (p.deadline, id)));
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
        if !self.commands_open && self.pending.is_empty() && self.outgoing.is_empty() {
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
                let _ = this.closed.set(err.clone());
                // Fail everything still waiting now, not at its deadline.
                for (_, p) in this.pending.drain() {
                    let _ = p.reply.send(Err(err.clone()));
                }
                this.commands.close();
                while let Ok(cmd) = this.commands.try_recv() {
                    if let Command::Call { reply, .. } = cmd {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
                Poll::Ready(())
            }
        }
    }
}

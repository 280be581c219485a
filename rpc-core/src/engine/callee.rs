//! The serving half of a connection: calls the peer makes to this end's service.
//!
//! Each call is polled once inline as soon as its frame is decoded: most handlers finish
//! without waiting, and are answered without a task, an abort handle or a deadline entry.
//! A handler that waits, or whose method once took longer than [`HEAVY`] in that first
//! poll, gets a tokio task of its own, so it never holds up the connection's other calls
//! and, on a multi-thread runtime, runs in parallel with them. Finished tasks hand their
//! results back through [`Finished`] and wake the engine.
//!
//! Admission: at most `max_in_flight_per_connection` calls run or wait to be written at
//! once. A conforming caller never exceeds it (the window is announced in the handshake);
//! a call beyond it is refused with `Overloaded`, and the frames after it are still read.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::task::AtomicWaker;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::callback::CallbackLink;
use crate::client::Channel;
use crate::codec::Codec;
use crate::context::{self, ConnContext, Current as CallContext};
use crate::deadlines::{DeadlineQueue, IdMap, deadline_after};
use crate::error::{RpcError, ServerError, ServerErrorKind, fmt_duration, panic_message};
use crate::server::ServerConfig;
use crate::service::{BoxFuture, CallStreams, Reply, Service};
use crate::wire::CallbackCall;
use serde_bytes::ByteBuf;

use super::streams::{Ctl, Inbox, OutStream, Pieces, Remote, StreamControl};
use crate::access::PeerCredentials;
use crate::spans::{self, ServerCall, Trace};
use crate::stats::{Counters, Outcome as Ended};
use bytes::BytesMut;

/// A first poll longer than this marks its method as long-running: its later calls start
/// in a task of their own instead of inline.
pub(crate) const HEAVY: Duration = Duration::from_micros(500);

/// What "no deadline" means in a handler's context: far enough never to matter, near
/// enough that adding it to an `Instant` cannot overflow.
const NO_DEADLINE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

const SHUTTING_DOWN: &str = "the server is shutting down";

/// The method of a request that does not decode, in spans.
const UNDECODED: &str = "(undecodable)";

/// A frame the serving half wants written.
pub(crate) enum Answer<R> {
    Reply {
        id: u64,
        body: R,
    },
    Error {
        id: u64,
        error: ServerError,
    },
    /// The caller may make this many more one-way calls.
    Credit(u32),
    /// Room for `grant` more bytes of the caller's stream items.
    UpCredit {
        id: u64,
        grant: u32,
    },
    /// The handler dropped the caller's stream: stop sending.
    UpStop {
        id: u64,
    },
}

impl<R> Answer<R> {
    fn id(&self) -> Option<u64> {
        match self {
            Answer::Reply { id, .. }
            | Answer::Error { id, .. }
            | Answer::UpCredit { id, .. }
            | Answer::UpStop { id } => Some(*id),
            Answer::Credit(_) => None,
        }
    }
}

enum Outcome<R> {
    Done(R),
    Panicked(String),
}

/// A handler that ran in its own task has finished.
enum Done<R> {
    /// A call: its id, its [`Running::seq`] and what it returned.
    Call(u64, u64, Outcome<Reply<R>>),
    /// A one-way call: its credit can go back to the caller; how it ended.
    OneWay(Ended),
}

/// Results of handlers that ran in their own tasks.
struct Finished<R> {
    list: Mutex<Vec<Done<R>>>,
    engine: AtomicWaker,
}

impl<R> Finished<R> {
    fn push(&self, done: Done<R>) {
        self.list.lock().unwrap_or_else(PoisonError::into_inner).push(done);
        self.engine.wake();
    }
}

/// What the connection keeps per handler running in a task.
struct Running {
    abort: AbortHandle,
    /// Tells this handler's result from that of an earlier call with the same id.
    seq: u64,
    /// `None`: a stream without a deadline.
    deadline: Option<Instant>,
    timeout: Duration,
    /// The exchange carries a stream (for the counters).
    stream: bool,
    /// Its span, if one is wanted.
    trace: Trace,
}

pub(crate) struct Callee<S: Service> {
    service: Arc<S>,
    config: Arc<ServerConfig>,
    /// `None` on a client (its serving half never drains).
    shutdown: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    pub(crate) draining: bool,
    running: IdMap<Running>,
    seq: u64,
    finished: Arc<Finished<S::Response>>,
    /// Taken from `finished` under its lock, handled outside it.
    taken: Vec<Done<S::Response>>,
    /// One-way handlers running in their own tasks.
    oneways_running: usize,
    /// One-way calls finished since the last credit frame.
    credit_due: u32,
    deadlines: DeadlineQueue,
    outbox: VecDeque<Answer<S::Response>>,
    /// Methods whose first poll took longer than [`HEAVY`].
    heavy: HashSet<&'static str>,
    /// The time as last read while reading this pass's frames: when the next call starts.
    /// One clock read per inline poll (its end is the next call's start) instead of two,
    /// and none for a call that is not polled inline; cleared at every pass so it is never
    /// older than the frames being read.
    clock: Option<Instant>,
    /// Inbound (caller to handler) streams, by exchange.
    ups: IdMap<Arc<Inbox<S::Request>>>,
    /// Their large items, arriving in pieces.
    up_pieces: Pieces,
    /// Outbound (handler to caller) streams, by exchange: polled by the engine.
    pub(crate) downs: IdMap<OutStream<S::Response>>,
    /// What the handlers' inbound streams said (credit to give, dropped).
    ctl: Arc<StreamControl>,
    ctl_taken: Vec<Ctl>,
    limits: StreamLimits,
    /// The way back to the client, for handlers that take a `Callback`.
    callbacks: Option<CallbackLink>,
    /// Who the caller is, for handlers' contexts.
    peer: Option<PeerCredentials>,
    /// Work the handlers handed off (`context::spawn`, `context::spawn_blocking`).
    work: Arc<context::CallWork>,
    /// The peer and `work`, as every handler's context shares them.
    conn: Arc<ConnContext>,
    /// This connection's counters (see `crate::stats`): every exchange that starts here is
    /// counted as started once and as ended once.
    counters: Arc<Counters>,
    /// The spans of replies not yet written (only while a subscriber wants spans): they
    /// close when the reply is written, as `too_large` if it cannot be.
    replies_traced: IdMap<Trace>,
}

/// The stream windows the handshake settled, in bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamLimits {
    /// Ours: the caller may send this much of a stream before we give credit.
    pub(crate) up_window: u32,
    /// The caller's: we may send this much of a stream before it gives credit.
    pub(crate) down_window: u32,
    pub(crate) max_message: usize,
}

impl<S: Service> Callee<S> {
    pub(crate) fn new(
        service: Arc<S>,
        config: Arc<ServerConfig>,
        shutdown: Option<CancellationToken>,
        limits: StreamLimits,
        peer: Option<PeerCredentials>,
        counters: Arc<Counters>,
    ) -> Self {
        let config_in_flight = config.max_in_flight_per_connection.max(1);
        let work = Arc::new(context::CallWork::new(config_in_flight));
        Callee {
            conn: Arc::new(ConnContext { peer, work: work.clone() }),
            peer,
            service,
            config,
            shutdown: shutdown.map(|t| Box::pin(t.cancelled_owned())),
            draining: false,
            running: IdMap::default(),
            seq: 0,
            finished: Arc::new(Finished { list: Mutex::new(Vec::new()), engine: AtomicWaker::new() }),
            taken: Vec::new(),
            oneways_running: 0,
            credit_due: 0,
            deadlines: DeadlineQueue::new(),
            outbox: VecDeque::new(),
            heavy: HashSet::new(),
            clock: None,
            ups: IdMap::default(),
            up_pieces: Pieces::default(),
            downs: IdMap::default(),
            ctl: Arc::new(StreamControl::default()),
            ctl_taken: Vec::new(),
            limits,
            callbacks: None,
            work,
            counters,
            replies_traced: IdMap::default(),
        }
    }

    /// Gives handlers that take a `Callback` a way back to the client.
    pub(crate) fn set_callbacks(&mut self, channel: Channel<CallbackCall, ByteBuf>, codec: Codec, limit: usize) {
        self.callbacks = Some(CallbackLink { channel, parent: 0, codec, limit });
    }

    fn refuse(&mut self, id: u64, kind: ServerErrorKind, detail: String) {
        self.outbox.push_back(Answer::Error { id, error: ServerError::new(kind, detail) });
    }

    /// An exchange that started here is over: counted, and its span closed.
    #[inline]
    fn ended(&self, outcome: Ended, stream: bool, trace: Trace, error: Option<&dyn std::fmt::Display>) {
        self.counters.ended(outcome, stream);
        trace.end(outcome, error, self.clock);
    }

    /// The span of an exchange arriving now, if one is wanted.
    #[inline]
    fn trace(&self, kind: spans::Kind, method: &'static str, id: u64, timeout: Option<Duration>) -> Trace {
        if !spans::wanted() {
            return Trace::NONE;
        }
        let started = self.clock;
        spans::server(ServerCall { kind, service: S::ID.name, method, id, peer: self.peer.as_ref(), timeout, started })
    }

    /// A call refused before its handler ran: answered with `kind`, and counted (with a
    /// span of its own) as started and over.
    fn refuse_new(&mut self, id: u64, method: &'static str, kind: ServerErrorKind, detail: String) {
        self.counters.started(false);
        let trace = self.trace(spans::Kind::Call, method, id, None);
        self.ended(Ended::of_server(kind), false, trace, Some(&detail));
        self.refuse(id, kind, detail);
    }

    /// The peer sent more answers' worth of frames than it reads: stop reading until it
    /// reads what it is owed (the only time reading stops).
    pub(crate) fn outbox_full(&self) -> bool {
        self.outbox.len() >= 2 * self.config.max_in_flight_per_connection
    }

    /// Whether exchange `id` is open here: running, streaming, or answered but not yet
    /// written.
    fn is_open(&self, id: u64) -> bool {
        self.running.contains_key(&id)
            || self.downs.contains_key(&id)
            || self.ups.contains_key(&id)
            || self.outbox.iter().any(|a| a.id() == Some(id))
    }

    /// A call frame arrived. `Err` if its id is one of an exchange still open: a conforming
    /// caller never reuses one, and any answer would be ambiguous (two frames for one id),
    /// so the connection closes.
    pub(crate) fn on_call(
        &mut self,
        id: u64,
        timeout_us: u64,
        body: S::Request,
        cx: &mut Context<'_>,
    ) -> Result<(), String> {
        if self.is_open(id) {
            return Err(format!("a call with id {id}, which is the id of an exchange still open"));
        }
        let limit = self.config.max_in_flight_per_connection;
        if self.draining {
            let detail = "the server is shutting down; the call was not started".into();
            self.refuse_new(id, S::method_name(&body), ServerErrorKind::ShuttingDown, detail);
        } else if self.running.len() + self.downs.len() + self.outbox.len() >= limit {
            let detail = format!(
                "the connection already has {limit} calls in flight, the server's limit per connection \
                 (announced in the handshake); the call was not started"
            );
            self.refuse_new(id, S::method_name(&body), ServerErrorKind::Overloaded, detail);
        } else {
            self.start(id, timeout_us, body, cx);
        }
        Ok(())
    }

    /// A call frame whose body does not decode.
    pub(crate) fn on_bad_call(&mut self, id: u64, error: &str) {
        let detail = format!("the request does not decode as a call of `{}`: {error}", S::ID.name);
        self.refuse_new(id, UNDECODED, ServerErrorKind::BadRequest, detail);
    }

    /// The caller gave up on `id`: stop its handler and its streams, and drop its unwritten
    /// answer, if any.
    pub(crate) fn on_cancel(&mut self, id: u64) {
        self.work.end(id);
        if let Some(down) = self.downs.remove(&id) {
            self.ended(Ended::Cancelled, true, down.trace, None);
        }
        self.end_up(id, Err(RpcError::Cancelled));
        if let Some(r) = self.running.remove(&id) {
            r.abort.abort();
            self.ended(Ended::Cancelled, r.stream, r.trace, None);
        } else if self.outbox.iter().any(|a| a.id() == Some(id)) {
            // Answered inline or just finished, not written yet: the caller no longer wants it.
            // (Its handler finished: it was counted as such, and its span closes so.)
            self.outbox.retain(|a| a.id() != Some(id));
            if let Some(trace) = self.replies_traced.remove(&id) {
                trace.end(Ended::Ok, None, None);
            }
        }
    }

    /// The reply of exchange `id` was written (`Ok`), or could not be encoded and was
    /// replaced by an error saying why (`Err`, with how that ended the exchange). Its count
    /// was taken when the handler finished; only a reply that could not be written changes
    /// it.
    #[inline(always)]
    pub(crate) fn reply_written(&mut self, id: u64, how: Result<(), (Ended, &dyn std::fmt::Display)>) {
        // The common case, a reply written with no span waiting for it, is these two tests.
        if how.is_err() || !self.replies_traced.is_empty() {
            self.reply_settled(id, how);
        }
    }

    #[cold]
    #[inline(never)]
    fn reply_settled(&mut self, id: u64, how: Result<(), (Ended, &dyn std::fmt::Display)>) {
        if let Err((outcome, _)) = how {
            self.counters.recount(Ended::Ok, outcome);
        }
        if let Some(trace) = self.replies_traced.remove(&id) {
            match how {
                Ok(()) => trace.end(Ended::Ok, None, None),
                Err((outcome, why)) => trace.end(outcome, Some(why), None),
            }
        }
    }

    /// A one-way call arrived. `Err` if the caller exceeded the credit it was granted: a
    /// conforming caller never does.
    pub(crate) fn on_oneway(&mut self, id: u64, body: S::Request, cx: &mut Context<'_>) -> Result<(), String> {
        let limit = self.config.max_oneway_per_connection;
        if self.oneways_running >= limit {
            return Err(format!(
                "more one-way calls at once than the {limit} the server granted (max_oneway_per_connection)"
            ));
        }
        // A one-way handler is not tied to the caller's wait (nobody waits): it may run up
        // to the server's deadline cap, and finishes even if the connection closes.
        let timeout = self.config.max_deadline;
        let started = self.now();
        let method = S::method_name(&body);
        self.counters.started_oneway();
        let trace = self.trace(spans::Kind::OneWay, method, id, None);
        let ctx = CallContext {
            since: started,
            wait: timeout,
            request_id: id,
            method,
            conn: self.conn.clone(),
            tracked: false,
        };
        let mut call = self.service.call(body, CallStreams::none());
        // Always polled inline, even for a method marked long-running: that is what starts
        // one-way handlers in the order they were sent.
        let span = trace.span();
        match self.poll_inline(&mut call, &ctx, started, true, span, cx) {
            Some(Outcome::Done(_)) => {
                self.credit_due += 1;
                self.ended(Ended::Ok, false, trace, None);
                return Ok(());
            }
            Some(Outcome::Panicked(msg)) => {
                tracing::error!(id, method, panic = %msg, "one-way handler panicked");
                self.credit_due += 1;
                self.ended(Ended::HandlerPanicked, false, trace, Some(&msg));
                return Ok(());
            }
            None => {}
        }
        self.oneways_running += 1;
        // Counted once any task exists, so `pass` collects its completion.
        self.seq += 1;
        let finished = self.finished.clone();
        let span = trace.span().cloned();
        let task = async move {
            let run = AssertUnwindSafe(context::scoped(ctx, call)).catch_unwind();
            let (outcome, error) = match tokio::time::timeout(timeout, run).await {
                Ok(Ok(_)) => (Ended::Ok, None),
                Ok(Err(panic)) => {
                    let msg = panic_message(panic.as_ref());
                    tracing::error!(id, method, panic = %msg, "one-way handler panicked");
                    (Ended::HandlerPanicked, Some(msg))
                }
                Err(_) => {
                    tracing::warn!(id, method, "one-way handler stopped at the server's deadline cap");
                    (Ended::DeadlineExceeded, None)
                }
            };
            trace.end(outcome, error.as_ref().map(|e| e as &dyn std::fmt::Display), None);
            finished.push(Done::OneWay(outcome));
        };
        match span {
            None => tokio::spawn(task),
            Some(span) => tokio::spawn(tracing::Instrument::instrument(task, span)),
        };
        Ok(())
    }

    /// A one-way call whose body does not decode: nobody to tell but the log; its credit
    /// goes back.
    pub(crate) fn on_bad_oneway(&mut self, id: u64, error: &str) {
        tracing::warn!(id, %error, "dropping a one-way call that does not decode as a call of `{}`", S::ID.name);
        self.credit_due += 1;
        self.counters.started_oneway();
        let trace = self.trace(spans::Kind::OneWay, UNDECODED, id, None);
        self.ended(Ended::BadRequest, false, trace, Some(&error));
    }

    fn start(&mut self, id: u64, timeout_us: u64, body: S::Request, cx: &mut Context<'_>) {
        let shape = S::shape(&body);
        let streaming = shape.upload || shape.download || shape.callback;
        // A stream the caller gave no deadline has none here either (`u64::MAX`); every
        // other deadline is capped.
        let timeout = (!streaming || timeout_us != u64::MAX)
            .then(|| Duration::from_micros(timeout_us).min(self.config.max_deadline));
        let method = S::method_name(&body);
        if timeout.is_some_and(|t| t.is_zero()) {
            // The caller's deadline passed before the call reached us: nobody waits.
            let detail = "the call's deadline had passed when it reached the server".to_owned();
            self.refuse_new(id, method, ServerErrorKind::DeadlineExceeded, detail);
            return;
        }
        let started = self.now();
        let deadline = timeout.map(|t| deadline_after(started, t));
        // A stream for the counters and spans: items either way (a callback is a call).
        let stream = shape.upload || shape.download;
        self.counters.started(stream);
        let kind =
            if stream { spans::Kind::Stream { up: shape.upload, down: shape.download } } else { spans::Kind::Call };
        let mut trace = self.trace(kind, method, id, timeout);
        // The context always has a deadline: for a stream without one, the far future.
        let ctx = CallContext {
            since: started,
            wait: timeout.unwrap_or(NO_DEADLINE),
            request_id: id,
            method,
            conn: self.conn.clone(),
            tracked: true,
        };
        let mut streams = CallStreams::none();
        if shape.callback {
            streams.callback = self.callbacks.clone().map(|link| CallbackLink { parent: id, ..link });
        }
        if shape.upload {
            let inbox = Inbox::new(self.counters.clone());
            if let Some(t) = trace.get_mut() {
                t.count_inbound(&inbox);
            }
            self.ups.insert(id, inbox.clone());
            streams.up = Some(Remote::new(id, inbox, self.ctl.clone(), self.limits.up_window, true));
        }
        let mut call = self.service.call(body, streams);
        let span = trace.span();
        if let Some(outcome) = self.poll_inline(&mut call, &ctx, started, false, span, cx) {
            return self.answer(id, outcome, deadline, stream, trace);
        }
        self.seq += 1;
        let seq = self.seq;
        let finished = self.finished.clone();
        let task = async move {
            let outcome = match AssertUnwindSafe(context::scoped(ctx, call)).catch_unwind().await {
                Ok(body) => Outcome::Done(body),
                Err(panic) => Outcome::Panicked(panic_message(panic.as_ref())),
            };
            finished.push(Done::Call(id, seq, outcome));
        };
        // In its call's span, if it has one, so what the handler logs belongs to it.
        let task = match trace.span() {
            None => tokio::spawn(task),
            Some(span) => tokio::spawn(tracing::Instrument::instrument(task, span.clone())),
        };
        let timeout = timeout.unwrap_or(NO_DEADLINE);
        self.running.insert(id, Running { abort: task.abort_handle(), seq, deadline, timeout, stream, trace });
        if let Some(d) = deadline {
            self.deadlines.push(d, id);
        }
    }

    /// Polls a new handler once, right here, unless its method is known to run long (or
    /// `always`); a first poll that took long marks the method. `None`: it waits (or runs
    /// long) and goes on in a task of its own. If it waited, it registered this
    /// connection's waker, which is harmless: its task polls it again with its own.
    fn poll_inline(
        &mut self,
        call: &mut BoxFuture<Reply<S::Response>>,
        ctx: &CallContext,
        started: Instant,
        always: bool,
        span: Option<&tracing::Span>,
        cx: &mut Context<'_>,
    ) -> Option<Outcome<Reply<S::Response>>> {
        if !always && !self.heavy.is_empty() && self.heavy.contains(ctx.method) {
            return None;
        }
        // What the handler logs in its first poll belongs to its call's span.
        let entered = span.map(tracing::Span::enter);
        let first = std::panic::catch_unwind(AssertUnwindSafe(|| context::sync_scoped(ctx, || call.as_mut().poll(cx))));
        drop(entered);
        let now = Instant::now();
        self.clock = Some(now);
        // An addition and a comparison: cheaper than the subtraction of two instants.
        if started.checked_add(HEAVY).is_some_and(|limit| now > limit) {
            self.heavy.insert(ctx.method);
        }
        match first {
            Ok(Poll::Ready(body)) => Some(Outcome::Done(body)),
            Err(panic) => Some(Outcome::Panicked(panic_message(panic.as_ref()))),
            Ok(Poll::Pending) => None,
        }
    }

    /// A handler finished (`stream`: its exchange carries a stream).
    fn answer(
        &mut self,
        id: u64,
        outcome: Outcome<Reply<S::Response>>,
        deadline: Option<Instant>,
        stream: bool,
        trace: Trace,
    ) {
        let answer = match outcome {
            Outcome::Done(Reply::Value(body)) => {
                self.work.end(id);
                // Counted now; recounted if the reply turns out too large to write.
                self.counters.ended(Ended::Ok, stream);
                if trace.is_some() {
                    // Closed once written, with how that went.
                    self.replies_traced.insert(id, trace);
                }
                Answer::Reply { id, body }
            }
            Outcome::Done(Reply::Stream(body)) => {
                // The exchange goes on as the handler's stream, under the call's deadline.
                self.downs.insert(id, OutStream::new(body, self.limits.down_window, deadline, trace));
                if let Some(d) = deadline {
                    self.deadlines.push(d, id);
                }
                return;
            }
            Outcome::Done(Reply::Error(error)) => {
                self.work.end(id);
                self.ended(Ended::of_server(error.kind), stream, trace, Some(&error.detail));
                Answer::Error { id, error }
            }
            Outcome::Panicked(msg) => {
                self.work.end(id);
                tracing::error!(id, panic = %msg, "handler panicked");
                self.ended(Ended::HandlerPanicked, stream, trace, Some(&msg));
                Answer::Error { id, error: ServerError::new(ServerErrorKind::HandlerPanicked, msg) }
            }
        };
        // The handler is done with the caller's stream, if it had one.
        self.end_up(id, Err(RpcError::Cancelled));
        self.outbox.push_back(answer);
    }

    /// A piece of a large item of exchange `id`'s inbound stream: `Ok(Some(frame))` when
    /// it completes one. Pieces of an exchange that is over are dropped.
    pub(crate) fn on_up_piece(&mut self, id: u64, more: bool, bytes: &[u8]) -> Result<Option<BytesMut>, String> {
        if !self.ups.contains_key(&id) {
            return Ok(None);
        }
        self.up_pieces.add(id, more, bytes, self.limits.max_message)
    }

    /// Ends the inbound stream of exchange `id`, if it has one.
    fn end_up(&mut self, id: u64, how: Result<(), RpcError>) {
        self.up_pieces.forget(id);
        if self.ups.is_empty() {
            return;
        }
        if let Some(inbox) = self.ups.remove(&id) {
            match how {
                Ok(()) => inbox.finish(Ok(())),
                Err(e) => inbox.fail(e),
            }
        }
    }

    /// Where items of exchange `id`'s inbound stream go, and the most it may hold (for an
    /// [`ItemRun`](super::streams::ItemRun)); `None` if the exchange is over.
    pub(crate) fn up_inbox(&self, id: u64) -> (Option<Arc<Inbox<S::Request>>>, usize) {
        (self.ups.get(&id).cloned(), self.limits.up_window as usize + self.limits.max_message)
    }

    /// An item of exchange `id`'s inbound stream that does not decode: the handler's
    /// stream fails with why, and the caller is told to stop sending.
    pub(crate) fn on_bad_up_item(&mut self, id: u64, error: &str) {
        if self.ups.contains_key(&id) {
            let detail = format!("a stream item does not decode: {error}");
            self.end_up(id, Err(crate::TransportError::Protocol { detail }.into()));
            self.outbox.push_back(Answer::UpStop { id });
        }
    }

    /// The caller's stream of exchange `id` ended normally.
    pub(crate) fn on_up_end(&mut self, id: u64) {
        self.end_up(id, Ok(()));
    }

    /// The caller has room for `grant` more bytes of exchange `id`'s items.
    pub(crate) fn on_down_credit(&mut self, id: u64, grant: u32) {
        if let Some(down) = self.downs.get_mut(&id) {
            down.credit = down.credit.saturating_add(i64::from(grant));
        }
    }

    /// The handler's stream of exchange `id` ended (its end frame is written), with
    /// `outcome`: the exchange is over.
    pub(crate) fn down_ended(&mut self, id: u64, outcome: Ended, trace: Trace) {
        self.end_up(id, Err(RpcError::Cancelled));
        self.work.end(id);
        self.ended(outcome, true, trace, None);
    }

    /// The deadline of a running call passed: stop the handler and say so, so a caller
    /// whose own deadline is later (the server caps deadlines) does not wait in silence.
    fn expire(&mut self, deadline: Instant, id: u64) {
        // Entries are removed lazily: only a call still running with this deadline expires.
        if self.running.get(&id).is_some_and(|r| r.deadline == Some(deadline))
            || self.downs.get(&id).is_some_and(|d| d.deadline == Some(deadline))
        {
            self.work.end(id);
        }
        let (timeout, stream, trace) = if self.running.get(&id).is_some_and(|r| r.deadline == Some(deadline)) {
            let r = self.running.remove(&id).expect("checked above");
            r.abort.abort();
            (r.timeout, r.stream, r.trace)
        } else if self.downs.get(&id).is_some_and(|d| d.deadline == Some(deadline)) {
            let down = self.downs.remove(&id).expect("checked above");
            (Duration::ZERO, true, down.trace)
        } else {
            return;
        };
        self.end_up(id, Err(RpcError::DeadlineExceeded { timeout }));
        let detail = if timeout.is_zero() {
            "the stream's deadline passed on the server".to_owned()
        } else {
            format!("the call's deadline of {} passed on the server", fmt_duration(timeout))
        };
        self.ended(Ended::DeadlineExceeded, stream, trace, Some(&detail));
        self.refuse(id, ServerErrorKind::DeadlineExceeded, detail);
    }

    /// Notices a shutdown: from then on new calls are refused. The engine asks before it
    /// reads each pass, so a call that arrives after the shutdown began is never started,
    /// however the wake-ups were ordered.
    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> bool {
        if self.draining || !self.shutdown.as_mut().is_some_and(|s| s.as_mut().poll(cx).is_ready()) {
            return false;
        }
        self.draining = true;
        // Open streams end now, with a reason; calls get the grace period.
        let ids: Vec<u64> = self.downs.keys().copied().collect();
        for id in ids {
            if let Some(down) = self.downs.remove(&id) {
                self.ended(Ended::ShuttingDown, true, down.trace, Some(&SHUTTING_DOWN));
            }
            self.work.end(id);
            self.end_up(id, Err(RpcError::Server(ServerError::new(ServerErrorKind::ShuttingDown, SHUTTING_DOWN))));
            self.refuse(id, ServerErrorKind::ShuttingDown, SHUTTING_DOWN.to_owned());
        }
        true
    }

    /// The time now, as far as calls starting in this pass are concerned.
    fn now(&mut self) -> Instant {
        *self.clock.get_or_insert_with(Instant::now)
    }

    /// A new pass begins (before it reads): the clock is read again when next needed.
    pub(crate) fn new_pass(&mut self) {
        self.clock = None;
    }

    /// The serving half's part of a pass: shutdown, consumers' stream control, handlers
    /// that finished in their own tasks, deadlines. Returns whether anything moved.
    pub(crate) fn pass(&mut self, cx: &mut Context<'_>) -> bool {
        // Frames read later are a new pass's.
        self.clock = None;
        let mut progress = self.poll_shutdown(cx);
        self.ctl.take(cx.waker(), &mut self.ctl_taken);
        for ctl in std::mem::take(&mut self.ctl_taken) {
            match ctl {
                Ctl::Credit { id, grant } if self.ups.contains_key(&id) => {
                    self.outbox.push_back(Answer::UpCredit { id, grant });
                }
                Ctl::Dropped { id } if self.ups.remove(&id).is_some() => {
                    self.outbox.push_back(Answer::UpStop { id });
                }
                _ => {}
            }
            progress = true;
        }
        // Once any task was spawned, its result may be waiting (even a cancelled call's).
        if self.seq > 0 {
            self.finished.engine.register(cx.waker());
            std::mem::swap(&mut *self.finished.list.lock().unwrap_or_else(PoisonError::into_inner), &mut self.taken);
            let mut taken = std::mem::take(&mut self.taken);
            for done in taken.drain(..) {
                match done {
                    // Cancelled or expired meanwhile (or an earlier call with this id): drop it.
                    Done::Call(id, seq, outcome) => {
                        if self.running.get(&id).is_some_and(|r| r.seq == seq) {
                            let r = self.running.remove(&id).expect("checked above");
                            self.answer(id, outcome, r.deadline, r.stream, r.trace);
                            progress = true;
                        }
                    }
                    Done::OneWay(outcome) => {
                        self.oneways_running -= 1;
                        self.credit_due += 1;
                        // Its span was closed by its task.
                        self.counters.ended(outcome, false);
                    }
                }
            }
            self.taken = taken;
        }
        // One credit frame per pass for every one-way call finished since the last.
        if self.credit_due > 0 {
            self.outbox.push_back(Answer::Credit(std::mem::take(&mut self.credit_due)));
            progress = true;
        }
        for (deadline, id) in self.deadlines.poll_expired(cx) {
            self.expire(deadline, id);
            progress = true;
        }
        let live = self.running.len() + self.downs.len();
        let (running, downs) = (&self.running, &self.downs);
        self.deadlines.compact(live, || {
            running
                .iter()
                .filter_map(|(&id, r)| r.deadline.map(|d| (d, id)))
                .chain(downs.iter().filter_map(|(&id, d)| d.deadline.map(|dl| (dl, id))))
        });
        progress
    }

    /// The next answer to write.
    pub(crate) fn next(&mut self) -> Option<Answer<S::Response>> {
        self.outbox.pop_front()
    }

    /// True if answers wait to be written.
    pub(crate) fn has_answers(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Every call that started has been answered.
    pub(crate) fn drained(&self) -> bool {
        self.running.is_empty() && self.downs.is_empty() && self.outbox.is_empty()
    }
}

impl<S: Service> Drop for Callee<S> {
    fn drop(&mut self) {
        // The connection is over: nobody waits for the handlers still running, or for
        // what they spawned.
        for (_, r) in std::mem::take(&mut self.running) {
            r.abort.abort();
            self.ended(Ended::Disconnected, r.stream, r.trace, None);
        }
        for (_, down) in std::mem::take(&mut self.downs) {
            self.ended(Ended::Disconnected, true, down.trace, None);
        }
        // Answered, not written: they count (and their spans close) as their handlers ended.
        for (_, trace) in std::mem::take(&mut self.replies_traced) {
            trace.end(Ended::Ok, None, None);
        }
        self.work.end_all();
    }
}

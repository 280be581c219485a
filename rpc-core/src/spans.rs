//! `tracing` spans: one per exchange (call, one-way call, stream) on both ends, with the
//! exchange's outcome and duration recorded when it is over.
//!
//! # Spans
//!
//! Every span is at level `DEBUG`. The server's have target [`SERVER`] (`rpc_core::server`),
//! the client's [`CLIENT`] (`rpc_core::client`), so `RUST_LOG=rpc_core::server=debug`
//! (with `tracing_subscriber::EnvFilter`) turns on the server's alone.
//!
//! | name | end | opened | fields |
//! |---|---|---|---|
//! | `rpc.connection` | server | a connection is accepted (the parent of its exchanges' spans) | `service`, `peer_pid`, `peer_user`; at the end `outcome` (`ok`: the client left or the server drained it; `refused`: never through its handshake; else how it broke), `error`, `calls`, `bytes_in`, `bytes_out`, `duration_us` |
//! | `rpc.call` | server | a call arrives (request-reply, or with a callback) | `service`, `method`, `id`, `peer_pid`, `peer_user`, `timeout_ms`; at the end `outcome`, `error`, `duration_us` |
//! | `rpc.stream` | server | a call with a stream arrives (either way, or both) | those of `rpc.call`, `direction` (`down`, `up`, `both`), and at the end `items_out`, `bytes_out` (the handler's stream), `items_in`, `bytes_in` (the caller's) |
//! | `rpc.oneway` | server | a one-way call arrives | `service`, `method`, `id`, `peer_pid`, `peer_user`; at the end `outcome`, `error`, `duration_us` |
//! | `rpc.connection` | client | a connection is through its handshake (the engine, and the callbacks it serves, run in it) | `service`, `peer_pid`, `peer_user` (the server's); at the end `outcome`, `error`, `calls` (made while it was the client's connection), `bytes_in`, `bytes_out`, `duration_us` |
//! | `rpc.call` | client | a call is made | `service`, `method`, `id`, `peer_pid`, `peer_user`, `timeout_ms`; at the end `outcome`, `error`, `duration_us` |
//! | `rpc.stream` | client | a call with a stream is made | those of `rpc.call`, `direction`; for a stream from the server, `items_in` and `bytes_in` at the end |
//! | `rpc.oneway` | client | a one-way call is made (it ends once queued) | `service`, `method`, `peer_pid`, `peer_user`; at the end `outcome`, `error` |
//!
//! - `id` is the exchange's id on its connection (the handler's
//!   [`Context::request_id`](crate::context::Context::request_id)); `peer_pid` and
//!   `peer_user` (a uid on Unix, a SID on Windows) are what the OS reports of the other end
//!   (on a server the caller, on a client the server), and absent where it reports nothing
//!   (an in-memory pipe; a client then shows the pid the server said in its handshake); `timeout_ms` is the deadline the
//!   call arrived with (or was made with), absent for a stream without one.
//! - `outcome` is `ok`, or how it failed: `bad_request`, `panicked`, `shutting_down`,
//!   `overloaded`, `too_large`, `deadline_exceeded`, `internal`, `cancelled` (the caller gave
//!   up), `disconnected` (the connection ended under it) or `other`; `error` is the
//!   message, on failure. These are the kinds [`stats`](crate::stats) counts. A handler that
//!   returned its method's `Err(e)` is `ok`: the exchange worked.
//! - `duration_us`: from the call's arrival (server) or making (client) to its outcome.
//! - The server's spans are entered while the handler runs, inline or in its own task, so
//!   what a handler logs is inside its call's span. A call made inside a handler opens its
//!   client span inside the handler's server span.
//! - Spans start at the exchange's start and close at its end: a subscriber that times spans
//!   (`tracing_subscriber::fmt().with_span_events(FmtSpanEvents::CLOSE)`) shows the same
//!   duration.
//!
//! # Cost
//!
//! None when nothing listens at `DEBUG`: before any span work the engine checks the global
//! level filter ([`LevelFilter::current`](tracing::level_filters::LevelFilter::current), one
//! atomic load), so with no subscriber, or one at `INFO`, no span is built, no field
//! evaluated, no clock read and nothing allocated. Measured with callgrind on the bench's
//! pipelined calls (see `docs/ARCHITECTURE.md`, "Observability"). When a subscriber does
//! want them, a span costs what that subscriber makes of it, plus one allocation and one
//! clock read per exchange here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::field::Empty;
use tracing::{Level, Span};

use crate::access::PeerCredentials;
use crate::client::PeerInfo;
use crate::error::TransportError;
use crate::stats::{Counters, Outcome};

/// Target of the server's spans.
pub const SERVER: &str = "rpc_core::server";
/// Target of the client's spans.
pub const CLIENT: &str = "rpc_core::client";

/// Whether spans may be wanted at all: the level filter of every subscriber lets `DEBUG`
/// through. One atomic load; everything else about spans happens only if it says yes.
#[inline(always)]
pub(crate) fn wanted() -> bool {
    Level::DEBUG <= tracing::level_filters::STATIC_MAX_LEVEL
        && Level::DEBUG <= tracing::level_filters::LevelFilter::current()
}

/// What kind of exchange a span is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Call,
    OneWay,
    /// A stream: from the handler (`down`), from the caller (`up`), or both.
    Stream {
        up: bool,
        down: bool,
    },
}

impl Kind {
    pub(crate) fn direction(self) -> &'static str {
        match self {
            Kind::Stream { up: true, down: true } => "both",
            Kind::Stream { up: true, down: false } => "up",
            _ => "down",
        }
    }
}

/// An open span and what its end needs. Only exists when a subscriber wants the span:
/// [`Trace`] is `None` otherwise, one word, and costs nothing to carry.
pub(crate) struct Traced {
    pub(crate) span: Span,
    started: Instant,
    /// Items and bytes of the stream this end sends.
    pub(crate) items_out: u64,
    pub(crate) bytes_out: u64,
    /// Items and bytes of the stream this end receives, if counted here.
    pub(crate) items_in: u64,
    pub(crate) bytes_in: u64,
    /// Reads the items and bytes received so far from the stream's inbox, where they are
    /// counted.
    pub(crate) inbound: Option<Box<dyn Fn() -> (u64, u64) + Send>>,
    /// Why the exchange failed, if the place that saw it is not the one that ends it (a
    /// stream's producer that yielded an error).
    pub(crate) error: Option<String>,
    stream: bool,
}

/// A span that is open, or nothing if nobody wants it: one word, and when empty nothing
/// about it costs more than a test of that word (its drop included, which is why it is not
/// a plain `Option`: the drop glue of `Option<Box<Traced>>` was an out-of-line call at every
/// place one went out of scope, about 30 instructions per call in the bench).
#[derive(Default)]
pub(crate) struct Trace(Option<Box<Traced>>);

impl Trace {
    /// No span.
    pub(crate) const NONE: Trace = Trace(None);

    #[inline]
    pub(crate) fn is_some(&self) -> bool {
        self.0.is_some()
    }

    /// The span, if there is one.
    #[inline]
    pub(crate) fn span(&self) -> Option<&Span> {
        self.0.as_deref().map(|t| &t.span)
    }

    #[inline]
    pub(crate) fn get_mut(&mut self) -> Option<&mut Traced> {
        self.0.as_deref_mut()
    }

    /// Records how the exchange ended and closes the span. `now`: the time, if the caller
    /// has just read the clock (else it is read here, if there is a span); `error`: the
    /// message, on failure.
    #[inline]
    pub(crate) fn end(mut self, outcome: Outcome, error: Option<&dyn std::fmt::Display>, now: Option<Instant>) {
        if let Some(t) = self.0.take() {
            end_traced(*t, outcome, error, now);
        }
    }
}

impl Drop for Trace {
    #[inline]
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            dropped(t);
        }
    }
}

/// A span dropped without an outcome (its exchange's record was dropped): it closes as is.
#[cold]
#[inline(never)]
fn dropped(t: Box<Traced>) {
    drop(t);
}

/// What a server span starts with.
pub(crate) struct ServerCall<'a> {
    pub(crate) kind: Kind,
    pub(crate) service: &'static str,
    pub(crate) method: &'static str,
    pub(crate) id: u64,
    pub(crate) peer: Option<&'a PeerCredentials>,
    pub(crate) timeout: Option<Duration>,
    /// When it arrived, if the caller has read the clock (else it is read here).
    pub(crate) started: Option<Instant>,
}

/// A server span for an exchange that arrived, if one is wanted.
#[inline]
pub(crate) fn server(call: ServerCall<'_>) -> Trace {
    if !wanted() {
        return Trace::NONE;
    }
    open_server(call)
}

#[cold]
#[inline(never)]
fn open_server(c: ServerCall<'_>) -> Trace {
    let (service, method, id) = (c.service, c.method, c.id);
    let span = match c.kind {
        Kind::Call => tracing::span!(
            target: SERVER, Level::DEBUG, "rpc.call",
            service, method, id, peer_pid = Empty, peer_user = Empty, timeout_ms = Empty,
            outcome = Empty, error = Empty, duration_us = Empty,
        ),
        Kind::OneWay => tracing::span!(
            target: SERVER, Level::DEBUG, "rpc.oneway",
            service, method, id, peer_pid = Empty, peer_user = Empty,
            outcome = Empty, error = Empty, duration_us = Empty,
        ),
        Kind::Stream { .. } => tracing::span!(
            target: SERVER, Level::DEBUG, "rpc.stream",
            service, method, id, peer_pid = Empty, peer_user = Empty, timeout_ms = Empty,
            direction = c.kind.direction(),
            outcome = Empty, error = Empty, duration_us = Empty,
            items_out = Empty, bytes_out = Empty, items_in = Empty, bytes_in = Empty,
        ),
    };
    if span.is_disabled() {
        return Trace::NONE;
    }
    record_peer(&span, c.peer);
    if let Some(t) = c.timeout {
        span.record("timeout_ms", duration_ms(t));
    }
    let started = c.started.unwrap_or_else(Instant::now);
    Trace(Some(Box::new(Traced::new(span, started, matches!(c.kind, Kind::Stream { .. })))))
}

/// A client span for a call being made, if one is wanted: `id` is `None` for a call that
/// failed before it had one, `timeout` `None` for a stream without a deadline; `peer` says
/// who serves the connection (read only if the span is wanted).
#[inline]
pub(crate) fn client(
    kind: Kind,
    service: &'static str,
    method: &'static str,
    id: Option<u64>,
    timeout: Option<Duration>,
    peer: impl FnOnce() -> PeerInfo,
) -> Trace {
    if !wanted() {
        return Trace::NONE;
    }
    open_client(kind, service, method, id, timeout, peer)
}

#[cold]
#[inline(never)]
fn open_client(
    kind: Kind,
    service: &'static str,
    method: &'static str,
    id: Option<u64>,
    timeout: Option<Duration>,
    peer: impl FnOnce() -> PeerInfo,
) -> Trace {
    let span = match kind {
        Kind::Call => tracing::span!(
            target: CLIENT, Level::DEBUG, "rpc.call",
            service, method, id = Empty, peer_pid = Empty, peer_user = Empty, timeout_ms = Empty,
            outcome = Empty, error = Empty, duration_us = Empty,
        ),
        Kind::OneWay => tracing::span!(
            target: CLIENT, Level::DEBUG, "rpc.oneway",
            service, method, peer_pid = Empty, peer_user = Empty, outcome = Empty, error = Empty,
        ),
        Kind::Stream { .. } => tracing::span!(
            target: CLIENT, Level::DEBUG, "rpc.stream",
            service, method, id = Empty, peer_pid = Empty, peer_user = Empty, timeout_ms = Empty,
            direction = kind.direction(),
            outcome = Empty, error = Empty, duration_us = Empty, items_in = Empty, bytes_in = Empty,
        ),
    };
    if span.is_disabled() {
        return Trace::NONE;
    }
    record_server(&span, &peer());
    if let Some(id) = id {
        span.record("id", id);
    }
    if let Some(t) = timeout {
        span.record("timeout_ms", duration_ms(t));
    }
    Trace(Some(Box::new(Traced::new(span, Instant::now(), matches!(kind, Kind::Stream { .. })))))
}

/// A connection's span: on a server, open from the moment the connection is accepted until
/// it closes, the parent of its calls' spans; on a client, from its handshake to its end.
pub(crate) struct Connection {
    pub(crate) span: Span,
    started: Instant,
    /// What the counters said when it opened (a client's count across its connections).
    base: (u64, u64, u64),
}

/// What a connection's span counts at its end: exchanges started, bytes in, bytes out.
pub(crate) type Served = (u64, u64, u64);

/// What `counters` say, as [`Served`] (exchanges from the counters themselves).
pub(crate) fn served(counters: &Counters) -> Served {
    let (bytes_in, bytes_out) = counters.traffic();
    (counters.started_count(), bytes_in, bytes_out)
}

/// A client connection's span, just through its handshake with the server `peer`, if one
/// is wanted; `now` is what the client has counted so far (across its connections, if it
/// reconnects), so that the span counts this connection's.
pub(crate) fn client_connection(
    service: &'static str,
    peer: &PeerInfo,
    now: impl FnOnce() -> Served,
) -> Option<Connection> {
    if !wanted() {
        return None;
    }
    let span = tracing::span!(
        target: CLIENT, Level::DEBUG, "rpc.connection",
        service, peer_pid = Empty, peer_user = Empty, outcome = Empty, error = Empty,
        calls = Empty, bytes_in = Empty, bytes_out = Empty, duration_us = Empty,
    );
    if span.is_disabled() {
        return None;
    }
    record_server(&span, peer);
    OPENED.fetch_add(1, Ordering::Relaxed);
    Some(Connection { span, started: Instant::now(), base: now() })
}

/// The span of a connection just accepted, if one is wanted.
pub(crate) fn connection(service: &'static str, peer: Option<&PeerCredentials>) -> Option<Connection> {
    if !wanted() {
        return None;
    }
    let span = tracing::span!(
        target: SERVER, Level::DEBUG, "rpc.connection",
        service, peer_pid = Empty, peer_user = Empty, outcome = Empty, error = Empty,
        calls = Empty, bytes_in = Empty, bytes_out = Empty, duration_us = Empty,
    );
    if span.is_disabled() {
        return None;
    }
    record_peer(&span, peer);
    OPENED.fetch_add(1, Ordering::Relaxed);
    Some(Connection { span, started: Instant::now(), base: (0, 0, 0) })
}

impl Connection {
    /// Records how the connection ended and closes its span: `served` is what was counted
    /// by then (`None`: it never got through its handshake, so it was refused).
    pub(crate) fn end(self, ended: &Result<(), TransportError>, served: Option<Served>) {
        let span = &self.span;
        let outcome = match (ended, served) {
            (Ok(()), _) => "ok",
            (Err(_), None) => "refused",
            (Err(e), Some(_)) => Outcome::of_transport(e).as_str(),
        };
        span.record("outcome", outcome);
        if let Err(e) = ended {
            span.record("error", tracing::field::display(e));
        }
        if let Some((calls, bytes_in, bytes_out)) = served {
            let (calls0, in0, out0) = self.base;
            span.record("calls", calls.saturating_sub(calls0));
            span.record("bytes_in", bytes_in.saturating_sub(in0));
            span.record("bytes_out", bytes_out.saturating_sub(out0));
        }
        let micros = self.started.elapsed().as_micros();
        span.record("duration_us", u64::try_from(micros).unwrap_or(u64::MAX));
    }
}

/// A connection the accept loop refused before its handshake (`why`): a span of its own,
/// closed at once, if one is wanted.
pub(crate) fn connection_refused(service: &'static str, why: &str) {
    if let Some(c) = connection(service, None) {
        c.span.record("outcome", "refused");
        c.span.record("error", why);
        c.span.record("duration_us", 0u64);
    }
}

pub(crate) fn record_peer(span: &Span, peer: Option<&PeerCredentials>) {
    if let Some(peer) = peer {
        if let Some(pid) = peer.pid {
            span.record("peer_pid", pid);
        }
        match (peer.uid, peer.sid) {
            (Some(uid), _) => {
                span.record("peer_user", uid);
            }
            (None, Some(sid)) => {
                span.record("peer_user", tracing::field::display(sid));
            }
            (None, None) => {}
        }
    }
}

/// The server of a client's connection: as the OS reports the pipe's peer, else the pid it
/// said in the handshake.
fn record_server(span: &Span, peer: &PeerInfo) {
    record_peer(span, peer.server.as_ref());
    if peer.server.as_ref().and_then(|c| c.pid).is_none() && peer.server_pid != 0 {
        span.record("peer_pid", peer.server_pid);
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Spans this process opened (made and kept to record an outcome): for tests that show none
/// is made when none is wanted (`rpc_core::__private::spans_opened`). Counted only here,
/// where a span is made anyway.
static OPENED: AtomicU64 = AtomicU64::new(0);

/// See [`OPENED`].
pub(crate) fn opened() -> u64 {
    OPENED.load(Ordering::Relaxed)
}

impl Traced {
    fn new(span: Span, started: Instant, stream: bool) -> Self {
        OPENED.fetch_add(1, Ordering::Relaxed);
        Traced {
            span,
            started,
            items_out: 0,
            bytes_out: 0,
            items_in: 0,
            bytes_in: 0,
            inbound: None,
            error: None,
            stream,
        }
    }

    /// Counts the items of the inbound stream from `inbox`, where they are counted.
    pub(crate) fn count_inbound<M: Send + 'static>(&mut self, inbox: &Arc<crate::engine::streams::Inbox<M>>) {
        let inbox = inbox.clone();
        self.inbound = Some(Box::new(move || inbox.received()));
    }
}

#[cold]
#[inline(never)]
fn end_traced(t: Traced, outcome: Outcome, error: Option<&dyn std::fmt::Display>, now: Option<Instant>) {
    let span = &t.span;
    let now = now.unwrap_or_else(Instant::now);
    span.record("outcome", outcome.as_str());
    if let Some(e) = error {
        span.record("error", tracing::field::display(e));
    } else if let Some(e) = &t.error {
        span.record("error", e.as_str());
    }
    let micros = now.saturating_duration_since(t.started).as_micros();
    span.record("duration_us", u64::try_from(micros).unwrap_or(u64::MAX));
    if t.stream {
        let (items_in, bytes_in) = t.inbound.as_ref().map_or((t.items_in, t.bytes_in), |f| f());
        span.record("items_out", t.items_out);
        span.record("bytes_out", t.bytes_out);
        span.record("items_in", items_in);
        span.record("bytes_in", bytes_in);
    }
}

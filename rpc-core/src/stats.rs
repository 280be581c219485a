//! Counters of what a server or a client has done: calls, their outcomes by kind, bytes,
//! connections, what is in flight. Always on, and read as a snapshot:
//! [`Server::stats`](crate::Server::stats), [`BoundServer::stats`](crate::BoundServer::stats)
//! (and [`StatsHandle`] once the server runs), [`Channel::stats`](crate::Channel::stats).
//!
//! ```no_run
//! # #[rpc_core::service] pub trait Echo { async fn echo(&self, s: String) -> String; }
//! # struct Me; impl Echo for Me { async fn echo(&self, s: String) -> String { s } }
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use rpc_core::Server;
//! let server = Server::new(EchoServer::new(Me)).bind("echo")?;
//! let stats = server.stats_handle();
//! tokio::spawn(server.run());
//!
//! let client = EchoClient::connect("echo").await?;
//! client.echo("hi".into()).await?;
//! let s = stats.get();
//! println!("{} calls, {} in flight, {} errors, {} bytes in", s.calls.started, s.calls.in_flight, s.calls.errors.total(), s.bytes_in);
//! println!("client: {:?}", client.channel().stats());
//! # Ok(()) }
//! ```
//!
//! # What is counted
//!
//! An *exchange* is what one call frame opens: a request-reply call, a one-way call, a
//! call with a stream (either way or both) or a callback. [`CallStats::started`] counts
//! every exchange, [`CallStats::finished`] every one that is over, by outcome:
//! [`CallStats::ok`] or one of [`ErrorCounts`]; `in_flight` is the difference. A
//! method returning `Result<T, E>` whose handler returned `Err(e)` is `ok` here: the
//! exchange worked, and the error is the application's.
//!
//! On a server, a call refused before its handler ran (`Overloaded`, `ShuttingDown`, a
//! deadline that had passed on arrival, a request that does not decode) counts as started
//! and finished with that kind. One-way calls finish when their handler does. On a client,
//! a call counts from the moment it is made (before it is written, so calls a reconnecting
//! client holds while it has no connection are in flight) until its caller has its result
//! or gives up; a one-way call is finished (`ok`) once queued, since nothing comes back.
//!
//! Stream items are counted as the sender encodes them for the pipe and as the receiver
//! takes them into the stream's queue (whether or not its reader gets to them).
//!
//! Bytes are those of the pipe after the handshake, length prefixes included (what the
//! kernel carried), counted as messages are handed to the pipe and read from it.
//!
//! # Cost
//!
//! Each counter is a relaxed atomic written by one task only (a server connection's, or
//! under a lock the client takes anyway), so an update is a load and a store with no
//! locked instruction and no shared cache line between connections: a server counts into
//! its connection's counters and sums them per server when asked
//! ([`BoundServer::stats`](crate::BoundServer::stats) takes one lock and reads every live
//! connection's). Measured with callgrind on the bench's pipelined calls, the counters
//! cost about 20 instructions per call on the client and 40 to 70 on the server, under 1%
//! (see `docs/ARCHITECTURE.md`, "Observability").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{RpcError, ServerErrorKind, TransportError};

/// Exchanges that failed, by how. See the [module docs](self) for what is counted where.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ErrorCounts {
    /// The request did not decode as a call of the service.
    pub bad_request: u64,
    /// The handler (or its stream's producer) panicked.
    pub handler_panicked: u64,
    /// Refused, or a stream ended, because the server was shutting down.
    pub shutting_down: u64,
    /// Refused: the connection already had its limit of calls in flight.
    pub overloaded: u64,
    /// A message (request, reply or stream item) was over the message limit.
    pub too_large: u64,
    /// The deadline passed first (on the server: its handler was stopped).
    pub deadline_exceeded: u64,
    /// Any other failure the server reported (a reply that could not be encoded).
    pub internal: u64,
    /// Given up by the caller: its future or stream dropped, the call cancelled, or the
    /// client closed.
    pub cancelled: u64,
    /// The connection ended (or broke) while the exchange was in flight.
    pub disconnected: u64,
    /// Any other transport failure (a malformed reply, a peer refusing a reconnection).
    pub other: u64,
}

impl ErrorCounts {
    /// Every failed exchange.
    pub fn total(&self) -> u64 {
        self.bad_request
            + self.handler_panicked
            + self.shutting_down
            + self.overloaded
            + self.too_large
            + self.deadline_exceeded
            + self.internal
            + self.cancelled
            + self.disconnected
            + self.other
    }
}

/// Exchanges (calls, one-way calls, streams, callbacks) and how they ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct CallStats {
    /// Exchanges started, of every kind.
    pub started: u64,
    /// Exchanges over: [`ok`](Self::ok) plus [`errors`](Self::errors).
    pub finished: u64,
    /// Exchanges started and not over yet.
    pub in_flight: u64,
    /// Of [`started`](Self::started): one-way calls.
    pub oneway: u64,
    /// Of [`started`](Self::started): exchanges with a stream (either way, or both).
    pub streams_started: u64,
    /// Exchanges with a stream not over yet.
    pub streams_open: u64,
    /// Exchanges that ended normally.
    pub ok: u64,
    /// Exchanges that failed, by kind.
    pub errors: ErrorCounts,
}

/// A snapshot of a server's counters: every connection it served, live or ended. See the
/// [module docs](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections through their handshake and not yet closed.
    pub connections_open: u64,
    /// Connections accepted and served: every connection ever through its handshake.
    pub connections_accepted: u64,
    /// Connections accepted but never served: refused by the access policy or the
    /// connection limits, refused in the handshake (another service or version, the
    /// server shutting down), or that failed it (no hello in time, crowded out by newer
    /// connections).
    pub connections_refused: u64,
    /// The calls of every connection.
    pub calls: CallStats,
    /// Stream items received from clients (uploads), of every connection.
    pub items_in: u64,
    /// Stream items sent to clients (downloads), of every connection.
    pub items_out: u64,
    /// Bytes read from clients after their handshakes.
    pub bytes_in: u64,
    /// Bytes written to clients after their handshakes.
    pub bytes_out: u64,
}

/// A snapshot of a client's counters, over every connection it made (a reconnecting
/// client makes more than one). See the [module docs](self).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ClientStats {
    /// The calls made on this channel (by any of its clones).
    pub calls: CallStats,
    /// Connections made: one, plus one per reconnection.
    pub connections: u64,
    /// Stream items received from the server (downloads).
    pub items_in: u64,
    /// Stream items sent to the server (uploads).
    pub items_out: u64,
    /// Bytes read from the server after the handshakes.
    pub bytes_in: u64,
    /// Bytes written to the server after the handshakes.
    pub bytes_out: u64,
}

/// How an exchange ended, for the counters and the spans' `outcome` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    BadRequest,
    HandlerPanicked,
    ShuttingDown,
    Overloaded,
    TooLarge,
    DeadlineExceeded,
    Internal,
    Cancelled,
    Disconnected,
    Other,
}

impl Outcome {
    const COUNT: usize = 11;

    /// The value of a span's `outcome` field.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::BadRequest => "bad_request",
            Outcome::HandlerPanicked => "panicked",
            Outcome::ShuttingDown => "shutting_down",
            Outcome::Overloaded => "overloaded",
            Outcome::TooLarge => "too_large",
            Outcome::DeadlineExceeded => "deadline_exceeded",
            Outcome::Internal => "internal",
            Outcome::Cancelled => "cancelled",
            Outcome::Disconnected => "disconnected",
            Outcome::Other => "other",
        }
    }

    pub(crate) fn of_server(kind: ServerErrorKind) -> Outcome {
        match kind {
            ServerErrorKind::BadRequest => Outcome::BadRequest,
            ServerErrorKind::HandlerPanicked => Outcome::HandlerPanicked,
            ServerErrorKind::ShuttingDown => Outcome::ShuttingDown,
            ServerErrorKind::Overloaded => Outcome::Overloaded,
            ServerErrorKind::ResponseTooLarge => Outcome::TooLarge,
            ServerErrorKind::DeadlineExceeded => Outcome::DeadlineExceeded,
            _ => Outcome::Internal,
        }
    }

    /// How a call that returned `result` to its caller ended.
    pub(crate) fn of_result<T>(result: &Result<T, RpcError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Ok,
            Err(e) => Outcome::of_error(e),
        }
    }

    pub(crate) fn of_error(e: &RpcError) -> Outcome {
        match e {
            RpcError::DeadlineExceeded { .. } => Outcome::DeadlineExceeded,
            RpcError::Cancelled => Outcome::Cancelled,
            RpcError::Server(e) => Outcome::of_server(e.kind),
            RpcError::Transport(t) => Outcome::of_transport(t),
            _ => Outcome::Other,
        }
    }

    pub(crate) fn of_transport(t: &TransportError) -> Outcome {
        match t {
            TransportError::MessageTooLarge { .. } => Outcome::TooLarge,
            TransportError::Disconnected { .. }
            | TransportError::ConnectionLost { .. }
            | TransportError::ChildExited { .. }
            | TransportError::Stalled { .. }
            | TransportError::Io { .. } => Outcome::Disconnected,
            _ => Outcome::Other,
        }
    }
}

/// Adds `n` to a counter that only one thread writes at a time (a connection's engine, or
/// code under a lock): a load and a store, no locked instruction. Readers on other threads
/// see every update eventually, and never a torn value.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// The counters of one end of a connection (a server's connection; a client, over all its
/// connections). Written only by the connection's engine task (one at a time: a
/// reconnecting client's next engine starts after the last one ended), read by snapshots.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    started: AtomicU64,
    oneway: AtomicU64,
    streams: AtomicU64,
    streams_ended: AtomicU64,
    ended: [AtomicU64; Outcome::COUNT],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    items_in: AtomicU64,
    items_out: AtomicU64,
}

impl Counters {
    /// An exchange started; `stream` if it carries one.
    #[inline]
    pub(crate) fn started(&self, stream: bool) {
        bump(&self.started, 1);
        if stream {
            bump(&self.streams, 1);
        }
    }

    /// A one-way call started.
    #[inline]
    pub(crate) fn started_oneway(&self) {
        bump(&self.started, 1);
        bump(&self.oneway, 1);
    }

    /// An exchange ended; `stream` if it carried one.
    #[inline]
    pub(crate) fn ended(&self, outcome: Outcome, stream: bool) {
        bump(&self.ended[outcome as usize], 1);
        if stream {
            bump(&self.streams_ended, 1);
        }
    }

    /// An exchange counted as ended with `was` turned out to end with `is` (a reply that
    /// could not be written).
    pub(crate) fn recount(&self, was: Outcome, is: Outcome) {
        let from = &self.ended[was as usize];
        from.store(from.load(Ordering::Relaxed).wrapping_sub(1), Ordering::Relaxed);
        bump(&self.ended[is as usize], 1);
    }

    /// Stream items received (taken into their stream's inbox).
    #[inline]
    pub(crate) fn items_in(&self, n: usize) {
        bump(&self.items_in, n as u64);
    }

    /// Stream items sent (encoded for the pipe).
    #[inline]
    pub(crate) fn items_out(&self, n: u64) {
        bump(&self.items_out, n);
    }

    /// Stream items in and out so far.
    pub(crate) fn items(&self) -> (u64, u64) {
        (get(&self.items_in), get(&self.items_out))
    }

    #[inline]
    pub(crate) fn bytes_in(&self, n: usize) {
        bump(&self.bytes_in, n as u64);
    }

    #[inline]
    pub(crate) fn bytes_out(&self, n: usize) {
        bump(&self.bytes_out, n as u64);
    }

    /// The calls counted so far.
    fn calls(&self) -> Tally {
        let mut ended = [0; Outcome::COUNT];
        for (to, from) in ended.iter_mut().zip(&self.ended) {
            *to = get(from);
        }
        Tally {
            started: get(&self.started),
            oneway: get(&self.oneway),
            streams: get(&self.streams),
            streams_ended: get(&self.streams_ended),
            ended,
        }
    }

    /// Exchanges started so far.
    pub(crate) fn started_count(&self) -> u64 {
        get(&self.started)
    }

    /// Bytes in and out so far.
    pub(crate) fn traffic(&self) -> (u64, u64) {
        (get(&self.bytes_in), get(&self.bytes_out))
    }
}

/// Plain counts of exchanges, added up from [`Counters`] or kept under a lock (a client's
/// call table).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tally {
    pub(crate) started: u64,
    pub(crate) oneway: u64,
    pub(crate) streams: u64,
    pub(crate) streams_ended: u64,
    pub(crate) ended: [u64; Outcome::COUNT],
}

impl Tally {
    /// An exchange started; `stream` if it carries one.
    #[inline]
    pub(crate) fn started(&mut self, stream: bool) {
        self.started += 1;
        self.streams += u64::from(stream);
    }

    /// An exchange ended; `stream` if it carried one.
    #[inline]
    pub(crate) fn ended(&mut self, outcome: Outcome, stream: bool) {
        self.ended[outcome as usize] += 1;
        self.streams_ended += u64::from(stream);
    }

    /// A one-way call was queued: started and, as nothing comes back, over.
    #[inline]
    pub(crate) fn oneway_sent(&mut self) {
        self.started += 1;
        self.oneway += 1;
        self.ended[Outcome::Ok as usize] += 1;
    }

    /// A one-way call failed before it was queued.
    #[inline]
    pub(crate) fn oneway_failed(&mut self, outcome: Outcome) {
        self.started += 1;
        self.oneway += 1;
        self.ended[outcome as usize] += 1;
    }

    fn add(&mut self, other: &Tally) {
        self.started += other.started;
        self.oneway += other.oneway;
        self.streams += other.streams;
        self.streams_ended += other.streams_ended;
        for (a, b) in self.ended.iter_mut().zip(&other.ended) {
            *a += b;
        }
    }

    pub(crate) fn snapshot(&self) -> CallStats {
        let e = |o: Outcome| self.ended[o as usize];
        let errors = ErrorCounts {
            bad_request: e(Outcome::BadRequest),
            handler_panicked: e(Outcome::HandlerPanicked),
            shutting_down: e(Outcome::ShuttingDown),
            overloaded: e(Outcome::Overloaded),
            too_large: e(Outcome::TooLarge),
            deadline_exceeded: e(Outcome::DeadlineExceeded),
            internal: e(Outcome::Internal),
            cancelled: e(Outcome::Cancelled),
            disconnected: e(Outcome::Disconnected),
            other: e(Outcome::Other),
        };
        let finished = self.ended.iter().sum::<u64>();
        CallStats {
            started: self.started,
            finished,
            // Counters are read one by one while they move: never report less than zero.
            in_flight: self.started.saturating_sub(finished),
            oneway: self.oneway,
            streams_started: self.streams,
            streams_open: self.streams.saturating_sub(self.streams_ended),
            ok: e(Outcome::Ok),
            errors,
        }
    }
}

/// A server's counters: its live connections' own, what ended connections counted, and
/// the accept loop's.
#[derive(Debug, Default)]
pub(crate) struct ServerCounters {
    conns: Mutex<Conns>,
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct Conns {
    /// Connections through their handshake, still open.
    live: Vec<Arc<Counters>>,
    /// Connections ever through their handshake.
    total: u64,
    /// What the connections that ended counted.
    ended: Tally,
    ended_bytes: (u64, u64),
    ended_items: (u64, u64),
}

impl ServerCounters {
    /// A connection accepted was not served (refused or failed before its handshake ended).
    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection through its handshake: its counters, counted with the server's while
    /// the guard lives, and added to the server's totals when it drops.
    pub(crate) fn connection(self: &Arc<Self>) -> ConnectionCounted {
        let counters = Arc::new(Counters::default());
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.live.push(counters.clone());
        conns.total += 1;
        ConnectionCounted { counters, server: self.clone() }
    }

    pub(crate) fn snapshot(&self) -> ServerStats {
        let conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let mut calls = conns.ended;
        let (mut bytes_in, mut bytes_out) = conns.ended_bytes;
        let (mut items_in, mut items_out) = conns.ended_items;
        for c in &conns.live {
            calls.add(&c.calls());
            let (i, o) = c.traffic();
            bytes_in += i;
            bytes_out += o;
            let (i, o) = c.items();
            items_in += i;
            items_out += o;
        }
        ServerStats {
            connections_open: conns.live.len() as u64,
            connections_accepted: conns.total,
            connections_refused: self.refused.load(Ordering::Relaxed),
            calls: calls.snapshot(),
            items_in,
            items_out,
            bytes_in,
            bytes_out,
        }
    }
}

/// A connection's place in its server's counters (see [`ServerCounters::connection`]).
pub(crate) struct ConnectionCounted {
    pub(crate) counters: Arc<Counters>,
    server: Arc<ServerCounters>,
}

impl Drop for ConnectionCounted {
    fn drop(&mut self) {
        let mut conns = self.server.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = conns.live.iter().position(|c| Arc::ptr_eq(c, &self.counters)) {
            conns.live.swap_remove(i);
        }
        // Counted under the lock snapshots take, so a snapshot sees this connection either
        // among the live ones or in the totals, never in both or neither. What its engine
        // counts after this (nothing: the engine is gone) would be lost.
        let calls = self.counters.calls();
        conns.ended.add(&calls);
        let (i, o) = self.counters.traffic();
        conns.ended_bytes.0 += i;
        conns.ended_bytes.1 += o;
        let (i, o) = self.counters.items();
        conns.ended_items.0 += i;
        conns.ended_items.1 += o;
    }
}

/// Handed out by [`BoundServer::stats_handle`](crate::BoundServer::stats_handle): reads the
/// server's counters from anywhere, while it runs and after. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StatsHandle {
    pub(crate) counters: Arc<ServerCounters>,
}

impl StatsHandle {
    /// The server's counters now.
    pub fn get(&self) -> ServerStats {
        self.counters.snapshot()
    }
}

//! Typed errors, split by layer.
//!
//! - [`TransportError`]: the pipe itself: no server, busy, disconnected, a message over the
//!   size limit, an incompatible peer, a protocol violation.
//! - Call-level variants of [`RpcError`]: deadline exceeded, cancelled, or the server
//!   refused the call ([`ServerError`]: malformed request, overloaded, shutting down, ...).
//! - The application's own error type `E` of a method returning `Result<T, E>`, which the
//!   generated client returns directly: `E` absorbs [`RpcError`] through `From`.
//!
//! Every error here is plain data (`Clone + Serialize + Deserialize`): an application error
//! type can embed an [`RpcError`] and still cross the wire, and a server can hand an
//! upstream failure to its own caller unchanged.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which way a message was travelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Client to server.
    Request,
    /// Server to client.
    Response,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Request => "request",
            Direction::Response => "response",
        })
    }
}

/// Finds the innermost `io::Error` kind (tarpc's transport wraps the framing layer's).
pub(crate) fn root_io_kind(e: &std::io::Error) -> std::io::ErrorKind {
    let mut cur = e;
    while let Some(inner) = cur.get_ref().and_then(|i| i.downcast_ref::<std::io::Error>()) {
        cur = inner;
    }
    cur.kind()
}

/// Classifies an error read from or written to an established connection.
pub(crate) fn connection_error(e: &std::io::Error, peer: &str) -> TransportError {
    // The pipe to a child ended because the child exited (see `crate::child`).
    if let Some(exit) = crate::child::exit_in(e) {
        return exit;
    }
    match root_io_kind(e) {
        std::io::ErrorKind::InvalidData => {
            TransportError::Protocol { detail: format!("unreadable data from the {peer}: {e}") }
        }
        _ => TransportError::Disconnected { detail: format!("connection to the {peer} failed: {e}") },
    }
}

/// The error of a remote call, as the generated client returns it.
///
/// ```
/// use rpc_core::{RpcError, ServerErrorKind, TransportError};
///
/// fn advice(e: &RpcError) -> &'static str {
///     match e {
///         RpcError::Transport(TransportError::NotRunning { .. }) => "start the server",
///         RpcError::Transport(TransportError::Incompatible { .. }) => "rebuild against the same trait",
///         RpcError::DeadlineExceeded { .. } => "give it more time",
///         RpcError::Server(s) if s.kind == ServerErrorKind::HandlerPanicked => "a server bug: see its log",
///         e if e.is_safe_to_retry() => "retry: it certainly did not run",
///         e if e.is_disconnected() => "it may or may not have run",
///         _ => "see the message",
///     }
/// }
/// let e = RpcError::DeadlineExceeded { timeout: std::time::Duration::from_secs(1) };
/// assert_eq!(advice(&e), "give it more time");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RpcError {
    /// The pipe failed: see [`TransportError`].
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The call's deadline passed before its response arrived. The server drops the
    /// handler when the same deadline passes there.
    #[error("deadline exceeded: no response within {}", fmt_duration(*.timeout))]
    DeadlineExceeded {
        /// The time the call was given.
        timeout: Duration,
    },
    /// The call was cancelled on this side before it completed: the client was closed.
    #[error("call cancelled: the client was closed")]
    Cancelled,
    /// The server received the call and refused or failed it.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A blocking client's method (`{Trait}BlockingClient`, see [`crate::blocking`]) was
    /// called on a thread inside a tokio runtime context: an async task, `block_on`,
    /// `Runtime::enter`, or a `spawn_blocking` closure (tokio does not tell these apart).
    /// Blocking such a thread can stall the tasks the call itself needs, so nothing was sent.
    /// Use the async client there (`as_async()` gives it, on the same connection) and
    /// `.await` the call.
    #[error(
        "`{call}` blocks its thread, but it was called inside a tokio runtime, where blocking can stall the tasks it \
         waits for; nothing was sent: use the async client (`as_async()`) and `.await` the call"
    )]
    BlockingInRuntime {
        /// The method that was called, as `Type::method`.
        call: String,
    },
    /// The server was built from another version of the service's trait and does not have
    /// this method as the client knows it ([`crate::evolution`]): it lacks it, or its types
    /// changed, or it sits at a place the server cannot translate. Said in the handshake, so the call failed at once and nothing
    /// was sent; the connection serves the methods both sides share.
    #[error("`{method}` cannot be called on this server: {reason}; nothing was sent")]
    Incompatible {
        /// The method's name.
        method: String,
        /// What the server has instead.
        reason: crate::evolution::MethodStatus,
    },
}

impl RpcError {
    /// The transport-layer error, if this is one.
    pub fn transport(&self) -> Option<&TransportError> {
        match self {
            RpcError::Transport(t) => Some(t),
            _ => None,
        }
    }

    /// True if no server was listening on the name.
    pub fn is_not_running(&self) -> bool {
        matches!(self, RpcError::Transport(TransportError::NotRunning { .. }))
    }

    /// True if the call's deadline passed (on either side).
    pub fn is_deadline_exceeded(&self) -> bool {
        matches!(self, RpcError::DeadlineExceeded { .. })
    }

    /// True if the connection was lost (including a child process at its other end
    /// exiting, and a reconnecting client's [`TransportError::ConnectionLost`]): the
    /// outcome of calls in flight is unknown.
    pub fn is_disconnected(&self) -> bool {
        matches!(
            self,
            RpcError::Transport(
                TransportError::Disconnected { .. }
                    | TransportError::ChildExited { .. }
                    | TransportError::ConnectionLost { .. }
            )
        )
    }

    /// True if the call certainly did not run on the server, so retrying cannot
    /// run it twice.
    pub fn is_safe_to_retry(&self) -> bool {
        match self {
            RpcError::Transport(t) => matches!(
                t,
                TransportError::NotRunning { .. }
                    | TransportError::Busy { .. }
                    | TransportError::Incompatible { .. }
                    | TransportError::InvalidName { .. }
                    | TransportError::MessageTooLarge { direction: Direction::Request, .. }
            ),
            RpcError::Server(s) => matches!(s.kind, ServerErrorKind::Overloaded | ServerErrorKind::ShuttingDown),
            RpcError::DeadlineExceeded { .. } | RpcError::Cancelled => false,
            // Nothing was sent (a retry on the same thread, or on the same connection, is
            // refused again, though).
            RpcError::BlockingInRuntime { .. } | RpcError::Incompatible { .. } => true,
        }
    }
}

/// A failure of the pipe or of the framing on it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum TransportError {
    /// Nobody listens on the name (no socket file or pipe, or a stale socket file), or the
    /// server is shutting down. Reported at once, or after the connect timeout with
    /// [`ClientConfig::wait_for_server`](crate::ClientConfig::wait_for_server).
    #[error("server not running: {detail}")]
    NotRunning {
        /// The pipe name, its address and how long the client waited.
        detail: String,
    },
    /// The server was busy for the whole connect timeout: every pipe instance taken, or the
    /// server at its connection limits (the detail names the limit).
    #[error("server busy: {detail}")]
    Busy {
        /// The pipe name, its address and how long the client waited.
        detail: String,
    },
    /// The OS refused access to the pipe.
    #[error("permission denied: {detail}")]
    PermissionDenied {
        /// What was refused.
        detail: String,
    },
    /// The process serving the pipe is not the one this client expects
    /// ([`ClientConfig::expect_server`](crate::ClientConfig::expect_server)): another user's
    /// process may have taken the name. Nothing was sent to it.
    #[error("server identity: expected a server running as {expected}, but {actual}")]
    ServerIdentity {
        /// Whom the client expected.
        expected: String,
        /// Who serves the pipe.
        actual: String,
    },
    /// The pipe name cannot be used on this platform (or a TCP address does not resolve).
    #[error("invalid pipe name: {detail}")]
    InvalidName {
        /// Why, with the limit involved.
        detail: String,
    },
    /// The connection closed or failed; calls in flight on it have an unknown outcome.
    #[error("disconnected: {detail}")]
    Disconnected {
        /// What the connection saw last.
        detail: String,
    },
    /// A reconnecting client ([`ClientConfig::reconnect`](crate::ClientConfig::reconnect))
    /// lost its connection while this call was in flight: the server may or may not have
    /// run it, so it is not sent again unless its method is marked `#[idempotent]`. The
    /// client reconnects; later calls go to the new connection. Streams in flight end
    /// with this error too (open them again to go on).
    #[error("connection lost, outcome unknown: {detail}")]
    ConnectionLost {
        /// What the connection saw last.
        detail: String,
    },
    /// The child process at the other end of the pipe exited ([`crate::child`]): calls in
    /// flight when it did have an unknown outcome, later calls fail at once, and a child that
    /// exits before it answered the handshake is reported this way too.
    #[error("child process exited: {detail}")]
    ChildExited {
        /// Its exit code, if it exited with one (`None` if a signal ended it).
        code: Option<i32>,
        /// Unix: the signal that ended it, if one did.
        signal: Option<i32>,
        /// Its pid and exit status, as the OS reports them.
        detail: String,
    },
    /// One message was larger than the limit. Only that call fails; the connection
    /// carries on.
    #[error("{direction} of {size} bytes exceeds the {limit}-byte message limit")]
    MessageTooLarge {
        /// Encoded size of the message.
        size: u64,
        /// The limit in force: the smaller of the two sides' maximum message sizes.
        limit: u64,
        /// Which message was too large.
        direction: Direction,
    },
    /// The peer is not a compatible pipe-rpc endpoint: protocol version, service name,
    /// service fingerprint or codec differ. Nothing was sent.
    #[error("incompatible peer: {detail}")]
    Incompatible {
        /// Which property differed, with both sides' values.
        detail: String,
    },
    /// The peer stopped making progress for longer than a limit: it left a frame
    /// half-sent ([`ServerConfig::frame_read_timeout`](crate::ServerConfig::frame_read_timeout)),
    /// or stopped reading what this end writes
    /// ([`ServerConfig::write_stall_timeout`](crate::ServerConfig::write_stall_timeout)). The
    /// connection is closed; calls in flight on it have an unknown outcome.
    #[error("peer stalled: {detail} (limit: {})", fmt_duration(*.limit))]
    Stalled {
        /// What the peer left undone.
        detail: String,
        /// The limit that ran out.
        limit: Duration,
    },
    /// The peer broke the protocol (garbage frames, an unexpected message).
    #[error("protocol error: {detail}")]
    Protocol {
        /// What was wrong.
        detail: String,
    },
    /// Another I/O error.
    #[error("i/o error: {detail}")]
    Io {
        /// The OS error text.
        detail: String,
    },
}

/// Why the server refused or failed a call: the error frame it sent back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("server error ({kind}): {detail}")]
pub struct ServerError {
    /// What kind of refusal.
    pub kind: ServerErrorKind,
    /// Human-readable detail.
    pub detail: String,
}

impl ServerError {
    /// Builds a server error.
    pub fn new(kind: ServerErrorKind, detail: impl Into<String>) -> Self {
        ServerError { kind, detail: detail.into() }
    }
}

/// The kinds of [`ServerError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ServerErrorKind {
    /// The request frame could not be decoded as a call of this service.
    BadRequest,
    /// The handler panicked; the server goes on serving.
    HandlerPanicked,
    /// The server is draining for shutdown and did not start this call. Safe to retry
    /// elsewhere or later.
    ShuttingDown,
    /// The server refused the call for lack of capacity. Safe to retry.
    Overloaded,
    /// The handler's response exceeded the message limit.
    ResponseTooLarge,
    /// The call's deadline passed on the server (for example because the server caps
    /// deadlines lower than the client asked); the handler was stopped.
    DeadlineExceeded,
    /// Any other failure.
    Internal,
}

impl std::fmt::Display for ServerErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerErrorKind::BadRequest => "bad request",
            ServerErrorKind::HandlerPanicked => "handler panicked",
            ServerErrorKind::ShuttingDown => "shutting down",
            ServerErrorKind::Overloaded => "overloaded",
            ServerErrorKind::ResponseTooLarge => "response too large",
            ServerErrorKind::DeadlineExceeded => "deadline exceeded",
            ServerErrorKind::Internal => "internal",
        })
    }
}

/// Errors of setting up or running a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Binding the pipe name failed (in use, invalid, no permission).
    #[error("cannot listen: {0}")]
    Bind(#[source] transport_pipe::Error),
    /// Accepting connections failed persistently.
    #[error("accept failed: {0}")]
    Accept(#[source] transport_pipe::Error),
    /// Binding a TCP address failed: it does not resolve, it is in use, it is not an
    /// address of this machine ([`Server::bind_tcp`](crate::Server::bind_tcp)).
    #[error("cannot listen on TCP {addr}: {source}")]
    BindTcp {
        /// The address, as resolved.
        addr: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The server's settings cannot be honoured where it was asked to listen, and it will
    /// not listen with weaker ones: a TCP address that is not loopback without
    /// [`ServerConfig::allow_remote`](crate::ServerConfig::allow_remote), or an access rule
    /// about users over TCP, which reports none. The message says what to change.
    #[error("refusing to listen: {0}")]
    NotAllowed(String),
    /// [`Server::serve_parent`](crate::Server::serve_parent): this process has no pipe to
    /// a parent (it was not started by [`child::spawn`](crate::child::spawn)).
    #[error("no pipe to a parent process: {0}")]
    ParentPipe(#[source] transport_pipe::Error),
    /// The one connection a server served ([`Server::serve_parent`](crate::Server::serve_parent))
    /// failed: the peer broke the protocol or never spoke.
    #[error("the connection failed: {0}")]
    Connection(#[source] TransportError),
}

impl From<transport_pipe::Error> for TransportError {
    fn from(e: transport_pipe::Error) -> Self {
        use transport_pipe::ErrorKind as K;
        let detail = e.to_string();
        match e.kind() {
            K::NotRunning => TransportError::NotRunning { detail },
            K::Busy => TransportError::Busy { detail },
            K::PermissionDenied => TransportError::PermissionDenied { detail },
            K::InvalidName => TransportError::InvalidName { detail },
            _ => TransportError::Io { detail },
        }
    }
}

impl From<transport_pipe::Error> for RpcError {
    fn from(e: transport_pipe::Error) -> Self {
        RpcError::Transport(e.into())
    }
}

pub(crate) fn fmt_duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) { format!("{:.3} s", d.as_secs_f64()) } else { format!("{} ms", d.as_millis()) }
}

/// The text of a panic payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

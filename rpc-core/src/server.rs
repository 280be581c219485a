//! The server runtime: accepts clients on a pipe, runs their calls, shuts down gracefully.
//!
//! Each connection is one task. Its calls run concurrently inside that task (polled
//! together, no task spawn per call), which keeps a call's path free of cross-thread
//! hops; connections run in parallel on the runtime's workers. A handler that does heavy
//! CPU work or blocks should move that work to `tokio::task::spawn_blocking`.
//!
//! ```no_run
//! # #[rpc_core::service] pub trait Echo { async fn echo(&self, s: String) -> String; }
//! # struct Me; impl Echo for Me { async fn echo(&self, s: String) -> String { s } }
//! # async fn run() -> Result<(), rpc_core::ServeError> {
//! use rpc_core::Server;
//! let server = Server::new(EchoServer::new(Me)).bind("echo")?;
//! // `shutdown()` on this handle, from any task, stops the server gracefully.
//! let handle = server.shutdown_handle();
//! # handle.shutdown();
//! server.run().await
//! # }
//! ```

mod connection;
pub(crate) mod listener;

pub use listener::{AcceptError, Listener};

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use transport_pipe::{ListenOptions, PipeListener, PipeName};

use crate::access::{AccessPolicy, PeerCredentials};
use crate::error::{ServeError, TransportError};
use crate::service::Service;
use crate::stats::{ServerCounters, ServerStats, StatsHandle};
use crate::tcp::TcpListener;
use crate::wire::HandshakeStatus;

/// Server settings. Start from `ServerConfig::default()` and change fields.
///
/// ```no_run
/// # #[rpc_core::service] pub trait Jobs { async fn count(&self) -> u64; }
/// # struct MyJobs;
/// # impl Jobs for MyJobs { async fn count(&self) -> u64 { 0 } }
/// # async fn stop_requested() {}
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use rpc_core::{AccessPolicy, Server, ServerConfig};
///
/// let config = ServerConfig::default()
///     .max_connections(32)
///     .max_in_flight_per_connection(64)
///     .max_deadline(Duration::from_secs(30)) // no call runs longer, whatever the client asks
///     .access(AccessPolicy::allow([1000, 1001], [])) // these users, besides none by group
///     .socket_mode(0o660);
/// let server = Server::new(JobsServer::new(MyJobs)).config(config).bind("jobs")?;
/// let shutdown = server.shutdown_handle();
/// tokio::spawn(async move {
///     stop_requested().await; // a signal, a command, ...
///     shutdown.shutdown(); // answers what runs, refuses new calls, then returns
/// });
/// server.run().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Calls one connection may have running (or answered but not yet written). The
    /// client learns it in the handshake and holds further calls back until one is
    /// answered; a call beyond it (from a client that ignores the limit) is refused with
    /// [`ServerErrorKind::Overloaded`](crate::ServerErrorKind::Overloaded). Default: 128.
    pub max_in_flight_per_connection: usize,
    /// One-way calls one connection may have running at once: the credit the client is
    /// granted in the handshake and given back as each finishes. A client at its credit
    /// holds further one-way calls back. Default: 512: the credit goes back once per read
    /// pass of the server, through a write and two wake-ups, and a client sending as fast
    /// as it can spent much of its time waiting for it at 128 (measured in the README's
    /// Performance section).
    pub max_oneway_per_connection: usize,
    /// Connections served at once, counted from the end of their handshake (connections
    /// still in it have their own limit, [`max_handshaking`](Self::max_handshaking), so
    /// silent ones cannot take these places). A client beyond this is answered
    /// `Overloaded` in the handshake (its client sees [`TransportError::Busy`]). Default: 256.
    pub max_connections: usize,
    /// Connections accepted but not yet through their handshake. When one more arrives,
    /// the one that has waited longest is closed to make room (a client that speaks at
    /// once, as ours do, is through in well under a millisecond, so connections that never
    /// speak cannot keep it out). Default: 64 (dbus-daemon's `max_incomplete_connections`).
    pub max_handshaking: usize,
    /// Longest a frame may take to arrive once its first bytes have: a peer that leaves a
    /// frame unfinished this long (a header, then a trickle) has its connection closed
    /// with [`TransportError::Stalled`], after an `Abort` frame saying so. Memory held for a
    /// partial frame is about what arrived of it, never its declared size. Default: 30 s.
    pub frame_read_timeout: Duration,
    /// Longest this end's writes may make no progress while it has bytes to send: a peer
    /// that stops reading (its replies pile up) has its connection closed with
    /// [`TransportError::Stalled`]. Default: 30 s.
    pub write_stall_timeout: Duration,
    /// What decoding one client message may allocate (a multiple of its size, plus a
    /// base) and how deep it may nest. A call over them is refused as a bad request naming
    /// the limit; the connection goes on. Default:
    /// [`DecodeLimits::DEFAULT`](crate::codec::DecodeLimits::DEFAULT): 16x the message plus
    /// 64 KiB, 64 levels.
    pub decode_limits: crate::codec::DecodeLimits,
    /// Largest message this server sends or accepts, in bytes. Default: 4 MiB; clamped
    /// to 64 MiB.
    pub max_message: usize,
    /// Longest deadline the server honours; a call asking for more is stopped at this
    /// and its caller gets `DeadlineExceeded`. Default: 5 minutes.
    pub max_deadline: Duration,
    /// Time a client has to send its handshake after connecting. Default: 10 s.
    pub handshake_timeout: Duration,
    /// On shutdown, how long in-flight calls may take to finish before they are
    /// dropped. Default: 30 s.
    pub shutdown_grace: Duration,
    /// Bytes of a client's stream items (an `RpcStream` argument) one exchange may hold
    /// unread by its handler; the client's producer pauses until the handler reads.
    /// Memory per inbound stream is at most this plus one message, and 4 KiB of items
    /// `next` read ahead. Default: 512 KiB.
    pub stream_window: u32,
    /// Options for the listening pipe (Unix socket mode, ...).
    pub listen: ListenOptions,
    /// Which clients are admitted, decided from the OS's credentials of each client right
    /// after accept, before anything it sent is read. Default:
    /// [`AccessPolicy::same_user`]. Widening it usually also needs the pipe opened up
    /// ([`listen`](Self::listen)'s socket mode, in a directory the other users can reach).
    pub access: AccessPolicy,
    /// Connections one user (uid) may have at once, within
    /// [`max_connections`](Self::max_connections); the next one is refused in the handshake
    /// ([`crate::TransportError::Busy`] naming the limit). Default: 64
    /// (dbus-broker's per-user default). Does not apply over TCP, which reports no user.
    pub max_connections_per_user: usize,
    /// Whether the server lists its methods (names, argument names and types, shapes,
    /// first doc paragraphs) to a client that probes it ([`crate::introspect`]): what the
    /// `pipe-rpc` command-line tool needs to call methods with JSON arguments. Default:
    /// off, because it publishes the method list to every client the
    /// [`access`](Self::access) policy admits. A probe is answered with the service's
    /// name, fingerprint, version, codecs and limits either way (a wrong-service refusal
    /// names the service too). A description holds at most
    /// [`MAX_DESCRIBED_METHODS`](crate::wire::MAX_DESCRIBED_METHODS) methods (the first, in
    /// trait order).
    pub introspection: bool,
    /// TCP only: whether [`Server::bind_tcp`] may listen on an address that is not
    /// loopback (another interface, or `0.0.0.0` / `::` for all of them), reachable from
    /// other machines. Default: `false`: such an address is refused with
    /// [`ServeError::NotAllowed`].
    pub allow_remote: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_in_flight_per_connection: 128,
            max_oneway_per_connection: 512,
            max_connections: 256,
            max_handshaking: 64,
            frame_read_timeout: Duration::from_secs(30),
            write_stall_timeout: Duration::from_secs(30),
            decode_limits: crate::codec::DecodeLimits::DEFAULT,
            max_message: transport_pipe::DEFAULT_MAX_FRAME,
            max_deadline: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            stream_window: DEFAULT_STREAM_WINDOW,
            listen: ListenOptions::default(),
            access: AccessPolicy::default(),
            max_connections_per_user: 64,
            introspection: false,
            allow_remote: false,
        }
    }
}

impl ServerConfig {
    /// Sets [`introspection`](Self::introspection).
    #[must_use]
    pub fn introspection(mut self, on: bool) -> Self {
        self.introspection = on;
        self
    }
    /// Sets [`max_in_flight_per_connection`](Self::max_in_flight_per_connection).
    #[must_use]
    pub fn max_in_flight_per_connection(mut self, n: usize) -> Self {
        self.max_in_flight_per_connection = n.max(1);
        self
    }
    /// Sets [`max_oneway_per_connection`](Self::max_oneway_per_connection).
    #[must_use]
    pub fn max_oneway_per_connection(mut self, n: usize) -> Self {
        self.max_oneway_per_connection = n.max(1);
        self
    }
    /// Sets [`max_connections`](Self::max_connections).
    #[must_use]
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }
    /// Sets [`max_handshaking`](Self::max_handshaking).
    #[must_use]
    pub fn max_handshaking(mut self, n: usize) -> Self {
        self.max_handshaking = n.max(1);
        self
    }
    /// Sets [`frame_read_timeout`](Self::frame_read_timeout).
    #[must_use]
    pub fn frame_read_timeout(mut self, d: Duration) -> Self {
        self.frame_read_timeout = d;
        self
    }
    /// Sets [`write_stall_timeout`](Self::write_stall_timeout).
    #[must_use]
    pub fn write_stall_timeout(mut self, d: Duration) -> Self {
        self.write_stall_timeout = d;
        self
    }
    /// Sets [`decode_limits`](Self::decode_limits).
    #[must_use]
    pub fn decode_limits(mut self, limits: crate::codec::DecodeLimits) -> Self {
        self.decode_limits = limits;
        self
    }
    /// Sets [`max_connections_per_user`](Self::max_connections_per_user).
    #[must_use]
    pub fn max_connections_per_user(mut self, n: usize) -> Self {
        self.max_connections_per_user = n.max(1);
        self
    }
    /// Sets [`allow_remote`](Self::allow_remote).
    #[must_use]
    pub fn allow_remote(mut self, allow: bool) -> Self {
        self.allow_remote = allow;
        self
    }
    /// Sets [`access`](Self::access).
    #[must_use]
    pub fn access(mut self, policy: AccessPolicy) -> Self {
        self.access = policy;
        self
    }
    /// Sets the Unix socket mode of [`listen`](Self::listen) (default `0o600`; ignored on
    /// Windows).
    #[must_use]
    pub fn socket_mode(mut self, mode: u32) -> Self {
        self.listen = self.listen.mode(mode);
        self
    }
    /// Sets [`max_message`](Self::max_message).
    #[must_use]
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }
    /// Sets [`max_deadline`](Self::max_deadline).
    #[must_use]
    pub fn max_deadline(mut self, d: Duration) -> Self {
        self.max_deadline = d;
        self
    }
    /// Sets [`handshake_timeout`](Self::handshake_timeout).
    #[must_use]
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }
    /// Sets [`stream_window`](Self::stream_window) (at least 1 KiB).
    #[must_use]
    pub fn stream_window(mut self, bytes: u32) -> Self {
        self.stream_window = bytes.max(1024);
        self
    }
    /// Sets [`shutdown_grace`](Self::shutdown_grace).
    #[must_use]
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.shutdown_grace = d;
        self
    }
    fn effective_max_message(&self) -> usize {
        self.max_message.clamp(1024, transport_pipe::MAX_FRAME_CEILING)
    }

    /// The settings in force: every field brought into its valid range, whatever was
    /// written to the public fields (the setters clamp too, but fields can be set
    /// directly). Applied once where a server starts, so no count of 0 or duration that
    /// overflows an `Instant` reaches the engine.
    pub(crate) fn normalized(&self) -> ServerConfig {
        let time = crate::deadlines::time_limit;
        ServerConfig {
            max_in_flight_per_connection: self.max_in_flight_per_connection.max(1),
            max_oneway_per_connection: self.max_oneway_per_connection.max(1),
            max_connections: self.max_connections.max(1),
            max_handshaking: self.max_handshaking.max(1),
            max_connections_per_user: self.max_connections_per_user.max(1),
            max_message: self.effective_max_message(),
            max_deadline: time(self.max_deadline),
            handshake_timeout: time(self.handshake_timeout),
            frame_read_timeout: time(self.frame_read_timeout),
            write_stall_timeout: time(self.write_stall_timeout),
            decode_limits: self.decode_limits,
            shutdown_grace: self.shutdown_grace.min(crate::deadlines::MAX_WAIT),
            stream_window: self.stream_window.max(1024),
            listen: self.listen.clone(),
            access: self.access.clone(),
            introspection: self.introspection,
            allow_remote: self.allow_remote,
        }
    }
}

/// The default stream window, both ends: 512 KiB, eight 64 KiB items in flight (see
/// ARCHITECTURE, "Streams are pulled, not pushed", for why this size).
pub const DEFAULT_STREAM_WINDOW: u32 = 512 * 1024;

/// A service and its settings, ready to bind.
pub struct Server<S> {
    service: Arc<S>,
    config: ServerConfig,
    /// Every connection this server serves counts here, bound or handed over.
    counters: Arc<ServerCounters>,
}

impl<S: Service> Server<S> {
    /// A server for `service` (a generated `{Trait}Server`) with default settings.
    pub fn new(service: S) -> Self {
        Server { service: Arc::new(service), config: ServerConfig::default(), counters: Arc::default() }
    }

    /// Replaces the settings.
    #[must_use]
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Starts listening on `name`. Fails at once if another server holds the name, the
    /// name is invalid, or permission is denied. Must be called inside a tokio runtime.
    pub fn bind(self, name: impl Into<PipeName>) -> Result<BoundServer<S>, ServeError> {
        let listener = PipeListener::bind_with(name, &self.config.listen).map_err(ServeError::Bind)?;
        Ok(BoundServer {
            listener,
            service: self.service,
            config: self.config,
            shutdown: ShutdownHandle::new(),
            counters: self.counters,
        })
    }

    /// The counters of the connections this server has served with
    /// [`serve_connection`](Self::serve_connection) and [`serve_parent`](Self::serve_parent)
    /// (see [`crate::stats`]). [`bind`](Self::bind) hands them on: the bound server goes on
    /// counting in them ([`BoundServer::stats`]).
    pub fn stats(&self) -> ServerStats {
        self.counters.snapshot()
    }

    /// A handle that reads [`stats`](Self::stats) from anywhere, while connections are
    /// served and after.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle { counters: self.counters.clone() }
    }

    /// Binds `name` and serves until the process ends. See [`BoundServer::run_until`]
    /// for graceful shutdown.
    pub async fn serve(self, name: impl Into<PipeName>) -> Result<(), ServeError> {
        self.bind(name)?.run().await
    }

    /// Starts listening on the TCP address `addr` (see [`crate::tcp`]): the same service,
    /// handshake, limits and shutdown as over a pipe. Must be called inside a tokio runtime.
    ///
    /// Refused, with [`ServeError::NotAllowed`] saying what to change:
    /// - an access rule about users ([`AccessPolicy::same_user`], the default, or
    ///   [`AccessPolicy::allow`]/[`allow_sids`](AccessPolicy::allow_sids)): TCP reports no
    ///   user, so the rule could admit no one. Choose [`AccessPolicy::anyone`] (whoever
    ///   reaches the port) or [`AccessPolicy::custom`] (its check gets credentials with
    ///   nothing known);
    /// - an address that is not loopback (another interface, `0.0.0.0`, `::`) unless
    ///   [`ServerConfig::allow_remote`] is set.
    ///
    /// Port 0 asks the OS for a free port; [`BoundServer::local_addr`] says which.
    ///
    /// ```no_run
    /// # #[rpc_core::service] pub trait Echo { async fn echo(&self, s: String) -> String; }
    /// # struct Me; impl Echo for Me { async fn echo(&self, s: String) -> String { s } }
    /// # async fn run() -> Result<(), rpc_core::ServeError> {
    /// use rpc_core::{AccessPolicy, Server, ServerConfig};
    /// // Other machines may connect: every interface, and anyone who reaches the port.
    /// let config = ServerConfig::default().access(AccessPolicy::anyone()).allow_remote(true);
    /// let server = Server::new(EchoServer::new(Me)).config(config).bind_tcp("0.0.0.0:7000")?;
    /// println!("listening on {}", server.local_addr());
    /// server.run().await
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ServeError::NotAllowed`] as above; [`ServeError::BindTcp`] if the address does not
    /// resolve or cannot be bound (in use, not an address of this machine), or outside a
    /// tokio runtime.
    pub fn bind_tcp(self, addr: impl std::net::ToSocketAddrs) -> Result<BoundServer<S, TcpListener>, ServeError> {
        let config = &self.config;
        if config.access.is_about_users() {
            return Err(ServeError::NotAllowed(format!(
                "a TCP server cannot apply the access rule `{}`: TCP reports no user for a client, so the rule \
                 would admit no one; set ServerConfig::access to AccessPolicy::anyone() (whoever reaches the port) \
                 or AccessPolicy::custom(..)",
                config.access.rule_name()
            )));
        }
        let addrs: Vec<std::net::SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| ServeError::BindTcp { addr: "the address given".into(), source: e })?
            .collect();
        let shown = crate::tcp::show(&addrs);
        if addrs.is_empty() {
            let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "it resolves to no address");
            return Err(ServeError::BindTcp { addr: "the address given".into(), source: e });
        }
        if let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback()).filter(|_| !config.allow_remote) {
            return Err(ServeError::NotAllowed(format!(
                "{remote} is not a loopback address: other machines could connect to it; set \
                 ServerConfig::allow_remote(true) to serve them, or listen on 127.0.0.1"
            )));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            let e = std::io::Error::other("Server::bind_tcp must be called within a tokio runtime");
            return Err(ServeError::BindTcp { addr: shown, source: e });
        }
        let listener = TcpListener::bind(&addrs).map_err(|e| ServeError::BindTcp { addr: shown, source: e })?;
        tracing::debug!(addr = %listener.local_addr(), "listening on TCP");
        Ok(BoundServer {
            listener,
            service: self.service,
            config: self.config,
            shutdown: ShutdownHandle::new(),
            counters: self.counters,
        })
    }

    /// Binds the TCP address `addr` and serves until the process ends. See
    /// [`bind_tcp`](Self::bind_tcp).
    pub async fn serve_tcp(self, addr: impl std::net::ToSocketAddrs) -> Result<(), ServeError> {
        self.bind_tcp(addr)?.run().await
    }

    /// Serves one already-connected byte stream (any `AsyncRead + AsyncWrite`, such as
    /// `tokio::io::duplex` in tests) until the client leaves. Returns why it ended. The
    /// stream's caller vouches for its peer: no access policy or connection limit applies.
    /// See [`Channel::from_io`](crate::Channel::from_io) for a client and server in one test.
    pub async fn serve_connection<IO>(&self, io: IO) -> Result<(), TransportError>
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        self.serve_one(io, None).await
    }

    /// In a child process started by [`child::spawn`](crate::child::spawn): serves the
    /// parent over the pipe it passed down ([`child::parent_pipe`](crate::child::parent_pipe))
    /// until the parent closes its end or exits, then returns `Ok(())`. Handlers see the
    /// parent's credentials in [`Context::peer`](crate::context::Context::peer) where the OS
    /// reports them. The access policy and the connection limits are not consulted: the
    /// parent made the pipe and nobody else can open it. Must be called inside a tokio
    /// runtime. See [`crate::child`].
    ///
    /// ```no_run
    /// # #[rpc_core::service] pub trait Plugin { async fn upper(&self, s: String) -> String; }
    /// # struct Upper; impl Plugin for Upper { async fn upper(&self, s: String) -> String { s.to_uppercase() } }
    /// # async fn run() -> Result<(), rpc_core::ServeError> {
    /// use rpc_core::{Server, ServerConfig};
    /// let config = ServerConfig::default().max_in_flight_per_connection(16);
    /// Server::new(PluginServer::new(Upper)).config(config).serve_parent().await
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ServeError::ParentPipe`] if this process has no pipe to a parent;
    /// [`ServeError::Connection`] if the connection failed (a handshake that never came, a
    /// protocol violation).
    pub async fn serve_parent(&self) -> Result<(), ServeError> {
        let io = transport_pipe::parent_pipe().map_err(ServeError::ParentPipe)?;
        let peer = io.peer_credentials().ok();
        self.serve_one(io, peer).await.map_err(ServeError::Connection)
    }

    /// One connection handed over by the caller, whose peer the caller vetted (or not);
    /// `peer` is what handlers see as their caller.
    async fn serve_one<IO>(&self, io: IO, peer: Option<PeerCredentials>) -> Result<(), TransportError>
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let admit = connection::Admission { peer, counts: None, handshaking: None, access_after_hello: None };
        let config = Arc::new(self.config.normalized());
        let conn = connection::Conn {
            service: self.service.clone(),
            config,
            shutdown: CancellationToken::new(),
            counters: self.counters.clone(),
        };
        connection::serve(io, conn, admit).await
    }
}

/// Asks a running server to shut down gracefully. Cloneable; any clone works.
#[derive(Clone, Debug, Default)]
pub struct ShutdownHandle {
    token: CancellationToken,
}

impl ShutdownHandle {
    fn new() -> Self {
        ShutdownHandle { token: CancellationToken::new() }
    }

    /// Starts the shutdown: stop accepting, let calls in flight finish (within
    /// [`ServerConfig::shutdown_grace`]), answer new calls `ShuttingDown`, then close.
    pub fn shutdown(&self) {
        self.token.cancel();
    }

    /// True once shutdown has been asked for.
    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// A server listening on its pipe ([`Server::bind`]) or TCP address
/// ([`Server::bind_tcp`]), not yet running.
pub struct BoundServer<S, L = PipeListener> {
    listener: L,
    service: Arc<S>,
    config: ServerConfig,
    shutdown: ShutdownHandle,
    counters: Arc<ServerCounters>,
}

impl<S, L: Listener> std::fmt::Debug for BoundServer<S, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundServer")
            .field("listener", &self.listener.describe())
            .field("config", &self.config)
            .finish()
    }
}

impl<S: Service> BoundServer<S, PipeListener> {
    /// The name the server listens on.
    pub fn name(&self) -> &PipeName {
        self.listener.name()
    }
}

impl<S: Service> BoundServer<S, TcpListener> {
    /// The TCP address the server listens on (with the port the OS chose, if port 0 was
    /// asked for).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener.local_addr()
    }
}

impl<S: Service, L: Listener> BoundServer<S, L> {
    /// A handle that triggers graceful shutdown.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// The server's counters now: connections, calls and their outcomes, bytes. See
    /// [`crate::stats`]; [`stats_handle`](Self::stats_handle) reads them once the server
    /// runs.
    pub fn stats(&self) -> ServerStats {
        self.counters.snapshot()
    }

    /// A handle that reads the server's counters from anywhere, while it runs and after.
    ///
    /// ```no_run
    /// # #[rpc_core::service] pub trait Echo { async fn echo(&self, s: String) -> String; }
    /// # struct Me; impl Echo for Me { async fn echo(&self, s: String) -> String { s } }
    /// # async fn run() -> Result<(), rpc_core::ServeError> {
    /// let server = rpc_core::Server::new(EchoServer::new(Me)).bind("echo")?;
    /// let stats = server.stats_handle();
    /// tokio::spawn(async move {
    ///     loop {
    ///         tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    ///         let s = stats.get();
    ///         eprintln!("{} connections, {} calls in flight", s.connections_open, s.calls.in_flight);
    ///     }
    /// });
    /// server.run().await
    /// # }
    /// ```
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle { counters: self.counters.clone() }
    }

    /// Serves until [`ShutdownHandle::shutdown`] is called, then shuts down gracefully.
    pub async fn run(self) -> Result<(), ServeError> {
        self.run_until(std::future::pending()).await
    }

    /// Serves until `signal` completes (or the shutdown handle fires), then shuts down
    /// gracefully: stop accepting and release the name, let calls in flight finish
    /// within the grace period, then close every connection.
    ///
    /// ## Platform-specific behavior
    ///
    /// On Unix the socket file is removed as soon as the shutdown starts, so new clients
    /// see "not running" and a replacement server can bind the name while this one
    /// drains. On Windows a pipe name lives as long as any of its instances, including
    /// the connected ones being drained: until they close, new clients see the pipe as
    /// busy (and keep retrying within their connect timeout), and a replacement server
    /// cannot bind the name.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), ServeError> {
        let BoundServer { listener, service, config, shutdown, counters: server_counters } = self;
        let config = Arc::new(config.normalized());
        warm_up_panics();
        let counts = Arc::new(Counts::default());
        let me = PeerCredentials::current_process();
        let mut conns = JoinSet::new();
        let mut accept_failures = 0u32;
        tokio::pin!(signal);
        loop {
            tokio::select! {
                biased;
                () = &mut signal => break,
                () = shutdown.token.cancelled() => break,
                // Reap finished connections so the set does not grow without bound.
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok(stream) => {
                        accept_failures = 0;
                        match gate::<L>(&stream, &config, &me, &counts) {
                            Gate::Admit(admit) => {
                                let conn = connection::Conn {
                                    service: service.clone(),
                                    config: config.clone(),
                                    shutdown: shutdown.token.clone(),
                                    counters: server_counters.clone(),
                                };
                                conns.spawn(async move {
                                    if let Err(e) = connection::serve(stream, conn, admit).await {
                                        tracing::debug!(error = %e, "connection ended");
                                    }
                                });
                            }
                            Gate::Refuse(status, why, guard) => {
                                server_counters.refused();
                                crate::spans::connection_refused(S::ID.name, &why);
                                conns.spawn(async move {
                                    let _guard = guard;
                                    connection::refuse(stream, S::ID, status, why).await;
                                });
                            }
                            Gate::Drop(why) => {
                                server_counters.refused();
                                crate::spans::connection_refused(S::ID.name, &why);
                                tracing::warn!(%why, "dropped a connection unanswered");
                            }
                        }
                    }
                    Err(e) => {
                        // Usually transient (out of file descriptors, which a peer can cause):
                        // log, back off (up to 1 s) and keep serving the connections we have.
                        accept_failures = accept_failures.saturating_add(1);
                        let pause = Duration::from_millis(10u64.saturating_mul(1 << accept_failures.min(7)).min(1000));
                        tracing::warn!(error = %e, failures = accept_failures, ?pause, "accept failed; retrying");
                        tokio::select! {
                            biased;
                            () = shutdown.token.cancelled() => break,
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                },
            }
        }
        // Stop accepting and free the name first, so a replacement server can start.
        drop(listener);
        shutdown.token.cancel();
        let drained =
            tokio::time::timeout(config.shutdown_grace, async { while conns.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(remaining = conns.len(), "shutdown grace period over; dropping calls still running");
            conns.shutdown().await;
        }
        Ok(())
    }
}

/// Pays the unwinder's one-time cost (its first use takes about 40 µs, later ones about 5)
/// once per process, off the runtime's workers, instead of on the worker of the first
/// handler that panics. `resume_unwind` does not call the panic hook, so nothing is
/// printed. (With `RUST_BACKTRACE` set, the default hook's first backtrace also loads debug
/// info, about 90 ms on the panicking thread; that is not pre-paid: it would cost every
/// server that cost and tens of MiB at start. Production servers should leave it unset or
/// install their own hook.)
fn warm_up_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        tokio::task::spawn_blocking(|| {
            let _ = std::panic::catch_unwind(|| std::panic::resume_unwind(Box::new(())));
        });
    });
}

/// What the accept loop does with a new connection.
enum Gate<IO> {
    /// Serve it (its handshake decides the rest).
    Admit(connection::Admission<IO>),
    /// Answer this refusal at once, without waiting for the hello; the guard holds the
    /// connection's place among the refusals being answered.
    Refuse(HandshakeStatus, String, CountGuard),
    /// Too many refusals are being answered already: close without a word.
    Drop(String),
}

/// Decides, from the accepted client's credentials and before anything it sent is read,
/// whether the access policy refuses it at once. The connection limits (total, per user)
/// are checked once the client is heard, in its handshake (see [`Counts::admit`]). Where the
/// transport tells who the client is only once something has been read
/// ([`Listener::USER_AFTER_FIRST_READ`], Windows pipes), the policy too is applied in the
/// handshake, as soon as the hello is in.
fn gate<L: Listener>(stream: &L::Io, config: &ServerConfig, me: &PeerCredentials, counts: &Arc<Counts>) -> Gate<L::Io> {
    let refuse = |status, why: String| match CountGuard::take(&counts.refusing, config.max_handshaking) {
        Some(guard) => Gate::Refuse(status, why, guard),
        None => Gate::Drop(format!("{why}; and {} refusals are being answered already", config.max_handshaking)),
    };
    if L::USER_AFTER_FIRST_READ {
        let handshaking = Pending::enter(counts, config.max_handshaking);
        let access = connection::AccessAfterHello { peer_of: L::peer, me: *me };
        return Gate::Admit(connection::Admission {
            peer: None,
            counts: Some(counts.clone()),
            handshaking: Some(handshaking),
            access_after_hello: Some(access),
        });
    }
    let peer = match L::peer(stream) {
        Ok(peer) => peer,
        Err(e) => {
            // Fail closed: a client we cannot identify is not admitted.
            return refuse(
                HandshakeStatus::PermissionDenied,
                format!("the server cannot read this client's credentials: {e}"),
            );
        }
    };
    // A transport without credentials (TCP) is checked as a client whose user is unknown:
    // the user rules refuse it (fail closed), `anyone` and custom checks decide.
    let known = peer.unwrap_or_default();
    if let Err(why) = config.access.check(&known, me) {
        tracing::info!(peer = %known, %why, "client refused");
        return refuse(HandshakeStatus::PermissionDenied, why);
    }
    let handshaking = Pending::enter(counts, config.max_handshaking);
    Gate::Admit(connection::Admission {
        peer,
        counts: Some(counts.clone()),
        handshaking: Some(handshaking),
        access_after_hello: None,
    })
}

/// The server's connection counts.
#[derive(Default)]
pub(crate) struct Counts {
    /// Connections through their handshake.
    live: Arc<AtomicUsize>,
    /// Connections accepted and not yet through their handshake, oldest first: a number
    /// (to find its entry again) and what evicts it.
    handshaking: Mutex<std::collections::VecDeque<(u64, CancellationToken)>>,
    /// Numbers the entries of `handshaking`.
    entered: std::sync::atomic::AtomicU64,
    /// Refusals being answered.
    refusing: Arc<AtomicUsize>,
    /// Connections through their handshake, per user.
    per_user: Arc<Mutex<HashMap<User, usize>>>,
}

impl Counts {
    /// Counts a client that finished its hello among the live connections and its user's,
    /// or says which limit it is over.
    pub(crate) fn admit(
        &self,
        peer: Option<&PeerCredentials>,
        config: &ServerConfig,
    ) -> Result<(CountGuard, Option<UserGuard>), String> {
        let Some(live) = CountGuard::take(&self.live, config.max_connections) else {
            return Err(format!("the server is at its limit of {} connections", config.max_connections));
        };
        let user = peer.and_then(|peer| match (peer.uid, peer.sid) {
            (Some(uid), _) => Some(User::Uid(uid)),
            (None, Some(sid)) => Some(User::Sid(sid)),
            (None, None) => None,
        });
        let Some(user) = user else { return Ok((live, None)) };
        let mut counts = self.per_user.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = counts.entry(user).or_insert(0);
        if *n >= config.max_connections_per_user {
            return Err(format!(
                "the server is at its limit of {} connections per user, and {user} has them all",
                config.max_connections_per_user
            ));
        }
        *n += 1;
        Ok((live, Some(UserGuard { user, counts: self.per_user.clone() })))
    }
}

/// A connection's place among those in their handshake, while it lives.
pub(crate) struct Pending {
    seq: u64,
    counts: Arc<Counts>,
    /// Cancelled when a newer connection needs the place.
    pub(crate) evicted: CancellationToken,
}

impl Pending {
    /// Enters a new connection, evicting the longest-waiting one if `limit` are in already.
    fn enter(counts: &Arc<Counts>, limit: usize) -> Pending {
        let seq = counts.entered.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        let mut pending = counts.handshaking.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while pending.len() >= limit {
            let Some((_, oldest)) = pending.pop_front() else { break };
            oldest.cancel();
        }
        pending.push_back((seq, evicted.clone()));
        Pending { seq, counts: counts.clone(), evicted }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut pending = self.counts.handshaking.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(i) = pending.iter().position(|(seq, _)| *seq == self.seq) {
            pending.remove(i);
        }
    }
}

/// Holds one place in a count with a limit while it lives.
pub(crate) struct CountGuard(Arc<AtomicUsize>);

impl CountGuard {
    /// A place in `count`, if it is below `limit`.
    fn take(count: &Arc<AtomicUsize>, limit: usize) -> Option<Self> {
        count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1)).ok()?;
        Some(CountGuard(count.clone()))
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A user, for the per-user limit: a uid (Unix) or a SID (Windows).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum User {
    Uid(u32),
    Sid(crate::access::Sid),
}

impl std::fmt::Display for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            User::Uid(uid) => write!(f, "uid {uid}"),
            User::Sid(sid) => write!(f, "user {sid}"),
        }
    }
}

/// Counts one connection against its user while it lives.
pub(crate) struct UserGuard {
    user: User,
    counts: Arc<Mutex<HashMap<User, usize>>>,
}

impl Drop for UserGuard {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.user);
            }
        }
    }
}

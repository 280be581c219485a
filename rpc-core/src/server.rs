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
use crate::wire::HandshakeStatus;

/// Server settings. Start from `ServerConfig::default()` and change fields.
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
    /// holds further one-way calls back. Default: 128.
    pub max_oneway_per_connection: usize,
    /// Connections served at once. A client beyond this is answered `Overloaded` in the
    /// handshake (its client sees [`TransportError::Busy`]). Default: 256.
    pub max_connections: usize,
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
    /// Memory per inbound stream is at most this plus one message. Default: 256 KiB.
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
    /// (dbus-broker's per-user default).
    pub max_connections_per_user: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_in_flight_per_connection: 128,
            max_oneway_per_connection: 128,
            max_connections: 256,
            max_message: transport_pipe::DEFAULT_MAX_FRAME,
            max_deadline: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            stream_window: DEFAULT_STREAM_WINDOW,
            listen: ListenOptions::default(),
            access: AccessPolicy::default(),
            max_connections_per_user: 64,
        }
    }
}

impl ServerConfig {
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
    /// Sets [`max_connections_per_user`](Self::max_connections_per_user).
    #[must_use]
    pub fn max_connections_per_user(mut self, n: usize) -> Self {
        self.max_connections_per_user = n.max(1);
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
}

/// The default stream window, both ends: 256 KiB, four 64 KiB items in flight (see
/// ARCHITECTURE, "Streams are pulled, not pushed", for why not more).
pub const DEFAULT_STREAM_WINDOW: u32 = 256 * 1024;

/// A service and its settings, ready to bind.
pub struct Server<S> {
    service: Arc<S>,
    config: ServerConfig,
}

impl<S: Service> Server<S> {
    /// A server for `service` (a generated `{Trait}Server`) with default settings.
    pub fn new(service: S) -> Self {
        Server { service: Arc::new(service), config: ServerConfig::default() }
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
        Ok(BoundServer { listener, service: self.service, config: self.config, shutdown: ShutdownHandle::new() })
    }

    /// Binds `name` and serves until the process ends. See [`BoundServer::run_until`]
    /// for graceful shutdown.
    pub async fn serve(self, name: impl Into<PipeName>) -> Result<(), ServeError> {
        self.bind(name)?.run().await
    }

    /// Serves one already-connected byte stream (any `AsyncRead + AsyncWrite`, such as
    /// `tokio::io::duplex` in tests) until the client leaves. Returns why it ended.
    pub async fn serve_connection<IO>(&self, io: IO) -> Result<(), TransportError>
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        // A connection handed over by the caller: its peer was vetted (or not) by the caller.
        let admit = connection::Admission { refuse: None, peer: None };
        connection::serve(io, self.service.clone(), Arc::new(self.config.clone()), CancellationToken::new(), admit)
            .await
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

/// A server listening on its pipe, not yet running.
pub struct BoundServer<S> {
    listener: PipeListener,
    service: Arc<S>,
    config: ServerConfig,
    shutdown: ShutdownHandle,
}

impl<S> std::fmt::Debug for BoundServer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundServer").field("name", self.listener.name()).field("config", &self.config).finish()
    }
}

impl<S: Service> BoundServer<S> {
    /// The name the server listens on.
    pub fn name(&self) -> &PipeName {
        self.listener.name()
    }

    /// A handle that triggers graceful shutdown.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
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
        let BoundServer { listener, service, config, shutdown } = self;
        let config = Arc::new(config);
        let live = Arc::new(AtomicUsize::new(0));
        let per_user = Arc::new(Mutex::new(HashMap::new()));
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
                        let (admit, user_guard) = admission(&stream, &config, &me, &live, &per_user);
                        let guard = LiveGuard::new(live.clone());
                        let (service, config, token) = (service.clone(), config.clone(), shutdown.token.clone());
                        conns.spawn(async move {
                            let _guards = (guard, user_guard);
                            if let Err(e) = connection::serve(stream, service, config, token, admit).await {
                                tracing::debug!(error = %e, "connection ended");
                            }
                        });
                    }
                    Err(e) => {
                        // Usually transient (out of file descriptors): back off, keep serving.
                        accept_failures += 1;
                        tracing::warn!(error = %e, "accept failed");
                        if accept_failures > 100 {
                            return Err(ServeError::Accept(e));
                        }
                        tokio::time::sleep(Duration::from_millis(10 * u64::from(accept_failures.min(50)))).await;
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

/// Counts a live connection for as long as it exists.
/// Decides, from the accepted client's credentials, whether its handshake is answered with
/// a refusal: the access policy, the connection limit and the per-user limit, in that
/// order. The guard counts the connection against its user while it lives.
fn admission(
    stream: &transport_pipe::PipeStream,
    config: &ServerConfig,
    me: &PeerCredentials,
    live: &AtomicUsize,
    per_user: &Arc<Mutex<HashMap<User, usize>>>,
) -> (connection::Admission, Option<UserGuard>) {
    let peer = match stream.peer_credentials() {
        Ok(peer) => peer,
        Err(e) => {
            // Fail closed: a client we cannot identify is not admitted.
            let why = format!("the server cannot read this client's credentials: {e}");
            return (
                connection::Admission { refuse: Some((HandshakeStatus::PermissionDenied, why)), peer: None },
                None,
            );
        }
    };
    let refuse = |status, why: String| (connection::Admission { refuse: Some((status, why)), peer: Some(peer) }, None);
    if let Err(why) = config.access.check(&peer, me) {
        tracing::info!(%peer, %why, "client refused");
        return refuse(HandshakeStatus::PermissionDenied, why);
    }
    if live.load(Ordering::Relaxed) >= config.max_connections {
        return refuse(
            HandshakeStatus::Overloaded,
            format!("the server is at its limit of {} connections", config.max_connections),
        );
    }
    let user = match (peer.uid, peer.sid) {
        (Some(uid), _) => Some(User::Uid(uid)),
        (None, Some(sid)) => Some(User::Sid(sid)),
        (None, None) => None,
    };
    let user_guard = match user {
        Some(user) => {
            let mut counts = per_user.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = counts.entry(user).or_insert(0);
            if *n >= config.max_connections_per_user {
                return refuse(
                    HandshakeStatus::Overloaded,
                    format!(
                        "the server is at its limit of {} connections per user, and {user} has them all",
                        config.max_connections_per_user
                    ),
                );
            }
            *n += 1;
            Some(UserGuard { user, counts: per_user.clone() })
        }
        None => None,
    };
    (connection::Admission { refuse: None, peer: Some(peer) }, user_guard)
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
struct UserGuard {
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

struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn new(n: Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        LiveGuard(n)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

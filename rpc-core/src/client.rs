//! The client: one [`Channel`] multiplexes any number of concurrent calls over one pipe.
//!
//! A `Channel` is a cheap, cloneable handle. Behind it one task runs the connection's
//! engine (`crate::engine`): it writes the calls queued by every handle (batched into as
//! few writes as the pipe allows), reads responses in whatever order the server finishes
//! them, and hands each to its caller by request id. Callers never touch the pipe, so a
//! slow or huge call does not hold up others beyond its own bytes.
//!
//! Generated clients (`{Trait}Client`) wrap a `Channel` and add one method per RPC.

use futures::stream::BoxStream;

use crate::access::{PeerCredentials, ServerIdentity};
use crate::callback::{CallbackLink, CallbackRouter, Registry};
use crate::engine::calls::{CallStreams, Calls, CloseRequest, EncodedOneWay};
use crate::engine::streams::{Inbox, Remote, StreamControl};
use crate::stream::RpcStream;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use transport_pipe::{ConnectOptions, PipeName};

use crate::codec::Codec;
use crate::codec::{EncodeError, Placed};
use crate::error::{Direction, RpcError, TransportError};
use crate::service::ServiceId;
use crate::spans;
use crate::stats::Outcome;

/// Client settings. Start from `ClientConfig::default()` and change fields.
///
/// ```no_run
/// # #[rpc_core::service] pub trait Jobs { async fn count(&self) -> u64; }
/// # async fn run() -> Result<(), rpc_core::RpcError> {
/// use std::time::Duration;
/// use rpc_core::{ClientConfig, Codec, Reconnect, ServerIdentity};
///
/// let config = ClientConfig::default()
///     .default_timeout(Duration::from_secs(2)) // every call, unless `with_timeout` says otherwise
///     .connect_timeout(Duration::from_secs(1)) // how long a busy server is retried
///     .codec(Codec::Postcard) // bincode is the default
///     .expect_server(ServerIdentity::Root) // a system service
///     .reconnect(Reconnect::new()); // survive a restart of the server
/// let jobs = JobsClient::connect_with("jobs", config).await?;
/// let n = jobs.with_timeout(Duration::from_millis(100)).count().await?;
/// # let _ = n; Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Time a call may take when the caller sets none. Default: 10 s. A call made
    /// inside a handler never gets more than the time left on the call being served.
    /// Any duration is accepted: one over about 100 years (`Duration::MAX` included) counts
    /// as 100 years, that is "as long as the server allows" (the server ends every call at
    /// its `ServerConfig::max_deadline`, 5 min by default).
    pub default_timeout: Duration,
    /// How long and how often to try while the server is busy (its pipe's instances all
    /// taken, or at its connection limits), and whether to wait for a server that is not
    /// up yet ([`ConnectOptions::wait_for_server`], off: a name nobody serves fails at once).
    /// Default: [`ConnectOptions::default`] (5 s in all).
    pub connect: ConnectOptions,
    /// Largest message this client sends or accepts, in bytes. The limit in force on a
    /// connection is the smaller of this and the server's. Default: 4 MiB
    /// ([`transport_pipe::DEFAULT_MAX_FRAME`]); clamped to 64 MiB.
    pub max_message: usize,
    /// Wire codec. Default: [`Codec::Bincode`].
    pub codec: Codec,
    /// Time allowed for the handshake after the pipe connects. Default: 10 s.
    pub handshake_timeout: Duration,
    /// One-way calls this client queues while the server's credit is used up. A one-way
    /// call made while the queue is full waits for room, at most for its timeout.
    /// Default: 1024.
    pub max_queued_oneway: usize,
    /// Bytes of a server stream's items one stream may hold unread here; the server's
    /// producer pauses until the consumer reads. Memory per inbound stream is at most
    /// this plus one message, and 4 KiB of items `next` read ahead. Default: 512 KiB.
    pub stream_window: u32,
    /// Whom this client accepts as the server of a pipe it connects to by name, checked
    /// from the OS's credentials of the pipe's peer before the client sends anything.
    /// Default: [`ServerIdentity::SameUser`]. Over TCP, which reports no user, it must be
    /// [`ServerIdentity::Anyone`] ([`ClientConfig::for_tcp`]). Not used for a child process
    /// ([`crate::child`]), whose pipe the parent made.
    pub expect_server: ServerIdentity,
    /// Longest a frame from the server may take to arrive once its first bytes have; a
    /// server that leaves one unfinished this long has the connection closed
    /// ([`TransportError::Stalled`]). Default: 30 s.
    pub frame_read_timeout: Duration,
    /// Longest this client's writes may make no progress while it has bytes to send (a
    /// server that stopped reading). Default: 30 s.
    pub write_stall_timeout: Duration,
    /// What decoding one message from the server may allocate and how deep it may nest
    /// (a squatting server is an adversary too). A reply over them fails its call only.
    /// Default: [`DecodeLimits::DEFAULT`](crate::codec::DecodeLimits::DEFAULT).
    pub decode_limits: crate::codec::DecodeLimits,
    /// Opt-in: reconnect, with backoff, after the connection is lost (the server restarted,
    /// say), for clients that connect by name. While disconnected, calls wait for the next
    /// connection up to their deadline; calls in flight when the pipe broke fail with
    /// [`TransportError::ConnectionLost`] (outcome unknown), except those of methods marked
    /// `#[idempotent]`, which are sent again; streams in flight end with that error. See
    /// [`crate::reconnect`]. Default: `None` (a lost connection fails every call, and the
    /// channel stays closed).
    pub reconnect: Option<crate::reconnect::Reconnect>,
    /// Opt-in: require the server's service fingerprint to equal this client's, as peers
    /// without service evolution do, instead of comparing each method's shape
    /// ([`crate::evolution`]). Default: `false` (a server built from another version of the
    /// trait is accepted, and each method the two do not share fails with
    /// [`RpcError::Incompatible`] when called).
    pub exact_fingerprint: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            default_timeout: Duration::from_secs(10),
            connect: ConnectOptions::default(),
            max_message: transport_pipe::DEFAULT_MAX_FRAME,
            codec: Codec::default(),
            handshake_timeout: Duration::from_secs(10),
            max_queued_oneway: 1024,
            stream_window: crate::server::DEFAULT_STREAM_WINDOW,
            expect_server: ServerIdentity::default(),
            frame_read_timeout: Duration::from_secs(30),
            write_stall_timeout: Duration::from_secs(30),
            decode_limits: crate::codec::DecodeLimits::DEFAULT,
            reconnect: None,
            exact_fingerprint: false,
        }
    }
}

impl ClientConfig {
    /// The default settings for a connection over TCP ([`Channel::connect_tcp`]): the
    /// defaults, with [`expect_server`](Self::expect_server) set to
    /// [`ServerIdentity::Anyone`], since TCP does not say who serves a port.
    pub fn for_tcp() -> Self {
        ClientConfig::default().expect_server(ServerIdentity::Anyone)
    }
    /// Sets [`expect_server`](Self::expect_server).
    #[must_use]
    pub fn expect_server(mut self, identity: ServerIdentity) -> Self {
        self.expect_server = identity;
        self
    }
    /// Sets [`frame_read_timeout`](Self::frame_read_timeout).
    #[must_use]
    pub fn frame_read_timeout(mut self, t: Duration) -> Self {
        self.frame_read_timeout = t;
        self
    }
    /// Sets [`write_stall_timeout`](Self::write_stall_timeout).
    #[must_use]
    pub fn write_stall_timeout(mut self, t: Duration) -> Self {
        self.write_stall_timeout = t;
        self
    }
    /// Sets [`decode_limits`](Self::decode_limits).
    #[must_use]
    pub fn decode_limits(mut self, limits: crate::codec::DecodeLimits) -> Self {
        self.decode_limits = limits;
        self
    }
    /// Sets [`default_timeout`](Self::default_timeout).
    #[must_use]
    pub fn default_timeout(mut self, t: Duration) -> Self {
        self.default_timeout = t;
        self
    }
    /// Sets [`exact_fingerprint`](Self::exact_fingerprint).
    #[must_use]
    pub fn exact_fingerprint(mut self, exact: bool) -> Self {
        self.exact_fingerprint = exact;
        self
    }
    /// Sets the total connect timeout ([`ConnectOptions::timeout`]).
    #[must_use]
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect.timeout = t;
        self
    }
    /// Sets [`reconnect`](Self::reconnect): reconnect after a lost connection, with
    /// `policy`'s backoff (`Reconnect::default()` for the documented defaults).
    #[must_use]
    pub fn reconnect(mut self, policy: crate::reconnect::Reconnect) -> Self {
        self.reconnect = Some(policy);
        self
    }
    /// Waits for a server that is not up yet ([`ConnectOptions::wait_for_server`]): with
    /// `true`, a name nobody serves (or a server shutting down) is retried until the
    /// connect timeout instead of failing at once with
    /// [`TransportError::NotRunning`]. For a client
    /// started together with its server.
    ///
    /// ```no_run
    /// # #[rpc_core::service] pub trait Echo { async fn echo(&self, s: String) -> String; }
    /// # async fn run() -> Result<(), rpc_core::RpcError> {
    /// use std::time::Duration;
    /// use rpc_core::ClientConfig;
    /// // The server is being started by a script at the same moment: give it 10 s.
    /// let config = ClientConfig::default().wait_for_server(true).connect_timeout(Duration::from_secs(10));
    /// let echo = EchoClient::connect_with("echo", config).await?;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn wait_for_server(mut self, wait: bool) -> Self {
        self.connect.wait_for_server = wait;
        self
    }
    /// Sets [`max_message`](Self::max_message).
    #[must_use]
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }
    /// Sets [`handshake_timeout`](Self::handshake_timeout).
    #[must_use]
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }
    /// Sets [`max_queued_oneway`](Self::max_queued_oneway).
    #[must_use]
    pub fn max_queued_oneway(mut self, n: usize) -> Self {
        self.max_queued_oneway = n.max(1);
        self
    }
    /// Sets [`stream_window`](Self::stream_window) (at least 1 KiB).
    #[must_use]
    pub fn stream_window(mut self, bytes: u32) -> Self {
        self.stream_window = bytes.max(1024);
        self
    }
    /// Sets [`codec`](Self::codec).
    #[must_use]
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }
}

/// Per-call settings; generated clients carry one (see `{Trait}Client::with_timeout`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallOptions {
    /// Time this call may take; `None` uses [`ClientConfig::default_timeout`] (a stream
    /// then has no deadline). Any duration is accepted: one over about 100 years
    /// (`Duration::MAX` included) counts as 100 years. The server still ends a call at its
    /// `ServerConfig::max_deadline` (5 min by default).
    pub timeout: Option<Duration>,
    /// The method being called, for the call's span (see [`crate::spans`]); generated
    /// clients set it.
    method: &'static str,
}

impl CallOptions {
    /// Options with the given timeout.
    pub fn with_timeout(timeout: Duration) -> Self {
        CallOptions { timeout: Some(timeout), method: "" }
    }

    /// These options for a call of `method` (its name in spans). Generated clients call
    /// this for every call.
    #[doc(hidden)]
    #[must_use]
    #[inline]
    pub fn for_method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }
}

/// What the server said about itself in the handshake.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PeerInfo {
    /// The server's process id, as it reported it.
    pub server_pid: u32,
    /// Largest message either side may send on this connection.
    pub max_message: usize,
    /// The codec in use.
    pub codec: Codec,
    /// The protocol version agreed in the handshake.
    pub protocol_version: u16,
    /// The capability bits both sides announced ([`crate::wire::caps`]).
    pub capabilities: u32,
    /// Calls the server admits at once on this connection; further calls wait in the
    /// client (their deadlines running) until one is answered.
    pub max_in_flight: usize,
    /// One-way calls the server admits before it grants more credit.
    pub max_oneway: u32,
    /// The server's credentials as the operating system reports the pipe's peer (`None`
    /// for a connection made with [`Channel::from_io`], which has no such report).
    pub server: Option<PeerCredentials>,
}

/// What every handle of a connection shares with its engine.
pub(crate) struct Shared<Req, Resp> {
    pub(crate) calls: Calls<Req, Resp>,
    /// Live `Channel` handles; the last one to go asks the engine to close.
    handles: AtomicUsize,
    /// Sequence number of the next one-way call (for the server's logs).
    oneway_seq: AtomicU64,
    /// Where this connection's stream consumers send their credit.
    pub(crate) ctl: Arc<StreamControl>,
    /// How many one-way calls the engine has written and flushed to the pipe.
    pub(crate) oneways_flushed: tokio::sync::watch::Sender<u64>,
    pub(crate) config: ClientConfig,
    /// What the server said in the handshake; a reconnecting client's changes with each
    /// connection.
    peer: std::sync::RwLock<PeerInfo>,
    /// A supervisor reconnects this connection when it is lost
    /// ([`ClientConfig::reconnect`]): the calling half then hands calls not yet written
    /// back to the table instead of failing them.
    pub(crate) reconnects: bool,
    /// What the server of the current connection said about each method, when service
    /// evolution is in force and some method is not callable; `None`: every method is.
    methods: std::sync::RwLock<Option<crate::evolution::MethodStatuses>>,
    /// True while `methods` is `Some`: the one check a call pays when all is well.
    restricted: std::sync::atomic::AtomicBool,
    /// The service's name, for spans.
    service: &'static str,
    /// Bytes of every connection's engine (see `crate::stats`).
    pub(crate) counters: Arc<crate::stats::Counters>,
    /// Connections made (handshakes that succeeded).
    connections: AtomicU64,
}

/// A connection to one service, shared by any number of concurrent calls.
///
/// Cloning is cheap; all clones share the connection. The connection closes when the
/// last clone is dropped (after answering nothing more: dropped handles cannot wait),
/// or at once with [`Channel::close`].
pub struct Channel<Req, Resp> {
    shared: Arc<Shared<Req, Resp>>,
    /// Set on a callback channel (a server's way back to its client): its calls travel
    /// through the link instead of `shared`'s table. `Some(None)`: the client did not
    /// announce callbacks, so every call fails.
    bridge: Option<Arc<Option<CallbackLink>>>,
}

impl<Req, Resp> Clone for Channel<Req, Resp> {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        Channel { shared: self.shared.clone(), bridge: self.bridge.clone() }
    }
}

impl<Req, Resp> Drop for Channel<Req, Resp> {
    fn drop(&mut self) {
        // The last handle: no call can be in flight (calls borrow a handle), so the
        // engine may close as soon as what was queued is written.
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.calls.request_close(CloseRequest::Polite);
        }
    }
}

impl<Req, Resp> std::fmt::Debug for Channel<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("peer", &self.shared.peer())
            .field("closed", &self.shared.calls.closed())
            .finish()
    }
}

impl<Req, Resp> Channel<Req, Resp>
where
    Req: serde::Serialize + Send + 'static,
    Resp: serde::de::DeserializeOwned + Send + 'static,
{
    /// Connects to `name` and performs the handshake for `service`.
    ///
    /// A busy server is retried with backoff ([`ConnectOptions::backoff`]) within
    /// `config.connect.timeout`: a pipe whose instances are all taken, and a server that
    /// answers the handshake that it is at its connection limits
    /// ([`ServerConfig::max_connections`](crate::ServerConfig::max_connections),
    /// [`max_connections_per_user`](crate::ServerConfig::max_connections_per_user)), over a
    /// new connection each time. If it is still busy when the timeout passes, the error is
    /// [`TransportError::Busy`] naming the limit. A name nobody serves fails at once with
    /// [`TransportError::NotRunning`], unless [`ClientConfig::wait_for_server`] is set; then
    /// it is retried within the timeout too, as is a server that is shutting down (a
    /// replacement may be starting). Every other refusal (another service or version of it,
    /// a permission denied, a server of another user) is final and reported at once.
    pub async fn connect(
        name: impl Into<PipeName>,
        service: ServiceId,
        config: ClientConfig,
    ) -> Result<Self, RpcError> {
        let name = name.into();
        let reconnect = config.reconnect;
        let (shared, engine) = Self::connect_engine(&name, service, &config, None).await?;
        match reconnect {
            Some(policy) => {
                tokio::spawn(crate::reconnect::supervise(shared.clone(), name, service, policy, engine));
            }
            None => {
                tokio::spawn(run_engine(engine));
            }
        }
        Ok(Channel { shared, bridge: None })
    }

    /// [`connect`](Self::connect)'s connection: the pipe, the server's identity, the
    /// handshake (retried while the server is busy), and the engine, not yet spawned. With
    /// `existing`, the connection carries that client's calls (a reconnection).
    pub(crate) async fn connect_engine(
        name: &PipeName,
        service: ServiceId,
        config: &ClientConfig,
        existing: Option<&Arc<Shared<Req, Resp>>>,
    ) -> Result<(Arc<Shared<Req, Resp>>, EngineTask), RpcError> {
        let open = |started| {
            let (name, config) = (name, config);
            async move {
                let stream = transport_pipe::connect_since(name.clone(), &config.connect, started).await?;
                // Before a byte is sent: is this the server we expect, or whoever took the
                // name? A pipe that cannot say who serves it is not used (an I/O failure here
                // is a connection lost before the handshake, as when the server closed its
                // listener with this connection still queued).
                let server = stream.peer_credentials().map_err(|e| TransportError::Disconnected {
                    detail: format!("cannot read who serves `{}` (so nothing was sent): {e}", name.as_str()),
                })?;
                let me = PeerCredentials::current_process();
                if !config.expect_server.admits(&server, &me) {
                    return Err(TransportError::ServerIdentity {
                        expected: config.expect_server.describe(&me),
                        actual: format!("`{}` is served by {server}", name.as_str()),
                    }
                    .into());
                }
                Ok((stream, Some(server)))
            }
        };
        Self::connect_retrying(service, config, existing, open).await
    }

    /// Connects to the server listening on the TCP address `addr` (see [`crate::tcp`]) and
    /// performs the handshake for `service`. Connect failures are treated as for
    /// [`connect`](Self::connect): a refused connection fails at once with
    /// [`TransportError::NotRunning`] (or is retried with
    /// [`ClientConfig::wait_for_server`]), a server at its connection limit is retried
    /// within the connect timeout.
    ///
    /// TCP does not say who serves a port, so `config.expect_server` must be
    /// [`ServerIdentity::Anyone`]: any other expectation cannot be checked and is refused
    /// with [`TransportError::ServerIdentity`] before anything is sent
    /// (`FooClient::connect_tcp` sets it; see [`ClientConfig::for_tcp`]).
    ///
    /// # Errors
    ///
    /// As above; [`TransportError::InvalidName`] if `addr` does not resolve,
    /// [`TransportError::Io`] if the host cannot be reached.
    pub async fn connect_tcp(
        addr: impl tokio::net::ToSocketAddrs,
        service: ServiceId,
        config: ClientConfig,
    ) -> Result<Self, RpcError> {
        if config.expect_server != ServerIdentity::Anyone {
            let me = PeerCredentials::current_process();
            return Err(TransportError::ServerIdentity {
                expected: config.expect_server.describe(&me),
                actual: "a server over TCP, which does not say who runs it (nothing was sent); to connect \
                         anyway set ClientConfig::expect_server(ServerIdentity::Anyone) (ClientConfig::for_tcp)"
                    .into(),
            }
            .into());
        }
        let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| TransportError::InvalidName { detail: format!("the TCP address does not resolve: {e}") })?
            .collect();
        if addrs.is_empty() {
            return Err(TransportError::InvalidName { detail: "the TCP address resolves to no address".into() }.into());
        }
        // A TCP client does not reconnect (yet): see `crate::reconnect`.
        let config = ClientConfig { reconnect: None, ..config };
        let open = |started| {
            let (addrs, config) = (&addrs, &config);
            async move {
                let stream = crate::tcp::connect_since(addrs, &config.connect, started).await?;
                Ok((stream, None))
            }
        };
        let (shared, engine) = Self::connect_retrying(service, &config, None, open).await?;
        tokio::spawn(run_engine(engine));
        Ok(Channel { shared, bridge: None })
    }

    /// Opens a connection with `open` (given the instant the whole connect started) and runs
    /// the handshake over it; a handshake refused because the server is at its connection
    /// limits (or, with `wait_for_server`, shutting down) is retried over a new connection
    /// with backoff, within the one connect timeout.
    async fn connect_retrying<Io, Open, Opened>(
        service: ServiceId,
        config: &ClientConfig,
        existing: Option<&Arc<Shared<Req, Resp>>>,
        mut open: Open,
    ) -> Result<(Arc<Shared<Req, Resp>>, EngineTask), RpcError>
    where
        Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        Open: FnMut(Instant) -> Opened,
        Opened: Future<Output = Result<(Io, Option<PeerCredentials>), RpcError>>,
    {
        let started = Instant::now();
        let deadline = config.connect.deadline_from(started);
        let mut refusals: u32 = 0;
        loop {
            let (stream, server) = open(started).await?;
            let refused = match Self::launch(stream, server, service, config.clone(), existing).await {
                Ok(launched) => return Ok(launched),
                Err(e) => e,
            };
            // The handshake's only `Busy` is the server's `Overloaded` answer (its connection
            // limits); its `NotRunning` is `ShuttingDown`. The refused connection is closed
            // (dropped with `start`'s framing) and a new one is made for the next attempt.
            let retry = match &refused {
                RpcError::Transport(TransportError::Busy { .. }) => true,
                RpcError::Transport(TransportError::NotRunning { .. }) => config.connect.wait_for_server,
                _ => false,
            };
            refusals += 1;
            let now = Instant::now();
            if !retry {
                return Err(refused);
            }
            if now >= deadline {
                return Err(gave_up(refused, started.elapsed(), refusals, config.connect.timeout));
            }
            tracing::debug!(refusals, error = %refused, "the server refused the connection; retrying");
            tokio::time::sleep_until((now + config.connect.backoff(refusals)).min(deadline)).await;
        }
    }

    /// Runs the handshake over an already-connected byte stream and starts the connection's engine
    /// task. Any `AsyncRead + AsyncWrite` works: a pipe, or `tokio::io::duplex` in tests.
    /// Must be called inside a tokio runtime.
    ///
    /// A whole client and server in one process, for a unit test:
    ///
    /// ```
    /// # #[rpc_core::service] pub trait Echo { async fn echo(&self, s: String) -> String; }
    /// # struct Me;
    /// # impl Echo for Me { async fn echo(&self, s: String) -> String { s } }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), rpc_core::RpcError> {
    /// use rpc_core::{Channel, ClientConfig, Server};
    ///
    /// let (client_end, server_end) = tokio::io::duplex(64 * 1024);
    /// let server = Server::new(EchoServer::new(Me));
    /// tokio::spawn(async move { server.serve_connection(server_end).await });
    /// let channel = Channel::from_io(client_end, EchoClient::ID, ClientConfig::default()).await?;
    /// let client = EchoClient::from_channel(channel);
    /// assert_eq!(client.echo("hi".into()).await?, "hi");
    /// # Ok(()) }
    /// ```
    pub async fn from_io<S>(io: S, service: ServiceId, config: ClientConfig) -> Result<Self, RpcError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Self::start(io, None, service, config).await
    }

    /// The handshake and the engine task over `io`, whose server the OS reported as
    /// `server` (`None`: nothing reported). The paths that make a connection without a
    /// name to reconnect to end here.
    pub(crate) async fn start<S>(
        io: S,
        server: Option<PeerCredentials>,
        service: ServiceId,
        config: ClientConfig,
    ) -> Result<Self, RpcError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        // Nothing to reconnect to: only clients that connect by name reconnect.
        let config = ClientConfig { reconnect: None, ..config };
        let (shared, engine) = Self::launch(io, server, service, config, None).await?;
        tokio::spawn(run_engine(engine));
        Ok(Channel { shared, bridge: None })
    }

    /// The handshake over `io` and the connection's engine, not yet spawned; with
    /// `existing`, for that client's calls (a reconnection), else for a new client.
    async fn launch<S>(
        io: S,
        server: Option<PeerCredentials>,
        service: ServiceId,
        config: ClientConfig,
        existing: Option<&Arc<Shared<Req, Resp>>>,
    ) -> Result<(Arc<Shared<Req, Resp>>, EngineTask), RpcError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let max = config.max_message.clamp(1024, transport_pipe::MAX_FRAME_CEILING);
        let mut framed = transport_pipe::length_delimited(io, max);
        // Without its method table the id is offered without evolution: the exact rule.
        let service =
            if config.exact_fingerprint { ServiceId::new(service.name, service.fingerprint) } else { service };
        let negotiated = crate::handshake::client(
            &mut framed,
            service,
            config.codec,
            max,
            config.stream_window,
            config.handshake_timeout,
        )
        .await?;
        let peer = PeerInfo { server, ..PeerInfo::of(&negotiated) };
        let shared = match existing {
            Some(shared) => {
                *shared.peer.write().unwrap_or_else(std::sync::PoisonError::into_inner) = peer;
                shared.clone()
            }
            None => Shared::with_reconnect(Arc::new(Registry::default()), peer, config, service.name),
        };
        shared.set_methods(negotiated.method_status.clone());
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let registry = shared.calls.registry();
        let transport = crate::engine::pipe(framed, negotiated.codec, shared.config.decode_limits, None);
        let limits = crate::engine::CallerLimits {
            window: negotiated.window,
            oneway_window: negotiated.oneway_window,
            up_window: negotiated.peer_stream_window,
            down_window: shared.config.stream_window,
            // The largest item either side may send: the most a stream overshoots its credit.
            max_message: negotiated.send_limit,
        };
        let caller = crate::engine::Caller::new(shared.clone(), limits);
        let settings = crate::engine::Settings {
            peer: "server",
            capabilities: negotiated.capabilities,
            codec: negotiated.codec,
            send_limit: negotiated.send_limit,
            frame_read_timeout: crate::deadlines::time_limit(shared.config.frame_read_timeout),
            write_stall_timeout: crate::deadlines::time_limit(shared.config.write_stall_timeout),
            decode: shared.config.decode_limits,
            counters: shared.counters.clone(),
        };
        // Every client connection can be called back: the router hands callback calls to the
        // object of the call they belong to (and refuses them once that call is over).
        let router = CallbackRouter { registry, codec: negotiated.codec, limit: negotiated.send_limit };
        let stream_limits = crate::engine::StreamLimits {
            up_window: shared.config.stream_window,
            down_window: negotiated.peer_stream_window,
            max_message: negotiated.send_limit,
        };
        let callee = crate::engine::Callee::new(
            Arc::new(router),
            Arc::new(crate::ServerConfig::default()),
            None,
            stream_limits,
            server,
            // Callbacks served here are not among the client's calls.
            Arc::default(),
        );
        let engine =
            crate::engine::Engine::<_, CallbackRouter, Req, Resp>::new(transport, settings, Some(caller), Some(callee));
        // The connection's span, if wanted: the engine (and the callbacks it serves) runs in it.
        let Some(span) = spans::client_connection(service.name, &shared.peer(), || shared.served()) else {
            return Ok((shared, Box::pin(engine)));
        };
        let inner = span.span.clone();
        let counted = shared.clone();
        let engine = async move {
            let ended = engine.await;
            span.end(&ended, Some(counted.served()));
            ended
        };
        Ok((shared, Box::pin(tracing::Instrument::instrument(engine, inner))))
    }

    /// A handle on an engine's calling half that has no connection of its own to close:
    /// the server's way to call its client back. Returns the engine's side too.
    pub(crate) fn for_engine(peer: PeerInfo, config: ClientConfig) -> (Self, Arc<Shared<Req, Resp>>) {
        let shared = Shared::new(Arc::default(), peer, config, "callback");
        (Channel { shared: shared.clone(), bridge: None }, shared)
    }

    /// A callback channel: its calls go through `link` (the call being served and its
    /// connection). `None`: the client cannot be called back.
    pub(crate) fn bridge(link: Option<CallbackLink>) -> Self {
        let peer = PeerInfo {
            server_pid: 0,
            max_message: link.as_ref().map_or(0, |l| l.limit),
            codec: link.as_ref().map_or(Codec::default(), |l| l.codec),
            protocol_version: crate::wire::PROTOCOL_VERSION,
            capabilities: 0,
            max_in_flight: 0,
            max_oneway: 0,
            server: None,
        };
        let shared = Shared::new(Arc::default(), peer, ClientConfig::default(), "callback");
        Channel { shared, bridge: Some(Arc::new(link)) }
    }

    /// Makes one call and waits for its response, at most until its deadline.
    ///
    /// Dropping the returned future cancels the call: the server is told to stop the
    /// handler. The deadline travels to the server as a relative timeout.
    pub async fn call(&self, options: &CallOptions, body: Req) -> Result<Resp, RpcError> {
        match &self.bridge {
            None => self.call_direct(options, body).await,
            Some(link) => match &**link {
                Some(link) => link.call(options, body).await,
                None => {
                    let detail = "the client cannot be called back (it did not announce the capability)".into();
                    Err(TransportError::Incompatible { detail }.into())
                }
            },
        }
    }

    /// Makes a call of an `#[idempotent]` method: like [`call`](Self::call), but when a
    /// reconnecting client ([`ClientConfig::reconnect`]) loses its connection under the
    /// call, the request is made again (`request` builds it for each attempt) and sent
    /// over the next connection, all within the call's one deadline. Without `reconnect`
    /// this is `call`.
    #[doc(hidden)]
    pub async fn call_idempotent(&self, options: &CallOptions, request: impl Fn() -> Req) -> Result<Resp, RpcError> {
        if !self.shared.reconnects {
            return self.call(options, request()).await;
        }
        let timeout = options.timeout.unwrap_or(self.shared.config.default_timeout);
        let deadline = crate::deadlines::deadline_after(Instant::now(), timeout);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = CallOptions { timeout: Some(left), ..*options };
            match self.call(&attempt, request()).await {
                Err(RpcError::Transport(TransportError::ConnectionLost { detail })) => {
                    tracing::debug!(%detail, "an idempotent call's connection was lost; sending it again");
                    if Instant::now() >= deadline {
                        return Err(RpcError::DeadlineExceeded { timeout });
                    }
                }
                // The deadline is the whole call's, not the last attempt's.
                Err(RpcError::DeadlineExceeded { .. }) => return Err(RpcError::DeadlineExceeded { timeout }),
                other => return other,
            }
        }
    }

    /// A call that hands over a callback object (`callback`) the server may call while
    /// the call is open. No deadline unless `options` sets one.
    #[doc(hidden)]
    pub async fn call_with_callback(
        &self,
        options: &CallOptions,
        body: Req,
        callback: Arc<dyn crate::callback::ErasedCallback>,
    ) -> Result<Resp, RpcError> {
        if self.shared.peer().capabilities & crate::wire::caps::CALLBACKS == 0 {
            let detail = "the server does not make callbacks (it did not announce the capability)".into();
            return Err(TransportError::Incompatible { detail }.into());
        }
        let (deadline, timeout) = Self::stream_deadline(options);
        let streams = Box::new(CallStreams { up: None, down: None, callback: Some(callback) });
        let about = (spans::Kind::Call, options.method);
        CallFuture::new(&self.shared, (body, deadline, timeout, Some(streams)), about).await
    }

    /// Makes a one-way call: sends `body` and expects nothing back. Returns once the
    /// message is queued for the pipe, in order with this connection's other one-way
    /// calls; the server runs their handlers in that order, and never answers.
    ///
    /// It fails at once if the message cannot be encoded or is over the message limit,
    /// if the connection is closed, or if the server does not accept one-way calls. While
    /// the server's credit is used up, up to [`ClientConfig::max_queued_oneway`] calls
    /// queue here; a call made when that queue is full waits for room, at most for its
    /// timeout. A one-way call still queued when the connection fails is lost, as a
    /// message in flight would be; a process that exits right after one-way calls should
    /// first wait for them with [`flush`](Self::flush).
    pub async fn oneway(&self, options: &CallOptions, body: Req) -> Result<(), RpcError> {
        let peer = || self.shared.peer();
        let trace = spans::client(spans::Kind::OneWay, self.shared.service, options.method, None, None, peer);
        let sent = self.oneway_queued(options, body).await;
        if trace.is_some() {
            let error = sent.as_ref().err().map(|e| e as &dyn std::fmt::Display);
            trace.end(Outcome::of_result(&sent), error, None);
        }
        sent
    }

    /// [`oneway`](Self::oneway) without its span.
    async fn oneway_queued(&self, options: &CallOptions, body: Req) -> Result<(), RpcError> {
        let shared = &*self.shared;
        // What encoding needs, not a copy of the whole `PeerInfo` (its credentials included).
        let (capabilities, codec, max_message) = shared.peer_with(|p| (p.capabilities, p.codec, p.max_message));
        // Failures before the call reaches the queue are counted here; the queue counts
        // the rest.
        let refused = |e: RpcError| {
            shared.calls.lock().tally.oneway_failed(Outcome::of_error(&e));
            e
        };
        if capabilities & crate::wire::caps::ONEWAY == 0 {
            let detail = "the server does not accept one-way calls (it did not announce the capability)".into();
            return Err(refused(TransportError::Incompatible { detail }.into()));
        }
        let id = shared.oneway_seq.fetch_add(1, Ordering::Relaxed);
        let frame = crate::wire::Frame::<Req, crate::wire::Never>::OneWay { id, body };
        // Encoded here, by the caller: an unencodable or oversized message fails this
        // call now, and the encoding work is spread over the callers' threads.
        let encoded = ONEWAY_SCRATCH.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            frame.encode_append(codec, max_message, &mut buf).map(|placed| match placed {
                // Copied out in one allocation of its own size: splitting it off the
                // scratch buffer would leave that buffer shared with the queued frame, and
                // the next call's encoding would reallocate (and copy) it every time
                // (callgrind: about a third of a one-way call's client-side instructions).
                Placed::Appended(_) => EncodedOneWay::copy_from(&buf),
                Placed::Separate(bytes) => EncodedOneWay::Heap(bytes),
            })
        });
        let frame = encoded.map_err(|e| match e {
            EncodeError::TooLarge(t) => RpcError::from(TransportError::MessageTooLarge {
                size: t.size,
                limit: t.limit,
                direction: Direction::Request,
            }),
            EncodeError::Serde(msg) => {
                TransportError::Protocol { detail: format!("cannot encode the request: {msg}") }.into()
            }
        });
        let mut frame = Some(frame.map_err(refused)?);
        let max = shared.config.max_queued_oneway;
        let mut push =
            std::pin::pin!(std::future::poll_fn(|cx| shared.calls.poll_push_oneway(&mut frame, max, cx.waker())));
        if let Poll::Ready(r) = futures::poll!(&mut push) {
            return r;
        }
        // The queue is full: wait for room, within the call's timeout.
        let timeout = options.timeout.unwrap_or(shared.config.default_timeout);
        match tokio::time::timeout(timeout, push).await {
            Ok(r) => r,
            Err(_) => Err(refused(RpcError::DeadlineExceeded { timeout })),
        }
    }
}

/// A handshake refusal that was retried until the connect timeout, with how long and how
/// often.
/// A connection's engine, not yet spawned.
pub(crate) type EngineTask = Pin<Box<dyn Future<Output = Result<(), TransportError>> + Send>>;

/// Runs a connection's engine to its end.
pub(crate) async fn run_engine(engine: EngineTask) {
    // The engine has told every caller how it ended; this is for the log.
    if let Err(e) = engine.await {
        tracing::debug!(error = %e, "client connection failed");
    }
}

fn gave_up(refused: RpcError, waited: Duration, refusals: u32, timeout: Duration) -> RpcError {
    let tried = format!(
        "gave up after {} ({refusals} refusal{}, connect timeout {})",
        crate::error::fmt_duration(waited),
        if refusals == 1 { "" } else { "s" },
        crate::error::fmt_duration(timeout)
    );
    match refused {
        RpcError::Transport(TransportError::Busy { detail }) => {
            TransportError::Busy { detail: format!("{detail}; {tried}") }.into()
        }
        RpcError::Transport(TransportError::NotRunning { detail }) => {
            TransportError::NotRunning { detail: format!("{detail}; {tried}") }.into()
        }
        other => other,
    }
}

thread_local! {
    /// Where one-way calls are encoded, kept from call to call so encoding allocates
    /// nothing.
    static ONEWAY_SCRATCH: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
}

/// See [`Channel::lifeline`].
pub(crate) struct Lifeline {
    /// Resolves once the connection's engine and every handle of it are gone.
    pub(crate) ended: futures::future::BoxFuture<'static, ()>,
    /// Waits until the one-way calls queued so far are written to the pipe (or the
    /// connection ended).
    pub(crate) flush: Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>,
}

impl<Req, Resp> Shared<Req, Resp> {
    /// See [`Channel::flush`].
    async fn flush(&self) -> Result<(), RpcError> {
        let target = self.calls.oneways_pushed();
        let mut flushed = self.oneways_flushed.subscribe();
        loop {
            if *flushed.borrow_and_update() >= target {
                return Ok(());
            }
            if let Some(why) = self.calls.closed() {
                return Err(why);
            }
            // The sender lives as long as `self`; the engine signals when it ends.
            let _ = flushed.changed().await;
        }
    }

    /// A client's shared state; `reconnects` if `config` asks for it (only clients that
    /// connect by name get a supervisor, see [`Channel::connect`]).
    fn with_reconnect(
        registry: Arc<Registry>,
        peer: PeerInfo,
        config: ClientConfig,
        service: &'static str,
    ) -> Arc<Self> {
        let reconnects = config.reconnect.is_some();
        let mut shared = Self::new(registry, peer, config, service);
        Arc::get_mut(&mut shared).expect("just made").reconnects = reconnects;
        shared
    }

    /// Records what the server of a new connection said about each method.
    fn set_methods(&self, status: Option<crate::evolution::MethodStatuses>) {
        use crate::evolution::MethodStatus;
        let status = status.filter(|s| s.iter().any(|(_, s)| *s != MethodStatus::Same));
        let mut methods = self.methods.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.restricted.store(status.is_some(), Ordering::Release);
        *methods = status;
    }

    /// What the server announced in the handshake of the current connection.
    pub(crate) fn peer(&self) -> PeerInfo {
        self.peer_with(PeerInfo::clone)
    }

    /// `f` of what the server said in the handshake, read in place.
    pub(crate) fn peer_with<R>(&self, f: impl FnOnce(&PeerInfo) -> R) -> R {
        f(&self.peer.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Calls made and bytes moved so far, for a connection's span.
    fn served(&self) -> spans::Served {
        let (bytes_in, bytes_out) = self.counters.traffic();
        (self.calls.lock().tally.started, bytes_in, bytes_out)
    }

    fn new(registry: Arc<Registry>, peer: PeerInfo, config: ClientConfig, service: &'static str) -> Arc<Self> {
        Arc::new(Shared {
            service,
            counters: Arc::default(),
            connections: AtomicU64::new(0),
            calls: Calls::new(registry),
            handles: AtomicUsize::new(1),
            oneway_seq: AtomicU64::new(0),
            ctl: Arc::default(),
            oneways_flushed: tokio::sync::watch::Sender::new(0),
            peer: std::sync::RwLock::new(peer),
            config,
            reconnects: false,
            methods: std::sync::RwLock::new(None),
            restricted: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

impl PeerInfo {
    pub(crate) fn of(negotiated: &crate::handshake::Negotiated) -> Self {
        PeerInfo {
            server_pid: negotiated.peer_pid,
            max_message: negotiated.send_limit,
            codec: negotiated.codec,
            protocol_version: negotiated.version,
            capabilities: negotiated.capabilities,
            max_in_flight: negotiated.window,
            max_oneway: negotiated.oneway_window,
            server: None,
        }
    }
}

impl<Req, Resp> Channel<Req, Resp> {
    /// Whether `method` may be called on the current connection: with service evolution in
    /// force ([`crate::evolution`]), [`RpcError::Incompatible`] for a method the server
    /// said it lacks, changed, or has at a place it cannot translate. Generated client
    /// methods call it before sending.
    #[doc(hidden)]
    pub fn check_method(&self, method: &'static str) -> Result<(), RpcError> {
        let shared = &*self.shared;
        if !shared.restricted.load(Ordering::Acquire) {
            return Ok(());
        }
        let methods = shared.methods.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        match methods.as_deref().and_then(|m| m.iter().find(|(name, _)| *name == method)) {
            Some((_, status)) if *status != crate::evolution::MethodStatus::Same => {
                Err(RpcError::Incompatible { method: method.to_owned(), reason: *status })
            }
            _ => Ok(()),
        }
    }

    /// A call on this connection's own engine.
    pub(crate) async fn call_direct(&self, options: &CallOptions, body: Req) -> Result<Resp, RpcError> {
        let shared = &*self.shared;
        let timeout = options.timeout.unwrap_or(shared.config.default_timeout);
        let now = Instant::now();
        let mut deadline = crate::deadlines::deadline_after(now, timeout);
        // Deadline propagation: inside a handler, never outlive the caller's caller.
        if let Some(outer) = crate::context::current_deadline() {
            deadline = deadline.min(outer);
        }
        // The engine enforces the deadline (one timer per connection, not one per call)
        // and always answers: with the response, an error, or `DeadlineExceeded`.
        let timeout = deadline.saturating_duration_since(now);
        let about = (spans::Kind::Call, options.method);
        CallFuture::new(shared, (body, Some(deadline), timeout, None), about).await
    }

    /// A stream's deadline: the one the caller set, if any (streams have none by
    /// default), never later than the call being served.
    fn stream_deadline(options: &CallOptions) -> (Option<Instant>, Duration) {
        let now = Instant::now();
        let mut deadline = options.timeout.map(|t| crate::deadlines::deadline_after(now, t));
        if let Some(outer) = crate::context::current_deadline() {
            deadline = Some(deadline.map_or(outer, |d| d.min(outer)));
        }
        (deadline, deadline.map_or(Duration::ZERO, |d| d.saturating_duration_since(now)))
    }

    /// Makes a call that streams `up` to the handler and waits for its reply. The stream is
    /// sent as the server's credit allows; a reply (or error) stops it. The call has no
    /// deadline unless `options` sets one.
    #[doc(hidden)]
    pub async fn call_upload(
        &self,
        options: &CallOptions,
        body: Req,
        up: BoxStream<'static, Result<Req, RpcError>>,
    ) -> Result<Resp, RpcError>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        self.streams_supported()?;
        let (deadline, timeout) = Self::stream_deadline(options);
        let streams = Box::new(CallStreams { up: Some(up), down: None, callback: None });
        let about = (spans::Kind::Stream { up: true, down: false }, options.method);
        CallFuture::new(&self.shared, (body, deadline, timeout, Some(streams)), about).await
    }

    /// Starts a call whose handler streams items back (and, with `up`, takes a stream
    /// too); `pick` takes the item out of each response. Returns once the call is queued;
    /// the stream reports everything after that. Dropping the stream cancels the call.
    /// No deadline unless `options` sets one.
    #[doc(hidden)]
    pub async fn call_download<T: Send + 'static>(
        &self,
        options: &CallOptions,
        body: Req,
        up: Option<BoxStream<'static, Result<Req, RpcError>>>,
        pick: impl Fn(Resp) -> Option<T> + Send + 'static,
    ) -> Result<RpcStream<T>, RpcError>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        self.streams_supported()?;
        let (deadline, timeout) = Self::stream_deadline(options);
        let inbox = Inbox::new(self.shared.counters.clone());
        let kind = spans::Kind::Stream { up: up.is_some(), down: true };
        let streams = Box::new(CallStreams { up, down: Some(inbox.clone()), callback: None });
        // Nobody waits on the slot: the stream reads the inbox.
        let started = self.shared.calls.start(body, deadline, timeout, Some(streams), std::task::Waker::noop());
        let span_timeout = deadline.map(|_| timeout);
        let id = started.as_ref().ok().copied();
        let mut trace =
            spans::client(kind, self.shared.service, options.method, id, span_timeout, || self.shared.peer());
        let id = match started {
            Ok(id) => id,
            Err(e) => {
                trace.end(Outcome::of_error(&e), Some(&e), None);
                return Err(e);
            }
        };
        if let Some(t) = trace.get_mut() {
            t.count_inbound(&inbox);
        }
        let window = self.shared.config.stream_window;
        let remote = Remote::new(id, inbox, self.shared.ctl.clone(), window, false);
        let down = ClientDown { channel: self.clone(), id, remote, outcome: None, trace };
        Ok(RpcStream::inbound(down, pick))
    }

    fn streams_supported(&self) -> Result<(), RpcError> {
        if self.shared.peer().capabilities & crate::wire::caps::STREAMS == 0 {
            let detail = "the server does not accept streams (it did not announce the capability)".into();
            return Err(TransportError::Incompatible { detail }.into());
        }
        Ok(())
    }

    /// Waits until every one-way call made on this connection before it has been written
    /// to the pipe (the server reads it next). Call it before a process that made one-way
    /// calls exits: a one-way call returns once queued, and queued calls die with the
    /// process. Fails if the connection ended first (queued calls are then lost).
    pub async fn flush(&self) -> Result<(), RpcError> {
        self.shared.flush().await
    }

    /// What a runtime that must run until this connection is over needs (the blocking
    /// client's, `crate::blocking`), holding no handle of it: a future that resolves once
    /// the connection's engine and every handle are gone, and a way to wait for the one-way
    /// calls queued so far, as [`flush`](Self::flush) does.
    pub(crate) fn lifeline(&self) -> Lifeline
    where
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        // The sender lives exactly as long as `shared`: its end is the connection's.
        let mut changes = self.shared.oneways_flushed.subscribe();
        let ended = Box::pin(async move { while changes.changed().await.is_ok() {} });
        let shared = Arc::downgrade(&self.shared);
        let flush = Box::new(move || -> futures::future::BoxFuture<'static, ()> {
            Box::pin(async move {
                if let Some(shared) = shared.upgrade() {
                    // A connection that ended first has nothing left to wait for.
                    let _ = shared.flush().await;
                }
            })
        });
        Lifeline { ended, flush }
    }

    /// Closes the connection now. Calls in flight fail with [`RpcError::Cancelled`];
    /// later calls fail at once.
    pub fn close(&self) {
        self.shared.calls.request_close(CloseRequest::Now);
    }

    /// True once the connection has ended (closed, or the server went away).
    pub fn is_closed(&self) -> bool {
        self.shared.calls.closed().is_some()
    }

    /// What the server announced in the handshake (a copy: a reconnecting client's server
    /// may change with each connection).
    pub fn peer(&self) -> PeerInfo {
        self.shared.peer()
    }

    /// The settings this channel was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.shared.config
    }

    /// This client's counters now (shared by every clone of it): calls and their outcomes,
    /// what is in flight, bytes, connections made. See [`crate::stats`].
    ///
    /// ```no_run
    /// # #[rpc_core::service] pub trait Echo { async fn echo(&self, s: String) -> String; }
    /// # async fn run() -> Result<(), rpc_core::RpcError> {
    /// let echo = EchoClient::connect("echo").await?;
    /// echo.echo("hi".into()).await?;
    /// let stats = echo.channel().stats();
    /// assert_eq!((stats.calls.started, stats.calls.ok), (1, 1));
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> crate::stats::ClientStats {
        let calls = self.shared.calls.lock().tally.snapshot();
        let (bytes_in, bytes_out) = self.shared.counters.traffic();
        let (items_in, items_out) = self.shared.counters.items();
        let connections = self.shared.connections.load(Ordering::Relaxed);
        crate::stats::ClientStats { calls, connections, items_in, items_out, bytes_in, bytes_out }
    }
}

/// One call: starts on its first poll, then waits for the engine to fill its slot in.
/// Dropped before that, it gives the slot up and the server is told to stop the handler.
struct CallFuture<'a, Req, Resp> {
    shared: &'a Shared<Req, Resp>,
    start: Option<CallStart<Req, Resp>>,
    id: Option<u64>,
    /// What its span says it is: the kind and the method.
    about: (spans::Kind, &'static str),
    /// Its span, once started, if one is wanted.
    trace: spans::Trace,
}

impl<'a, Req, Resp> CallFuture<'a, Req, Resp> {
    fn new(shared: &'a Shared<Req, Resp>, start: CallStart<Req, Resp>, about: (spans::Kind, &'static str)) -> Self {
        CallFuture { shared, start: Some(start), id: None, about, trace: spans::Trace::NONE }
    }
}

type CallStart<Req, Resp> = (Req, Option<Instant>, Duration, Option<Box<CallStreams<Req, Resp>>>);

/// The client's end of a call's inbound stream. Dropping it cancels the call if it is
/// still going (and frees its slot either way).
struct ClientDown<Req, Resp> {
    channel: Channel<Req, Resp>,
    id: u64,
    remote: Remote<Resp>,
    /// How the stream ended, once its reader has seen the end.
    outcome: Option<Outcome>,
    trace: spans::Trace,
}

impl<Req: Send, Resp: Send> crate::stream::Source<Resp> for ClientDown<Req, Resp> {
    fn poll_each(
        &mut self,
        cx: &mut Context<'_>,
        limit: usize,
        max_bytes: usize,
        take: impl FnMut(Resp) -> bool,
    ) -> Poll<Option<Result<usize, RpcError>>> {
        let polled = self.remote.poll_each(cx, limit, max_bytes, take);
        match &polled {
            Poll::Ready(None) => {
                self.outcome.get_or_insert(Outcome::Ok);
            }
            Poll::Ready(Some(Err(e))) => {
                self.outcome = Some(Outcome::of_error(e));
                if let Some(t) = self.trace.get_mut() {
                    t.error = Some(e.to_string());
                }
            }
            _ => {}
        }
        polled
    }

    fn failed(&self) -> bool {
        self.remote.failed()
    }
}

impl<Req, Resp> Drop for ClientDown<Req, Resp> {
    fn drop(&mut self) {
        // Dropped before its end: the reader gave up, which cancels the call.
        let outcome = self.outcome.unwrap_or(Outcome::Cancelled);
        self.channel.shared.calls.abandon(self.id, Some(outcome));
        std::mem::take(&mut self.trace).end(outcome, None, None);
    }
}

// The request is only ever moved, never pinned.
impl<Req, Resp> Unpin for CallFuture<'_, Req, Resp> {}

impl<Req, Resp> Future for CallFuture<'_, Req, Resp> {
    type Output = Result<Resp, RpcError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some((body, deadline, timeout, streams)) = this.start.take() {
            // Starting registers this waker too: one lock, and the next poll is the wake.
            let shared = this.shared;
            let started = shared.calls.start(body, deadline, timeout, streams, cx.waker());
            let (kind, method) = this.about;
            let id = started.as_ref().ok().copied();
            this.trace = spans::client(kind, shared.service, method, id, deadline.map(|_| timeout), || shared.peer());
            return match started {
                Ok(id) => {
                    this.id = Some(id);
                    Poll::Pending
                }
                Err(e) => {
                    std::mem::take(&mut this.trace).end(Outcome::of_error(&e), Some(&e), None);
                    Poll::Ready(Err(e))
                }
            };
        }
        let id = this.id.expect("CallFuture polled after completion");
        let done = this.shared.calls.poll_done(id, cx);
        if let Poll::Ready(result) = &done {
            this.id = None;
            if this.trace.is_some() {
                let error = result.as_ref().err().map(|e| e as &dyn std::fmt::Display);
                std::mem::take(&mut this.trace).end(Outcome::of_result(result), error, None);
            }
        }
        done
    }
}

impl<Req, Resp> Drop for CallFuture<'_, Req, Resp> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.shared.calls.abandon(id, None);
            std::mem::take(&mut self.trace).end(Outcome::Cancelled, None, None);
        }
    }
}

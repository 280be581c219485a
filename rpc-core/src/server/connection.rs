//! One client connection on the server: the handshake, then the connection engine with
//! its serving half (see `crate::engine`) until the client leaves or the server drains.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::{Counts, Pending, ServerConfig};
use crate::spans;
use crate::stats::{Counters, ServerCounters};
use serde_bytes::ByteBuf;

use crate::access::PeerCredentials;
use crate::client::{Channel, ClientConfig, PeerInfo};
use crate::engine::{Callee, Caller, CallerLimits, Engine, Settings, StreamLimits};
use crate::error::TransportError;
use crate::handshake;
use crate::service::Service;
use crate::wire::{CallbackCall, HandshakeStatus, caps};

/// Callback calls a server has in flight toward one client at once (the client's serving
/// half admits as many).
const CALLBACK_WINDOW: usize = 128;

/// What the accept loop settled about a connection before its handshake.
pub(crate) struct Admission<IO> {
    /// The client's credentials, if the pipe reports them; handlers see them.
    pub(crate) peer: Option<PeerCredentials>,
    /// The server's connection counts, checked (and this connection counted in them) once
    /// the client has been heard; `None` for a connection handed over by the caller.
    pub(crate) counts: Option<Arc<Counts>>,
    /// Holds this connection's place among those in their handshake until it is over.
    pub(crate) handshaking: Option<Pending>,
    /// The access policy, still to apply: set where the transport tells who the client is
    /// only once the server has read from it (`Listener::USER_AFTER_FIRST_READ`).
    pub(crate) access_after_hello: Option<AccessAfterHello<IO>>,
}

/// How to apply the access policy once the client's hello has been read.
pub(crate) struct AccessAfterHello<IO> {
    /// Reads the client's credentials from the connection (`Listener::peer`); they replace
    /// [`Admission::peer`].
    pub(crate) peer_of: fn(&IO) -> Result<Option<PeerCredentials>, String>,
    /// The server's own credentials, which the policy compares with the client's.
    pub(crate) me: PeerCredentials,
}

/// Answers a client refused before it is heard, then closes.
pub(crate) async fn refuse<IO: AsyncRead + AsyncWrite + Unpin>(
    io: IO,
    service: crate::service::ServiceId,
    status: HandshakeStatus,
    why: String,
) -> TransportError {
    let mut framed = transport_pipe::length_delimited(io, 1024);
    handshake::refuse_early(&mut framed, service, status, why).await
}

/// What a connection shares with its server.
pub(crate) struct Conn<S> {
    pub(crate) service: Arc<S>,
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) counters: Arc<ServerCounters>,
}

/// Serves one connection: its handshake, then its engine until it ends. Inside the
/// connection's span (`rpc.connection`, see `crate::spans`) if one is wanted.
pub(crate) async fn serve<IO, S>(io: IO, conn: Conn<S>, admit: Admission<IO>) -> Result<(), TransportError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: Service,
{
    let Some(trace) = spans::connection(S::ID.name, admit.peer.as_ref()) else {
        return serve_inner(io, conn, admit, &mut None).await;
    };
    let mut served = None;
    let ended = tracing::Instrument::instrument(serve_inner(io, conn, admit, &mut served), trace.span.clone()).await;
    trace.end(&ended, served.as_deref().map(spans::served));
    ended
}

/// [`serve`] without the connection's span; `served` gets the connection's counters once
/// it is through its handshake.
async fn serve_inner<IO, S>(
    io: IO,
    conn: Conn<S>,
    admit: Admission<IO>,
    served: &mut Option<Arc<Counters>>,
) -> Result<(), TransportError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: Service,
{
    let Conn { service, config, shutdown, counters: server_counters } = conn;
    let max = config.effective_max_message();
    let mut framed = transport_pipe::length_delimited(io, max);
    let Admission { mut peer, counts, handshaking, access_after_hello } = admit;
    let offer = handshake::ServerOffer {
        max_message: max,
        max_in_flight: config.max_in_flight_per_connection,
        max_oneway: config.max_oneway_per_connection,
        stream_window: config.stream_window,
        methods: config.introspection.then_some(S::METHODS),
    };
    // Counted among the server's connections from the moment its handshake succeeds.
    let mut counted = None;
    let decide = |io: &IO| {
        if let Some(access) = access_after_hello {
            // Fail closed, as the accept loop's gate does: a client we cannot identify, or
            // whom the policy refuses, is answered and goes no further.
            let read = match (access.peer_of)(io) {
                Ok(read) => read,
                Err(e) => {
                    let why = format!("the server cannot read this client's credentials: {e}");
                    return Some((HandshakeStatus::PermissionDenied, why));
                }
            };
            let known = read.unwrap_or_default();
            if let Err(why) = config.access.check(&known, &access.me) {
                tracing::info!(peer = %known, %why, "client refused");
                return Some((HandshakeStatus::PermissionDenied, why));
            }
            // Known only now: the connection's span (if any) opened without it.
            spans::record_peer(&tracing::Span::current(), read.as_ref());
            peer = read;
        }
        if shutdown.is_cancelled() {
            return Some((HandshakeStatus::ShuttingDown, "the server is shutting down".to_owned()));
        }
        let counts = counts.as_ref()?;
        match counts.admit(peer.as_ref(), &config) {
            Ok(guards) => {
                counted = Some(guards);
                None
            }
            Err(why) => Some((HandshakeStatus::Overloaded, why)),
        }
    };
    let evicted = handshaking.as_ref().map(|p| p.evicted.clone()).unwrap_or_default();
    let negotiated = tokio::select! {
        biased;
        r = handshake::server(&mut framed, S::ID, offer, config.handshake_timeout, decide) => r,
        () = evicted.cancelled() => {
            let limit = config.max_handshaking;
            tracing::info!(limit, "closing a connection still in its handshake to make room for a newer one");
            Err(TransportError::Protocol {
                detail: format!("{limit} newer connections arrived before this one's hello (max_handshaking)"),
            })
        }
    };
    drop(handshaking);
    let negotiated = match negotiated {
        Ok(negotiated) => negotiated,
        Err(e) => {
            server_counters.refused();
            return Err(e);
        }
    };
    let _counted = counted;
    // Counted among the server's connections until the engine is over (and its own
    // counts, what its `Drop` counts included, are in).
    let stats = server_counters.connection();
    *served = Some(stats.counters.clone());
    let transport = crate::engine::pipe(framed, negotiated.codec, config.decode_limits, negotiated.translation.clone());
    let limits =
        // The largest item either side may send is what a stream may overshoot its credit by.
        StreamLimits {
            up_window: config.stream_window,
            down_window: negotiated.peer_stream_window,
            max_message: negotiated.send_limit,
        };
    let (frame_read_timeout, write_stall_timeout) = (config.frame_read_timeout, config.write_stall_timeout);
    let decode_limits = config.decode_limits;
    let mut callee = Callee::new(service, config, Some(shutdown), limits, peer, stats.counters.clone());
    // A service with callback methods gets a calling half toward a client that can be
    // called back; its handlers reach it through their `Callback` arguments.
    let caller = (S::CALLBACKS && negotiated.capabilities & caps::CALLBACKS != 0).then(|| {
        let (channel, shared) =
            Channel::<CallbackCall, ByteBuf>::for_engine(PeerInfo::of(&negotiated), ClientConfig::default());
        callee.set_callbacks(channel, negotiated.codec, negotiated.send_limit);
        let limits = CallerLimits {
            window: CALLBACK_WINDOW,
            oneway_window: 0,
            up_window: 0,
            down_window: 0,
            max_message: negotiated.send_limit,
        };
        Caller::new(shared, limits)
    });
    let settings = Settings {
        peer: "client",
        capabilities: negotiated.capabilities,
        codec: negotiated.codec,
        send_limit: negotiated.send_limit,
        frame_read_timeout,
        write_stall_timeout,
        decode: decode_limits,
        counters: stats.counters.clone(),
    };
    let ended = Engine::<_, S, CallbackCall, ByteBuf>::new(transport, settings, caller, Some(callee)).await;
    drop(stats);
    ended
}

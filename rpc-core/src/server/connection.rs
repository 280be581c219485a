//! One client connection on the server: the handshake, then the connection engine with
//! its serving half (see `crate::engine`) until the client leaves or the server drains.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use super::ServerConfig;
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

/// What the accept loop decided about a connection before its handshake.
pub(crate) struct Admission {
    /// Answer the handshake with this refusal.
    pub(crate) refuse: Option<(HandshakeStatus, String)>,
    /// The client's credentials, if the pipe reports them; handlers see them.
    pub(crate) peer: Option<PeerCredentials>,
}

pub(crate) async fn serve<IO, S>(
    io: IO,
    service: Arc<S>,
    config: Arc<ServerConfig>,
    shutdown: CancellationToken,
    admit: Admission,
) -> Result<(), TransportError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: Service,
{
    let max = config.effective_max_message();
    let mut framed = transport_pipe::length_delimited(io, max);
    let Admission { refuse, peer } = admit;
    let refuse = refuse.or_else(|| {
        shutdown.is_cancelled().then(|| (HandshakeStatus::ShuttingDown, "the server is shutting down".to_owned()))
    });
    let offer = handshake::ServerOffer {
        max_message: max,
        max_in_flight: config.max_in_flight_per_connection,
        max_oneway: config.max_oneway_per_connection,
        stream_window: config.stream_window,
    };
    let negotiated = handshake::server(&mut framed, S::ID, offer, config.handshake_timeout, refuse).await?;
    let transport = crate::engine::pipe(framed, negotiated.codec);
    let limits =
        // The largest item either side may send is what a stream may overshoot its credit by.
        StreamLimits {
            up_window: config.stream_window,
            down_window: negotiated.peer_stream_window,
            max_message: negotiated.send_limit,
        };
    let mut callee = Callee::new(service, config, Some(shutdown), limits, peer);
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
    };
    Engine::<_, S, CallbackCall, ByteBuf>::new(transport, settings, caller, Some(callee)).await
}

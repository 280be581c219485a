//! Both sides of the connection handshake (see [`crate::wire`]).

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;
use transport_pipe::LengthPrefixed;

use crate::codec::Codec;
use crate::error::{RpcError, TransportError};
use crate::introspect::{MethodInfo, ServerDescription};
use crate::service::ServiceId;
use crate::wire::{
    FEATURE_INTROSPECTION, HELLO_PROBE, HandshakeStatus, Hello, MIN_PROTOCOL_VERSION, OfferedMethod, PROTOCOL_VERSION,
    Welcome, caps, codec_bits, codec_name,
};

/// What a finished handshake settled.
#[derive(Clone, Debug)]
pub(crate) struct Negotiated {
    pub(crate) codec: Codec,
    /// Largest message this side may send: the smaller of both sides' limits.
    pub(crate) send_limit: usize,
    pub(crate) peer_pid: u32,
    /// The protocol version in force.
    pub(crate) version: u16,
    /// The capabilities both sides announced.
    pub(crate) capabilities: u32,
    /// Calls the peer admits at once (the server's `max_in_flight_per_connection`).
    pub(crate) window: usize,
    /// One-way calls the peer admits before it grants more credit.
    pub(crate) oneway_window: u32,
    /// Bytes of our stream items the peer accepts before it gives credit.
    pub(crate) peer_stream_window: u32,
    /// On a client with [`caps::EVOLUTION`] in force: each of its methods and what the
    /// server said about it.
    pub(crate) method_status: Option<crate::evolution::MethodStatuses>,
    /// On a server whose client numbers the wire enums' variants otherwise: its places to ours.
    pub(crate) translation: Option<std::sync::Arc<crate::engine::VariantMap>>,
}

fn io_to_transport(e: std::io::Error, during: &str) -> TransportError {
    // The pipe to a child ended because the child exited (see `crate::child`).
    if let Some(exit) = crate::child::exit_in(&e) {
        return exit;
    }
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted => {
            TransportError::Disconnected { detail: format!("the peer closed the pipe during {during}") }
        }
        std::io::ErrorKind::InvalidData => TransportError::Protocol { detail: format!("during {during}: {e}") },
        _ => TransportError::Io { detail: format!("during {during}: {e}") },
    }
}

/// Client side: send `Hello`, read `Welcome`, within `timeout`.
pub(crate) async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, LengthPrefixed>,
    service: ServiceId,
    codec: Codec,
    max_message: usize,
    stream_window: u32,
    timeout: Duration,
) -> Result<Negotiated, RpcError> {
    // Evolution needs a method table to offer.
    let table = service.methods();
    let announced = if table.is_some() { caps::SUPPORTED } else { caps::SUPPORTED & !caps::EVOLUTION };
    let offered = table.unwrap_or_default().iter();
    let hello = Hello {
        methods: offered.map(|m| OfferedMethod { name: m.name.to_owned(), shape: m.shape, upload: m.upload }).collect(),
        flags: 0,
        version: PROTOCOL_VERSION,
        min_version: MIN_PROTOCOL_VERSION,
        capabilities: announced,
        stream_window,
        codec: codec.id(),
        max_message: max_message as u32,
        fingerprint: service.fingerprint,
        service: service.name.to_owned(),
    };
    let welcome = exchange(framed, &hello, timeout).await?;
    let refused = |what: String| -> RpcError {
        let extra = if welcome.message.is_empty() { String::new() } else { format!(" ({})", welcome.message) };
        TransportError::Incompatible { detail: format!("{what}{extra}") }.into()
    };
    match welcome.status {
        HandshakeStatus::Ok => {}
        HandshakeStatus::VersionUnsupported => {
            return Err(refused(format!(
                "protocol version mismatch: client speaks v{MIN_PROTOCOL_VERSION} to v{PROTOCOL_VERSION}, \
                 server speaks up to v{}",
                welcome.version
            )));
        }
        HandshakeStatus::WrongService => {
            return Err(refused(format!(
                "wrong service: client wants `{}`, server serves `{}`",
                service.name, welcome.service
            )));
        }
        HandshakeStatus::FingerprintMismatch => {
            return Err(refused(format!(
                "service `{}` fingerprint mismatch: client {:016x}, server {:016x} (the two were built from different versions of the trait)",
                service.name, service.fingerprint, welcome.fingerprint
            )));
        }
        HandshakeStatus::CodecUnsupported => {
            return Err(refused(format!("the server does not support the {} codec", codec.name())));
        }
        HandshakeStatus::Overloaded | HandshakeStatus::ShuttingDown | HandshakeStatus::PermissionDenied => {
            return Err(turned_away(&welcome));
        }
        HandshakeStatus::ProtocolError => {
            let detail = format!("the server refused the handshake: {}", welcome.message);
            return Err(TransportError::Protocol { detail }.into());
        }
        HandshakeStatus::Described => {
            let detail = "the server answered a probe the client did not send".to_owned();
            return Err(TransportError::Protocol { detail }.into());
        }
    }
    if welcome.codec != codec.id() {
        return Err(refused(format!(
            "the server chose the {} codec, the client asked for {}",
            codec_name(welcome.codec),
            codec.name()
        )));
    }
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&welcome.version) {
        return Err(refused(format!(
            "the server chose protocol v{}, the client speaks v{MIN_PROTOCOL_VERSION} to v{PROTOCOL_VERSION}",
            welcome.version
        )));
    }
    if welcome.capabilities & !announced != 0 {
        return Err(refused(format!(
            "the server enabled capabilities {:#x} the client did not announce (it announced {:#x})",
            welcome.capabilities, announced
        )));
    }
    let method_status = match table {
        Some(table) if welcome.capabilities & caps::EVOLUTION != 0 => {
            if welcome.method_status.len() != table.len() {
                let detail = format!(
                    "the server answered for {} methods, the client offered {}",
                    welcome.method_status.len(),
                    table.len()
                );
                return Err(TransportError::Protocol { detail }.into());
            }
            Some(table.iter().map(|m| m.name).zip(welcome.method_status.iter().copied()).collect())
        }
        _ => None,
    };
    Ok(Negotiated {
        codec,
        send_limit: max_message.min(welcome.max_message as usize),
        peer_pid: welcome.server_pid,
        version: welcome.version,
        capabilities: welcome.capabilities,
        window: welcome.max_in_flight.max(1) as usize,
        oneway_window: welcome.max_oneway,
        peer_stream_window: welcome.stream_window,
        method_status,
        translation: None,
    })
}

/// The error for a server that turned a client (or a probe) away for now, not for what it
/// is: busy, shutting down, or not admitting this client. Other statuses are not for here.
fn turned_away(welcome: &Welcome) -> RpcError {
    let message = &welcome.message;
    match welcome.status {
        HandshakeStatus::Overloaded => {
            TransportError::Busy { detail: format!("server refused the connection: {message}") }.into()
        }
        HandshakeStatus::ShuttingDown => {
            TransportError::NotRunning { detail: format!("server is shutting down: {message}") }.into()
        }
        _ => {
            let detail = format!("the server does not admit this client: {message}");
            TransportError::PermissionDenied { detail }.into()
        }
    }
}

/// Sends `hello` and reads the server's `Welcome`, within `timeout`.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, LengthPrefixed>,
    hello: &Hello,
    timeout: Duration,
) -> Result<Welcome, RpcError> {
    let exchange = async {
        framed.send(Bytes::from(hello.encode())).await.map_err(|e| io_to_transport(e, "the handshake"))?;
        match framed.next().await {
            Some(Ok(frame)) => Welcome::decode(&frame).map_err(|e| TransportError::Protocol { detail: e.to_string() }),
            Some(Err(e)) => Err(io_to_transport(e, "the handshake")),
            None => Err(TransportError::Disconnected {
                detail: "the server closed the pipe before answering the handshake".into(),
            }),
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(TransportError::Protocol {
            detail: format!("the server did not answer the handshake within {}", crate::error::fmt_duration(timeout)),
        }
        .into()),
    }
}

/// Client side of a probe (`crate::introspect::probe`): a hello with [`HELLO_PROBE`] and
/// no service, and the server's description in its answer. A server that predates probes
/// refuses it as a wrong service, naming the service: described as `legacy`.
pub(crate) async fn probe<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, LengthPrefixed>,
    codec: Codec,
    max_message: usize,
    timeout: Duration,
) -> Result<ServerDescription, RpcError> {
    let hello = Hello {
        methods: Vec::new(),
        flags: HELLO_PROBE,
        version: PROTOCOL_VERSION,
        min_version: MIN_PROTOCOL_VERSION,
        capabilities: caps::SUPPORTED,
        stream_window: 0,
        codec: codec.id(),
        max_message: max_message as u32,
        fingerprint: 0,
        service: String::new(),
    };
    let w = exchange(framed, &hello, timeout).await?;
    let legacy = match w.status {
        HandshakeStatus::Described => false,
        HandshakeStatus::WrongService | HandshakeStatus::FingerprintMismatch => true,
        HandshakeStatus::Overloaded | HandshakeStatus::ShuttingDown | HandshakeStatus::PermissionDenied => {
            return Err(turned_away(&w));
        }
        HandshakeStatus::VersionUnsupported => {
            let detail = format!(
                "protocol version mismatch: client speaks v{MIN_PROTOCOL_VERSION} to v{PROTOCOL_VERSION}, server speaks up to v{} ({})",
                w.version, w.message
            );
            return Err(TransportError::Incompatible { detail }.into());
        }
        other => {
            let detail = format!("the server answered a probe with {other:?} ({})", w.message);
            return Err(TransportError::Protocol { detail }.into());
        }
    };
    let known: Vec<Codec> = Codec::ALL.into_iter().filter(|c| w.codecs & codec_bits(&[*c]) != 0).collect();
    let unknown_codecs = (0..32u8).filter(|id| w.codecs & (1 << id) != 0 && Codec::from_id(*id).is_none()).collect();
    Ok(ServerDescription {
        service: w.service,
        fingerprint: w.fingerprint,
        protocol_version: w.version,
        codecs: known,
        unknown_codecs,
        capabilities: w.capabilities,
        max_message: w.max_message,
        max_in_flight: if legacy { 0 } else { w.max_in_flight },
        max_oneway: w.max_oneway,
        stream_window: w.stream_window,
        server_pid: w.server_pid,
        server: None,
        introspection: w.features & FEATURE_INTROSPECTION != 0,
        methods: w.methods,
        legacy,
    })
}

/// The limits a server announces in its `Welcome`, and what it tells a probe.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServerOffer {
    pub(crate) max_message: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) max_oneway: usize,
    pub(crate) stream_window: u32,
    /// The methods, if the server describes them to probes (introspection on).
    pub(crate) methods: Option<&'static [MethodInfo]>,
}

/// The codecs every server of this build accepts, as `Welcome::codecs` bits.
fn accepted_codecs() -> u32 {
    codec_bits(&Codec::ALL)
}

/// Largest hello a server reads.
const HELLO_MAX: usize = 64 * 1024;

/// How long a refusal waits for the client's hello (or its close) after answering, so the
/// client has finished writing and reads the answer instead of a broken pipe.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Reads the client's hello within `timeout`; on anything but a hello, answers the client
/// with [`HandshakeStatus::ProtocolError`] saying what was wrong (best effort) and fails.
async fn read_hello<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, LengthPrefixed>,
    service: ServiceId,
    timeout: Duration,
) -> Result<Hello, TransportError> {
    // A hello is a few hundred bytes: a client (admitted or not) must not make the server
    // buffer a whole message's worth before it has even said who it is.
    let max_frame = framed.codec().max_frame_length();
    framed.codec_mut().set_max_frame_length(max_frame.min(HELLO_MAX));
    let hello = tokio::time::timeout(timeout, framed.next()).await;
    framed.codec_mut().set_max_frame_length(max_frame);
    let why = match hello {
        Ok(Some(Ok(frame))) => match Hello::decode(&frame) {
            Ok(hello) => return Ok(hello),
            Err(e) => format!("the first frame is not a pipe-rpc hello: {e}"),
        },
        Ok(None) => return Err(TransportError::Disconnected { detail: "the client left before the handshake".into() }),
        Ok(Some(Err(e))) if e.kind() == std::io::ErrorKind::InvalidData => {
            format!("the hello is not acceptable: {e} (a hello is at most {HELLO_MAX} bytes)")
        }
        Ok(Some(Err(e))) => return Err(io_to_transport(e, "the handshake")),
        Err(_) => format!("the client sent no handshake within {}", crate::error::fmt_duration(timeout)),
    };
    let welcome = refusal(service, HandshakeStatus::ProtocolError, why.clone());
    // Best effort: the client may not read at all.
    let _ = tokio::time::timeout(REFUSAL_LINGER, framed.send(Bytes::from(welcome.encode()))).await;
    Err(TransportError::Protocol { detail: why })
}

/// A `Welcome` that refuses, with `message` saying why.
fn refusal(service: ServiceId, status: HandshakeStatus, message: String) -> Welcome {
    Welcome {
        method_status: Vec::new(),
        max_oneway: 0,
        stream_window: 0,
        version: PROTOCOL_VERSION,
        capabilities: 0,
        max_in_flight: 0,
        status,
        codec: 0,
        max_message: 0,
        fingerprint: service.fingerprint,
        server_pid: std::process::id(),
        service: service.name.to_owned(),
        message,
        codecs: accepted_codecs(),
        features: 0,
        methods: Vec::new(),
    }
}

/// Server side, for a client refused before it is heard (by the access policy, or
/// because too many connections are in their handshake): the refusal is written at once,
/// then the server waits at most [`REFUSAL_LINGER`] for the hello, so the client reads
/// the refusal rather than a broken pipe, and a silent client holds nothing for long.
pub(crate) async fn refuse_early<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, LengthPrefixed>,
    service: ServiceId,
    status: HandshakeStatus,
    message: String,
) -> TransportError {
    let welcome = refusal(service, status, message.clone());
    if let Ok(Ok(())) = tokio::time::timeout(REFUSAL_LINGER, framed.send(Bytes::from(welcome.encode()))).await {
        framed.codec_mut().set_max_frame_length(HELLO_MAX);
        let _ = tokio::time::timeout(REFUSAL_LINGER, framed.next()).await;
    }
    TransportError::Incompatible { detail: format!("refused client: {status:?} {message}") }
}

/// Server side: read `Hello` within `timeout`, answer `Welcome`. `decide`, called with the
/// connection once the client has been heard, may force a refusal (access, overload,
/// shutdown) so the client gets a typed reason.
pub(crate) async fn server<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, LengthPrefixed>,
    service: ServiceId,
    offer: ServerOffer,
    timeout: Duration,
    decide: impl FnOnce(&S) -> Option<(HandshakeStatus, String)>,
) -> Result<Negotiated, TransportError> {
    let hello = read_hello(framed, service, timeout).await?;
    let refuse = decide(framed.get_ref());
    let ServerOffer { max_message, max_in_flight, max_oneway, stream_window, methods } = offer;
    let codec = Codec::from_id(hello.codec);
    // The newest version both speak, if it is one both accept.
    let version = hello.version.min(PROTOCOL_VERSION);
    let probe = hello.flags & HELLO_PROBE != 0;
    // Evolution needs both sides' method tables: then the fingerprint is not a refusal, the
    // client learns per method what it may call.
    let table = service.methods();
    let offered = if table.is_some() { caps::SUPPORTED } else { caps::SUPPORTED & !caps::EVOLUTION };
    let capabilities = hello.capabilities & offered;
    let evolution = table.filter(|_| capabilities & caps::EVOLUTION != 0);
    let (status, message) = if let Some(r) = refuse {
        r
    } else if probe {
        // Answered whatever the client's versions and codec: it asked what we are.
        (HandshakeStatus::Described, String::new())
    } else if version < hello.min_version.max(MIN_PROTOCOL_VERSION) {
        (
            HandshakeStatus::VersionUnsupported,
            format!("server speaks protocol v{MIN_PROTOCOL_VERSION} to v{PROTOCOL_VERSION}"),
        )
    } else if hello.service != service.name {
        (HandshakeStatus::WrongService, format!("this pipe serves `{}`", service.name))
    } else if hello.fingerprint != service.fingerprint && evolution.is_none() {
        (HandshakeStatus::FingerprintMismatch, String::new())
    } else if codec.is_none() {
        (HandshakeStatus::CodecUnsupported, format!("unknown codec id {}", hello.codec))
    } else {
        (HandshakeStatus::Ok, String::new())
    };
    let ok = status == HandshakeStatus::Ok;
    let described = status == HandshakeStatus::Described;
    let versions_meet = version >= hello.min_version.max(MIN_PROTOCOL_VERSION);
    let max_in_flight = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    let max_oneway = u32::try_from(max_oneway).unwrap_or(u32::MAX);
    let (method_status, translation) = match (evolution, codec) {
        (Some(table), Some(codec)) if ok => crate::evolution::answer(table, &hello.methods, codec),
        _ => (Vec::new(), None),
    };
    let welcome = Welcome {
        method_status,
        codecs: accepted_codecs(),
        features: if methods.is_some() { FEATURE_INTROSPECTION } else { 0 },
        methods: match methods {
            Some(methods) if described => methods.to_vec(),
            _ => Vec::new(),
        },
        max_oneway,
        stream_window,
        version: if ok || (described && versions_meet) { version } else { PROTOCOL_VERSION },
        capabilities,
        max_in_flight,
        status,
        codec: hello.codec,
        max_message: max_message as u32,
        fingerprint: service.fingerprint,
        server_pid: std::process::id(),
        service: service.name.to_owned(),
        message: message.clone(),
    };
    // A refused client still gets its answer before the pipe closes.
    tokio::time::timeout(timeout, framed.send(Bytes::from(welcome.encode())))
        .await
        .map_err(|_| TransportError::Protocol { detail: "the client did not read the handshake answer".into() })?
        .map_err(|e| io_to_transport(e, "the handshake"))?;
    match (status, codec) {
        (HandshakeStatus::Described, _) => {
            Err(TransportError::Disconnected { detail: "a probe: the server described itself and closed".into() })
        }
        (HandshakeStatus::Ok, Some(codec)) => Ok(Negotiated {
            codec,
            send_limit: max_message.min(hello.max_message as usize),
            peer_pid: 0,
            version,
            capabilities,
            window: usize::MAX,
            oneway_window: 0,
            peer_stream_window: hello.stream_window,
            method_status: None,
            translation: translation.map(std::sync::Arc::new),
        }),
        _ => Err(TransportError::Incompatible { detail: format!("refused client: {status:?} {message}") }),
    }
}

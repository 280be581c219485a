//! The frame carrier: a `tokio_serde` transport over the length-prefixed pipe
//! ([`FramedPipe`]: it buffers only what arrived, and writes large messages from their own
//! buffers), with [`FrameCodec`] turning typed [`Frame`]s into bytes and back.
//!
//! The engine is written against [`FrameTransport`], not against the concrete type, so
//! another carrier (TCP, say) can run the same engine; it also asks the carrier whether a
//! frame is half-read and how much it has not written yet, for its frame-read and
//! write-stall timeouts.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};

use crate::wire::{HEADER_LEN, Kind};
use futures::{Sink, Stream};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;
use transport_pipe::{FramedPipe, LengthPrefixed};

use super::translate::{Translator, VariantMap};
use crate::codec::{Codec, DecodeLimits};
use crate::wire::{Frame, FrameError};

/// A message read from the peer: one frame, or a batch of them.
pub(crate) enum Inbound<C, R> {
    One(InFrame<C, R>),
    /// The body of a `Batch` frame (after its header), read frame by frame by the engine.
    Batch(Bytes),
    /// The peer closes the connection, for this reason (an `Abort` frame).
    Abort(String),
    /// The server has drained and asks us to close (a `Goodbye` frame).
    Goodbye,
}

/// A frame read from the peer, or why it could not be read (header or body), and its size
/// in bytes (streams' credit is counted in frame bytes).
pub(crate) struct InFrame<C, R> {
    pub(crate) frame: Result<Frame<C, R>, FrameError>,
    pub(crate) len: u32,
}

/// An encoded message to send: one frame or a batch (see [`Outbox`](super::outbox::Outbox)).
pub(crate) enum Outbound {
    One(Bytes),
    /// One frame in parts, in order: its bytes around its blobs, and the blobs' own memory
    /// (only to a carrier that [takes parts](FrameTransport::takes_parts)).
    Parts(Vec<Bytes>),
}

impl Outbound {
    /// Its size in bytes (without the length prefix the carrier adds).
    pub(crate) fn len(&self) -> usize {
        match self {
            Outbound::One(b) => b.len(),
            Outbound::Parts(parts) => parts.iter().map(Bytes::len).sum(),
        }
    }

    /// The message as one buffer (parts are copied into one).
    pub(crate) fn join(self) -> Bytes {
        match self {
            Outbound::One(b) => b,
            Outbound::Parts(parts) => {
                let mut whole = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
                parts.iter().for_each(|p| whole.extend_from_slice(p));
                whole.freeze()
            }
        }
    }
}

// tarpc's serde transport requires `Item: Deserialize` and `SinkItem: Serialize`; the real
// work is done by `FrameCodec`'s `tokio_serde` impls below, which never call these.
impl<'de, C, R> Deserialize<'de> for Inbound<C, R> {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("frames are decoded by FrameCodec only"))
    }
}

impl Serialize for Outbound {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("frames are encoded by FrameCodec only"))
    }
}

/// What the engine needs of a carrier: a stream of inbound messages and a sink of
/// outbound ones. Errors are I/O errors.
pub(crate) trait FrameTransport<In, Out>: Stream<Item = io::Result<In>> + Sink<Out, Error = io::Error> {
    /// Bytes of a frame not yet complete are buffered.
    fn mid_frame(&self) -> bool;
    /// Bytes accepted by the sink but not yet written to the pipe.
    fn unwritten(&self) -> usize;
    /// Whether [`Outbound::Parts`] are sent as they are (one message, its parts written
    /// from their own memory). A carrier that rewrites messages on their way says no, and
    /// gets every message whole.
    fn takes_parts(&self) -> bool;
}

/// The pipe carrier: `tokio_serde` over [`FramedPipe`], with messages in parts handed to
/// the pipe directly (they need no serializing, and `tokio_serde` takes one buffer per
/// message).
pub(crate) struct Carrier<IO, C, R> {
    framed: tokio_serde::Framed<FramedPipe<IO>, Inbound<C, R>, Outbound, FrameCodec>,
    /// No translator: messages go out as encoded.
    parts: bool,
}

impl<IO, C, R> FrameTransport<Inbound<C, R>, Outbound> for Carrier<IO, C, R>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    C: DeserializeOwned,
    R: DeserializeOwned,
{
    fn mid_frame(&self) -> bool {
        !self.framed.get_ref().read_buffer().is_empty()
    }

    fn unwritten(&self) -> usize {
        self.framed.get_ref().unwritten()
    }

    fn takes_parts(&self) -> bool {
        self.parts
    }
}

impl<IO, C, R> Stream for Carrier<IO, C, R>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    C: DeserializeOwned,
    R: DeserializeOwned,
{
    type Item = io::Result<Inbound<C, R>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.get_mut().framed).poll_next(cx)
    }
}

impl<IO, C, R> Sink<Outbound> for Carrier<IO, C, R>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().framed).poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Outbound) -> io::Result<()> {
        let this = self.get_mut();
        match item {
            // `tokio_serde`'s sink serializes (here: hands on or translates) and passes the
            // bytes to the pipe at once, so going around it keeps the order.
            Outbound::Parts(parts) if this.parts => this.framed.get_mut().start_send_parts(&parts),
            Outbound::Parts(parts) => {
                Pin::new(&mut this.framed).start_send(Outbound::One(Outbound::Parts(parts).join()))
            }
            one => Pin::new(&mut this.framed).start_send(one),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().framed).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().framed).poll_close(cx)
    }
}

/// The `tokio_serde` codec of one connection. Frames are encoded by the engine (into its
/// [`Outbox`](super::outbox::Outbox)), so sending only hands the bytes on; reading decodes
/// a lone frame at once and hands a batch's body to the engine to read frame by frame.
#[derive(Debug)]
pub(crate) struct FrameCodec {
    codec: Codec,
    limits: DecodeLimits,
    /// On a server whose client numbers the wire enums' variants otherwise.
    translator: Option<Translator>,
}

impl tokio_serde::Serializer<Outbound> for FrameCodec {
    type Error = io::Error;

    fn serialize(self: Pin<&mut Self>, item: &Outbound) -> Result<Bytes, io::Error> {
        let Outbound::One(bytes) = item else {
            // `Carrier` joins parts before they reach here.
            return Err(io::Error::other("a message in parts reached the serializer"));
        };
        if let Some(t) = &mut self.get_mut().translator {
            if let Some(translated) = t.outbound(bytes) {
                return Ok(translated);
            }
        }
        Ok(bytes.clone())
    }
}

impl<C: DeserializeOwned, R: DeserializeOwned> tokio_serde::Deserializer<Inbound<C, R>> for FrameCodec {
    type Error = io::Error;

    fn deserialize(self: Pin<&mut Self>, src: &BytesMut) -> Result<Inbound<C, R>, io::Error> {
        let this = self.get_mut();
        if let Some(reason) = crate::wire::read_abort(src) {
            return Ok(Inbound::Abort(reason));
        }
        if crate::wire::is_goodbye(src) {
            return Ok(Inbound::Goodbye);
        }
        if src.len() >= HEADER_LEN && src[0] == Kind::Batch.code() {
            // One copy of the batch (the framing layer keeps its buffer), then each frame
            // is decoded from it in place.
            let Some(t) = &mut this.translator else {
                return Ok(Inbound::Batch(Bytes::copy_from_slice(&src[HEADER_LEN..])));
            };
            let mut body = BytesMut::from(&src[HEADER_LEN..]);
            t.inbound_batch(&mut body);
            return Ok(Inbound::Batch(body.freeze()));
        }
        // The length-delimited codec caps frames far below 4 GiB.
        let len = u32::try_from(src.len()).unwrap_or(u32::MAX);
        let translated = this.translator.as_mut().and_then(|t| t.inbound(src));
        let frame = translated.as_deref().unwrap_or(&src[..]);
        Ok(Inbound::One(InFrame { frame: Frame::decode_with(this.codec, this.limits, frame), len }))
    }
}

/// Wraps a handshaken, framed stream into the pipe carrier; `translation`, on a server,
/// when its client numbers the wire enums' variants otherwise (see [`super::translate`]).
pub(crate) fn pipe<IO, InC, InR>(
    framed: Framed<IO, LengthPrefixed>,
    codec: Codec,
    limits: DecodeLimits,
    translation: Option<Arc<VariantMap>>,
) -> Carrier<IO, InC, InR>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    InC: DeserializeOwned,
    InR: DeserializeOwned,
{
    Carrier {
        parts: translation.is_none(),
        framed: tokio_serde::Framed::new(
            FramedPipe::from_framed(framed),
            FrameCodec { codec, limits, translator: translation.map(Translator::new) },
        ),
    }
}

//! The frame carrier: `tarpc::serde_transport` over the length-delimited pipe, with
//! [`FrameCodec`] turning typed [`Frame`]s into bytes and back.
//!
//! The engine is written against [`FrameTransport`], not against tarpc's concrete type, so
//! another carrier (an in-memory pair, TCP) can run the same engine.

use std::io;
use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures::{Sink, Stream};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::codec::Codec;
use crate::wire::{Frame, FrameError};

/// A frame read from the peer, or why it could not be read (header or body), and its size
/// in bytes (streams' credit is counted in frame bytes).
pub(crate) struct Inbound<C, R> {
    pub(crate) frame: Result<Frame<C, R>, FrameError>,
    pub(crate) len: u32,
}

/// A frame to send: typed, or already encoded (one-way calls are encoded by their callers,
/// so an oversized or unencodable one fails in the caller, at once).
pub(crate) enum Outbound<C, R> {
    Frame(Frame<C, R>),
    Encoded(Bytes),
}

// tarpc's serde transport requires `Item: Deserialize` and `SinkItem: Serialize`; the real
// work is done by `FrameCodec`'s `tokio_serde` impls below, which never call these.
impl<'de, C, R> Deserialize<'de> for Inbound<C, R> {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("frames are decoded by FrameCodec only"))
    }
}

impl<C, R> Serialize for Outbound<C, R> {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("frames are encoded by FrameCodec only"))
    }
}

/// What the engine needs of a carrier: a stream of inbound frames and a sink of outbound
/// ones. Errors are I/O errors; an encoding failure in `start_send` wraps an
/// [`EncodeError`](crate::codec::EncodeError) (find it with
/// [`encode_error`](crate::codec::encode_error)) and leaves the carrier usable.
pub(crate) trait FrameTransport<In, Out>: Stream<Item = io::Result<In>> + Sink<Out, Error = io::Error> {}

impl<T, In, Out> FrameTransport<In, Out> for T where T: Stream<Item = io::Result<In>> + Sink<Out, Error = io::Error> {}

/// The `tokio_serde` codec of one connection: a [`Codec`] and the send limit negotiated in
/// the handshake, and one buffer reused for every frame encoded.
#[derive(Debug)]
pub(crate) struct FrameCodec {
    codec: Codec,
    send_limit: usize,
    buf: BytesMut,
}

impl<C: Serialize, R: Serialize> tokio_serde::Serializer<Outbound<C, R>> for FrameCodec {
    type Error = io::Error;

    fn serialize(self: Pin<&mut Self>, item: &Outbound<C, R>) -> Result<Bytes, io::Error> {
        let this = self.get_mut();
        match item {
            Outbound::Frame(frame) => frame
                .encode_into(this.codec, this.send_limit, &mut this.buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e)),
            Outbound::Encoded(bytes) => Ok(bytes.clone()),
        }
    }
}

impl<C: DeserializeOwned, R: DeserializeOwned> tokio_serde::Deserializer<Inbound<C, R>> for FrameCodec {
    type Error = io::Error;

    fn deserialize(self: Pin<&mut Self>, src: &BytesMut) -> Result<Inbound<C, R>, io::Error> {
        // The length-delimited codec caps frames far below 4 GiB.
        let len = u32::try_from(src.len()).unwrap_or(u32::MAX);
        Ok(Inbound { frame: Frame::decode(self.codec, src), len })
    }
}

/// Wraps a handshaken, framed stream into the pipe carrier.
pub(crate) fn pipe<IO, InC, InR, OutC, OutR>(
    framed: Framed<IO, LengthDelimitedCodec>,
    codec: Codec,
    send_limit: usize,
) -> transport_pipe::Transport<IO, Inbound<InC, InR>, Outbound<OutC, OutR>, FrameCodec>
where
    IO: AsyncRead + AsyncWrite,
    InC: DeserializeOwned,
    InR: DeserializeOwned,
    OutC: Serialize,
    OutR: Serialize,
{
    transport_pipe::serde_transport(framed, FrameCodec { codec, send_limit, buf: BytesMut::new() })
}

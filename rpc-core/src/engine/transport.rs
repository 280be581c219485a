//! The frame carrier: a `tokio_serde` transport over the length-prefixed pipe
//! ([`FramedPipe`]: it buffers only what arrived, and writes large messages from their own
//! buffers), with [`FrameEncoder`] handing on the frames the engine encoded and
//! [`FrameDecoder`] turning what arrives into typed [`Frame`]s.
//!
//! The engine is written against [`FrameTransport`], not against the concrete type, so
//! another carrier (TCP, say) can run the same engine; it also asks the carrier whether a
//! frame is half-read and how much it has not written yet, for its frame-read and
//! write-stall timeouts.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};

use crate::wire::{HEADER_LEN, Kind};
use futures::{Sink, Stream};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;
use transport_pipe::{FramedPipe, LengthPrefixed};

use super::translate::{Translator, VariantMap};
use crate::Blob;
use crate::blob;
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

/// The pipe carrier: `tokio_serde` over [`FramedPipe`] for sending, with messages in parts
/// handed to the pipe directly (they need no serializing, and `tokio_serde` takes one buffer
/// per message); reading takes each message from the pipe as it is, so that the decoder owns
/// it (see [`FrameDecoder`]).
pub(crate) struct Carrier<IO, C, R> {
    framed: tokio_serde::Framed<FramedPipe<IO>, Inbound<C, R>, Outbound, FrameEncoder>,
    decoder: FrameDecoder,
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
        // No translator: messages go out as encoded.
        self.decoder.translator.is_none()
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
        let this = self.get_mut();
        // `tokio_serde`'s stream would lend the decoder each message (`&BytesMut`); owning
        // it, the decoder reads batches in place and lets large blobs share its memory.
        match ready!(Pin::new(this.framed.get_mut()).poll_next(cx)) {
            Some(Ok(message)) => Poll::Ready(Some(Ok(this.decoder.decode(message)))),
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => Poll::Ready(None),
        }
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
            Outbound::Parts(parts) if this.decoder.translator.is_none() => {
                this.framed.get_mut().start_send_parts(&parts)
            }
            item => Pin::new(&mut this.framed).start_send(item),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().framed).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().framed).poll_close(cx)
    }
}

/// A connection's translator, if its client numbers the wire enums' variants otherwise:
/// shared by the two directions, which both track the items sent in pieces.
type SharedTranslator = Option<Arc<Mutex<Translator>>>;

fn lock(translator: &Mutex<Translator>) -> std::sync::MutexGuard<'_, Translator> {
    // A panic while translating leaves nothing half-done that matters: the map is
    // read-only and the set of items in pieces only decides where a later piece goes.
    translator.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `tokio_serde` serializer of one connection. Frames are encoded by the engine (into
/// its [`Outbox`](super::outbox::Outbox)), so sending only hands the bytes on, translated
/// if need be.
#[derive(Debug)]
pub(crate) struct FrameEncoder {
    translator: SharedTranslator,
}

impl tokio_serde::Serializer<Outbound> for FrameEncoder {
    type Error = io::Error;

    fn serialize(self: Pin<&mut Self>, item: &Outbound) -> Result<Bytes, io::Error> {
        // Parts come here only to be rewritten (`Carrier` sends them itself otherwise).
        let bytes = match item {
            Outbound::One(bytes) => bytes.clone(),
            Outbound::Parts(parts) => Outbound::Parts(parts.clone()).join(),
        };
        match &self.translator {
            Some(t) => Ok(lock(t).outbound(&bytes).unwrap_or(bytes)),
            None => Ok(bytes),
        }
    }
}

/// Reads each message of one connection: decodes a lone frame at once, and hands a batch's
/// body to the engine to read frame by frame. It owns each message (the framing layer has
/// split it off its read buffer), so a batch is read in place, and a large blob in a frame
/// is a slice of the frame's memory, not a copy ([`blob::lend`]).
#[derive(Debug)]
pub(crate) struct FrameDecoder {
    codec: Codec,
    limits: DecodeLimits,
    translator: SharedTranslator,
}

impl FrameDecoder {
    fn decode<C: DeserializeOwned, R: DeserializeOwned>(&mut self, mut message: BytesMut) -> Inbound<C, R> {
        if let Some(reason) = crate::wire::read_abort(&message) {
            return Inbound::Abort(reason);
        }
        if crate::wire::is_goodbye(&message) {
            return Inbound::Goodbye;
        }
        if message.len() >= HEADER_LEN && message[0] == Kind::Batch.code() {
            if let Some(t) = &self.translator {
                lock(t).inbound_batch(&mut message[HEADER_LEN..]);
            }
            return Inbound::Batch(message.freeze().slice(HEADER_LEN..));
        }
        // The length-delimited codec caps frames far below 4 GiB.
        let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
        if let Some(translated) = self.translator.as_ref().and_then(|t| lock(t).inbound(&message)) {
            return Inbound::One(InFrame { frame: Frame::decode_with(self.codec, self.limits, &translated), len });
        }
        let message = message.freeze();
        let _lent = (message.len() >= Blob::ZERO_COPY_MIN).then(|| blob::lend(&message));
        Inbound::One(InFrame { frame: Frame::decode_with(self.codec, self.limits, &message), len })
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
    let translator: SharedTranslator = translation.map(|map| Arc::new(Mutex::new(Translator::new(map))));
    Carrier {
        decoder: FrameDecoder { codec, limits, translator: translator.clone() },
        framed: tokio_serde::Framed::new(FramedPipe::from_framed(framed), FrameEncoder { translator }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder(codec: Codec) -> FrameDecoder {
        FrameDecoder { codec, limits: DecodeLimits::DEFAULT, translator: None }
    }

    /// The read buffer a message is split off, as the framing layer does.
    fn arrived(bytes: &[u8]) -> BytesMut {
        let mut read = BytesMut::with_capacity(bytes.len() + 64);
        read.extend_from_slice(bytes);
        read.extend_from_slice(&[0; 16]); // the start of the next message
        read.split_to(bytes.len())
    }

    #[test]
    fn a_large_blob_in_a_frame_is_read_in_place_and_a_small_one_is_copied() {
        for codec in [Codec::Bincode, Codec::Postcard] {
            for (len, in_place) in [(Blob::ZERO_COPY_MIN, true), (Blob::ZERO_COPY_MIN - 1, false)] {
                let blob = Blob::from(vec![9u8; len]);
                let frame = Frame::<(), Blob>::DownItem { id: 3, body: blob.clone() }.encode(codec, 1 << 20).unwrap();
                let message = arrived(&frame);
                let span = message.as_ptr() as usize..message.as_ptr() as usize + message.len();
                let Inbound::One(InFrame { frame: Ok(Frame::DownItem { id: 3, body }), .. }) =
                    decoder(codec).decode::<(), Blob>(message)
                else {
                    panic!("{codec:?}: not the item");
                };
                assert_eq!(body, blob, "{codec:?}, {len} bytes");
                assert_eq!(span.contains(&(body.as_ptr() as usize)), in_place, "{codec:?}, {len} bytes");
            }
        }
    }

    #[test]
    fn a_large_piece_is_read_in_place() {
        let piece = Bytes::from(vec![4u8; 64 * 1024]);
        let frame = Frame::<(), ()>::Piece { id: 2, from_opener: false, more: true, bytes: piece.clone() }
            .encode(Codec::Bincode, 1 << 20)
            .unwrap();
        let message = arrived(&frame);
        let span = message.as_ptr() as usize..message.as_ptr() as usize + message.len();
        let Inbound::One(InFrame { frame: Ok(Frame::Piece { bytes, .. }), .. }) =
            decoder(Codec::Bincode).decode::<(), ()>(message)
        else {
            panic!("not the piece");
        };
        assert_eq!(bytes, piece);
        assert!(span.contains(&(bytes.as_ptr() as usize)), "a copy");
    }

    #[test]
    fn a_batch_is_read_from_the_message_it_arrived_in() {
        let mut batch = BytesMut::from(&[0u8; HEADER_LEN][..]);
        batch[0] = Kind::Batch.code();
        batch.extend_from_slice(&[1, 2, 3]);
        let message = arrived(&batch);
        let body_at = message.as_ptr() as usize + HEADER_LEN;
        let Inbound::Batch(body) = decoder(Codec::Bincode).decode::<(), ()>(message) else {
            panic!("not a batch");
        };
        assert_eq!((body.as_ptr() as usize, &body[..]), (body_at, &[1u8, 2, 3][..]));
    }
}

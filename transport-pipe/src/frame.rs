//! Message framing over a byte stream, and the serde transport on top of it.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_serde::{Deserializer, Serializer};
use tokio_util::codec::{Decoder, Encoder, Framed, LengthDelimitedCodec};

pub use tarpc::serde_transport::Transport;

/// Default maximum frame (one message), both directions: 4 MiB.
///
/// The same default as gRPC's receive limit; large enough for ordinary RPC payloads, small
/// enough that a peer cannot make us reserve much memory per connection.
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;

/// Hard ceiling for any configured maximum: 64 MiB.
pub const MAX_FRAME_CEILING: usize = 64 * 1024 * 1024;

/// The maximum frame length actually used for a requested `max_frame`: values above
/// [`MAX_FRAME_CEILING`] are clamped to it, and 0 is raised to 1 (the smallest limit that
/// still admits a non-empty message).
pub const fn effective_max_frame(max_frame: usize) -> usize {
    if max_frame == 0 {
        1
    } else if max_frame > MAX_FRAME_CEILING {
        MAX_FRAME_CEILING
    } else {
        max_frame
    }
}

/// tokio-util's `LengthDelimitedCodec` with the same wire format and limit as
/// [`length_delimited`], for [`serde_transport`] (tarpc's transport is built on that codec).
///
/// Unlike [`LengthPrefixed`], it reserves the whole declared length as soon as a header
/// arrives and has no notion of a partial frame's age, so on a stream from an untrusted
/// peer `max_frame` is also the memory one connection can make it hold by sending only a
/// header. rpc-core's engine does not use it.
pub fn length_delimited_codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .big_endian()
        .max_frame_length(effective_max_frame(max_frame))
        .new_codec()
}

/// Length-delimited framing: a 4-byte big-endian length prefix, with `max_frame` enforced on
/// encode and decode (see [`LengthPrefixed`], which also bounds what a partial frame makes
/// the reader buffer). The limit is never unlimited: values above [`MAX_FRAME_CEILING`] are
/// clamped to it and 0 is treated as 1 (see [`effective_max_frame`]).
///
/// - Encoding a larger frame fails with an [`std::io::ErrorKind::InvalidInput`] error, and
///   nothing of it is written.
/// - Decoding a header that declares a larger frame fails with
///   [`std::io::ErrorKind::InvalidData`]; the stream is then unusable and should be dropped.
pub fn length_delimited<S: AsyncRead + AsyncWrite>(io: S, max_frame: usize) -> Framed<S, LengthPrefixed> {
    Framed::new(io, LengthPrefixed::new(max_frame))
}

/// How far ahead of the bytes actually received a partial frame's buffer is grown.
///
/// A header alone makes the reader reserve at most this much; beyond it the buffer grows
/// only as the body arrives (by doubling), so a peer that declares a large frame and sends
/// it slowly, or never, makes us hold about what it really sent.
pub const READ_AHEAD: usize = 64 * 1024;

/// Length-prefixed framing (the [`length_delimited`] wire format: a 4-byte big-endian length,
/// then that many bytes) that never reserves memory for bytes that have not arrived.
///
/// tokio-util's `LengthDelimitedCodec` reserves the whole declared length as soon as a
/// header arrives; with it, connections that each send a header claiming just under the
/// limit and then trickle one byte at a time made a server hold their full declared sizes.
/// This codec reserves past what was received at most [`READ_AHEAD`] or as much again as
/// arrived, whichever is larger: a partial frame's buffer holds at most about twice what the
/// peer really sent, plus 64 KiB, and growing it costs amortized copies only. Whether a frame is
/// unfinished (bytes of it buffered, the rest not yet here) is visible through
/// [`Framed::read_buffer`] being non-empty, which is what a frame-read timeout watches.
///
/// Errors say what happened: a declared length over the limit is
/// [`io::ErrorKind::InvalidData`] naming both sizes (before any of the body is buffered),
/// an end of stream in the middle of a frame is [`io::ErrorKind::UnexpectedEof`] naming how
/// much arrived, and encoding a frame over the limit is [`io::ErrorKind::InvalidInput`]
/// (nothing of it is written).
#[derive(Clone, Debug)]
pub struct LengthPrefixed {
    max_frame: usize,
}

impl LengthPrefixed {
    /// A codec with the limit `max_frame` (through [`effective_max_frame`]).
    pub fn new(max_frame: usize) -> Self {
        LengthPrefixed { max_frame: effective_max_frame(max_frame) }
    }

    /// The largest frame accepted, both ways.
    pub fn max_frame_length(&self) -> usize {
        self.max_frame
    }

    /// `Ok` if a frame of `len` bytes may be sent; else the [`io::ErrorKind::InvalidInput`]
    /// error naming both sizes.
    pub fn check_outgoing(&self, len: usize) -> io::Result<()> {
        if len > self.max_frame {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a frame of {len} bytes, over the limit of {} bytes", self.max_frame),
            ));
        }
        Ok(())
    }

    /// Changes the limit (through [`effective_max_frame`]), for frames not yet started.
    pub fn set_max_frame_length(&mut self, max_frame: usize) {
        self.max_frame = effective_max_frame(max_frame);
    }
}

pub(crate) const PREFIX: usize = 4;

impl Decoder for LengthPrefixed {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        let Some(head) = src.get(..PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(head.try_into().expect("4 bytes")) as usize;
        if len > self.max_frame {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a frame of {len} bytes, over this end's limit of {} bytes", self.max_frame),
            ));
        }
        let have = src.len() - PREFIX;
        if have < len {
            // Room for the next read: what is still missing, but never more than the
            // read-ahead past what arrived.
            let want = (len - have).min(READ_AHEAD.max(have));
            src.reserve(want);
            return Ok(None);
        }
        src.advance(PREFIX);
        Ok(Some(src.split_to(len)))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => {
                let detail = match src.get(..PREFIX) {
                    Some(head) => format!(
                        "the stream ended inside a frame: {} of its {} bytes arrived",
                        src.len() - PREFIX,
                        u32::from_be_bytes(head.try_into().expect("4 bytes"))
                    ),
                    None => format!("the stream ended inside a frame's length prefix ({} of 4 bytes)", src.len()),
                };
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, detail))
            }
        }
    }
}

impl Encoder<Bytes> for LengthPrefixed {
    type Error = io::Error;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        self.check_outgoing(item.len())?;
        dst.reserve(PREFIX + item.len());
        dst.put_u32(item.len() as u32);
        dst.extend_from_slice(&item);
        Ok(())
    }
}

/// Wraps an already-framed stream into tarpc's serde transport
/// ([`tarpc::serde_transport::new`]). Items are (de)serialized by `codec`, any
/// [`tokio_serde`] [`Serializer`] / [`Deserializer`].
///
/// The frame limit stays the one of `framed`: build it with
/// `Framed::new(io, length_delimited_codec(max_frame))` (see [`length_delimited_codec`]
/// for what that codec does not bound).
pub fn serde_transport<S, Item, SinkItem, Codec>(
    framed: Framed<S, LengthDelimitedCodec>,
    codec: Codec,
) -> Transport<S, Item, SinkItem, Codec>
where
    S: AsyncWrite + AsyncRead,
    Item: for<'de> Deserialize<'de>,
    SinkItem: Serialize,
    Codec: Serializer<SinkItem> + Deserializer<Item>,
{
    tarpc::serde_transport::new(framed, codec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_clamped() {
        assert_eq!(effective_max_frame(0), 1);
        assert_eq!(effective_max_frame(10), 10);
        assert_eq!(effective_max_frame(MAX_FRAME_CEILING), MAX_FRAME_CEILING);
        assert_eq!(effective_max_frame(usize::MAX), MAX_FRAME_CEILING);
        assert_eq!(length_delimited_codec(usize::MAX).max_frame_length(), MAX_FRAME_CEILING);
        assert_eq!(length_delimited_codec(0).max_frame_length(), 1);
        assert_eq!(LengthPrefixed::new(usize::MAX).max_frame_length(), MAX_FRAME_CEILING);
    }

    fn header(len: u32) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32(len);
        b
    }

    #[test]
    fn a_header_alone_reserves_at_most_the_read_ahead() {
        let mut codec = LengthPrefixed::new(MAX_FRAME_CEILING);
        let mut src = header(MAX_FRAME_CEILING as u32);
        assert!(codec.decode(&mut src).unwrap().is_none());
        assert!(src.capacity() <= PREFIX + READ_AHEAD + 64, "capacity {}", src.capacity());
        // Growth follows what arrives: after 100 KiB of body, room for at most about as
        // much again.
        src.extend_from_slice(&vec![0u8; 100 * 1024]);
        assert!(codec.decode(&mut src).unwrap().is_none());
        assert!(src.capacity() <= 4 * 100 * 1024 + READ_AHEAD, "capacity {}", src.capacity());
    }

    #[test]
    fn frames_split_anywhere_decode_whole_and_in_order() {
        let mut codec = LengthPrefixed::new(1024);
        let mut wire = BytesMut::new();
        for body in [&b"one"[..], b"", b"three!"] {
            codec.encode(Bytes::copy_from_slice(body), &mut wire).unwrap();
        }
        let mut src = BytesMut::new();
        let mut out = Vec::new();
        for byte in wire {
            src.put_u8(byte);
            while let Some(frame) = codec.decode(&mut src).unwrap() {
                out.push(frame.to_vec());
            }
        }
        assert_eq!(out, vec![b"one".to_vec(), vec![], b"three!".to_vec()]);
        assert!(src.is_empty());
    }

    #[test]
    fn an_oversized_header_is_refused_naming_both_sizes() {
        let mut codec = LengthPrefixed::new(100);
        let err = codec.decode(&mut header(101)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("101 bytes") && err.to_string().contains("100 bytes"), "{err}");
        let mut dst = BytesMut::new();
        let err = codec.encode(Bytes::from(vec![0; 101]), &mut dst).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(dst.is_empty());
    }

    #[test]
    fn the_end_of_stream_inside_a_frame_says_how_much_arrived() {
        let mut codec = LengthPrefixed::new(100);
        let mut src = header(10);
        src.extend_from_slice(b"abc");
        let err = codec.decode_eof(&mut src).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("3 of its 10 bytes"), "{err}");
        assert!(codec.decode_eof(&mut BytesMut::new()).unwrap().is_none());
    }
}

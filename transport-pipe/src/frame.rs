//! Message framing over a byte stream, and the serde transport on top of it.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_serde::{Deserializer, Serializer};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

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

/// The codec [`length_delimited`] uses: a 4-byte big-endian length prefix (not counting
/// itself), then the payload; `max_frame` passed through [`effective_max_frame`].
pub fn length_delimited_codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .big_endian()
        .max_frame_length(effective_max_frame(max_frame))
        .new_codec()
}

/// Length-delimited framing: a 4-byte big-endian length prefix, with `max_frame` enforced on
/// encode and decode. The limit is never unlimited: values above [`MAX_FRAME_CEILING`] are
/// clamped to it and 0 is treated as 1 (see [`effective_max_frame`]).
///
/// - Encoding a larger frame fails with an [`std::io::ErrorKind::InvalidInput`] error, and
///   nothing of it is written.
/// - Decoding a header that declares a larger frame fails with
///   [`std::io::ErrorKind::InvalidData`]; the stream is then unusable and should be dropped.
///
/// Why the limit matters: tokio-util's `LengthDelimitedCodec` reserves buffer space for the
/// whole declared length as soon as a header arrives, before any of the body does, and it has
/// no timeout for a partial frame. So `max_frame` is also the memory a peer can make one
/// connection hold by sending only a header. Read and write buffers otherwise keep `Framed`'s
/// default behaviour.
pub fn length_delimited<S: AsyncRead + AsyncWrite>(io: S, max_frame: usize) -> Framed<S, LengthDelimitedCodec> {
    Framed::new(io, length_delimited_codec(max_frame))
}

/// Wraps an already-framed stream into tarpc's serde transport
/// ([`tarpc::serde_transport::new`]). Items are (de)serialized by `codec`, any
/// [`tokio_serde`] [`Serializer`] / [`Deserializer`].
///
/// The frame limit stays the one of `framed`: build it with [`length_delimited`].
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
    }
}

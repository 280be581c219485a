//! Frames after the handshake: a fixed binary header, then (for some kinds) a codec-encoded
//! body.
//!
//! ```text
//! byte 0      kind (Kind)
//! byte 1      flags (FLAG_OPENER; other bits are zero)
//! bytes 2..10 exchange id, u64 little-endian
//! then        the kind's fixed fields (little-endian), then its body
//! ```
//!
//! | kind | code | fixed fields | body | sent by |
//! |---|---|---|---|---|
//! | `Call` | 1 | timeout_us u64 | request enum | the caller (opener) |
//! | `OneWay` | 2 | – | request enum | the caller (opener) |
//! | `Cancel` | 3 | – | – | the caller (opener) |
//! | `Reply` | 4 | – | response enum | the callee |
//! | `Error` | 5 | – | [`ServerError`] | the callee |
//! | `TooLarge` | 6 | size u64, limit u64 | – | the callee |
//! | `Credit` | 7 | grant u32 | – | the callee of one-way calls (exchange id 0) |
//! | `UpItem` | 8 | – | request enum (the method's item variant) | the caller |
//! | `DownItem` | 9 | – | response enum (the method's variant) | the callee |
//! | `UpEnd` | 10 | – | – | the caller: its stream ended |
//! | `DownEnd` | 11 | – | – | the callee: its stream ended, the exchange is over |
//! | `UpCredit` | 12 | grant u32 | – | the callee: room for more caller items, in bytes |
//! | `DownCredit` | 13 | grant u32 | – | the caller: room for more callee items, in bytes |
//! | `UpStop` | 14 | – | – | the callee: stop sending items (the handler dropped the stream) |
//! | `Piece` | 15 | – | raw bytes: a slice of a large item frame | either (flag `FLAG_OPENER` says which); `FLAG_MORE` until the last |
//! | `Batch` | 16 | – | one or more frames, each after its length (u32) | either, once both announced [`caps::BATCH`](super::caps::BATCH); exchange id 0 |
//!
//! A `Batch` carries many small frames in one pipe message, so the per-message costs of
//! the carrier (length prefix, framing, buffer split) are paid once per batch instead of
//! once per frame. Its frames are read exactly as if each had come alone, in order;
//! batches do not nest, and an empty or truncated batch closes the connection.
//! Routing, cancels, credits and errors therefore never depend on decoding a user type: a
//! frame whose body does not decode still names its kind and exchange, so only that
//! exchange fails. A frame whose header does not parse (too short, unknown kind) means
//! the stream can no longer be trusted and the connection closes.

use bytes::{Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};

use crate::codec::{Codec, DecodeLimits, EncodeError, Placed};
use crate::error::ServerError;

/// Bytes of the header common to every frame.
pub const HEADER_LEN: usize = 10;

/// Header flag: the frame was sent by the side that opened the exchange (the caller).
/// Lets both sides open exchanges without their ids colliding.
pub const FLAG_OPENER: u8 = 0x01;

/// Header flag of a `Piece`: more pieces of the same item follow.
pub const FLAG_MORE: u8 = 0x02;

/// The kind of a frame: its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// Start a call that expects a reply.
    Call,
    /// A one-way call: no reply of any kind follows.
    OneWay,
    /// The caller stopped waiting; no reply follows.
    Cancel,
    /// The handler's result.
    Reply,
    /// The callee refused or failed the call.
    Error,
    /// The reply was larger than the message limit.
    TooLarge,
    /// The callee admits `grant` more one-way calls.
    Credit,
    /// An item of the caller's stream.
    UpItem,
    /// An item of the callee's stream.
    DownItem,
    /// The caller's stream ended.
    UpEnd,
    /// The callee's stream ended; the exchange is over.
    DownEnd,
    /// The callee has room for `grant` more bytes of the caller's items.
    UpCredit,
    /// The caller has room for `grant` more bytes of the callee's items.
    DownCredit,
    /// The callee no longer reads the caller's stream.
    UpStop,
    /// A slice of a large stream item's frame, raw bytes after the header.
    Piece,
    /// Several frames in one message (see [`split_batch`]).
    Batch,
}

impl Kind {
    /// The code on the wire.
    pub fn code(self) -> u8 {
        match self {
            Kind::Call => 1,
            Kind::OneWay => 2,
            Kind::Cancel => 3,
            Kind::Reply => 4,
            Kind::Error => 5,
            Kind::TooLarge => 6,
            Kind::Credit => 7,
            Kind::UpItem => 8,
            Kind::DownItem => 9,
            Kind::UpEnd => 10,
            Kind::DownEnd => 11,
            Kind::UpCredit => 12,
            Kind::DownCredit => 13,
            Kind::UpStop => 14,
            Kind::Piece => 15,
            Kind::Batch => 16,
        }
    }

    /// The kind with wire code `code`, if this build knows it.
    pub fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            1 => Kind::Call,
            2 => Kind::OneWay,
            3 => Kind::Cancel,
            4 => Kind::Reply,
            5 => Kind::Error,
            6 => Kind::TooLarge,
            7 => Kind::Credit,
            8 => Kind::UpItem,
            9 => Kind::DownItem,
            10 => Kind::UpEnd,
            11 => Kind::DownEnd,
            12 => Kind::UpCredit,
            13 => Kind::DownCredit,
            14 => Kind::UpStop,
            15 => Kind::Piece,
            16 => Kind::Batch,
            _ => return None,
        })
    }

    /// Bytes of fixed fields after the header.
    fn fixed_len(self) -> usize {
        match self {
            Kind::Call => 8,
            Kind::TooLarge => 16,
            Kind::Credit | Kind::UpCredit | Kind::DownCredit => 4,
            Kind::OneWay
            | Kind::Cancel
            | Kind::Reply
            | Kind::Error
            | Kind::UpItem
            | Kind::DownItem
            | Kind::UpEnd
            | Kind::DownEnd
            | Kind::UpStop
            | Kind::Piece
            | Kind::Batch => 0,
        }
    }

    /// True for the kinds only the exchange's opener sends.
    fn sent_by_opener(self) -> bool {
        matches!(self, Kind::Call | Kind::OneWay | Kind::Cancel | Kind::UpItem | Kind::UpEnd | Kind::DownCredit)
    }
}

/// One frame, typed: `C` is the request enum of the service being called, `R` its response
/// enum. Each end sends `Frame<TheirRequest, MyResponse>` and receives the mirror.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame<C, R> {
    /// Start a call.
    Call {
        /// Unique among the caller's exchanges in flight on this connection.
        id: u64,
        /// Time the caller waits, in microseconds: relative, so clocks need not agree.
        timeout_us: u64,
        /// The request.
        body: C,
    },
    /// A one-way call; the callee sends nothing back for it.
    OneWay {
        /// The caller's sequence number, for logs.
        id: u64,
        /// The request.
        body: C,
    },
    /// The caller stopped waiting: stop the handler. No reply follows.
    Cancel {
        /// The call cancelled.
        id: u64,
    },
    /// The handler's result.
    Reply {
        /// The call answered.
        id: u64,
        /// The response.
        body: R,
    },
    /// The callee refused or failed the call.
    Error {
        /// The call answered.
        id: u64,
        /// Why.
        error: ServerError,
    },
    /// The reply exceeded the message limit; the connection goes on.
    TooLarge {
        /// The call answered.
        id: u64,
        /// Encoded size of the reply frame.
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The callee admits `grant` more one-way calls (on exchange id 0).
    Credit {
        /// 0: the connection's one-way window.
        id: u64,
        /// How many more.
        grant: u32,
    },
    /// An item of the caller's stream.
    UpItem {
        /// The exchange.
        id: u64,
        /// The item, as the request enum's item variant of the method.
        body: C,
    },
    /// An item of the callee's stream.
    DownItem {
        /// The exchange.
        id: u64,
        /// The item, as the response enum's variant of the method.
        body: R,
    },
    /// The caller's stream ended normally.
    UpEnd {
        /// The exchange.
        id: u64,
    },
    /// The callee's stream ended normally; the exchange is over.
    DownEnd {
        /// The exchange.
        id: u64,
    },
    /// Room for `grant` more bytes of the caller's items.
    UpCredit {
        /// The exchange.
        id: u64,
        /// Bytes of frames.
        grant: u32,
    },
    /// Room for `grant` more bytes of the callee's items.
    DownCredit {
        /// The exchange.
        id: u64,
        /// Bytes of frames.
        grant: u32,
    },
    /// The callee stopped reading the caller's stream.
    UpStop {
        /// The exchange.
        id: u64,
    },
    /// A slice of a stream item's frame (an `UpItem` or `DownItem` larger than a piece):
    /// raw bytes, not encoded by the codec. The receiver puts the pieces of one exchange
    /// and direction together and reads the whole as one frame.
    Piece {
        /// The exchange.
        id: u64,
        /// Sent by the exchange's opener (a piece of an `UpItem`), else of a `DownItem`.
        from_opener: bool,
        /// More pieces of the same item follow.
        more: bool,
        /// The slice.
        bytes: bytes::Bytes,
    },
}

/// A frame that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header is unreadable (too short, unknown kind): nothing in the stream can be
    /// trusted any more.
    #[error("unreadable frame header: {0}")]
    Header(String),
    /// The header is fine but the body does not decode: only exchange `id` fails.
    #[error("the {kind:?} frame of exchange {id} does not decode: {error}")]
    Body {
        /// The frame's kind.
        kind: Kind,
        /// Its exchange.
        id: u64,
        /// The decoder's complaint.
        error: String,
    },
}

impl<C, R> Frame<C, R> {
    /// The frame's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Frame::Call { .. } => Kind::Call,
            Frame::OneWay { .. } => Kind::OneWay,
            Frame::Cancel { .. } => Kind::Cancel,
            Frame::Reply { .. } => Kind::Reply,
            Frame::Error { .. } => Kind::Error,
            Frame::TooLarge { .. } => Kind::TooLarge,
            Frame::Credit { .. } => Kind::Credit,
            Frame::UpItem { .. } => Kind::UpItem,
            Frame::DownItem { .. } => Kind::DownItem,
            Frame::UpEnd { .. } => Kind::UpEnd,
            Frame::DownEnd { .. } => Kind::DownEnd,
            Frame::UpCredit { .. } => Kind::UpCredit,
            Frame::DownCredit { .. } => Kind::DownCredit,
            Frame::UpStop { .. } => Kind::UpStop,
            Frame::Piece { .. } => Kind::Piece,
        }
    }

    /// The exchange the frame belongs to.
    pub fn id(&self) -> u64 {
        match *self {
            Frame::Call { id, .. }
            | Frame::OneWay { id, .. }
            | Frame::Cancel { id }
            | Frame::Reply { id, .. }
            | Frame::Error { id, .. }
            | Frame::TooLarge { id, .. }
            | Frame::Credit { id, .. }
            | Frame::UpItem { id, .. }
            | Frame::DownItem { id, .. }
            | Frame::UpEnd { id }
            | Frame::DownEnd { id }
            | Frame::UpCredit { id, .. }
            | Frame::DownCredit { id, .. }
            | Frame::UpStop { id }
            | Frame::Piece { id, .. } => id,
        }
    }
}

/// The header and fixed fields of a frame: at most 26 bytes, on the stack.
struct Prefix {
    bytes: [u8; HEADER_LEN + 16],
    len: usize,
}

impl Prefix {
    fn new(kind: Kind, id: u64) -> Self {
        let mut bytes = [0u8; HEADER_LEN + 16];
        bytes[0] = kind.code();
        bytes[1] = if kind.sent_by_opener() { FLAG_OPENER } else { 0 };
        bytes[2..10].copy_from_slice(&id.to_le_bytes());
        Prefix { bytes, len: HEADER_LEN }
    }

    fn u64(mut self, v: u64) -> Self {
        self.bytes[self.len..self.len + 8].copy_from_slice(&v.to_le_bytes());
        self.len += 8;
        self
    }

    fn u32(mut self, v: u32) -> Self {
        self.bytes[self.len..self.len + 4].copy_from_slice(&v.to_le_bytes());
        self.len += 4;
        self
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl<C: Serialize, R: Serialize> Frame<C, R> {
    /// Encodes the frame, refusing to build one larger than `limit` bytes.
    pub fn encode(&self, codec: Codec, limit: usize) -> Result<Bytes, EncodeError> {
        self.encode_into(codec, limit, &mut BytesMut::new())
    }

    /// Encodes into `buf` and splits the frame off (see [`Codec`]'s buffer reuse).
    pub(crate) fn encode_into(&self, codec: Codec, limit: usize, buf: &mut BytesMut) -> Result<Bytes, EncodeError> {
        buf.clear();
        match self.encode_append(codec, limit, buf)? {
            Placed::Appended(_) => Ok(buf.split().freeze()),
            Placed::Separate(bytes) => Ok(bytes),
        }
    }

    /// Encodes at the end of `buf`, after what is there, unless the frame is too large for
    /// a shared buffer (then it comes back in its own allocation). On error `buf` is as it
    /// was.
    pub(crate) fn encode_append(&self, codec: Codec, limit: usize, buf: &mut BytesMut) -> Result<Placed, EncodeError> {
        let prefix = Prefix::new(self.kind(), self.id());
        match self {
            Frame::Call { timeout_us, body, .. } => {
                codec.encode_append(prefix.u64(*timeout_us).as_slice(), body, limit, buf)
            }
            Frame::OneWay { body, .. } => codec.encode_append(prefix.as_slice(), body, limit, buf),
            Frame::Reply { body, .. } => codec.encode_append(prefix.as_slice(), body, limit, buf),
            Frame::Error { error, .. } => codec.encode_append(prefix.as_slice(), error, limit, buf),
            Frame::Cancel { .. } => bare(prefix.as_slice(), limit, buf),
            Frame::TooLarge { size, limit: l, .. } => bare(prefix.u64(*size).u64(*l).as_slice(), limit, buf),
            Frame::Credit { grant, .. } | Frame::UpCredit { grant, .. } | Frame::DownCredit { grant, .. } => {
                bare(prefix.u32(*grant).as_slice(), limit, buf)
            }
            Frame::UpItem { body, .. } => codec.encode_append(prefix.as_slice(), body, limit, buf),
            Frame::DownItem { body, .. } => codec.encode_append(prefix.as_slice(), body, limit, buf),
            Frame::UpEnd { .. } | Frame::DownEnd { .. } | Frame::UpStop { .. } => bare(prefix.as_slice(), limit, buf),
            Frame::Piece { from_opener, more, bytes, .. } => {
                let mut prefix = prefix;
                prefix.bytes[1] = if *from_opener { FLAG_OPENER } else { 0 } | if *more { FLAG_MORE } else { 0 };
                let whole = prefix.as_slice().len() + bytes.len();
                if whole > limit {
                    return Err(EncodeError::TooLarge(crate::codec::TooLarge {
                        size: whole as u64,
                        limit: limit as u64,
                    }));
                }
                buf.extend_from_slice(prefix.as_slice());
                buf.extend_from_slice(bytes);
                Ok(Placed::Appended(whole))
            }
        }
    }
}

/// A frame without a body: its header and fixed fields, whatever the codec. (Not `()`
/// through the codec: bincode and postcard write nothing for it, JSON writes `null`, which
/// the reader's "no bytes after the header" would refuse.)
#[inline]
fn bare(prefix: &[u8], limit: usize, buf: &mut BytesMut) -> Result<Placed, EncodeError> {
    if prefix.len() > limit {
        return Err(EncodeError::TooLarge(crate::codec::TooLarge { size: prefix.len() as u64, limit: limit as u64 }));
    }
    buf.extend_from_slice(prefix);
    Ok(Placed::Appended(prefix.len()))
}

impl<C: DeserializeOwned, R: DeserializeOwned> Frame<C, R> {
    /// Decodes one complete frame with the default [`DecodeLimits`]. A panic in a body's
    /// `Deserialize` impl is caught and reported as a body that does not decode.
    pub fn decode(codec: Codec, bytes: &[u8]) -> Result<Self, FrameError> {
        Self::decode_with(codec, DecodeLimits::DEFAULT, bytes)
    }

    /// Decodes one complete frame, its body within `limits` (a body over them is a body
    /// that does not decode: only its exchange fails).
    pub fn decode_with(codec: Codec, limits: DecodeLimits, bytes: &[u8]) -> Result<Self, FrameError> {
        if bytes.len() < HEADER_LEN {
            return Err(FrameError::Header(format!(
                "{} bytes, shorter than the {HEADER_LEN}-byte header",
                bytes.len()
            )));
        }
        let kind = Kind::from_code(bytes[0])
            .ok_or_else(|| FrameError::Header(format!("unknown frame kind {:#04x}", bytes[0])))?;
        let id = u64::from_le_bytes(bytes[2..10].try_into().expect("8 bytes"));
        let fixed = kind.fixed_len();
        let Some(fields) = bytes.get(HEADER_LEN..HEADER_LEN + fixed) else {
            return Err(FrameError::Header(format!("a {kind:?} frame needs {fixed} bytes of fixed fields")));
        };
        let body = &bytes[HEADER_LEN + fixed..];
        let u64_at = |i: usize| u64::from_le_bytes(fields[i..i + 8].try_into().expect("8 bytes"));
        let fail = |error: String| FrameError::Body { kind, id, error };
        let empty = |body: &[u8]| {
            if body.is_empty() {
                Ok(())
            } else {
                Err(fail(format!("{} unexpected bytes after the header", body.len())))
            }
        };
        Ok(match kind {
            Kind::Call => {
                Frame::Call { id, timeout_us: u64_at(0), body: decode_body(codec, limits, body).map_err(fail)? }
            }
            Kind::OneWay => Frame::OneWay { id, body: decode_body(codec, limits, body).map_err(fail)? },
            Kind::Cancel => {
                empty(body)?;
                Frame::Cancel { id }
            }
            Kind::Reply => Frame::Reply { id, body: decode_body(codec, limits, body).map_err(fail)? },
            Kind::Error => Frame::Error { id, error: decode_body(codec, limits, body).map_err(fail)? },
            Kind::TooLarge => {
                empty(body)?;
                Frame::TooLarge { id, size: u64_at(0), limit: u64_at(8) }
            }
            Kind::Credit | Kind::UpCredit | Kind::DownCredit => {
                empty(body)?;
                let grant = u32::from_le_bytes(fields[..4].try_into().expect("4 bytes"));
                match kind {
                    Kind::Credit => Frame::Credit { id, grant },
                    Kind::UpCredit => Frame::UpCredit { id, grant },
                    _ => Frame::DownCredit { id, grant },
                }
            }
            Kind::UpItem => Frame::UpItem { id, body: decode_body(codec, limits, body).map_err(fail)? },
            Kind::DownItem => Frame::DownItem { id, body: decode_body(codec, limits, body).map_err(fail)? },
            Kind::Piece => Frame::Piece {
                id,
                from_opener: bytes[1] & FLAG_OPENER != 0,
                more: bytes[1] & FLAG_MORE != 0,
                // A slice of the message when the engine lent it (a piece is large).
                bytes: crate::blob::lent_or_copied(body),
            },
            Kind::UpEnd | Kind::DownEnd | Kind::UpStop => {
                empty(body)?;
                match kind {
                    Kind::UpEnd => Frame::UpEnd { id },
                    Kind::DownEnd => Frame::DownEnd { id },
                    _ => Frame::UpStop { id },
                }
            }
            Kind::Batch => {
                return Err(FrameError::Header(
                    "a Batch frame where one frame was expected (batches do not nest)".into(),
                ));
            }
        })
    }
}

/// Bytes before each frame in a `Batch`: the frame's length, u32 little-endian.
pub const BATCH_ENTRY_LEN: usize = 4;

/// The first frame of a `Batch` frame's `body` (the bytes after its header), starting at
/// `*at`: its range in `body`, and `*at` moved past it; `None` at the end. `Err` if the
/// length is truncated, zero, or runs past the batch.
pub(crate) fn next_in_batch(body: &[u8], at: &mut usize) -> Option<Result<std::ops::Range<usize>, FrameError>> {
    let rest = body.get(*at..).filter(|r| !r.is_empty())?;
    let Some(len) = rest.first_chunk::<BATCH_ENTRY_LEN>().map(|l| u32::from_le_bytes(*l) as usize) else {
        return Some(Err(FrameError::Header(format!("a batch ends in {} bytes of a frame length", rest.len()))));
    };
    let start = *at + BATCH_ENTRY_LEN;
    if len == 0 || len > body.len() - start {
        return Some(Err(FrameError::Header(format!(
            "a batch entry of {len} bytes where {} remain",
            body.len() - start
        ))));
    }
    *at = start + len;
    Some(Ok(start..start + len))
}

/// Splits a whole `Batch` frame (header included) into its frames, for tools and tests
/// that read the wire themselves.
pub fn split_batch(frame: &[u8]) -> Result<Vec<&[u8]>, FrameError> {
    if frame.len() < HEADER_LEN || frame[0] != Kind::Batch.code() {
        return Err(FrameError::Header("not a Batch frame".into()));
    }
    let body = &frame[HEADER_LEN..];
    let mut at = 0;
    let mut frames = Vec::new();
    while let Some(range) = next_in_batch(body, &mut at) {
        frames.push(&body[range?]);
    }
    if frames.is_empty() {
        return Err(FrameError::Header("an empty batch".into()));
    }
    Ok(frames)
}

/// Decodes a body within `limits`; a panic in a user `Deserialize` impl is an error too
/// (caught by the codec), so a hostile or buggy peer cannot unwind through the
/// connection's task.
fn decode_body<T: DeserializeOwned>(codec: Codec, limits: DecodeLimits, body: &[u8]) -> Result<T, String> {
    codec.decode_with::<T>(body, limits)
}

/// Encodes a stream item frame (`kind` is `UpItem` or `DownItem`) of exchange `id` at the
/// end of `buf`, as [`Frame::encode_append`] would, without the item being moved into a
/// [`Frame`] first: the hot path of a stream of small items.
pub(crate) fn encode_item_append<T: Serialize + ?Sized>(
    kind: Kind,
    id: u64,
    item: &T,
    codec: Codec,
    limit: usize,
    buf: &mut BytesMut,
) -> Result<Placed, EncodeError> {
    debug_assert!(matches!(kind, Kind::UpItem | Kind::DownItem));
    codec.encode_append(Prefix::new(kind, id).as_slice(), item, limit, buf)
}

/// If `bytes` is a stream item frame (`UpItem` or `DownItem`) or a one-way call (the
/// frames of a batch that take the engine's short path), its kind and exchange id.
#[inline]
pub(crate) fn item_header(bytes: &[u8]) -> Option<(Kind, u64)> {
    let head = bytes.first_chunk::<HEADER_LEN>()?;
    let kind = match head[0] {
        2 => Kind::OneWay,
        8 => Kind::UpItem,
        9 => Kind::DownItem,
        _ => return None,
    };
    Some((kind, u64::from_le_bytes(head[2..10].try_into().expect("8 bytes"))))
}

/// The body of a frame whose header [`item_header`] read (these kinds have no fixed
/// fields), decoded as [`Frame::decode_with`] would (`Err`: why it does not decode).
#[inline]
pub(crate) fn decode_item_body<T: DeserializeOwned>(
    codec: Codec,
    limits: DecodeLimits,
    bytes: &[u8],
) -> Result<T, String> {
    decode_body(codec, limits, &bytes[HEADER_LEN..])
}

/// An uninhabited request or response type: what an end that serves (or calls) nothing
/// receives. Decoding one always fails, so a frame for it is answered as a bad request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Never {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ServerErrorKind;

    #[test]
    fn frames_read_by_the_short_path_are_those_the_frame_enum_writes() {
        let limits = DecodeLimits::DEFAULT;
        for (frame, kind) in [
            (F::UpItem { id: 7, body: (3, "up".into()) }, Kind::UpItem),
            (F::DownItem { id: 9, body: vec![1, 2] }, Kind::DownItem),
        ] {
            let bytes = frame.encode(Codec::Bincode, 1 << 10).unwrap();
            assert_eq!(item_header(&bytes), Some((kind, frame.id())));
            let mut fast = BytesMut::new();
            match &frame {
                F::UpItem { id, body } => encode_item_append(kind, *id, body, Codec::Bincode, 1 << 10, &mut fast),
                F::DownItem { id, body } => encode_item_append(kind, *id, body, Codec::Bincode, 1 << 10, &mut fast),
                _ => unreachable!(),
            }
            .unwrap();
            assert_eq!(&fast[..], &bytes[..], "{kind:?}");
            match (&frame, F::decode_with(Codec::Bincode, limits, &bytes).unwrap()) {
                (F::UpItem { body, .. }, F::UpItem { body: back, .. }) => {
                    assert_eq!(decode_item_body::<(u8, String)>(Codec::Bincode, limits, &bytes).unwrap(), back);
                    assert_eq!(&back, body);
                }
                (F::DownItem { body, .. }, F::DownItem { body: back, .. }) => {
                    assert_eq!(decode_item_body::<Vec<u32>>(Codec::Bincode, limits, &bytes).unwrap(), back);
                    assert_eq!(&back, body);
                }
                other => panic!("{other:?}"),
            }
        }
        let oneway = F::OneWay { id: 5, body: (1, "x".into()) }.encode(Codec::Bincode, 1 << 10).unwrap();
        assert_eq!(item_header(&oneway), Some((Kind::OneWay, 5)));
        assert_eq!(decode_item_body::<(u8, String)>(Codec::Bincode, limits, &oneway).unwrap(), (1, "x".into()));
        assert_eq!(Kind::OneWay.fixed_len(), 0);
        let reply = F::Reply { id: 1, body: vec![] }.encode(Codec::Bincode, 1 << 10).unwrap();
        assert_eq!(item_header(&reply), None);
        assert_eq!(item_header(&[9, 0, 1]), None, "shorter than a header");
        assert_eq!(Kind::from_code(8), Some(Kind::UpItem));
        assert_eq!(Kind::from_code(9), Some(Kind::DownItem));
    }

    type F = Frame<(u8, String), Vec<u32>>;

    #[test]
    fn every_kind_round_trips_with_every_codec() {
        let frames: Vec<F> = vec![
            Frame::Call { id: u64::MAX, timeout_us: 1_000_000, body: (7, "x".into()) },
            Frame::OneWay { id: 3, body: (1, String::new()) },
            Frame::Cancel { id: 9 },
            Frame::Reply { id: 1 << 40, body: vec![1, 2, 3] },
            Frame::Error { id: 2, error: ServerError::new(ServerErrorKind::Overloaded, "full") },
            Frame::TooLarge { id: 4, size: 5 << 20, limit: 4 << 20 },
            Frame::Credit { id: 0, grant: 64 },
            Frame::UpItem { id: 5, body: (2, "item".into()) },
            Frame::DownItem { id: 5, body: vec![9] },
            Frame::UpEnd { id: 5 },
            Frame::DownEnd { id: 5 },
            Frame::UpCredit { id: 5, grant: 1 << 18 },
            Frame::DownCredit { id: 5, grant: 1 << 18 },
            Frame::UpStop { id: 5 },
            Frame::Piece { id: 5, from_opener: true, more: true, bytes: bytes::Bytes::from_static(b"raw \x00 bytes") },
            Frame::Piece { id: 5, from_opener: false, more: false, bytes: bytes::Bytes::new() },
        ];
        for codec in Codec::ALL {
            for f in &frames {
                let bytes = f.encode(codec, 1 << 20).unwrap();
                assert_eq!(bytes[0], f.kind().code());
                assert_eq!(&Frame::decode(codec, &bytes).unwrap(), f, "{codec:?}");
            }
        }
    }

    #[test]
    fn a_bad_body_still_names_its_exchange() {
        let bytes = Frame::<u8, ()>::Call { id: 99, timeout_us: 5, body: 7 }.encode(Codec::Bincode, 100).unwrap();
        let got = Frame::<bool, ()>::decode(Codec::Bincode, &bytes).unwrap_err();
        assert!(matches!(got, FrameError::Body { kind: Kind::Call, id: 99, .. }), "{got:?}");
    }

    #[test]
    fn short_or_unknown_headers_are_header_errors() {
        assert!(matches!(F::decode(Codec::Bincode, &[1, 0, 0]), Err(FrameError::Header(_))));
        assert!(matches!(F::decode(Codec::Bincode, &[0xee; 12]), Err(FrameError::Header(_))));
        // A call without its timeout field.
        assert!(matches!(F::decode(Codec::Bincode, &[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 5]), Err(FrameError::Header(_))));
    }

    #[test]
    fn the_size_limit_covers_the_whole_frame() {
        let f = Frame::<(), serde_bytes::ByteBuf>::Reply { id: 1, body: serde_bytes::ByteBuf::from(vec![0; 100]) };
        let len = f.encode(Codec::Bincode, 1000).unwrap().len();
        let err = f.encode(Codec::Bincode, len - 1).unwrap_err();
        assert_eq!(err, EncodeError::TooLarge(crate::codec::TooLarge { size: len as u64, limit: len as u64 - 1 }));
    }

    #[test]
    fn a_panicking_deserialize_is_a_body_error() {
        #[derive(Debug)]
        struct Bomb;
        impl<'de> serde::Deserialize<'de> for Bomb {
            fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
                panic!("bomb")
            }
        }
        let bytes = Frame::<(), u8>::Reply { id: 5, body: 1 }.encode(Codec::Bincode, 100).unwrap();
        let err = Frame::<(), Bomb>::decode(Codec::Bincode, &bytes).unwrap_err();
        assert!(matches!(&err, FrameError::Body { id: 5, error, .. } if error.contains("panicked: bomb")), "{err:?}");
    }
}

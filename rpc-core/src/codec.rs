//! Wire codecs: how frames become bytes.
//!
//! [`Codec::Bincode`] (bincode 1.3, varint integers) is the default. bincode is frozen
//! upstream (RUSTSEC-2025-0141, unmaintained), so [`Codec::Postcard`] (maintained, also
//! compact and varint-based) and [`Codec::Json`] (readable: for debugging, and what the
//! `pipe-rpc` command-line tool speaks) can be chosen per client with
//! [`ClientConfig::codec`](crate::ClientConfig::codec); a server accepts each of them, per
//! connection, as the handshake says, and uses the connection's codec for its callbacks
//! too.
//!
//! JSON is serde_json's: an enum variant is `{"Variant": content}` (a unit variant
//! `"Variant"`), a tuple `[a, b]`, a struct an object, a byte buffer (`serde_bytes`) an
//! array of numbers (`[104,105]`; a JSON string is accepted too when decoding). What JSON
//! cannot carry faithfully is refused when encoded, not changed on the way: a NaN or an
//! infinity (serde_json would write `null`), and a `Some` whose content is written as
//! `null` (`Some(None)`, `Some(())`: it would read back as `None`). Whitespace around the
//! value is allowed, anything else after it is not. Maps whose keys are not strings,
//! integers, `bool`s or `char`s cannot be encoded (serde_json's rule). JSON frames are
//! larger and slower than the binary codecs' (a byte buffer takes up to four bytes per
//! byte): meant for tools and debugging, not bulk data.
//!
//! Limits are enforced here on both directions, before anything reaches the pipe:
//! - encoding computes the exact size first, so an oversized message fails as
//!   [`TooLarge`] without being built, and nothing is written;
//! - decoding reads only complete frames (the length prefix was already checked against
//!   the limit by the framing layer) from memory, so declared lengths inside a frame are
//!   checked against the bytes that are really there;
//! - decoding runs under a [`DecodeLimits`] budget (`budget.rs`): what the decoded value
//!   allocates for its collections, strings and byte buffers is charged, at most
//!   [`DECODE_RATIO`] (16) times the frame's size plus [`DECODE_BASE`] (64 KiB), so a small
//!   frame cannot decode into a huge value (nor spin over a huge declared count of
//!   zero-sized elements); a collection's declared length is never used to preallocate;
//! - decoding nests at most [`MAX_DECODE_DEPTH`] (64) levels, so a recursive type cannot
//!   overflow the stack;
//! - a panic in a value's `Serialize` or `Deserialize` impl is caught and fails that one
//!   message;
//! - a frame whose body does not decode still yields its exchange id, from the fixed
//!   header (see [`crate::wire::Frame`]), so the peer can fail that one call instead of the
//!   connection.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};

use bincode::Options;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Serialize, de::DeserializeOwned};

pub(crate) mod budget;
mod json;

/// A serialization format for frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// bincode 1.3 with varint integers, rejecting trailing bytes. The default.
    #[default]
    Bincode,
    /// postcard 1.x (maintained). Same data model, slightly smaller frames.
    Postcard,
    /// JSON (serde_json): readable, for debugging and tools; larger and slower. See the
    /// [module docs](self) for how values look and what JSON refuses.
    Json,
}

impl Codec {
    /// Every codec this build knows, in handshake-id order.
    pub const ALL: [Codec; 3] = [Codec::Bincode, Codec::Postcard, Codec::Json];

    /// The id announced in the handshake.
    pub fn id(self) -> u8 {
        match self {
            Codec::Bincode => 0,
            Codec::Postcard => 1,
            Codec::Json => 2,
        }
    }

    /// The codec with handshake id `id`, if this build knows it.
    pub fn from_id(id: u8) -> Option<Codec> {
        match id {
            0 => Some(Codec::Bincode),
            1 => Some(Codec::Postcard),
            2 => Some(Codec::Json),
            _ => None,
        }
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Bincode => "bincode",
            Codec::Postcard => "postcard",
            Codec::Json => "json",
        }
    }

    fn bincode() -> impl Options + Copy {
        bincode::DefaultOptions::new()
    }

    /// Encodes `item`, refusing to build anything larger than `limit` bytes.
    pub fn encode<T: Serialize + ?Sized>(self, item: &T, limit: usize) -> Result<Bytes, EncodeError> {
        self.encode_into(&[], item, limit, &mut BytesMut::new())
    }

    /// Encodes `prefix` (a frame's fixed header) followed by `item` at the end of `buf`, and
    /// splits the result off. `limit` covers the prefix too. Once the returned `Bytes` is
    /// dropped, `buf` can reuse the same memory for the next frame: no allocation (and, for
    /// large frames, no fresh page faults) per message. A panic in `item`'s `Serialize`
    /// impl is caught and reported as [`EncodeError::Serde`].
    pub(crate) fn encode_into<T: Serialize + ?Sized>(
        self,
        prefix: &[u8],
        item: &T,
        limit: usize,
        buf: &mut BytesMut,
    ) -> Result<Bytes, EncodeError> {
        buf.clear();
        match self.encode_append(prefix, item, limit, buf)? {
            Placed::Appended(_) => Ok(buf.split().freeze()),
            Placed::Separate(bytes) => Ok(bytes),
        }
    }

    /// Like [`encode_into`](Self::encode_into), but leaves the frame at the end of `buf`
    /// after what was there (a batch of frames being packed), unless it is too large for
    /// the shared buffer. On error `buf` is as it was.
    pub(crate) fn encode_append<T: Serialize + ?Sized>(
        self,
        prefix: &[u8],
        item: &T,
        limit: usize,
        buf: &mut BytesMut,
    ) -> Result<Placed, EncodeError> {
        let start = buf.len();
        match catch_unwind(AssertUnwindSafe(|| self.encode_unguarded(prefix, item, limit, buf))) {
            Ok(r) => r,
            Err(panic) => {
                buf.truncate(start);
                let msg = crate::error::panic_message(panic.as_ref());
                Err(EncodeError::Serde(format!("its Serialize impl panicked: {msg}")))
            }
        }
    }

    fn encode_unguarded<T: Serialize + ?Sized>(
        self,
        prefix: &[u8],
        item: &T,
        limit: usize,
        buf: &mut BytesMut,
    ) -> Result<Placed, EncodeError> {
        let serde = |e: &dyn std::fmt::Display| EncodeError::Serde(e.to_string());
        let too_large = |size: u64| EncodeError::TooLarge(TooLarge { size, limit: limit as u64 });
        let start = buf.len();
        // Where a capture of blobs (`crate::blob`) for this frame was started, if one was.
        let origin = std::ptr::from_ref(&*buf);
        if prefix.len() > limit {
            return Err(too_large(prefix.len() as u64));
        }
        buf.extend_from_slice(prefix);
        match self {
            Codec::Bincode => {
                // Small frames (nearly all): write straight into the reused buffer, stopping
                // at the soft cap, with no sizing pass.
                let soft = limit.min(SMALL_FRAME) - prefix.len().min(SMALL_FRAME);
                // Two writers, so that a frame the engine does not look at for blobs (most
                // small ones) pays nothing for the look.
                let written = if crate::blob::capturing() {
                    Self::bincode().serialize_into(LimitedWriter::<true> { buf: &mut *buf, remaining: soft }, item)
                } else {
                    Self::bincode().serialize_into(LimitedWriter::<false> { buf: &mut *buf, remaining: soft }, item)
                };
                match written {
                    Ok(()) => return Ok(Placed::Appended(buf.len() - start)),
                    Err(e) if is_write_zero(&e) => {
                        buf.truncate(start);
                        crate::blob::forget_holes();
                    }
                    Err(e) => {
                        buf.truncate(start);
                        crate::blob::forget_holes();
                        return Err(serde(&e));
                    }
                }
                // A large frame: size it exactly (the sizing pass is cheap next to the copy),
                // refuse it unbuilt if over the limit, else build it in the large-frame
                // buffer (see `large_frame`).
                let size = prefix.len() as u64 + Self::bincode().serialized_size(item).map_err(|e| serde(&e))?;
                if size > limit as u64 {
                    return Err(too_large(size));
                }
                large_frame(size as usize, |out| {
                    out.extend_from_slice(prefix);
                    crate::blob::retarget(origin, out);
                    let writer = LimitedWriter::<true> { buf: out, remaining: size as usize - prefix.len() };
                    Self::bincode().serialize_into(writer, item).map_err(|e| serde(&e))
                })
                .map(Placed::Separate)
            }
            Codec::Postcard => {
                // postcard has no bounded writer: size first, so nothing oversized is built.
                let size =
                    prefix.len() as u64 + postcard::experimental::serialized_size(item).map_err(|e| serde(&e))? as u64;
                if size > limit as u64 {
                    buf.truncate(start);
                    return Err(too_large(size));
                }
                if size as usize > SMALL_FRAME {
                    // Large: its own allocation, as for bincode.
                    buf.truncate(start);
                    return large_frame(size as usize, |out| {
                        out.extend_from_slice(prefix);
                        crate::blob::retarget(origin, out);
                        let writer = LimitedWriter::<true> { buf: out, remaining: size as usize - prefix.len() };
                        postcard::to_io(item, writer).map(drop).map_err(|e| serde(&e))
                    })
                    .map(Placed::Separate);
                }
                buf.reserve(size as usize - prefix.len());
                let remaining = size as usize - prefix.len();
                let written = if crate::blob::capturing() {
                    postcard::to_io(item, LimitedWriter::<true> { buf: &mut *buf, remaining }).map(drop)
                } else {
                    postcard::to_io(item, LimitedWriter::<false> { buf: &mut *buf, remaining }).map(drop)
                };
                if let Err(e) = written {
                    buf.truncate(start);
                    crate::blob::forget_holes();
                    return Err(serde(&e));
                }
                Ok(Placed::Appended(buf.len() - start))
            }
            Codec::Json => {
                // As bincode: small frames straight into the reused buffer up to the soft
                // cap; a larger one is sized exactly (one more serialization, into a
                // counter), refused unbuilt over the limit, else built on its own.
                let item = json::Faithful::new(item);
                let soft = limit.min(SMALL_FRAME) - prefix.len().min(SMALL_FRAME);
                match serde_json::to_writer(LimitedWriter::<false> { buf: &mut *buf, remaining: soft }, &item) {
                    Ok(()) => return Ok(Placed::Appended(buf.len() - start)),
                    Err(e) if e.io_error_kind() == Some(io::ErrorKind::WriteZero) => buf.truncate(start),
                    Err(e) => {
                        buf.truncate(start);
                        return Err(serde(&e));
                    }
                }
                let mut counter = Counter(0);
                serde_json::to_writer(&mut counter, &item).map_err(|e| serde(&e))?;
                let size = prefix.len() as u64 + counter.0;
                if size > limit as u64 {
                    return Err(too_large(size));
                }
                large_frame(size as usize, |out| {
                    out.extend_from_slice(prefix);
                    serde_json::to_writer(out.writer(), &item).map_err(|e| serde(&e))
                })
                .map(Placed::Separate)
            }
        }
    }

    /// Decodes one complete value under the default [`DecodeLimits`]; trailing bytes are an
    /// error.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, String> {
        self.decode_with(bytes, DecodeLimits::DEFAULT)
    }

    /// Decodes one complete value; trailing bytes are an error, and so is a value that would
    /// allocate more than `limits` allows or nest deeper (the error names the limit). A
    /// panic in a `Deserialize` impl is caught and reported as an error.
    pub fn decode_with<T: DeserializeOwned>(self, bytes: &[u8], limits: DecodeLimits) -> Result<T, String> {
        let state = budget::State::new(bytes.len(), limits);
        match catch_unwind(AssertUnwindSafe(|| self.decode_budgeted(bytes, &state))) {
            // A limit decides even when a Deserialize impl swallowed its error.
            Ok(r) => match state.tripped() {
                Some(tripped) => Err(state.describe(tripped)),
                None => r,
            },
            Err(panic) => {
                Err(format!("its Deserialize impl panicked: {}", crate::error::panic_message(panic.as_ref())))
            }
        }
    }

    fn decode_budgeted<T: DeserializeOwned>(self, bytes: &[u8], state: &budget::State) -> Result<T, String> {
        match self {
            // `deserialize_seed` keeps `DefaultOptions`' trailing-bytes check. (On a slice
            // bincode reads with no byte limit of its own; none is needed, the slice is one.)
            Codec::Bincode => {
                Self::bincode().deserialize_seed(budget::Root::new(state), bytes).map_err(|e| e.to_string())
            }
            Codec::Postcard => {
                let mut de = postcard::Deserializer::from_bytes(bytes);
                let value = T::deserialize(budget::Budgeted::new(&mut de, state)).map_err(|e| e.to_string())?;
                match de.finalize() {
                    Ok([]) => Ok(value),
                    Ok(rest) => Err(format!("{} trailing bytes after the message", rest.len())),
                    Err(e) => Err(e.to_string()),
                }
            }
            // serde_json's own recursion limit (128 levels) stays on, under ours.
            Codec::Json => {
                let mut de = serde_json::Deserializer::from_slice(bytes);
                let value = T::deserialize(budget::Budgeted::new(&mut de, state)).map_err(|e| e.to_string())?;
                // Whitespace may follow the value; anything else is an error.
                de.end().map_err(|e| e.to_string())?;
                Ok(value)
            }
        }
    }
}

/// Default budget of a decode, per byte of the message: its collections, strings and byte
/// buffers may take this many times the frame's size in memory (plus [`DECODE_BASE`]). A
/// `Vec<u64>` of small values is 8x (1 wire byte each), a `Vec<String>` of short strings
/// about 24x (+ the bytes), a `Vec<Option<[u8; 1000]>>` of `None`s 1001x.
pub const DECODE_RATIO: usize = 16;

/// Default budget every decode gets on top of [`DECODE_RATIO`] times its size, so small
/// messages with a few fixed-size collections never trip it.
pub const DECODE_BASE: usize = 64 * 1024;

/// Default deepest nesting of a decoded value: each sequence, map, tuple, struct, enum,
/// `Some` and newtype struct is a level. Enough for any protocol type; small enough that a
/// recursive type cannot overflow a runtime worker's stack.
pub const MAX_DECODE_DEPTH: u32 = 64;

/// What decoding one message may cost: an allocation budget of
/// `ratio x size + base` bytes and a nesting depth. See the [module docs](crate::codec).
///
/// ```
/// use rpc_core::codec::{Codec, DecodeLimits};
/// let limits = DecodeLimits::default().with_ratio(4).with_max_depth(16);
/// let bytes = Codec::Bincode.encode(&vec![1u64, 2, 3], 100).unwrap();
/// assert_eq!(Codec::Bincode.decode_with::<Vec<u64>>(&bytes, limits).unwrap(), [1, 2, 3]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DecodeLimits {
    /// Bytes of budget per byte of the message. Default: [`DECODE_RATIO`].
    pub ratio: usize,
    /// Bytes of budget on top. Default: [`DECODE_BASE`].
    pub base: usize,
    /// Deepest nesting. Default: [`MAX_DECODE_DEPTH`].
    pub max_depth: u32,
}

impl DecodeLimits {
    /// The defaults: [`DECODE_RATIO`], [`DECODE_BASE`], [`MAX_DECODE_DEPTH`].
    pub const DEFAULT: DecodeLimits =
        DecodeLimits { ratio: DECODE_RATIO, base: DECODE_BASE, max_depth: MAX_DECODE_DEPTH };

    /// Sets [`ratio`](Self::ratio).
    #[must_use]
    pub const fn with_ratio(mut self, ratio: usize) -> Self {
        self.ratio = ratio;
        self
    }

    /// Sets [`base`](Self::base).
    #[must_use]
    pub const fn with_base(mut self, base: usize) -> Self {
        self.base = base;
        self
    }

    /// Sets [`max_depth`](Self::max_depth).
    #[must_use]
    pub const fn with_max_depth(mut self, max_depth: u32) -> Self {
        self.max_depth = max_depth;
        self
    }

    /// The allocation budget of a message of `len` bytes: `ratio x len + base`.
    pub const fn budget(&self, len: usize) -> usize {
        len.saturating_mul(self.ratio).saturating_add(self.base)
    }
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits::DEFAULT
    }
}

/// Frames up to this size are encoded into the connection's reused buffer: up to the
/// largest stream item sent whole (the engine's `WHOLE_MAX`), so streams of large items
/// reuse one buffer instead of allocating (and page-faulting) one per item.
const SMALL_FRAME: usize = 128 * 1024;

/// The largest frame built in (and so kept by) a thread's large-frame buffer: 8 MiB.
const LARGE_RETAINED: usize = 8 * 1024 * 1024;

thread_local! {
    /// The buffer large frames are built in, one per thread, reused frame after frame.
    static LARGE: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// Builds a frame of `size` bytes with `fill` in this thread's large-frame buffer and hands
/// it out as `Bytes`.
///
/// Why a reused buffer: a fresh allocation per large frame (or growing the connection's
/// shared buffer to it) is returned to the OS by glibc when freed, so every frame paid
/// fresh page faults for its size: a 1 MiB echo spent most of its CPU in them. Once the
/// carrier has written a frame and dropped it, the next one reuses the same memory
/// (`BytesMut::reserve` reclaims an allocation nothing else holds); a frame still held (a
/// stream item going out in pieces) just makes the next one allocate. The buffer keeps the
/// size of the largest frame built on its thread (shared by every connection served there),
/// up to [`LARGE_RETAINED`]; a larger frame gets an allocation of its own.
fn large_frame(size: usize, fill: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>) -> Result<Bytes, EncodeError> {
    LARGE.with(|large| {
        // A reentrant encode (a `Serialize` impl encoding a frame itself) gets its own.
        let mut fresh = BytesMut::new();
        let mut borrowed = if size <= LARGE_RETAINED { large.try_borrow_mut().ok() } else { None };
        let out = match &mut borrowed {
            Some(b) => &mut **b,
            None => &mut fresh,
        };
        out.clear();
        out.reserve(size);
        match fill(out) {
            Ok(()) => Ok(out.split().freeze()),
            Err(e) => {
                out.clear();
                Err(e)
            }
        }
    })
}

/// Where [`Codec::encode_append`] put a frame.
#[derive(Debug)]
pub(crate) enum Placed {
    /// At the end of the buffer: this many bytes.
    Appended(usize),
    /// Too large for the shared buffer: in its own allocation.
    Separate(Bytes),
}

/// `io::Write` that only counts: the exact size of a JSON frame.
struct Counter(u64);

impl io::Write for Counter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0 += bytes.len() as u64;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn is_write_zero(e: &bincode::Error) -> bool {
    matches!(**e, bincode::ErrorKind::Io(ref io) if io.kind() == io::ErrorKind::WriteZero)
}

/// `io::Write` into a frame buffer that refuses to grow the frame past `remaining` bytes.
///
/// bincode writes each field separately, mostly 1 to 9 bytes; with every step inlined the
/// compiler sees those lengths and copies without a `memcpy` call per field.
///
/// With `BLOBS`, a write of a `Blob`'s own bytes during a capture is left out (see
/// `crate::blob`); without, every write is copied, with no look.
struct LimitedWriter<'a, const BLOBS: bool> {
    buf: &'a mut BytesMut,
    remaining: usize,
}

impl<const BLOBS: bool> io::Write for LimitedWriter<'_, BLOBS> {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_all(bytes).map(|()| bytes.len())
    }

    #[inline(always)]
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() > self.remaining {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.remaining -= bytes.len();
        // A `Blob`'s bytes, when the engine leaves room for them (see `crate::blob`): not
        // copied, recorded as a hole at this offset.
        if !(BLOBS && crate::blob::take(bytes, self.buf)) {
            self.buf.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A message over the size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("message of {size} bytes exceeds the {limit}-byte limit")]
pub struct TooLarge {
    /// Encoded size.
    pub size: u64,
    /// The limit.
    pub limit: u64,
}

/// Why a value could not be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Over the size limit; nothing was built.
    #[error(transparent)]
    TooLarge(TooLarge),
    /// The value's `Serialize` impl failed (for example a map with non-string keys in a
    /// format that needs them, or a custom error).
    #[error("cannot encode: {0}")]
    Serde(String),
}

/// Finds the [`EncodeError`] inside an error returned by a transport's `start_send`.
/// Sending failed before anything was written when this returns `Some`, so the
/// connection is still usable.
pub fn encode_error(e: &io::Error) -> Option<&EncodeError> {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    loop {
        if let Some(found) = cur.downcast_ref::<EncodeError>() {
            return Some(found);
        }
        // io::Error's `source()` skips its own payload, so look inside explicitly.
        if let Some(inner) = cur.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            cur = inner;
            continue;
        }
        cur = cur.source()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_codecs_round_trip_values() {
        for c in Codec::ALL {
            let v = (7u64, 1_000u64, (1u8, "x".to_string(), vec![1u32, 2]));
            let bytes = c.encode(&v, 1 << 20).unwrap();
            let back: (u64, u64, (u8, String, Vec<u32>)) = c.decode(&bytes).unwrap();
            assert_eq!(back, v);
        }
    }

    #[test]
    fn large_frames_reuse_one_buffer_once_the_last_is_dropped_and_never_share_a_live_one() {
        // Each codec on a fresh thread: a fresh large-frame buffer, not one another codec's
        // frames left at an offset.
        for c in Codec::ALL {
            std::thread::spawn(move || large_frame_reuse(c)).join().unwrap();
        }
    }

    fn large_frame_reuse(c: Codec) {
        {
            let mut buf = BytesMut::new();
            let big = serde_bytes::ByteBuf::from(vec![7u8; SMALL_FRAME * 4]);
            let first = c.encode_into(b"h", &big, 1 << 24, &mut buf).unwrap();
            let at = first.as_ptr();
            drop(first);
            // Had the frame's memory been freed, this would likely be handed it.
            let squatter = vec![1u8; big.len() + 16];
            let second = c.encode_into(b"h", &big, 1 << 24, &mut buf).unwrap();
            assert_eq!(second.as_ptr(), at, "the dropped frame's memory was not reused");
            // While `second` is held, the next frame is built elsewhere and both stay intact.
            let other = serde_bytes::ByteBuf::from(vec![9u8; SMALL_FRAME * 4]);
            let third = c.encode_into(b"h", &other, 1 << 24, &mut buf).unwrap();
            assert_ne!(third.as_ptr(), second.as_ptr());
            assert_eq!(c.decode::<serde_bytes::ByteBuf>(&second[1..]).unwrap(), big);
            assert_eq!(c.decode::<serde_bytes::ByteBuf>(&third[1..]).unwrap(), other);
            assert!(squatter.iter().all(|&b| b == 1));
        }
    }

    #[test]
    fn a_prefix_is_written_first_and_counts_against_the_limit() {
        for c in Codec::ALL {
            let mut buf = BytesMut::new();
            let bytes = c.encode_into(b"head", &5u32, 100, &mut buf).unwrap();
            assert_eq!(&bytes[..4], b"head");
            assert_eq!(c.decode::<u32>(&bytes[4..]).unwrap(), 5);
            let big = serde_bytes::ByteBuf::from(vec![1u8; 200]);
            let whole = c.encode_into(b"head", &big, 1 << 20, &mut buf).unwrap().len();
            let err = c.encode_into(b"head", &big, whole - 1, &mut buf).unwrap_err();
            assert_eq!(err, EncodeError::TooLarge(TooLarge { size: whole as u64, limit: whole as u64 - 1 }));
        }
    }

    #[test]
    fn a_panicking_serialize_is_an_encode_error() {
        struct Bomb;
        impl Serialize for Bomb {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                panic!("bomb")
            }
        }
        let err = Codec::Bincode.encode(&Bomb, 100).unwrap_err();
        assert!(matches!(&err, EncodeError::Serde(m) if m.contains("panicked: bomb")), "{err:?}");
    }

    #[test]
    fn oversized_is_refused_with_exact_size() {
        for c in Codec::ALL {
            let big = serde_bytes::ByteBuf::from(vec![0u8; 1000]);
            let err = c.encode(&big, 999).unwrap_err();
            let EncodeError::TooLarge(t) = err else { panic!("{err:?}") };
            assert_eq!(t.limit, 999);
            // The length as a varint (bincode: 251 then a u16; postcard: 2 bytes), then the
            // bytes; JSON: `[0,0,...]`, two bytes per byte.
            let expected = match c {
                Codec::Bincode => 1003,
                Codec::Postcard => 1002,
                _ => 2001,
            };
            assert_eq!(t.size, expected, "{c:?}");
            assert_eq!(c.encode(&big, 4000).unwrap().len() as u64, t.size);
            // Over the limit by more than the small-frame buffer: still the exact size.
            let huge = serde_bytes::ByteBuf::from(vec![7u8; 3 * SMALL_FRAME]);
            let exact = c.encode(&huge, 1 << 24).unwrap().len() as u64;
            let err = c.encode(&huge, SMALL_FRAME + 10).unwrap_err();
            assert_eq!(err, EncodeError::TooLarge(TooLarge { size: exact, limit: SMALL_FRAME as u64 + 10 }), "{c:?}");
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        for c in Codec::ALL {
            let mut bytes = c.encode(&5u32, 100).unwrap().to_vec();
            bytes.push(0);
            assert!(c.decode::<u32>(&bytes).is_err(), "{c:?}");
        }
        // JSON: whitespace after the value is part of the grammar; anything else is not.
        assert_eq!(Codec::Json.decode::<u32>(b" 5 \n").unwrap(), 5);
        let err = Codec::Json.decode::<u32>(b"5 6").unwrap_err();
        assert!(err.contains("trailing characters"), "{err}");
        assert!(Codec::Json.decode::<Vec<u8>>(b"[1] []").is_err());
    }

    #[test]
    fn codec_ids_round_trip_and_json_is_2() {
        for c in Codec::ALL {
            assert_eq!(Codec::from_id(c.id()), Some(c));
        }
        assert_eq!(Codec::Json.id(), 2);
        assert_eq!(Codec::from_id(3), None);
    }

    #[test]
    fn encode_error_is_found_through_transport_wrapping() {
        let inner = io::Error::new(io::ErrorKind::InvalidInput, EncodeError::TooLarge(TooLarge { size: 5, limit: 4 }));
        let outer = io::Error::other(inner);
        assert_eq!(encode_error(&outer), Some(&EncodeError::TooLarge(TooLarge { size: 5, limit: 4 })));
        assert_eq!(encode_error(&io::Error::other("x")), None);
    }
}

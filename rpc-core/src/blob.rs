//! [`Blob`]: bytes that go to the pipe without being copied into the frame.
//!
//! A `Vec<u8>` or `serde_bytes::ByteBuf` argument, reply or stream item is copied by the
//! codec into the frame it is encoded in, then by the kernel into the pipe. A `Blob` of at
//! least [`Blob::ZERO_COPY_MIN`] bytes skips the first copy: the frame is written around
//! it, and the pipe write takes the blob's own memory as one slice of a vectored write.
//! On the wire nothing differs (it is encoded as serde bytes, like `ByteBuf`), so either
//! end may use `Blob`, `ByteBuf` or `bytes::Bytes` for the same field, and a peer that
//! does not know about any of this reads it as it reads any bytes.
//!
//! How the encoder finds the blob without a new codec: while the engine encodes a frame,
//! a `Blob`'s `Serialize` impl leaves a clone of itself (a reference count) with the
//! thread's capture, then serializes its bytes as usual; bincode and postcard write those
//! bytes in one write, and the engine's frame writer, seeing a write of exactly that
//! memory (same address and length), records the clone at that place instead of copying.
//! The match is by identity of immutable memory, so what is sent is what would have been
//! copied. Anything else (the JSON codec, which writes bytes as numbers; a frame too large
//! to be sent whole) copies as before.
//!
//! Receiving, a blob of at least [`Blob::ZERO_COPY_MIN`] bytes is read in place: bincode and
//! postcard hand a byte field over as a borrow of the message, and when the engine has lent
//! the message (`lend`) a blob whose bytes lie inside it becomes a slice of it (again
//! checked by address). It then keeps the frame's memory alive, which the pipe layer keeps to
//! at most about twice the frame's size (a large frame is read into an allocation of its own).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Immutable bytes, cheap to clone, sent without a copy into the frame (see the [module
/// docs](self)).
///
/// Use it for bulk data: file chunks as stream items, large replies. It derefs to `[u8]`
/// and converts from and into [`bytes::Bytes`] and `Vec<u8>` without copying.
///
/// ```
/// use rpc_core::Blob;
/// let chunk = Blob::from(vec![7u8; 64 * 1024]);
/// assert_eq!(chunk.len(), 64 * 1024);
/// let again = chunk.clone(); // a reference count, not a copy
/// assert_eq!(&again[..4], &[7, 7, 7, 7]);
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Blob(Bytes);

impl Blob {
    /// Blobs at least this large go to the pipe from their own memory; smaller ones are
    /// copied into the frame, which costs less than a slice of their own. The same size as
    /// the pipe layer's threshold for writing a message from its own buffer.
    pub const ZERO_COPY_MIN: usize = transport_pipe::ZERO_COPY_MIN;

    /// An empty blob.
    pub const fn new() -> Self {
        Blob(Bytes::new())
    }

    /// A blob of `bytes`, which are not copied.
    pub const fn from_static(bytes: &'static [u8]) -> Self {
        Blob(Bytes::from_static(bytes))
    }

    /// A blob holding a copy of `bytes`.
    pub fn copy_from_slice(bytes: &[u8]) -> Self {
        Blob(Bytes::copy_from_slice(bytes))
    }

    /// The bytes, as [`bytes::Bytes`] (no copy).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// The bytes, as a `Vec` (no copy when this is their only handle and they were not
    /// sliced; otherwise a copy).
    pub fn into_vec(self) -> Vec<u8> {
        self.0.into()
    }
}

impl Deref for Blob {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Bytes> for Blob {
    fn from(bytes: Bytes) -> Self {
        Blob(bytes)
    }
}

impl From<Vec<u8>> for Blob {
    fn from(bytes: Vec<u8>) -> Self {
        Blob(Bytes::from(bytes))
    }
}

impl From<bytes::BytesMut> for Blob {
    fn from(bytes: bytes::BytesMut) -> Self {
        Blob(bytes.freeze())
    }
}

impl From<&'static [u8]> for Blob {
    fn from(bytes: &'static [u8]) -> Self {
        Blob(Bytes::from_static(bytes))
    }
}

impl From<Blob> for Bytes {
    fn from(blob: Blob) -> Self {
        blob.0
    }
}

impl From<Blob> for Vec<u8> {
    fn from(blob: Blob) -> Self {
        blob.into_vec()
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A blob is usually large: its length and first bytes say enough.
        const SHOWN: usize = 16;
        write!(f, "Blob({} bytes", self.0.len())?;
        if !self.0.is_empty() {
            write!(f, ": {:02x?}", &self.0[..self.0.len().min(SHOWN)])?;
            if self.0.len() > SHOWN {
                f.write_str("…")?;
            }
        }
        f.write_str(")")
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.len() >= Self::ZERO_COPY_MIN {
            offer(&self.0);
        }
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // `bytes`, not `byte_buf`: bincode reads a byte buffer into a `Vec` of its own, but
        // lends bytes in place, which a large blob can then share (see `lend`).
        deserializer.deserialize_bytes(BlobVisitor)
    }
}

struct BlobVisitor;

impl<'de> Visitor<'de> for BlobVisitor {
    type Value = Blob;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Blob, E> {
        Ok(Blob::copy_from_slice(v))
    }

    /// Bytes read in place from the message being decoded: a large blob shares the
    /// message's memory when the engine lent it (see [`lend`]).
    fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Blob, E> {
        Ok(shared(v).unwrap_or_else(|| Blob::copy_from_slice(v)))
    }

    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Blob, E> {
        Ok(Blob::from(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Blob, E> {
        Ok(Blob::copy_from_slice(v.as_bytes()))
    }

    /// Self-describing formats without a bytes type (JSON) send bytes as a sequence of
    /// numbers. The decoder's budget bounds the sequence; the hint is only trusted up to a
    /// small preallocation.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Blob, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element::<u8>()? {
            v.push(b);
        }
        Ok(Blob::from(v))
    }
}

// The capture's state, per thread. Every frame the engine encodes starts and ends a capture,
// so its fast path is a few `const`-initialized cells (plain loads and stores); the blobs
// themselves, rarer, live in a `RefCell` touched only once one was offered.
thread_local! {
    /// The address of the buffer the frame is written into, 0 when no capture is on: writes
    /// into another buffer (a `Serialize` impl encoding something of its own meanwhile)
    /// copy as usual.
    static TARGET: Cell<usize> = const { Cell::new(0) };
    /// The address of the buffer the capture was started for (`TARGET` until a
    /// [`retarget`] moves the frame elsewhere).
    static ORIGIN: Cell<usize> = const { Cell::new(0) };
    /// Whether `TAKEN` may hold anything.
    static DIRTY: Cell<bool> = const { Cell::new(false) };
    static TAKEN: RefCell<Taken> = const { RefCell::new(Taken { offered: None, holes: Vec::new() }) };
}

/// What the capture holds once a blob was offered.
struct Taken {
    /// The last blob whose `Serialize` ran: its bytes are the next large write, if any.
    offered: Option<Bytes>,
    /// (offset in the frame buffer, blob) in write order.
    holes: Vec<(usize, Bytes)>,
}

/// Leaves a clone of `bytes` for the frame writer, if a capture is on.
fn offer(bytes: &Bytes) {
    if TARGET.with(Cell::get) == 0 {
        return;
    }
    TAKEN.with(|t| {
        if let Ok(mut t) = t.try_borrow_mut() {
            t.offered = Some(bytes.clone());
            DIRTY.with(|d| d.set(true));
        }
    });
}

/// Blobs left out of a frame: each with its offset in the frame buffer (where its bytes
/// belong, between the bytes before and after it), in order.
pub(crate) type Holes = Vec<(usize, Bytes)>;

/// Starts a capture for a frame about to be written into `buffer`: until the capture
/// ends, a blob whose bytes are written into `buffer` is left out of it (see [`take`]).
///
/// Not nested: only the engine's outbox starts captures, and it never encodes a frame
/// inside another.
#[inline(always)]
pub(crate) fn begin(buffer: *const bytes::BytesMut) -> Capture {
    ORIGIN.with(|c| c.set(buffer as usize));
    TARGET.with(|c| c.set(buffer as usize));
    if DIRTY.with(Cell::get) {
        clear_taken();
    }
    Capture(())
}

/// A capture under way. [`Capture::end`] ends it and hands over the blobs left out;
/// dropped (an encode that unwinds), it ends it all the same, so no later encode on this
/// thread, into whatever buffer then sits at the same address, is taken for its frame.
#[must_use]
pub(crate) struct Capture(());

impl Capture {
    /// Ends the capture: the blobs left out of the frame, if any (nothing of them is kept).
    #[inline(always)]
    pub(crate) fn end(self) -> Option<Holes> {
        std::mem::forget(self);
        end_now()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        drop(end_now());
    }
}

#[inline(always)]
fn end_now() -> Option<Holes> {
    TARGET.with(|c| c.set(0));
    ORIGIN.with(|c| c.set(0));
    if DIRTY.with(Cell::get) { end_with_blobs() } else { None }
}

#[cold]
fn end_with_blobs() -> Option<Holes> {
    let holes = TAKEN.with(|t| t.try_borrow_mut().map(|mut t| std::mem::take(&mut t.holes)).unwrap_or_default());
    clear_taken();
    (!holes.is_empty()).then_some(holes)
}

#[cold]
fn clear_taken() {
    DIRTY.with(|d| d.set(false));
    TAKEN.with(|t| {
        if let Ok(mut t) = t.try_borrow_mut() {
            t.offered = None;
            t.holes.clear();
        }
    });
}

/// Whether a capture is on: an encode may then write a blob's bytes into the frame buffer.
#[inline(always)]
pub(crate) fn capturing() -> bool {
    TARGET.with(Cell::get) != 0
}

/// Called by a frame writer about to copy `written` to the end of `buffer`: true if a
/// capture is on for `buffer` and `written` is exactly the memory of the blob just
/// offered, which is then recorded as a hole there (the writer skips the copy). Only
/// large writes are worth asking about.
#[inline]
pub(crate) fn take(written: &[u8], buffer: &bytes::BytesMut) -> bool {
    if written.len() < Blob::ZERO_COPY_MIN || TARGET.with(Cell::get) != std::ptr::from_ref(buffer) as usize {
        return false;
    }
    TAKEN.with(|t| {
        let Ok(mut t) = t.try_borrow_mut() else { return false };
        let Some(offered) = t.offered.take_if(|b| b.as_ptr() == written.as_ptr() && b.len() == written.len()) else {
            return false;
        };
        t.holes.push((buffer.len(), offered));
        true
    })
}

/// Moves the capture started for `origin` (if one is on) to `buffer`, which the frame is
/// now written into from its start instead: the holes recorded so far are dropped, and new
/// ones count their offsets in `buffer`. For a frame too large for the shared buffer,
/// built in a buffer of its own. An encode into any other buffer (nested in a `Serialize`
/// impl) leaves the capture alone.
pub(crate) fn retarget(origin: *const bytes::BytesMut, buffer: &bytes::BytesMut) {
    if ORIGIN.with(Cell::get) != origin as usize || origin.is_null() {
        return;
    }
    TARGET.with(|c| c.set(std::ptr::from_ref(buffer) as usize));
    forget_holes();
}

/// Drops the holes recorded so far in this capture: the frame is being written again from
/// the start, or elsewhere.
pub(crate) fn forget_holes() {
    if DIRTY.with(Cell::get) {
        TAKEN.with(|t| {
            if let Ok(mut t) = t.try_borrow_mut() {
                t.holes.clear();
            }
        });
    }
}

// The receiving side. A decoder reading from a slice (bincode, postcard) hands a blob its
// bytes as a borrow of the message; when the message is held in a `Bytes` the engine lent
// for the decode, a large blob becomes a slice of it, a reference count instead of a copy.
thread_local! {
    /// The message being decoded, if the engine lent it (a reference count of it).
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Lends `message` to the blobs decoded from it until the guard drops: a blob of at least
/// [`Blob::ZERO_COPY_MIN`] bytes that lie in `message` is then a slice of it, not a copy.
///
/// Only worth it for a message that can hold such a blob (the caller checks its size).
/// Nested lends (a `Deserialize` impl decoding a message of its own) restore the outer one.
pub(crate) fn lend(message: &Bytes) -> Lent {
    let outer = SOURCE.with(|s| s.try_borrow_mut().map(|mut s| s.replace(message.clone())).ok().flatten());
    Lent { outer }
}

/// A message lent to the blobs decoded from it (see [`lend`]). Dropping it (also on
/// unwinding) ends the lend, so the thread keeps no count of the message after its decode.
#[must_use]
pub(crate) struct Lent {
    outer: Option<Bytes>,
}

impl Drop for Lent {
    fn drop(&mut self) {
        let outer = self.outer.take();
        SOURCE.with(|s| {
            if let Ok(mut s) = s.try_borrow_mut() {
                *s = outer;
            }
        });
    }
}

/// `bytes` as a slice of the lent message, if they are large enough and lie in it.
fn shared(bytes: &[u8]) -> Option<Blob> {
    if bytes.len() < Blob::ZERO_COPY_MIN {
        return None;
    }
    in_lent(bytes).map(Blob)
}

/// `bytes` as a slice of the lent message if they lie in it, else a copy.
pub(crate) fn lent_or_copied(bytes: &[u8]) -> Bytes {
    in_lent(bytes).unwrap_or_else(|| Bytes::copy_from_slice(bytes))
}

/// `bytes` as a slice of the lent message, if they lie in it.
fn in_lent(bytes: &[u8]) -> Option<Bytes> {
    SOURCE.with(|s| {
        let s = s.try_borrow().ok()?;
        let message = s.as_ref()?;
        let start = (bytes.as_ptr() as usize).checked_sub(message.as_ptr() as usize)?;
        let end = start + bytes.len();
        // Memory inside the (immutable) message: the slice holds exactly these bytes.
        (end <= message.len()).then(|| message.slice(start..end))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_dropped_by_an_unwinding_encode_ends_and_keeps_no_blob() {
        let blob = Blob::from(vec![5u8; Blob::ZERO_COPY_MIN]);
        let frame = bytes::BytesMut::new();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _capture = begin(&raw const frame);
            blob.serialize(serde_json::value::Serializer).unwrap();
            assert!(take(&blob, &frame));
            panic!("the encode unwinds");
        }));
        assert!(unwound.is_err());
        assert!(!capturing(), "the capture ended");
        assert!(!take(&blob, &frame), "nothing is taken after it");
        assert!(blob.into_bytes().is_unique(), "no clone of the blob is kept");
    }

    #[test]
    fn a_blob_round_trips_as_plain_bytes_in_every_codec_and_reads_as_bytebuf() {
        for codec in crate::Codec::ALL {
            for len in [0, 5, Blob::ZERO_COPY_MIN + 3] {
                let blob = Blob::from((0..len).map(|i| i as u8).collect::<Vec<u8>>());
                let wire = codec.encode(&blob, 1 << 20).unwrap();
                let back: Blob = codec.decode(&wire).unwrap();
                assert_eq!(back, blob, "{codec:?}, {len} bytes");
                let as_bytebuf: serde_bytes::ByteBuf = codec.decode(&wire).unwrap();
                assert_eq!(&as_bytebuf[..], &blob[..], "{codec:?}: a ByteBuf reads a Blob");
                let from_bytebuf = codec.encode(&as_bytebuf, 1 << 20).unwrap();
                assert_eq!(from_bytebuf, wire, "{codec:?}: same bytes on the wire as a ByteBuf");
            }
        }
    }

    #[test]
    fn only_the_offered_blobs_own_memory_is_taken_and_nothing_is_held_after_the_capture() {
        let blob = Blob::from(vec![1u8; Blob::ZERO_COPY_MIN]);
        let same_bytes_elsewhere = vec![1u8; Blob::ZERO_COPY_MIN];
        let mut frame = bytes::BytesMut::new();
        frame.extend_from_slice(&[0; 9]);
        let other = bytes::BytesMut::new();
        let capture = begin(&raw const frame);
        blob.serialize(serde_json::value::Serializer).unwrap();
        assert!(!take(&same_bytes_elsewhere, &frame), "equal bytes at another address are copied");
        assert!(!take(&blob[1..], &frame), "a part of the blob is copied");
        assert!(!take(&blob, &other), "a write into another buffer copies");
        assert!(take(&blob, &frame));
        assert!(!take(&blob, &frame), "an offer is taken once");
        let holes = capture.end().expect("one hole");
        assert_eq!(holes.len(), 1);
        assert_eq!(holes[0].0, 9);
        assert_eq!(holes[0].1.as_ptr(), blob.as_ptr());
        drop(holes);
        assert!(TAKEN.with(|t| t.borrow().offered.is_none()) && TARGET.with(Cell::get) == 0);
        // Outside a capture a blob offers nothing.
        blob.serialize(serde_json::value::Serializer).unwrap();
        assert!(!take(&blob, &frame));
    }

    /// Whether `blob`'s bytes lie in `message`'s memory.
    fn inside(blob: &Blob, message: &Bytes) -> bool {
        let (start, end) = (message.as_ptr() as usize, message.as_ptr() as usize + message.len());
        (start..=end).contains(&(blob.as_ptr() as usize)) && blob.as_ptr() as usize + blob.len() <= end
    }

    #[test]
    fn a_large_blob_decoded_from_a_lent_message_shares_its_memory_and_nothing_else_does() {
        for codec in [crate::Codec::Bincode, crate::Codec::Postcard] {
            let large = Blob::from((0..Blob::ZERO_COPY_MIN + 7).map(|i| i as u8).collect::<Vec<u8>>());
            let small = Blob::from(vec![3u8; Blob::ZERO_COPY_MIN - 1]);
            let message = codec.encode(&(small.clone(), large.clone()), 1 << 20).unwrap();

            let lent = lend(&message);
            let (s, l): (Blob, Blob) = codec.decode(&message).unwrap();
            drop(lent);
            assert_eq!((&s, &l), (&small, &large), "{codec:?}");
            assert!(inside(&l, &message), "{codec:?}: the large blob is a slice of the message");
            assert!(!inside(&s, &message), "{codec:?}: a small blob is a copy");

            // Not lent: a copy. Lent, but the bytes are another message's: a copy.
            let (_, copied): (Blob, Blob) = codec.decode(&message).unwrap();
            assert!(!inside(&copied, &message), "{codec:?}: without a lend the blob is copied");
            let other = Bytes::from(vec![0u8; 16]);
            let lent = lend(&other);
            let (_, copied): (Blob, Blob) = codec.decode(&message).unwrap();
            drop(lent);
            assert!(!inside(&copied, &message) && copied == large, "{codec:?}: bytes outside the lent message");

            // The thread keeps no count of the message once the lend ends: only `l` does.
            drop(l);
            assert!(message.is_unique(), "{codec:?}: nothing holds the message after the decode");
        }
    }

    #[test]
    fn a_nested_lend_restores_the_outer_one_also_when_it_unwinds() {
        let outer = Bytes::from(vec![1u8; 8]);
        let inner = Bytes::from(vec![2u8; 8]);
        let lent = lend(&outer);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _inner = lend(&inner);
            assert_eq!(SOURCE.with(|s| s.borrow().as_ref().map(|b| b.as_ptr())), Some(inner.as_ptr()));
            panic!("a Deserialize impl unwinds");
        }));
        assert!(unwound.is_err());
        assert_eq!(SOURCE.with(|s| s.borrow().as_ref().map(|b| b.as_ptr())), Some(outer.as_ptr()), "the outer lend");
        drop(lent);
        assert!(SOURCE.with(|s| s.borrow().is_none()));
        assert!(outer.is_unique() && inner.is_unique());
    }
}

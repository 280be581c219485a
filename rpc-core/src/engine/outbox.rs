//! The write side of a connection: frames are encoded straight into one reused buffer,
//! packed into `Batch` messages when the peer announced batches, and handed to the carrier
//! a message at a time.
//!
//! Why batch: with one carrier message per frame, a stream of small items paid the
//! carrier's per-message work (the length prefix, a copy into the write buffer, splitting
//! the read buffer, three layers of `Stream`/`Sink` polling on each side) for every item,
//! and that was most of the cost of an item. A batch pays it once for up to
//! [`BATCH_TARGET`] bytes of frames. A batch of one frame is sent as that frame alone, so
//! a lone call or reply looks exactly as it would without batching.
//!
//! Memory: the buffer holds at most one batch ([`BATCH_TARGET`] plus the frame that
//! crossed it, and a frame encoded here is at most the codec's shared-buffer size), and at
//! most two sealed messages wait for the carrier; the engine adds nothing while they wait.
//!
//! Blobs: a frame holding a [`Blob`](crate::Blob) of [`Blob::ZERO_COPY_MIN`] bytes or more
//! is encoded without the blob's bytes (see [`crate::blob`]) and sent alone as a message in
//! parts (the frame's bytes before the blob, the blob's own memory, the bytes after it),
//! which the carrier writes as one message with one vectored write. Only on carriers that
//! send messages as they are ([`FrameTransport::takes_parts`]).
//!
//! [`Blob::ZERO_COPY_MIN`]: crate::Blob::ZERO_COPY_MIN
//! [`FrameTransport::takes_parts`]: super::transport::FrameTransport::takes_parts

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures::Sink;
use serde::Serialize;

use super::streams::WHOLE_MAX;
use super::transport::Outbound;
use crate::blob::{self, Holes};
use crate::codec::{Codec, EncodeError, Placed};
use crate::stats::Counters;
use crate::wire::{BATCH_ENTRY_LEN, Frame, HEADER_LEN, Kind};

/// A batch is sealed once it holds this many bytes: the size of a pipe's buffered write.
pub(crate) const BATCH_TARGET: usize = 64 * 1024;

/// The batch header: kind `Batch`, no flags, exchange 0.
const BATCH_HEADER: [u8; HEADER_LEN] = {
    let mut h = [0u8; HEADER_LEN];
    h[0] = 16;
    h
};

/// What [`Outbox::encode`] did with a frame.
pub(crate) enum Encoded {
    /// Queued to be sent; its size.
    Queued(usize),
    /// Larger than [`WHOLE_MAX`]: not queued, here whole (in parts if it holds blobs).
    Large(Rest),
}

/// A frame, or what is left of one, as a run of buffers: its bytes around its blobs and
/// the blobs' own memory. A large stream item is sent from here piece by piece, each piece
/// a slice of these buffers, so no byte of it is copied on its way to the pipe.
#[derive(Debug, Default)]
pub(crate) struct Rest {
    parts: VecDeque<Bytes>,
    len: usize,
}

impl Rest {
    fn new(parts: impl IntoIterator<Item = Bytes>) -> Self {
        let parts: VecDeque<Bytes> = parts.into_iter().filter(|p| !p.is_empty()).collect();
        Rest { len: parts.iter().map(Bytes::len).sum(), parts }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes the first `n` bytes (all if fewer are left), as slices of the buffers.
    pub(crate) fn take(&mut self, n: usize) -> Vec<Bytes> {
        let mut taken = Vec::new();
        let mut want = n.min(self.len);
        self.len -= want;
        while want > 0 {
            let Some(front) = self.parts.front_mut() else { break };
            if front.len() <= want {
                want -= front.len();
                taken.extend(self.parts.pop_front());
            } else {
                taken.push(front.split_to(want));
                want = 0;
            }
        }
        taken
    }

    /// The message to send all of it as one frame.
    fn into_message(mut self) -> Outbound {
        if self.parts.len() == 1 {
            return Outbound::One(self.parts.pop_front().unwrap_or_default());
        }
        Outbound::Parts(self.parts.into())
    }
}

pub(crate) struct Outbox {
    /// The batch being packed: [`BATCH_HEADER`], then each frame after its length. Empty
    /// when no frame is in it.
    buf: BytesMut,
    /// Frames in `buf`.
    frames: usize,
    /// Messages sealed and not yet taken by the carrier, oldest first.
    sealed: VecDeque<Outbound>,
    /// Whether both ends announced batches; if not, every frame is its own message.
    batching: bool,
    /// Whether the carrier takes messages in parts, so blobs can be left out of frames.
    parts: bool,
    /// The largest message the peer reads; a batch never grows past it.
    send_limit: usize,
    /// Where the bytes handed to the carrier are counted.
    counters: Arc<Counters>,
}

impl Outbox {
    pub(crate) fn new(batching: bool, parts: bool, send_limit: usize, counters: Arc<Counters>) -> Self {
        debug_assert_eq!(BATCH_HEADER[0], Kind::Batch.code());
        Outbox { buf: BytesMut::new(), frames: 0, sealed: VecDeque::new(), batching, parts, send_limit, counters }
    }

    /// True if nothing is waiting to be handed to the carrier.
    pub(crate) fn is_empty(&self) -> bool {
        self.frames == 0 && self.sealed.is_empty()
    }

    /// Encodes `frame` (at most `limit` bytes) into the outbox; its encoded size, or why it
    /// cannot be encoded (then nothing was added). Call only after [`poll_room`] said yes.
    ///
    /// [`poll_room`]: Self::poll_room
    pub(crate) fn push_frame<C: Serialize, R: Serialize>(
        &mut self,
        frame: &Frame<C, R>,
        codec: Codec,
        limit: usize,
    ) -> Result<usize, EncodeError> {
        match self.encode(frame, codec, limit)? {
            Encoded::Queued(len) => Ok(len),
            Encoded::Large(rest) => {
                let len = rest.len();
                self.seal();
                self.sealed.push_back(rest.into_message());
                Ok(len)
            }
        }
    }

    /// Encodes `frame`: queued if it is at most [`WHOLE_MAX`] bytes, else handed back (a
    /// stream item that large goes out in pieces).
    pub(crate) fn encode<C: Serialize, R: Serialize>(
        &mut self,
        frame: &Frame<C, R>,
        codec: Codec,
        limit: usize,
    ) -> Result<Encoded, EncodeError> {
        self.encode_by(true, |buf| frame.encode_append(codec, limit, buf))
    }

    /// Encodes a stream item frame (`kind` is `UpItem` or `DownItem`) of exchange `id`, as
    /// [`encode`](Self::encode) would encode that frame. With `blobs` false a `Blob` in it
    /// is copied: the stream's items have been small, and the look for blobs costs a small
    /// item a noticeable share of its time (docs/ARCHITECTURE.md, "Bulk bytes are a type").
    pub(crate) fn encode_item<T: Serialize>(
        &mut self,
        kind: Kind,
        id: u64,
        item: &T,
        codec: Codec,
        limit: usize,
        blobs: bool,
    ) -> Result<Encoded, EncodeError> {
        let encoded = self.encode_by(blobs, |buf| crate::wire::encode_item_append(kind, id, item, codec, limit, buf));
        if encoded.is_ok() {
            self.counters.items_out(1);
        }
        encoded
    }

    /// Encodes a frame with `append` (which writes it at the end of the buffer, or hands it
    /// back in its own allocation, and leaves the buffer as it was on error).
    #[inline]
    fn encode_by(
        &mut self,
        blobs: bool,
        append: impl FnOnce(&mut BytesMut) -> Result<Placed, EncodeError>,
    ) -> Result<Encoded, EncodeError> {
        if !self.batching {
            self.buf.clear();
            let (placed, holes) = self.append_capturing(blobs, append);
            let bytes = match placed? {
                Placed::Appended(_) => self.buf.split().freeze(),
                Placed::Separate(bytes) => bytes,
            };
            if let Some(holes) = holes {
                // Appended or not, the frame's bytes (without its blobs) start `bytes`.
                let len = bytes.len();
                return Ok(self.push_parts(bytes, 0, len, holes));
            }
            if bytes.len() > WHOLE_MAX {
                return Ok(Encoded::Large(Rest::new([bytes])));
            }
            let len = bytes.len();
            self.sealed.push_back(Outbound::One(bytes));
            return Ok(Encoded::Queued(len));
        }
        let entry = self.begin_entry();
        match self.append_capturing(blobs, append) {
            (Ok(Placed::Appended(len)), Some(holes)) => {
                // The frame goes alone, in parts, after the batch before it.
                let start = entry + BATCH_ENTRY_LEN;
                let head = self.buf.split_off(start).freeze();
                self.abandon_entry(entry);
                self.seal();
                Ok(self.push_parts(head, start, len, holes))
            }
            (Ok(Placed::Separate(bytes)), Some(holes)) => {
                self.abandon_entry(entry);
                self.seal();
                let len = bytes.len();
                Ok(self.push_parts(bytes, 0, len, holes))
            }
            (r, _) => self.placed_in_batch(entry, r),
        }
    }

    /// Runs `append` on the buffer, leaving blobs out of the frame if `blobs` and the
    /// carrier takes messages in parts.
    #[inline(always)]
    fn append_capturing(
        &mut self,
        blobs: bool,
        append: impl FnOnce(&mut BytesMut) -> Result<Placed, EncodeError>,
    ) -> (Result<Placed, EncodeError>, Option<Holes>) {
        if !(self.parts && blobs) {
            return (append(&mut self.buf), None);
        }
        let capture = blob::begin(&raw const self.buf);
        let placed = append(&mut self.buf);
        (placed, capture.end())
    }

    /// Queues a frame whose blobs were left out (the batch before it is sealed): `head` is
    /// the rest of its bytes (`len` of them), which began at offset `start` of the buffer
    /// the holes' offsets count in. A frame over [`WHOLE_MAX`] is handed back in parts.
    fn push_parts(&mut self, mut head: Bytes, start: usize, len: usize, holes: Holes) -> Encoded {
        let total = len + holes.iter().map(|(_, b)| b.len()).sum::<usize>();
        let mut parts = Vec::with_capacity(2 * holes.len() + 1);
        let mut consumed = start;
        for (at, blob) in holes {
            parts.push(head.split_to(at - consumed));
            consumed = at;
            parts.push(blob);
        }
        parts.push(head);
        parts.retain(|p| !p.is_empty());
        if total > WHOLE_MAX {
            return Encoded::Large(Rest::new(parts));
        }
        self.sealed.push_back(Outbound::Parts(parts));
        Encoded::Queued(total)
    }

    /// Queues a `Piece` frame: `header` (its fixed header) then `parts`. A small piece is
    /// copied into the batch; a large one goes alone, its parts written from their memory.
    pub(crate) fn push_piece(&mut self, header: &[u8], parts: Vec<Bytes>) {
        let len = header.len() + parts.iter().map(Bytes::len).sum::<usize>();
        if len < crate::Blob::ZERO_COPY_MIN || !self.parts {
            let mut frame = BytesMut::with_capacity(len);
            frame.extend_from_slice(header);
            parts.iter().for_each(|p| frame.extend_from_slice(p));
            if self.batching {
                self.push_encoded_slice(&frame);
            } else {
                self.push_alone(frame.freeze());
            }
            return;
        }
        self.seal();
        let mut message = Vec::with_capacity(parts.len() + 1);
        message.push(Bytes::copy_from_slice(header));
        message.extend(parts);
        self.sealed.push_back(Outbound::Parts(message));
    }

    /// Completes a batch entry started at `entry` once its frame was encoded (or not).
    #[inline]
    fn placed_in_batch(&mut self, entry: usize, placed: Result<Placed, EncodeError>) -> Result<Encoded, EncodeError> {
        match placed {
            Ok(Placed::Appended(len)) => {
                self.end_entry(entry, len);
                Ok(Encoded::Queued(len))
            }
            Ok(Placed::Separate(bytes)) => {
                self.abandon_entry(entry);
                if bytes.len() > WHOLE_MAX {
                    return Ok(Encoded::Large(Rest::new([bytes])));
                }
                let len = bytes.len();
                self.push_alone(bytes);
                Ok(Encoded::Queued(len))
            }
            Err(e) => {
                self.abandon_entry(entry);
                Err(e)
            }
        }
    }

    /// Adds a frame encoded elsewhere (a one-way call, encoded by its caller).
    pub(crate) fn push_encoded(&mut self, bytes: Bytes) {
        // Small ones are copied into the batch; a large one would cost a copy for nothing.
        if !self.batching || bytes.len() > BATCH_TARGET / 4 {
            self.push_alone(bytes);
            return;
        }
        self.push_encoded_slice(&bytes);
    }

    /// Adds a small frame encoded elsewhere, copying it.
    pub(crate) fn push_encoded_slice(&mut self, bytes: &[u8]) {
        if !self.batching {
            self.push_alone(Bytes::copy_from_slice(bytes));
            return;
        }
        let entry = self.begin_entry();
        self.buf.extend_from_slice(bytes);
        self.end_entry(entry, bytes.len());
    }

    /// Seals the batch so far, then queues `bytes` as a message of its own after it.
    fn push_alone(&mut self, bytes: Bytes) {
        self.seal();
        self.sealed.push_back(Outbound::One(bytes));
    }

    /// Starts a batch entry: the batch header if this is the first frame, then room for the
    /// frame's length. Returns where the entry starts.
    fn begin_entry(&mut self) -> usize {
        if self.frames == 0 {
            self.buf.clear();
            self.buf.extend_from_slice(&BATCH_HEADER);
        }
        let at = self.buf.len();
        self.buf.put_u32_le(0);
        at
    }

    /// Completes the entry at `at`, whose frame is `len` bytes long.
    fn end_entry(&mut self, at: usize, len: usize) {
        // A frame is at most the message limit, which the handshake keeps below 4 GiB.
        let len32 = u32::try_from(len).expect("a frame under 4 GiB");
        self.buf[at..at + BATCH_ENTRY_LEN].copy_from_slice(&len32.to_le_bytes());
        self.frames += 1;
        if self.frames > 1 && self.buf.len() > self.send_limit {
            // This frame took the batch past what the peer reads: the frames before it go
            // now, and it starts the next batch.
            let entry = self.buf.split_off(at);
            self.frames -= 1;
            self.seal();
            self.buf.clear();
            self.buf.extend_from_slice(&BATCH_HEADER);
            self.buf.extend_from_slice(&entry);
            self.frames = 1;
        }
    }

    /// Undoes [`begin_entry`](Self::begin_entry).
    fn abandon_entry(&mut self, at: usize) {
        if self.frames == 0 {
            self.buf.clear();
        } else {
            self.buf.truncate(at);
        }
    }

    /// Moves the batch to the sealed messages; a batch of one frame goes as that frame.
    fn seal(&mut self) {
        match self.frames {
            0 => {}
            1 => {
                let whole = self.buf.split().freeze();
                self.sealed.push_back(Outbound::One(whole.slice(HEADER_LEN + BATCH_ENTRY_LEN..)));
            }
            _ => self.sealed.push_back(Outbound::One(self.buf.split().freeze())),
        }
        self.frames = 0;
    }

    /// True if a frame can be added without asking the carrier: a batch is under way (the
    /// carrier had room when it started) and has room. The per-item fast path of
    /// [`poll_room`](Self::poll_room).
    #[inline]
    pub(crate) fn has_room(&self) -> bool {
        self.frames > 0 && self.buf.len() < BATCH_TARGET && self.sealed.is_empty()
    }

    /// Hands sealed messages to the carrier, sealing the batch first if it is full (or if
    /// `all`). `Ready(Ok)` once nothing sealed waits and there is room for more frames.
    ///
    /// A frame is committed once it is in the outbox, so a new batch (or, without
    /// batching, a new frame) is started only while the carrier has room: a call that
    /// waits for a full pipe waits in its caller's queue, where it can still expire or be
    /// withdrawn without a byte of it being written. A batch already started only exists
    /// because the carrier had room when it started, and nothing was sent since.
    pub(crate) fn poll_room<T>(
        &mut self,
        transport: &mut Pin<Box<T>>,
        cx: &mut Context<'_>,
        all: bool,
    ) -> Poll<io::Result<()>>
    where
        T: Sink<Outbound, Error = io::Error> + ?Sized,
    {
        if all || self.buf.len() >= BATCH_TARGET {
            self.seal();
        }
        while !self.sealed.is_empty() {
            std::task::ready!(transport.as_mut().poll_ready(cx))?;
            let Some(next) = self.sealed.pop_front() else { break };
            // With its length prefix: what the pipe carries.
            self.counters.bytes_out(next.len() + 4);
            transport.as_mut().start_send(next)?;
        }
        if self.frames == 0 && !all {
            std::task::ready!(transport.as_mut().poll_ready(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::split_batch;

    type F = Frame<(), u32>;

    fn drain(o: &mut Outbox) -> Vec<Bytes> {
        o.seal();
        o.sealed.drain(..).map(|m| m.join()).collect()
    }

    #[test]
    fn frames_are_packed_into_one_batch_that_splits_back_into_them() {
        let mut o = Outbox::new(true, true, 1 << 20, Arc::default());
        let frames: Vec<F> = (0..5).map(|i| Frame::Reply { id: i, body: i as u32 }).collect();
        for f in &frames {
            o.push_frame(f, Codec::Bincode, 1 << 20).unwrap();
        }
        let msgs = drain(&mut o);
        assert_eq!(msgs.len(), 1);
        let got: Vec<F> =
            split_batch(&msgs[0]).unwrap().into_iter().map(|b| F::decode(Codec::Bincode, b).unwrap()).collect();
        assert_eq!(got, frames);
    }

    #[test]
    fn a_batch_of_one_is_sent_as_the_frame_alone() {
        let mut o = Outbox::new(true, true, 1 << 20, Arc::default());
        let f: F = Frame::Reply { id: 7, body: 9 };
        o.push_frame(&f, Codec::Bincode, 1 << 20).unwrap();
        let msgs = drain(&mut o);
        assert_eq!(msgs, vec![f.encode(Codec::Bincode, 1 << 20).unwrap()]);
    }

    #[test]
    fn without_batching_every_frame_is_its_own_message() {
        let mut o = Outbox::new(false, true, 1 << 20, Arc::default());
        for i in 0..3 {
            o.push_frame(&F::Cancel { id: i }, Codec::Bincode, 1 << 20).unwrap();
        }
        let msgs = drain(&mut o);
        assert_eq!(msgs.len(), 3);
        assert!(msgs.iter().all(|m| m[0] == Kind::Cancel.code()));
    }

    #[test]
    fn a_batch_never_exceeds_the_peers_message_limit() {
        // Frames of 10 + 1 + 200 bytes, a 1000-byte limit: at most 4 entries per batch.
        let limit = 1000;
        let mut o = Outbox::new(true, true, limit, Arc::default());
        let f = Frame::<(), serde_bytes::ByteBuf>::Reply { id: 1, body: serde_bytes::ByteBuf::from(vec![7; 200]) };
        let mut sent = 0;
        for _ in 0..20 {
            o.push_frame(&f, Codec::Bincode, limit).unwrap();
        }
        for m in drain(&mut o) {
            assert!(m.len() <= limit, "a message of {} bytes", m.len());
            sent += split_batch(&m).map(|v| v.len()).unwrap_or(1);
        }
        assert_eq!(sent, 20);
    }

    #[test]
    fn a_frame_that_fails_to_encode_leaves_the_batch_as_it_was() {
        let mut o = Outbox::new(true, true, 1 << 20, Arc::default());
        o.push_frame(&F::Cancel { id: 1 }, Codec::Bincode, 1 << 20).unwrap();
        let big = Frame::<(), serde_bytes::ByteBuf>::Reply { id: 2, body: serde_bytes::ByteBuf::from(vec![0; 100]) };
        assert!(matches!(o.push_frame(&big, Codec::Bincode, 50), Err(EncodeError::TooLarge(_))));
        o.push_frame(&F::Cancel { id: 3 }, Codec::Bincode, 1 << 20).unwrap();
        let msgs = drain(&mut o);
        let ids: Vec<u64> =
            split_batch(&msgs[0]).unwrap().iter().map(|b| F::decode(Codec::Bincode, b).unwrap().id()).collect();
        assert_eq!(ids, [1, 3]);
    }

    /// A reply frame whose body holds two blobs between other fields.
    type WithBlobs = Frame<(), (u8, crate::Blob, u16, crate::Blob, u8)>;

    fn with_blobs(small: bool) -> (WithBlobs, [crate::Blob; 2]) {
        let n = if small { crate::Blob::ZERO_COPY_MIN - 1 } else { crate::Blob::ZERO_COPY_MIN };
        let blobs = [1u8, 2].map(|b| crate::Blob::from(vec![b; n]));
        (Frame::Reply { id: 9, body: (1, blobs[0].clone(), 2, blobs[1].clone(), 3) }, blobs)
    }

    #[test]
    fn a_frame_with_blobs_goes_alone_in_parts_that_hold_the_blobs_own_memory() {
        for codec in [Codec::Bincode, Codec::Postcard] {
            for batching in [true, false] {
                let mut o = Outbox::new(batching, true, 1 << 20, Arc::default());
                o.push_frame(&F::Cancel { id: 1 }, codec, 1 << 20).unwrap();
                let (f, blobs) = with_blobs(false);
                let plain = f.encode(codec, 1 << 20).unwrap();
                let len = o.push_frame(&f, codec, 1 << 20).unwrap();
                assert_eq!(len, plain.len(), "the frame's size counts its blobs");
                o.push_frame(&F::Cancel { id: 2 }, codec, 1 << 20).unwrap();
                o.seal();
                let msgs: Vec<Outbound> = o.sealed.drain(..).collect();
                assert_eq!(msgs.len(), 3, "{codec:?}, batching {batching}");
                let Outbound::Parts(parts) = &msgs[1] else {
                    panic!("{codec:?}: the frame with blobs is not in parts")
                };
                for blob in &blobs {
                    assert!(parts.iter().any(|p| p.as_ptr() == blob.as_ptr() && p.len() == blob.len()));
                }
                let [first, frame, last] = <[Outbound; 3]>::try_from(msgs).ok().unwrap().map(Outbound::join);
                assert_eq!(frame, plain, "{codec:?}: the parts are the frame");
                assert_eq!(F::decode(codec, &first).unwrap().id(), 1);
                assert_eq!(F::decode(codec, &last).unwrap().id(), 2);
            }
        }
    }

    #[test]
    fn small_blobs_json_and_a_carrier_without_parts_get_the_frame_whole() {
        let cases = [(Codec::Bincode, true, true), (Codec::Json, false, true), (Codec::Bincode, false, false)];
        for (codec, small, parts) in cases {
            let mut o = Outbox::new(false, parts, 1 << 20, Arc::default());
            let (f, _) = with_blobs(small);
            o.push_frame(&f, codec, 1 << 20).unwrap();
            let msgs: Vec<Outbound> = o.sealed.drain(..).collect();
            assert!(matches!(&msgs[..], [Outbound::One(b)] if *b == f.encode(codec, 1 << 20).unwrap()), "{codec:?}");
        }
    }

    #[test]
    fn a_frame_with_a_blob_over_the_limit_is_refused_and_leaves_nothing_behind() {
        let mut o = Outbox::new(true, true, 1 << 20, Arc::default());
        o.push_frame(&F::Cancel { id: 1 }, Codec::Bincode, 1 << 20).unwrap();
        let (f, blobs) = with_blobs(false);
        let limit = 2 * crate::Blob::ZERO_COPY_MIN;
        assert!(matches!(o.push_frame(&f, Codec::Bincode, limit), Err(EncodeError::TooLarge(_))));
        let msgs = drain(&mut o);
        assert_eq!(msgs.len(), 1);
        assert_eq!(F::decode(Codec::Bincode, &msgs[0]).unwrap().id(), 1);
        drop(f);
        assert!(blobs.into_iter().all(|b| b.into_bytes().is_unique()), "no clone of a blob is kept");
    }

    #[test]
    fn a_frame_over_the_whole_size_keeps_its_blob_uncopied_and_pieces_are_slices_of_it() {
        for codec in [Codec::Bincode, Codec::Postcard] {
            let blob = crate::Blob::from((0..(300 << 10)).map(|i| i as u8).collect::<Vec<u8>>());
            let f = Frame::<(), (u32, crate::Blob)>::Reply { id: 4, body: (7, blob.clone()) };
            let plain = f.encode(codec, 1 << 20).unwrap();
            let mut o = Outbox::new(true, true, 1 << 20, Arc::default());
            let Encoded::Large(mut rest) = o.encode(&f, codec, 1 << 20).unwrap() else { panic!("not large") };
            assert_eq!(rest.len(), plain.len());
            assert!(rest.parts.iter().any(|p| p.as_ptr() == blob.as_ptr()), "{codec:?}: the blob was copied");
            // Cut as the pump cuts pieces: every byte once, in order, the blob's memory sliced.
            let mut cut = Vec::new();
            while !rest.is_empty() {
                let piece = rest.take(streams_piece());
                assert!(piece.iter().map(Bytes::len).sum::<usize>() <= streams_piece());
                cut.extend(piece);
            }
            assert!(cut.iter().any(|p| p.as_ptr() == blob.as_ptr()));
            assert_eq!(cut.concat(), plain.to_vec(), "{codec:?}");
            // A large reply goes alone, in parts, after the batch before it.
            o.push_frame(&F::Cancel { id: 1 }, codec, 1 << 20).unwrap();
            assert_eq!(o.push_frame(&f, codec, 1 << 20).unwrap(), plain.len());
            o.seal();
            let msgs: Vec<Outbound> = o.sealed.drain(..).collect();
            assert_eq!(msgs.len(), 2);
            assert!(matches!(&msgs[1], Outbound::Parts(p) if p.iter().any(|p| p.as_ptr() == blob.as_ptr())));
            assert_eq!(msgs.into_iter().nth(1).unwrap().join(), plain);
        }
    }

    /// A value whose `Serialize` encodes a blob of its own (nested in the outbox's encode),
    /// checks that nested encoding is whole, and writes it beside its blob.
    struct Nested(crate::Blob);

    impl Serialize for Nested {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let inner = Codec::Bincode.encode(&(self.0.clone(),), 8 << 20).unwrap();
            let (back,): (crate::Blob,) = Codec::Bincode.decode(&inner).unwrap();
            assert!(back == self.0, "a nested encode lost its blob's bytes");
            (serde_bytes::Bytes::new(&inner), &self.0).serialize(s)
        }
    }

    #[test]
    fn an_encode_nested_in_a_serialize_impl_keeps_its_blob_and_the_outer_frame_is_whole() {
        for len in [crate::Blob::ZERO_COPY_MIN, 40 << 10, 200 << 10] {
            let blob = crate::Blob::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
            let f = Frame::<(), Nested>::Reply { id: 3, body: Nested(blob) };
            let plain = f.encode(Codec::Bincode, 8 << 20).unwrap();
            let mut o = Outbox::new(true, true, 8 << 20, Arc::default());
            o.push_frame(&f, Codec::Bincode, 8 << 20).unwrap();
            o.seal();
            let msgs: Vec<Outbound> = o.sealed.drain(..).collect();
            assert_eq!(msgs.len(), 1);
            assert_eq!(msgs.into_iter().next().unwrap().join(), plain, "{len} bytes");
        }
    }

    fn streams_piece() -> usize {
        super::super::streams::PIECE
    }

    #[test]
    fn a_large_piece_goes_alone_in_parts_and_a_small_one_joins_the_batch() {
        let mut o = Outbox::new(true, true, 1 << 20, Arc::default());
        let big = Bytes::from(vec![3u8; 40 << 10]);
        o.push_frame(&F::Cancel { id: 1 }, Codec::Bincode, 1 << 20).unwrap();
        o.push_piece(b"HEADER", vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")]);
        o.push_piece(b"HEADER", vec![big.clone()]);
        o.seal();
        let msgs: Vec<Outbound> = o.sealed.drain(..).collect();
        assert_eq!(msgs.len(), 2);
        let Outbound::One(batch) = &msgs[0] else { panic!("the small piece is not in the batch") };
        assert_eq!(split_batch(batch).unwrap()[1], &b"HEADERabcd"[..]);
        let Outbound::Parts(parts) = &msgs[1] else { panic!("the large piece is not in parts") };
        assert_eq!(&parts[0][..], b"HEADER");
        assert_eq!(parts[1].as_ptr(), big.as_ptr());
    }

    #[test]
    fn a_large_frame_goes_alone_after_the_batch_before_it() {
        let mut o = Outbox::new(true, true, 8 << 20, Arc::default());
        o.push_frame(&F::Cancel { id: 1 }, Codec::Bincode, 8 << 20).unwrap();
        o.push_frame(&F::Cancel { id: 2 }, Codec::Bincode, 8 << 20).unwrap();
        let big =
            Frame::<(), serde_bytes::ByteBuf>::Reply { id: 3, body: serde_bytes::ByteBuf::from(vec![0; 1 << 20]) };
        o.push_frame(&big, Codec::Bincode, 8 << 20).unwrap();
        let msgs = drain(&mut o);
        assert_eq!(msgs.len(), 2);
        assert_eq!(split_batch(&msgs[0]).unwrap().len(), 2);
        assert_eq!(msgs[1][0], Kind::Reply.code());
        assert!(msgs[1].len() > 1 << 20);
    }
}

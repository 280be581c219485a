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
    /// Larger than [`WHOLE_MAX`]: not queued, here whole.
    Large(Bytes),
}

pub(crate) struct Outbox {
    /// The batch being packed: [`BATCH_HEADER`], then each frame after its length. Empty
    /// when no frame is in it.
    buf: BytesMut,
    /// Frames in `buf`.
    frames: usize,
    /// Messages sealed and not yet taken by the carrier, oldest first.
    sealed: VecDeque<Bytes>,
    /// Whether both ends announced batches; if not, every frame is its own message.
    batching: bool,
    /// The largest message the peer reads; a batch never grows past it.
    send_limit: usize,
    /// Where the bytes handed to the carrier are counted.
    counters: Arc<Counters>,
}

impl Outbox {
    pub(crate) fn new(batching: bool, send_limit: usize, counters: Arc<Counters>) -> Self {
        debug_assert_eq!(BATCH_HEADER[0], Kind::Batch.code());
        Outbox { buf: BytesMut::new(), frames: 0, sealed: VecDeque::new(), batching, send_limit, counters }
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
            Encoded::Large(bytes) => {
                let len = bytes.len();
                self.push_alone(bytes);
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
        self.encode_by(|buf| frame.encode_append(codec, limit, buf))
    }

    /// Encodes a stream item frame (`kind` is `UpItem` or `DownItem`) of exchange `id`, as
    /// [`encode`](Self::encode) would encode that frame.
    pub(crate) fn encode_item<T: Serialize>(
        &mut self,
        kind: Kind,
        id: u64,
        item: &T,
        codec: Codec,
        limit: usize,
    ) -> Result<Encoded, EncodeError> {
        let encoded = self.encode_by(|buf| crate::wire::encode_item_append(kind, id, item, codec, limit, buf));
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
        append: impl FnOnce(&mut BytesMut) -> Result<Placed, EncodeError>,
    ) -> Result<Encoded, EncodeError> {
        if !self.batching {
            self.buf.clear();
            let bytes = match append(&mut self.buf)? {
                Placed::Appended(_) => self.buf.split().freeze(),
                Placed::Separate(bytes) => bytes,
            };
            if bytes.len() > WHOLE_MAX {
                return Ok(Encoded::Large(bytes));
            }
            let len = bytes.len();
            self.sealed.push_back(bytes);
            return Ok(Encoded::Queued(len));
        }
        let entry = self.begin_entry();
        match append(&mut self.buf) {
            Ok(Placed::Appended(len)) => {
                self.end_entry(entry, len);
                Ok(Encoded::Queued(len))
            }
            Ok(Placed::Separate(bytes)) => {
                self.abandon_entry(entry);
                if bytes.len() > WHOLE_MAX {
                    return Ok(Encoded::Large(bytes));
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
        self.sealed.push_back(bytes);
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
                self.sealed.push_back(whole.slice(HEADER_LEN + BATCH_ENTRY_LEN..));
            }
            _ => self.sealed.push_back(self.buf.split().freeze()),
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
        while let Some(next) = self.sealed.front() {
            std::task::ready!(transport.as_mut().poll_ready(cx))?;
            let next = next.clone();
            self.sealed.pop_front();
            // With its length prefix: what the pipe carries.
            self.counters.bytes_out(next.len() + 4);
            transport.as_mut().start_send(Outbound(next))?;
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
        o.sealed.drain(..).collect()
    }

    #[test]
    fn frames_are_packed_into_one_batch_that_splits_back_into_them() {
        let mut o = Outbox::new(true, 1 << 20, Arc::default());
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
        let mut o = Outbox::new(true, 1 << 20, Arc::default());
        let f: F = Frame::Reply { id: 7, body: 9 };
        o.push_frame(&f, Codec::Bincode, 1 << 20).unwrap();
        let msgs = drain(&mut o);
        assert_eq!(msgs, vec![f.encode(Codec::Bincode, 1 << 20).unwrap()]);
    }

    #[test]
    fn without_batching_every_frame_is_its_own_message() {
        let mut o = Outbox::new(false, 1 << 20, Arc::default());
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
        let mut o = Outbox::new(true, limit, Arc::default());
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
        let mut o = Outbox::new(true, 1 << 20, Arc::default());
        o.push_frame(&F::Cancel { id: 1 }, Codec::Bincode, 1 << 20).unwrap();
        let big = Frame::<(), serde_bytes::ByteBuf>::Reply { id: 2, body: serde_bytes::ByteBuf::from(vec![0; 100]) };
        assert!(matches!(o.push_frame(&big, Codec::Bincode, 50), Err(EncodeError::TooLarge(_))));
        o.push_frame(&F::Cancel { id: 3 }, Codec::Bincode, 1 << 20).unwrap();
        let msgs = drain(&mut o);
        let ids: Vec<u64> =
            split_batch(&msgs[0]).unwrap().iter().map(|b| F::decode(Codec::Bincode, b).unwrap().id()).collect();
        assert_eq!(ids, [1, 3]);
    }

    #[test]
    fn a_large_frame_goes_alone_after_the_batch_before_it() {
        let mut o = Outbox::new(true, 8 << 20, Arc::default());
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

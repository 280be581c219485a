//! [`FramedPipe`]: the [`LengthPrefixed`] wire format as a `Stream` of frames and a `Sink`
//! of messages, writing large messages straight from their own buffers.
//!
//! Why not tokio-util's `Framed`: its sink copies every message into one write buffer, so
//! a 1 MiB message was copied once more than it needs to be on its way to the pipe (a
//! third of the user-space copying of a 1 MiB echo). Here a message of at least
//! [`ZERO_COPY_MIN`] bytes is queued as it is (the `Bytes` the caller built) and written
//! from there; smaller ones are still copied into one buffer with their prefixes, so a
//! stream of small messages costs one write, not one per message.
//!
//! The read half decodes, as `Framed`'s, from a buffer filled by reads, with one difference:
//! a frame of at least [`ZERO_COPY_MIN`] bytes is read up to its end and no further, then
//! leaves with the buffer's allocation (reading goes on in a new one). So a large frame
//! shares its memory with no other frame, and the application may keep it, or a slice of
//! it, without keeping more than its allocation (at most about twice its size: the buffer
//! grows by doubling as the frame arrives); and the read buffer, which small frames reuse,
//! never grows to the largest message received. The allocation of a frame over
//! `FRESH_MAX` is read into again for the next such frame once the application has dropped
//! it, so a stream of large frames does not allocate one buffer per frame.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Framed};

use crate::frame::{LengthPrefixed, PREFIX, READ_AHEAD};

/// Messages at least this large are written from their own buffer instead of being copied
/// into the write buffer: past this size the copy costs more than the extra slice (or, on
/// a pipe without vectored writes, the extra write) does.
pub const ZERO_COPY_MIN: usize = 32 * 1024;

/// `poll_ready` waits (writing) while this much is unwritten: the backpressure point of
/// tokio-util's `FramedWrite`, kept so a full pipe is felt as early as before.
const BACKPRESSURE: usize = 8 * 1024;

/// A frame up to this size that took the read buffer's allocation is followed by a new
/// buffer sized for one more frame as large; a larger one by an empty buffer, and its
/// allocation is taken back for the next such frame once the application has dropped it
/// (see [`FramedPipe`]'s `spare`).
const FRESH_MAX: usize = 2 * READ_AHEAD;

/// At most this many slices per vectored write (well under every platform's `IOV_MAX`).
const MAX_SLICES: usize = 64;

/// Frames over a byte stream, in the [`LengthPrefixed`] format: a `Stream` of received
/// frames (without their prefix) and a `Sink` of messages to send.
///
/// Errors are those of [`LengthPrefixed`] (a frame over the limit either way, a stream that
/// ends inside a frame) and of the stream. After a read error the stream yields `None`.
#[derive(Debug)]
pub struct FramedPipe<S> {
    io: S,
    codec: LengthPrefixed,
    read: BytesMut,
    /// A handle without capacity on the allocation of the last frame over `FRESH_MAX` that
    /// took the read buffer's: once the application has dropped that frame (the handle is
    /// then the allocation's only owner), the next such frame is read into it instead of
    /// into a buffer grown anew. Without it, each large frame would cost a buffer grown by
    /// doubling, which in a process whose allocator maps such sizes fresh means mapping and
    /// faulting in its pages every time.
    spare: BytesMut,
    read_ended: bool,
    read_failed: bool,
    /// What to write, in order, before `small`: runs of small messages (each after its
    /// prefix) and large messages' bodies. The prefix of a large message ends the run
    /// before it.
    queued: VecDeque<Bytes>,
    /// Small messages and prefixes after everything in `queued`.
    small: BytesMut,
    unwritten: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> FramedPipe<S> {
    /// Frames `io` with `codec`'s limit.
    pub fn new(io: S, codec: LengthPrefixed) -> Self {
        FramedPipe {
            io,
            codec,
            read: BytesMut::new(),
            spare: BytesMut::new(),
            read_ended: false,
            read_failed: false,
            queued: VecDeque::new(),
            small: BytesMut::new(),
            unwritten: 0,
        }
    }

    /// Takes over a `Framed` stream (the one a handshake ran on), keeping what it has read
    /// ahead and not yet written.
    pub fn from_framed(framed: Framed<S, LengthPrefixed>) -> Self {
        let parts = framed.into_parts();
        let mut this = FramedPipe::new(parts.io, parts.codec);
        this.read = parts.read_buf;
        this.unwritten = parts.write_buf.len();
        this.small = parts.write_buf;
        this
    }

    /// Bytes received that are not a complete frame yet (a frame under way, or its
    /// prefix): non-empty while the peer is in the middle of sending a frame.
    pub fn read_buffer(&self) -> &[u8] {
        &self.read
    }

    /// Bytes accepted by the sink and not yet written to the stream.
    pub fn unwritten(&self) -> usize {
        self.unwritten
    }

    /// The stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Writes what is queued until all of it is written or the stream is full.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.unwritten > 0 {
            let n = if self.io.is_write_vectored() {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut count = 0;
                for chunk in self.queued.iter().take(MAX_SLICES - 1) {
                    slices[count] = IoSlice::new(chunk);
                    count += 1;
                }
                // `small` comes after every queued chunk, so it may only join a write
                // that holds all of them.
                if count == self.queued.len() && !self.small.is_empty() {
                    slices[count] = IoSlice::new(&self.small);
                    count += 1;
                }
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?
            } else {
                let first = self.queued.front().map_or(&self.small[..], |c| &c[..]);
                ready!(Pin::new(&mut self.io).poll_write(cx, first))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::WriteZero, "the pipe took no more bytes")));
            }
            self.consume(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Drops the first `n` bytes of what is queued: they were written.
    fn consume(&mut self, mut n: usize) {
        self.unwritten -= n;
        while n > 0 {
            let Some(front) = self.queued.front_mut() else {
                self.small.advance(n);
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.queued.pop_front();
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FramedPipe<S> {
    /// Sends one message made of `parts`, in order: as [`start_send`](Sink::start_send) of
    /// their concatenation, but parts of at least [`ZERO_COPY_MIN`] bytes are written from
    /// their own memory (the others are copied into the write buffer). For a message whose
    /// bulk is already in buffers of its own: a frame header, the payload, a trailer.
    ///
    /// Call it after `poll_ready` said yes, as `start_send`. An error (the message is over
    /// the limit) leaves nothing queued.
    pub fn start_send_parts(&mut self, parts: &[Bytes]) -> io::Result<()> {
        let len: usize = parts.iter().map(Bytes::len).sum();
        self.codec.check_outgoing(len)?;
        // The limit is at most `MAX_FRAME_CEILING`, far below 4 GiB.
        self.small.put_u32(len as u32);
        self.unwritten += 4 + len;
        for part in parts {
            if part.len() >= ZERO_COPY_MIN {
                if !self.small.is_empty() {
                    self.queued.push_back(self.small.split().freeze());
                }
                self.queued.push_back(part.clone());
            } else {
                self.small.extend_from_slice(part);
            }
        }
        Ok(())
    }
}

impl<S> FramedPipe<S> {
    /// The read buffer's allocation went with a frame of `len` bytes: reading goes on in a
    /// new buffer, sized for one more such frame if it is not over `FRESH_MAX`; after a
    /// larger one, in an empty buffer (the next prefix tells whether the spare is wanted).
    fn hand_off(&mut self, len: usize) {
        if len <= FRESH_MAX {
            self.read = BytesMut::with_capacity(PREFIX + len);
        } else {
            // No capacity of its own: it can only take the allocation back (reclaim it),
            // which it can only do once no frame or slice of it is left.
            self.spare = std::mem::take(&mut self.read).split_to(0);
        }
    }

    /// Before a frame over `FRESH_MAX` grows the read buffer: moves what arrived of it into
    /// the spare allocation, if that is free again and at most twice what the frame needs
    /// (a kept frame keeps its whole allocation, so it must not be much larger).
    fn reuse_spare(&mut self) {
        let Some(len) = declared(&self.read) else { return };
        let whole = PREFIX + len;
        // (The spare has no capacity of its own, so reclaiming it needs it to be unique.)
        if len <= FRESH_MAX
            || len > self.codec.max_frame_length()
            || self.read.capacity() >= whole
            || !self.spare.try_reclaim(whole)
        {
            return;
        }
        if self.spare.capacity() > 2 * whole {
            self.spare = BytesMut::new(); // its only owner: this frees it
            return;
        }
        self.spare.extend_from_slice(&self.read);
        std::mem::swap(&mut self.read, &mut self.spare);
        self.spare = BytesMut::new();
    }
}

/// The length the prefix at the start of `read` declares, if it has arrived.
fn declared(read: &BytesMut) -> Option<usize> {
    read.first_chunk::<PREFIX>().map(|head| u32::from_be_bytes(*head) as usize)
}

/// What is still missing of a frame of at least [`ZERO_COPY_MIN`] bytes whose prefix starts
/// `read` (the decoder has found it incomplete); `None` for a smaller frame or no prefix.
fn large_rest(read: &BytesMut) -> Option<usize> {
    let len = declared(read)?;
    (len >= ZERO_COPY_MIN && PREFIX + len > read.len()).then(|| PREFIX + len - read.len())
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for FramedPipe<S> {
    type Item = io::Result<BytesMut>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.read_failed {
                return Poll::Ready(None);
            }
            this.reuse_spare();
            let decoded =
                if this.read_ended { this.codec.decode_eof(&mut this.read) } else { this.codec.decode(&mut this.read) };
            match decoded {
                Ok(Some(frame)) => {
                    if frame.len() >= ZERO_COPY_MIN && this.read.is_empty() {
                        // A large frame read to its end (see below) is alone in the read
                        // buffer's allocation: it keeps it, and reading goes on elsewhere.
                        this.hand_off(frame.len());
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) if this.read_ended => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    this.read_failed = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            // Room for at least one byte, so a read of 0 means the end of the stream (the
            // decoder has already reserved what the frame under way may use).
            this.read.reserve(1);
            // The body of a large frame is read up to its end and no further, so that the
            // frame has its allocation to itself once complete.
            let io = Pin::new(&mut this.io);
            let read = match large_rest(&this.read) {
                Some(rest) => tokio_util::io::poll_read_buf(io, cx, &mut (&mut this.read).limit(rest)),
                None => tokio_util::io::poll_read_buf(io, cx, &mut this.read),
            };
            match ready!(read) {
                Ok(0) => this.read_ended = true,
                Ok(_) => {}
                Err(e) => {
                    this.read_failed = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Bytes> for FramedPipe<S> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.unwritten >= BACKPRESSURE { self.poll_flush(cx) } else { Poll::Ready(Ok(())) }
    }

    fn start_send(self: Pin<&mut Self>, item: Bytes) -> io::Result<()> {
        self.get_mut().start_send_parts(std::slice::from_ref(&item))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};

    /// A stream that takes at most `max` bytes per write, without vectored writes when
    /// `vectored` is false, and records what it was given.
    struct Trickle {
        written: Vec<u8>,
        max: usize,
        vectored: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let n = buf.len().min(this.max);
            this.written.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let mut left = this.max;
            for b in bufs {
                let n = b.len().min(left);
                this.written.extend_from_slice(&b[..n]);
                left -= n;
            }
            Poll::Ready(Ok(this.max - left))
        }
        fn is_write_vectored(&self) -> bool {
            self.vectored
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn messages() -> Vec<Bytes> {
        [3, ZERO_COPY_MIN, 10, 0, ZERO_COPY_MIN * 3 + 7, 1, ZERO_COPY_MIN - 1]
            .iter()
            .enumerate()
            .map(|(i, &n)| Bytes::from((0..n).map(|j| (i * 31 + j) as u8).collect::<Vec<u8>>()))
            .collect()
    }

    fn wire(messages: &[Bytes]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            out.extend_from_slice(&(m.len() as u32).to_be_bytes());
            out.extend_from_slice(m);
        }
        out
    }

    #[tokio::test]
    async fn small_and_large_messages_are_written_in_order_through_partial_writes() {
        for vectored in [true, false] {
            for max in [1, 5, 4096, 1 << 20] {
                let io = Trickle { written: Vec::new(), max, vectored };
                let mut f = FramedPipe::new(io, LengthPrefixed::new(1 << 20));
                for m in messages() {
                    f.feed(m).await.unwrap();
                }
                f.flush().await.unwrap();
                assert_eq!(f.unwritten(), 0);
                assert_eq!(f.get_ref().written, wire(&messages()), "vectored {vectored}, {max} bytes a write");
            }
        }
    }

    #[tokio::test]
    async fn more_large_messages_than_one_vectored_write_takes_stay_in_order() {
        // Each large message queues two chunks (its prefix run and its body), so 40 of them
        // queue more chunks than `MAX_SLICES`; small messages after them must still come last.
        let mut sent: Vec<Bytes> = (0..40u8).map(|i| Bytes::from(vec![i; ZERO_COPY_MIN])).collect();
        sent.push(Bytes::from_static(b"after"));
        let io = Trickle { written: Vec::new(), max: usize::MAX, vectored: true };
        let mut f = FramedPipe::new(io, LengthPrefixed::new(1 << 20));
        for m in &sent {
            Pin::new(&mut f).start_send(m.clone()).unwrap();
        }
        assert!(f.queued.len() > MAX_SLICES);
        f.flush().await.unwrap();
        assert_eq!(f.get_ref().written, wire(&sent));
    }

    #[tokio::test]
    async fn a_message_in_parts_goes_out_as_their_concatenation_with_large_parts_uncopied() {
        let [a, big, c] =
            [3, ZERO_COPY_MIN, 5].map(|n| Bytes::from((0..n).map(|j| j as u8 ^ 0x5a).collect::<Vec<u8>>()));
        let whole: Bytes = [&a[..], &big[..], &c[..]].concat().into();
        for vectored in [true, false] {
            for max in [1, 4096, 1 << 20] {
                let io = Trickle { written: Vec::new(), max, vectored };
                let mut f = FramedPipe::new(io, LengthPrefixed::new(1 << 20));
                Pin::new(&mut f).start_send(Bytes::from_static(b"before")).unwrap();
                f.start_send_parts(&[a.clone(), big.clone(), c.clone()]).unwrap();
                // The large part is queued as it is: the same memory, not a copy.
                assert!(f.queued.iter().any(|q| q.as_ptr() == big.as_ptr()), "vectored {vectored}, max {max}");
                Pin::new(&mut f).start_send(Bytes::from_static(b"after")).unwrap();
                f.flush().await.unwrap();
                let sent = [Bytes::from_static(b"before"), whole.clone(), Bytes::from_static(b"after")];
                assert_eq!(f.get_ref().written, wire(&sent), "vectored {vectored}, {max} bytes a write");
            }
        }
        let io = Trickle { written: Vec::new(), max: 1 << 20, vectored: true };
        let mut f = FramedPipe::new(io, LengthPrefixed::new(ZERO_COPY_MIN + 7));
        let err = f.start_send_parts(&[a.clone(), big.clone(), c.clone()]).unwrap_err();
        assert!(err.to_string().contains(&(ZERO_COPY_MIN + 8).to_string()), "{err}");
        assert_eq!(f.unwritten(), 0, "a refused message queues nothing");
    }

    #[tokio::test]
    async fn frames_written_are_read_back_whole_across_a_real_duplex() {
        let (a, b) = tokio::io::duplex(1000);
        let mut w = FramedPipe::new(a, LengthPrefixed::new(1 << 20));
        let mut r = FramedPipe::new(b, LengthPrefixed::new(1 << 20));
        let sent = messages();
        let writer = tokio::spawn(async move {
            for m in messages() {
                w.send(m).await.unwrap();
            }
            w.close().await.unwrap();
        });
        let mut got = Vec::new();
        while let Some(frame) = r.next().await {
            got.push(frame.unwrap().freeze());
        }
        writer.await.unwrap();
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_refused_and_nothing_of_it_is_queued() {
        let io = Trickle { written: Vec::new(), max: 1 << 20, vectored: true };
        let mut f = FramedPipe::new(io, LengthPrefixed::new(100));
        let err = f.feed(Bytes::from(vec![0u8; 101])).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("101") && err.to_string().contains("100"), "{err}");
        assert_eq!(f.unwritten(), 0);
        f.send(Bytes::from_static(b"ok")).await.unwrap();
        assert_eq!(f.get_ref().written, wire(&[Bytes::from_static(b"ok")]));
    }

    #[tokio::test]
    async fn a_stream_ending_inside_a_frame_is_an_error_then_the_end() {
        let (mut a, b) = tokio::io::duplex(64);
        let mut r = FramedPipe::new(b, LengthPrefixed::new(100));
        tokio::io::AsyncWriteExt::write_all(&mut a, &[0, 0, 0, 9, 1, 2]).await.unwrap();
        drop(a);
        let err = r.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(r.next().await.is_none());
    }

    #[tokio::test]
    async fn a_large_frame_leaves_with_its_own_allocation_and_the_read_buffer_stays_small() {
        let big = Bytes::from((0..1usize << 20).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let mid = Bytes::from(vec![7u8; ZERO_COPY_MIN + 5]);
        let small = Bytes::from_static(b"small");
        let sent = [big.clone(), small.clone(), mid.clone(), small.clone(), big.clone(), big.clone(), small.clone()];
        // All of it in the pipe before the first read, in pipes of several sizes.
        for pipe in [64, 4096, 1 << 22] {
            let (mut a, b) = tokio::io::duplex(pipe);
            let writer = tokio::spawn({
                let wire = wire(&sent);
                async move { tokio::io::AsyncWriteExt::write_all(&mut a, &wire).await.unwrap() }
            });
            let mut r = FramedPipe::new(b, LengthPrefixed::new(2 << 20));
            for (i, want) in sent.iter().enumerate() {
                let frame = r.next().await.unwrap().unwrap();
                assert_eq!(&frame[..], &want[..], "frame {i}, pipe {pipe}");
                if frame.len() > FRESH_MAX {
                    // Too large for one read: read up to its end and no further, nothing of
                    // the next frame came with it, and reading goes on elsewhere. (A large
                    // frame that arrived whole in one read with others shares the read
                    // buffer, whose size the last assertion bounds.)
                    assert!(r.read.is_empty(), "frame {i}, pipe {pipe}: the next frame was read into it");
                    let span = frame.as_ptr() as usize..=frame.as_ptr() as usize + frame.len();
                    assert!(!span.contains(&(r.read.as_ptr() as usize)), "frame {i}, pipe {pipe}: same allocation");
                }
                assert!(
                    r.read.capacity() <= PREFIX + FRESH_MAX,
                    "frame {i}, pipe {pipe}: the read buffer grew to {} bytes",
                    r.read.capacity()
                );
            }
            writer.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_dropped_large_frames_allocation_is_reused_for_the_next_and_a_kept_ones_is_not() {
        let big = Bytes::from((0..1usize << 20).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
        let sent = [big.clone(), big.clone(), big.clone(), Bytes::from_static(b"end")];
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn({
            let wire = wire(&sent);
            async move { tokio::io::AsyncWriteExt::write_all(&mut a, &wire).await.unwrap() }
        });
        let mut r = FramedPipe::new(b, LengthPrefixed::new(2 << 20));
        let first = r.next().await.unwrap().unwrap();
        assert_eq!(&first[..], &big[..]);
        let first_at = first.as_ptr() as usize;
        drop(first);
        let second = r.next().await.unwrap().unwrap();
        assert_eq!(&second[..], &big[..]);
        assert_eq!(second.as_ptr() as usize, first_at, "the dropped frame's allocation is read into again");
        // The second is kept: the third cannot be read into its allocation.
        let third = r.next().await.unwrap().unwrap();
        assert_eq!(&third[..], &big[..]);
        let second_span = second.as_ptr() as usize..second.as_ptr() as usize + second.len();
        assert!(!second_span.contains(&(third.as_ptr() as usize)), "a kept frame's allocation was reused");
        assert_eq!(&r.next().await.unwrap().unwrap()[..], b"end");
        writer.await.unwrap();
    }
}

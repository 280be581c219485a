//! The connection engine: one hand-polled task per connection, the same on both ends.
//!
//! An engine has a calling half ([`Caller`]: the calls this end makes) and a serving half
//! ([`Callee`]: calls the peer makes to this end's service); a client has the first, a
//! server the second, and an end that is called back will have both. Each pass:
//!
//! 1. **Read** up to [`READ_BATCH`] frames and act on each at once: calls start (their
//!    handler polled inline), cancels stop handlers, replies are filed for their callers.
//!    Reading never waits for handlers or for the window; it pauses only while the peer
//!    leaves more than twice the in-flight limit of our answers unread.
//! 2. **Calling half**: under one lock, hand replies to callers, expire deadlines, take
//!    new calls and cancels.
//! 3. **Serving half**: shutdown, handlers that finished in their own tasks, deadlines.
//! 4. **Write** answers, then cancels, then calls (while the callee's window has room),
//!    as long as the pipe takes them, and flush once.
//!
//! Reading and writing progress independently inside one `poll`: a full outgoing pipe
//! never stops us from reading (which would let two ends deadlock, each waiting for the
//! other to read), and many pipelined frames go out with one flush. Why a pass reads at
//! most 32 frames: with one flush per burst of 128 pipelined calls, client and server took
//! turns (each idle while the other worked through the burst); flushing every 32 lets them
//! overlap (0.45 → 0.66 M calls/s with 128 in flight, for one write per 32 answers).

mod callee;
mod caller;
pub(crate) mod calls;
mod outbox;
mod stall;
pub(crate) mod streams;
mod translate;
mod transport;

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::{Serialize, de::DeserializeOwned};

pub(crate) use callee::{Callee, StreamLimits};
pub(crate) use caller::{Caller, CallerLimits};
pub(crate) use translate::{VariantMap, Varint};
pub(crate) use transport::{FrameTransport, Inbound, Outbound, pipe};

use bytes::Bytes;

use self::callee::Answer;
use self::calls::CloseRequest;
use self::outbox::{Encoded, Outbox, Rest};
use self::stall::StallTimer;
use self::transport::InFrame;
use crate::codec::{Codec, DecodeLimits, EncodeError};
use crate::error::{Direction, RpcError, ServerError, ServerErrorKind, TransportError, connection_error};
use crate::service::Service;
use crate::spans::Trace;
use crate::stats::{Counters, Outcome};
use crate::wire::{Frame, FrameError, Kind, caps};

/// Calls (and one-way calls) read per pass; each pass ends with a flush of what it
/// produced.
const READ_BATCH: usize = 32;
/// What a pass may read, in units where a call costs [`CALL_COST`] and any other frame
/// (stream items, credits, replies) one per [`BYTES_PER_UNIT`] of its size, at least one: a
/// pass takes 32 calls, or 512 small frames of a batch, or 256 KiB of large stream items,
/// before it hands replies to their callers, writes and flushes. Counting large items by
/// size keeps a reply that arrives among them from waiting behind a megabyte of decoding.
const READ_BUDGET: usize = READ_BATCH * CALL_COST;
const CALL_COST: usize = 16;
/// A one-way call costs half a call: nothing of it is written back but one credit frame per
/// pass, so a pass takes 64 of them and the per-pass work (the serving half's checks, the
/// write and the flush) is spread over twice as many. The credit they free goes back eight
/// times per default window of 512 (`ServerConfig::max_oneway_per_connection`); with a
/// window of 128 (the old default) returning it half as often cost more in waiting than it
/// saved.
const ONEWAY_COST: usize = CALL_COST / 2;
const BYTES_PER_UNIT: usize = 512;
/// Passes per poll before yielding, so one busy connection cannot starve other tasks.
const ROUNDS: usize = 16;
/// Longest a drained connection waits for its peer to close after our end-of-file.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// What a pass's read budget is charged for a frame other than a call: one unit per
/// [`BYTES_PER_UNIT`] of it, at least one.
fn frame_cost(len: u32) -> usize {
    (len as usize / BYTES_PER_UNIT).max(1)
}

/// The bytes a message took on the pipe, its length prefix included.
fn message_len<C, R>(message: &Inbound<C, R>) -> usize {
    4 + match message {
        Inbound::One(frame) => frame.len as usize,
        Inbound::Batch(body) => crate::wire::HEADER_LEN + body.len(),
        Inbound::Abort(reason) => crate::wire::HEADER_LEN + reason.len(),
        Inbound::Goodbye => crate::wire::HEADER_LEN,
    }
}

/// The next frame of a batch being read.
enum Batched<C, R> {
    /// A frame to act on.
    Frame(InFrame<C, R>),
    /// A stream item added to the open run of its stream; what it cost of the read budget.
    Item(usize),
    /// A one-way call, decoded.
    OneWay(u64, C),
}

/// How a connection ended.
enum Ended {
    /// The peer closed the pipe.
    PeerLeft,
    /// Shutdown: every call that started was answered.
    Drained,
    /// This end closed it (every handle dropped, or `close()`).
    Closed,
    /// The pipe failed, or the peer told us it gave up on the connection.
    Failed(TransportError),
    /// The peer broke the protocol or stalled: it is told why (an `Abort` frame) before
    /// the connection closes.
    Blame(TransportError),
    /// The server drained and said goodbye.
    Goodbye,
}

/// One connection. `S` is the service this end serves, `Req`/`Resp` the request and
/// response enums of the service it calls (an end that serves or calls nothing uses
/// [`NoService`] and [`Never`](crate::wire::Never)).
pub(crate) struct Engine<T, S: Service, Req, Resp> {
    /// Boxed so the engine is `Unpin` whatever the carrier is.
    transport: Pin<Box<T>>,
    /// Who is at the other end, for messages: "server" or "client".
    peer: &'static str,
    caller: Option<Caller<Req, Resp>>,
    callee: Option<Callee<S>>,
    /// The capability bits negotiated in the handshake.
    capabilities: u32,
    /// Frames are encoded by the engine, with the connection's codec, at most the peer's
    /// message limit each.
    codec: Codec,
    /// What decoding one of the peer's frames may allocate and how deep it may nest.
    decode: DecodeLimits,
    send_limit: usize,
    outbox: Outbox,
    /// The rest of a batch being read: its body, and where the next frame starts.
    batch_in: Option<(Bytes, usize)>,
    /// Reused list of streams to pump.
    order: Vec<u64>,
    needs_flush: bool,
    /// Set once the connection is over and every caller has been told.
    finished: bool,
    /// After a drain: our end is half-closed and we read (and drop) what the peer still
    /// sends until it closes too (or answers our goodbye), at most until this fires. On a
    /// client that answered a goodbye: we wait for the server to close first.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A frame begun by the peer and not finished ([`Settings::frame_read_timeout`]).
    read_stall: StallTimer,
    /// Our bytes left unread by the peer ([`Settings::write_stall_timeout`]).
    write_stall: StallTimer,
    /// Messages read so far: the frame-read timer's progress.
    messages_in: u64,
    /// Changes seen in what the carrier has not written: the write-stall timer's progress.
    writes_seen: u64,
    last_unwritten: usize,
    /// The peer sent an `Abort`: it gave up, so nothing is sent back.
    peer_aborted: bool,
    /// The server drained and said goodbye: this end closes.
    peer_said_goodbye: bool,
    /// This end (a drained server) said goodbye and waits for the client's end of file.
    goodbye_sent: bool,
    /// The client answered our goodbye ([`caps::GOODBYE_ACK`]): it has nothing more to send,
    /// and waits for us to close.
    peer_acked_goodbye: bool,
    /// Items of one of our calls' inbound streams read in a row, not yet in its inbox.
    down_run: streams::ItemRun<Resp>,
    /// Items of one of the peer's calls' inbound streams read in a row.
    up_run: streams::ItemRun<S::Request>,
    /// Bytes read and written are counted here.
    counters: Arc<Counters>,
}

/// What the handshake settled that the engine itself needs.
pub(crate) struct Settings {
    pub(crate) peer: &'static str,
    pub(crate) capabilities: u32,
    pub(crate) codec: Codec,
    pub(crate) send_limit: usize,
    /// Longest a frame the peer has begun may take to arrive in full.
    pub(crate) frame_read_timeout: std::time::Duration,
    /// Longest our writes may make no progress while there are bytes to write.
    pub(crate) write_stall_timeout: std::time::Duration,
    /// Limits on decoding the peer's frames (also given to the carrier).
    pub(crate) decode: DecodeLimits,
    /// Where this end counts the bytes it reads and writes.
    pub(crate) counters: Arc<Counters>,
}

impl<T, S, Req, Resp> Engine<T, S, Req, Resp>
where
    T: FrameTransport<Inbound<S::Request, Resp>, Outbound>,
    S: Service,
    Req: Serialize,
    Resp: DeserializeOwned,
{
    pub(crate) fn new(
        transport: T,
        settings: Settings,
        caller: Option<Caller<Req, Resp>>,
        callee: Option<Callee<S>>,
    ) -> Self {
        let parts = transport.takes_parts();
        Engine {
            transport: Box::pin(transport),
            peer: settings.peer,
            caller,
            callee,
            capabilities: settings.capabilities,
            codec: settings.codec,
            decode: settings.decode,
            send_limit: settings.send_limit,
            outbox: Outbox::new(
                settings.capabilities & caps::BATCH != 0,
                parts,
                settings.send_limit,
                settings.counters.clone(),
            ),
            counters: settings.counters,
            batch_in: None,
            order: Vec::new(),
            needs_flush: false,
            finished: false,
            linger: None,
            read_stall: StallTimer::new(settings.frame_read_timeout),
            write_stall: StallTimer::new(settings.write_stall_timeout),
            messages_in: 0,
            writes_seen: 0,
            last_unwritten: 0,
            peer_aborted: false,
            peer_said_goodbye: false,
            goodbye_sent: false,
            peer_acked_goodbye: false,
            down_run: streams::ItemRun::default(),
            up_run: streams::ItemRun::default(),
        }
    }

    /// Whether `kind`, which may need a capability, was negotiated.
    fn negotiated(&self, kind: Kind) -> Result<(), TransportError> {
        let needs = match kind {
            Kind::OneWay | Kind::Credit => caps::ONEWAY,
            Kind::UpItem
            | Kind::DownItem
            | Kind::UpEnd
            | Kind::DownEnd
            | Kind::UpCredit
            | Kind::DownCredit
            | Kind::UpStop
            | Kind::Piece => caps::STREAMS,
            Kind::Batch => caps::BATCH,
            _ => 0,
        };
        if self.capabilities & needs == needs {
            Ok(())
        } else {
            Err(self.protocol(format!("a {kind:?} frame, which this connection did not negotiate")))
        }
    }

    fn protocol(&self, detail: String) -> TransportError {
        TransportError::Protocol { detail: format!("{detail} (from the {})", self.peer) }
    }

    fn callee(&mut self, what: &str) -> Result<&mut Callee<S>, TransportError> {
        if self.callee.is_none() {
            return Err(self.protocol(format!("{what}, but this end serves no calls")));
        }
        Ok(self.callee.as_mut().expect("checked"))
    }

    fn caller(&mut self, what: &str) -> Result<&mut Caller<Req, Resp>, TransportError> {
        if self.caller.is_none() {
            return Err(self.protocol(format!("{what}, but this end made no calls")));
        }
        Ok(self.caller.as_mut().expect("checked"))
    }

    /// The next frame of the batch being read, if any: `Err` if the batch is malformed.
    fn next_batched(&mut self) -> Option<Result<Batched<S::Request, Resp>, TransportError>> {
        let (body, at) = self.batch_in.as_mut()?;
        match crate::wire::next_in_batch(body, at) {
            None => {
                self.batch_in = None;
                None
            }
            Some(Ok(range)) => {
                let bytes = &body[range];
                let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                // The next item of an open run: its exchange and direction are known, so its
                // body is decoded straight into the run, without a `Frame` (the hot path of a
                // stream of small items). One that does not decode takes the general path,
                // which reports why.
                let absorbed = match crate::wire::item_header(bytes) {
                    Some((Kind::DownItem, id)) if self.down_run.continues(id) => {
                        crate::wire::decode_item_body(self.codec, self.decode, bytes)
                            .map(|item| self.down_run.push(item, len))
                            .is_ok()
                    }
                    Some((Kind::UpItem, id)) if self.up_run.continues(id) => {
                        crate::wire::decode_item_body(self.codec, self.decode, bytes)
                            .map(|item| self.up_run.push(item, len))
                            .is_ok()
                    }
                    // A one-way call to an end that serves them: handed on without a `Frame`.
                    Some((Kind::OneWay, id)) if self.callee.is_some() && self.capabilities & caps::ONEWAY != 0 => {
                        if let Ok(body) = crate::wire::decode_item_body(self.codec, self.decode, bytes) {
                            return Some(Ok(Batched::OneWay(id, body)));
                        }
                        false
                    }
                    _ => false,
                };
                if absorbed {
                    return Some(Ok(Batched::Item(frame_cost(len))));
                }
                let _lent = (bytes.len() >= crate::Blob::ZERO_COPY_MIN).then(|| crate::blob::lend(body));
                Some(Ok(Batched::Frame(InFrame { frame: Frame::decode_with(self.codec, self.decode, bytes), len })))
            }
            Some(Err(e)) => {
                self.batch_in = None;
                Some(Err(self.protocol(format!("malformed batch: {e}"))))
            }
        }
    }

    /// Acts on one message: a frame, or the start of a batch.
    fn on_message(
        &mut self,
        inbound: Inbound<S::Request, Resp>,
        cx: &mut Context<'_>,
    ) -> Result<usize, TransportError> {
        match inbound {
            Inbound::One(frame) => self.on_frame(frame, cx),
            Inbound::Abort(reason) => {
                self.peer_aborted = true;
                Err(TransportError::Protocol { detail: format!("the {} ended the connection: {reason}", self.peer) })
            }
            Inbound::Goodbye if self.goodbye_sent && self.capabilities & caps::GOODBYE_ACK != 0 => {
                // The client's answer to ours: everything it sent came before it, and has
                // been read. It waits for us to close.
                self.peer_acked_goodbye = true;
                Ok(0)
            }
            Inbound::Goodbye => {
                if self.capabilities & caps::GOODBYE == 0 || self.caller.is_none() {
                    return Err(self.protocol("a goodbye this connection did not negotiate".into()));
                }
                self.peer_said_goodbye = true;
                Ok(0)
            }
            Inbound::Batch(body) => {
                self.negotiated(Kind::Batch)?;
                if body.is_empty() {
                    return Err(self.protocol("an empty batch".into()));
                }
                self.batch_in = Some((body, 0));
                Ok(0)
            }
        }
    }

    /// Acts on one frame; `Err` if the stream can no longer be trusted. Returns what it
    /// cost of the pass's [`READ_BUDGET`].
    fn on_frame(&mut self, inbound: InFrame<S::Request, Resp>, cx: &mut Context<'_>) -> Result<usize, TransportError> {
        let cost = match inbound.frame {
            Ok(Frame::Call { .. }) => CALL_COST,
            Ok(Frame::OneWay { .. }) => ONEWAY_COST,
            _ => frame_cost(inbound.len),
        };
        self.on_frame_inner(inbound, cx)?;
        Ok(cost)
    }

    fn on_frame_inner(
        &mut self,
        inbound: InFrame<S::Request, Resp>,
        cx: &mut Context<'_>,
    ) -> Result<(), TransportError> {
        let len = inbound.len;
        // The next item of a run: gathered, handed to its inbox with the rest of the run.
        // Anything else hands the open run over first, so it is acted on in order.
        let frame = match inbound.frame {
            Ok(Frame::DownItem { id, body }) if self.down_run.continues(id) => {
                self.down_run.push(body, len);
                return Ok(());
            }
            Ok(Frame::UpItem { id, body }) if self.up_run.continues(id) => {
                self.up_run.push(body, len);
                return Ok(());
            }
            other => {
                self.hand_over_runs()?;
                other
            }
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(FrameError::Header(e)) => return Err(self.protocol(format!("unreadable frame: {e}"))),
            Err(FrameError::Body { kind, id, error }) => {
                self.negotiated(kind)?;
                match kind {
                    Kind::Call => self.callee("a call")?.on_bad_call(id, &error),
                    Kind::OneWay => self.callee("a one-way call")?.on_bad_oneway(id, &error),
                    Kind::UpItem => self.callee("a stream item")?.on_bad_up_item(id, &error),
                    // The callee answered; only the answer is unreadable.
                    Kind::Reply | Kind::Error => {
                        let err = TransportError::Protocol { detail: format!("malformed response: {error}") };
                        self.caller("a reply")?.on_reply(id, caller::Arrival::Failed(err.into()));
                    }
                    // An unreadable item: the stream fails and the callee is told to stop.
                    Kind::DownItem => {
                        let err = TransportError::Protocol { detail: format!("malformed stream item: {error}") };
                        self.caller("a stream item")?.fail_call(id, err.into());
                    }
                    _ => return Err(self.protocol(format!("a {kind:?} frame that does not decode: {error}"))),
                }
                return Ok(());
            }
        };
        self.negotiated(frame.kind())?;
        match frame {
            Frame::Call { id, timeout_us, body } => {
                let peer = self.peer;
                self.callee("a call")?
                    .on_call(id, timeout_us, body, cx)
                    .map_err(|d| TransportError::Protocol { detail: format!("{d} (from the {peer})") })?;
            }
            Frame::OneWay { id, body } => self.one_way(id, body, cx)?,
            Frame::Cancel { id } => self.callee("a cancel")?.on_cancel(id),
            Frame::UpItem { id, body } => {
                let (inbox, limit) = self.callee("a stream item")?.up_inbox(id);
                self.up_run.open(id, inbox, limit);
                self.up_run.push(body, len);
            }
            Frame::UpEnd { id } => self.callee("a stream end")?.on_up_end(id),
            Frame::DownCredit { id, grant } => self.callee("a stream credit")?.on_down_credit(id, grant),
            Frame::Reply { id, body } => self.caller("a reply")?.on_reply(id, caller::Arrival::Reply(body)),
            Frame::Error { id, error } => self.caller("an error")?.on_reply(id, caller::Arrival::Error(error)),
            Frame::TooLarge { id, size, limit } => {
                let err = TransportError::MessageTooLarge { size, limit, direction: Direction::Response };
                self.caller("a reply")?.on_reply(id, caller::Arrival::Failed(err.into()));
            }
            Frame::DownItem { id, body } => {
                let (inbox, limit) = self.caller("a stream item")?.down_inbox(id);
                self.down_run.open(id, inbox, limit);
                self.down_run.push(body, len);
            }
            Frame::DownEnd { id } => self.caller("a stream end")?.on_reply(id, caller::Arrival::StreamDone),
            Frame::UpCredit { id, grant } => self.caller("a stream credit")?.on_up_credit(id, grant),
            Frame::UpStop { id } => self.caller("a stream stop")?.on_up_stop(id),
            Frame::Credit { grant, .. } => self.caller("a credit")?.on_credit(grant),
            Frame::Piece { id, from_opener, more, bytes } => {
                let peer = self.peer;
                let protocol = |d: String| TransportError::Protocol { detail: format!("{d} (from the {peer})") };
                let whole = if from_opener {
                    self.callee("a stream piece")?.on_up_piece(id, more, &bytes)
                } else {
                    self.caller("a stream piece")?.on_down_piece(id, more, &bytes)
                }
                .map_err(protocol)?;
                if let Some(whole) = whole {
                    // The pieces make one item frame of the same exchange and direction.
                    let whole = whole.freeze();
                    let lent = crate::blob::lend(&whole);
                    let frame = Frame::<S::Request, Resp>::decode_with(self.codec, self.decode, &whole);
                    drop(lent);
                    let expected = if from_opener { Kind::UpItem } else { Kind::DownItem };
                    match &frame {
                        Ok(f) if f.kind() == expected && f.id() == id => {}
                        Err(FrameError::Body { kind, id: fid, .. }) if *kind == expected && *fid == id => {}
                        _ => {
                            return Err(self.protocol(format!("the pieces of exchange {id} do not make a stream item")));
                        }
                    }
                    let len = u32::try_from(whole.len()).unwrap_or(u32::MAX);
                    return self.on_frame_inner(InFrame { frame, len }, cx);
                }
            }
        }
        Ok(())
    }

    /// A one-way call arrived (after the open runs, which it must follow).
    fn one_way(&mut self, id: u64, body: S::Request, cx: &mut Context<'_>) -> Result<(), TransportError> {
        if self.down_run.is_open() || self.up_run.is_open() {
            self.hand_over_runs()?;
        }
        let peer = self.peer;
        self.callee("a one-way call")?
            .on_oneway(id, body, cx)
            .map_err(|d| TransportError::Protocol { detail: format!("{d} (from the {peer})") })
    }

    /// While lingering after a drain: runs the one-way calls in `message` (alone or in a
    /// batch) and drops everything else. Nothing can be answered any more (our end is
    /// half-closed), and a one-way call needs no answer.
    fn run_lingering_oneways(&mut self, message: Inbound<S::Request, Resp>, cx: &mut Context<'_>) {
        let Some(callee) = self.callee.as_mut() else { return };
        if self.capabilities & caps::ONEWAY == 0 {
            return;
        }
        match message {
            Inbound::One(InFrame { frame: Ok(Frame::OneWay { id, body }), .. }) => {
                let _ = callee.on_oneway(id, body, cx);
            }
            Inbound::Batch(body) if self.capabilities & caps::BATCH != 0 => {
                let mut at = 0;
                while let Some(Ok(range)) = crate::wire::next_in_batch(&body, &mut at) {
                    let bytes = &body[range];
                    if let Some((Kind::OneWay, id)) = crate::wire::item_header(bytes)
                        && let Ok(body) = crate::wire::decode_item_body(self.codec, self.decode, bytes)
                    {
                        let _ = callee.on_oneway(id, body, cx);
                    }
                }
            }
            _ => {}
        }
    }

    /// Hands the open runs of stream items to their inboxes; `Err` if a run exceeds the
    /// credit its sender was given (a conforming sender never does).
    fn hand_over_runs(&mut self) -> Result<(), TransportError> {
        let over = |this: &Self, id: u64, limit: usize| {
            this.protocol(format!(
                "stream items of exchange {id} beyond the credit granted (a stream may hold {limit} bytes)"
            ))
        };
        if self.down_run.is_open() {
            let limit = self.down_run.limit();
            self.down_run.hand_over().map_err(|(id, streams::OverCredit)| over(self, id, limit))?;
        }
        if self.up_run.is_open() {
            let limit = self.up_run.limit();
            self.up_run.hand_over().map_err(|(id, streams::OverCredit)| over(self, id, limit))?;
        }
        Ok(())
    }

    /// Writes one frame, which `poll_ready` has made room for.
    fn send(&mut self, next: Pending<Req, S::Response>) -> Result<(), TransportError> {
        let (id, frame) = match next {
            Pending::Answer(Answer::Reply { id, body }) => (id, Frame::Reply { id, body }),
            Pending::Answer(Answer::Error { id, error }) => (id, Frame::Error { id, error }),
            Pending::Answer(Answer::Credit(grant)) => (0, Frame::Credit { id: 0, grant }),
            Pending::Answer(Answer::UpCredit { id, grant }) => (id, Frame::UpCredit { id, grant }),
            Pending::Answer(Answer::UpStop { id }) => (id, Frame::UpStop { id }),
            Pending::Call(caller::Next::Cancel(id)) => (id, Frame::Cancel { id }),
            Pending::Call(caller::Next::DownCredit(id, grant)) => (id, Frame::DownCredit { id, grant }),
            Pending::Call(caller::Next::OneWay(frame)) => {
                self.write_encoded(frame)?;
                let caller = self.caller.as_mut().expect("only the calling half writes one-way calls");
                caller.on_oneway_written();
                // The one-way calls queued behind it join the same batch while it has room,
                // without a trip each through the write loop (which would pick them next
                // anyway: nothing else is produced while it runs).
                while self.outbox.has_room()
                    && let Some(frame) = caller.next_oneway()
                {
                    match frame {
                        calls::EncodedOneWay::Heap(bytes) => self.outbox.push_encoded(bytes),
                        inline => self.outbox.push_encoded_slice(inline.as_slice()),
                    }
                    caller.on_oneway_written();
                }
                return Ok(());
            }
            Pending::Call(caller::Next::Call(call)) => {
                let id = call.id;
                (id, Frame::Call { id, timeout_us: caller::timeout_us(call.timeout), body: call.body })
            }
        };
        let kind = frame.kind();
        self.needs_flush = true;
        let why = match self.outbox.push_frame(&frame, self.codec, self.send_limit) {
            Ok(_) => {
                if kind == Kind::Call {
                    self.caller.as_mut().expect("only the calling half writes calls").on_written(id);
                }
                if kind == Kind::Reply {
                    self.callee.as_mut().expect("only the serving half writes replies").reply_written(id, Ok(()));
                }
                return Ok(());
            }
            Err(why) => why,
        };
        // Encoding failed before anything was written: only this exchange fails.
        match kind {
            Kind::Call => {
                let err = request_encode_error(&why);
                self.caller.as_mut().expect("only the calling half writes calls").fail_call(id, err);
            }
            Kind::Reply | Kind::Error => {
                let replacement = answer_encode_error::<Req, S::Response>(id, &why);
                self.outbox
                    .push_frame(&replacement, self.codec, self.send_limit)
                    .map_err(|e| self.protocol(format!("cannot encode even an error frame: {e}")))?;
                if kind == Kind::Reply {
                    let callee = self.callee.as_mut().expect("only the serving half writes replies");
                    callee.reply_written(id, Err((encode_outcome(&why), &why)));
                }
            }
            _ => return Err(self.protocol(format!("cannot encode a {kind:?} frame: {why}"))),
        }
        Ok(())
    }

    fn write_encoded(&mut self, frame: calls::EncodedOneWay) -> Result<(), TransportError> {
        match frame {
            calls::EncodedOneWay::Heap(bytes) => self.outbox.push_encoded(bytes),
            inline => self.outbox.push_encoded_slice(inline.as_slice()),
        }
        self.needs_flush = true;
        Ok(())
    }

    /// Hands what the outbox holds to the carrier (all of it, or only full batches):
    /// `Ok(true)` if there is room for more frames.
    fn out_room(&mut self, cx: &mut Context<'_>, all: bool) -> Result<bool, TransportError> {
        match self.outbox.poll_room(&mut self.transport, cx, all) {
            Poll::Ready(Ok(())) => Ok(true),
            Poll::Ready(Err(e)) => Err(connection_error(&e, self.peer)),
            Poll::Pending => Ok(false),
        }
    }

    /// The next frame to write: answers first (they free the peer's callers and our
    /// admission slots), then cancels and calls.
    fn next_pending(&mut self) -> Option<Pending<Req, S::Response>> {
        if let Some(a) = self.callee.as_mut().and_then(Callee::next) {
            return Some(Pending::Answer(a));
        }
        self.caller.as_mut().and_then(Caller::next).map(Pending::Call)
    }

    /// Pumps both halves' outbound streams while the pipe has room.
    fn pump_streams(&mut self, cx: &mut Context<'_>) -> Result<bool, TransportError> {
        let downs = self.callee.as_ref().is_some_and(|c| !c.downs.is_empty());
        let ups = self.caller.as_ref().is_some_and(|c| !c.ups.is_empty());
        if !downs && !ups {
            return Ok(false);
        }
        let mut progress = false;
        let mut sink = Pipe {
            transport: &mut self.transport,
            outbox: &mut self.outbox,
            needs_flush: &mut self.needs_flush,
            codec: self.codec,
            limit: self.send_limit,
            peer: self.peer,
            ended: Vec::new(),
            failed: Vec::new(),
        };
        if let Some(callee) = self.callee.as_mut().filter(|_| downs) {
            progress |= streams::pump(
                &mut callee.downs,
                &mut self.order,
                cx,
                &mut DownSink::<_, _, Req, _>(&mut sink, PhantomData),
            )?;
            for (id, outcome, trace) in sink.ended.drain(..) {
                callee.down_ended(id, outcome, trace);
            }
        }
        if let Some(caller) = self.caller.as_mut().filter(|_| ups) {
            progress |= streams::pump(
                &mut caller.ups,
                &mut self.order,
                cx,
                &mut UpSink::<_, _, _, S::Response>(&mut sink, PhantomData),
            )?;
            for (id, err) in sink.failed.drain(..) {
                caller.fail_call(id, err);
            }
        }
        Ok(progress)
    }

    /// Writing failed (the peer closed its end, or the pipe broke): before the connection
    /// is declared over, act on what the peer had already sent, so an answer or a stream's
    /// end written just before it closed (a server's `ShuttingDown`, say) reaches its caller
    /// instead of "connection lost". Bounded: at most one read budget of frames.
    fn write_failed(&mut self, e: TransportError, cx: &mut Context<'_>) -> Ended {
        if let Some(c) = &mut self.callee {
            c.new_pass();
        }
        let mut budget = READ_BUDGET;
        while budget > 0 {
            let cost = match self.next_batched() {
                Some(Ok(Batched::Frame(frame))) => self.on_frame(frame, cx),
                Some(Ok(Batched::Item(cost))) => Ok(cost),
                Some(Ok(Batched::OneWay(id, body))) => self.one_way(id, body, cx).map(|()| ONEWAY_COST),
                Some(Err(_)) => break,
                None => match self.transport.as_mut().poll_next(cx) {
                    Poll::Ready(Some(Ok(message))) => {
                        self.counters.bytes_in(message_len(&message));
                        self.on_message(message, cx)
                    }
                    _ => break,
                },
            };
            match cost {
                Ok(cost) => budget = budget.saturating_sub(cost.max(1)),
                // The peer said why it closed: that is the news, not our failed write.
                Err(why) if self.peer_aborted => return Ended::Failed(why),
                Err(_) => break,
            }
        }
        Ended::Failed(e)
    }

    fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        // Keep going while anything moves (a reply read may free a caller who queues the
        // next call at once); after a few rounds, yield to other tasks.
        for _ in 0..ROUNDS {
            match self.poll_pass(cx) {
                Poll::Ready(Ok(true)) => continue,
                Poll::Ready(Ok(false)) | Poll::Pending => {
                    return match self.poll_stalls(cx) {
                        Some(e) => Poll::Ready(Ended::Blame(e)),
                        None => Poll::Pending,
                    };
                }
                Poll::Ready(Err(e)) => return Poll::Ready(e),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Once the connection is idle for now: has the peer left a frame unfinished, or our
    /// bytes unread, for longer than its limit?
    fn poll_stalls(&mut self, cx: &mut Context<'_>) -> Option<TransportError> {
        // While we do not read (the peer leaves our answers unread), a frame waiting in the
        // buffer is our doing, not the peer's: the write-stall timer covers that case.
        let reading = !self.callee.as_ref().is_some_and(Callee::outbox_full);
        let mid_frame = reading && self.transport.mid_frame();
        if self.read_stall.stalled(cx, mid_frame, self.messages_in) {
            let detail = format!("the {} left a frame unfinished (frame_read_timeout)", self.peer);
            return Some(TransportError::Stalled { detail, limit: self.read_stall.limit() });
        }
        let unwritten = self.transport.unwritten();
        if unwritten != self.last_unwritten {
            self.last_unwritten = unwritten;
            self.writes_seen += 1;
        }
        if self.write_stall.stalled(cx, unwritten > 0, self.writes_seen) {
            let detail =
                format!("the {} stopped reading, {unwritten} bytes are waiting (write_stall_timeout)", self.peer);
            return Some(TransportError::Stalled { detail, limit: self.write_stall.limit() });
        }
        None
    }

    /// Tells the peer why the connection is closing, if the pipe takes it without waiting
    /// (after what was already queued for it).
    fn send_abort(&mut self, why: &TransportError, cx: &mut Context<'_>) {
        let _ = self.out_room(cx, true);
        let frame = Outbound::One(crate::wire::abort_frame(&why.to_string()));
        if let Poll::Ready(Ok(())) = self.transport.as_mut().poll_ready(cx)
            && self.transport.as_mut().start_send(frame).is_ok()
        {
            let _ = self.transport.as_mut().poll_flush(cx);
        }
    }

    /// One pass over everything: `Ready(Ok(made_progress))`, `Pending` while closing,
    /// `Ready(Err(how))` once the connection is over.
    fn poll_pass(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, Ended>> {
        // A shutdown that began before these frames arrived refuses the calls among them.
        let mut progress = self.callee.as_mut().is_some_and(|c| {
            c.new_pass();
            c.poll_shutdown(cx)
        });
        let mut budget = READ_BUDGET;
        // Whether this pass read everything the peer had sent (the pipe had no more): a
        // drained connection closes only then, or one-way calls the client had already
        // written (and flushed) would be dropped unread with the budget's remainder.
        let mut read_all = false;
        while budget > 0 {
            if self.callee.as_ref().is_some_and(Callee::outbox_full) {
                break;
            }
            let cost = match self.next_batched() {
                Some(Ok(Batched::Frame(frame))) => self.on_frame(frame, cx),
                Some(Ok(Batched::Item(cost))) => Ok(cost),
                Some(Ok(Batched::OneWay(id, body))) => self.one_way(id, body, cx).map(|()| ONEWAY_COST),
                Some(Err(e)) => Err(e),
                None => match self.transport.as_mut().poll_next(cx) {
                    Poll::Ready(Some(Ok(message))) => {
                        self.messages_in += 1;
                        self.counters.bytes_in(message_len(&message));
                        self.on_message(message, cx)
                    }
                    Poll::Ready(Some(Err(e))) => {
                        let e = connection_error(&e, self.peer);
                        // Unreadable framing (a frame over our limit) is the peer's doing.
                        let blame = matches!(e, TransportError::Protocol { .. });
                        return Poll::Ready(Err(if blame { Ended::Blame(e) } else { Ended::Failed(e) }));
                    }
                    Poll::Ready(None) => return Poll::Ready(Err(Ended::PeerLeft)),
                    Poll::Pending => {
                        read_all = true;
                        break;
                    }
                },
            };
            match cost {
                Ok(cost) => budget = budget.saturating_sub(cost.max(1)),
                Err(e) if self.peer_aborted => return Poll::Ready(Err(Ended::Failed(e))),
                Err(e) => return Poll::Ready(Err(Ended::Blame(e))),
            }
            progress = true;
        }
        if let Err(e) = self.hand_over_runs() {
            return Poll::Ready(Err(Ended::Blame(e)));
        }
        if self.peer_said_goodbye {
            return Poll::Ready(Err(Ended::Goodbye));
        }
        if self.peer_acked_goodbye {
            return Poll::Ready(Err(Ended::Drained));
        }
        let mut close = CloseRequest::None;
        if let Some(c) = &mut self.caller {
            let pass = c.pass(cx);
            progress |= pass.progress;
            close = pass.close;
        }
        if close == CloseRequest::Now {
            return Poll::Ready(Err(Ended::Closed));
        }
        if let Some(c) = &mut self.callee {
            progress |= c.pass(cx);
        }
        // Answers, control frames and calls first: small and latency-bound, they must not
        // wait behind a stream's items. Then the streams, as far as the pipe takes them.
        let mut room = true;
        loop {
            let has_next = self.callee.as_ref().is_some_and(Callee::has_answers)
                || self.caller.as_ref().is_some_and(Caller::has_next);
            if !has_next {
                break;
            }
            match self.out_room(cx, false) {
                Ok(true) => {}
                Ok(false) => {
                    room = false;
                    break;
                }
                Err(e) => return Poll::Ready(Err(self.write_failed(e, cx))),
            }
            let Some(next) = self.next_pending() else { break };
            if let Err(e) = self.send(next) {
                return Poll::Ready(Err(self.write_failed(e, cx)));
            }
            progress = true;
        }
        match self.pump_streams(cx) {
            Ok(p) => progress |= p,
            Err(e) => return Poll::Ready(Err(self.write_failed(e, cx))),
        }
        // Ending a stream may have queued an answer (an error frame); write it next pass,
        // unless the pipe is full (then its becoming writable wakes us: counting this as
        // progress would spin while a peer leaves our answers unread).
        if room && self.callee.as_ref().is_some_and(Callee::has_answers) {
            progress = true;
        }
        if self.needs_flush {
            match self.out_room(cx, true) {
                Ok(true) => {}
                Ok(false) => return Poll::Ready(Ok(progress)),
                Err(e) => return Poll::Ready(Err(self.write_failed(e, cx))),
            }
            match self.transport.as_mut().poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.needs_flush = false;
                    if let Some(c) = &mut self.caller {
                        c.on_flushed();
                    }
                }
                Poll::Ready(Err(e)) => {
                    let e = connection_error(&e, self.peer);
                    return Poll::Ready(Err(self.write_failed(e, cx)));
                }
                Poll::Pending => {}
            }
        }
        let caller_done = self.caller.as_ref().is_none_or(Caller::idle);
        let polite = close == CloseRequest::Polite && caller_done;
        let drained = read_all && self.callee.as_ref().is_some_and(|c| c.draining && c.drained()) && caller_done;
        if (polite || drained) && !self.needs_flush && self.outbox.is_empty() {
            if drained && self.capabilities & caps::GOODBYE != 0 && !self.goodbye_sent {
                // Tell the client we are done: it closes, and its end of file comes after
                // everything it sent (see the linger in `poll`).
                return match self.transport.as_mut().poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        match self.transport.as_mut().start_send(Outbound::One(crate::wire::goodbye_frame())) {
                            Ok(()) => {
                                self.goodbye_sent = true;
                                self.needs_flush = true;
                                Poll::Ready(Ok(true))
                            }
                            Err(e) => Poll::Ready(Err(self.write_failed(connection_error(&e, self.peer), cx))),
                        }
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(self.write_failed(connection_error(&e, self.peer), cx))),
                    Poll::Pending => Poll::Ready(Ok(progress)),
                };
            }
            return match self.transport.as_mut().poll_close(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(_) => Poll::Ready(Err(if drained { Ended::Drained } else { Ended::Closed })),
            };
        }
        Poll::Ready(Ok(progress))
    }
}

/// The error a call gets when its request (or an item of its stream) cannot be encoded.
pub(crate) fn request_encode_error(why: &EncodeError) -> RpcError {
    match why {
        EncodeError::TooLarge(t) => {
            TransportError::MessageTooLarge { size: t.size, limit: t.limit, direction: Direction::Request }.into()
        }
        EncodeError::Serde(msg) => {
            TransportError::Protocol { detail: format!("cannot encode the request: {msg}") }.into()
        }
    }
}

/// How an exchange ends whose message cannot be encoded.
fn encode_outcome(why: &EncodeError) -> Outcome {
    match why {
        EncodeError::TooLarge(_) => Outcome::TooLarge,
        EncodeError::Serde(_) => Outcome::Internal,
    }
}

/// The frame sent instead of an answer (or a stream item) that cannot be encoded.
fn answer_encode_error<C, R>(id: u64, why: &EncodeError) -> Frame<C, R> {
    match why {
        EncodeError::TooLarge(t) => Frame::TooLarge { id, size: t.size, limit: t.limit },
        EncodeError::Serde(msg) => Frame::Error {
            id,
            error: ServerError::new(ServerErrorKind::Internal, format!("cannot encode the response: {msg}")),
        },
    }
}

/// The pipe as the stream pumps see it.
struct Pipe<'a, T> {
    transport: &'a mut Pin<Box<T>>,
    outbox: &'a mut Outbox,
    needs_flush: &'a mut bool,
    codec: Codec,
    limit: usize,
    peer: &'static str,
    /// Outbound streams that ended (their end frame is written): how, and their spans.
    ended: Vec<(u64, Outcome, Trace)>,
    /// Calls whose outbound stream failed.
    failed: Vec<(u64, RpcError)>,
}

impl<T> Pipe<'_, T> {
    fn ready<In>(&mut self, cx: &mut Context<'_>) -> Result<bool, TransportError>
    where
        T: FrameTransport<In, Outbound>,
    {
        if self.outbox.has_room() {
            return Ok(true);
        }
        match self.outbox.poll_room(self.transport, cx, false) {
            Poll::Ready(Ok(())) => Ok(true),
            Poll::Ready(Err(e)) => Err(connection_error(&e, self.peer)),
            Poll::Pending => Ok(false),
        }
    }

    /// Queues a control frame (an end, an error), which always encodes.
    fn write<C: Serialize, R: Serialize>(&mut self, frame: &Frame<C, R>) -> Result<(), TransportError> {
        self.outbox.push_frame(frame, self.codec, self.limit).map_err(|e| TransportError::Protocol {
            detail: format!("cannot encode a {:?} frame: {e}", frame.kind()),
        })?;
        *self.needs_flush = true;
        Ok(())
    }

    /// Encodes a stream item here (its size is what it costs in credit) and queues it, or
    /// its first piece if it is larger than [`streams::WHOLE_MAX`]; `Ok(Err(why))` if it
    /// cannot be encoded (nothing queued). `blobs`: look for blobs to send uncopied.
    fn write_item<M: Serialize>(
        &mut self,
        id: u64,
        from_opener: bool,
        item: &M,
        blobs: bool,
    ) -> Result<Result<streams::ItemSent, EncodeError>, TransportError> {
        *self.needs_flush = true;
        let kind = if from_opener { Kind::UpItem } else { Kind::DownItem };
        match self.outbox.encode_item(kind, id, item, self.codec, self.limit, blobs) {
            Ok(Encoded::Queued(len)) => Ok(Ok(streams::ItemSent::Whole(u32::try_from(len).unwrap_or(u32::MAX)))),
            Ok(Encoded::Large(mut rest)) => {
                let cost = u32::try_from(rest.len()).unwrap_or(u32::MAX);
                self.write_piece(id, from_opener, &mut rest)?;
                Ok(Ok(streams::ItemSent::Started { cost, rest }))
            }
            Err(why) => Ok(Err(why)),
        }
    }

    /// Queues the next piece of a large item (its frame's bytes), taking it off `rest`.
    fn write_piece(&mut self, id: u64, from_opener: bool, rest: &mut Rest) -> Result<(), TransportError> {
        let parts = rest.take(streams::PIECE);
        let piece = Frame::<(), ()>::Piece { id, from_opener, more: !rest.is_empty(), bytes: Bytes::new() };
        // The header alone (the piece's bytes follow it raw). A piece is at most the piece
        // size plus its header: below any message limit.
        let header = piece
            .encode(self.codec, self.limit)
            .map_err(|e| TransportError::Protocol { detail: format!("cannot encode a piece header: {e}") })?;
        self.outbox.push_piece(&header, parts);
        *self.needs_flush = true;
        Ok(())
    }
}

/// Writes the serving half's outbound stream items (`DownItem`); `In`, `Req` and `R` are
/// the carrier's frame types.
struct DownSink<'p, 'a, T, In, Req, R>(&'p mut Pipe<'a, T>, Carrier<In, Req, R>);

/// The carrier's inbound message type and the frame types, for the sinks' trait bounds.
type Carrier<In, Req, R> = PhantomData<fn() -> (In, Req, R)>;

impl<T, In, Req, R> streams::PumpSink<R> for DownSink<'_, '_, T, In, Req, R>
where
    T: FrameTransport<In, Outbound>,
    R: Serialize,
    Req: Serialize,
{
    fn ready(&mut self, cx: &mut Context<'_>) -> Result<bool, TransportError> {
        self.0.ready(cx)
    }

    fn item(&mut self, id: u64, item: R, blobs: bool) -> Result<streams::ItemSent, TransportError> {
        let p = &mut *self.0;
        match p.write_item(id, false, &item, blobs)? {
            Ok(sent) => Ok(sent),
            Err(why) => {
                // The item cannot cross: the exchange ends with why, the connection goes on.
                p.write(&answer_encode_error::<(), ()>(id, &why))?;
                Ok(streams::ItemSent::Failed(encode_outcome(&why)))
            }
        }
    }

    fn piece(&mut self, id: u64, rest: &mut Rest) -> Result<(), TransportError> {
        self.0.write_piece(id, false, rest)
    }

    fn end(&mut self, id: u64, how: Result<(), RpcError>) -> Result<(), TransportError> {
        let frame = match how {
            Ok(()) => Frame::<(), ()>::DownEnd { id },
            Err(RpcError::Server(error)) => Frame::Error { id, error },
            Err(e) => Frame::Error { id, error: ServerError::new(ServerErrorKind::Internal, e.to_string()) },
        };
        self.0.write(&frame)
    }

    fn over(&mut self, id: u64, outcome: Outcome, trace: Trace) {
        self.0.ended.push((id, outcome, trace));
    }
}

/// Writes the calling half's outbound stream items (`UpItem`).
struct UpSink<'p, 'a, T, In, Req, R>(&'p mut Pipe<'a, T>, Carrier<In, Req, R>);

impl<T, In, Req, R> streams::PumpSink<Req> for UpSink<'_, '_, T, In, Req, R>
where
    T: FrameTransport<In, Outbound>,
    R: Serialize,
    Req: Serialize,
{
    fn ready(&mut self, cx: &mut Context<'_>) -> Result<bool, TransportError> {
        self.0.ready(cx)
    }

    fn item(&mut self, id: u64, item: Req, blobs: bool) -> Result<streams::ItemSent, TransportError> {
        let p = &mut *self.0;
        match p.write_item(id, true, &item, blobs)? {
            Ok(sent) => Ok(sent),
            Err(why) => {
                // The call fails with why (and is cancelled on the callee).
                p.failed.push((id, request_encode_error(&why)));
                Ok(streams::ItemSent::Failed(encode_outcome(&why)))
            }
        }
    }

    fn piece(&mut self, id: u64, rest: &mut Rest) -> Result<(), TransportError> {
        self.0.write_piece(id, true, rest)
    }

    fn end(&mut self, id: u64, how: Result<(), RpcError>) -> Result<(), TransportError> {
        match how {
            Ok(()) => self.0.write(&Frame::<(), ()>::UpEnd { id }),
            // A stream passed through from elsewhere failed: so does this call.
            Err(e) => {
                self.0.failed.push((id, e));
                Ok(())
            }
        }
    }

    /// The call's own outcome is counted where its caller gets it.
    fn over(&mut self, _: u64, _: Outcome, _: Trace) {}
}

/// A frame waiting to be written, from either half.
enum Pending<Req, R> {
    Answer(Answer<R>),
    Call(caller::Next<Req>),
}

impl<T, S: Service, Req, Resp> Engine<T, S, Req, Resp> {
    /// The connection is over: everyone still waiting on the calling half, and everyone
    /// who calls later, is told `why`.
    fn finish(&mut self, why: &RpcError) {
        if self.finished {
            return;
        }
        self.finished = true;
        if let Some(c) = &mut self.caller {
            c.finish(why);
        }
    }
}

// No field is ever pinned in place: the transport is boxed, the rest is plain data.
impl<T, S: Service, Req, Resp> Unpin for Engine<T, S, Req, Resp> {}

impl<T, S, Req, Resp> Future for Engine<T, S, Req, Resp>
where
    T: FrameTransport<Inbound<S::Request, Resp>, Outbound>,
    S: Service,
    Req: Serialize,
    Resp: DeserializeOwned,
{
    type Output = Result<(), TransportError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(mut linger) = this.linger.take() {
            // Closing a socket whose peer's bytes are still unread resets the connection, and
            // the peer could lose the last answers we wrote (a stream's `ShuttingDown`) to
            // that reset. So we wait for the peer to close (it does once it reads our
            // end-of-file). Meanwhile one-way calls it had sent still run (they need no
            // answer, and a client that flushed them before the shutdown relies on them: the
            // drain can decide the connection is idle before the reactor has reported its
            // last bytes); everything else is dropped. A client that answered a goodbye
            // lingers here too, its answer perhaps still on its way out, until the server
            // closes.
            let _ = this.transport.as_mut().poll_flush(cx);
            loop {
                match this.transport.as_mut().poll_next(cx) {
                    // The client's answer to our goodbye: nothing of it follows.
                    Poll::Ready(Some(Ok(Inbound::Goodbye)))
                        if this.goodbye_sent && this.capabilities & caps::GOODBYE_ACK != 0 =>
                    {
                        break;
                    }
                    Poll::Ready(Some(Ok(message))) => this.run_lingering_oneways(message, cx),
                    Poll::Ready(_) => break,
                    Poll::Pending if linger.as_mut().poll(cx).is_pending() => {
                        this.linger = Some(linger);
                        return Poll::Pending;
                    }
                    Poll::Pending => break,
                }
            }
            return Poll::Ready(Ok(()));
        }
        let ended = std::task::ready!(this.poll_io(cx));
        let drained = matches!(ended, Ended::Drained);
        let answer_goodbye = matches!(ended, Ended::Goodbye) && this.capabilities & caps::GOODBYE_ACK != 0;
        let (why, result): (RpcError, _) = match ended {
            Ended::PeerLeft => {
                let detail = format!("the {} closed the connection", this.peer);
                (TransportError::Disconnected { detail }.into(), Ok(()))
            }
            Ended::Drained | Ended::Closed => (RpcError::Cancelled, Ok(())),
            Ended::Goodbye => {
                let detail = format!("the {} shut down (it finished its calls and said goodbye)", this.peer);
                (TransportError::Disconnected { detail }.into(), Ok(()))
            }
            Ended::Failed(e) => (e.clone().into(), Err(e)),
            Ended::Blame(e) => {
                tracing::info!(error = %e, peer = this.peer, "closing the connection: the peer broke the protocol or stalled");
                this.send_abort(&e, cx);
                (e.clone().into(), Err(e))
            }
        };
        tracing::debug!(error = %why, peer = this.peer, "connection ended");
        // Fail everything still waiting now, not at its deadline.
        this.finish(&why);
        // Unix only: a named pipe has no half-close (the peer sees our end-of-file only when
        // we close), and what we wrote stays readable after we close it.
        if drained && (cfg!(unix) || this.goodbye_sent) && !this.peer_acked_goodbye {
            this.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
            return Pin::new(this).poll(cx);
        }
        if answer_goodbye {
            // Our goodbye goes after everything we sent; then we wait for the server to
            // close first, so nothing we wrote is left unread when the pipe goes.
            if let Poll::Ready(Ok(())) = this.transport.as_mut().poll_ready(cx)
                && this.transport.as_mut().start_send(Outbound::One(crate::wire::goodbye_frame())).is_ok()
            {
                this.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
                return Pin::new(this).poll(cx);
            }
        }
        Poll::Ready(result)
    }
}

impl<T, S: Service, Req, Resp> Drop for Engine<T, S, Req, Resp> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Dropped unfinished: the task panicked, or the runtime that ran it shut down.
        // Callers on other runtimes must not wait for a reply that can no longer arrive.
        let detail = if std::thread::panicking() {
            "the connection's task panicked".to_owned()
        } else {
            "the connection's task stopped (its tokio runtime shut down)".to_owned()
        };
        self.finish(&TransportError::Disconnected { detail }.into());
    }
}

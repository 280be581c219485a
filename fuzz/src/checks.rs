//! What each fuzz target checks, for one input: shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`) and by the regression test that plain `cargo test` runs
//! (`tests/tests/fuzz_corpus.rs`, which includes this file with `#[path]`), so a corpus
//! file or crash reproducer is judged the same way in both places.
//!
//! Targets and their oracles (a violated oracle panics; libFuzzer reports it as a crash):
//!
//! - [`server_frames`]: the bytes a client sends, after the handshake, through the pipe's
//!   framing ([`rpc_core::pipe::LengthPrefixed`], split into reads at input-chosen points)
//!   and each frame through the server's decoding: `Frame::<FuzzedRequest, ByteBuf>` (what
//!   a server reads), `split_batch` and every frame of a batch, `Hello::decode`,
//!   `read_abort`. No panic; what one decode allocates at its peak stays within
//!   `2 x (16 x len + 64 KiB)` plus [`SLACK`] (a counting allocator, [`Counting`]); the
//!   framing buffers at most about what arrived plus its read-ahead; a frame that decodes
//!   re-encodes to one that decodes again, of the same length.
//! - [`client_frames`]: the same for what a client reads from a server (a squatter on the
//!   name is an adversary too): `Frame::<CallbackCall, FuzzedResponse>` and
//!   `Welcome::decode`.
//! - [`engine_pair`]: a whole connection, end to end, in a current-thread runtime with
//!   paused time (timers fire at once when nothing else can run, so a hang shows as a
//!   timeout, not a stuck fuzzer). Input bit 7 of the first byte picks the side the input
//!   plays:
//!   - a hostile *client*: a real `Server` serves two connections; on one the input is
//!     played as raw bytes (a hello built from the input, then frames, raw bytes, batches,
//!     pauses and split points, and a close); on the other a well-behaved generated client
//!     must get correct answers before and after. The hostile connection must be over
//!     within [`HOSTILE_BOUND`] once the input is played, the server must only send
//!     well-formed frames, and nothing may panic anywhere (spawned tasks included);
//!   - a hostile *server*: a real client (`Channel`) handshakes with the input and makes
//!     calls of every shape; every call must end (with any result) within the bound, the
//!     client must only send well-formed frames, and nothing may panic.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Once;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use rpc_core::codec::{Codec, DecodeLimits};
use rpc_core::wire::{self, CallbackCall, Frame, HEADER_LEN, HandshakeStatus, Hello, Kind, Welcome, caps};
use rpc_core::{Channel, ClientConfig, RpcError, RpcStream, Server, ServerConfig, ServerError, ServerErrorKind};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

// ---------------------------------------------------------------------------------------
// The service under test: argument types of every kind a decoder must survive.

/// A recursive type through a `Box` (one wire byte per level: the depth limit's case) and
/// through a collection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Tree {
    /// A leaf.
    Leaf(u8),
    /// One level deeper, behind a `Box`.
    Node(Box<Tree>),
    /// Many children.
    Fork(Vec<Tree>),
}

impl Tree {
    fn depth(&self) -> u32 {
        match self {
            Tree::Leaf(_) => 1,
            Tree::Node(t) => 1 + t.depth(),
            Tree::Fork(ts) => 1 + ts.iter().map(Tree::depth).max().unwrap_or(0),
        }
    }
}

/// Nested enums: unit, newtype, tuple and struct variants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Shape {
    /// Unit.
    Unit,
    /// Newtype.
    Newtype(i64),
    /// Tuple.
    Tuple(u8, char, f32),
    /// Struct, recursive through an option.
    Struct {
        /// A name.
        name: String,
        /// A nested shape.
        inner: Option<Box<Shape>>,
    },
    /// A sequence of shapes.
    Many(Vec<Shape>),
}

/// Strings, sequences, maps (ordered and hashed), nested options, a `Vec<()>` (zero bytes
/// per element on the wire), byte buffers and a sequence of wide options (one wire byte,
/// 72 bytes in memory, per `None`: the budget's worst case).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Mixed {
    /// Text.
    pub text: String,
    /// Words.
    pub words: Vec<String>,
    /// An ordered map.
    pub by_name: BTreeMap<String, Vec<u64>>,
    /// A hash map.
    pub by_id: HashMap<u32, Option<String>>,
    /// A nested option.
    pub maybe: Option<Option<i128>>,
    /// Zero-sized elements.
    pub units: Vec<()>,
    /// Bytes, as one buffer.
    #[serde(with = "serde_bytes")]
    pub blob: Vec<u8>,
    /// Wide options.
    pub wide: Vec<Option<[u64; 8]>>,
    /// A set.
    pub set: BTreeSet<i16>,
    /// Tuples.
    pub pairs: Vec<(bool, u16)>,
    /// An enum.
    pub shape: Option<Shape>,
}

/// The application error of [`Fuzzed::fallible`].
#[derive(Debug, Serialize, Deserialize)]
pub enum FuzzError {
    /// The handler said no.
    Refused(u8),
    /// The call failed.
    Rpc(RpcError),
}

impl From<RpcError> for FuzzError {
    fn from(e: RpcError) -> Self {
        FuzzError::Rpc(e)
    }
}

/// The service every target decodes for and the engine target serves: every method shape
/// (unary, unit-free arguments, fallible, one-way, download, upload, both ways).
#[rpc_core::service]
pub trait Fuzzed {
    /// A string back.
    async fn echo(&self, text: String) -> String;
    /// Sizes of the parts.
    async fn mixed(&self, value: Mixed) -> Vec<u64>;
    /// The tree's depth.
    async fn tree(&self, tree: Tree) -> u32;
    /// How many.
    async fn units(&self, units: Vec<()>) -> u64;
    /// The bytes `times` times (255: 300 KiB, over small message limits).
    async fn blob(&self, bytes: ByteBuf, times: u8) -> ByteBuf;
    /// The shapes reversed, and the map's size.
    async fn shapes(&self, shapes: Vec<Shape>, index: HashMap<String, Option<Vec<i32>>>) -> (Vec<Shape>, u64);
    /// Sleeps `ms` (paused time: instantly, in order).
    async fn nap(&self, ms: u16) -> u16;
    /// Odd numbers are refused.
    async fn fallible(&self, x: u8) -> Result<u8, FuzzError>;
    /// Nothing comes back.
    #[oneway]
    async fn note(&self, note: Option<String>);
    /// `n` items of `size` bytes (large ones go in pieces).
    async fn count(&self, n: u16, size: u32) -> RpcStream<ByteBuf>;
    /// The sum of the items.
    async fn sum(&self, items: RpcStream<u64>) -> u64;
    /// The items with a prefix, as they come.
    async fn relay(&self, prefix: String, items: RpcStream<String>) -> RpcStream<String>;
}

/// The implementation served by [`engine_pair`].
pub struct Impl;

impl Fuzzed for Impl {
    async fn echo(&self, text: String) -> String {
        text
    }
    async fn mixed(&self, v: Mixed) -> Vec<u64> {
        [v.text.len(), v.words.len(), v.by_name.len(), v.by_id.len(), v.units.len(), v.blob.len(), v.wide.len()]
            .into_iter()
            .map(|n| n as u64)
            .collect()
    }
    async fn tree(&self, tree: Tree) -> u32 {
        tree.depth()
    }
    async fn units(&self, units: Vec<()>) -> u64 {
        units.len() as u64
    }
    async fn blob(&self, bytes: ByteBuf, times: u8) -> ByteBuf {
        if times == u8::MAX {
            return ByteBuf::from(vec![7; 300 * 1024]);
        }
        ByteBuf::from(bytes.repeat(usize::from(times % 4)))
    }
    async fn shapes(&self, mut shapes: Vec<Shape>, index: HashMap<String, Option<Vec<i32>>>) -> (Vec<Shape>, u64) {
        shapes.reverse();
        (shapes, index.len() as u64)
    }
    async fn nap(&self, ms: u16) -> u16 {
        tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
        ms
    }
    async fn fallible(&self, x: u8) -> Result<u8, FuzzError> {
        if x % 2 == 1 { Err(FuzzError::Refused(x)) } else { Ok(x) }
    }
    async fn note(&self, _note: Option<String>) {}
    async fn count(&self, n: u16, size: u32) -> RpcStream<ByteBuf> {
        // Bounded work per input: a few large items (over 128 KiB: sent in pieces), or
        // more small ones.
        let size = (size as usize).min(160 * 1024);
        let n = if size > 4096 { n.min(3) } else { n.min(64) };
        RpcStream::iter((0..n).map(move |i| ByteBuf::from(vec![i as u8; size])))
    }
    async fn sum(&self, mut items: RpcStream<u64>) -> u64 {
        let mut total = 0u64;
        while let Some(Ok(x)) = items.next().await {
            total = total.wrapping_add(x);
        }
        total
    }
    async fn relay(&self, prefix: String, items: RpcStream<String>) -> RpcStream<String> {
        RpcStream::new(items.take_while(|r| std::future::ready(r.is_ok())).map(move |r| {
            let mut s = prefix.clone();
            s.push_str(&r.unwrap_or_default());
            s
        }))
    }
}

// ---------------------------------------------------------------------------------------
// Allocation metering.

/// Bytes of allocation a decode may use beyond twice its budget: error messages and the
/// codecs' own small boxes.
pub const SLACK: usize = 16 * 1024;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// A global allocator that counts, per thread, the bytes live and their peak, so a check
/// can measure what one call allocated at most ([`measure`]). Install it in the binary:
/// `#[global_allocator] static A: Counting = Counting;`. A `realloc` counts as the change
/// in size (a moving `realloc` briefly holds both blocks; the model is what the program
/// asked for).
pub struct Counting;

fn count(delta: isize) {
    // `try_with`: no panic while a thread's locals are being torn down. Const-initialized
    // `Cell`s need no destructor and never allocate.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

#[allow(unsafe_code)]
// SAFETY: every call is forwarded to `System` unchanged; the counting touches only
// thread-local `Cell`s, which neither allocate nor unwind.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `System.alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every block is ours).
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; the caller's contract is `System.realloc`'s.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Runs `f`, returning its value and the most bytes it had allocated (net, on this thread)
/// at any moment.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let value = f();
    let peak = PEAK.with(Cell::get);
    (value, (peak - start).max(0) as usize)
}

/// Whether [`Counting`] is this binary's allocator (else [`measure`] sees nothing).
pub fn counting_installed() -> bool {
    let (_, peak) = measure(|| std::hint::black_box(vec![0u8; 4096]));
    peak >= 4096
}

// ---------------------------------------------------------------------------------------
// server_frames, client_frames.

/// The framing limit of the frame targets: small next to the 4 MiB default, large enough
/// that a header declaring it and a few bytes tell a reader that buffers only what arrived
/// from one that reserves what was declared.
pub const FRAME_MAX: usize = 1 << 20;

/// What a server reads after the handshake. Input: byte 0 picks the codec (bit 0) and the
/// read sizes (bits 1..8, 0: all at once); the rest is the byte stream.
pub fn server_frames(data: &[u8]) {
    frames::<FuzzedRequest, ByteBuf>(data, |bytes| {
        if let Ok(hello) = Hello::decode(bytes) {
            assert_eq!(Hello::decode(&hello.encode()).as_ref(), Ok(&hello), "a hello re-encodes to itself");
        }
    });
}

/// What a client reads from a server (which may be a squatter on the name). Input as for
/// [`server_frames`].
pub fn client_frames(data: &[u8]) {
    frames::<CallbackCall, FuzzedResponse>(data, |bytes| {
        if let Ok(welcome) = Welcome::decode(bytes) {
            assert_eq!(Welcome::decode(&welcome.encode()).as_ref(), Ok(&welcome), "a welcome re-encodes to itself");
        }
    });
}

/// The codec of a `frames` input, from its control byte: bit 0 clear, bincode; set,
/// postcard, or JSON if bit 7 is set too. (JSON came later: bit 7 also belongs to the read
/// split, which stays as it was; committed inputs with bits 0 and 7 set now run as JSON.)
fn codec_of(control: u8) -> Codec {
    match (control & 1, control & 0x80) {
        (0, _) => Codec::Bincode,
        (_, 0) => Codec::Postcard,
        _ => Codec::Json,
    }
}

/// The codec of an `engine_pair` input: setup bit 0 clear, bincode; set, postcard, or JSON
/// if bit 3 of the limits byte is set too (the setup byte has no bit left).
fn pair_codec(setup: u8, limits: u8) -> Codec {
    match (setup & 1, limits & 8) {
        (0, _) => Codec::Bincode,
        (_, 0) => Codec::Postcard,
        _ => Codec::Json,
    }
}

fn frames<C, R>(data: &[u8], handshake: fn(&[u8]))
where
    C: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    let Some((&control, stream)) = data.split_first() else { return };
    let codec = codec_of(control);
    let reader = Chunked { data: stream, at: 0, split: control >> 1, reads: 0 };
    let mut framed = rpc_core::pipe::length_delimited(reader, FRAME_MAX);
    futures::executor::block_on(async {
        while let Some(next) = framed.next().await {
            // The framing holds about what arrived, never what a header declared: its
            // read-ahead past what arrived, doubled by the buffer's amortized growth (a
            // header and a trickle of bytes make it 128 KiB, not 64), and its first 8 KiB.
            let fed = framed.get_ref().at;
            let capacity = framed.read_buffer().capacity();
            let most = 2 * (fed + rpc_core::pipe::READ_AHEAD) + 8 * 1024;
            assert!(capacity <= most, "the framing buffers {capacity} bytes after {fed} arrived (at most {most})");
            let Ok(frame) = next else { break };
            check_frame::<C, R>(codec, &frame, true);
            let bound = allowed(frame.len());
            let ((), peak) = measure(|| handshake(&frame));
            assert!(peak <= bound, "reading a {}-byte handshake allocated {peak} bytes (at most {bound})", frame.len());
            let _ = wire::read_abort(&frame);
        }
    });
}

/// The most one decode of `len` bytes may allocate: twice its budget, plus [`SLACK`].
pub fn allowed(len: usize) -> usize {
    2 * DecodeLimits::DEFAULT.budget(len) + SLACK
}

fn check_frame<C, R>(codec: Codec, frame: &[u8], outer: bool)
where
    C: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    let limits = DecodeLimits::DEFAULT;
    let len = frame.len();
    let bound = allowed(len);
    let (decoded, peak) = measure(|| Frame::<C, R>::decode_with(codec, limits, frame));
    assert!(peak <= bound, "decoding a {len}-byte frame allocated {peak} bytes at its peak (at most {bound})");
    if let Ok(f) = &decoded {
        assert_eq!(f.kind().code(), frame[0], "the kind is the first byte");
        assert_eq!(f.id().to_le_bytes(), frame[2..HEADER_LEN], "the id is bytes 2..10");
        // Re-encoding gives a frame that decodes again (under the original's budget: a
        // re-encoding may be shorter), and re-encodes to the same length.
        let once = f.encode(codec, usize::MAX).expect("a decoded frame re-encodes");
        let again_limits = limits.with_base(limits.base + limits.ratio * len);
        let again = Frame::<C, R>::decode_with(codec, again_limits, &once)
            .unwrap_or_else(|e| panic!("a re-encoded frame does not decode: {e}"));
        let twice = again.encode(codec, usize::MAX).expect("a decoded frame re-encodes");
        assert_eq!(once.len(), twice.len(), "re-encoding is stable");
    }
    if outer && len >= HEADER_LEN && frame[0] == Kind::Batch.code() {
        let (split, peak) = measure(|| wire::split_batch(frame));
        assert!(peak <= bound, "splitting a {len}-byte batch allocated {peak} bytes (at most {bound})");
        for inner in split.into_iter().flatten() {
            assert!(!inner.is_empty(), "a batch entry is never empty");
            check_frame::<C, R>(codec, inner, false);
        }
    }
}

/// A byte source that hands out its data in reads of input-chosen sizes.
struct Chunked<'a> {
    data: &'a [u8],
    at: usize,
    split: u8,
    reads: usize,
}

impl Chunked<'_> {
    fn next_len(&mut self) -> usize {
        self.reads += 1;
        let s = usize::from(self.split);
        match s {
            0 => usize::MAX,
            // Alternate between two sizes the input chose, small and not.
            _ if self.reads.is_multiple_of(2) => s,
            _ => (s * 37) % 509 + 1,
        }
    }
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let n = self.next_len().min(buf.remaining()).min(self.data.len() - self.at);
        let at = self.at;
        buf.put_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Chunked<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

// ---------------------------------------------------------------------------------------
// engine_pair.

/// How long (paused, virtual time) a hostile connection may take to be over, the input's
/// pauses included, and a hostile server's client calls to end: beyond every timer of the
/// engines as configured here (handshake 10 s, frame read 30 s, write stall 30 s, linger
/// 2 s) plus the input's pauses ([`SLEEP_BUDGET_MS`]).
pub const HOSTILE_BOUND: Duration = Duration::from_secs(300);

/// The whole input's bound in real time: far more than any input needs with time paused.
const REAL_BOUND: Duration = Duration::from_secs(30);

/// The whole input's bound (virtual time): the hostile part, the good calls, the closes.
const TOTAL_BOUND: Duration = Duration::from_secs(3600);

/// Most (virtual) time one input's pauses may take, well within [`HOSTILE_BOUND`].
const SLEEP_BUDGET_MS: u64 = 100_000;

/// Largest message both real ends accept here.
const MAX_MESSAGE: usize = 1 << 20;

/// The input, read front to back; reads past the end give zeros, so every input is a
/// complete script.
struct Script<'a> {
    data: &'a [u8],
}

impl<'a> Script<'a> {
    fn done(&self) -> bool {
        self.data.is_empty()
    }
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }
    fn string(&mut self) -> String {
        let n = usize::from(self.byte() % 32);
        String::from_utf8_lossy(self.take(n)).into_owned()
    }
}

thread_local! {
    static PANICS: Cell<usize> = const { Cell::new(0) };
}

/// Counts panics on this thread (then runs the previous hook: under libFuzzer, it aborts),
/// so a panic in a spawned task, which tokio would swallow, still fails the check.
fn panics_seen() -> usize {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = PANICS.try_with(|p| p.set(p.get() + 1));
            previous(info);
        }));
    });
    PANICS.with(Cell::get)
}

/// One connection end to end (see the module docs). Input: byte 0 is the setup (bit 0 the
/// codec, with bit 3 of the limits byte: see [`pair_codec`]; bits 1..5 the capabilities
/// announced, bits 5..7 the handshake, bit 7 which side the input plays), then a script of
/// operations (see `play`).
pub fn engine_pair(data: &[u8]) {
    let before = panics_seen();
    let started = std::time::Instant::now();
    let mut script = Script { data };
    let setup = script.byte();
    let codec = pair_codec(setup, script.data.first().copied().unwrap_or(0));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        let run = async {
            if setup & 0x80 == 0 {
                hostile_client(setup, codec, script).await
            } else {
                hostile_server(setup, codec, script).await
            }
        };
        tokio::time::timeout(TOTAL_BOUND, run).await.expect("the whole exchange did not end within its bound");
    });
    drop(runtime);
    assert_eq!(panics_seen(), before, "something panicked (see above), maybe in a spawned task");
    // Time is paused: an input takes milliseconds unless something spins.
    let took = started.elapsed();
    assert!(took < REAL_BOUND, "the input took {took:?} of real time: something spun");
}

/// Call deadlines, both ends: longer than any run. rpc-core measures deadlines with
/// `std::time::Instant`, which paused time does not move, while its timers run on tokio's
/// clock, which paused time moves ahead: a deadline shorter than that lead would expire at
/// once, failing a good call for no fault of the engine's.
const DEADLINE: Duration = Duration::from_secs(4 * 3600);

fn server_config() -> ServerConfig {
    ServerConfig::default().max_message(MAX_MESSAGE).max_deadline(DEADLINE)
}

fn client_config(codec: Codec) -> ClientConfig {
    ClientConfig::default().codec(codec).max_message(MAX_MESSAGE).default_timeout(DEADLINE)
}

/// The capabilities picked by setup bits 1..5.
fn capabilities(setup: u8) -> u32 {
    u32::from(setup >> 1) & caps::SUPPORTED
}

/// A real server, a well-behaved client on one connection and the input on another.
async fn hostile_client(setup: u8, codec: Codec, script: Script<'_>) {
    let server = Server::new(FuzzedServer::new(Impl)).config(server_config());
    let (good_io, good_end) = tokio::io::duplex(64 * 1024);
    // A small pipe for the hostile connection, sometimes: writes then wait for reads.
    let pipe = if setup & 0x40 != 0 { 512 } else { 64 * 1024 };
    let (bad_io, bad_end) = tokio::io::duplex(pipe);
    let good_served = server.serve_connection(good_end);
    let bad_served = server.serve_connection(bad_end);
    let flow = async {
        let channel = Channel::from_io(good_io, FuzzedClient::ID, client_config(codec))
            .await
            .expect("the good client's handshake");
        let client = FuzzedClient::from_channel(channel);
        assert_eq!(client.echo("before".into()).await.expect("the good client's first call"), "before");
        let hostile = play(bad_io, setup, codec, script, Side::Client);
        let over = tokio::time::timeout(HOSTILE_BOUND, futures::future::join(hostile, bad_served)).await;
        let (_, _served) =
            over.expect("the hostile connection was not over within the bound after its input was played");
        good_calls(&client).await;
    };
    let (_, good) = futures::future::join(flow, good_served).await;
    assert!(good.is_ok(), "the good connection ended with {good:?}");
}

/// What a well-behaved client must still get from the server, exactly.
async fn good_calls(client: &FuzzedClient) {
    assert_eq!(client.echo("after".into()).await.expect("echo after"), "after");
    assert_eq!(client.fallible(2).await.expect("fallible(2)"), 2);
    assert!(matches!(client.fallible(3).await, Err(FuzzError::Refused(3))));
    let items: Vec<_> = client.count(3, 5).await.expect("count").collect().await;
    let items: Vec<_> = items.into_iter().map(|r| r.expect("an item").into_vec()).collect();
    assert_eq!(items, [vec![0; 5], vec![1; 5], vec![2; 5]]);
    assert_eq!(client.sum(RpcStream::iter([1, 2, 3])).await.expect("sum"), 6);
    client.note(None).await.expect("a one-way call");
    let tree = Tree::Node(Box::new(Tree::Fork(vec![Tree::Leaf(1), Tree::Node(Box::new(Tree::Leaf(2)))])));
    assert_eq!(client.tree(tree).await.expect("tree"), 4);
}

/// A real client against the input playing its server.
async fn hostile_server(setup: u8, codec: Codec, script: Script<'_>) {
    let (client_io, server_io) = tokio::io::duplex(if setup & 0x40 != 0 { 512 } else { 64 * 1024 });
    let calls = async {
        let Ok(channel) = Channel::from_io(client_io, FuzzedClient::ID, client_config(codec)).await else { return };
        // Streams have no deadline unless the handle sets one.
        let client = FuzzedClient::from_channel(channel).with_timeout(DEADLINE);
        let all = async {
            let echo = client.echo("hello".into());
            let fallible = client.fallible(4);
            let note = client.note(Some("note".into()));
            let count = async {
                if let Ok(s) = client.count(4, 200 * 1024).await {
                    let _ = s.collect::<Vec<_>>().await;
                }
            };
            let sum = client.sum(RpcStream::iter(0..20u64));
            let relay = async {
                if let Ok(s) = client.relay(">".into(), RpcStream::iter(["a".to_string(), "b".into()])).await {
                    let _ = s.collect::<Vec<_>>().await;
                }
            };
            let big = client.blob(ByteBuf::from(vec![1; 200 * 1024]), 1);
            let _ = futures::join!(echo, fallible, note, count, sum, relay, big);
            // One more after the rest: the connection may be gone by now, or not.
            let _ = client.echo("again".into()).await;
        };
        tokio::time::timeout(HOSTILE_BOUND, all).await.expect("a client call did not end within the bound");
    };
    futures::future::join(calls, play(server_io, setup, codec, script, Side::Server)).await;
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    /// The input plays a client: it writes a hello and frames a client sends.
    Client,
    /// The input plays a server.
    Server,
}

/// Plays the input on `io` as `side`: the handshake, then the operations, then a close;
/// meanwhile reads and checks everything the real end sends.
async fn play<IO: AsyncRead + AsyncWrite>(io: IO, setup: u8, codec: Codec, mut s: Script<'_>, side: Side) {
    let (mut rd, mut wr) = tokio::io::split(io);
    // Exchange ids the real end used, for frames that answer them.
    let seen: Rc<RefCell<Vec<u64>>> = Rc::default();
    let stop = tokio::sync::Notify::new();
    // Bit 3 of this byte is the codec's (see `pair_codec`), read before the input is played.
    let limits = s.byte();
    let max_message = [MAX_MESSAGE as u32, 1024, 4096, 64][usize::from(limits % 4)];
    let abrupt = limits & 4 != 0;

    let read = async {
        let mut first = true;
        loop {
            let frame = tokio::select! {
                frame = read_frame(&mut rd) => frame,
                () = stop.notified() => break,
            };
            let Some(frame) = frame else { break };
            check_peer_frame(&frame, side, codec, first, max_message as usize, &seen);
            first = false;
        }
    };
    let write = async {
        script(&mut wr, setup, codec, max_message, &mut s, side, &seen).await;
        if abrupt {
            // Drop both halves: the reader stops too.
            stop.notify_one();
        } else {
            // Half-close, then read on until the real end closes too.
            let _ = wr.shutdown().await;
        }
    };
    futures::future::join(read, write).await;
}

/// Writes the input's side of the conversation: its handshake message, then the
/// operations, until the input ends, says to close, or the real end stops reading.
///
/// After the setup and limits bytes (read by [`play`]): 4 bytes of handshake parameters,
/// then (for an invalid handshake, setup bit 5) the handshake message as `len: u8, bytes`,
/// then operations, each `op: u8, len: u8, payload`: the payload is the operation's own
/// script (reads past it give zeros), so a mutation inside one never shifts the others.
/// `op % 8` is the operation, `op >> 3` its modifier:
///
/// | op | what |
/// |---|---|
/// | 0 | a frame whose body is the payload, repeated `2^min(op >> 3, 17)` times |
/// | 1 | the payload as raw bytes: partial frames, lying lengths |
/// | 2 | from now on write in pieces of `payload[0]` bytes (0: whole) |
/// | 3 | let `u16` milliseconds of (paused) time pass, at most [`SLEEP_BUDGET_MS`] in all |
/// | 4 | close now |
/// | 5 | well-formed frames of `side`'s kinds built from the payload (see `build`) |
/// | 6 | a batch of `1 + payload[0] % 8` of them |
/// | 7 | yield to the other end `1 + op >> 3` times |
async fn script<W: AsyncWrite + Unpin>(
    wr: &mut W,
    setup: u8,
    codec: Codec,
    max_message: u32,
    s: &mut Script<'_>,
    side: Side,
    seen: &RefCell<Vec<u64>>,
) {
    let valid_handshake = setup & 0x20 == 0;
    let mut h = Script { data: s.take(4) };
    let mut split = 0usize;
    let mut slept = 0;
    // The handshake: the input's side speaks first as a client, second as a server.
    let first = if !valid_handshake {
        let n = usize::from(s.byte());
        s.take(n).to_vec()
    } else if side == Side::Client {
        Hello {
            methods: Vec::new(),
            flags: 0,
            version: wire::PROTOCOL_VERSION,
            min_version: wire::MIN_PROTOCOL_VERSION,
            capabilities: capabilities(setup),
            stream_window: [256 * 1024, 1024, 0, u32::MAX][usize::from(h.byte() % 4)],
            codec: codec.id(),
            max_message,
            fingerprint: FuzzedClient::ID.fingerprint,
            service: FuzzedClient::ID.name.into(),
        }
        .encode()
    } else {
        Welcome {
            method_status: Vec::new(),
            codecs: 0,
            features: 0,
            methods: Vec::new(),
            version: wire::PROTOCOL_VERSION,
            capabilities: capabilities(setup),
            max_in_flight: [128, 1, 0, u32::MAX][usize::from(h.byte() % 4)],
            max_oneway: [128, 1, 0, u32::MAX][usize::from(h.byte() % 4)],
            stream_window: [256 * 1024, 1024, 0, u32::MAX][usize::from(h.byte() % 4)],
            status: if h.byte() % 8 == 7 { HandshakeStatus::Overloaded } else { HandshakeStatus::Ok },
            codec: codec.id(),
            max_message,
            fingerprint: FuzzedClient::ID.fingerprint,
            server_pid: 1,
            service: FuzzedClient::ID.name.into(),
            message: String::new(),
        }
        .encode()
    };
    if side == Side::Server {
        // Answer once the client's hello is in (the reader checks it and notes id 0).
        for _ in 0..4 {
            if !seen.borrow().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    if send(wr, &framed(&first), split).await.is_err() {
        return;
    }
    while !s.done() {
        let op = s.byte();
        let n = usize::from(s.byte());
        let payload = s.take(n);
        let mut p = Script { data: payload };
        let bytes = match op % 8 {
            0 => framed(&payload.repeat(1 << (op >> 3).min(17))),
            1 => payload.to_vec(),
            2 => {
                split = usize::from(p.byte());
                continue;
            }
            3 => {
                let ms = u64::from(p.u16()).min(SLEEP_BUDGET_MS - slept);
                slept += ms;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                continue;
            }
            4 => return,
            5 => build(&mut p, side, codec, seen).iter().flat_map(|f| framed(f)).collect(),
            6 => {
                let n = 1 + p.byte() % 8;
                let frames: Vec<Vec<u8>> = (0..n).flat_map(|_| build(&mut p, side, codec, seen)).collect();
                framed(&batch(&frames))
            }
            _ => {
                for _ in 0..=(op >> 3) {
                    tokio::task::yield_now().await;
                }
                continue;
            }
        };
        if send(wr, &bytes, split).await.is_err() {
            // The real end closed: nothing more to say.
            return;
        }
    }
}

/// Writes `bytes`, `split` at a time (0: at once), letting the other end run in between.
async fn send<W: AsyncWrite + Unpin>(wr: &mut W, bytes: &[u8], split: usize) -> std::io::Result<()> {
    if split == 0 {
        return wr.write_all(bytes).await;
    }
    for piece in bytes.chunks(split) {
        wr.write_all(piece).await?;
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// `body` behind its 4-byte big-endian length.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A `Batch` frame of `frames`.
fn batch(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out[0] = Kind::Batch.code();
    for f in frames {
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// Reads one frame (length prefix and body); `None` at the end of the stream.
async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    rd.read_exact(&mut len).await.ok()?;
    let len = u32::from_be_bytes(len) as usize;
    assert!(len <= MAX_MESSAGE, "the real end sent a {len}-byte frame, over its {MAX_MESSAGE}-byte limit");
    let mut body = vec![0u8; len];
    rd.read_exact(&mut body).await.ok()?;
    Some(body)
}

/// Checks a frame the real end sent: its handshake message first, then frames that decode
/// (the real end only sends what it can encode), within the limit the input announced
/// (`limit`, 0: none).
fn check_peer_frame(frame: &[u8], side: Side, codec: Codec, first: bool, limit: usize, seen: &RefCell<Vec<u64>>) {
    if first {
        match side {
            Side::Client => {
                let w = Welcome::decode(frame).expect("the server's first frame is a welcome");
                assert_eq!(w.service, FuzzedClient::ID.name);
            }
            Side::Server => {
                let h = Hello::decode(frame).expect("the client's first frame is a hello");
                assert_eq!(h.fingerprint, FuzzedClient::ID.fingerprint);
                seen.borrow_mut().push(0);
            }
        }
        return;
    }
    if wire::read_abort(frame).is_some() || wire::is_goodbye(frame) {
        return;
    }
    // Our own small limits (64) are below what any real end accepts (1 KiB): not checked.
    if limit >= 1024 {
        assert!(frame.len() <= limit, "a {}-byte frame sent to a peer that accepts {limit}", frame.len());
    }
    let frames = if frame.first() == Some(&Kind::Batch.code()) {
        wire::split_batch(frame).expect("the real end's batches split")
    } else {
        vec![frame]
    };
    for f in frames {
        let id = match side {
            // From the server: frames of our calls (bodies of the service's responses).
            Side::Client => Frame::<CallbackCall, FuzzedResponse>::decode(codec, f).map(|f| f.id()),
            // From the client: its calls.
            Side::Server => Frame::<FuzzedRequest, ByteBuf>::decode(codec, f).map(|f| f.id()),
        };
        let id = id.unwrap_or_else(|e| panic!("the real end sent a frame that does not decode: {e}"));
        let mut seen = seen.borrow_mut();
        if !seen.contains(&id) && seen.len() < 64 {
            seen.push(id);
        }
    }
}

/// One or two well-formed frames (two: an item in pieces) built from the input, of the
/// kinds `side` sends, now and then of the other side's kinds (a protocol violation).
fn build(s: &mut Script<'_>, side: Side, codec: Codec, seen: &RefCell<Vec<u64>>) -> Vec<Vec<u8>> {
    let pick = s.byte();
    let id = {
        let seen = seen.borrow();
        let b = s.byte();
        match (b % 4, seen.is_empty()) {
            (0, false) => seen[usize::from(b / 4) % seen.len()],
            (1, _) => u64::MAX - u64::from(b >> 2),
            _ => u64::from(b >> 2),
        }
    };
    // A value the codec refuses to carry (JSON: `Some(None)`, NaN) is a frame no peer of ours
    // can send: it is left out, as the fuzzer's bytes had never asked for it.
    let encode = |frame: Result<Vec<u8>, rpc_core::codec::EncodeError>| match frame {
        Ok(bytes) => Some(bytes),
        Err(rpc_core::codec::EncodeError::Serde(_)) if codec == Codec::Json => None,
        Err(e) => panic!("a frame we build encodes: {e}"),
    };
    let mut out = Vec::new();
    if side == Side::Client {
        type F = Frame<FuzzedRequest, ByteBuf>;
        let frame: F = match pick % 12 {
            0 | 1 => F::Call { id, timeout_us: timeout(s.byte()), body: request(s) },
            2 => F::OneWay { id, body: request(s) },
            3 => F::Cancel { id },
            4 => F::UpItem { id, body: item(s) },
            5 => F::UpEnd { id },
            6 => F::DownCredit { id, grant: grant(s.byte()) },
            7 => {
                // An item in two pieces.
                let Some(whole) = encode(F::UpItem { id, body: item(s) }.encode(codec, usize::MAX).map(|b| b.to_vec()))
                else {
                    return out;
                };
                let cut = usize::from(s.byte()) % (whole.len() + 1);
                for (part, more) in [(&whole[..cut], true), (&whole[cut..], false)] {
                    let piece = F::Piece { id, from_opener: true, more, bytes: part.to_vec().into() };
                    out.extend(encode(piece.encode(codec, usize::MAX).map(|b| b.to_vec())));
                }
                return out;
            }
            // Kinds only a callee sends.
            8 => F::Reply { id, body: ByteBuf::from(s.take(8).to_vec()) },
            9 => F::Error { id, error: ServerError::new(ServerErrorKind::BadRequest, "no") },
            10 => F::UpCredit { id, grant: grant(s.byte()) },
            _ => F::Credit { id, grant: grant(s.byte()) },
        };
        out.extend(encode(frame.encode(codec, usize::MAX).map(|b| b.to_vec())));
    } else {
        type F = Frame<CallbackCall, FuzzedResponse>;
        let frame: F = match pick % 14 {
            0 | 1 => F::Reply { id, body: response(s) },
            2 => F::Error { id, error: ServerError::new(error_kind(s.byte()), "hostile") },
            3 => F::TooLarge { id, size: u64::from(s.u32()), limit: u64::from(s.u16()) },
            4 => F::Credit { id, grant: grant(s.byte()) },
            5 => F::DownItem { id, body: response(s) },
            6 => F::DownEnd { id },
            7 => F::UpCredit { id, grant: grant(s.byte()) },
            8 => F::UpStop { id },
            9 => {
                let Some(whole) =
                    encode(F::DownItem { id, body: response(s) }.encode(codec, usize::MAX).map(|b| b.to_vec()))
                else {
                    return out;
                };
                let cut = usize::from(s.byte()) % (whole.len() + 1);
                for (part, more) in [(&whole[..cut], true), (&whole[cut..], false)] {
                    let piece = F::Piece { id, from_opener: false, more, bytes: part.to_vec().into() };
                    out.extend(encode(piece.encode(codec, usize::MAX).map(|b| b.to_vec())));
                }
                return out;
            }
            // A callback call the client never asked for.
            10 => F::Call {
                id,
                timeout_us: timeout(s.byte()),
                body: CallbackCall { parent: id, call: ByteBuf::from(s.take(6).to_vec()) },
            },
            // Kinds only a caller sends.
            11 => F::Cancel { id },
            12 => F::UpEnd { id },
            _ => F::DownCredit { id, grant: grant(s.byte()) },
        };
        out.extend(encode(frame.encode(codec, usize::MAX).map(|b| b.to_vec())));
    }
    out
}

/// A call's timeout in microseconds: none (streams), 0, 20 ms steps up to 4 s, then
/// seconds up to 55 s.
fn timeout(b: u8) -> u64 {
    match b {
        0 => 0,
        u8::MAX => u64::MAX,
        200.. => u64::from(b - 199) * 1_000_000,
        b => u64::from(b) * 20_000,
    }
}

fn grant(b: u8) -> u32 {
    [0, 1, 100, 4096, 1 << 16, 1 << 20, u32::MAX, u32::from(b)][usize::from(b % 8)]
}

fn error_kind(b: u8) -> ServerErrorKind {
    [
        ServerErrorKind::BadRequest,
        ServerErrorKind::HandlerPanicked,
        ServerErrorKind::ShuttingDown,
        ServerErrorKind::Overloaded,
        ServerErrorKind::DeadlineExceeded,
    ][usize::from(b % 5)]
}

fn tree(s: &mut Script<'_>, depth: u32) -> Tree {
    match s.byte() % 4 {
        _ if depth > 6 => Tree::Leaf(0),
        0 | 1 => Tree::Leaf(s.byte()),
        2 => Tree::Node(Box::new(tree(s, depth + 1))),
        _ => Tree::Fork((0..s.byte() % 3).map(|_| tree(s, depth + 1)).collect()),
    }
}

fn shape(s: &mut Script<'_>, depth: u32) -> Shape {
    match s.byte() % 5 {
        _ if depth > 4 => Shape::Unit,
        0 => Shape::Unit,
        1 => Shape::Newtype(i64::from(s.u32() as i32)),
        2 => Shape::Tuple(s.byte(), char::from(s.byte()), f32::from(s.u16())),
        3 => {
            Shape::Struct { name: s.string(), inner: s.byte().is_multiple_of(2).then(|| Box::new(shape(s, depth + 1))) }
        }
        _ => Shape::Many((0..s.byte() % 3).map(|_| shape(s, depth + 1)).collect()),
    }
}

fn mixed(s: &mut Script<'_>) -> Mixed {
    let flags = s.byte();
    let mut m = Mixed { text: s.string(), ..Mixed::default() };
    if flags & 1 != 0 {
        m.words = (0..s.byte() % 4).map(|_| s.string()).collect();
    }
    if flags & 2 != 0 {
        m.by_name =
            (0..s.byte() % 4).map(|_| (s.string(), vec![u64::from(s.u32()); usize::from(s.byte() % 4)])).collect();
        m.by_id =
            (0..s.byte() % 4).map(|_| (u32::from(s.u16()), s.byte().is_multiple_of(2).then(|| s.string()))).collect();
    }
    if flags & 4 != 0 {
        m.maybe = Some(s.byte().is_multiple_of(2).then(|| i128::from(s.u32())));
        m.units = vec![(); usize::from(s.byte())];
        let n = usize::from(s.byte() % 64);
        m.blob = s.take(n).to_vec();
    }
    if flags & 8 != 0 {
        m.wide = (0..s.byte() % 8).map(|i| (i % 2 == 0).then_some([u64::from(i); 8])).collect();
        m.set = (0..s.byte() % 8).map(|_| s.u16() as i16).collect();
        m.pairs = (0..s.byte() % 4).map(|_| (s.byte().is_multiple_of(2), s.u16())).collect();
    }
    if flags & 16 != 0 {
        m.shape = Some(shape(s, 0));
    }
    m
}

/// A request of any method, arguments from the input.
fn request(s: &mut Script<'_>) -> FuzzedRequest {
    match s.byte() % 13 {
        0 => FuzzedRequest::Echo { text: s.string() },
        1 => FuzzedRequest::Mixed { value: mixed(s) },
        2 => FuzzedRequest::Tree { tree: tree(s, 0) },
        3 => FuzzedRequest::Units { units: vec![(); usize::from(s.u16())] },
        4 => {
            let n = usize::from(s.byte());
            FuzzedRequest::Blob { bytes: ByteBuf::from(s.take(n).to_vec()), times: s.byte() }
        }
        5 => FuzzedRequest::Shapes {
            shapes: (0..s.byte() % 4).map(|_| shape(s, 0)).collect(),
            index: (0..s.byte() % 4).map(|_| (s.string(), s.byte().is_multiple_of(2).then(|| vec![1, -1]))).collect(),
        },
        6 => FuzzedRequest::Nap { ms: s.u16() % 20_000 },
        7 => FuzzedRequest::Fallible { x: s.byte() },
        8 => FuzzedRequest::Note { note: s.byte().is_multiple_of(2).then(|| s.string()) },
        9 => FuzzedRequest::Count { n: s.u16(), size: s.u32() },
        10 => FuzzedRequest::Sum {},
        11 => FuzzedRequest::Relay { prefix: s.string() },
        _ => item(s),
    }
}

/// A stream item of an upload method, or now and then a request in an item's place.
fn item(s: &mut Script<'_>) -> FuzzedRequest {
    match s.byte() % 5 {
        0 | 1 => FuzzedRequest::__SumItem(u64::from(s.u32())),
        2 | 3 => FuzzedRequest::__RelayItem(s.string()),
        _ => FuzzedRequest::Echo { text: s.string() },
    }
}

/// A response of any method, from the input.
fn response(s: &mut Script<'_>) -> FuzzedResponse {
    match s.byte() % 11 {
        0 => FuzzedResponse::Echo(s.string()),
        1 => FuzzedResponse::Mixed(vec![u64::from(s.byte()); usize::from(s.byte() % 8)]),
        2 => FuzzedResponse::Tree(s.u32()),
        3 => FuzzedResponse::Units(u64::from(s.u32())),
        4 => {
            let n = usize::from(s.byte());
            FuzzedResponse::Blob(ByteBuf::from(s.take(n).to_vec()))
        }
        5 => FuzzedResponse::Shapes((vec![shape(s, 0)], u64::from(s.byte()))),
        6 => FuzzedResponse::Nap(s.u16()),
        7 => FuzzedResponse::Fallible(if s.byte().is_multiple_of(2) {
            Ok(s.byte())
        } else {
            Err(FuzzError::Refused(s.byte()))
        }),
        8 => FuzzedResponse::Count(ByteBuf::from(vec![s.byte(); usize::from(s.u16() % 2048)])),
        9 => FuzzedResponse::Sum(u64::from(s.u32())),
        _ => FuzzedResponse::Relay(s.string()),
    }
}

// ---------------------------------------------------------------------------------------
// Seeds.

/// A few valid inputs per target, to start the fuzzer from (and replayed by the test):
/// `(target, name, bytes)`.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for codec in Codec::ALL {
        let c = codec.name();
        // Bit 0, and bit 7 for JSON (see `codec_of`).
        let control = match codec {
            Codec::Bincode => 0,
            Codec::Postcard => 1,
            _ => 0x81,
        };
        // server_frames: a hello, then calls of every method, in one stream and as a batch.
        let mut calls = Vec::new();
        for (i, body) in sample_requests().into_iter().enumerate() {
            let f = Frame::<FuzzedRequest, ByteBuf>::Call { id: i as u64, timeout_us: 1_000_000, body };
            calls.push(f.encode(codec, usize::MAX).expect("encodes").to_vec());
        }
        let control_frames = [
            Frame::<FuzzedRequest, ByteBuf>::Cancel { id: 1 },
            Frame::UpEnd { id: 2 },
            Frame::DownCredit { id: 3, grant: 4096 },
            Frame::OneWay { id: 4, body: FuzzedRequest::Note { note: Some("n".into()) } },
            Frame::UpItem { id: 5, body: FuzzedRequest::__SumItem(7) },
            Frame::Piece { id: 5, from_opener: true, more: false, bytes: vec![8, 1, 5].into() },
        ];
        for f in control_frames {
            calls.push(f.encode(codec, usize::MAX).expect("encodes").to_vec());
        }
        let hello = Hello {
            methods: Vec::new(),
            flags: 0,
            version: wire::PROTOCOL_VERSION,
            min_version: wire::MIN_PROTOCOL_VERSION,
            capabilities: caps::SUPPORTED,
            stream_window: 256 * 1024,
            codec: codec.id(),
            max_message: 1 << 22,
            fingerprint: FuzzedClient::ID.fingerprint,
            service: FuzzedClient::ID.name.into(),
        };
        let mut stream = vec![control];
        stream.extend(framed(&hello.encode()));
        for f in &calls {
            stream.extend(framed(f));
        }
        out.push(("server_frames", format!("calls-{c}"), stream));
        let mut batched = vec![control | (7 << 1)];
        batched.extend(framed(&batch(&calls)));
        batched.extend(framed(&wire::abort_frame("bye")));
        out.push(("server_frames", format!("batch-{c}"), batched));

        // client_frames: a welcome, then answers of every method.
        let welcome = Welcome {
            method_status: Vec::new(),
            codecs: wire::codec_bits(&Codec::ALL),
            features: 0,
            methods: Vec::new(),
            version: wire::PROTOCOL_VERSION,
            capabilities: caps::SUPPORTED,
            max_in_flight: 128,
            max_oneway: 128,
            stream_window: 256 * 1024,
            status: HandshakeStatus::Ok,
            codec: codec.id(),
            max_message: 1 << 22,
            fingerprint: FuzzedClient::ID.fingerprint,
            server_pid: 42,
            service: FuzzedClient::ID.name.into(),
            message: String::new(),
        };
        let mut answers = Vec::new();
        for (i, body) in sample_responses().into_iter().enumerate() {
            let f = Frame::<CallbackCall, FuzzedResponse>::Reply { id: i as u64, body };
            answers.push(f.encode(codec, usize::MAX).expect("encodes").to_vec());
        }
        let others = [
            Frame::<CallbackCall, FuzzedResponse>::Error {
                id: 1,
                error: ServerError::new(ServerErrorKind::Overloaded, "full"),
            },
            Frame::TooLarge { id: 2, size: 5 << 20, limit: 4 << 20 },
            Frame::Credit { id: 0, grant: 64 },
            Frame::DownItem { id: 3, body: FuzzedResponse::Count(ByteBuf::from(vec![1, 2])) },
            Frame::DownEnd { id: 3 },
            Frame::UpCredit { id: 4, grant: 1 << 18 },
            Frame::UpStop { id: 4 },
            Frame::Call { id: 9, timeout_us: 5, body: CallbackCall { parent: 1, call: ByteBuf::from(vec![0, 1]) } },
        ];
        for f in others {
            answers.push(f.encode(codec, usize::MAX).expect("encodes").to_vec());
        }
        let mut stream = vec![control];
        stream.extend(framed(&welcome.encode()));
        for f in &answers {
            stream.extend(framed(f));
        }
        out.push(("client_frames", format!("answers-{c}"), stream));
        let mut batched = vec![control | (3 << 1)];
        batched.extend(framed(&batch(&answers)));
        out.push(("client_frames", format!("batch-{c}"), batched));
    }

    // client_frames: a probe's answer (`Described`) with the methods of an introspecting
    // server, and one with as many methods as a description may hold, each as small as a
    // method can be (the most memory per byte a description can make a client spend).
    let described = |methods: Vec<rpc_core::introspect::MethodInfo>| Welcome {
        method_status: Vec::new(),
        codecs: wire::codec_bits(&Codec::ALL),
        features: wire::FEATURE_INTROSPECTION,
        methods,
        version: wire::PROTOCOL_VERSION,
        capabilities: caps::SUPPORTED,
        max_in_flight: 128,
        max_oneway: 128,
        stream_window: 256 * 1024,
        status: HandshakeStatus::Described,
        codec: Codec::Bincode.id(),
        max_message: 1 << 22,
        fingerprint: FuzzedClient::ID.fingerprint,
        server_pid: 42,
        service: FuzzedClient::ID.name.into(),
        message: String::new(),
    };
    let mut stream = vec![0];
    stream.extend(framed(&described(<FuzzedServer<Impl> as rpc_core::Service>::METHODS.to_vec()).encode()));
    out.push(("client_frames", "described".to_owned(), stream));
    let mut most = described(Vec::new()).encode();
    most.truncate(most.len() - 2);
    most.extend_from_slice(&(wire::MAX_DESCRIBED_METHODS as u16).to_le_bytes());
    most.extend(std::iter::repeat_n(0u8, wire::MAX_DESCRIBED_METHODS * 11));
    let mut stream = vec![0];
    stream.extend(framed(&most));
    out.push(("client_frames", "described-most-methods".to_owned(), stream));

    // engine_pair: scripts (see `script`): setup (codec, every capability, a valid
    // handshake), limits, 4 handshake parameters, then operations.
    let all_caps = (caps::SUPPORTED as u8) << 1;
    let op = |code: u8, payload: &[u8]| {
        let mut v = vec![code, payload.len() as u8];
        v.extend_from_slice(payload);
        v
    };
    for codec in Codec::ALL {
        let c = codec.name();
        // Setup bit 0 and limits bit 3 (see `pair_codec`).
        let (bit, limits) = match codec {
            Codec::Bincode => (0, 0),
            Codec::Postcard => (1, 0),
            _ => (1, 8),
        };
        let head = |side: u8| vec![side | bit | all_caps, limits, 0, 0, 0, 0];
        // A hostile client's calls of each method: built frames (pick 0: a call, id, a 1 s
        // timeout, the method, its arguments), then a wait and a close.
        let mut calls = head(0);
        for method in 0..13u8 {
            calls.extend(op(5, &[0, 2 + 4 * method, 50, method, 3, b'a', b'b', b'c', 1, 2, 3, 4]));
        }
        calls.extend(op(3, &[200, 0]));
        calls.extend(op(4, &[]));
        out.push(("engine_pair", format!("client-calls-{c}"), calls));
        // Streams: count(4, 10) with credit, sum with an item and its end, relay, in
        // batches, written 3 bytes at a time.
        let mut streams = head(0);
        streams.extend(op(2, &[3]));
        streams.extend(op(6, &[1, 0, 10, 255, 9, 4, 0, 10, 0, 0, 0, 6, 10, 4]));
        streams.extend(op(5, &[0, 14, 255, 10]));
        streams.extend(op(5, &[4, 14, 0, 9, 0, 0, 0]));
        streams.extend(op(5, &[5, 14]));
        streams.extend(op(5, &[0, 26, 255, 11, 1, b'>']));
        streams.extend(op(5, &[6, 26, 4]));
        streams.extend(op(5, &[4, 26, 2, 2, b'h', b'i']));
        streams.extend(op(5, &[7, 26, 2, 1, b'!']));
        streams.extend(op(5, &[5, 26]));
        streams.extend(op(3, &[100, 0]));
        out.push(("engine_pair", format!("client-streams-{c}"), streams));
        // A one-way call, a nap cancelled, then a header cut short.
        let mut garbage = head(0);
        garbage.extend(op(5, &[2, 10, 8, 0, 0]));
        garbage.extend(op(5, &[0, 14, 100, 6, 0x10, 0x27]));
        garbage.extend(op(5, &[3, 14]));
        garbage.extend(op(7, &[]));
        garbage.extend(op(0, &[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 5]));
        out.push(("engine_pair", format!("client-garbage-{c}"), garbage));
        // A hostile server: a welcome, a wait for the client's calls, then answers of
        // each kind to the ids it saw.
        let mut answers = head(0x80);
        answers.extend(op(3, &[10, 0]));
        for kind in [0u8, 5, 6, 9, 2, 3, 4] {
            for seen in [0u8, 4, 8, 12, 16, 20] {
                answers.extend(op(5, &[kind, seen, kind % 11, 3, b'x', b'y', b'z', 1, 2, 3, 4]));
            }
        }
        answers.extend(op(3, &[255, 1]));
        out.push(("engine_pair", format!("server-answers-{c}"), answers));
    }
    out
}

fn sample_requests() -> Vec<FuzzedRequest> {
    let mut s = Script { data: &[3, 1, 2, 3, 7, 1, 9, 4, 2, 2, 2, 0, 1, 1, 5, 31, 2] };
    let mut m = mixed(&mut Script { data: &[31; 64] });
    // One entry per hash map: a seed's bytes must not depend on iteration order.
    m.by_id = [(7, Some("seven".into()))].into();
    m.wide = vec![None, Some([1; 8])];
    vec![
        FuzzedRequest::Echo { text: "héllo".into() },
        FuzzedRequest::Mixed { value: m },
        FuzzedRequest::Tree { tree: tree(&mut s, 0) },
        FuzzedRequest::Units { units: vec![(); 3] },
        FuzzedRequest::Blob { bytes: ByteBuf::from(vec![0, 255, 7]), times: 2 },
        FuzzedRequest::Shapes {
            shapes: vec![Shape::Unit, Shape::Tuple(1, 'x', 0.5), Shape::Many(vec![Shape::Newtype(-3)])],
            index: [("k".to_string(), Some(vec![1, 2]))].into(),
        },
        FuzzedRequest::Nap { ms: 5 },
        FuzzedRequest::Fallible { x: 3 },
        FuzzedRequest::Note { note: None },
        FuzzedRequest::Count { n: 2, size: 3 },
        FuzzedRequest::Sum {},
        FuzzedRequest::Relay { prefix: ">".into() },
        FuzzedRequest::__RelayItem("item".into()),
    ]
}

fn sample_responses() -> Vec<FuzzedResponse> {
    vec![
        FuzzedResponse::Echo("x".into()),
        FuzzedResponse::Mixed(vec![1, 2]),
        FuzzedResponse::Tree(3),
        FuzzedResponse::Units(4),
        FuzzedResponse::Blob(ByteBuf::from(vec![5; 5])),
        FuzzedResponse::Shapes((vec![Shape::Struct { name: "s".into(), inner: None }], 1)),
        FuzzedResponse::Nap(6),
        FuzzedResponse::Fallible(Ok(8)),
        FuzzedResponse::Fallible(Err(FuzzError::Refused(9))),
        FuzzedResponse::Fallible(Err(FuzzError::Rpc(RpcError::Cancelled))),
        FuzzedResponse::Count(ByteBuf::from(vec![0; 3])),
        FuzzedResponse::Sum(10),
        FuzzedResponse::Relay(">a".into()),
    ]
}

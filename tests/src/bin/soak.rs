//! Soak: a random mix of everything [`Probe`](pipe_rpc_tests::Probe) does, for a set time,
//! against a server in this process over real pipes, with a hostile peer writing corrupted
//! frames beside it. Bench-style, not part of CI.
//!
//! ```text
//! cargo run --release -p pipe-rpc-tests --bin soak -- [--secs N] [--clients K] [--seed S]
//! ```
//!
//! Defaults: 60 s, 8 clients, a seed from the clock (printed; the mix of operations each
//! client runs is deterministic given the seed, their timing is not). Exits 0 if it passed,
//! 1 if anything failed, 2 on bad arguments, 3 if the run hung past its global deadline.
//!
//! - The server (`ProbeServer` over `ProbeImpl`) runs on its own 2-worker runtime, so its
//!   alive tasks can be read; the clients run on a second 2-worker runtime and connect
//!   through the OS like any other process would.
//! - Each of the K client tasks runs sessions: it connects, runs 10 to 400 operations with 1
//!   to 4 in flight at once (plain calls, application errors, payloads up to 1 MiB, one-way
//!   calls, streams both ways read fully or dropped early, callbacks, calls cancelled by
//!   dropping them, deadlines that expire, handler panics, oversized messages), then ends
//!   the session: gracefully (waits for its calls, flushes its one-way calls, drops the
//!   client) or abruptly (starts long calls and closes the client under them). Then it
//!   connects again.
//! - A hostile task opens raw connections one after another: garbage after a valid
//!   handshake, a garbage call body, an oversized length prefix, a truncated frame then
//!   close, a reused call id, decode bombs, a garbage hello, a silent connection, a call
//!   left running by a vanished peer. Those may end any way; they are counted separately.
//! - Every operation of a client gets a sequence id and exactly one recorded outcome (ok,
//!   app error, deadline exceeded, cancelled, disconnected, handler panicked, too large,
//!   other with its text); an operation with no outcome within 30 s is recorded as hung.
//!   Unexpected outcomes (a wrong echo, `disconnected` on a client that was not being
//!   closed, ...) are failures. At the end every id must have exactly one outcome.
//! - After the run: every one-way `note` of a gracefully ended session arrived exactly once,
//!   and no `sleep_ms`-style handler is still running on the server.
//! - Resources (Linux): RSS, open descriptors and the server runtime's alive tasks at the
//!   end of the warm-up (10% of the run, at least 5 s; the clients pause for it, idle and
//!   connected) and at the end (every client dropped, then a settle wait of at most 5 s);
//!   growth over 10% plus a small slack (2 MiB, 4 descriptors, 4 tasks) is a failure, as are
//!   descriptors or server tasks at the end above those before the first client. RSS is
//!   read after `malloc_trim`, with glibc's thresholds fixed at start, so that it follows
//!   what is allocated rather than the largest burst so far, and less the soak's own ledger
//!   (one byte per operation).
//! - Lag monitors (a 10 ms timer on each runtime) log stalls: an answer taken past its
//!   caller's deadline is a failure unless a stall long enough to explain it was seen.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use pipe_rpc_tests::{
    ProbeClient, ProbeError, ProbeImpl, ProbeRequest, ProbeResponse, ProbeServer, Ticks, TicksServer, Tree,
    client_config, pattern_byte, proc_status_kib,
};
use rpc_core::codec::Codec;
use rpc_core::pipe::{ConnectOptions, PipeStream};
use rpc_core::wire::{Frame, HandshakeStatus, Hello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Welcome, caps};
use rpc_core::{PipeName, RpcError, RpcStream, Server, ServerErrorKind, TransportError};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest any one operation may take before it is recorded as hung.
const OP_LIMIT: Duration = Duration::from_secs(30);
/// The longest the clients may take to finish after the run ends.
const WIND_DOWN: Duration = Duration::from_secs(60);
/// How long the end waits at most for the counts to stop falling.
const SETTLE_MAX: Duration = Duration::from_secs(5);
/// Growth allowed between the two resource snapshots: 10% plus these.
const RSS_SLACK_KIB: u64 = 2 * 1024;
const FD_SLACK: u64 = 4;
const TASK_SLACK: u64 = 4;
/// The `sleep_ms` tag of the hostile peer's calls.
const HOSTILE_TAG: u64 = 900_001;
/// How much longer than its caller's limit a handler meant to outlive it runs: a machine
/// shared with other work can stall a process for tens of milliseconds.
const MARGIN_MS: u64 = 200;
/// The lag monitors' timer, and the lateness logged as a stall.
const LAG_TICK_MS: u64 = 10;
const STALL_LOGGED: Duration = Duration::from_millis(20);
/// Failures kept with their text (all are counted).
const FAILURES_KEPT: usize = 200;

// ---------------------------------------------------------------------------------------
// Arguments and randomness
// ---------------------------------------------------------------------------------------

struct Args {
    secs: u64,
    clients: usize,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64);
    let mut args = Args { secs: 60, clients: 8, seed: clock.unwrap_or(1) };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: u64 = value.parse().map_err(|e| format!("{flag} {value}: {e}"))?;
        match flag.as_str() {
            "--secs" if n >= 2 => args.secs = n,
            "--clients" if (1..=48).contains(&n) => args.clients = n as usize,
            "--seed" => args.seed = n,
            "--secs" => return Err("--secs: at least 2".into()),
            "--clients" => return Err("--clients: 1 to 48 (the server admits 64 connections per user)".into()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// xorshift64, seeded through splitmix64.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(z.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------------------
// Outcomes and the ledger
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Class {
    Ok = 1,
    AppError,
    Deadline,
    Cancelled,
    Disconnected,
    Panicked,
    TooLarge,
    Other,
}

const CLASSES: [Class; 8] = [
    Class::Ok,
    Class::AppError,
    Class::Deadline,
    Class::Cancelled,
    Class::Disconnected,
    Class::Panicked,
    Class::TooLarge,
    Class::Other,
];

impl Class {
    fn label(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::AppError => "app error",
            Class::Deadline => "deadline exceeded",
            Class::Cancelled => "cancelled",
            Class::Disconnected => "disconnected",
            Class::Panicked => "handler panicked",
            Class::TooLarge => "too large",
            Class::Other => "other",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::AppError => "app",
            Class::Deadline => "deadline",
            Class::Cancelled => "cancelled",
            Class::Disconnected => "disconn",
            Class::Panicked => "panicked",
            Class::TooLarge => "too-large",
            Class::Other => "other",
        }
    }

    fn from_code(code: u8) -> Option<Class> {
        CLASSES.iter().copied().find(|c| *c as u8 == code)
    }
}

/// What one operation ended with, and why that was wrong (if it was).
struct Res {
    class: Class,
    /// The error text of an `Other` outcome.
    other: Option<String>,
    problem: Option<String>,
}

impl Res {
    fn ok() -> Res {
        Res { class: Class::Ok, other: None, problem: None }
    }

    fn is(class: Class) -> Res {
        Res { class, other: None, problem: None }
    }

    fn wrong(class: Class, problem: impl Into<String>) -> Res {
        Res { class, other: None, problem: Some(problem.into()) }
    }

    fn hung() -> Res {
        Res {
            class: Class::Other,
            other: Some(format!("hung: no outcome within {} s", OP_LIMIT.as_secs())),
            problem: Some(format!("no outcome within {} s", OP_LIMIT.as_secs())),
        }
    }

    /// An error: expected if its class is among `allowed`.
    fn err(e: &RpcError, allowed: &[Class]) -> Res {
        let class = classify(e);
        let other = (class == Class::Other).then(|| normalize(&e.to_string()));
        let problem = (!allowed.contains(&class)).then(|| format!("unexpected error: {e}"));
        Res { class, other, problem }
    }

    fn probe_err(e: &ProbeError, allowed: &[Class]) -> Res {
        match e {
            ProbeError::Rpc(e) => Res::err(e, allowed),
            _ if allowed.contains(&Class::AppError) => Res::is(Class::AppError),
            other => Res::wrong(Class::AppError, format!("unexpected application error: {other}")),
        }
    }
}

fn classify(e: &RpcError) -> Class {
    match e {
        RpcError::DeadlineExceeded { .. } => Class::Deadline,
        RpcError::Cancelled => Class::Cancelled,
        RpcError::Transport(TransportError::Disconnected { .. }) => Class::Disconnected,
        RpcError::Transport(TransportError::MessageTooLarge { .. }) => Class::TooLarge,
        RpcError::Server(s) => match s.kind {
            ServerErrorKind::HandlerPanicked => Class::Panicked,
            ServerErrorKind::DeadlineExceeded => Class::Deadline,
            ServerErrorKind::ResponseTooLarge => Class::TooLarge,
            _ => Class::Other,
        },
        _ => Class::Other,
    }
}

/// Words with a digit in them (sizes, ids, pids, hex bytes) become `N`, bracketed lists
/// `[..]`, and long texts are cut, so that texts group.
fn normalize(s: &str) -> String {
    let mut out = String::new();
    let mut word = String::new();
    let mut depth = 0usize;
    let flush = |word: &mut String, out: &mut String| {
        if word.chars().any(|c| c.is_ascii_digit()) {
            out.push('N');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for ch in s.chars() {
        match ch {
            '[' => {
                flush(&mut word, &mut out);
                if depth == 0 {
                    out.push_str("[..]");
                }
                depth += 1;
            }
            ']' => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            c if c.is_ascii_alphanumeric() => word.push(c),
            c => {
                flush(&mut word, &mut out);
                out.push(c);
            }
        }
    }
    flush(&mut word, &mut out);
    if out.chars().count() > 110 {
        out = out.chars().take(110).collect::<String>() + "...";
    }
    out
}

/// Every operation's outcome, by sequence id.
#[derive(Default)]
struct Ledger {
    book: Mutex<Book>,
}

#[derive(Default)]
struct Book {
    /// Per id (the index): 0 while pending, else the outcome's `Class` code. One byte per
    /// operation, so the ledger's own growth (reported) stays small next to the server's.
    outcomes: Vec<u8>,
    pending: HashMap<u64, (&'static str, Instant)>,
    counts: BTreeMap<Class, u64>,
    by_kind: BTreeMap<&'static str, BTreeMap<Class, u64>>,
    others: BTreeMap<String, u64>,
    failures: Vec<String>,
    failure_count: u64,
    recorded_twice: u64,
}

impl Ledger {
    fn begin(&self, kind: &'static str) -> u64 {
        let mut b = self.book.lock().unwrap();
        let id = b.outcomes.len() as u64;
        b.outcomes.push(0);
        b.pending.insert(id, (kind, Instant::now()));
        id
    }

    fn finish(&self, id: u64, kind: &'static str, res: Res) {
        let mut b = self.book.lock().unwrap();
        let slot = &mut b.outcomes[id as usize];
        if *slot != 0 {
            b.recorded_twice += 1;
            b.fail(format!("#{id} {kind}: a second outcome ({})", res.class.label()));
            return;
        }
        *slot = res.class as u8;
        b.pending.remove(&id);
        *b.counts.entry(res.class).or_default() += 1;
        *b.by_kind.entry(kind).or_default().entry(res.class).or_default() += 1;
        if let Some(text) = res.other {
            *b.others.entry(text).or_default() += 1;
        }
        if let Some(problem) = res.problem {
            b.fail(format!("#{id} {kind}: {} ({problem})", res.class.label()));
        }
    }

    /// (done, in flight, counts by class, failures)
    fn progress(&self) -> (u64, usize, BTreeMap<Class, u64>, u64) {
        let b = self.book.lock().unwrap();
        (b.counts.values().sum(), b.pending.len(), b.counts.clone(), b.failure_count)
    }

    fn bytes(&self) -> u64 {
        self.book.lock().unwrap().outcomes.capacity() as u64
    }
}

impl Book {
    fn fail(&mut self, why: String) {
        self.failure_count += 1;
        if self.failures.len() < FAILURES_KEPT {
            self.failures.push(why);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Operations of the well-behaved clients
// ---------------------------------------------------------------------------------------

/// The `Probe` tags one client's handlers count under.
#[derive(Clone, Copy)]
struct Tags {
    sleep: u64,
    note: u64,
    spawned: u64,
    blocking: u64,
}

impl Tags {
    fn of_client(idx: usize) -> Tags {
        let base = 1000 * (idx as u64 + 1);
        Tags { sleep: base + 1, note: base + 2, spawned: base + 3, blocking: base + 4 }
    }
}

/// The client's side of `run_ticks`.
struct Tens;

impl Ticks for Tens {
    async fn tick(&self, n: u64) -> u64 {
        n * 10
    }
}

/// One operation, its parameters drawn from the client's generator.
enum Plan {
    Echo(String),
    Divide(i64, i64),
    MakeBytes(u64),
    EchoBytes(usize, u8),
    Sleep(u64),
    Note(u64),
    Count {
        from: u64,
        n: u64,
        delay: u64,
        keep: Option<u64>,
    },
    Blobs {
        n: u64,
        size: u64,
        keep: Option<u64>,
    },
    Sum(Vec<u64>),
    Upload(Vec<usize>),
    Double {
        items: Vec<u64>,
        keep: Option<u64>,
    },
    DropCancel {
        wait: u64,
        sleep: u64,
        racy: bool,
    },
    Deadline {
        timeout: u64,
        sleep: u64,
    },
    StreamDeadline {
        timeout: u64,
    },
    SpawnedDeadline {
        timeout: u64,
        sleep: u64,
    },
    Blocking {
        ms: u64,
        timeout: Option<u64>,
    },
    Boom,
    Callback(u64),
    TooLarge {
        request: bool,
    },
    /// Started just before an abrupt restart, to be cut by it.
    Long {
        stream: bool,
    },
}

/// A payload size: mostly small, a quarter of them up to `max`.
fn size(rng: &mut Rng, max: u64) -> u64 {
    if rng.chance(25) { rng.range(0, max) } else { rng.range(0, 4096) }
}

impl Plan {
    fn choose(rng: &mut Rng) -> Plan {
        let keep = |rng: &mut Rng, n: u64| (n > 1 && rng.chance(30)).then(|| rng.range(0, n - 1));
        match rng.range(0, 99) {
            0..=13 => {
                let len = rng.range(0, 200) as usize;
                let alphabet: Vec<char> = "abcxyz019 ✓ünï-_/\"\\\n".chars().collect();
                Plan::Echo((0..len).map(|_| alphabet[rng.range(0, alphabet.len() as u64 - 1) as usize]).collect())
            }
            14..=21 => {
                let a = if rng.chance(5) { i64::MIN } else { rng.next() as i64 >> rng.range(0, 62) };
                let b = match rng.range(0, 9) {
                    0..=1 => 0,
                    2 => -1,
                    _ => (rng.next() as i64 >> rng.range(1, 62)) | 1,
                };
                Plan::Divide(a, b)
            }
            22..=27 => Plan::MakeBytes(size(rng, 1 << 20)),
            28..=30 => Plan::EchoBytes(size(rng, 256 << 10) as usize, rng.next() as u8),
            31..=33 => Plan::Sleep(rng.range(0, 20)),
            34..=36 => Plan::Note(if rng.chance(20) { rng.range(1, 20) } else { 0 }),
            37..=42 => {
                let slow = rng.chance(15);
                let n = if slow { rng.range(1, 30) } else { rng.range(0, 500) };
                Plan::Count { from: rng.range(0, 1 << 40), n, delay: u64::from(slow), keep: keep(rng, n) }
            }
            43..=46 => {
                let n = rng.range(1, 8);
                Plan::Blobs { n, size: size(rng, 256 << 10), keep: keep(rng, n) }
            }
            47..=51 => {
                let n = rng.range(0, 2000);
                Plan::Sum((0..n).map(|_| rng.next()).collect())
            }
            52..=54 => {
                let n = rng.range(0, 8);
                Plan::Upload((0..n).map(|_| size(rng, 200 << 10) as usize).collect())
            }
            55..=59 => {
                let n = rng.range(0, 200);
                Plan::Double { items: (0..n).map(|_| rng.next() >> 2).collect(), keep: keep(rng, n) }
            }
            60..=64 => {
                let wait = rng.range(1, 30);
                Plan::DropCancel { wait, sleep: wait + rng.range(MARGIN_MS, 3 * MARGIN_MS), racy: false }
            }
            65..=66 => {
                let wait = rng.range(1, 20);
                Plan::DropCancel { wait, sleep: (wait + rng.range(0, 4)).saturating_sub(2), racy: true }
            }
            67..=72 => {
                let timeout = rng.range(5, 50);
                Plan::Deadline { timeout, sleep: timeout + rng.range(MARGIN_MS, 3 * MARGIN_MS) }
            }
            73..=75 => Plan::StreamDeadline { timeout: rng.range(10, 200) },
            76..=77 => {
                let timeout = rng.range(5, 50);
                Plan::SpawnedDeadline { timeout, sleep: timeout + rng.range(MARGIN_MS, 5000) }
            }
            78..=79 => {
                if rng.chance(50) {
                    Plan::Blocking { ms: rng.range(0, 3), timeout: None }
                } else {
                    let timeout = rng.range(2, 10);
                    Plan::Blocking { ms: timeout + rng.range(MARGIN_MS, MARGIN_MS + 50), timeout: Some(timeout) }
                }
            }
            80..=83 => Plan::Boom,
            84..=88 => Plan::Callback(rng.range(0, 10)),
            89 => Plan::TooLarge { request: rng.chance(50) },
            _ => Plan::Echo(format!("short {}", rng.next())),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Plan::Echo(_) => "echo_string",
            Plan::Divide(..) => "divide",
            Plan::MakeBytes(_) => "make_bytes",
            Plan::EchoBytes(..) => "echo_bytes",
            Plan::Sleep(_) => "sleep_ms",
            Plan::Note(_) => "note (one-way)",
            Plan::Count { keep: None, .. } => "count stream",
            Plan::Count { .. } => "count stream, dropped early",
            Plan::Blobs { keep: None, .. } => "blobs stream",
            Plan::Blobs { .. } => "blobs stream, dropped early",
            Plan::Sum(_) => "sum (client stream)",
            Plan::Upload(_) => "upload_check (client stream)",
            Plan::Double { keep: None, .. } => "double (both ways)",
            Plan::Double { .. } => "double, dropped early",
            Plan::DropCancel { racy: false, .. } => "cancel by dropping",
            Plan::DropCancel { .. } => "cancel racing the reply",
            Plan::Deadline { .. } => "deadline expires",
            Plan::StreamDeadline { .. } => "stream deadline expires",
            Plan::SpawnedDeadline { .. } => "spawned_sleep, deadline",
            Plan::Blocking { timeout: None, .. } => "blocking_sleep",
            Plan::Blocking { .. } => "blocking_sleep, deadline",
            Plan::Boom => "boom (handler panic)",
            Plan::Callback(_) => "run_ticks (callbacks)",
            Plan::TooLarge { request: true } => "oversized request",
            Plan::TooLarge { request: false } => "oversized response",
            Plan::Long { stream: false } => "long call, cut by restart",
            Plan::Long { stream: true } => "long stream, cut by restart",
        }
    }

    async fn run(self, id: u64, c: ProbeClient, tags: Tags, notes: Arc<Mutex<Vec<u64>>>) -> Res {
        match self {
            Plan::Echo(s) => match c.echo_string(s.clone()).await {
                Ok(back) if back == s => Res::ok(),
                Ok(back) => Res::wrong(Class::Ok, format!("sent {s:?}, got back {back:?}")),
                Err(e) => Res::err(&e, &[]),
            },
            Plan::Divide(a, b) => {
                let want = if b == 0 {
                    Err(ProbeError::DivideByZero { dividend: a })
                } else {
                    a.checked_div(b).ok_or(ProbeError::Overflow)
                };
                match (c.divide(a, b).await, want) {
                    (Ok(got), Ok(want)) if got == want => Res::ok(),
                    (Err(ProbeError::Rpc(e)), _) => Res::err(&e, &[]),
                    (Err(got), Err(want)) if got == want => Res::is(Class::AppError),
                    (Ok(got), want) => Res::wrong(Class::Ok, format!("{a} / {b}: got {got}, want {want:?}")),
                    (Err(got), want) => Res::wrong(Class::AppError, format!("{a} / {b}: got {got:?}, want {want:?}")),
                }
            }
            Plan::MakeBytes(n) => match c.make_bytes(n).await {
                Ok(b) if b.len() as u64 == n && b.iter().enumerate().all(|(i, &x)| x == pattern_byte(i)) => Res::ok(),
                Ok(b) => Res::wrong(Class::Ok, format!("asked for {n} pattern bytes, got {} that differ", b.len())),
                Err(e) => Res::err(&e, &[]),
            },
            Plan::EchoBytes(len, fill) => {
                let sent: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(fill)).collect();
                match c.echo_bytes(ByteBuf::from(sent.clone())).await {
                    Ok(back) if *back == sent => Res::ok(),
                    Ok(back) => Res::wrong(Class::Ok, format!("sent {len} bytes, got back {} that differ", back.len())),
                    Err(e) => Res::err(&e, &[]),
                }
            }
            Plan::Sleep(ms) => expect_value(c.sleep_ms(tags.sleep, ms).await, tags.sleep),
            Plan::Note(ms) => match c.note(tags.note, id, ms).await {
                Ok(()) => {
                    notes.lock().unwrap().push(id);
                    Res::ok()
                }
                Err(e) => Res::err(&e, &[]),
            },
            Plan::Count { from, n, delay, keep } => {
                let stream = match c.count(from, n, delay).await {
                    Ok(s) => s,
                    Err(e) => return Res::err(&e, &[]),
                };
                read_stream(stream, n, keep, |i, v: &u64| *v == from + i)
                    .await
                    .unwrap_or_else(|why| Res::wrong(Class::Ok, format!("count({from}, {n}): {why}")))
            }
            Plan::Blobs { n, size, keep } => {
                let stream = match c.blobs(n, size).await {
                    Ok(s) => s,
                    Err(e) => return Res::err(&e, &[]),
                };
                let check = |i: u64, b: &ByteBuf| {
                    let offset = (i * size) as usize;
                    b.len() as u64 == size && b.iter().enumerate().all(|(j, &x)| x == pattern_byte(offset + j))
                };
                read_stream(stream, n, keep, check)
                    .await
                    .unwrap_or_else(|why| Res::wrong(Class::Ok, format!("blobs({n}, {size}): {why}")))
            }
            Plan::Sum(items) => {
                let want = items.iter().fold(0u64, |a, &v| a.wrapping_add(v));
                expect_value(c.sum(RpcStream::iter(items)).await, want)
            }
            Plan::Upload(sizes) => {
                let total: usize = sizes.iter().sum();
                let mut offset = 0usize;
                let chunks = sizes.into_iter().map(move |n| {
                    let v: Vec<u8> = (offset..offset + n).map(pattern_byte).collect();
                    offset += n;
                    ByteBuf::from(v)
                });
                expect_value(c.upload_check(RpcStream::iter(chunks)).await, (total as u64, true))
            }
            Plan::Double { items, keep } => run_double(&c, items, keep).await,
            Plan::DropCancel { wait, sleep, racy } => {
                let slow = c.with_timeout(Duration::from_secs(60));
                let call = slow.sleep_ms(tags.sleep, sleep);
                let began = Instant::now();
                match tokio::time::timeout(Duration::from_millis(wait), call).await {
                    Err(_) => Res::is(Class::Cancelled),
                    Ok(Ok(tag)) if racy && tag == tags.sleep => Res::ok(),
                    Ok(Ok(_)) => past_deadline(began, wait, sleep, "a sleep_ms whose caller gave up"),
                    Ok(Err(e)) => Res::err(&e, &[]),
                }
            }
            Plan::Deadline { timeout, sleep } => {
                let began = Instant::now();
                match c.with_timeout(Duration::from_millis(timeout)).sleep_ms(tags.sleep, sleep).await {
                    Ok(_) => past_deadline(began, timeout, sleep, "a sleep_ms"),
                    Err(e) => Res::err(&e, &[Class::Deadline]),
                }
            }
            Plan::StreamDeadline { timeout } => {
                let stream = match c.with_timeout(Duration::from_millis(timeout)).count(0, 1_000_000, 1).await {
                    Ok(s) => s,
                    Err(e) => return Res::err(&e, &[Class::Deadline]),
                };
                match read_stream(stream, 1_000_000, None, |i, v: &u64| *v == i).await {
                    Ok(r) if r.class == Class::Ok => Res::wrong(Class::Ok, "a 1000 s stream ended within its deadline"),
                    Ok(mut r) => {
                        if r.class == Class::Deadline {
                            r.problem = None;
                        }
                        r
                    }
                    Err(why) => Res::wrong(Class::Ok, why),
                }
            }
            Plan::SpawnedDeadline { timeout, sleep } => {
                let began = Instant::now();
                match c.with_timeout(Duration::from_millis(timeout)).spawned_sleep(tags.spawned, sleep).await {
                    Ok(_) => past_deadline(began, timeout, sleep, "a spawned_sleep"),
                    Err(e) => Res::err(&e, &[Class::Deadline]),
                }
            }
            Plan::Blocking { ms, timeout: None } => {
                expect_value(c.blocking_sleep(tags.blocking, ms).await, tags.blocking)
            }
            Plan::Blocking { ms, timeout: Some(t) } => {
                let began = Instant::now();
                match c.with_timeout(Duration::from_millis(t)).blocking_sleep(tags.blocking, ms).await {
                    Ok(_) => past_deadline(began, t, ms, "a blocking_sleep"),
                    Err(e) => Res::err(&e, &[Class::Deadline]),
                }
            }
            Plan::Boom => match c.boom(format!("soak-boom #{id}")).await {
                Ok(v) => Res::wrong(Class::Ok, format!("boom answered {v}")),
                Err(e) => Res::err(&e, &[Class::Panicked]),
            },
            Plan::Callback(n) => match c.run_ticks(n, TicksServer::new(Tens)).await {
                Ok(v) if v == (0..n).map(|i| i * 10).collect::<Vec<_>>() => Res::ok(),
                Ok(v) => Res::wrong(Class::Ok, format!("run_ticks({n}) answered {v:?}")),
                Err(e) => Res::probe_err(&e, &[]),
            },
            Plan::TooLarge { request: true } => match c.echo_bytes(ByteBuf::from(vec![0u8; 5 << 20])).await {
                Ok(_) => Res::wrong(Class::Ok, "a 5 MiB request went through a 4 MiB limit"),
                Err(e) => Res::err(&e, &[Class::TooLarge]),
            },
            Plan::TooLarge { request: false } => match c.make_bytes(5 << 20).await {
                Ok(_) => Res::wrong(Class::Ok, "a 5 MiB response came through a 4 MiB limit"),
                Err(e) => Res::err(&e, &[Class::TooLarge]),
            },
            Plan::Long { stream: false } => {
                expect_value(c.with_timeout(Duration::from_secs(60)).sleep_ms(tags.sleep, 3000).await, tags.sleep)
            }
            Plan::Long { stream: true } => match c.count(0, 3000, 1).await {
                Ok(s) => read_stream(s, 3000, None, |i, v: &u64| *v == i)
                    .await
                    .unwrap_or_else(|why| Res::wrong(Class::Ok, format!("count(0, 3000, 1): {why}"))),
                Err(e) => Res::err(&e, &[]),
            },
        }
    }
}

/// A handler that takes `work` ms answered a call whose caller gives up after `limit` ms.
/// It can only happen if the runtimes did not run for about `work - limit` ms (both the
/// answer and the deadline were then due at once, and the answer was taken): expected if
/// the lag monitors saw such a stall during the call, a failure otherwise.
fn past_deadline(began: Instant, limit: u64, work: u64, what: &str) -> Res {
    let took = began.elapsed();
    let stall = stall_between(began, Instant::now());
    let needed = Duration::from_millis(work - limit).saturating_sub(Duration::from_millis(2 * LAG_TICK_MS));
    if stall >= needed {
        LATE_BUT_STALLED.fetch_add(1, Ordering::Relaxed);
        return Res::ok();
    }
    Res::wrong(
        Class::Ok,
        format!(
            "{what} of {work} ms answered after {} ms, past the caller's {limit} ms, with no stall of the \
             runtimes to explain it (longest during the call: {} ms)",
            took.as_millis(),
            stall.as_millis()
        ),
    )
}

fn expect_value<T: PartialEq + std::fmt::Debug>(got: Result<T, RpcError>, want: T) -> Res {
    match got {
        Ok(v) if v == want => Res::ok(),
        Ok(v) => Res::wrong(Class::Ok, format!("answered {v:?}, want {want:?}")),
        Err(e) => Res::err(&e, &[]),
    }
}

/// Reads `n` items checking each with `check(index, item)`, then the end; or, with `keep`,
/// reads that many and drops the stream (a cancel). `Err` says what was wrong with the
/// items; an error item ends the read as that error (unexpected: callers may allow it).
async fn read_stream<T>(
    mut stream: RpcStream<T>,
    n: u64,
    keep: Option<u64>,
    check: impl Fn(u64, &T) -> bool,
) -> Result<Res, String> {
    let want = keep.unwrap_or(n);
    for i in 0..want {
        match stream.next().await {
            Some(Ok(v)) if check(i, &v) => {}
            Some(Ok(_)) => return Err(format!("item {i} is wrong")),
            Some(Err(e)) => return Ok(Res::err(&e, &[])),
            None => return Err(format!("ended after {i} of {n} items")),
        }
    }
    if keep.is_some() {
        drop(stream);
        return Ok(Res::is(Class::Cancelled));
    }
    match stream.next().await {
        None => Ok(Res::ok()),
        Some(Ok(_)) => Err(format!("more than {n} items")),
        Some(Err(e)) => Ok(Res::err(&e, &[])),
    }
}

async fn run_double(c: &ProbeClient, items: Vec<u64>, keep: Option<u64>) -> Res {
    let (tx, input) = RpcStream::channel(4);
    let output = match c.double(input).await {
        Ok(s) => s,
        Err(e) => return Res::err(&e, &[]),
    };
    let n = items.len() as u64;
    let want: Vec<u64> = items.iter().map(|v| v * 2).collect();
    let send = async move {
        for v in items {
            if tx.send(v).await.is_err() {
                break;
            }
        }
    };
    let recv = read_stream(output, n, keep, |i, v: &u64| *v == want[i as usize]);
    tokio::pin!(send, recv);
    let mut sent = false;
    let got = loop {
        tokio::select! {
            r = &mut recv => break r,
            () = &mut send, if !sent => sent = true,
        }
    };
    got.unwrap_or_else(|why| Res::wrong(Class::Ok, format!("double of {n} items: {why}")))
}

// ---------------------------------------------------------------------------------------
// The well-behaved clients
// ---------------------------------------------------------------------------------------

struct Shared {
    name: PipeName,
    ledger: Ledger,
    stop: AtomicBool,
    hostile_done: AtomicU64,
    /// Set for the start snapshot: clients and the hostile task finish what they have in
    /// flight and wait (connected) until it is cleared.
    pause: tokio::sync::watch::Sender<bool>,
    /// How many of them are waiting.
    paused: AtomicU64,
}

impl Shared {
    fn pausing(&self) -> bool {
        *self.pause.borrow()
    }

    async fn wait_while_paused(&self) {
        let mut rx = self.pause.subscribe();
        self.paused.fetch_add(1, Ordering::SeqCst);
        while *rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                break;
            }
        }
        self.paused.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a client task hands back for the checks at the end.
struct ClientReport {
    tags: Tags,
    /// Ids of every `note` it made.
    notes_attempted: HashSet<u64>,
    /// Ids of the notes made in sessions that ended with a successful flush: these must
    /// have reached the server.
    notes_required: Vec<u64>,
    sessions: u64,
    abrupt: u64,
}

async fn run_op(
    shared: Arc<Shared>,
    closing: Arc<AtomicBool>,
    id: u64,
    plan: Plan,
    c: ProbeClient,
    tags: Tags,
    notes: Arc<Mutex<Vec<u64>>>,
) {
    let kind = plan.kind();
    let mut res = match tokio::time::timeout(OP_LIMIT, plan.run(id, c, tags, notes)).await {
        Ok(r) => r,
        Err(_) => Res::hung(),
    };
    // A call in flight when its client was closed may end cancelled or disconnected.
    if matches!(res.class, Class::Cancelled | Class::Disconnected) && closing.load(Ordering::SeqCst) {
        res.problem = None;
    }
    shared.ledger.finish(id, kind, res);
}

async fn client_task(idx: usize, seed: u64, shared: Arc<Shared>) -> ClientReport {
    let mut rng = Rng::new(seed ^ (idx as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F));
    let tags = Tags::of_client(idx);
    let mut report =
        ClientReport { tags, notes_attempted: HashSet::new(), notes_required: Vec::new(), sessions: 0, abrupt: 0 };
    let stopping = || shared.stop.load(Ordering::SeqCst);
    while !stopping() {
        let id = shared.ledger.begin("connect");
        let connect = ProbeClient::connect_with(shared.name.clone(), client_config());
        let client = match tokio::time::timeout(OP_LIMIT, connect).await {
            Ok(Ok(c)) => {
                shared.ledger.finish(id, "connect", Res::ok());
                c
            }
            Ok(Err(e)) => {
                shared.ledger.finish(id, "connect", Res::err(&e, &[]));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(_) => {
                shared.ledger.finish(id, "connect", Res::hung());
                continue;
            }
        };
        report.sessions += 1;
        let closing = Arc::new(AtomicBool::new(false));
        let notes = Arc::new(Mutex::new(Vec::new()));
        let ops = rng.range(10, 400);
        let width = rng.range(1, 4) as usize;
        let mut inflight: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
        let mut started = 0;
        let spawn_op =
            |plan: Plan, inflight: &mut FuturesUnordered<BoxFuture<'static, ()>>, report: &mut ClientReport| {
                let id = shared.ledger.begin(plan.kind());
                if matches!(plan, Plan::Note(_)) {
                    report.notes_attempted.insert(id);
                }
                let op = run_op(shared.clone(), closing.clone(), id, plan, client.clone(), tags, notes.clone());
                inflight.push(op.boxed());
            };
        loop {
            while inflight.len() < width && started < ops && !stopping() && !shared.pausing() {
                spawn_op(Plan::choose(&mut rng), &mut inflight, &mut report);
                started += 1;
            }
            if inflight.is_empty() {
                if started < ops && !stopping() && shared.pausing() {
                    shared.wait_while_paused().await;
                    continue;
                }
                break;
            }
            inflight.next().await;
        }
        let abrupt = !stopping() && rng.chance(35);
        if abrupt {
            // Long calls and a few others, then the client closes under them.
            report.abrupt += 1;
            for _ in 0..rng.range(1, 3) {
                spawn_op(Plan::Long { stream: rng.chance(50) }, &mut inflight, &mut report);
            }
            for _ in 0..rng.range(0, 3) {
                spawn_op(Plan::choose(&mut rng), &mut inflight, &mut report);
            }
            let wait = tokio::time::sleep(Duration::from_millis(rng.range(1, 40)));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    Some(()) = inflight.next() => {}
                }
            }
            closing.store(true, Ordering::SeqCst);
            client.channel().close();
        }
        while inflight.next().await.is_some() {}
        if !abrupt {
            let id = shared.ledger.begin("flush one-way calls");
            match tokio::time::timeout(OP_LIMIT, client.channel().flush()).await {
                Ok(Ok(())) => {
                    report.notes_required.extend(notes.lock().unwrap().iter().copied());
                    shared.ledger.finish(id, "flush one-way calls", Res::ok());
                }
                Ok(Err(e)) => shared.ledger.finish(id, "flush one-way calls", Res::err(&e, &[])),
                Err(_) => shared.ledger.finish(id, "flush one-way calls", Res::hung()),
            }
        }
        drop(client);
    }
    report
}

// ---------------------------------------------------------------------------------------
// The hostile peer
// ---------------------------------------------------------------------------------------

const SCENARIOS: [&str; 9] = [
    "garbage after the handshake",
    "garbage call body",
    "oversized length prefix",
    "truncated frame, then close",
    "reused call id",
    "decode bomb",
    "garbage hello",
    "silent connection",
    "vanishes with a call running",
];

fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn call_frame(id: u64, timeout_us: u64, body: ProbeRequest) -> Vec<u8> {
    Frame::<ProbeRequest, ()>::Call { id, timeout_us, body }.encode(Codec::Bincode, 1 << 22).unwrap().to_vec()
}

/// bincode's varint length prefix.
fn varint(n: u64) -> Vec<u8> {
    match n {
        0..=250 => vec![n as u8],
        251..=0xffff => [&[251u8][..], &(n as u16).to_le_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[252u8][..], &(n as u32).to_le_bytes()].concat(),
        _ => [&[253u8][..], &n.to_le_bytes()].concat(),
    }
}

/// A call of `request` (which ends in an empty collection) with that collection's length
/// replaced by `len`, followed by `items`.
fn forged_call(id: u64, request: ProbeRequest, len: u64, items: &[u8]) -> Vec<u8> {
    let mut frame = call_frame(id, 20_000_000, request);
    assert_eq!(frame.pop(), Some(0), "the request ends in an empty collection");
    frame.extend_from_slice(&varint(len));
    frame.extend_from_slice(items);
    frame
}

async fn raw_connect(name: &PipeName) -> Result<PipeStream, String> {
    let opts = ConnectOptions::default().timeout(Duration::from_secs(5));
    rpc_core::pipe::connect(name.clone(), &opts)
        .await
        .map_err(|e| format!("connect failed: {}", normalize(&e.to_string())))
}

async fn put(io: &mut PipeStream, bytes: &[u8]) -> Result<(), String> {
    io.write_all(bytes).await.map_err(|e| format!("write failed: {:?}", e.kind()))?;
    io.flush().await.map_err(|e| format!("write failed: {:?}", e.kind()))
}

async fn get_frame(io: &mut PipeStream) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    match io.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err("closed".into()),
        Err(e) => return Err(format!("read failed: {:?}", e.kind())),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > 16 << 20 {
        return Err(format!("the server sent a frame of {len} bytes"));
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await.map_err(|e| format!("closed mid-frame: {:?}", e.kind()))?;
    Ok(body)
}

async fn handshake(name: &PipeName) -> Result<PipeStream, String> {
    let mut io = raw_connect(name).await?;
    let hello = Hello {
        methods: Vec::new(),
        flags: 0,
        version: PROTOCOL_VERSION,
        min_version: MIN_PROTOCOL_VERSION,
        capabilities: caps::SUPPORTED & !caps::BATCH,
        stream_window: 1 << 18,
        codec: Codec::Bincode.id(),
        max_message: 4 << 20,
        fingerprint: ProbeClient::ID.fingerprint,
        service: ProbeClient::ID.name.to_owned(),
    };
    put(&mut io, &framed(&hello.encode())).await?;
    let welcome = get_frame(&mut io).await.map_err(|e| format!("handshake: {e}"))?;
    match Welcome::decode(&welcome) {
        Ok(w) if w.status == HandshakeStatus::Ok => Ok(io),
        Ok(w) => Err(format!("refused in the handshake: {:?}", w.status)),
        Err(e) => Err(format!("an unreadable welcome: {e:?}")),
    }
}

/// Reads what the server sends for at most `wait`: how the connection ended, or the
/// answer to `call`.
async fn read_end(io: &mut PipeStream, wait: Duration, call: Option<u64>) -> String {
    let until = tokio::time::Instant::now() + wait;
    loop {
        let frame = match tokio::time::timeout_at(until, get_frame(io)).await {
            Err(_) => return "still open when we left".into(),
            Ok(Err(e)) if e == "closed" => return "closed without a word".into(),
            Ok(Err(e)) => return e,
            Ok(Ok(f)) => f,
        };
        if let Some(reason) = rpc_core::wire::read_abort(&frame) {
            return format!("abort: {}", normalize(&reason));
        }
        if let Ok(w) = Welcome::decode(&frame) {
            return format!("refused in the handshake: {:?}: {}", w.status, normalize(&w.message));
        }
        let Some(id) = call else { continue };
        match Frame::<(), ProbeResponse>::decode(Codec::Bincode, &frame) {
            Ok(Frame::Error { id: got, error }) if got == id => {
                return format!("call failed: {}: {}", error.kind, normalize(&error.detail));
            }
            Ok(Frame::Reply { id: got, .. }) if got == id => return "call answered".into(),
            _ => {}
        }
    }
}

/// A frame kind no peer may send: 0 or above the last one defined (17).
fn bad_kind(rng: &mut Rng) -> u8 {
    match rng.range(0, 238) as u8 {
        0 => 0,
        k => k + 17,
    }
}

async fn hostile_once(scenario: usize, name: &PipeName, rng: &mut Rng) -> Result<String, String> {
    match scenario {
        0 => {
            let mut io = handshake(name).await?;
            let sent = rng.range(1, 8192) as usize;
            let claim = if rng.chance(50) { rng.next() as u32 } else { rng.range(0, sent as u64) as u32 };
            let mut body = rng.bytes(sent);
            body[0] = bad_kind(rng);
            put(&mut io, &[&claim.to_be_bytes()[..], &body].concat()).await?;
            Ok(read_end(&mut io, Duration::from_secs(2), None).await)
        }
        1 => {
            // A valid call header, then a body naming no method of the service.
            let mut io = handshake(name).await?;
            let id = rng.range(1, 1 << 40);
            let mut frame = call_frame(id, 1_000_000, ProbeRequest::Unit {});
            frame.pop();
            frame.push(252);
            frame.extend_from_slice(&(0x8000_0000u32 | rng.next() as u32).to_le_bytes());
            let tail = rng.range(0, 200) as usize;
            frame.extend_from_slice(&rng.bytes(tail));
            put(&mut io, &framed(&frame)).await?;
            Ok(read_end(&mut io, Duration::from_secs(2), Some(id)).await)
        }
        2 => {
            let mut io = handshake(name).await?;
            let claim = rng.range((4 << 20) + 1, u64::from(u32::MAX)) as u32;
            put(&mut io, &[&claim.to_be_bytes()[..], &rng.bytes(64)].concat()).await?;
            Ok(read_end(&mut io, Duration::from_secs(2), None).await)
        }
        3 => {
            let mut io = handshake(name).await?;
            let len = rng.range(10, 5000) as usize;
            let frame = framed(&call_frame(1, 1_000_000, ProbeRequest::EchoString { s: "x".repeat(len) }));
            let cut = rng.range(1, frame.len() as u64 - 1) as usize;
            put(&mut io, &frame[..cut]).await?;
            Ok("closed by us mid-frame".into())
        }
        4 => {
            let mut io = handshake(name).await?;
            let id = rng.range(1, 1000);
            put(&mut io, &framed(&call_frame(id, 20_000_000, ProbeRequest::SleepMs { tag: HOSTILE_TAG, ms: 300 })))
                .await?;
            put(&mut io, &framed(&call_frame(id, 20_000_000, ProbeRequest::EchoString { s: "again".into() }))).await?;
            Ok(read_end(&mut io, Duration::from_secs(3), None).await)
        }
        5 => {
            let mut io = handshake(name).await?;
            let id = rng.range(1, 1000);
            let frame = match rng.range(0, 2) {
                0 => {
                    // Up to 1 MiB of `None`s, each about 1 KiB once decoded.
                    let n = 1u64 << rng.range(12, 20);
                    forged_call(id, ProbeRequest::CountBlobs { v: vec![] }, n, &vec![0u8; n as usize])
                }
                1 => forged_call(id, ProbeRequest::CountUnits { v: vec![] }, 1 << rng.range(40, 62), &[]),
                _ => {
                    let mut body = call_frame(id, 20_000_000, ProbeRequest::TreeDepth { t: Tree::Leaf });
                    body.pop();
                    body.extend(std::iter::repeat_n(1u8, rng.range(65, 100_000) as usize));
                    body.push(0);
                    body
                }
            };
            put(&mut io, &framed(&frame)).await?;
            Ok(read_end(&mut io, Duration::from_secs(5), Some(id)).await)
        }
        6 => {
            let mut io = raw_connect(name).await?;
            if rng.chance(20) {
                let claim = rng.range((64 << 10) + 1, u64::from(u32::MAX)) as u32;
                put(&mut io, &claim.to_be_bytes()).await?;
            } else {
                let len = rng.range(0, 4096) as usize;
                put(&mut io, &framed(&rng.bytes(len))).await?;
            }
            Ok(read_end(&mut io, Duration::from_secs(2), None).await)
        }
        7 => {
            let io = raw_connect(name).await?;
            tokio::time::sleep(Duration::from_millis(rng.range(0, 100))).await;
            drop(io);
            Ok("closed by us".into())
        }
        _ => {
            let mut io = handshake(name).await?;
            let ms = rng.range(100, 2000);
            put(&mut io, &framed(&call_frame(1, 20_000_000, ProbeRequest::SleepMs { tag: HOSTILE_TAG, ms }))).await?;
            Ok("closed by us with the call running".into())
        }
    }
}

async fn hostile_task(seed: u64, shared: Arc<Shared>) -> BTreeMap<(usize, String), u64> {
    let mut rng = Rng::new(seed ^ 0x6057_11E5);
    let mut tally = BTreeMap::new();
    while !shared.stop.load(Ordering::SeqCst) {
        if shared.pausing() {
            shared.wait_while_paused().await;
        }
        tokio::time::sleep(Duration::from_millis(rng.range(20, 200))).await;
        let scenario = rng.range(0, SCENARIOS.len() as u64 - 1) as usize;
        let end =
            match tokio::time::timeout(Duration::from_secs(10), hostile_once(scenario, &shared.name, &mut rng)).await {
                Ok(Ok(end)) | Ok(Err(end)) => end,
                Err(_) => "gave up after 10 s".into(),
            };
        *tally.entry((scenario, end)).or_default() += 1;
        shared.hostile_done.fetch_add(1, Ordering::Relaxed);
    }
    tally
}

// ---------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Snapshot {
    rss_kib: Option<u64>,
    /// After returning the allocator's free memory to the OS (glibc's `malloc_trim`).
    trimmed_kib: Option<u64>,
    fds: Option<u64>,
    threads: Option<u64>,
    server_tasks: u64,
    client_tasks: u64,
    ledger_kib: u64,
}

fn snapshot(server: &tokio::runtime::Handle, client: &tokio::runtime::Handle, ledger: &Ledger) -> Snapshot {
    let rss_kib = proc_status_kib(std::process::id(), "VmRSS:");
    let trimmed_kib = if trim_heap() { proc_status_kib(std::process::id(), "VmRSS:") } else { None };
    Snapshot {
        rss_kib,
        trimmed_kib,
        fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64),
        threads: std::fs::read_dir("/proc/self/task").ok().map(|d| d.count() as u64),
        server_tasks: server.metrics().num_alive_tasks() as u64,
        client_tasks: client.metrics().num_alive_tasks() as u64,
        ledger_kib: ledger.bytes() / 1024,
    }
}

/// glibc adjusts its thresholds to the largest block freed so far: after a 5 MiB buffer it
/// serves blocks of up to 5 MiB from its arenas and lets each arena's free top grow to
/// 10 MiB before it gives memory back, and `malloc_trim` does not shrink the top of a
/// thread's arena. RSS then measures the largest burst so far, not what is allocated. Fixed
/// thresholds (glibc's own starting values, 128 KiB) turn that off: large blocks are mapped
/// and unmapped, free tops are returned beyond 128 KiB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tame_allocator() -> bool {
    const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
    const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
    unsafe extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    // SAFETY: `mallopt` takes no pointers; it is called before any other thread exists.
    unsafe { mallopt(M_MMAP_THRESHOLD, 128 << 10) == 1 && mallopt(M_TRIM_THRESHOLD, 128 << 10) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tame_allocator() -> bool {
    false
}

/// Returns the heap's free memory to the OS, so that RSS shows what is allocated (false
/// where there is no `malloc_trim`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_heap() -> bool {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: `malloc_trim` takes no pointers and only gives free heap pages back to the
    // OS; glibc runs it under each arena's lock, so it is safe beside other threads.
    unsafe { malloc_trim(0) };
    true
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() -> bool {
    false
}

/// Pauses the clients and the hostile task (`expect` of them), takes a snapshot once they
/// all wait and the counts settle, and resumes them. `None` if they did not all pause.
async fn quiesced_snapshot(
    shared: &Shared,
    expect: u64,
    server: &tokio::runtime::Handle,
    client: &tokio::runtime::Handle,
) -> (Option<Snapshot>, Duration) {
    let began = Instant::now();
    shared.pause.send_replace(true);
    let deadline = OP_LIMIT + Duration::from_secs(5);
    while shared.paused.load(Ordering::SeqCst) < expect && began.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snap = if shared.paused.load(Ordering::SeqCst) >= expect {
        Some(settle(server, client, &shared.ledger, Duration::from_secs(2)).await.0)
    } else {
        None
    };
    shared.pause.send_replace(false);
    (snap, began.elapsed())
}

/// Polls until descriptors and tasks stop falling (0.5 s without a drop), at most `max`;
/// the snapshot is of that moment.
async fn settle(
    server: &tokio::runtime::Handle,
    client: &tokio::runtime::Handle,
    ledger: &Ledger,
    max: Duration,
) -> (Snapshot, Duration) {
    let began = Instant::now();
    let mut last = snapshot(server, client, ledger);
    let mut quiet_since = Instant::now();
    while began.elapsed() < max && quiet_since.elapsed() < Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = snapshot(server, client, ledger);
        let fell = now.fds < last.fds || now.server_tasks < last.server_tasks || now.client_tasks < last.client_tasks;
        if fell {
            quiet_since = Instant::now();
        }
        last = now;
    }
    (last, began.elapsed())
}

// ---------------------------------------------------------------------------------------
// Lag monitors: how late a 10 ms timer fires on each runtime
// ---------------------------------------------------------------------------------------

/// Stalls of either runtime (from, to), at least [`STALL_LOGGED`] long, most recent last.
static STALLS: Mutex<std::collections::VecDeque<(Instant, Instant)>> = Mutex::new(std::collections::VecDeque::new());
/// The longest lateness so far, per runtime (0 server, 1 client), and since the last
/// progress line, in microseconds.
static LAG_MAX_US: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static LAG_RECENT_US: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static LATE_BUT_STALLED: AtomicU64 = AtomicU64::new(0);

async fn lag_monitor(which: usize, stop: Arc<AtomicBool>) {
    let tick = Duration::from_millis(LAG_TICK_MS);
    while !stop.load(Ordering::SeqCst) {
        let at = Instant::now();
        tokio::time::sleep(tick).await;
        let lag = at.elapsed().saturating_sub(tick);
        let us = lag.as_micros() as u64;
        LAG_MAX_US[which].fetch_max(us, Ordering::Relaxed);
        LAG_RECENT_US[which].fetch_max(us, Ordering::Relaxed);
        if lag >= STALL_LOGGED {
            let mut log = STALLS.lock().unwrap();
            log.push_back((at + tick, Instant::now()));
            if log.len() > 100_000 {
                log.pop_front();
            }
        }
    }
}

/// The longest logged stall that overlaps `from..to`.
fn stall_between(from: Instant, to: Instant) -> Duration {
    let log = STALLS.lock().unwrap();
    log.iter()
        .rev()
        .take_while(|(_, end)| *end >= from)
        .filter(|(start, _)| *start <= to)
        .map(|(s, e)| *e - *s)
        .max()
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Panics
// ---------------------------------------------------------------------------------------

static EXPECTED_PANICS: AtomicU64 = AtomicU64::new(0);
static UNEXPECTED_PANICS: AtomicU64 = AtomicU64::new(0);

/// Keeps `boom`'s panics quiet (counted); every other panic is reported as usual and fails
/// the run.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg =
            payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied());
        if msg.is_some_and(|m| m.starts_with("soak-boom")) {
            EXPECTED_PANICS.fetch_add(1, Ordering::Relaxed);
            return;
        }
        UNEXPECTED_PANICS.fetch_add(1, Ordering::Relaxed);
        default(info);
    }));
}

// ---------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------

fn progress_line(at: Duration, shared: &Shared, last_done: &mut u64, last_at: &mut Instant) {
    let (done, inflight, counts, failures) = shared.ledger.progress();
    let rate = (done - *last_done) as f64 / last_at.elapsed().as_secs_f64().max(0.001);
    *last_done = done;
    *last_at = Instant::now();
    let by: Vec<String> = counts.iter().map(|(c, n)| format!("{} {n}", c.short())).collect();
    let lag = |i: usize| LAG_RECENT_US[i].swap(0, Ordering::Relaxed) / 1000;
    println!(
        "[{:>4} s] ops {done} ({rate:.0}/s, {inflight} in flight): {} | hostile {} | lag ms server {} client {} | failures {failures}",
        at.as_secs(),
        by.join(", "),
        shared.hostile_done.load(Ordering::Relaxed),
        lag(0),
        lag(1)
    );
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}\nusage: soak [--secs N] [--clients K] [--seed S]");
            return ExitCode::from(2);
        }
    };
    install_panic_hook();
    let tamed = tame_allocator();
    let name = PipeName::new(format!("soak-{}", std::process::id()));
    println!(
        "soak: {} s, {} clients, seed {} (rerun with --seed {}), pipe {name}",
        args.secs, args.clients, args.seed, args.seed
    );
    if tamed {
        println!("glibc: fixed 128 KiB mmap and trim thresholds, so RSS follows what is allocated");
    }

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("soak-server")
        .enable_all()
        .build()
        .expect("the server runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("soak-client")
        .enable_all()
        .build()
        .expect("the client runtime");
    let bound = {
        let _in = server_rt.enter();
        match Server::new(ProbeServer::new(ProbeImpl::default())).bind(name.clone()) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("soak: cannot bind {name}: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let shutdown = bound.shutdown_handle();
    let server_run = server_rt.spawn(bound.run());
    let monitors_stop = Arc::new(AtomicBool::new(false));
    let monitors = [
        server_rt.spawn(lag_monitor(0, monitors_stop.clone())),
        client_rt.spawn(lag_monitor(1, monitors_stop.clone())),
    ];

    let shared = Arc::new(Shared {
        name,
        ledger: Ledger::default(),
        stop: AtomicBool::new(false),
        hostile_done: AtomicU64::new(0),
        pause: tokio::sync::watch::channel(false).0,
        paused: AtomicU64::new(0),
    });
    let finished = Arc::new(AtomicBool::new(false));

    // The global deadline: a hang anywhere (even in the checks at the end) ends the run.
    let global = Duration::from_secs(args.secs) + WIND_DOWN + Duration::from_secs(120);
    {
        let (shared, finished) = (shared.clone(), finished.clone());
        std::thread::spawn(move || {
            let began = Instant::now();
            while began.elapsed() < global {
                std::thread::sleep(Duration::from_millis(500));
                if finished.load(Ordering::SeqCst) {
                    return;
                }
            }
            eprintln!("soak: FAIL: the run hung past its global deadline ({} s)", global.as_secs());
            if let Ok(b) = shared.ledger.book.try_lock() {
                let mut pending: Vec<_> = b.pending.iter().collect();
                pending.sort_by_key(|(id, _)| **id);
                eprintln!("{} operations without an outcome:", pending.len());
                for (id, (kind, since)) in pending.iter().take(50) {
                    eprintln!("  #{id} {kind}, started {:.1} s ago", since.elapsed().as_secs_f64());
                }
            }
            std::process::exit(3);
        });
    }

    let server_handle = server_rt.handle().clone();
    let client_handle = client_rt.handle().clone();
    let mut problems: Vec<String> = Vec::new();

    let outcome = client_rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle = snapshot(&server_handle, &client_handle, &shared.ledger);
        let began = Instant::now();
        let clients: Vec<_> =
            (0..args.clients).map(|i| tokio::spawn(client_task(i, args.seed, shared.clone()))).collect();
        let hostile = tokio::spawn(hostile_task(args.seed, shared.clone()));

        let run = Duration::from_secs(args.secs);
        let warm_at = (run / 10).max(Duration::from_secs(5)).min(run / 2);
        let mut warm = None;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + Duration::from_secs(10), Duration::from_secs(10));
        let (mut last_done, mut last_at) = (0u64, Instant::now());
        loop {
            let left = run.saturating_sub(began.elapsed());
            if left.is_zero() {
                break;
            }
            let to_warm = warm_at.saturating_sub(began.elapsed());
            tokio::select! {
                _ = tick.tick() => progress_line(began.elapsed(), &shared, &mut last_done, &mut last_at),
                () = tokio::time::sleep(to_warm), if warm.is_none() => {
                    let at = began.elapsed();
                    let (s, quiet) = quiesced_snapshot(&shared, args.clients as u64 + 1, &server_handle, &client_handle).await;
                    println!(
                        "[{:>4} s] warm-up over: start snapshot taken with every client idle and connected (paused {:.1} s)",
                        at.as_secs(),
                        quiet.as_secs_f64()
                    );
                    if s.is_none() {
                        problems.push(format!("the clients did not pause for the start snapshot within {} s", OP_LIMIT.as_secs() + 5));
                    }
                    warm = Some((s.unwrap_or_else(|| snapshot(&server_handle, &client_handle, &shared.ledger)), at));
                }
                () = tokio::time::sleep(left) => {}
            }
        }
        shared.stop.store(true, Ordering::SeqCst);
        if last_at.elapsed() > Duration::from_secs(1) {
            progress_line(began.elapsed(), &shared, &mut last_done, &mut last_at);
        }
        println!("[{:>4} s] stopping: waiting for the clients to finish their operations", began.elapsed().as_secs());

        // Wind down: every client finishes its operations (each bounded by OP_LIMIT).
        let wind_down = Instant::now();
        let mut reports = Vec::new();
        for (i, c) in clients.into_iter().enumerate() {
            let left = WIND_DOWN.saturating_sub(wind_down.elapsed());
            match tokio::time::timeout(left, c).await {
                Ok(Ok(r)) => reports.push(r),
                Ok(Err(e)) => problems.push(format!("client task {i} failed: {e}")),
                Err(_) => problems.push(format!("client task {i} did not finish within {} s of the end", WIND_DOWN.as_secs())),
            }
        }
        let tally = match tokio::time::timeout(Duration::from_secs(15), hostile).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                problems.push(format!("the hostile task failed: {e}"));
                BTreeMap::new()
            }
            Err(_) => {
                problems.push("the hostile task did not finish within 15 s of the end".into());
                BTreeMap::new()
            }
        };
        let run_took = began.elapsed();

        // Server-side checks, through a fresh client.
        let mut server_checks = Vec::new();
        match ProbeClient::connect_with(shared.name.clone(), client_config()).await {
            Ok(c) => {
                check_notes(&c, &reports, &mut problems, &mut server_checks).await;
                check_handlers(&c, &reports, &mut problems, &mut server_checks).await;
            }
            Err(e) => problems.push(format!("cannot connect for the final checks: {e}")),
        }

        let (end, settled) = settle(&server_handle, &client_handle, &shared.ledger, SETTLE_MAX).await;
        (idle, warm, end, settled, reports, tally, run_took, server_checks)
    });
    let (idle, warm, end, settled, reports, tally, run_took, server_checks) = outcome;

    monitors_stop.store(true, Ordering::SeqCst);
    for m in monitors {
        let _ = client_rt.block_on(async { tokio::time::timeout(Duration::from_secs(1), m).await });
    }
    // The server stops gracefully.
    shutdown.shutdown();
    match server_rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), server_run).await }) {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => problems.push(format!("the server ended with an error: {e}")),
        Ok(Err(e)) => problems.push(format!("the server task failed: {e}")),
        Err(_) => problems.push("the server did not shut down within 10 s".into()),
    }
    let peak = proc_status_kib(std::process::id(), "VmHWM:");
    client_rt.shutdown_timeout(Duration::from_secs(5));
    server_rt.shutdown_timeout(Duration::from_secs(5));

    let passed =
        report(&args, &shared, &reports, &tally, run_took, idle, warm, end, settled, peak, &server_checks, problems);
    finished.store(true, Ordering::SeqCst);
    if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// Every note of a gracefully ended session arrived once; none arrived twice or unsent.
async fn check_notes(c: &ProbeClient, reports: &[ClientReport], problems: &mut Vec<String>, lines: &mut Vec<String>) {
    let (mut required, mut arrived, mut attempted) = (0usize, 0usize, 0usize);
    for r in reports {
        attempted += r.notes_attempted.len();
        required += r.notes_required.len();
        let began = Instant::now();
        let got = loop {
            let got = match c.with_timeout(Duration::from_secs(10)).notes(r.tags.note).await {
                Ok(g) => g,
                Err(e) => {
                    problems.push(format!("notes({}): {e}", r.tags.note));
                    break Vec::new();
                }
            };
            let seen: HashSet<u64> = got.iter().copied().collect();
            if r.notes_required.iter().all(|id| seen.contains(id)) || began.elapsed() > Duration::from_secs(5) {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        arrived += got.len();
        let mut seen = HashSet::new();
        for id in &got {
            if !seen.insert(*id) {
                problems.push(format!("note #{id} (tag {}) arrived twice", r.tags.note));
            } else if !r.notes_attempted.contains(id) {
                problems.push(format!("note #{id} arrived under tag {} but was never sent there", r.tags.note));
            }
        }
        let missing: Vec<_> = r.notes_required.iter().filter(|id| !seen.contains(id)).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{} flushed notes of tag {} never arrived: {:?}",
                missing.len(),
                r.tags.note,
                &missing[..missing.len().min(10)]
            ));
        }
    }
    lines.push(format!(
        "one-way notes: {attempted} sent, {required} flushed before a graceful restart (all must arrive), {arrived} arrived"
    ));
}

/// No handler counted by `Probe`'s tags is still running.
async fn check_handlers(
    c: &ProbeClient,
    reports: &[ClientReport],
    problems: &mut Vec<String>,
    lines: &mut Vec<String>,
) {
    let mut tags: Vec<(u64, &str)> = vec![(HOSTILE_TAG, "hostile sleep_ms")];
    for r in reports {
        tags.extend([
            (r.tags.sleep, "sleep_ms"),
            (r.tags.note, "note"),
            (r.tags.spawned, "spawned_sleep"),
            (r.tags.blocking, "blocking_sleep"),
        ]);
    }
    let mut totals: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for (tag, what) in tags {
        let began = Instant::now();
        loop {
            match c.with_timeout(Duration::from_secs(10)).stats(tag).await {
                Ok(s) if s.running == 0 || began.elapsed() > Duration::from_secs(10) => {
                    if s.running != 0 {
                        problems.push(format!(
                            "{} {what} handlers of tag {tag} still running 10 s after the end: {s:?}",
                            s.running
                        ));
                    }
                    let t = totals.entry(what).or_default();
                    t.0 += s.started;
                    t.1 += s.finished;
                    t.2 += s.dropped_unfinished;
                    break;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => {
                    problems.push(format!("stats({tag}): {e}"));
                    break;
                }
            }
        }
    }
    for (what, (started, finished, dropped)) in totals {
        lines.push(format!("{what} handlers on the server: {started} started, {finished} finished, {dropped} stopped unfinished, 0 running"));
    }
}

fn ratio(a: u64, b: u64) -> String {
    if a == 0 { "-".into() } else { format!("{:.2}", b as f64 / a as f64) }
}

#[allow(clippy::too_many_arguments)]
fn report(
    args: &Args,
    shared: &Shared,
    reports: &[ClientReport],
    tally: &BTreeMap<(usize, String), u64>,
    run_took: Duration,
    idle: Snapshot,
    warm: Option<(Snapshot, Duration)>,
    end: Snapshot,
    settled: Duration,
    peak_kib: Option<u64>,
    server_checks: &[String],
    mut problems: Vec<String>,
) -> bool {
    let book = shared.ledger.book.lock().unwrap();
    println!();
    println!("==================== soak report ====================");
    println!("{} s (ran {:.1} s), {} clients, seed {}", args.secs, run_took.as_secs_f64(), args.clients, args.seed);
    let sessions: u64 = reports.iter().map(|r| r.sessions).sum();
    let abrupt: u64 = reports.iter().map(|r| r.abrupt).sum();
    println!("client sessions: {sessions} ({abrupt} ended by closing the client under its calls, the rest gracefully)");

    // Accounting: every id has exactly one outcome.
    let issued = book.outcomes.len() as u64;
    let mut recount: BTreeMap<Class, u64> = BTreeMap::new();
    let mut missing = Vec::new();
    for (id, code) in book.outcomes.iter().enumerate() {
        match Class::from_code(*code) {
            Some(c) => *recount.entry(c).or_default() += 1,
            None => missing.push(id),
        }
    }
    let with_outcome: u64 = recount.values().sum();
    println!();
    println!(
        "operations: {issued} ids issued, {with_outcome} with exactly one outcome, {} without, {} recorded twice",
        missing.len(),
        book.recorded_twice
    );
    for class in CLASSES {
        let n = book.counts.get(&class).copied().unwrap_or(0);
        println!("  {:<20} {n:>10}", class.label());
    }
    println!("  {:<20} {with_outcome:>10}", "total");
    if !missing.is_empty() {
        problems.push(format!("{} ids have no outcome: {:?}", missing.len(), &missing[..missing.len().min(20)]));
        for id in missing.iter().take(20) {
            if let Some((kind, since)) = book.pending.get(&(*id as u64)) {
                problems.push(format!("  #{id} {kind}, started {:.1} s ago", since.elapsed().as_secs_f64()));
            }
        }
    }
    if recount != book.counts {
        problems.push(format!("the outcome map and the running counts disagree: {recount:?} vs {:?}", book.counts));
    }
    if book.recorded_twice > 0 {
        problems.push(format!("{} ids were given a second outcome", book.recorded_twice));
    }
    if !book.others.is_empty() {
        println!("  other outcomes by text:");
        for (text, n) in &book.others {
            println!("    {n:>8}  {text}");
        }
    }
    println!();
    println!("by operation:");
    for (kind, counts) in &book.by_kind {
        let by: Vec<String> = counts.iter().map(|(c, n)| format!("{} {n}", c.label())).collect();
        println!("  {kind:<32} {}", by.join(", "));
    }

    println!();
    let hostile: u64 = tally.values().sum();
    println!("hostile connections: {hostile} (they may end any way; not failures)");
    for ((scenario, end), n) in tally {
        println!("  {:<30} {n:>6}  {end}", SCENARIOS[*scenario]);
    }

    println!();
    for line in server_checks {
        println!("{line}");
    }
    let stalls = STALLS.lock().unwrap().len();
    println!(
        "scheduling lag (a {LAG_TICK_MS} ms timer's lateness): longest {} ms on the server runtime, {} ms on the client runtime; {stalls} stalls of {} ms or more",
        LAG_MAX_US[0].load(Ordering::Relaxed) / 1000,
        LAG_MAX_US[1].load(Ordering::Relaxed) / 1000,
        STALL_LOGGED.as_millis()
    );
    println!(
        "answers taken past their caller's limit during a stall long enough to explain it (counted ok): {}",
        LATE_BUT_STALLED.load(Ordering::Relaxed)
    );
    let expected = EXPECTED_PANICS.load(Ordering::Relaxed);
    let unexpected = UNEXPECTED_PANICS.load(Ordering::Relaxed);
    println!("panics: {expected} from boom (expected), {unexpected} others");
    if unexpected > 0 {
        problems.push(format!("{unexpected} unexpected panics (printed above as they happened)"));
    }

    // Resources.
    println!();
    match warm {
        None => {
            println!("resources: no start snapshot (the run ended before its warm-up)");
            problems.push("no start snapshot".into());
        }
        Some((start, at)) => {
            println!(
                "resources: start = after the warm-up ({} s; every client connected and idle), end = after every client was dropped and {:.1} s of settling",
                at.as_secs(),
                settled.as_secs_f64()
            );
            println!(
                "flagged if end > start x 1.10 + slack (RSS +{} MiB, fds +{FD_SLACK}, tasks +{TASK_SLACK})",
                RSS_SLACK_KIB / 1024
            );
            println!("  {:<34} {:>10} {:>10} {:>10} {:>7}", "", "idle", "start", "end", "end/st");
            // `slack: None`: shown, not checked.
            let row = |label: &str,
                       idle: Option<u64>,
                       start: Option<u64>,
                       end: Option<u64>,
                       slack: Option<u64>,
                       problems: &mut Vec<String>| {
                let (Some(i), Some(s), Some(e)) = (idle, start, end) else {
                    println!("  {label:<34} not available on this platform (skipped)");
                    return;
                };
                let Some(slack) = slack else {
                    println!("  {label:<34} {i:>10} {s:>10} {e:>10} {:>7}  (not checked)", ratio(s, e));
                    return;
                };
                let limit = s + s / 10 + slack;
                let verdict = if e > limit { "GREW" } else { "flat" };
                println!("  {label:<34} {i:>10} {s:>10} {e:>10} {:>7}  {verdict} (limit {limit})", ratio(s, e));
                if e > limit {
                    problems.push(format!("{label} grew from {s} to {e} (limit {limit})"));
                }
            };
            let (iv, sv, ev) = (Some(idle.ledger_kib), Some(start.ledger_kib), Some(end.ledger_kib));
            row("RSS, KiB", idle.rss_kib, start.rss_kib, end.rss_kib, None, &mut problems);
            if idle.trimmed_kib.is_some() {
                let less = |s: &Snapshot| s.trimmed_kib.map(|r| r.saturating_sub(s.ledger_kib));
                row(
                    "RSS after malloc_trim, KiB",
                    idle.trimmed_kib,
                    start.trimmed_kib,
                    end.trimmed_kib,
                    None,
                    &mut problems,
                );
                row("  of which the soak's ledger, KiB", iv, sv, ev, None, &mut problems);
                row(
                    "  less the ledger (checked), KiB",
                    less(&idle),
                    less(&start),
                    less(&end),
                    Some(RSS_SLACK_KIB),
                    &mut problems,
                );
            } else {
                println!("  (no malloc_trim here: RSS is checked as it is, less the soak's own ledger)");
                let less = |s: &Snapshot| s.rss_kib.map(|r| r.saturating_sub(s.ledger_kib));
                row("  of which the soak's ledger, KiB", iv, sv, ev, None, &mut problems);
                row(
                    "RSS less the ledger (checked), KiB",
                    less(&idle),
                    less(&start),
                    less(&end),
                    Some(RSS_SLACK_KIB),
                    &mut problems,
                );
            }
            row("open file descriptors", idle.fds, start.fds, end.fds, Some(FD_SLACK), &mut problems);
            row("threads (runtimes + blocking pool)", idle.threads, start.threads, end.threads, None, &mut problems);
            let tasks = |s: &Snapshot| Some(s.server_tasks);
            row(
                "server runtime: alive tasks",
                tasks(&idle),
                tasks(&start),
                tasks(&end),
                Some(TASK_SLACK),
                &mut problems,
            );
            let tasks = |s: &Snapshot| Some(s.client_tasks);
            row(
                "client runtime: alive tasks",
                tasks(&idle),
                tasks(&start),
                tasks(&end),
                Some(TASK_SLACK),
                &mut problems,
            );
            if let (Some(i), Some(e)) = (idle.trimmed_kib.or(idle.rss_kib), end.trimmed_kib.or(end.rss_kib)) {
                let grew = e.saturating_sub(i).saturating_sub(end.ledger_kib);
                let minutes = run_took.as_secs_f64() / 60.0;
                println!(
                    "  RSS at the end over the idle start, less the ledger: +{grew} KiB in {minutes:.1} min (not checked: includes the service's note log and the client reports)"
                );
            }
            if let Some(peak) = peak_kib {
                println!("  peak RSS of the process (VmHWM): {peak} KiB");
            }
            // Everything was dropped at the end: descriptors and tasks are back where they
            // were before any client connected.
            if let (Some(i), Some(e)) = (idle.fds, end.fds)
                && e > i + FD_SLACK
            {
                problems.push(format!("open descriptors at the end ({e}) above the idle start ({i}) + {FD_SLACK}"));
            }
            if end.server_tasks > idle.server_tasks + TASK_SLACK {
                problems.push(format!(
                    "server tasks at the end ({}) above the idle start ({}) + {TASK_SLACK}",
                    end.server_tasks, idle.server_tasks
                ));
            }
        }
    }

    println!();
    let failure_count = book.failure_count + problems.len() as u64;
    if failure_count == 0 {
        println!("failures: none");
        println!("PASS");
        true
    } else {
        println!("failures: {failure_count}");
        for f in &book.failures {
            println!("  {f}");
        }
        if book.failure_count as usize > book.failures.len() {
            println!("  ... and {} more operation failures", book.failure_count as usize - book.failures.len());
        }
        for p in &problems {
            println!("  {p}");
        }
        println!("FAIL");
        false
    }
}

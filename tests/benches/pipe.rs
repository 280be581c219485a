//! Performance bench: pipe-rpc side by side with a raw baseline and stock tarpc.
//!
//! Every mode runs the same workloads against a server in a separate process (this binary
//! re-executed with `--server <mode> <pipe-name> [<workers>]`; no `<workers>` means a
//! current-thread runtime):
//!
//! - `raw`: the floor. A `PipeStream` (a Unix domain socket on Unix) with a hand-written
//!   4-byte big-endian length prefix; the server echoes each frame.
//! - `tarpc`: stock tarpc over the same `PipeStream`, bincode in length-delimited frames.
//! - `rpc`: pipe-rpc (`#[rpc_core::service]`).
//!
//! The workspace builds benches with fat LTO and one codegen unit (`[profile.bench]` in the
//! root `Cargo.toml`), every mode alike: the figures are those of a release build made for
//! speed (docs/ARCHITECTURE.md, "where the time goes", has what the default profile gives).
//!
//! Workloads (the names are those of the `--json` lines):
//!
//! - `call_16b`: sequential 16-byte echo, p50/p99 latency;
//! - `pipelined_128`: 128 calls in flight on one connection, 16-byte payloads, calls/s;
//! - `bulk_1mib`: sequential 1 MiB echo, GB/s;
//! - `stream_16b`, `stream_64kib`: one way, as fast as the receiver takes them; items/s
//!   (16 B) or GB/s (64 KiB). `raw`: the client writes length-prefixed frames through a
//!   64 KiB tokio `BufWriter`; the server reads them through a 64 KiB `BufReader`, counts them
//!   and answers one small acknowledgement at the end of each batch, which the client waits
//!   for. This raw row is also the baseline of `oneway_16b` and `upload_16b` (16 B) and
//!   `upload_64kib` (64 KiB). `rpc`: a server stream (`-> RpcStream<T>`) of that many items,
//!   each checked by the client as it arrives (one `next()` per item; with `--recv-many`,
//!   the 16 B consumers of both directions take what has arrived in batches of up to 1,024
//!   with `RpcStream::recv_many`);
//! - `oneway_16b`, rpc only: `#[oneway]` calls with a 16 B argument, back to back from one
//!   client (each returns once queued), each batch ended by a normal call that answers once
//!   the server has handled all of them and returns its count (and the sum of the stamps),
//!   checked; calls/s;
//! - `upload_16b`, `upload_64kib`, rpc only: the mirror of `stream_*`, a client stream
//!   (`RpcStream::iter`) to a handler that counts the items and returns the count, bytes and
//!   the sum of the stamps, checked;
//! - `fairness`, rpc only: 1,000 sequential 16 B echo calls on an idle connection
//!   (`fairness_unloaded`), then the same 1,000 while a server stream of 64 KiB items (1 GiB;
//!   64 MiB and 200 calls in `--quick`) flows on the same connection and is consumed
//!   concurrently (the calls start once its first item has arrived); p99 of each, bar: loaded
//!   p99 <= 10x unloaded p99;
//! - `parallel_cpu`, rpc only: the server on a 2-worker multi-thread runtime, a method that
//!   spins 2 ms of CPU without awaiting, 8 calls at once on one connection against the same
//!   8 one after another (after a warm-up, so the server has marked the method long-running
//!   and gives each call its own task); bar: concurrent/sequential <= 0.6.
//!
//! Items: 16 B items are `serde_bytes::ByteArray<16>` (a length and one copy each way; serde's
//! own `[u8; 16]` is a tuple, one call per byte); 64 KiB items are a `Chunk`: its number and
//! a 64 KiB `rpc_core::Blob`, a clone (a reference count) of one buffer, as raw rewrites one
//! buffer; the library writes the blob's bytes to the pipe from that buffer every item (the
//! receiver decodes each into a fresh blob), and the consumer checks the number, the length
//! and a byte every 4093. Each stream or upload is one call of `n` items; the next batch is a
//! new call.
//! The 64 KiB rows also depend on glibc's heap. glibc returns free memory at the top of its
//! heap to the OS once there is more than its trim threshold (128 KiB in a fresh process), so
//! a receiver that takes each 64 KiB item alone and frees it before the next arrives makes
//! glibc give the item's pages back and fault them in again for the next one (~16 page faults
//! per item; a 64 KiB upload measured 0.15x raw that way, with 145 µs of server CPU per item).
//! glibc raises that threshold by itself once the process frees one large (mmapped) block:
//! any process that has moved a message of a few hundred KiB is past it. So each bench
//! process, in every mode, first allocates and frees one 4 MiB block ([`warm_heap`]), to
//! measure the library in that state rather than in a brand-new process's; `--fresh-heap`
//! skips it (in both processes), to show the other.
//!
//! Each workload gets a fresh server process and connection (see [`run_mode`]). In full mode
//! each measured part is repeated until it has lasted at least [`MIN_MEASURE`], so that CPU
//! times, read in 10 ms clock ticks, mean something.
//!
//! CPU per operation (`cpu µs/op`, client + server): user + system time of this process
//! (`/proc/self/stat`) and of the server child (`/proc/<pid>/stat`) across the measured part,
//! divided by its operations (for `fairness`, its stream's 64 KiB items; for
//! `fairness_unloaded`, its calls: a rough figure, 1,000 calls last a few 10 ms ticks).
//! Linux only; "n/a" (JSON `null`) elsewhere.
//!
//! The machine is shared and noisy, so figures are only compared within one run: the modes run
//! interleaved (raw, tarpc, rpc, raw, ...) three times, the table shows medians, and the bars
//! are ratios to the raw baseline or to tarpc measured in the same run.
//!
//! ```text
//! cargo bench -p pipe-rpc-tests --bench pipe              # full run
//! cargo bench -p pipe-rpc-tests --bench pipe -- --quick   # tiny counts, for CI (< 30 s)
//! cargo bench -p pipe-rpc-tests --bench pipe -- --check   # exit 1 if a bar is missed (full runs)
//! cargo bench -p pipe-rpc-tests --bench pipe -- --json    # also one JSON object per line
//! cargo bench -p pipe-rpc-tests --bench pipe -- --only rpc  # one mode (e.g. for profiling)
//! cargo bench -p pipe-rpc-tests --bench pipe -- --only rpc --pipelined-only  # profile one path
//! cargo bench -p pipe-rpc-tests --bench pipe -- --only rpc --bulk-only       # (or --pipelined-only)
//! cargo bench -p pipe-rpc-tests --bench pipe -- --workload stream_16b,fairness  # only these
//! cargo bench -p pipe-rpc-tests --bench pipe -- --shared-server  # echo workloads on one server
//! cargo bench -p pipe-rpc-tests --bench pipe -- --multi-thread   # client on a 2-worker runtime
//! cargo bench -p pipe-rpc-tests --bench pipe -- --fresh-heap     # glibc as in a new process
//! cargo bench -p pipe-rpc-tests --bench pipe -- --recv-many      # 16 B consumers take batches
//! cargo bench -p pipe-rpc-tests --bench pipe -- --quick --scale 4  # 4x the measured operations
//! cargo bench -p pipe-rpc-tests --bench pipe -- --quick --tracing  # rpc with tracing off vs on
//! ```
//!
//! `--tracing` runs the rpc workloads (with the other flags given) under four `tracing`
//! setups, client and server alike (`PIPE_RPC_BENCH_TRACING`, see [`install_tracing`]): no
//! subscriber, a subscriber at `INFO` (pipe-rpc's `DEBUG` spans filtered out), one at `INFO`
//! with another target at `DEBUG` (the spans turned away by their callsite's interest), and
//! one that records and formats every span; and prints each setup's time and CPU per
//! operation over those without a subscriber, side by side.
//!
//! `--json` lines (`grep '^{'`), one per workload and mode: `workload`, `mode`, `p50_us`,
//! `p99_us`, `per_s`, `bytes_per_s`, `ratio_to_raw`, `cpu_us_per_op`, `null` where a field
//! does not apply. `ratio_to_raw` is p50 over raw's p50 for `call_16b`, and the rate over the
//! rate of the raw baseline otherwise (1 for raw itself; `oneway_16b` and `upload_16b` over
//! raw `stream_16b`, `upload_64kib` over raw `stream_64kib`). `fairness` has no raw figure:
//! its `ratio_to_raw` is its loaded p99 over the unloaded p99 of the same run (the medians of
//! both; the unloaded half is the reference the bar is about, so it takes raw's place), its
//! `p50_us`/`p99_us` are the loaded calls', `per_s` their calls/s and `bytes_per_s` the
//! stream's payload bytes/s (over the whole stream); the unloaded half has its own line,
//! `fairness_unloaded` (its `ratio_to_raw` is `null`). For `parallel_cpu`, `per_s` is the
//! concurrent batches' calls/s; its concurrent/sequential ratio is in the table and on its bar
//! line.
//!
//! Every reply is checked (length and content) so a broken path cannot pass as a fast one.

use std::future::Future;
use std::io::{self, BufRead, BufReader as StdBufReader, Read, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter, ReadHalf, WriteHalf};
use tokio::sync::{Semaphore, oneshot};
use transport_pipe::{ConnectOptions, PipeListener, PipeStream};

/// Calls in flight in the pipelined workload.
const WINDOW: usize = 128;
/// Size of the small echo payload (and of the small one-way frames).
const SMALL: usize = 16;
/// Size of the bulk echo payload.
const BULK: usize = 1 << 20;
/// Size of the large one-way frames.
const STREAM_FRAME: usize = 64 << 10;
/// Capacity of the one-way writer's `BufWriter` and of the server's `BufReader`.
const ONEWAY_BUF: usize = 64 << 10;
/// Calls at once in `parallel_cpu`.
const PARALLEL: usize = 8;
/// Wall time each `parallel_cpu` call spins in the server.
const BURN: Duration = Duration::from_millis(2);
/// Worker threads of the `parallel_cpu` server.
const PARALLEL_WORKERS: usize = 2;
/// How many times each mode runs; the table shows medians.
const ROUNDS: usize = 3;
/// In full mode, each measured part is repeated until it has run at least this long.
const MIN_MEASURE: Duration = Duration::from_millis(300);
/// Largest frame either side accepts (the bulk payload plus envelope fits easily).
const MAX_FRAME: usize = 8 << 20;
/// Frames up to this size are copied into one write buffer (one syscall for a batch);
/// larger ones are written straight from the caller's buffer to avoid the copy.
const COALESCE_MAX: usize = 64 << 10;
/// Raw protocol: a frame head with this length, as a connection's first frame, switches the
/// raw server to one-way mode; in one-way mode it ends a batch (the server acknowledges).
const ONEWAY_MARK: u32 = u32::MAX;

/// `--multi-thread`: the client side runs on a 2-worker runtime instead of a current-thread
/// one (what `#[tokio::main]` gives an application), so callers and the connection's task
/// may run on different threads.
static MULTI_THREAD: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Raw,
    Tarpc,
    Rpc,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Raw, Mode::Tarpc, Mode::Rpc];

    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "raw",
            Mode::Tarpc => "tarpc",
            Mode::Rpc => "rpc",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// Every workload the bench knows by name (`fairness_unloaded` is measured as part of
/// `fairness`, never on its own). Adding one:
/// give it a [`count`](Workload::count), say which modes [`have`](Workload::has) it, add
/// its arm in [`run_workloads`], and (optionally) a table row in [`report`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Workload {
    Call16b,
    Pipelined128,
    Bulk1Mib,
    ParallelCpu,
    Oneway16b,
    Stream16b,
    Stream64Kib,
    Upload16b,
    Upload64Kib,
    /// The unloaded half of `fairness` (its reference), measured by the same run.
    FairnessUnloaded,
    Fairness,
}

/// What `ratio_to_raw` compares.
#[derive(Clone, Copy)]
enum Metric {
    /// p50 over raw's p50.
    P50,
    /// `fairness`: p99 under load over the p99 of the same calls unloaded (no raw figure).
    LoadedP99,
    /// The rate over raw's rate.
    Rate,
    /// Nothing (`fairness_unloaded`, the reference of `fairness`).
    None,
}

/// Operations of one workload: `warmup` unmeasured, then batches of `n` measured ones
/// (`parallel_cpu`: `n` pairs of one sequential and one concurrent batch of [`PARALLEL`]
/// calls).
#[derive(Clone, Copy, Debug)]
struct Count {
    warmup: usize,
    n: usize,
}

const fn count(warmup: usize, n: usize) -> Option<Count> {
    Some(Count { warmup, n })
}

impl Workload {
    const ALL: [Workload; 11] = [
        Workload::Call16b,
        Workload::Pipelined128,
        Workload::Bulk1Mib,
        Workload::ParallelCpu,
        Workload::Oneway16b,
        Workload::Stream16b,
        Workload::Stream64Kib,
        Workload::Upload16b,
        Workload::Upload64Kib,
        Workload::FairnessUnloaded,
        Workload::Fairness,
    ];

    fn name(self) -> &'static str {
        match self {
            Workload::Call16b => "call_16b",
            Workload::Pipelined128 => "pipelined_128",
            Workload::Bulk1Mib => "bulk_1mib",
            Workload::ParallelCpu => "parallel_cpu",
            Workload::Oneway16b => "oneway_16b",
            Workload::Stream16b => "stream_16b",
            Workload::Stream64Kib => "stream_64kib",
            Workload::Upload16b => "upload_16b",
            Workload::Upload64Kib => "upload_64kib",
            Workload::FairnessUnloaded => "fairness_unloaded",
            Workload::Fairness => "fairness",
        }
    }

    /// Operation counts, full or `--quick`; `None` for a workload not written yet (or not
    /// run on its own: `fairness_unloaded` is part of `fairness`). For `fairness`, `n` is the
    /// number of calls of each half; the stream's length is [`fairness_stream_items`].
    fn count(self, quick: bool) -> Option<Count> {
        match (self, quick) {
            (Workload::Call16b, false) => count(2_000, 20_000),
            (Workload::Call16b, true) => count(50, 200),
            (Workload::Pipelined128, false) => count(10_000, 300_000),
            (Workload::Pipelined128, true) => count(256, 3_000),
            (Workload::Bulk1Mib, false) => count(10, 200),
            (Workload::Bulk1Mib, true) => count(2, 5),
            (Workload::Stream16b, false) => count(100_000, 2_000_000),
            (Workload::Stream16b, true) => count(1_000, 20_000),
            (Workload::Stream64Kib, false) => count(100, 4_000),
            (Workload::Stream64Kib, true) => count(4, 100),
            (Workload::ParallelCpu, false) => count(4, 14),
            (Workload::ParallelCpu, true) => count(2, 2),
            (Workload::Oneway16b | Workload::Upload16b, false) => count(100_000, 2_000_000),
            (Workload::Oneway16b | Workload::Upload16b, true) => count(1_000, 20_000),
            (Workload::Upload64Kib, false) => count(100, 4_000),
            (Workload::Upload64Kib, true) => count(4, 100),
            (Workload::Fairness, false) => count(200, 1_000),
            (Workload::Fairness, true) => count(20, 200),
            (Workload::FairnessUnloaded, _) => None,
        }
    }

    /// Whether `mode` has this workload (yet).
    fn has(self, mode: Mode) -> bool {
        match self {
            Workload::Call16b | Workload::Pipelined128 | Workload::Bulk1Mib => true,
            // Stock tarpc has no one-way calls or streams to compare.
            Workload::Stream16b | Workload::Stream64Kib => mode != Mode::Tarpc,
            Workload::ParallelCpu
            | Workload::Oneway16b
            | Workload::Upload16b
            | Workload::Upload64Kib
            | Workload::Fairness => mode == Mode::Rpc,
            Workload::FairnessUnloaded => false,
        }
    }

    /// The workload whose raw row is this one's baseline (the fairness pair: itself, which
    /// raw does not run; `fairness` is judged against `fairness_unloaded` instead).
    fn baseline(self) -> Workload {
        match self {
            Workload::Oneway16b | Workload::Upload16b => Workload::Stream16b,
            Workload::Upload64Kib => Workload::Stream64Kib,
            w => w,
        }
    }

    fn metric(self) -> Metric {
        match self {
            Workload::Call16b => Metric::P50,
            Workload::Fairness => Metric::LoadedP99,
            Workload::FairnessUnloaded => Metric::None,
            _ => Metric::Rate,
        }
    }

    /// Payload bytes per operation, for `bytes_per_s`.
    fn payload(self) -> Option<usize> {
        match self {
            Workload::Call16b
            | Workload::Pipelined128
            | Workload::Oneway16b
            | Workload::Stream16b
            | Workload::Upload16b
            | Workload::FairnessUnloaded => Some(SMALL),
            Workload::Bulk1Mib => Some(BULK),
            Workload::Stream64Kib | Workload::Upload64Kib | Workload::Fairness => Some(STREAM_FRAME),
            Workload::ParallelCpu => None,
        }
    }

    /// Worker threads of the server runtime it needs; `None`: current-thread.
    fn server_workers(self) -> Option<usize> {
        match self {
            Workload::ParallelCpu => Some(PARALLEL_WORKERS),
            _ => None,
        }
    }
}

/// Items of `fairness`'s stream ([`STREAM_FRAME`] bytes each): 1 GiB, 64 MiB in `--quick`.
fn fairness_stream_items(quick: bool) -> usize {
    if quick { (64 << 20) / STREAM_FRAME } else { (1 << 30) / STREAM_FRAME }
}

/// `PIPE_RPC_BENCH_TRACING` (inherited by the server process): a `tracing` subscriber for
/// both processes, to measure what pipe-rpc's spans cost (see `rpc_core::spans`). Its output
/// goes nowhere; what is measured is the work up to it.
///
/// - `info`: a `fmt` subscriber at `INFO` (the global level filter is then `INFO`);
/// - `others-debug`: `INFO` for everything but this bench's own target (`pipe`), which is at
///   `DEBUG`, so the global filter lets `DEBUG` through and pipe-rpc's spans are turned
///   away by their callsite's interest instead;
/// - `debug`: everything at `DEBUG`: pipe-rpc's spans are built and formatted.
fn install_tracing() {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let Ok(which) = std::env::var("PIPE_RPC_BENCH_TRACING") else { return };
    let filter = match which.as_str() {
        "info" => tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO),
        "others-debug" => tracing_subscriber::filter::Targets::new()
            .with_default(tracing::Level::INFO)
            .with_target("pipe", tracing::Level::DEBUG),
        "debug" => tracing_subscriber::filter::Targets::new().with_default(tracing::Level::DEBUG),
        other => panic!("PIPE_RPC_BENCH_TRACING: `info`, `others-debug` or `debug`, not `{other}`"),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::sink);
    tracing_subscriber::registry().with(fmt.with_filter(filter)).init();
}

/// The `tracing` setups `--tracing` compares, as `PIPE_RPC_BENCH_TRACING` values (`off`:
/// unset, no subscriber).
const TRACING_SETUPS: [&str; 4] = ["off", "info", "others-debug", "debug"];

/// `--tracing`: the rpc workloads under each of [`TRACING_SETUPS`] (this binary re-run with
/// `--only rpc --json`, the other arguments passed on), the setups interleaved
/// [`ROUNDS`] times, the median of each; then a table of each setup's time per operation
/// and CPU per operation over `off`'s (1.00: no cost).
fn compare_tracing(args: &[String]) -> ExitCode {
    let exe = std::env::current_exe().expect("the bench's own path");
    let passed: Vec<&String> = args.iter().filter(|a| *a != "--tracing" && *a != "--json").collect();
    // Each run's setup, workload and JSON fields.
    let mut runs: Vec<(&str, String, JsonFields)> = Vec::new();
    for round in 1..=ROUNDS {
        for setup in TRACING_SETUPS {
            eprintln!("tracing round {round}/{ROUNDS}: {setup}");
            let mut cmd = Command::new(&exe);
            cmd.args(&passed).args(["--only", "rpc", "--json"]).stderr(Stdio::inherit());
            match setup {
                "off" => cmd.env_remove("PIPE_RPC_BENCH_TRACING"),
                _ => cmd.env("PIPE_RPC_BENCH_TRACING", setup),
            };
            let out = cmd.output().expect("run the bench");
            assert!(out.status.success(), "the bench under `{setup}` failed: {:?}", out.status);
            for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with('{')) {
                runs.push((setup, json_str(line, "workload"), json_fields(line)));
            }
        }
    }
    let median_of = |setup: &str, workload: &str, key: &str| -> Option<f64> {
        let mut v: Vec<f64> = runs
            .iter()
            .filter(|(s, w, _)| *s == setup && w == workload)
            .filter_map(|(_, _, f)| f.iter().find(|(k, _)| k == key)?.1)
            .collect();
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| v[v.len() / 2])
    };
    println!(
        "rpc under tracing setups (medians of {ROUNDS} interleaved runs, each the median of its own {ROUNDS} rounds):\n\
         off: no subscriber; info: a fmt subscriber at INFO; others-debug: INFO, but DEBUG for another target \
         (pipe-rpc's spans turned away by their callsite); debug: pipe-rpc's spans recorded and formatted \
         (to a sink).\ntime/op and cpu/op over off's: 1.00 is no cost, 1.10 is 10% more."
    );
    print!("{:<20} {:>14}", "workload", "off");
    for setup in &TRACING_SETUPS[1..] {
        print!(" {:>22}", format!("{setup} time / cpu"));
    }
    println!();
    for w in Workload::ALL {
        let name = w.name();
        // Time per operation: p50 latency for `call_16b`, the inverse rate otherwise.
        let time = |setup: &str| match w.metric() {
            Metric::P50 => median_of(setup, name, "p50_us"),
            Metric::Rate | Metric::LoadedP99 => median_of(setup, name, "per_s").map(|r| 1e6 / r),
            Metric::None => median_of(setup, name, "p99_us"),
        };
        let Some(off) = time("off") else { continue };
        print!("{name:<20} {off:>11.2} µs");
        for setup in &TRACING_SETUPS[1..] {
            let t = time(setup).map_or("n/a".to_owned(), |t| format!("{:.2}", t / off));
            let cpu = match (median_of(setup, name, "cpu_us_per_op"), median_of("off", name, "cpu_us_per_op")) {
                (Some(c), Some(o)) if o > 0.0 => format!("{:.2}", c / o),
                _ => "n/a".to_owned(),
            };
            print!(" {:>22}", format!("{t} / {cpu}"));
        }
        println!();
    }
    ExitCode::SUCCESS
}

/// The numeric fields of a `--json` line, by name.
type JsonFields = Vec<(String, Option<f64>)>;

/// The numeric fields of one `--json` line (`null` as `None`); strings are skipped.
fn json_fields(line: &str) -> JsonFields {
    line.trim_matches(['{', '}'])
        .split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once(':')?;
            let k = k.trim_matches('"').to_owned();
            if v.starts_with('"') {
                return Some((k, None));
            }
            Some((k, v.parse().ok()))
        })
        .collect()
}

/// The string field `key` of one `--json` line.
fn json_str(line: &str, key: &str) -> String {
    let at = line.find(&format!("\"{key}\":\"")).expect("the field") + key.len() + 4;
    line[at..].split('"').next().unwrap_or_default().to_owned()
}

/// The environment variable through which `--fresh-heap` reaches the server processes.
const FRESH_HEAP_ENV: &str = "PIPE_BENCH_FRESH_HEAP";

/// `--fresh-heap`: this process skipped [`warm_heap`], and its servers must too.
static FRESH_HEAP: AtomicBool = AtomicBool::new(false);

/// The environment variable through which `--recv-many` reaches the server processes.
const RECV_MANY_ENV: &str = "PIPE_BENCH_RECV_MANY";

/// `--recv-many`: the 16 B stream and upload consumers take items with
/// `RpcStream::recv_many` (batches of up to 1,024) instead of one `next()` each.
static RECV_MANY: AtomicBool = AtomicBool::new(false);

/// Allocates and frees one 4 MiB block, as a process that has moved one large message has:
/// glibc serves it by `mmap`, and freeing it raises glibc's mmap and trim thresholds (to the
/// block's size and twice that), which a brand-new process has at 128 KiB. See the module
/// docs ("The 64 KiB rows").
fn warm_heap() {
    let block: Vec<u8> = Vec::with_capacity(4 << 20);
    drop(std::hint::black_box(block));
}

fn main() -> ExitCode {
    install_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fresh_heap = args.iter().any(|a| a == "--fresh-heap") || std::env::var_os(FRESH_HEAP_ENV).is_some();
    FRESH_HEAP.store(fresh_heap, Ordering::Relaxed);
    let recv_many = args.iter().any(|a| a == "--recv-many") || std::env::var_os(RECV_MANY_ENV).is_some();
    RECV_MANY.store(recv_many, Ordering::Relaxed);
    if !fresh_heap {
        warm_heap();
    }
    if args.iter().any(|a| a == "--tracing") && args.first().map(String::as_str) != Some("--server") {
        return compare_tracing(&args);
    }
    if args.first().map(String::as_str) == Some("--server") {
        let (Some(mode), Some(name)) = (args.get(1).and_then(|m| Mode::parse(m)), args.get(2)) else {
            eprintln!("usage: pipe --server raw|tarpc|rpc <pipe-name> [<worker-threads>]");
            return ExitCode::from(2);
        };
        let workers = args.get(3).map(|w| w.parse::<usize>().expect("--server: worker threads"));
        server_main(mode, name, workers);
        return ExitCode::SUCCESS;
    }
    // cargo adds `--bench`; unknown arguments are ignored.
    let flag = |f: &str| args.iter().any(|a| a == f);
    let quick = flag("--quick");
    let check = flag("--check");
    let json = flag("--json");
    let shared_server = flag("--shared-server");
    let multi_thread = flag("--multi-thread");
    MULTI_THREAD.store(multi_thread, Ordering::Relaxed);
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|m| Mode::parse(m).unwrap_or_else(|| panic!("--only: unknown mode `{m}`")));
    // `--pipelined-only` / `--bulk-only` / `--workload a,b`: for profiling or re-running some
    // paths (the other workloads are skipped).
    let (pipelined_only, bulk_only) = (flag("--pipelined-only"), flag("--bulk-only"));
    let mut named: Vec<Workload> = Vec::new();
    for (i, _) in args.iter().enumerate().filter(|(_, a)| *a == "--workload") {
        let list = args.get(i + 1).unwrap_or_else(|| panic!("--workload: which? (e.g. --workload stream_16b)"));
        for name in list.split(',') {
            let w = Workload::ALL
                .into_iter()
                .find(|w| w.name() == name && w.count(false).is_some())
                .unwrap_or_else(|| panic!("--workload: unknown workload `{name}`"));
            named.push(w);
        }
    }
    let wanted = |w: Workload| {
        !(pipelined_only || bulk_only || !named.is_empty())
            || (pipelined_only && w == Workload::Pipelined128)
            || (bulk_only && w == Workload::Bulk1Mib)
            || named.contains(&w)
    };
    // `--scale K`: K times the measured operations (for instruction counts under callgrind:
    // the difference between two scales is the cost of the extra operations alone).
    let scale: usize = args
        .iter()
        .position(|a| a == "--scale")
        .and_then(|i| args.get(i + 1))
        .map(|k| k.parse().unwrap_or_else(|_| panic!("--scale: a whole number, not `{k}`")))
        .unwrap_or(1);
    let plan: Vec<(Workload, Count)> = Workload::ALL
        .into_iter()
        .filter(|&w| wanted(w))
        .filter_map(|w| w.count(quick).map(|c| (w, Count { n: c.n * scale, ..c })))
        .collect();
    let modes: Vec<Mode> = Mode::ALL.into_iter().filter(|m| only.is_none_or(|o| o == *m)).collect();

    println!(
        "pipe bench ({}): server in a child process, {} client runtime, current_thread server \
         runtime ({PARALLEL_WORKERS}-worker for parallel_cpu), {ROUNDS} interleaved rounds, medians; {}",
        if quick { "quick" } else { "full" },
        if multi_thread { "2-worker multi-thread" } else { "current_thread" },
        if FRESH_HEAP.load(Ordering::Relaxed) {
            "--fresh-heap: glibc's heap as in a new process"
        } else {
            "each process first frees one 4 MiB block (glibc's heap as after one large message)"
        }
    );
    if RECV_MANY.load(Ordering::Relaxed) {
        println!("--recv-many: the 16 B stream and upload consumers take batches with RpcStream::recv_many");
    }
    let mut runs: Vec<(Mode, Workload, Measurement)> = Vec::new();
    for round in 1..=ROUNDS {
        for &mode in &modes {
            for (w, m) in run_mode(round, mode, &plan, shared_server, quick) {
                runs.push((mode, w, m));
            }
        }
    }
    let mut medians: Vec<(Mode, Workload, Measurement)> = Vec::new();
    // Every workload that ran (`fairness` also yields `fairness_unloaded`), in the order of ALL.
    for w in Workload::ALL {
        for mode in Mode::ALL {
            let of: Vec<Measurement> =
                runs.iter().filter(|(m, rw, _)| *m == mode && *rw == w).map(|(_, _, f)| *f).collect();
            if !of.is_empty() {
                medians.push((mode, w, Measurement::median(&of)));
            }
        }
    }
    let results = Results(medians);
    let all_met = report(&results);
    if quick {
        println!(
            "note: --quick uses counts too small to judge the bars (and CPU times in 10 ms ticks); \
             this run only proves every mode still works. Run without --quick for figures."
        );
    }
    if json {
        for (mode, w, m) in &results.0 {
            println!("{}", json_line(*w, *mode, m, results.get(Mode::Raw, w.baseline())));
        }
    }
    // Quick counts cannot judge a bar (see the note above): only a full run fails `--check`.
    if check && !quick && !all_met {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------------
// Measurements and the report
// ---------------------------------------------------------------------------------------------

/// What one run of one workload in one mode measured; `None` where it does not apply.
#[derive(Clone, Copy, Debug, Default)]
struct Measurement {
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    /// Operations (calls, frames) per second.
    per_s: Option<f64>,
    /// Payload bytes per second (one direction).
    bytes_per_s: Option<f64>,
    /// CPU per operation of this process.
    cpu_client_us: Option<f64>,
    /// CPU per operation of the server process.
    cpu_server_us: Option<f64>,
    /// `parallel_cpu`: one batch of calls made one after another.
    sequential_ms: Option<f64>,
    /// `parallel_cpu`: the same batch, all at once.
    concurrent_ms: Option<f64>,
    /// `fairness`: the p99 of the same calls with no stream (`fairness_unloaded`'s p99).
    unloaded_p99_us: Option<f64>,
    /// `fairness`: the share of the calls that ended while the stream still flowed.
    under_load: Option<f64>,
}

impl Measurement {
    /// Client plus server CPU per operation.
    fn cpu_us(&self) -> Option<f64> {
        Some(self.cpu_client_us? + self.cpu_server_us?)
    }

    /// `parallel_cpu`'s figure: concurrent over sequential time.
    fn concurrency_ratio(&self) -> Option<f64> {
        Some(self.concurrent_ms? / self.sequential_ms?)
    }

    /// `fairness`'s figure: p99 under load over p99 unloaded.
    fn load_ratio(&self) -> Option<f64> {
        Some(self.p99_us? / self.unloaded_p99_us?)
    }

    /// Median of each figure separately (over the runs that have it).
    fn median(runs: &[Measurement]) -> Measurement {
        let med = |get: fn(&Measurement) -> Option<f64>| {
            let mut v: Vec<f64> = runs.iter().filter_map(get).collect();
            v.sort_by(f64::total_cmp);
            (!v.is_empty()).then(|| v[v.len() / 2])
        };
        Measurement {
            p50_us: med(|m| m.p50_us),
            p99_us: med(|m| m.p99_us),
            per_s: med(|m| m.per_s),
            bytes_per_s: med(|m| m.bytes_per_s),
            cpu_client_us: med(|m| m.cpu_client_us),
            cpu_server_us: med(|m| m.cpu_server_us),
            sequential_ms: med(|m| m.sequential_ms),
            concurrent_ms: med(|m| m.concurrent_ms),
            unloaded_p99_us: med(|m| m.unloaded_p99_us),
            under_load: med(|m| m.under_load),
        }
    }

    /// One line for a round.
    fn describe(&self, w: Workload) -> String {
        let mut parts = Vec::new();
        if let (Some(p50), Some(p99)) = (self.p50_us, self.p99_us) {
            parts.push(format!("p50 {p50:7.1} µs  p99 {p99:7.1} µs"));
            if let (Some(r), Some(b), Some(u)) = (self.load_ratio(), self.bytes_per_s, self.under_load) {
                parts.push(format!(
                    "{r:.2}x unloaded p99, stream {:.3} GB/s, {:.0}% of calls under load",
                    b / 1e9,
                    u * 100.0
                ));
            }
        } else if let (Some(s), Some(c)) = (self.sequential_ms, self.concurrent_ms) {
            parts.push(format!("{PARALLEL} calls: sequential {s:6.2} ms, concurrent {c:6.2} ms ({:.2}x)", c / s));
        } else if let (Some(b), true) = (self.bytes_per_s, w.payload().is_some_and(|p| p > SMALL)) {
            parts.push(format!("{:7.3} GB/s", b / 1e9));
        } else if let Some(r) = self.per_s {
            parts.push(format!("{:7.3} M/s", r / 1e6));
        }
        parts.push(match (self.cpu_client_us, self.cpu_server_us) {
            (Some(c), Some(s)) => format!(
                "cpu {} + {} µs/{} (client + server)",
                fmt_cpu(c),
                fmt_cpu(s),
                if w == Workload::Fairness { "64 KiB item" } else { "op" }
            ),
            _ => "cpu n/a".into(),
        });
        parts.join("  |  ")
    }
}

/// CPU µs, with fewer decimals as it grows.
fn fmt_cpu(us: f64) -> String {
    if us < 10.0 {
        format!("{us:.2}")
    } else if us < 1000.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

/// Medians, per mode and workload, in plan order.
struct Results(Vec<(Mode, Workload, Measurement)>);

impl Results {
    fn get(&self, mode: Mode, w: Workload) -> Option<&Measurement> {
        self.0.iter().find(|(m, rw, _)| *m == mode && *rw == w).map(|(_, _, f)| f)
    }

    fn has(&self, w: Workload) -> bool {
        self.0.iter().any(|(_, rw, _)| *rw == w)
    }
}

/// Prints the table and the bars; returns whether every bar that could be judged was met.
fn report(res: &Results) -> bool {
    type Get = fn(&Measurement) -> Option<f64>;
    // (label, workload, figure, decimals, note, the CPU figure of this row if it shows one)
    type Row = (&'static str, Workload, Get, usize, &'static str, Option<Get>);
    let cpu: Option<Get> = Some(Measurement::cpu_us);
    let rows: [Row; 15] = [
        ("16 B call p50 (µs)", Workload::Call16b, |m| m.p50_us, 2, "lower is better", cpu),
        ("16 B call p99 (µs)", Workload::Call16b, |m| m.p99_us, 2, "lower is better", None),
        ("128 in flight (M calls/s)", Workload::Pipelined128, |m| Some(m.per_s? / 1e6), 3, "higher is better", cpu),
        ("1 MiB echo (GB/s)", Workload::Bulk1Mib, |m| Some(m.bytes_per_s? / 1e9), 2, "higher is better", cpu),
        ("one-way 16 B calls (M/s)", Workload::Oneway16b, |m| Some(m.per_s? / 1e6), 2, "higher is better", cpu),
        ("server stream 16 B items (M/s)", Workload::Stream16b, |m| Some(m.per_s? / 1e6), 2, "higher is better", cpu),
        (
            "server stream 64 KiB items (GB/s)",
            Workload::Stream64Kib,
            |m| Some(m.bytes_per_s? / 1e9),
            2,
            "higher is better",
            cpu,
        ),
        ("upload stream 16 B items (M/s)", Workload::Upload16b, |m| Some(m.per_s? / 1e6), 2, "higher is better", cpu),
        (
            "upload stream 64 KiB items (GB/s)",
            Workload::Upload64Kib,
            |m| Some(m.bytes_per_s? / 1e9),
            2,
            "higher is better",
            cpu,
        ),
        ("fairness: 16 B call p99, idle (µs)", Workload::FairnessUnloaded, |m| m.p99_us, 1, "no stream", cpu),
        ("fairness: p99 beside a stream (µs)", Workload::Fairness, |m| m.p99_us, 1, "cpu per 64 KiB stream item", cpu),
        ("fairness: p99 beside / idle", Workload::Fairness, Measurement::load_ratio, 2, "lower is better", None),
        ("8 x 2 ms CPU calls, sequential (ms)", Workload::ParallelCpu, |m| m.sequential_ms, 2, "one connection", cpu),
        ("8 x 2 ms CPU calls, concurrent (ms)", Workload::ParallelCpu, |m| m.concurrent_ms, 2, "2-worker server", None),
        (
            "8 x 2 ms CPU, concurrent/sequential",
            Workload::ParallelCpu,
            Measurement::concurrency_ratio,
            2,
            "lower is better",
            None,
        ),
    ];
    let cell = |v: Option<f64>, prec: usize| v.map_or_else(|| "-".to_string(), |v| format!("{v:.prec$}"));
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    let times = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}x"));

    println!();
    println!(
        "{:<36} {:>9} {:>9} {:>9} {:>13} {:>15}  {:>24}",
        "workload", "raw", "tarpc", "pipe-rpc", "pipe-rpc/raw", "pipe-rpc/tarpc", "cpu µs/op raw/tarpc/rpc"
    );
    for (label, w, get, prec, note, row_cpu) in rows {
        if !res.has(w) {
            continue;
        }
        // The raw column (figure and CPU) is the baseline's: the one-way frames for the
        // one-way, stream and upload rows.
        let of = |mode: Mode| res.get(mode, if mode == Mode::Raw { w.baseline() } else { w });
        let (r, t, p) = (of(Mode::Raw).and_then(get), of(Mode::Tarpc).and_then(get), of(Mode::Rpc).and_then(get));
        let cpu = match row_cpu {
            Some(cpu) => Mode::ALL
                .map(|mode| match of(mode) {
                    None => "-".to_string(),
                    Some(m) => cpu(m).map_or_else(|| "n/a".to_string(), fmt_cpu),
                })
                .join("/"),
            None => String::new(),
        };
        println!(
            "{:<36} {:>9} {:>9} {:>9} {:>13} {:>15}  {:>24}   ({note})",
            label,
            cell(r, prec),
            cell(t, prec),
            cell(p, prec),
            times(ratio(p, r)),
            times(ratio(p, t)),
            cpu,
        );
    }
    if [Workload::Oneway16b, Workload::Stream16b, Workload::Stream64Kib, Workload::Upload16b, Workload::Upload64Kib]
        .into_iter()
        .any(|w| res.has(w))
    {
        println!(
            "raw, for the one-way, stream and upload rows: length-prefixed frames of the same size one \
             way through a 64 KiB BufWriter/BufReader"
        );
    }
    println!(
        "cpu µs/op: user + system time of client and server processes over the measured part, per \
         operation ({})",
        match proc_cpu_ticks("/proc/self/stat") {
            Some(_) => format!("/proc, {} clock ticks/s", clock_ticks_per_s()),
            None => "not available on this system".to_string(),
        }
    );

    // The bars of the issues, judged as ratios measured in this run.
    let fig = |mode: Mode, w: Workload, get: fn(&Measurement) -> Option<f64>| res.get(mode, w).and_then(get);
    let to_raw = |w: Workload, get: fn(&Measurement) -> Option<f64>| {
        ratio(fig(Mode::Rpc, w, get), fig(Mode::Raw, w.baseline(), get))
    };
    let rate: Get = |m| m.per_s;
    let bandwidth: Get = |m| m.bytes_per_s;
    type Bar = (&'static str, Option<f64>, fn(f64) -> bool);
    let bars: [Bar; 10] = [
        (
            "sequential 16 B call p50 <= 1.3x raw",
            ratio(fig(Mode::Rpc, Workload::Call16b, |m| m.p50_us), fig(Mode::Raw, Workload::Call16b, |m| m.p50_us)),
            |x: f64| x <= 1.3,
        ),
        (
            "128 in flight >= 4x stock tarpc",
            ratio(
                fig(Mode::Rpc, Workload::Pipelined128, |m| m.per_s),
                fig(Mode::Tarpc, Workload::Pipelined128, |m| m.per_s),
            ),
            |x: f64| x >= 4.0,
        ),
        (
            "1 MiB byte echo >= 0.4x raw",
            ratio(
                fig(Mode::Rpc, Workload::Bulk1Mib, |m| m.bytes_per_s),
                fig(Mode::Raw, Workload::Bulk1Mib, |m| m.bytes_per_s),
            ),
            |x: f64| x >= 0.4,
        ),
        (
            "parallel_cpu concurrent/sequential <= 0.6x",
            fig(Mode::Rpc, Workload::ParallelCpu, Measurement::concurrency_ratio),
            |x: f64| x <= 0.6,
        ),
        ("one-way 16 B calls >= 0.1x raw 16 B frames", to_raw(Workload::Oneway16b, rate), |x: f64| x >= 0.1),
        ("server stream 16 B items >= 0.4x raw frames", to_raw(Workload::Stream16b, rate), |x: f64| x >= 0.4),
        ("server stream 64 KiB >= 0.8x raw bandwidth", to_raw(Workload::Stream64Kib, bandwidth), |x: f64| x >= 0.8),
        ("upload stream 16 B items >= 0.4x raw frames", to_raw(Workload::Upload16b, rate), |x: f64| x >= 0.4),
        ("upload stream 64 KiB >= 0.8x raw bandwidth", to_raw(Workload::Upload64Kib, bandwidth), |x: f64| x >= 0.8),
        (
            "fairness: p99 beside a stream <= 10x idle p99",
            fig(Mode::Rpc, Workload::Fairness, Measurement::load_ratio),
            |x: f64| x <= 10.0,
        ),
    ];
    println!();
    let mut all_met = true;
    for (label, measured, met) in bars {
        match measured {
            Some(x) => {
                let ok = met(x);
                all_met &= ok;
                println!("bar: {label:<46} measured {x:6.2}x  {}", if ok { "MET" } else { "MISSED" });
            }
            None => println!("bar: {label:<46} not judged (mode or workload not run)"),
        }
    }
    if let Some(u) = fig(Mode::Rpc, Workload::Fairness, |m| m.under_load).filter(|&u| u < 1.0) {
        println!(
            "warning: fairness: the stream ended before the calls did ({:.0}% of them under load); \
             its p99 is partly an idle one",
            u * 100.0
        );
    }
    // The issue's absolute target, for information only: absolute rates depend on the machine.
    if let Some(r) = fig(Mode::Rpc, Workload::Pipelined128, |m| m.per_s) {
        let m = r / 1e6;
        println!(
            "info: 128 in flight absolute: {m:.3} M calls/s (issue target >= 1.0 M calls/s: {})",
            if m >= 1.0 { "met" } else { "missed" }
        );
    }
    all_met
}

/// One `--json` line. `raw` is the raw-mode median of this workload's baseline, if it ran.
fn json_line(w: Workload, mode: Mode, m: &Measurement, raw: Option<&Measurement>) -> String {
    let num = |v: Option<f64>| match v {
        Some(x) if x.is_finite() => format!("{x:.3}"),
        _ => "null".to_string(),
    };
    let key = |m: &Measurement| match w.metric() {
        Metric::P50 => m.p50_us,
        Metric::Rate => m.per_s,
        Metric::LoadedP99 | Metric::None => None,
    };
    let ratio = match w.metric() {
        Metric::LoadedP99 => m.load_ratio(),
        _ => raw.and_then(|r| Some(key(m)? / key(r)?)),
    };
    format!(
        "{{\"workload\":\"{}\",\"mode\":\"{}\",\"p50_us\":{},\"p99_us\":{},\"per_s\":{},\"bytes_per_s\":{},\
         \"ratio_to_raw\":{},\"cpu_us_per_op\":{}}}",
        w.name(),
        mode.name(),
        num(m.p50_us),
        num(m.p99_us),
        num(m.per_s),
        num(m.bytes_per_s),
        num(ratio),
        num(m.cpu_us()),
    )
}

// ---------------------------------------------------------------------------------------------
// CPU time from /proc
// ---------------------------------------------------------------------------------------------

/// `utime + stime` of a process, in clock ticks, from a `/proc/<pid>/stat` file; `None` where
/// there is no such file (not Linux) or it does not parse.
fn proc_cpu_ticks(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) is in parentheses and may contain anything; fields after
    // it start with field 3 (state). utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`, asked once), 100 if that fails.
fn clock_ticks_per_s() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&hz| hz > 0)
            .unwrap_or(100)
    })
}

/// CPU consumed so far by this process and the server child.
#[derive(Clone, Copy)]
struct CpuMark {
    server_pid: u32,
    client: Option<u64>,
    server: Option<u64>,
}

impl CpuMark {
    fn now(server_pid: u32) -> CpuMark {
        CpuMark {
            server_pid,
            client: proc_cpu_ticks("/proc/self/stat"),
            server: proc_cpu_ticks(&format!("/proc/{server_pid}/stat")),
        }
    }

    /// CPU per operation since this mark, µs: (client, server).
    fn per_op(self, ops: usize) -> (Option<f64>, Option<f64>) {
        let now = CpuMark::now(self.server_pid);
        let us = 1e6 / clock_ticks_per_s() as f64;
        let per = |a: Option<u64>, b: Option<u64>| {
            let d = b?.checked_sub(a?)?;
            (ops > 0).then(|| d as f64 * us / ops as f64)
        };
        (per(self.client, now.client), per(self.server, now.server))
    }

    /// Fills in a measurement's CPU figures.
    fn finish(self, ops: usize, m: Measurement) -> Measurement {
        let (cpu_client_us, cpu_server_us) = self.per_op(ops);
        Measurement { cpu_client_us, cpu_server_us, ..m }
    }
}

// ---------------------------------------------------------------------------------------------
// The client side: one trait, one impl per mode, workloads written once
// ---------------------------------------------------------------------------------------------

/// A connected echo client of one mode.
trait BenchClient: Sized {
    async fn connect(name: &str) -> Self;

    /// One echo round trip. Takes and returns the buffer by value so no mode pays for a copy
    /// the API does not force on it (the bulk loop sends each reply back as the next request).
    async fn echo(&mut self, data: Vec<u8>) -> Vec<u8>;

    /// `calls` small echoes, `window` of them in flight at any time, each reply checked.
    async fn pipelined(&mut self, calls: usize, window: usize);
}

/// What a workload needs to know about its session.
struct Session {
    /// Which of the [`ROUNDS`] this is, for the progress lines.
    round: usize,
    /// The server's pipe name.
    name: String,
    /// The server process, for its CPU time.
    server_pid: u32,
    /// Repeat measured batches until they have run this long.
    min_measure: Duration,
    /// `--quick`: small counts.
    quick: bool,
}

/// Runs one mode's share of the plan: by default each workload against its own server process
/// and connection, so one workload's leftovers cannot change another's figure. They did:
/// after 300,000 pipelined calls, glibc's heap in the server process was laid out so that
/// every later 1 MiB echo freed two big buffers at the top of the heap, which glibc then
/// returned to the OS and faulted back in (~480 page faults per echo); bulk throughput halved,
/// for stock tarpc and pipe-rpc alike. `--shared-server` runs all workloads that need the same
/// kind of server on one server (and the echo workloads on one connection), to see that effect.
fn run_mode(
    round: usize,
    mode: Mode,
    plan: &[(Workload, Count)],
    shared_server: bool,
    quick: bool,
) -> Vec<(Workload, Measurement)> {
    let mut sessions: Vec<Vec<(Workload, Count)>> = Vec::new();
    for &(w, k) in plan.iter().filter(|(w, _)| w.has(mode)) {
        match sessions.iter_mut().find(|s| shared_server && s[0].0.server_workers() == w.server_workers()) {
            Some(s) => s.push((w, k)),
            None => sessions.push(vec![(w, k)]),
        }
    }
    let mut out: Vec<(Workload, Measurement)> =
        sessions.iter().flat_map(|s| run_session(round, mode, s, quick)).collect();
    // One order, whatever the grouping.
    out.sort_by_key(|(w, _)| Workload::ALL.iter().position(|a| a == w));
    out
}

/// Starts one server process for `mode`, connects, and runs the workloads `plan` lists.
/// Prints each workload's figures as it finishes.
fn run_session(round: usize, mode: Mode, plan: &[(Workload, Count)], quick: bool) -> Vec<(Workload, Measurement)> {
    let server = ServerProcess::spawn(mode, plan[0].0.server_workers());
    let rt = if MULTI_THREAD.load(Ordering::Relaxed) {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    }
    .expect("runtime");
    // Generous watchdog: a hang must fail loudly, not stall CI until its own timeout.
    let limit = Duration::from_secs(600);
    let min_measure = if quick { Duration::ZERO } else { MIN_MEASURE };
    let session = Session { round, name: server.name.clone(), server_pid: server.child.id(), min_measure, quick };
    let out = rt.block_on(async {
        let work = async {
            match mode {
                Mode::Raw => run_workloads::<RawClient>(mode, &session, plan).await,
                Mode::Tarpc => run_workloads::<tarpc_mode::Client>(mode, &session, plan).await,
                Mode::Rpc => run_workloads::<rpc_mode::Client>(mode, &session, plan).await,
            }
        };
        tokio::time::timeout(limit, work)
            .await
            .unwrap_or_else(|_| panic!("{} run did not finish in {limit:?}", mode.name()))
    });
    // Runtime first (closes the connection and the client tasks), then the server process.
    drop(rt);
    drop(server);
    out
}

/// Runs `plan` in one session; the echo workloads share one connection (made at first use).
async fn run_workloads<C: BenchClient>(
    mode: Mode,
    s: &Session,
    plan: &[(Workload, Count)],
) -> Vec<(Workload, Measurement)> {
    let mut echo: Option<C> = None;
    let mut out = Vec::new();
    for &(w, k) in plan {
        let m = match (w, mode) {
            (Workload::Call16b, _) => sequential(connected(&mut echo, s).await, s, k).await,
            (Workload::Pipelined128, _) => pipelined(connected(&mut echo, s).await, s, k).await,
            (Workload::Bulk1Mib, _) => bulk(connected(&mut echo, s).await, s, k).await,
            (Workload::Stream16b, Mode::Raw) => raw_oneway(s, SMALL, k).await,
            (Workload::Stream64Kib, Mode::Raw) => raw_oneway(s, STREAM_FRAME, k).await,
            (Workload::ParallelCpu, Mode::Rpc) => rpc_mode::parallel_cpu(s, k).await,
            (Workload::Oneway16b, Mode::Rpc) => rpc_mode::oneway(s, k).await,
            (Workload::Stream16b, Mode::Rpc) => rpc_mode::stream_small(s, k).await,
            (Workload::Stream64Kib, Mode::Rpc) => rpc_mode::stream_blobs(s, k).await,
            (Workload::Upload16b, Mode::Rpc) => rpc_mode::upload_small(s, k).await,
            (Workload::Upload64Kib, Mode::Rpc) => rpc_mode::upload_blobs(s, k).await,
            (Workload::Fairness, Mode::Rpc) => {
                for (w, m) in rpc_mode::fairness(s, k, fairness_stream_items(s.quick)).await {
                    println!("  round {} {:>5} {:<17} {}", s.round, mode.name(), w.name(), m.describe(w));
                    out.push((w, m));
                }
                continue;
            }
            _ => unreachable!("mode {} has no workload {}", mode.name(), w.name()),
        };
        println!("  round {} {:>5} {:<17} {}", s.round, mode.name(), w.name(), m.describe(w));
        out.push((w, m));
    }
    out
}

/// The session's echo client, connected on first use.
async fn connected<'a, C: BenchClient>(slot: &'a mut Option<C>, s: &Session) -> &'a mut C {
    if slot.is_none() {
        *slot = Some(C::connect(&s.name).await);
    }
    slot.as_mut().expect("connected just now")
}

/// `call_16b`: one 16-byte call at a time; p50 and p99 latency.
async fn sequential(c: &mut impl BenchClient, s: &Session, k: Count) -> Measurement {
    for i in 0..k.warmup {
        check_small(&c.echo(small_payload(i)).await, i);
    }
    let mut lat = Vec::with_capacity(k.n);
    let mut i = k.warmup;
    let cpu = CpuMark::now(s.server_pid);
    let start = Instant::now();
    loop {
        for _ in 0..k.n {
            let data = small_payload(i);
            let t = Instant::now();
            let reply = c.echo(data).await;
            lat.push(t.elapsed());
            check_small(&reply, i);
            i += 1;
        }
        if start.elapsed() >= s.min_measure {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let ops = lat.len();
    lat.sort();
    let at = |q: usize| lat[(lat.len() * q / 100).min(lat.len() - 1)].as_secs_f64() * 1e6;
    let per_s = ops as f64 / secs;
    cpu.finish(
        ops,
        Measurement {
            p50_us: Some(at(50)),
            p99_us: Some(at(99)),
            per_s: Some(per_s),
            bytes_per_s: Some(per_s * SMALL as f64),
            ..Measurement::default()
        },
    )
}

/// `pipelined_128`: 16-byte calls with `WINDOW` in flight on one connection; calls/s.
async fn pipelined(c: &mut impl BenchClient, s: &Session, k: Count) -> Measurement {
    c.pipelined(k.warmup, WINDOW).await;
    let mut ops = 0;
    let cpu = CpuMark::now(s.server_pid);
    let start = Instant::now();
    loop {
        c.pipelined(k.n, WINDOW).await;
        ops += k.n;
        if start.elapsed() >= s.min_measure {
            break;
        }
    }
    let per_s = ops as f64 / start.elapsed().as_secs_f64();
    cpu.finish(
        ops,
        Measurement { per_s: Some(per_s), bytes_per_s: Some(per_s * SMALL as f64), ..Measurement::default() },
    )
}

/// `bulk_1mib`: one 1 MiB call at a time; payload bytes / round-trip time.
async fn bulk(c: &mut impl BenchClient, s: &Session, k: Count) -> Measurement {
    let mut buf = bulk_payload();
    for i in 0..k.warmup {
        stamp_bulk(&mut buf, i);
        buf = c.echo(buf).await;
        check_bulk(&buf, i);
    }
    let mut i = k.warmup;
    let cpu = CpuMark::now(s.server_pid);
    let start = Instant::now();
    loop {
        for _ in 0..k.n {
            stamp_bulk(&mut buf, i);
            buf = c.echo(buf).await;
            check_bulk(&buf, i);
            i += 1;
        }
        if start.elapsed() >= s.min_measure {
            break;
        }
    }
    let ops = i - k.warmup;
    let per_s = ops as f64 / start.elapsed().as_secs_f64();
    cpu.finish(
        ops,
        Measurement { per_s: Some(per_s), bytes_per_s: Some(per_s * BULK as f64), ..Measurement::default() },
    )
}

/// `stream_16b` / `stream_64kib`, raw: frames of `size` bytes one way through a 64 KiB
/// `BufWriter`, in batches that end with the server's acknowledgement (see
/// [`serve_oneway`]); frames/s and payload bytes/s.
async fn raw_oneway(s: &Session, size: usize, k: Count) -> Measurement {
    let stream = transport_pipe::connect(s.name.as_str(), &ConnectOptions::default()).await.expect("raw: connect");
    let mut w = BufWriter::with_capacity(ONEWAY_BUF, stream);
    // Switches the server's side of this connection to one-way mode (sent with the first batch).
    w.write_all(&ONEWAY_MARK.to_be_bytes()).await.expect("raw one-way: write");
    let mut payload: Vec<u8> = (0..size).map(bulk_byte).collect();
    let mut next = 0;
    if k.warmup > 0 {
        oneway_batch(&mut w, &mut payload, next, k.warmup).await;
        next += k.warmup;
    }
    let cpu = CpuMark::now(s.server_pid);
    let start = Instant::now();
    loop {
        oneway_batch(&mut w, &mut payload, next, k.n).await;
        next += k.n;
        if start.elapsed() >= s.min_measure {
            break;
        }
    }
    let ops = next - k.warmup;
    let per_s = ops as f64 / start.elapsed().as_secs_f64();
    cpu.finish(
        ops,
        Measurement { per_s: Some(per_s), bytes_per_s: Some(per_s * size as f64), ..Measurement::default() },
    )
}

/// Frames `first..first + n`, each stamped with its number in its first 8 bytes, then the
/// end mark; waits for the server's count and checks it.
async fn oneway_batch(w: &mut BufWriter<PipeStream>, payload: &mut [u8], first: usize, n: usize) {
    let head = u32::try_from(payload.len()).expect("frame size").to_be_bytes();
    let mut sum = 0u64;
    for i in first..first + n {
        let stamp = i as u64;
        payload[..8].copy_from_slice(&stamp.to_le_bytes());
        sum = sum.wrapping_add(stamp);
        w.write_all(&head).await.expect("raw one-way: write");
        w.write_all(payload).await.expect("raw one-way: write");
    }
    w.write_all(&ONEWAY_MARK.to_be_bytes()).await.expect("raw one-way: write");
    w.flush().await.expect("raw one-way: write");
    let mut ack = [0u8; 24];
    w.get_mut().read_exact(&mut ack).await.expect("raw one-way: read the acknowledgement");
    let field = |i: usize| u64::from_le_bytes(ack[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    assert_eq!(field(0), n as u64, "raw one-way: frames counted");
    assert_eq!(field(1), (n * payload.len()) as u64, "raw one-way: bytes counted");
    assert_eq!(field(2), sum, "raw one-way: stamps");
}

/// The shape of the rpc one-way and stream workloads: `batch(0, k.warmup)` unmeasured, then
/// measured batches `batch(first, k.n)` until they have run [`Session::min_measure`];
/// operations/s and `size` payload bytes per operation. `batch(first, n)` does operations
/// `first..first + n` and checks them (a batch ends when the server has seen all of them).
async fn batches(s: &Session, k: Count, size: usize, mut batch: impl AsyncFnMut(usize, usize)) -> Measurement {
    if k.warmup > 0 {
        batch(0, k.warmup).await;
    }
    let mut next = k.warmup;
    let cpu = CpuMark::now(s.server_pid);
    let start = Instant::now();
    loop {
        batch(next, k.n).await;
        next += k.n;
        if start.elapsed() >= s.min_measure {
            break;
        }
    }
    let ops = next - k.warmup;
    let per_s = ops as f64 / start.elapsed().as_secs_f64();
    cpu.finish(
        ops,
        Measurement { per_s: Some(per_s), bytes_per_s: Some(per_s * size as f64), ..Measurement::default() },
    )
}

/// p50 and p99 of `lat`, µs (sorts it).
fn percentiles(lat: &mut [Duration]) -> (f64, f64) {
    lat.sort();
    let at = |q: usize| lat[(lat.len() * q / 100).min(lat.len() - 1)].as_secs_f64() * 1e6;
    (at(50), at(99))
}

/// Keeps `window` futures from `call(i)` in flight until `n` completed; checks each reply.
/// For the RPC modes, where every call is its own future on one shared client.
async fn pipeline_calls<F, Fut>(n: usize, window: usize, mut call: F)
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = (usize, Vec<u8>)>,
{
    let mut in_flight = FuturesUnordered::new();
    let mut next = 0;
    while next < n.min(window) {
        in_flight.push(call(next));
        next += 1;
    }
    let mut done = 0;
    while let Some((i, reply)) = in_flight.next().await {
        check_small(&reply, i);
        done += 1;
        if next < n {
            in_flight.push(call(next));
            next += 1;
        }
    }
    assert_eq!(done, n, "pipelined: lost calls");
}

// ---------------------------------------------------------------------------------------------
// Payloads and reply checks
// ---------------------------------------------------------------------------------------------

/// 16 bytes that differ per call, so a reply to the wrong call is caught. On the stack:
/// the harness should not allocate where it does not have to (checks run on every reply).
fn small_bytes(i: usize) -> [u8; SMALL] {
    let i = i as u64;
    let mut b = [0; SMALL];
    b[..8].copy_from_slice(&i.to_le_bytes());
    b[8..].copy_from_slice(&(!i).to_le_bytes());
    b
}

/// The owned request the RPC APIs take.
fn small_payload(i: usize) -> Vec<u8> {
    small_bytes(i).to_vec()
}

fn check_small(reply: &[u8], i: usize) {
    assert!(reply == small_bytes(i), "call {i}: wrong reply {reply:?}");
}

/// The wrapping sum of the stamps `first..first + n` (what the servers add up).
fn stamp_sum(first: usize, n: usize) -> u64 {
    let (first, n) = (first as u128, n as u128);
    (n * first + n * n.saturating_sub(1) / 2) as u64
}

/// The [`STREAM_FRAME`]-byte payload of the rpc stream workloads' chunks.
fn stream_payload() -> Vec<u8> {
    (0..STREAM_FRAME).map(bulk_byte).collect()
}

/// The payload of stream item `i`: its length, and a spot check every 4093 bytes.
fn check_blob_body(item: &[u8], i: usize) {
    assert_eq!(item.len(), STREAM_FRAME, "stream item {i}: wrong length");
    for p in (0..STREAM_FRAME).step_by(4093) {
        assert_eq!(item[p], bulk_byte(p), "stream item {i}: corrupt byte at {p}");
    }
}

fn bulk_byte(p: usize) -> u8 {
    (p.wrapping_mul(2_654_435_761) >> 13) as u8
}

fn bulk_payload() -> Vec<u8> {
    (0..BULK).map(bulk_byte).collect()
}

/// Writes the call number at both ends, so a stale or truncated reply is caught cheaply.
fn stamp_bulk(buf: &mut [u8], i: usize) {
    let n = buf.len();
    buf[..8].copy_from_slice(&(i as u64).to_le_bytes());
    buf[n - 8..].copy_from_slice(&(i as u64).to_le_bytes());
}

/// Length, both stamps, and a spot check of the body every 4093 bytes (a full compare
/// would add a memory pass per call to every mode alike and blur the transport's share).
fn check_bulk(buf: &[u8], i: usize) {
    assert_eq!(buf.len(), BULK, "bulk call {i}: wrong length");
    let stamp = (i as u64).to_le_bytes();
    assert!(buf[..8] == stamp && buf[BULK - 8..] == stamp, "bulk call {i}: wrong stamp");
    for p in (8..BULK - 8).step_by(4093) {
        assert_eq!(buf[p], bulk_byte(p), "bulk call {i}: corrupt byte at {p}");
    }
}

// ---------------------------------------------------------------------------------------------
// Mode `raw`: hand-written 4-byte big-endian length prefix over the pipe
// ---------------------------------------------------------------------------------------------

/// Appends one frame to `out`. Large payloads are written straight through instead of copied
/// (after whatever `out` already holds, to keep order).
async fn put_frame<W: AsyncWrite + Unpin>(w: &mut W, out: &mut Vec<u8>, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("frame too large"))?;
    out.extend_from_slice(&len.to_be_bytes());
    if payload.len() <= COALESCE_MAX {
        out.extend_from_slice(payload);
    } else {
        w.write_all(out).await?;
        out.clear();
        w.write_all(payload).await?;
    }
    Ok(())
}

/// Writes what `put_frame` buffered.
async fn flush_frames<W: AsyncWrite + Unpin>(w: &mut W, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        w.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Reads one frame into `buf` (reusing its allocation). `Ok(false)` on a clean end of stream.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> io::Result<bool> {
    match read_head(r).await? {
        Some(len) => read_body(r, len, buf).await.map(|()| true),
        None => Ok(false),
    }
}

/// Reads a frame's length prefix. `Ok(None)` on a clean end of stream.
async fn read_head<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<u32>> {
    match r.read_u32().await {
        Ok(len) => Ok(Some(len)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads a frame's `len` payload bytes into `buf` (reusing its allocation).
async fn read_body<R: tokio::io::AsyncRead + Unpin>(r: &mut R, len: u32, buf: &mut Vec<u8>) -> io::Result<()> {
    let len = len as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes")));
    }
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(())
}

/// Echoes frames. Replies are batched the way a real server would: flushed once every request
/// already received has been answered, so a pipelining client gets few large writes.
/// A connection whose first frame head is [`ONEWAY_MARK`] is served by [`serve_oneway`].
async fn serve_raw_connection(stream: PipeStream) -> io::Result<()> {
    let mut rd = BufReader::with_capacity(COALESCE_MAX, stream);
    let mut out = Vec::with_capacity(COALESCE_MAX);
    let mut buf = Vec::new();
    let mut first = true;
    while let Some(len) = read_head(&mut rd).await? {
        if first && len == ONEWAY_MARK {
            return serve_oneway(rd).await;
        }
        first = false;
        read_body(&mut rd, len, &mut buf).await?;
        put_frame(rd.get_mut(), &mut out, &buf).await?;
        if rd.buffer().is_empty() {
            flush_frames(rd.get_mut(), &mut out).await?;
        }
    }
    Ok(())
}

// The one-way server reads through the echo loop's reader (what it has buffered included).
const _: () = assert!(COALESCE_MAX == ONEWAY_BUF, "the one-way server's reader is the echo loop's");

/// The raw one-way baseline's server side: reads frames through a 64 KiB `BufReader` and
/// counts them; at each [`ONEWAY_MARK`] answers one 24-byte acknowledgement (frames, payload
/// bytes, and the wrapping sum of each frame's first 8 bytes read as a little-endian `u64`,
/// all little-endian) and starts counting again.
async fn serve_oneway(mut rd: BufReader<PipeStream>) -> io::Result<()> {
    let mut buf = Vec::new();
    let (mut frames, mut bytes, mut sum) = (0u64, 0u64, 0u64);
    while let Some(len) = read_head(&mut rd).await? {
        if len == ONEWAY_MARK {
            let mut ack = [0u8; 24];
            ack[..8].copy_from_slice(&frames.to_le_bytes());
            ack[8..16].copy_from_slice(&bytes.to_le_bytes());
            ack[16..].copy_from_slice(&sum.to_le_bytes());
            rd.get_mut().write_all(&ack).await?;
            (frames, bytes, sum) = (0, 0, 0);
            continue;
        }
        read_body(&mut rd, len, &mut buf).await?;
        frames += 1;
        bytes += u64::from(len);
        if let Some(stamp) = buf.first_chunk::<8>() {
            sum = sum.wrapping_add(u64::from_le_bytes(*stamp));
        }
    }
    Ok(())
}

/// The stream is split so the pipelined workload can write and read at the same time.
struct RawClient {
    rd: BufReader<ReadHalf<PipeStream>>,
    wr: WriteHalf<PipeStream>,
    out: Vec<u8>,
}

impl BenchClient for RawClient {
    async fn connect(name: &str) -> RawClient {
        let stream = transport_pipe::connect(name, &ConnectOptions::default()).await.expect("raw: connect");
        let (rd, wr) = tokio::io::split(stream);
        RawClient { rd: BufReader::with_capacity(COALESCE_MAX, rd), wr, out: Vec::with_capacity(COALESCE_MAX) }
    }

    async fn echo(&mut self, mut data: Vec<u8>) -> Vec<u8> {
        put_frame(&mut self.wr, &mut self.out, &data).await.expect("raw: write");
        flush_frames(&mut self.wr, &mut self.out).await.expect("raw: write");
        assert!(read_frame(&mut self.rd, &mut data).await.expect("raw: read"), "raw: server closed");
        data
    }

    /// A writer and a reader on the two halves, joined in one task; a semaphore holds the
    /// window. The writer batches frames and flushes only when the window is full (or at the
    /// end), like any pipelining client would.
    async fn pipelined(&mut self, n: usize, window: usize) {
        let slots = Semaphore::new(window);
        let RawClient { rd, wr, out } = self;
        let writer = async {
            for i in 0..n {
                let permit = match slots.try_acquire() {
                    Ok(p) => p,
                    Err(_) => {
                        flush_frames(wr, out).await.expect("raw: write");
                        slots.acquire().await.expect("semaphore closed")
                    }
                };
                permit.forget();
                put_frame(wr, out, &small_bytes(i)).await.expect("raw: write");
            }
            flush_frames(wr, out).await.expect("raw: write");
        };
        let reader = async {
            let mut buf = Vec::new();
            for i in 0..n {
                assert!(read_frame(rd, &mut buf).await.expect("raw: read"), "raw: server closed");
                check_small(&buf, i);
                slots.add_permits(1);
            }
        };
        tokio::join!(writer, reader);
    }
}

// ---------------------------------------------------------------------------------------------
// Mode `tarpc`: stock tarpc, bincode in length-delimited frames over the same pipe
// ---------------------------------------------------------------------------------------------

mod tarpc_mode {
    use super::*;
    use tarpc::context::Context;
    use tarpc::server::{BaseChannel, Channel};
    use tarpc::tokio_serde::formats::Bincode;
    use tarpc::tokio_util::codec::LengthDelimitedCodec;

    /// The echo service, stock tarpc style.
    #[tarpc::service]
    pub(super) trait Echo {
        /// Returns its argument.
        async fn echo(data: ByteBuf) -> ByteBuf;
    }

    #[derive(Clone)]
    struct EchoImpl;

    impl Echo for EchoImpl {
        async fn echo(self, _: Context, data: ByteBuf) -> ByteBuf {
            data
        }
    }

    fn codec() -> LengthDelimitedCodec {
        LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME).new_codec()
    }

    /// Serves connections the way tarpc's examples do: one task per connection, one per call.
    pub(super) async fn serve(listener: PipeListener, stop: oneshot::Receiver<()>) {
        let accept = async {
            loop {
                let stream = listener.accept().await.expect("tarpc: accept");
                let transport = tarpc::serde_transport::new(
                    tarpc::tokio_util::codec::Framed::new(stream, codec()),
                    Bincode::default(),
                );
                let channel = BaseChannel::with_defaults(transport);
                tokio::spawn(channel.execute(EchoImpl.serve()).for_each(|call| async {
                    tokio::spawn(call);
                }));
            }
        };
        tokio::select! {
            () = accept => {}
            _ = stop => {}
        }
    }

    pub(super) struct Client(EchoClient);

    /// A context whose deadline never interferes with the bench (the default is 10 s).
    fn ctx() -> Context {
        let mut ctx = tarpc::context::current();
        ctx.deadline = Instant::now() + Duration::from_secs(3600);
        ctx
    }

    impl super::BenchClient for Client {
        async fn connect(name: &str) -> Client {
            let stream = transport_pipe::connect(name, &ConnectOptions::default()).await.expect("tarpc: connect");
            let transport =
                tarpc::serde_transport::new(tarpc::tokio_util::codec::Framed::new(stream, codec()), Bincode::default());
            Client(EchoClient::new(tarpc::client::Config::default(), transport).spawn())
        }

        async fn echo(&mut self, data: Vec<u8>) -> Vec<u8> {
            self.0.echo(ctx(), ByteBuf::from(data)).await.expect("tarpc: call").into_vec()
        }

        async fn pipelined(&mut self, n: usize, window: usize) {
            let client = &self.0;
            pipeline_calls(n, window, |i| async move {
                let reply = client.echo(ctx(), ByteBuf::from(small_payload(i))).await.expect("tarpc: call");
                (i, reply.into_vec())
            })
            .await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Mode `rpc`: pipe-rpc
// ---------------------------------------------------------------------------------------------

mod rpc_mode {
    use super::*;
    use rpc_core::{Blob, RpcStream};
    use serde_bytes::ByteArray;
    use std::cell::Cell;
    use std::sync::atomic::AtomicU64;
    use tokio::sync::Notify;

    /// The 16 B item of the one-way and stream workloads: `serde_bytes`' fixed-size array,
    /// encoded as bytes (a length and one copy), not as serde's `[u8; 16]` (a tuple: one
    /// call per byte each way, which made the 16 B streams slower still).
    type Small = ByteArray<SMALL>;

    fn small(i: usize) -> Small {
        ByteArray::new(small_bytes(i))
    }

    /// The echo service, pipe-rpc style.
    #[rpc_core::service]
    pub trait Echo {
        /// Returns its argument.
        async fn echo(&self, data: ByteBuf) -> ByteBuf;
        /// Spins for `micros` µs without awaiting (CPU-bound work that never yields); returns
        /// `micros`.
        async fn burn(&self, micros: u64) -> u64;
        /// One-way: counts the call and adds the first 8 bytes of `item` (a little-endian
        /// `u64`) to a wrapping sum.
        #[oneway]
        async fn note(&self, item: Small);
        /// Waits until [`note`](Echo::note) has run `total` times on this server, then
        /// returns its count and sum so far.
        async fn noted(&self, total: u64) -> (u64, u64);
        /// Streams `small(i)` for `i` in `first..first + n`.
        async fn items(&self, first: u64, n: u64) -> RpcStream<Small>;
        /// Streams `n` chunks of [`STREAM_FRAME`] bytes, each the number `i` beside a clone
        /// (a reference count) of one blob, `i` in `first..first + n`.
        async fn blobs(&self, first: u64, n: u64) -> RpcStream<Chunk>;
        /// The caller's items counted: (items, wrapping sum of their stamps).
        async fn upload_small(&self, items: RpcStream<Small>) -> (u64, u64);
        /// The caller's items counted: (items, bytes, wrapping sum of their stamps).
        async fn upload_blobs(&self, items: RpcStream<Chunk>) -> (u64, u64, u64);
    }

    /// The one blob [`Echo::blobs`] clones, and what [`Echo::note`] counted.
    struct EchoImpl {
        blob: Blob,
        notes: AtomicU64,
        notes_sum: AtomicU64,
        /// What [`Echo::noted`] waits for (`u64::MAX`: nobody waits); the call that reaches
        /// it wakes the waiter.
        notes_target: AtomicU64,
        notes_reached: Notify,
    }

    impl EchoImpl {
        fn new() -> EchoImpl {
            EchoImpl {
                blob: Blob::from(stream_payload()),
                notes: AtomicU64::new(0),
                notes_sum: AtomicU64::new(0),
                notes_target: AtomicU64::new(u64::MAX),
                notes_reached: Notify::new(),
            }
        }
    }

    /// The first 8 bytes of an item, as a little-endian `u64`.
    fn stamp_of(item: &[u8]) -> u64 {
        item.first_chunk::<8>().map_or(0, |s| u64::from_le_bytes(*s))
    }

    impl Echo for EchoImpl {
        async fn echo(&self, data: ByteBuf) -> ByteBuf {
            data
        }

        async fn burn(&self, micros: u64) -> u64 {
            let until = Instant::now() + Duration::from_micros(micros);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            micros
        }

        async fn note(&self, item: Small) {
            // One handler at a time runs this (one-way calls run in order, and this one
            // finishes at its first poll), so plain loads and stores would do; atomics keep
            // it sound on any runtime.
            self.notes_sum.fetch_add(stamp_of(&item[..]), Ordering::Relaxed);
            let seen = self.notes.fetch_add(1, Ordering::AcqRel) + 1;
            if seen >= self.notes_target.load(Ordering::Acquire) {
                self.notes_reached.notify_one();
            }
        }

        async fn noted(&self, total: u64) -> (u64, u64) {
            self.notes_target.store(total, Ordering::Release);
            // `notify_one` leaves a permit if nobody waits yet, so a wake-up between the
            // check and the wait is not lost.
            while self.notes.load(Ordering::Acquire) < total {
                self.notes_reached.notified().await;
            }
            self.notes_target.store(u64::MAX, Ordering::Release);
            (self.notes.load(Ordering::Acquire), self.notes_sum.load(Ordering::Acquire))
        }

        async fn items(&self, first: u64, n: u64) -> RpcStream<Small> {
            RpcStream::iter((first..first + n).map(|i| small(i as usize)))
        }

        async fn blobs(&self, first: u64, n: u64) -> RpcStream<Chunk> {
            let blob = self.blob.clone();
            RpcStream::iter((first..first + n).map(move |i| stamped(&blob, i)))
        }

        async fn upload_small(&self, mut items: RpcStream<Small>) -> (u64, u64) {
            let (mut n, mut sum) = (0u64, 0u64);
            if RECV_MANY.load(Ordering::Relaxed) {
                let mut batch = Vec::with_capacity(1024);
                while items.recv_many(&mut batch, 1024).await.expect("rpc: upload_small: recv_many") > 0 {
                    for item in batch.drain(..) {
                        n += 1;
                        sum = sum.wrapping_add(stamp_of(&item[..]));
                    }
                }
            }
            while let Some(item) = items.next().await {
                let item = item.expect("rpc: upload_small item");
                n += 1;
                sum = sum.wrapping_add(stamp_of(&item[..]));
            }
            (n, sum)
        }

        async fn upload_blobs(&self, mut items: RpcStream<Chunk>) -> (u64, u64, u64) {
            let (mut n, mut bytes, mut sum) = (0u64, 0u64, 0u64);
            while let Some(item) = items.next().await {
                let item = item.expect("rpc: upload_blobs item");
                n += 1;
                bytes += item.data.len() as u64;
                sum = sum.wrapping_add(item.stamp);
            }
            (n, bytes, sum)
        }
    }

    /// Chunk `i`: its number beside a clone of `blob`.
    fn stamped(blob: &Blob, i: u64) -> Chunk {
        Chunk { stamp: i, data: blob.clone() }
    }

    /// A 64 KiB stream item: its number, and the payload.
    // `pub` although unreachable: it is in the signature of the generated `pub trait Echo`,
    // and the compiler of the macOS/FreeBSD type-check refuses a crate-private type there.
    #[allow(unreachable_pub)]
    #[derive(serde::Serialize, serde::Deserialize)]
    pub struct Chunk {
        stamp: u64,
        data: Blob,
    }

    /// Chunk `i` as [`stamped`] made it.
    fn check_blob(item: &Chunk, i: usize) {
        assert_eq!(item.stamp, i as u64, "stream item {i}: wrong stamp");
        super::check_blob_body(&item.data, i);
    }

    pub(super) async fn serve(name: &str, ready: impl FnOnce(), stop: oneshot::Receiver<()>) {
        // Short grace: by the time the parent signals, its client is gone.
        let config = rpc_core::ServerConfig::default().shutdown_grace(Duration::from_secs(1));
        let server =
            rpc_core::Server::new(EchoServer::new(EchoImpl::new())).config(config).bind(name).expect("rpc: bind");
        ready();
        server
            .run_until(async {
                stop.await.ok();
            })
            .await
            .expect("rpc: serve");
    }

    pub(super) struct Client(EchoClient);

    impl super::BenchClient for Client {
        async fn connect(name: &str) -> Client {
            Client(EchoClient::connect(name).await.expect("rpc: connect"))
        }

        async fn echo(&mut self, data: Vec<u8>) -> Vec<u8> {
            self.0.echo(ByteBuf::from(data)).await.expect("rpc: call").into_vec()
        }

        async fn pipelined(&mut self, n: usize, window: usize) {
            // One client, one connection: every call borrows it.
            let client = &self.0;
            pipeline_calls(n, window, |i| async move {
                let reply = client.echo(ByteBuf::from(small_payload(i))).await.expect("rpc: call");
                (i, reply.into_vec())
            })
            .await;
        }
    }

    async fn connect(s: &Session) -> EchoClient {
        EchoClient::connect(s.name.as_str()).await.expect("rpc: connect")
    }

    /// `oneway_16b`: one-way calls back to back, each batch ended by [`Echo::noted`], which
    /// answers once the server has handled every one of them; calls/s.
    pub(super) async fn oneway(s: &Session, k: Count) -> Measurement {
        let client = connect(s).await;
        batches(s, k, SMALL, async |first, n| {
            for i in first..first + n {
                client.note(small(i)).await.expect("rpc: one-way call");
            }
            let total = (first + n) as u64;
            let (count, sum) = client.noted(total).await.expect("rpc: noted");
            assert_eq!(count, total, "rpc: one-way calls the server handled");
            assert_eq!(sum, stamp_sum(0, first + n), "rpc: one-way stamps");
        })
        .await
    }

    /// `stream_16b`: server streams of 16 B items, each item checked; items/s.
    pub(super) async fn stream_small(s: &Session, k: Count) -> Measurement {
        let client = connect(s).await;
        batches(s, k, SMALL, async |first, n| {
            let mut items = client.items(first as u64, n as u64).await.expect("rpc: items");
            let mut i = first;
            if RECV_MANY.load(Ordering::Relaxed) {
                let mut batch = Vec::with_capacity(1024);
                while items.recv_many(&mut batch, 1024).await.expect("rpc: items: recv_many") > 0 {
                    for item in batch.drain(..) {
                        check_small(&item[..], i);
                        i += 1;
                    }
                }
            }
            while let Some(item) = items.next().await {
                check_small(&item.expect("rpc: items: item")[..], i);
                i += 1;
            }
            assert_eq!(i, first + n, "rpc: items: the stream ended early");
        })
        .await
    }

    /// `stream_64kib`: server streams of 64 KiB items, each item checked; bytes/s.
    pub(super) async fn stream_blobs(s: &Session, k: Count) -> Measurement {
        let client = connect(s).await;
        batches(s, k, STREAM_FRAME, async |first, n| {
            let mut items = client.blobs(first as u64, n as u64).await.expect("rpc: blobs");
            let mut i = first;
            while let Some(item) = items.next().await {
                check_blob(&item.expect("rpc: blobs: item"), i);
                i += 1;
            }
            assert_eq!(i, first + n, "rpc: blobs: the stream ended early");
        })
        .await
    }

    /// `upload_16b`: client streams of 16 B items, counted by the handler; items/s.
    pub(super) async fn upload_small(s: &Session, k: Count) -> Measurement {
        let client = connect(s).await;
        batches(s, k, SMALL, async |first, n| {
            let items = RpcStream::iter((first..first + n).map(small));
            let (count, sum) = client.upload_small(items).await.expect("rpc: upload_small");
            assert_eq!(count, n as u64, "rpc: upload_small: items counted");
            assert_eq!(sum, stamp_sum(first, n), "rpc: upload_small: stamps");
        })
        .await
    }

    /// `upload_64kib`: client streams of 64 KiB chunks (as [`Echo::blobs`] makes them),
    /// counted by the handler; bytes/s.
    pub(super) async fn upload_blobs(s: &Session, k: Count) -> Measurement {
        let client = connect(s).await;
        let blob = Blob::from(stream_payload());
        batches(s, k, STREAM_FRAME, async |first, n| {
            let blob = blob.clone();
            let items = RpcStream::iter((first..first + n).map(move |i| stamped(&blob, i as u64)));
            let (count, bytes, sum) = client.upload_blobs(items).await.expect("rpc: upload_blobs");
            assert_eq!(count, n as u64, "rpc: upload_blobs: items counted");
            assert_eq!(bytes, (n * STREAM_FRAME) as u64, "rpc: upload_blobs: bytes counted");
            assert_eq!(sum, stamp_sum(first, n), "rpc: upload_blobs: stamps");
        })
        .await
    }

    /// `fairness`: `k.n` 16 B echo calls one after another on an idle connection, then the
    /// same calls while a server stream of `stream_items` 64 KiB items flows on the same
    /// connection and is consumed concurrently (in the same task, as `join!` does). The
    /// calls start once the stream's first item has arrived. Returns the unloaded part (as
    /// `fairness_unloaded`) and the loaded one.
    pub(super) async fn fairness(s: &Session, k: Count, stream_items: usize) -> [(Workload, Measurement); 2] {
        let client = connect(s).await;
        let call = async |i: usize| {
            let t = Instant::now();
            let reply = client.echo(ByteBuf::from(small_payload(i))).await.expect("rpc: call");
            let took = t.elapsed();
            check_small(&reply, i);
            took
        };
        for i in 0..k.warmup {
            call(i).await;
        }

        let cpu = CpuMark::now(s.server_pid);
        let start = Instant::now();
        let mut unloaded = Vec::with_capacity(k.n);
        for i in 0..k.n {
            unloaded.push(call(i).await);
        }
        let calls_per_s = k.n as f64 / start.elapsed().as_secs_f64();
        let (p50, p99) = percentiles(&mut unloaded);
        let unloaded = cpu.finish(
            k.n,
            Measurement {
                p50_us: Some(p50),
                p99_us: Some(p99),
                per_s: Some(calls_per_s),
                bytes_per_s: Some(calls_per_s * SMALL as f64),
                ..Measurement::default()
            },
        );

        let cpu = CpuMark::now(s.server_pid);
        let start = Instant::now();
        let mut stream = client.blobs(0, stream_items as u64).await.expect("rpc: blobs");
        let first = stream.next().await.expect("rpc: blobs: no first item").expect("rpc: blobs: item");
        check_blob(&first, 0);
        let stream_done = Cell::new(false);
        let consume = async {
            let mut i = 1;
            while let Some(item) = stream.next().await {
                check_blob(&item.expect("rpc: blobs: item"), i);
                i += 1;
            }
            assert_eq!(i, stream_items, "rpc: blobs: the stream ended early");
            stream_done.set(true);
        };
        let mut loaded = Vec::with_capacity(k.n);
        let mut under_load = 0usize;
        let calls = async {
            let start = Instant::now();
            for i in 0..k.n {
                loaded.push(call(i).await);
                // Ended before the stream did: this call competed with it all along.
                under_load += usize::from(!stream_done.get());
            }
            start.elapsed()
        };
        let ((), calls_took) = tokio::join!(consume, calls);
        let stream_per_s = stream_items as f64 / start.elapsed().as_secs_f64();
        let (p50, p99) = percentiles(&mut loaded);
        let loaded = cpu.finish(
            stream_items,
            Measurement {
                p50_us: Some(p50),
                p99_us: Some(p99),
                per_s: Some(k.n as f64 / calls_took.as_secs_f64()),
                bytes_per_s: Some(stream_per_s * STREAM_FRAME as f64),
                unloaded_p99_us: unloaded.p99_us,
                under_load: Some(under_load as f64 / k.n as f64),
                ..Measurement::default()
            },
        );
        [(Workload::FairnessUnloaded, unloaded), (Workload::Fairness, loaded)]
    }

    async fn burn(client: &EchoClient) {
        let us = BURN.as_micros() as u64;
        assert_eq!(client.burn(us).await.expect("rpc: burn"), us, "rpc: burn reply");
    }

    /// `parallel_cpu`: [`PARALLEL`] calls of `burn` on one connection, one after another and
    /// then all at once, `k.n` times (interleaved, so noise hits both alike); the medians.
    pub(super) async fn parallel_cpu(s: &Session, k: Count) -> Measurement {
        let client = EchoClient::connect(s.name.as_str()).await.expect("rpc: connect");
        // The first call's first poll spins 2 ms, which marks `burn` long-running on this
        // connection: its later calls get tasks of their own, which the 2 workers run in parallel.
        for _ in 0..k.warmup.max(1) {
            burn(&client).await;
        }
        let (mut sequential, mut concurrent) = (Vec::new(), Vec::new());
        let cpu = CpuMark::now(s.server_pid);
        let start = Instant::now();
        loop {
            for _ in 0..k.n {
                let t = Instant::now();
                for _ in 0..PARALLEL {
                    burn(&client).await;
                }
                sequential.push(t.elapsed());
                let t = Instant::now();
                futures::future::join_all((0..PARALLEL).map(|_| burn(&client))).await;
                concurrent.push(t.elapsed());
            }
            if start.elapsed() >= s.min_measure {
                break;
            }
        }
        let ops = (sequential.len() + concurrent.len()) * PARALLEL;
        let median_ms = |mut v: Vec<Duration>| {
            v.sort();
            v[v.len() / 2].as_secs_f64() * 1e3
        };
        let (seq_ms, conc_ms) = (median_ms(sequential), median_ms(concurrent));
        cpu.finish(
            ops,
            Measurement {
                per_s: Some(PARALLEL as f64 / (conc_ms / 1e3)),
                sequential_ms: Some(seq_ms),
                concurrent_ms: Some(conc_ms),
                ..Measurement::default()
            },
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// The child: binds, prints `ready`, serves until its stdin reaches EOF (the parent closed it
/// or died), then shuts down cleanly so the socket file is removed. `workers`: a multi-thread
/// runtime with that many workers; `None`: current-thread.
fn server_main(mode: Mode, name: &str, workers: Option<usize>) {
    let rt = match workers {
        Some(n) => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
        None => tokio::runtime::Builder::new_current_thread().enable_all().build(),
    }
    .expect("runtime");
    let (stop_tx, stop_rx) = oneshot::channel();
    std::thread::spawn(move || {
        let _ = io::stdin().read_to_end(&mut Vec::new());
        let _ = stop_tx.send(());
        // If a clean shutdown hangs, do not outlive the parent for long.
        std::thread::sleep(Duration::from_secs(10));
        eprintln!("pipe bench server ({}): no clean shutdown in 10 s, exiting", mode.name());
        std::process::exit(1);
    });
    let ready = || {
        let mut out = io::stdout().lock();
        writeln!(out, "ready").and_then(|()| out.flush()).expect("stdout");
    };
    rt.block_on(async move {
        match mode {
            Mode::Raw => {
                let listener = PipeListener::bind(name).expect("raw: bind");
                ready();
                let accept = async {
                    loop {
                        let stream = listener.accept().await.expect("raw: accept");
                        tokio::spawn(async move {
                            if let Err(e) = serve_raw_connection(stream).await {
                                eprintln!("raw server: {e}");
                            }
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stop_rx => {}
                }
            }
            Mode::Tarpc => {
                let listener = PipeListener::bind(name).expect("tarpc: bind");
                ready();
                tarpc_mode::serve(listener, stop_rx).await;
            }
            Mode::Rpc => rpc_mode::serve(name, ready, stop_rx).await,
        }
    });
}

/// The parent's handle on a server child. Dropping it closes the child's stdin (its signal to
/// shut down), waits a little, then kills it.
struct ServerProcess {
    child: Child,
    name: String,
}

impl ServerProcess {
    fn spawn(mode: Mode, workers: Option<usize>) -> ServerProcess {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name =
            format!("pipe-bench-{}-{}-{}", std::process::id(), mode.name(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let exe = std::env::current_exe().expect("current_exe");
        let mut command = Command::new(exe);
        if FRESH_HEAP.load(Ordering::Relaxed) {
            command.env(FRESH_HEAP_ENV, "1");
        }
        if RECV_MANY.load(Ordering::Relaxed) {
            command.env(RECV_MANY_ENV, "1");
        }
        let mut child = command
            .args(["--server", mode.name(), &name])
            .args(workers.map(|n| n.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the server process");
        let stdout = child.stdout.take().expect("child stdout");
        let mut server = ServerProcess { child, name };
        // Watchdog on startup: a reader thread reports the first line, we wait a bounded time.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = StdBufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.trim() == "ready" => server,
            Ok(line) => {
                let _ = server.child.kill();
                let status = server.child.wait();
                panic!("{} server did not start: said {line:?}, exit {status:?}", mode.name())
            }
            Err(_) => {
                let _ = server.child.kill();
                panic!("{} server not ready within 20 s", mode.name())
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

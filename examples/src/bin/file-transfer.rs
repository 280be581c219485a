//! `file-transfer`: upload and download files of any size as byte streams, in bounded
//! memory.
//!
//! ```text
//! file-transfer --serve NAME DIR                   # serve the files in DIR on pipe NAME
//! file-transfer --upload NAME FILE                 # store FILE in the server's DIR, under its file name
//! file-transfer --download NAME REMOTE_NAME DEST   # fetch the server's REMOTE_NAME into DEST
//! file-transfer --self-test [SIZE]                 # the whole round trip, measured (SIZE default 1G)
//! ```
//!
//! With cargo: `cargo run --release -p pipe-rpc-examples --bin file-transfer -- --self-test`
//! (a debug build works too, only slower).
//!
//! An upload is a call with a client-to-server stream argument (`data: RpcStream<Blob>`)
//! and a plain reply (the bytes stored, or a typed error); a download is a call whose reply
//! is a server-to-client stream of `Result<Blob, FileError>` items (a missing file is an
//! error item). Chunks are [`CHUNK`] bytes of `rpc_core::Blob`, which the sender writes to
//! the pipe from the chunk's own memory instead of copying it into a frame first (a plain
//! `Vec<u8>` would be encoded byte by byte). Files are read and written on blocking threads, never on
//! the runtime's, and every hand-over is a bounded channel, so the producer (a disk or the
//! pipe) waits for the consumer and memory stays flat whatever the size: the library's
//! credit-based flow control holds at most a 512 KiB window per stream in flight.
//!
//! An upload is written to a hidden temporary file and renamed into place only when every
//! byte announced has arrived; an upload that fails or is cancelled half-way leaves nothing
//! behind. A download is written to `DEST.part` and renamed to `DEST` when complete.
//! Remote names are plain file names: 1 to 128 characters of `A-Z a-z 0-9 . _ -`, not
//! starting with `.`.
//!
//! `--self-test [SIZE]` starts `file-transfer --serve` on a temporary directory as a child
//! process, uploads SIZE bytes (`1G`, `32M`, `4096`, ...) of a deterministic pattern
//! generated on the fly (never held in memory or on the client's disk), downloads them back
//! and compares every byte with the pattern as it arrives, then prints the throughput of
//! each direction and the peak resident set size (`VmHWM`) of both processes (`n/a` where
//! the OS does not tell, as on Windows). It removes the temporary directory and exits 0 if
//! every byte matched.

use std::error::Error;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use pipe_rpc_examples::server::{OnStdinEof, stop_requested};
use rpc_core::{Blob, ClientConfig, RpcError, RpcStream, Server};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

const USAGE: &str = "\
usage: file-transfer --serve NAME DIR [--stop-on-eof]
       file-transfer --upload NAME FILE
       file-transfer --download NAME REMOTE_NAME DEST
       file-transfer --self-test [SIZE]

--serve        serves the files in DIR (created if missing) on pipe NAME until
               Ctrl-C or a `shutdown` line on stdin (with --stop-on-eof, also
               when stdin ends)
--upload       stores FILE on the server under its file name
--download     fetches the server's REMOTE_NAME into DEST
--self-test    runs a server as a child process, uploads SIZE bytes (default 1G;
               suffixes K, M, G), downloads them back, checks every byte, and
               prints the throughput and both processes' peak memory";

/// Bytes per stream item.
const CHUNK: usize = 256 * 1024;

/// Chunks each hand-over channel (disk thread <-> connection) holds.
const CHUNKS_QUEUED: usize = 4;

/// Longest remote file name.
const NAME_MAX: usize = 128;

/// Default `--self-test` size: 1 GiB.
const SELF_TEST_SIZE: u64 = 1 << 30;

/// How long the self-test's server may take to start and to stop.
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a transfer failed.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
enum FileError {
    /// The remote name is not a plain file name.
    #[error("invalid file name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// The server has no such file.
    #[error("no file named `{name}` on the server")]
    NotFound { name: String },
    /// Reading or writing a file failed.
    #[error("{what}: {message}")]
    Io { what: String, message: String },
    /// The upload ended before (or went on after) the size it announced.
    #[error("upload of `{name}` announced {expected} bytes but sent {got}; nothing was stored")]
    WrongSize { name: String, expected: u64, got: u64 },
    /// The call failed on its way (server gone, ...).
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

impl FileError {
    fn io(what: impl std::fmt::Display, e: &io::Error) -> Self {
        FileError::Io { what: what.to_string(), message: e.to_string() }
    }
}

/// The service.
#[rpc_core::service]
trait Files {
    /// Stores the caller's bytes as `name` (replacing any file of that name) once exactly
    /// `size` bytes have arrived; returns the bytes stored.
    async fn upload(&self, name: String, size: u64, data: RpcStream<Blob>) -> Result<u64, FileError>;
    /// The bytes of `name`, in chunks; an error item (no such file, a read error) ends it.
    async fn download(&self, name: String) -> RpcStream<Result<Blob, FileError>>;
    /// This server process's peak resident set size in bytes, where the OS tells (Linux).
    async fn peak_rss(&self) -> Option<u64>;
}

// ---------------------------------------------------------------------------------------
// The server

/// Serves the files of one directory.
struct Dir {
    root: PathBuf,
    /// Numbers temporary files, so concurrent uploads of one name never share one.
    uploads: AtomicU64,
}

impl Dir {
    /// Where the file `name` lives, if `name` is a plain file name.
    fn path_of(&self, name: &str) -> Result<PathBuf, FileError> {
        let reason = if name.is_empty() {
            "the name is empty".to_owned()
        } else if name.chars().count() > NAME_MAX {
            format!("longer than {NAME_MAX} characters")
        } else if name.starts_with('.') {
            "it starts with '.'".to_owned()
        } else if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c))) {
            format!("{c:?} is not allowed (use A-Z, a-z, 0-9, '.', '_', '-')")
        } else {
            return Ok(self.root.join(name));
        };
        Err(FileError::InvalidName { name: name.to_owned(), reason })
    }
}

/// What the connection hands to the thread writing an upload.
enum ToDisk {
    Chunk(Blob),
    /// Every chunk has arrived: check the size, keep the file.
    Commit,
}

impl Files for Dir {
    async fn upload(&self, name: String, size: u64, mut data: RpcStream<Blob>) -> Result<u64, FileError> {
        let dest = self.path_of(&name)?;
        let temp = self.root.join(format!(".{name}.part-{}", self.uploads.fetch_add(1, Ordering::Relaxed)));
        let (to_disk, from_net) = mpsc::channel(CHUNKS_QUEUED);
        let start = Instant::now();
        let writer = tokio::task::spawn_blocking({
            let name = name.clone();
            move || write_upload(&name, &temp, &dest, size, from_net)
        });
        // If this handler is dropped (the client cancelled, or went away), `to_disk` goes
        // with it before `Commit`, and the writer removes the partial file.
        while let Some(chunk) = data.next().await {
            if to_disk.send(ToDisk::Chunk(chunk?)).await.is_err() {
                break; // The writer failed; its error is below.
            }
        }
        let _ = to_disk.send(ToDisk::Commit).await;
        drop(to_disk);
        let stored =
            writer.await.map_err(|e| FileError::Io { what: "the writer thread".into(), message: e.to_string() })??;
        println!("stored {name}: {stored} bytes in {:.2} s", start.elapsed().as_secs_f64());
        Ok(stored)
    }

    async fn download(&self, name: String) -> RpcStream<Result<Blob, FileError>> {
        let path = match self.path_of(&name) {
            Ok(path) => path,
            Err(e) => return RpcStream::iter([Err(e)]),
        };
        let (tx, stream) = RpcStream::channel(CHUNKS_QUEUED);
        tokio::task::spawn_blocking(move || {
            let mut file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let _ = tx.blocking_send(Err(FileError::NotFound { name }));
                    return;
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(FileError::io(format_args!("opening {name}"), &e)));
                    return;
                }
            };
            let mut sent = 0u64;
            loop {
                let item = match read_chunk(&mut file) {
                    Ok(Some(chunk)) => Ok(chunk),
                    Ok(None) => break,
                    Err(e) => Err(FileError::io(format_args!("reading {name}"), &e)),
                };
                let failed = item.is_err();
                sent += item.as_ref().map_or(0, |c| c.len() as u64);
                // Fails once the client dropped the stream (or went away): stop reading.
                if tx.blocking_send(item).is_err() || failed {
                    return;
                }
            }
            println!("sent {name}: {sent} bytes");
        });
        stream
    }

    async fn peak_rss(&self) -> Option<u64> {
        peak_rss()
    }
}

/// Writes an upload's chunks to `temp`; on `Commit` with exactly `size` bytes, renames it
/// to `dest`. Anything else removes `temp` (the file is closed first, as Windows requires).
fn write_upload(
    name: &str,
    temp: &Path,
    dest: &Path,
    size: u64,
    mut chunks: mpsc::Receiver<ToDisk>,
) -> Result<u64, FileError> {
    let mut file = std::fs::File::create(temp).map_err(|e| FileError::io(format_args!("creating {name}"), &e))?;
    let mut written = 0u64;
    let mut committed = false;
    let mut outcome = Ok(());
    while let Some(msg) = chunks.blocking_recv() {
        match msg {
            ToDisk::Chunk(chunk) => {
                written += chunk.len() as u64;
                if let Err(e) = file.write_all(&chunk) {
                    outcome = Err(FileError::io(format_args!("writing {name}"), &e));
                    break;
                }
            }
            ToDisk::Commit => {
                committed = true;
                break;
            }
        }
    }
    drop(file);
    let outcome = match outcome {
        Ok(()) if !committed => Err(FileError::Io { what: format!("uploading {name}"), message: "cancelled".into() }),
        Ok(()) if written != size => Err(FileError::WrongSize { name: name.to_owned(), expected: size, got: written }),
        Ok(()) => std::fs::rename(temp, dest).map_err(|e| FileError::io(format_args!("storing {name}"), &e)),
        Err(e) => Err(e),
    };
    if outcome.is_err() {
        let _ = std::fs::remove_file(temp);
    }
    outcome.map(|()| written)
}

/// The next chunk of `from`: [`CHUNK`] bytes, fewer only at the end; `None` at the end.
fn read_chunk(from: &mut impl Read) -> io::Result<Option<Blob>> {
    let mut buf = vec![0; CHUNK];
    let mut filled = 0;
    while filled < CHUNK {
        match from.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok((filled > 0).then(|| Blob::from(buf)))
}

async fn serve(name: &str, dir: &Path, on_eof: OnStdinEof) -> Result<(), Box<dyn Error>> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let files = Dir { root: dir.to_owned(), uploads: AtomicU64::new(0) };
    let server = Server::new(FilesServer::new(files)).bind(name)?;
    println!("listening on {}, serving {}", server.name(), dir.display());
    let shutdown = server.shutdown_handle();
    tokio::spawn(async move {
        let why = stop_requested(on_eof).await;
        println!("{why}: shutting down (transfers in flight may finish)");
        shutdown.shutdown();
    });
    server.run().await?;
    println!("stopped");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The client

fn client_config() -> ClientConfig {
    // Transfers (stream calls) have no deadline; this only bounds the wait for a busy
    // server, and `peak_rss`.
    ClientConfig::default().connect_timeout(Duration::from_secs(20))
}

/// Uploads the first `size` bytes of `source` as `name`; returns the bytes stored.
///
/// `source` is read on a blocking thread, a chunk at a time, as fast as the pipe takes it.
async fn upload_from(
    client: &FilesClient,
    name: &str,
    size: u64,
    source: impl Read + Send + 'static,
) -> Result<u64, FileError> {
    let (tx, data) = RpcStream::channel(CHUNKS_QUEUED);
    let (read_failed, failure) = oneshot::channel();
    let what = format!("reading the file to upload as {name}");
    tokio::task::spawn_blocking(move || {
        let mut source = source.take(size);
        loop {
            match read_chunk(&mut source) {
                Ok(Some(chunk)) => {
                    // Fails once the call is over (the server refused it, ...).
                    if tx.blocking_send(chunk).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = read_failed.send(FileError::io(&what, &e));
                    return;
                }
            }
        }
    });
    tokio::select! {
        biased;
        // A stream argument has no way to end with an error: on a read error, dropping the
        // call cancels it on the server, which then discards the partial file. (Even if the
        // stream's end got there first, the size check would refuse the short file.)
        Ok(e) = failure => Err(e),
        stored = client.upload(name.to_owned(), size, data) => stored,
    }
}

/// Downloads `name` into `sink`, written on a blocking thread; returns the bytes received
/// and the sink.
async fn download_to<W: Write + Send + 'static>(
    client: &FilesClient,
    name: &str,
    mut sink: W,
) -> Result<(u64, W), FileError> {
    let mut chunks = client.download(name.to_owned()).await?;
    let (tx, mut rx) = mpsc::channel::<Blob>(CHUNKS_QUEUED);
    let writer = tokio::task::spawn_blocking(move || {
        while let Some(chunk) = rx.blocking_recv() {
            sink.write_all(&chunk)?;
        }
        sink.flush()?;
        Ok::<_, io::Error>(sink)
    });
    let mut received = 0u64;
    while let Some(item) = chunks.next().await {
        let chunk = item??;
        received += chunk.len() as u64;
        if tx.send(chunk).await.is_err() {
            break; // The writer failed; its error is below.
        }
    }
    drop(tx);
    let what = format!("writing the download of {name}");
    let sink = writer.await.map_err(|e| FileError::Io { what: what.clone(), message: e.to_string() })?;
    let sink = sink.map_err(|e| FileError::io(&what, &e))?;
    Ok((received, sink))
}

async fn connect(name: &str) -> Result<FilesClient, RpcError> {
    FilesClient::connect_with(name, client_config()).await
}

async fn upload_file(pipe: &str, file: &Path) -> Result<(), Box<dyn Error>> {
    let remote =
        file.file_name().and_then(|n| n.to_str()).ok_or_else(|| format!("{} has no file name", file.display()))?;
    let source = std::fs::File::open(file).map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    let size = source.metadata()?.len();
    let client = connect(pipe).await?;
    let start = Instant::now();
    let stored = upload_from(&client, remote, size, source).await?;
    println!("uploaded {} as {remote}: {}", file.display(), rate(stored, start.elapsed()));
    Ok(())
}

async fn download_file(pipe: &str, remote: &str, dest: &Path) -> Result<(), Box<dyn Error>> {
    let mut part = dest.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let sink = std::fs::File::create(&part).map_err(|e| format!("cannot create {}: {e}", part.display()))?;
    let client = connect(pipe).await?;
    let start = Instant::now();
    match download_to(&client, remote, sink).await {
        Ok((received, file)) => {
            drop(file);
            std::fs::rename(&part, dest)
                .map_err(|e| format!("cannot rename {} to {}: {e}", part.display(), dest.display()))?;
            println!("downloaded {remote} to {}: {}", dest.display(), rate(received, start.elapsed()));
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            Err(e.into())
        }
    }
}

// ---------------------------------------------------------------------------------------
// The self-test

/// Bytes of the self-test's pattern, repeated block after block.
const BLOCK: usize = 64 * 1024;

/// A deterministic byte sequence that is cheap to make and to check (copies of one
/// pseudo-random block, each stamped with its own index in its first 8 bytes, so a lost,
/// repeated or reordered block shows as well as a changed byte).
#[derive(Clone)]
struct Pattern {
    block: Arc<[u8]>,
}

impl Pattern {
    fn new() -> Self {
        // splitmix64
        let mut state = 0x5eed_u64;
        let block = (0..BLOCK / 8)
            .flat_map(|_| {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (z ^ (z >> 31)).to_le_bytes()
            })
            .collect();
        Pattern { block }
    }

    /// Fills `out` with the pattern's bytes from offset `pos` on.
    fn fill(&self, pos: u64, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            let at = pos + done as u64;
            let (index, offset) = (at / BLOCK as u64, (at % BLOCK as u64) as usize);
            let n = (BLOCK - offset).min(out.len() - done);
            let dst = &mut out[done..done + n];
            dst.copy_from_slice(&self.block[offset..offset + n]);
            if offset < 8 {
                let stamp = index.to_le_bytes();
                let k = (8 - offset).min(n);
                dst[..k].copy_from_slice(&stamp[offset..offset + k]);
            }
            done += n;
        }
    }

    /// The pattern as an endless reader.
    fn reader(&self) -> impl Read + Send + 'static {
        struct Reader(Pattern, u64);
        impl Read for Reader {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.0.fill(self.1, buf);
                self.1 += buf.len() as u64;
                Ok(buf.len())
            }
        }
        Reader(self.clone(), 0)
    }
}

/// A sink that checks every byte written against the [`Pattern`].
struct Verifier {
    pattern: Pattern,
    pos: u64,
    expected: Vec<u8>,
}

impl Write for Verifier {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.expected.resize(buf.len(), 0);
        self.pattern.fill(self.pos, &mut self.expected);
        // Compare whole slices first (a memcmp); find the byte only when they differ.
        if buf != self.expected.as_slice()
            && let Some(i) = buf.iter().zip(&self.expected).position(|(a, b)| a != b)
        {
            let at = self.pos + i as u64;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("byte {at} differs from what was uploaded"),
            ));
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Removes the self-test's directory, however the test ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn self_test(size: u64) -> Result<(), Box<dyn Error>> {
    let pid = std::process::id();
    let pipe = format!("file-transfer-self-test-{pid}");
    let dir = std::env::temp_dir().join(format!("file-transfer-self-test-{pid}"));
    let _cleanup = RemoveOnDrop(dir.clone());

    let exe = std::env::current_exe()?;
    let mut server = tokio::process::Command::new(&exe)
        .args(["--serve", &pipe])
        .arg(&dir)
        .arg("--stop-on-eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let mut server_out = BufReader::new(server.stdout.take().expect("stdout is piped")).lines();
    match tokio::time::timeout(CHILD_TIMEOUT, server_out.next_line()).await {
        Ok(Ok(Some(line))) if line.starts_with("listening on") => println!("[server] {line}"),
        other => return Err(format!("the server did not start: {other:?}").into()),
    }
    let forward = tokio::spawn(async move {
        while let Ok(Some(line)) = server_out.next_line().await {
            println!("[server] {line}");
        }
    });

    let client = connect(&pipe).await?;
    println!("self-test: {} each way through pipe {pipe}, in {} KiB chunks", size_text(size), CHUNK / 1024);
    println!("client pid {pid}, server pid {}", client.channel().peer().server_pid);
    let pattern = Pattern::new();
    let name = "self-test.bin";

    let start = Instant::now();
    let stored = upload_from(&client, name, size, pattern.reader()).await?;
    println!("upload:   {}", rate(stored, start.elapsed()));

    let start = Instant::now();
    let verifier = Verifier { pattern, pos: 0, expected: Vec::new() };
    let (received, verifier) = download_to(&client, name, verifier).await?;
    let elapsed = start.elapsed();
    if received != size || verifier.pos != size {
        return Err(format!("downloaded {received} bytes, expected {size}").into());
    }
    println!("download: {}, every byte verified", rate(received, elapsed));

    let server_rss = client.peak_rss().await?;
    println!("peak RSS: client {}, server {}", rss_text(peak_rss()), rss_text(server_rss));
    drop(client);

    if let Some(mut stdin) = server.stdin.take() {
        stdin.write_all(b"shutdown\n").await?;
        stdin.flush().await?;
    }
    let status = tokio::time::timeout(CHILD_TIMEOUT, server.wait()).await.map_err(|_| "the server did not stop")??;
    forward.await?;
    if !status.success() {
        return Err(format!("the server exited with {status}").into());
    }
    println!("self-test passed");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Small things

/// This process's peak resident set size in bytes (`VmHWM`), where the OS tells.
fn peak_rss() -> Option<u64> {
    if cfg!(target_os = "linux") {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    } else {
        None
    }
}

fn rss_text(rss: Option<u64>) -> String {
    rss.map_or_else(|| "n/a".to_owned(), |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64))
}

fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b => format!("{b} bytes"),
    }
}

fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    format!("{} in {secs:.2} s = {:.0} MiB/s", size_text(bytes), bytes as f64 / (1 << 20) as f64 / secs)
}

/// `4096`, `512K`, `32M`, `1G` (also `KiB`, `MiB`, `GiB`; binary units).
fn parse_size(text: &str) -> Option<u64> {
    let upper = text.to_ascii_uppercase();
    let digits = upper.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let shift = match &upper[digits.len()..] {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["--serve", name, dir] => serve(name, Path::new(dir), OnStdinEof::KeepServing).await,
        ["--serve", name, dir, "--stop-on-eof"] => serve(name, Path::new(dir), OnStdinEof::Shutdown).await,
        ["--upload", name, file] => upload_file(name, Path::new(file)).await,
        ["--download", name, remote, dest] => download_file(name, remote, Path::new(dest)).await,
        ["--self-test"] => self_test(SELF_TEST_SIZE).await,
        ["--self-test", size] => match parse_size(size) {
            Some(size) => self_test(size).await,
            None => Err(format!("--self-test: {size:?} is not a size (4096, 512K, 32M, 1G, ...)").into()),
        },
        ["-h" | "--help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(64);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("file-transfer: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("32M"), Some(32 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("1T"), None);
        assert_eq!(parse_size("lots"), None);
    }

    #[test]
    fn the_pattern_reads_the_same_in_any_pieces_and_its_blocks_differ() {
        let p = Pattern::new();
        let mut whole = vec![0; 3 * BLOCK + 5];
        p.fill(0, &mut whole);
        let mut pieces = vec![0; whole.len()];
        let mut pos = 0;
        for n in [1, 7, 8, 9, BLOCK, 100, 3 * BLOCK] {
            let end = (pos + n).min(whole.len());
            p.fill(pos as u64, &mut pieces[pos..end]);
            pos = end;
        }
        assert_eq!(whole, pieces);
        assert_ne!(whole[..BLOCK], whole[BLOCK..2 * BLOCK]);
        assert_eq!(whole[8..BLOCK], whole[BLOCK + 8..2 * BLOCK]);
    }

    #[test]
    fn the_verifier_names_the_first_wrong_byte() {
        let p = Pattern::new();
        let mut data = vec![0; 2 * BLOCK];
        p.fill(0, &mut data);
        let mut v = Verifier { pattern: p.clone(), pos: 0, expected: Vec::new() };
        v.write_all(&data[..BLOCK + 3]).unwrap();
        data[BLOCK + 10] ^= 1;
        let err = v.write_all(&data[BLOCK + 3..]).unwrap_err();
        assert!(err.to_string().contains(&format!("byte {}", BLOCK + 10)), "{err}");
    }

    #[test]
    fn remote_names_are_plain_file_names() {
        let dir = Dir { root: PathBuf::from("root"), uploads: AtomicU64::new(0) };
        assert_eq!(dir.path_of("a-b_c.1").unwrap(), Path::new("root").join("a-b_c.1"));
        for bad in ["", ".hidden", "../x", "a/b", "a\\b", "c:x", &"x".repeat(129)] {
            assert!(matches!(dir.path_of(bad), Err(FileError::InvalidName { .. })), "{bad:?}");
        }
    }
}

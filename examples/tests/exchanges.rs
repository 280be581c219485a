//! The streaming and one-way examples as real processes, judged by their output:
//! `push-lines`, `wq watch` / `wq log`, `file-transfer`, `pubsub --demo`, and `evolution`
//! (a client of an older trait version).
//!
//! Like `smoke.rs`: portable (they also run under wine), no signals (servers stop through
//! their stdin, followers are killed only to simulate a crash), no sleeps: every step waits
//! for the line that says the previous one happened, under a watchdog. Pipe names carry the
//! test process's pid and a per-test tag.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const PUSH_LINES: &str = env!("CARGO_BIN_EXE_push-lines");
const WQ: &str = env!("CARGO_BIN_EXE_wq");
const WQ_SERVER: &str = env!("CARGO_BIN_EXE_work-queue-server");
const FILE_TRANSFER: &str = env!("CARGO_BIN_EXE_file-transfer");
const PUBSUB: &str = env!("CARGO_BIN_EXE_pubsub");
const EVOLUTION: &str = env!("CARGO_BIN_EXE_evolution");

/// Longest wait for any one line, and longest any short-lived process may run.
const WATCHDOG: Duration = Duration::from_secs(60);

/// Longest the file-transfer self-test may run (1 GiB each way, in a debug build, on a
/// busy machine).
const SELF_TEST_WATCHDOG: Duration = Duration::from_secs(600);

fn unique_pipe(tag: &str) -> String {
    format!("ex-{}-{tag}", std::process::id())
}

/// A process that ran to completion.
#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stdout: Vec<String>,
    stderr: Vec<String>,
}

impl Finished {
    #[track_caller]
    fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.status.code(), Some(code), "{self:#?}");
        self
    }

    #[track_caller]
    fn assert_stdout(&self, text: &str) -> &Self {
        assert!(self.stdout.iter().any(|l| l.contains(text)), "stdout lacks {text:?}: {self:#?}");
        self
    }

    #[track_caller]
    fn assert_stderr(&self, text: &str) -> &Self {
        assert!(self.stderr.iter().any(|l| l.contains(text)), "stderr lacks {text:?}: {self:#?}");
        self
    }
}

/// A running process whose output lines can be waited for one by one. Killed on drop.
struct Proc {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
    /// Every line read so far, for failure messages and for [`Proc::wait`].
    stdout: Vec<String>,
    stderr: Vec<String>,
}

fn lines_of(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || BufReader::new(from).lines().map_while(Result::ok).try_for_each(|l| tx.send(l)));
    rx
}

impl Proc {
    fn start(exe: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {exe}: {e}"));
        let out = lines_of(child.stdout.take().unwrap());
        let err = lines_of(child.stderr.take().unwrap());
        let what = format!("{} {args:?}", exe.rsplit(['/', '\\']).next().unwrap_or(exe));
        Proc { what, stdin: child.stdin.take(), child, out, err, stdout: Vec::new(), stderr: Vec::new() }
    }

    /// The next line on stdout.
    #[track_caller]
    fn next_stdout(&mut self) -> String {
        match self.out.recv_timeout(WATCHDOG) {
            Ok(line) => {
                self.stdout.push(line.clone());
                line
            }
            Err(e) => panic!("{}: no stdout line ({e:?}); so far: {:#?} {:#?}", self.what, self.stdout, self.stderr),
        }
    }

    /// Reads stdout until a line satisfies `want`; returns it.
    #[track_caller]
    fn wait_stdout(&mut self, want: impl Fn(&str) -> bool) -> String {
        loop {
            let line = self.next_stdout();
            if want(&line) {
                return line;
            }
        }
    }

    /// Reads stderr until a line satisfies `want`; returns it.
    #[track_caller]
    fn wait_stderr(&mut self, want: impl Fn(&str) -> bool) -> String {
        loop {
            match self.err.recv_timeout(WATCHDOG) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(e) => {
                    panic!("{}: no stderr line ({e:?}); so far: {:#?} {:#?}", self.what, self.stdout, self.stderr)
                }
            }
        }
    }

    fn write_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{line}").expect("write to the process's stdin");
        stdin.flush().expect("flush the process's stdin");
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit (killing it past `watchdog`), then collects the rest
    /// of its output.
    fn wait_within(mut self, watchdog: Duration) -> Finished {
        let deadline = Instant::now() + watchdog;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "{} ran longer than {watchdog:?}; killed it. Output: {:#?} {:#?}",
                    self.what, self.stdout, self.stderr
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        // The pipes close when the process (and anything it started) is gone.
        let mut stdout = std::mem::take(&mut self.stdout);
        let mut stderr = std::mem::take(&mut self.stderr);
        stdout.extend(std::iter::from_fn(|| self.out.recv_timeout(WATCHDOG).ok()));
        stderr.extend(std::iter::from_fn(|| self.err.recv_timeout(WATCHDOG).ok()));
        Finished { status, stdout, stderr }
    }

    fn wait(self) -> Finished {
        self.wait_within(WATCHDOG)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Runs `exe args` to completion with stdin closed.
fn run(exe: &str, args: &[&str]) -> Finished {
    let mut p = Proc::start(exe, args);
    p.close_stdin();
    p.wait()
}

// ---------------------------------------------------------------------------------------
// push-lines

fn push_server(tag: &str) -> (Proc, String) {
    let pipe = unique_pipe(tag);
    let mut server = Proc::start(PUSH_LINES, &["--serve", &pipe]);
    let first = server.next_stdout();
    assert!(first.starts_with(&format!("listening on {pipe}")), "{first}");
    (server, pipe)
}

/// Starts a follower and waits until the server has it (its welcome arrived).
fn follower(server: &mut Proc, pipe: &str, n: u64) -> Proc {
    let mut f = Proc::start(PUSH_LINES, &["--follow", pipe]);
    let welcome = f.wait_stderr(|l| l.starts_with("following"));
    assert!(welcome.contains(&format!("as follower {n} ({n} following)")), "{welcome}");
    server.wait_stdout(|l| l == format!("follower {n} joined ({n} following)"));
    f
}

#[test]
fn push_lines_followers_get_every_line_in_order_and_end_when_the_input_does() {
    let (mut server, pipe) = push_server("push");
    let mut a = follower(&mut server, &pipe, 1);
    let mut b = follower(&mut server, &pipe, 2);

    let lines = ["one", "two words", "  spaces kept  ", "ünïcødé ✓", ""];
    for line in lines {
        server.write_line(line);
    }
    for f in [&mut a, &mut b] {
        let got: Vec<String> = lines.iter().map(|_| f.next_stdout()).collect();
        assert_eq!(got, lines, "{}", f.what);
    }

    // A follower that goes away is dropped from the list; the others go on.
    b.kill();
    server.wait_stdout(|l| l == "follower 2 left (1 following)");
    server.write_line("after 2 left");
    assert_eq!(a.next_stdout(), "after 2 left");

    // The end of the server's input ends the follower's stream normally, then the server.
    server.close_stdin();
    let a = a.wait();
    a.assert_code(0).assert_stderr("the server's input ended; 6 line(s) received");
    let mut all = lines.to_vec();
    all.push("after 2 left");
    assert_eq!(a.stdout, all, "{a:#?}");
    let server = server.wait();
    server
        .assert_code(0)
        .assert_stdout("input ended after 6 line(s): ending 1 follower stream(s)")
        .assert_stdout("every follower has every line: shutting down")
        .assert_stdout("stopped");
}

#[test]
fn push_lines_followers_of_a_server_that_dies_say_so() {
    let (mut server, pipe) = push_server("push-dies");
    let mut a = follower(&mut server, &pipe, 1);
    server.write_line("last words");
    assert_eq!(a.next_stdout(), "last words");
    server.kill();
    a.wait().assert_code(2).assert_stderr("1 line(s) received");
}

#[test]
fn push_lines_without_input_stops_at_once_and_explains_usage() {
    let pipe = unique_pipe("push-empty");
    run(PUSH_LINES, &["--serve", &pipe])
        .assert_code(0)
        .assert_stdout("input ended after 0 line(s)")
        .assert_stdout("stopped");
    run(PUSH_LINES, &[]).assert_code(64).assert_stderr("usage: push-lines");
}

// ---------------------------------------------------------------------------------------
// wq watch, wq log

fn wq_server(tag: &str) -> (Proc, String) {
    let pipe = unique_pipe(tag);
    let mut server = Proc::start(WQ_SERVER, &["--pipe", &pipe]);
    let first = server.next_stdout();
    assert!(first.starts_with(&format!("listening on {pipe}")), "{first}");
    (server, pipe)
}

fn wq(pipe: &str, args: &[&str]) -> Finished {
    let mut all = vec!["--pipe", pipe];
    all.extend_from_slice(args);
    run(WQ, &all)
}

#[test]
fn wq_watch_prints_each_event_as_it_happens() {
    let (mut server, pipe) = wq_server("watch");
    let mut watch = Proc::start(WQ, &["--pipe", &pipe, "watch", "jobs"]);
    assert_eq!(watch.next_stdout(), "jobs: now: does not exist");

    // Each event is read before the next command runs: they arrive as they happen. The
    // other queue's changes are not this watch's events (the next line would show them).
    let steps: [(&[&str], Option<&str>); 9] = [
        (&["create", "jobs"], Some("jobs: created")),
        (&["add", "jobs", "resize", "photo-1.jpg"], Some("jobs: added item 1: resize \"photo-1.jpg\"")),
        (&["create", "other"], None),
        (&["add", "other", "x"], None),
        (&["start", "jobs"], Some("jobs: started")),
        (&["take", "jobs"], Some("jobs: took item 1")),
        (&["add", "jobs", "ping"], Some("jobs: added item 3: ping \"\"")),
        (&["stop", "jobs"], Some("jobs: stopped")),
        (&["delete", "jobs"], Some("jobs: deleted (1 pending item(s) discarded)")),
    ];
    for (args, event) in steps {
        wq(&pipe, args).assert_code(0);
        if let Some(event) = event {
            assert_eq!(watch.next_stdout(), event, "after wq {args:?}");
        }
    }

    // A second watcher starts from the queue's current state.
    wq(&pipe, &["create", "jobs"]).assert_code(0);
    assert_eq!(watch.next_stdout(), "jobs: created");
    let mut second = Proc::start(WQ, &["--pipe", &pipe, "watch", "jobs"]);
    assert_eq!(second.next_stdout(), "jobs: now: jobs (stopped, 0 pending, 0 taken)");

    // The server's shutdown ends both watches, which say so.
    server.write_line("shutdown");
    for w in [watch, second] {
        w.wait().assert_code(0).assert_stdout("watch ended: the server is shutting down");
    }
    server.wait().assert_code(0).assert_stdout("stopped;");
}

#[test]
fn wq_log_sends_one_way_lines_the_server_prints_in_order() {
    let (mut server, pipe) = wq_server("log");
    wq(&pipe, &["log", "deploy", "started"]).assert_code(0).assert_stdout("logged (one-way");
    wq(&pipe, &["log", "--", "--second", "line"]).assert_code(0);
    assert_eq!(server.wait_stdout(|l| l.starts_with("log: ")), "log: deploy started");
    assert_eq!(server.wait_stdout(|l| l.starts_with("log: ")), "log: --second line");
    wq(&pipe, &["log"]).assert_code(64).assert_stderr("`log` needs the text");
    server.write_line("shutdown");
    server.wait().assert_code(0);
}

// ---------------------------------------------------------------------------------------
// file-transfer

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("pipe-rpc-examples-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn file_transfer_uploads_and_downloads_files_by_hand() {
    let tmp = TempDir::new("ft");
    let served = tmp.0.join("served");
    let pipe = unique_pipe("ft");
    let mut server = Proc::start(FILE_TRANSFER, &["--serve", &pipe, served.to_str().unwrap()]);
    assert!(server.next_stdout().starts_with(&format!("listening on {pipe}")));

    // Several chunks and a partial one.
    let content: Vec<u8> = (0..(3 << 20) + 12_345u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let local = tmp.0.join("photo.raw");
    std::fs::write(&local, &content).unwrap();
    run(FILE_TRANSFER, &["--upload", &pipe, local.to_str().unwrap()])
        .assert_code(0)
        .assert_stdout("uploaded")
        .assert_stdout("as photo.raw");
    assert_eq!(std::fs::read(served.join("photo.raw")).unwrap(), content);

    let dest = tmp.0.join("back.raw");
    run(FILE_TRANSFER, &["--download", &pipe, "photo.raw", dest.to_str().unwrap()])
        .assert_code(0)
        .assert_stdout("downloaded photo.raw");
    assert_eq!(std::fs::read(&dest).unwrap(), content);

    // Typed errors, and nothing left behind by failures.
    let missing = tmp.0.join("missing.raw");
    run(FILE_TRANSFER, &["--download", &pipe, "nope.raw", missing.to_str().unwrap()])
        .assert_code(1)
        .assert_stderr("no file named `nope.raw` on the server");
    assert!(!missing.exists() && !tmp.0.join("missing.raw.part").exists());
    let hidden = tmp.0.join(".hidden");
    std::fs::write(&hidden, b"x").unwrap();
    run(FILE_TRANSFER, &["--upload", &pipe, hidden.to_str().unwrap()])
        .assert_code(1)
        .assert_stderr("invalid file name \".hidden\"");
    let names: Vec<_> = std::fs::read_dir(&served).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["photo.raw"], "only the uploaded file is in the server's directory");

    server.write_line("shutdown");
    server.wait().assert_code(0).assert_stdout("stored photo.raw").assert_stdout("stopped");
}

#[test]
fn file_transfer_self_test_moves_its_size_both_ways_in_bounded_memory() {
    // Natively the real thing; under wine (Windows binaries) a smaller size, as wine's
    // pipes are much slower.
    let size = if cfg!(windows) { "32M" } else { "1G" };
    let mut p = Proc::start(FILE_TRANSFER, &["--self-test", size]);
    p.close_stdin();
    let out = p.wait_within(SELF_TEST_WATCHDOG);
    out.assert_code(0).assert_stdout("every byte verified").assert_stdout("self-test passed");
    for line in out
        .stdout
        .iter()
        .filter(|l| l.starts_with("upload:") || l.starts_with("download:") || l.starts_with("peak RSS"))
    {
        // Shown with `--nocapture`.
        println!("{line}");
    }
    let rss = out.stdout.iter().find(|l| l.starts_with("peak RSS: ")).unwrap_or_else(|| panic!("{out:#?}"));
    if cfg!(target_os = "linux") {
        // "peak RSS: client 9.0 MiB, server 8.9 MiB"
        let mib: Vec<f64> = rss
            .split_whitespace()
            .zip(rss.split_whitespace().skip(1))
            .filter(|(_, unit)| unit.trim_end_matches(',') == "MiB")
            .map(|(n, _)| n.parse().unwrap())
            .collect();
        assert_eq!(mib.len(), 2, "{rss}");
        assert!(mib.iter().all(|&m| m > 0.0 && m < 64.0), "peak RSS over 64 MiB moving {size}: {rss}");
    } else {
        assert_eq!(rss, "peak RSS: client n/a, server n/a");
    }
}

// ---------------------------------------------------------------------------------------
// pubsub

#[test]
fn pubsub_demo_runs_every_party_as_a_process_and_each_subscriber_gets_its_topics() {
    let demo = run(PUBSUB, &["--demo"]);
    demo.assert_code(0);
    let summary =
        demo.stdout.iter().position(|l| l == "What each subscriber received:").unwrap_or_else(|| panic!("{demo:#?}"));
    assert_eq!(
        demo.stdout[summary + 1..summary + 8],
        [
            "subscriber 1 (calculus, cool shorts) received 2 message(s):",
            "    calculus: sqrt(2)",
            "    cool shorts: hello to all",
            "subscriber 2 (cool shorts, history) received 3 message(s):",
            "    cool shorts: hello to all",
            "    history: napoleon",
            "    cool shorts: hello to who?",
        ],
        "{demo:#?}"
    );
    // The parties really were processes of their own, and the broker forgot subscriber 1.
    for text in [
        "[broker] listening on pubsub-demo-",
        "[subscriber 1] stdin closed: leaving; 2 message(s) received",
        "[broker] a subscriber left `calculus` (0 now)",
        "[publisher] published to `cool shorts`: hello to who? (1 subscriber(s))",
        "[subscriber 2] the broker ended the subscriptions; 3 message(s) received",
        "demo complete",
    ] {
        demo.assert_stdout(text);
    }
}

// ---------------------------------------------------------------------------------------
// evolution

/// A version-1 client of a version-2 server: the methods both have work though every one
/// sits at another place (and a stream's items at another again), the removed and the
/// changed one are refused by name. (The server serves until Ctrl-C: it is killed when the
/// test is done with it.)
#[test]
fn evolution_a_v1_client_calls_moved_methods_and_is_refused_by_name_for_removed_and_changed_ones() {
    let pipe = unique_pipe("evolution");
    let mut server = Proc::start(EVOLUTION, &["--serve", &pipe]);
    let first = server.next_stdout();
    assert!(first.starts_with(&format!("listening on {pipe}")), "{first}");
    let client = run(EVOLUTION, &["--v1", &pipe]);
    client
        .assert_code(0)
        .assert_stdout("add: ok (3 bolts)")
        .assert_stdout("count: ok (3 bolts)")
        .assert_stdout("restock: ok (2 items added)")
        .assert_stdout("events: ok (bolts +3 = 3; nuts +10 = 10; bolts +2 = 5)")
        .assert_stdout("price: refused: `price` cannot be called on this server: the server does not have this method")
        .assert_stdout("list: refused: `list` cannot be called on this server: the server's version of this method has other types");
    server.kill();
}

//! Smoke tests: each binary runs as a real process and is judged by its output.
//!
//! Portable on purpose (they also run under wine): no signals, so servers are stopped
//! with `shutdown` on stdin; every process runs under a watchdog; pipe names carry the
//! test process's pid and a per-test tag, so parallel tests and runs never collide.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const DEMO: &str = env!("CARGO_BIN_EXE_demo");
const SERVER: &str = env!("CARGO_BIN_EXE_work-queue-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_work-queue-client");
const WQ: &str = env!("CARGO_BIN_EXE_wq");
const PLUGIN_HOST: &str = env!("CARGO_BIN_EXE_plugin-host");

/// Longest any one process may run before it is killed and the test fails.
const WATCHDOG: Duration = Duration::from_secs(60);

fn unique_pipe(tag: &str) -> String {
    format!("wq-smoke-{}-{tag}", std::process::id())
}

/// A process that ran to completion.
#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    #[track_caller]
    fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.status.code(), Some(code), "{self:#?}");
        self
    }

    #[track_caller]
    fn assert_stdout(&self, text: &str) -> &Self {
        assert!(self.stdout.contains(text), "stdout lacks {text:?}: {self:#?}");
        self
    }

    #[track_caller]
    fn assert_stderr(&self, text: &str) -> &Self {
        assert!(self.stderr.contains(text), "stderr lacks {text:?}: {self:#?}");
        self
    }
}

/// Reads all of `from` on a thread, so a chatty child never blocks on a full pipe.
fn read_all(mut from: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        let _ = from.read_to_string(&mut text);
        text
    })
}

/// Waits for `child`, killing it if it outlives the watchdog.
fn wait_with_watchdog(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + WATCHDOG;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} ran longer than {WATCHDOG:?}; killed it");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `exe args` to completion, with no stdin.
fn run(exe: &str, args: &[&str]) -> Finished {
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {exe}: {e}"));
    let stdout = read_all(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());
    let status = wait_with_watchdog(&mut child, &format!("{exe} {args:?}"));
    Finished { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

/// A running `work-queue-server`, killed on drop if the test did not stop it.
struct ServerProcess {
    child: Child,
    pipe: String,
    lines: mpsc::Receiver<String>,
}

impl ServerProcess {
    /// Starts a server on a unique pipe and waits until it listens.
    fn start(tag: &str) -> Self {
        let pipe = unique_pipe(tag);
        let mut child = Command::new(SERVER)
            .args(["--pipe", &pipe])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start work-queue-server");
        let (tx, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        thread::spawn(move || stdout.lines().map_while(Result::ok).try_for_each(|l| tx.send(l)));
        let server = ServerProcess { child, pipe, lines };
        let first = server.lines.recv_timeout(WATCHDOG).expect("the server said nothing");
        assert!(first.starts_with(&format!("listening on {}", server.pipe)), "{first}");
        server
    }

    /// Runs `wq --pipe <this server> args`.
    fn wq(&self, args: &[&str]) -> Finished {
        let mut all = vec!["--pipe", &self.pipe];
        all.extend_from_slice(args);
        run(WQ, &all)
    }

    /// Asks for a graceful shutdown; returns the exit status and the rest of the output.
    fn shutdown(&mut self) -> (ExitStatus, Vec<String>) {
        let mut stdin = self.child.stdin.take().expect("stdin is piped");
        stdin.write_all(b"shutdown\n").expect("write to the server's stdin");
        drop(stdin);
        let status = wait_with_watchdog(&mut self.child, "work-queue-server");
        (status, self.lines.try_iter().collect())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn demo_runs_client_and_server_as_two_processes() {
    let demo = run(DEMO, &[]);
    demo.assert_code(0);
    for text in [
        "[server] listening on wq-demo-",
        "(a separate process)",
        "-> jobs (stopped, 0 pending, 0 taken)",
        "ERROR already-exists: queue `jobs` already exists",
        "ERROR stopped: queue `jobs` is stopped",
        "item 1: resize \"photo-1.jpg\"",
        "deadline exceeded: no response within 50 ms",
        "100 distinct ids",
        "stream open; first item: now: does not exist",
        "-> took item",
        "-> deleted (0 pending item(s) discarded)",
        "[server] log: session: the watch step passed",
        "[server] `shutdown` on stdin: shutting down",
        "[server] stopped;",
        "demo complete",
    ] {
        demo.assert_stdout(text);
    }
}

#[test]
fn wq_drives_a_server_by_hand() {
    let mut server = ServerProcess::start("wq");
    server.wq(&["list"]).assert_code(0).assert_stdout("no queues");
    server.wq(&["create", "jobs"]).assert_code(0).assert_stdout("created jobs (stopped, 0 pending, 0 taken)");
    server.wq(&["create", "jobs"]).assert_code(1).assert_stderr("wq: queue `jobs` already exists");
    server.wq(&["create", "bad name"]).assert_code(1).assert_stderr("invalid queue name");
    server.wq(&["add", "jobs", "resize", "photo-1.jpg"]).assert_code(0).assert_stdout("added item 1 to jobs");
    server.wq(&["take", "jobs"]).assert_code(1).assert_stderr("queue `jobs` is stopped");
    server.wq(&["start", "jobs"]).assert_code(0).assert_stdout("started jobs (running, 1 pending, 0 taken)");
    server.wq(&["take", "jobs", "--wait-ms", "1000"]).assert_code(0).assert_stdout("item 1: resize \"photo-1.jpg\"");
    server.wq(&["take", "jobs", "--wait-ms", "50"]).assert_code(0).assert_stdout("no work in jobs (waited 50 ms)");
    let list = server.wq(&["list"]);
    list.assert_code(0);
    let rows: Vec<Vec<&str>> = list.stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows, [vec!["NAME", "STATE", "PENDING", "TAKEN"], vec!["jobs", "running", "0", "1"]], "{list:#?}");
    server.wq(&["delete", "jobs"]).assert_code(0).assert_stdout("deleted jobs");
    server.wq(&["delete", "jobs"]).assert_code(1).assert_stderr("no queue named `jobs`");

    let (status, rest) = server.shutdown();
    assert!(status.success(), "{status}: {rest:?}");
    assert!(rest.iter().any(|l| l.starts_with("`shutdown` on stdin")), "{rest:?}");
    assert!(rest.iter().any(|l| l.starts_with("stopped;")), "{rest:?}");
}

#[test]
fn work_queue_client_runs_its_session_twice() {
    let mut server = ServerProcess::start("client");
    for _ in 0..2 {
        run(CLIENT, &["--pipe", &server.pipe])
            .assert_code(0)
            .assert_stdout("(a separate process)")
            .assert_stdout("session complete");
    }
    assert!(server.shutdown().0.success());
}

#[test]
fn a_second_server_on_the_same_pipe_is_refused() {
    if pipe_rpc_tests::skip_under_wine("wine does not enforce FILE_FLAG_FIRST_PIPE_INSTANCE, so a second server binds")
    {
        return;
    }
    let mut server = ServerProcess::start("twice");
    run(SERVER, &["--pipe", &server.pipe]).assert_code(1).assert_stderr("work-queue-server: cannot listen");
    // The first one is unharmed.
    server.wq(&["list"]).assert_code(0);
    assert!(server.shutdown().0.success());
}

#[test]
fn wq_without_a_server_says_so_and_exits_2() {
    let pipe = unique_pipe("nobody");
    let start = Instant::now();
    // A long timeout: a server that is not there is reported at once, not after it.
    let out = run(WQ, &["--pipe", &pipe, "--timeout-ms", "30000", "list"]);
    out.assert_code(2).assert_stderr("server not running").assert_stderr(&pipe).assert_stderr("nothing exists");
    out.assert_stderr(&format!("start one with `work-queue-server --pipe {pipe}`"));
    assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());
}

#[test]
fn wq_explains_its_usage() {
    run(WQ, &[]).assert_code(64).assert_stderr("wq: no command given").assert_stderr("usage: wq");
    run(WQ, &["--help"]).assert_code(0).assert_stdout("usage: wq").assert_stdout("take QUEUE [--wait-ms N]");
}

#[test]
fn plugin_host_calls_its_plugin_child_and_sees_it_crash_with_its_exit_code() {
    let out = run(PLUGIN_HOST, &[]);
    out.assert_code(0)
        .assert_stdout("plugin: text-tools")
        .assert_stdout("Upper(\"hello, plugin\") = \"HELLO, PLUGIN\"")
        .assert_stdout("Double(\"21\") = \"42\"")
        .assert_stdout("Double(\"x\") failed in the plugin")
        .assert_stdout("word 4: processes")
        .assert_stdout("(exit code Some(3))")
        .assert_stdout("done: one host, one plugin process");
    // The plugin's pid from the spawn is the one it reports itself.
    let started = out.stdout.lines().find_map(|l| l.strip_prefix("started the plugin as pid ")).unwrap();
    assert!(out.stdout.contains(&format!("(pid {started})")), "{out:#?}");
}

#[test]
fn the_plugin_alone_says_it_has_no_parent() {
    run(PLUGIN_HOST, &["--plugin"]).assert_code(2).assert_stderr("no pipe to a parent process");
}

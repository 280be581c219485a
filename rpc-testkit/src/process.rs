//! The parent's side: start a server process, wait until it is ready, and tear it down,
//! files included, however the test ends.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rpc_core::PipeName;
use tokio::sync::mpsc;

use crate::child::{ARG_SEP, ARGS_VAR, ENTRY_VAR, NAME_VAR, READY, SHUTTING_DOWN, WATCHDOG_VAR};
use crate::name::SocketFiles;

/// How long a server may take to say it is ready, by default.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a server process may live, by default, before the watchdog kills it: longer
/// than any test should take, so that it only fires for a test that hung.
pub const DEFAULT_WATCHDOG: Duration = Duration::from_secs(120);

/// What to start: this test binary re-run for an entry test, or another program.
#[derive(Clone, Debug)]
enum Program {
    ThisBinary { entry: String },
    Path { path: PathBuf, name_arg: NameArg },
}

/// How a [`ServerCommand::program`] is told the pipe name.
#[derive(Clone, Debug)]
enum NameArg {
    /// As its first argument.
    First,
    /// As the value of a flag before the other arguments: `--pipe NAME`.
    Flag(OsString),
    /// Not at all (it knows its name, or takes it from [`ServerCommand::env`]).
    Omit,
}

/// How the parent knows the server is ready.
#[derive(Clone, Debug)]
enum Ready {
    /// It prints this line on stdout once its pipe is bound.
    Line(String),
    /// Its pipe accepts a connection.
    Accepting,
}

/// Longest pause between two connects of [`ServerCommand::ready_when_accepting`].
const ACCEPTING_POLL_MAX: Duration = Duration::from_millis(20);
/// How much longer than the parent's watchdog a child of this binary gives itself, so that
/// the parent's (which says what happened) fires first.
const CHILD_WATCHDOG_SLACK: Duration = Duration::from_secs(5);

/// How to start a server process for a test. Build with [`this_binary`](Self::this_binary)
/// or [`program`](Self::program), then [`spawn`](Self::spawn) (async) or
/// [`spawn_blocking`](Self::spawn_blocking).
#[derive(Clone, Debug)]
#[must_use]
pub struct ServerCommand {
    program: Program,
    name: Option<PipeName>,
    args: Vec<OsString>,
    wrapper: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    ready: Ready,
    ready_timeout: Duration,
    watchdog: Option<Duration>,
}

impl ServerCommand {
    /// This test binary, re-run as the server of the `#[test]` named `entry`, which calls
    /// [`serve_in_child`](crate::serve_in_child) (or [`ChildServer::current`](crate::ChildServer::current))
    /// with the same name. `entry` is the test's full name as libtest knows it:
    /// `module::test` for a test in a module.
    pub fn this_binary(entry: &str) -> ServerCommand {
        ServerCommand::new(Program::ThisBinary { entry: entry.to_owned() }, READY)
    }

    /// A program (for a binary of the same package, `env!("CARGO_BIN_EXE_<name>")`), run
    /// with the pipe name as its first argument (or as [`name_flag`](Self::name_flag)
    /// says), then [`args`](Self::args). It is ready once it prints
    /// [`ready_line`](Self::ready_line) (default `ready`) on stdout, which it should do once
    /// its pipe is bound, or, with [`ready_when_accepting`](Self::ready_when_accepting), once
    /// its pipe accepts a connection. It should shut down when its stdin ends (as the
    /// parent's going away looks to it); it is killed when the [`TestServer`] is dropped
    /// anyway.
    ///
    /// ```no_run
    /// # // Cargo sets `CARGO_BIN_EXE_*` only for the tests of a package with that binary.
    /// # macro_rules! env { ($var:literal) => { "target/debug/my-server" } }
    /// # async fn f() -> Result<(), rpc_testkit::SpawnError> {
    /// // In tests/*.rs of a package with a `[[bin]]` named `my-server` that serves
    /// // `my-server --pipe NAME` and prints nothing in particular:
    /// let server = rpc_testkit::ServerCommand::program(env!("CARGO_BIN_EXE_my-server"))
    ///     .name_flag("--pipe")
    ///     .ready_when_accepting()
    ///     .spawn()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn program(path: impl Into<PathBuf>) -> ServerCommand {
        ServerCommand::new(Program::Path { path: path.into(), name_arg: NameArg::First }, "ready")
    }

    fn new(program: Program, ready_line: &str) -> ServerCommand {
        ServerCommand {
            program,
            name: None,
            args: Vec::new(),
            wrapper: Vec::new(),
            envs: Vec::new(),
            ready: Ready::Line(ready_line.to_owned()),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            watchdog: Some(DEFAULT_WATCHDOG),
        }
    }

    /// Serve this name instead of a [`unique_name`](crate::unique_name) of the calling test.
    pub fn name(mut self, name: impl Into<PipeName>) -> ServerCommand {
        self.name = Some(name.into());
        self
    }

    /// Adds an argument: after the name for a [`program`](Self::program), in
    /// [`ChildServer::args`](crate::ChildServer::args) for [`this_binary`](Self::this_binary).
    pub fn arg(mut self, arg: impl Into<OsString>) -> ServerCommand {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments (see [`arg`](Self::arg)).
    pub fn args<I: IntoIterator<Item = A>, A: Into<OsString>>(mut self, args: I) -> ServerCommand {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable of the process.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> ServerCommand {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Runs the program through a wrapper that execs the rest of its command line (such as
    /// `setpriv --reuid=65534 --clear-groups`).
    pub fn via<I: IntoIterator<Item = A>, A: Into<OsString>>(mut self, wrapper: I) -> ServerCommand {
        self.wrapper = wrapper.into_iter().map(Into::into).collect();
        self
    }

    /// A [`program`](Self::program) is given the name as the value of `flag` (`--pipe
    /// NAME`), before the other arguments, instead of as its first argument.
    pub fn name_flag(mut self, flag: impl Into<OsString>) -> ServerCommand {
        if let Program::Path { name_arg, .. } = &mut self.program {
            *name_arg = NameArg::Flag(flag.into());
        }
        self
    }

    /// A [`program`](Self::program) is not given the name on its command line (it knows
    /// it, or reads it from a variable set with [`env`](Self::env)); set it with
    /// [`name`](Self::name).
    pub fn no_name_arg(mut self) -> ServerCommand {
        if let Program::Path { name_arg, .. } = &mut self.program {
            *name_arg = NameArg::Omit;
        }
        self
    }

    /// The stdout line that says the server is ready. Default: `ready` for a
    /// [`program`](Self::program), [`READY`] for [`this_binary`](Self::this_binary).
    pub fn ready_line(mut self, line: &str) -> ServerCommand {
        self.ready = Ready::Line(line.to_owned());
        self
    }

    /// The server is ready once its pipe accepts a connection, whatever it prints: for a
    /// program that says nothing the parent could wait for. The parent connects (retrying
    /// while nothing listens, backing off up to 20 ms) and closes the connection at once,
    /// so the server sees one connection that ends before its handshake.
    pub fn ready_when_accepting(mut self) -> ServerCommand {
        self.ready = Ready::Accepting;
        self
    }

    /// How long to wait for the ready line before killing the process. Default: 20 s
    /// ([`DEFAULT_READY_TIMEOUT`]).
    pub fn ready_timeout(mut self, limit: Duration) -> ServerCommand {
        self.ready_timeout = limit;
        self
    }

    /// Kills the process (from a thread of the test process, and, for
    /// [`this_binary`](Self::this_binary), from the child itself too) once it has lived this
    /// long, whatever the test is doing: a test that hangs does not leave a server running.
    /// Default: 120 s ([`DEFAULT_WATCHDOG`]). `None`: no watchdog (the process still ends
    /// with the test's [`TestServer`] or with the test process).
    pub fn watchdog(mut self, limit: Option<Duration>) -> ServerCommand {
        self.watchdog = limit;
        self
    }

    /// The command line and environment, and the name served.
    fn command(&self) -> Result<(Command, PipeName, String), SpawnError> {
        let name = self.name.clone().unwrap_or_else(crate::unique_name);
        let (program, mut args): (PathBuf, Vec<OsString>) = match &self.program {
            Program::ThisBinary { entry } => {
                let exe = std::env::current_exe()
                    .map_err(|e| SpawnError::Start { program: "this test binary".into(), error: e })?;
                let selector = [entry.as_str(), "--exact", "--nocapture", "--test-threads=1"];
                (exe, selector.iter().map(Into::into).collect())
            }
            Program::Path { path, name_arg } => {
                let mut args = Vec::new();
                match name_arg {
                    NameArg::First => args.push(OsString::from(name.as_str())),
                    NameArg::Flag(flag) => args.extend([flag.clone(), OsString::from(name.as_str())]),
                    NameArg::Omit => {}
                }
                args.extend(self.args.iter().cloned());
                (path.clone(), args)
            }
        };
        let shown = program.display().to_string();
        let mut command = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        command.args(args.drain(..));
        if let Program::ThisBinary { entry } = &self.program {
            let joined: Vec<String> = self.args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
            command.env(ENTRY_VAR, entry).env(NAME_VAR, name.as_str()).env(ARGS_VAR, joined.join(&ARG_SEP.to_string()));
            if let Some(limit) = self.watchdog {
                command.env(WATCHDOG_VAR, (limit + CHILD_WATCHDOG_SLACK).as_millis().to_string());
            }
        }
        command.envs(self.envs.iter().map(|(k, v)| (k, v)));
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        Ok((command, name, shown))
    }

    /// Starts the process and waits (asynchronously) until it prints its ready line.
    ///
    /// # Errors
    ///
    /// [`SpawnError::Start`] if it cannot be started, [`SpawnError::Exited`] if it exited
    /// before it was ready (with its status and output), [`SpawnError::NotReady`] if it was
    /// not ready within [`ready_timeout`](Self::ready_timeout) (it is killed).
    pub async fn spawn(self) -> Result<TestServer, SpawnError> {
        let mut server = self.start()?;
        let limit = self.ready_timeout;
        let ready = match &self.ready {
            Ready::Line(line) => tokio::time::timeout(limit, server.wait_for_line(line)).await,
            Ready::Accepting => tokio::time::timeout(limit, server.wait_accepting()).await,
        };
        server.readied(ready, limit, &self).await
    }

    /// [`spawn`](Self::spawn), for a test without an async runtime (it must not be called
    /// inside one).
    ///
    /// # Errors
    ///
    /// As [`spawn`](Self::spawn).
    pub fn spawn_blocking(self) -> Result<TestServer, SpawnError> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        rt.block_on(self.spawn())
    }

    fn start(&self) -> Result<TestServer, SpawnError> {
        let (mut command, name, shown) = self.command()?;
        // Under wine, CreateProcess now and then fails with ERROR_INTERNAL_ERROR (1359) on a
        // busy machine; another attempt starts the process. Anything else fails at once.
        let mut attempts = 0;
        let mut child = loop {
            match command.spawn() {
                Ok(child) => break child,
                Err(e) if cfg!(windows) && e.raw_os_error() == Some(1359) && attempts < 3 => attempts += 1,
                Err(error) => return Err(SpawnError::Start { program: shown, error }),
            }
        };
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).trim_end_matches('\r').to_owned();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = BufReader::new(stderr).read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        });
        let child = Arc::new(Mutex::new(child));
        let fired = Arc::new(AtomicBool::new(false));
        let watchdog = self.watchdog.map(|limit| Watchdog::start(child.clone(), limit, fired.clone()));
        Ok(TestServer {
            child,
            pid,
            name,
            program: shown,
            stdin,
            lines,
            stdout: Vec::new(),
            stderr: Some(stderr),
            files: SocketFiles::default(),
            watchdog,
            watchdog_limit: self.watchdog,
            fired,
            status: None,
        })
    }
}

/// Why a server process did not become ready.
#[derive(Debug)]
#[non_exhaustive]
pub enum SpawnError {
    /// It could not be started.
    Start {
        /// The program.
        program: String,
        /// Why.
        error: std::io::Error,
    },
    /// It exited before it printed its ready line.
    Exited(ServerExit),
    /// It printed no ready line in time; it was killed.
    NotReady {
        /// How long it was given.
        waited: Duration,
        /// How it ended once killed, and what it printed.
        exit: ServerExit,
    },
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpawnError::Start { program, error } => write!(f, "cannot start {program}: {error}"),
            SpawnError::Exited(exit) => write!(f, "the server exited before it was ready: {exit}"),
            SpawnError::NotReady { waited, exit } => {
                write!(f, "the server was not ready within {waited:?} and was killed: {exit}")
            }
        }
    }
}

impl std::error::Error for SpawnError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpawnError::Start { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// How a server process ended, and what it printed.
#[derive(Debug)]
pub struct ServerExit {
    /// Its exit status.
    pub status: ExitStatus,
    /// Every line it printed on stdout (including the ready line).
    pub stdout: Vec<String>,
    /// Everything it printed on stderr.
    pub stderr: String,
    /// `Some(limit)` if its watchdog ([`ServerCommand::watchdog`]) killed it: it ran longer
    /// than `limit`.
    pub killed_by_watchdog: Option<Duration>,
}

impl std::fmt::Display for ServerExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(limit) = self.killed_by_watchdog {
            write!(f, "killed by its watchdog after {limit:?}; ")?;
        }
        write!(f, "{}; stdout: {:?}; stderr: {:?}", self.status, self.stdout, self.stderr)
    }
}

/// A server killed by [`TestServer::crash`]: how it ended, and the files it left, removed
/// when this is dropped (unless another server has taken them over since).
#[derive(Debug)]
pub struct Crashed {
    /// How it ended.
    pub exit: ServerExit,
    files: SocketFiles,
}

impl std::ops::Deref for Crashed {
    type Target = ServerExit;
    fn deref(&self) -> &ServerExit {
        &self.exit
    }
}

impl Drop for Crashed {
    fn drop(&mut self) {
        if let Err(e) = self.files.remove()
            && !std::thread::panicking()
        {
            panic!("rpc-testkit: a crashed server's files: {e}");
        }
    }
}

/// Kills a process once it has lived too long, unless told to stand down first.
#[derive(Debug)]
struct Watchdog {
    /// Dropped to stand the watchdog down.
    _stand_down: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    /// Sets `fired` if it kills the process.
    fn start(child: Arc<Mutex<Child>>, limit: Duration, fired: Arc<AtomicBool>) -> Watchdog {
        let (stand_down, told) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = told.recv_timeout(limit) {
                let mut child = child.lock().unwrap_or_else(PoisonError::into_inner);
                if let Ok(None) = child.try_wait() {
                    eprintln!(
                        "rpc-testkit: server process {} ran past its watchdog ({limit:?}); killing it",
                        child.id()
                    );
                    fired.store(true, Ordering::SeqCst);
                    let _ = child.kill();
                }
            }
        });
        Watchdog { _stand_down: stand_down }
    }
}

/// A server process of a test, serving [`name`](Self::name). Dropping it (at the end of the
/// test, or while a failing test unwinds) kills the process, waits for it, and removes the
/// socket and lock files it left (Unix; only the files it made, checked by their identity,
/// and only if it ever was ready). It panics if it cannot remove them, unless the test is
/// already failing: a passing test leaves nothing behind.
#[derive(Debug)]
pub struct TestServer {
    child: Arc<Mutex<Child>>,
    pid: u32,
    name: PipeName,
    program: String,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    stdout: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    /// The socket and lock files it made, noted once it was ready.
    files: SocketFiles,
    watchdog: Option<Watchdog>,
    watchdog_limit: Option<Duration>,
    /// Set by the watchdog once it killed the process.
    fired: Arc<AtomicBool>,
    /// Its exit status, once it exited.
    status: Option<ExitStatus>,
}

impl TestServer {
    /// After the wait for the ready line: the server, or why it is not one.
    async fn readied(
        mut self,
        ready: Result<bool, tokio::time::error::Elapsed>,
        limit: Duration,
        command: &ServerCommand,
    ) -> Result<TestServer, SpawnError> {
        match ready {
            Ok(true) => {
                // It bound the name: what the name leaves on disk is its to clean up.
                self.files = SocketFiles::of(&self.name);
                Ok(self)
            }
            Ok(false) => {
                let mut exit = self.wait_exit().await;
                if let Program::ThisBinary { entry } = &command.program
                    && !exit.stdout.iter().any(|l| l.starts_with(&format!("test {entry} ")))
                {
                    exit.stderr.push_str(&format!(
                        "\n(rpc-testkit: the test binary ran no test `{entry}`: the entry must be a #[test] of this \
                         binary that calls serve_in_child(\"{entry}\", ..), named with its module path)"
                    ));
                }
                Err(SpawnError::Exited(exit))
            }
            Err(_) => Err(SpawnError::NotReady { waited: limit, exit: self.kill().await }),
        }
    }

    /// The pipe name it serves.
    pub fn name(&self) -> &PipeName {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The lines it printed on stdout that were read so far (by
    /// [`wait_for_line`](Self::wait_for_line) and the wait for the ready line).
    pub fn stdout(&self) -> &[String] {
        &self.stdout
    }

    /// Connects until its pipe accepts (`true`), or its stdout ends (`false`: it exited).
    async fn wait_accepting(&mut self) -> bool {
        let options = rpc_core::ConnectOptions::default()
            .wait_for_server(true)
            .timeout(Duration::MAX)
            .max_backoff(ACCEPTING_POLL_MAX);
        let name = self.name.clone();
        let mut accepting = std::pin::pin!(rpc_core::pipe::connect(&name, &options));
        loop {
            tokio::select! {
                connected = &mut accepting => return connected.is_ok(),
                line = self.lines.recv() => match line {
                    Some(line) => self.stdout.push(line),
                    None => return false,
                },
            }
        }
    }

    /// Reads its stdout until a line equals `line` (`true`) or stdout ends (`false`).
    pub async fn wait_for_line(&mut self, line: &str) -> bool {
        while let Some(l) = self.lines.recv().await {
            let found = l.trim() == line;
            self.stdout.push(l);
            if found {
                return true;
            }
        }
        false
    }

    /// The next stdout line, `None` once stdout has ended.
    pub async fn next_line(&mut self) -> Option<String> {
        let line = self.lines.recv().await?;
        self.stdout.push(line.clone());
        Some(line)
    }

    /// Writes `line` and a newline to its stdin.
    ///
    /// # Panics
    ///
    /// If its stdin was closed ([`close_stdin`](Self::close_stdin)) or the write fails.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("the server's stdin was closed");
        stdin.write_all(format!("{line}\n").as_bytes()).expect("write to the server's stdin");
        stdin.flush().expect("flush the server's stdin");
    }

    /// Closes its stdin: a server of [`serve_in_child`](crate::serve_in_child) (and any that
    /// follows the same rule) takes that as the parent going away and shuts down.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Asks a server of [`serve_in_child`](crate::serve_in_child) to shut down gracefully
    /// (a `shutdown` line), and waits until it has begun (from then on it starts no new call).
    pub async fn begin_shutdown(&mut self) {
        self.send_line("shutdown");
        assert!(self.wait_for_line(SHUTTING_DOWN).await, "the server exited without shutting down: {:?}", self.stdout);
    }

    /// [`begin_shutdown`](Self::begin_shutdown), then waits for it to exit.
    pub async fn shutdown(mut self) -> ServerExit {
        self.begin_shutdown().await;
        self.wait_exit().await
    }

    /// Kills it at once (no graceful shutdown), waits for it to exit, and removes the files
    /// it left.
    pub async fn kill(mut self) -> ServerExit {
        let _ = self.lock().kill();
        self.wait_exit().await
    }

    /// Kills it at once, as a crash would: its socket and lock files stay on disk (for a
    /// test of what a crashed server leaves, or of a replacement that takes the name over)
    /// until the returned [`Crashed`] is dropped, which removes them unless a server serves
    /// the name again. (Or until any server of this user binds a plain name: it sweeps
    /// files whose server is gone, see
    /// [`PipeListener`](rpc_core::pipe::PipeListener#platform-specific-behavior). So a test
    /// cannot count on the files staying; what it can count on is the name not running.)
    pub async fn crash(mut self) -> Crashed {
        let files = std::mem::take(&mut self.files);
        let _ = self.lock().kill();
        Crashed { exit: self.wait_exit().await, files }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for it to exit on its own; returns its status and output. The files it left (a
    /// server that crashed leaves its socket) are removed then.
    pub async fn wait_exit(&mut self) -> ServerExit {
        while let Some(l) = self.lines.recv().await {
            self.stdout.push(l);
        }
        // Its stdout has ended; it is exiting (or closed stdout and lives on: then this waits
        // for it, within the watchdog).
        let status = loop {
            if let Some(status) = self.status {
                break status;
            }
            let exited = self.lock().try_wait();
            match exited {
                Ok(Some(status)) => self.status = Some(status),
                Ok(None) => {}
                Err(e) => panic!("cannot wait for server process {}: {e}", self.pid),
            }
            if self.status.is_none() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        self.clean_up();
        let stderr = match self.stderr.take() {
            Some(reader) => reader.join().unwrap_or_default(),
            None => String::new(),
        };
        let killed_by_watchdog = self.watchdog_limit.filter(|_| self.fired.load(Ordering::SeqCst));
        ServerExit { status, stdout: std::mem::take(&mut self.stdout), stderr, killed_by_watchdog }
    }

    /// The process is gone: stand the watchdog down and remove its files.
    fn clean_up(&mut self) {
        self.watchdog = None;
        if let Err(e) = self.files.remove()
            && !std::thread::panicking()
        {
            panic!("rpc-testkit: server {} ({}) left files behind: {e}", self.pid, self.program);
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // A watchdog that fired while nobody looked (the test never saw the exit) fails the
        // test with the reason, rather than with whatever error its calls got.
        let unseen_watchdog = self.status.is_none() && self.fired.load(Ordering::SeqCst);
        if self.status.is_none() {
            let mut child = self.lock();
            let _ = child.kill();
            // Quick once killed; bounded by the kill.
            let status = child.wait();
            drop(child);
            self.status = status.ok();
        }
        self.clean_up();
        if unseen_watchdog && !std::thread::panicking() {
            panic!(
                "rpc-testkit: server {} ({}) on {} was killed by its watchdog after {:?}: the test ran longer than \
                 that (raise it with ServerCommand::watchdog)",
                self.pid,
                self.program,
                self.name,
                self.watchdog_limit.unwrap_or_default()
            );
        }
    }
}

//! Talk to a child process: spawn a program and get a typed client over a pipe pair that only
//! the two processes hold. No name on the filesystem, nothing another process can open, and
//! the child's exit reported as a typed error carrying its exit status. The shape of a plugin
//! host (an editor and its language servers, a build tool and its workers).
//!
//! The parent:
//!
//! ```no_run
//! # #[rpc_core::service] pub trait Plugin { async fn upper(&self, s: String) -> String; }
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use rpc_core::child;
//! let mut command = tokio::process::Command::new("my-plugin");
//! command.arg("--verbose");
//! let plugin = child::spawn::<PluginClient>(command).await?;
//! assert_eq!(plugin.client.upper("hi".into()).await?, "HI");
//! // If the plugin dies, calls fail with `TransportError::ChildExited` and its exit status.
//! let status = plugin.process.wait().await?;
//! # Ok(()) }
//! ```
//!
//! The child (`my-plugin`):
//!
//! ```no_run
//! # #[rpc_core::service] pub trait Plugin { async fn upper(&self, s: String) -> String; }
//! # struct Upper; impl Plugin for Upper { async fn upper(&self, s: String) -> String { s.to_uppercase() } }
//! #[tokio::main]
//! async fn main() -> Result<(), rpc_core::ServeError> {
//!     // Serves the parent until it closes its end or exits.
//!     rpc_core::child::serve_parent(PluginServer::new(Upper)).await
//! }
//! ```
//!
//! # How it works
//!
//! [`spawn`] makes a [`ChildPipe`] (a socket pair on Unix; on
//! Windows a one-instance named pipe under a random name whose both ends the parent opens, see
//! [`transport_pipe::ChildPipe`] for why not an anonymous pipe), lets the child inherit one
//! end (and only the child: the parent's copy is closed right after the spawn, so the child's
//! exit is end-of-file here), tells the child where it is in the environment variable
//! [`PARENT_PIPE_ENV`], and runs the handshake over the other end. [`serve_parent`] (or
//! [`Server::serve_parent`](crate::Server::serve_parent)) picks the inherited end up with
//! [`parent_pipe`] and serves it until the parent leaves.
//!
//! What differs from a connection by name:
//!
//! - **The child's exit is an error of its own.** When the pipe ends because the child
//!   exited, calls in flight, calls made afterwards and a failed handshake get
//!   [`TransportError::ChildExited`] with the exit code (or, on Unix, the signal). The exit
//!   status is looked for for up to [`CHILD_EXIT_WAIT`] after the pipe ends; a child that
//!   closed its end but keeps running gives [`TransportError::Disconnected`].
//! - **No identity checks.** The parent made the pipe and handed one end to the process it
//!   started, so [`ClientConfig::expect_server`] and the server's
//!   [`ServerConfig::access`](crate::ServerConfig::access) are not consulted. Handlers in the
//!   child still see the parent in [`Context::peer`](crate::context::Context::peer) where the
//!   OS reports it (Unix: the socket pair's credentials, those of the parent that made it;
//!   Windows: the pipe's server process and its user). The parent's
//!   [`PeerInfo::server`](crate::PeerInfo::server) holds the child's pid from the spawn (the
//!   OS reports the parent itself as the peer of a pair the parent made).
//! - **Lifetime.** The child serves until the parent closes its end: dropping the client (all
//!   its clones) or the parent's exit, even a crash (the pipe closes with the process). A
//!   handshake that fails kills the child (nothing else holds it). Otherwise the child is not
//!   killed when the [`ChildProcess`] handle is dropped: it is expected to exit once its
//!   parent pipe closes; [`ChildProcess::kill`] ends it at once. The child is reaped in the
//!   background either way.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::process::ExitStatus;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::process::{ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, watch};
use transport_pipe::{ChildPipe, PipeStream};

use crate::access::PeerCredentials;
use crate::callback::Client;
use crate::client::{Channel, ClientConfig};
use crate::error::{RpcError, ServeError, TransportError};
use crate::service::Service;

pub use transport_pipe::{PARENT_PIPE_ENV, parent_pipe};

/// How long, after the pipe to a child ends, the parent waits for the child's exit status
/// to report it ([`TransportError::ChildExited`]). A child that exits closes its end as it
/// goes, and its status follows within milliseconds; one that closes its end and goes on
/// running is reported as [`TransportError::Disconnected`] once this has passed.
pub const CHILD_EXIT_WAIT: Duration = Duration::from_secs(1);

/// A spawned child and the typed client connected to it. See the [module docs](self).
#[derive(Debug)]
#[non_exhaustive]
pub struct ChildConnection<C> {
    /// The client: calls go to the child's service.
    pub client: C,
    /// The child process: its pid, its exit status, its stdio if the command piped it.
    pub process: ChildProcess,
}

/// A child process started by [`spawn`]. A background task owns the OS handle and reaps the
/// child when it exits; this is a view of it. Dropping it neither kills nor waits for the
/// child.
#[derive(Debug)]
pub struct ChildProcess {
    pid: u32,
    status: watch::Receiver<Option<Exit>>,
    kill: mpsc::UnboundedSender<()>,
    /// The child's stdin, if the command set `Stdio::piped()` for it.
    pub stdin: Option<ChildStdin>,
    /// The child's stdout, if the command set `Stdio::piped()` for it.
    pub stdout: Option<ChildStdout>,
    /// The child's stderr, if the command set `Stdio::piped()` for it.
    pub stderr: Option<ChildStderr>,
}

/// How the child ended, as the reaper saw it: its status, or why it could not be waited for.
type Exit = Result<ExitStatus, String>;

impl ChildProcess {
    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// The child's exit status, if it has exited.
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.status.borrow().as_ref().and_then(|s| s.as_ref().ok().copied())
    }

    /// Waits for the child to exit and returns its status.
    ///
    /// # Errors
    ///
    /// The OS could not wait for the child, or the runtime running the reaper shut down.
    pub async fn wait(&self) -> io::Result<ExitStatus> {
        let mut status = self.status.clone();
        match status.wait_for(Option::is_some).await {
            Ok(s) => s.clone().unwrap_or_else(|| Err("no status".into())).map_err(io::Error::other),
            Err(_) => Err(io::Error::other("the child's reaper task ended (its runtime shut down)")),
        }
    }

    /// Asks for the child to be killed (`SIGKILL` on Unix, `TerminateProcess` on Windows)
    /// and returns at once. Does nothing if it has exited.
    pub fn start_kill(&self) {
        let _ = self.kill.send(());
    }

    /// Kills the child and waits for it to exit.
    ///
    /// # Errors
    ///
    /// As for [`wait`](Self::wait).
    pub async fn kill(&self) -> io::Result<ExitStatus> {
        self.start_kill();
        self.wait().await
    }
}

/// Spawns `command` as a child process connected to this one by a private pipe pair, and
/// connects a `C` client (a generated `FooClient`) to the service it serves with
/// [`serve_parent`]. Uses the default [`ClientConfig`]. Must be called within a tokio
/// runtime. See the [module docs](self).
///
/// # Errors
///
/// [`TransportError::Io`] if the program cannot be started (not found, not executable) or
/// the pipe cannot be made; [`TransportError::ChildExited`] if the child exited before it
/// answered the handshake (with its exit status); the handshake's own errors
/// ([`TransportError::Incompatible`] for another service or version of it,
/// [`TransportError::Protocol`] if the child never answered within
/// [`ClientConfig::handshake_timeout`]), after which the child is killed.
pub async fn spawn<C: Client>(command: impl Into<tokio::process::Command>) -> Result<ChildConnection<C>, RpcError> {
    spawn_with(command, ClientConfig::default()).await
}

/// Like [`spawn`], with the given client settings ([`ClientConfig::expect_server`] and the
/// connect options do not apply).
///
/// # Errors
///
/// As for [`spawn`].
pub async fn spawn_with<C: Client>(
    command: impl Into<tokio::process::Command>,
    config: ClientConfig,
) -> Result<ChildConnection<C>, RpcError> {
    let mut command: tokio::process::Command = command.into();
    let program = command.as_std().get_program().to_string_lossy().into_owned();
    let mut pipe = ChildPipe::new()?;
    pipe.prepare(command.as_std_mut())?;
    let spawned = command.spawn();
    // Closes our copy of the child's end whatever happened: from now on only the child
    // holds it, so its exit is end-of-file here.
    let ours = pipe.into_parent_end();
    let mut child = spawned
        .map_err(|e| TransportError::Io { detail: format!("cannot start the child process `{program}`: {e}") })?;
    let pid = child.id().unwrap_or(0);
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let (status_tx, status) = watch::channel(None);
    let (kill, kill_rx) = mpsc::unbounded_channel();
    tokio::spawn(reap(child, status_tx, kill_rx));
    let process = ChildProcess { pid, status, kill, stdin, stdout, stderr };
    let io = ChildIo::new(ours, ExitWatch { pid, status: process.status.clone() });
    let server = PeerCredentials::new(Some(pid), None, None);
    match Channel::start(io, Some(server), C::ID, config).await {
        Ok(channel) => Ok(ChildConnection { client: C::from_channel(channel), process }),
        Err(RpcError::Transport(TransportError::ChildExited { code, signal, detail })) => {
            let detail = format!("{detail}, before it answered the handshake");
            Err(TransportError::ChildExited { code, signal, detail }.into())
        }
        Err(e) => {
            // Nothing holds the child any more; it would only linger.
            process.start_kill();
            tracing::debug!(pid, error = %e, "the handshake with the child failed; killing it");
            Err(e)
        }
    }
}

/// In a child spawned with [`spawn`]: serves `service` (a generated `FooServer`) to the
/// parent over the inherited pipe until the parent closes its end or exits, with the default
/// [`ServerConfig`](crate::ServerConfig). See [`Server::serve_parent`](crate::Server::serve_parent)
/// to choose the settings.
///
/// # Errors
///
/// [`ServeError::ParentPipe`] if this process was not started by [`spawn`] (no pipe to a
/// parent in its environment); [`ServeError::Connection`] if the connection failed (the
/// parent broke the protocol, a handshake that did not come).
pub async fn serve_parent<S: Service>(service: S) -> Result<(), ServeError> {
    crate::Server::new(service).serve_parent().await
}

/// Owns the child: waits for it, kills it when asked, and publishes its status.
async fn reap(
    mut child: tokio::process::Child,
    status: watch::Sender<Option<Exit>>,
    mut kill: mpsc::UnboundedReceiver<()>,
) {
    let mut kill_open = true;
    let exit = loop {
        tokio::select! {
            exit = child.wait() => break exit.map_err(|e| format!("cannot wait for the child: {e}")),
            asked = kill.recv(), if kill_open => match asked {
                Some(()) => {
                    if let Err(e) = child.start_kill() {
                        tracing::debug!(error = %e, "cannot kill the child (it may have exited)");
                    }
                }
                None => kill_open = false,
            },
        }
    };
    status.send_replace(Some(exit));
}

/// The child's exit status, as the parent's end of the pipe needs it.
#[derive(Clone, Debug)]
struct ExitWatch {
    pid: u32,
    status: watch::Receiver<Option<Exit>>,
}

impl ExitWatch {
    /// Waits up to [`CHILD_EXIT_WAIT`] for the child's exit; the error that reports it.
    fn wait(&self) -> Pin<Box<dyn Future<Output = Option<TransportError>> + Send>> {
        let (pid, mut status) = (self.pid, self.status.clone());
        Box::pin(async move {
            let exit = tokio::time::timeout(CHILD_EXIT_WAIT, status.wait_for(Option::is_some)).await;
            match exit {
                Ok(Ok(exit)) => match exit.as_ref() {
                    Some(Ok(status)) => Some(exited(pid, status)),
                    _ => None,
                },
                _ => None,
            }
        })
    }
}

/// [`TransportError::ChildExited`] for a child `pid` that exited with `status`.
fn exited(pid: u32, status: &ExitStatus) -> TransportError {
    #[cfg(unix)]
    let signal = std::os::unix::process::ExitStatusExt::signal(status);
    #[cfg(not(unix))]
    let signal = None;
    TransportError::ChildExited {
        code: status.code(),
        signal,
        detail: format!("the child process (pid {pid}) exited ({status})"),
    }
}

/// Carries a [`TransportError::ChildExited`] through the `io::Error`s of the framing and the
/// engine; `crate::error::connection_error` and the handshake take it out again.
#[derive(Debug)]
pub(crate) struct ChildExitedIo(pub(crate) TransportError);

impl std::fmt::Display for ChildExitedIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ChildExitedIo {}

/// The [`TransportError::ChildExited`] inside `e`, if it carries one (at any depth).
pub(crate) fn exit_in(e: &io::Error) -> Option<TransportError> {
    let mut cur = e;
    loop {
        let inner = cur.get_ref()?;
        if let Some(exit) = inner.downcast_ref::<ChildExitedIo>() {
            return Some(exit.0.clone());
        }
        cur = inner.downcast_ref::<io::Error>()?;
    }
}

/// Where the parent's end of the pipe stands.
enum State {
    Open,
    /// The pipe ended (end-of-file: `None`, or an error); waiting for the child's status.
    Ending {
        failure: Option<io::Error>,
        wait: Pin<Box<dyn Future<Output = Option<TransportError>> + Send>>,
    },
    /// The child exited: every read and write fails with this.
    Exited(TransportError),
    /// The pipe ended and the child did not exit in time: reads see what the pipe said
    /// (end-of-file, or its error), writes a broken pipe.
    Closed(Option<(io::ErrorKind, String)>),
}

/// The parent's end of the pipe to a child: the pipe, except that once it ends because the
/// child exited, reads and writes fail with [`TransportError::ChildExited`] (inside an
/// `io::Error`) instead of a bare end-of-file or broken pipe.
struct ChildIo {
    io: PipeStream,
    exit: ExitWatch,
    state: State,
}

impl ChildIo {
    fn new(io: PipeStream, exit: ExitWatch) -> Self {
        ChildIo { io, exit, state: State::Open }
    }

    fn begin_ending(&mut self, failure: Option<io::Error>) {
        self.state = State::Ending { failure, wait: self.exit.wait() };
    }

    /// Drives [`State::Ending`] to its outcome.
    fn poll_ending(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let State::Ending { failure, wait } = &mut self.state {
            let exit = ready!(wait.as_mut().poll(cx));
            self.state = match exit {
                Some(e) => State::Exited(e),
                None => State::Closed(failure.take().map(|e| (e.kind(), e.to_string()))),
            };
        }
        Poll::Ready(())
    }

    fn exit_error(e: &TransportError) -> io::Error {
        io::Error::other(ChildExitedIo(e.clone()))
    }

    /// A write (or flush) on a pipe that has ended: the child's exit, or a broken pipe.
    fn poll_write_op<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(Pin<&mut PipeStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        loop {
            match &self.state {
                State::Open => match op(Pin::new(&mut self.io), cx) {
                    Poll::Ready(Err(e)) => self.begin_ending(Some(e)),
                    other => return other,
                },
                State::Ending { .. } => ready!(self.poll_ending(cx)),
                State::Exited(e) => return Poll::Ready(Err(Self::exit_error(e))),
                State::Closed(why) => {
                    let (kind, text) = why.clone().unwrap_or((
                        io::ErrorKind::BrokenPipe,
                        "the child process closed its end of the pipe (it is still running)".into(),
                    ));
                    return Poll::Ready(Err(io::Error::new(kind, text)));
                }
            }
        }
    }
}

impl AsyncRead for ChildIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &this.state {
                State::Open => {
                    let before = buf.filled().len();
                    match Pin::new(&mut this.io).poll_read(cx, buf) {
                        Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                            this.begin_ending(None);
                        }
                        Poll::Ready(Err(e)) => this.begin_ending(Some(e)),
                        other => return other,
                    }
                }
                State::Ending { .. } => ready!(this.poll_ending(cx)),
                State::Exited(e) => return Poll::Ready(Err(Self::exit_error(e))),
                State::Closed(None) => return Poll::Ready(Ok(())),
                State::Closed(Some((kind, text))) => return Poll::Ready(Err(io::Error::new(*kind, text.clone()))),
            }
        }
    }
}

impl AsyncWrite for ChildIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_op(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_op(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_write_op(cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match &this.state {
            // Closing a pipe that has ended already has nothing left to do.
            State::Exited(_) | State::Closed(_) => Poll::Ready(Ok(())),
            _ => Pin::new(&mut this.io).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_survives_nesting_in_io_errors() {
        let exit = TransportError::ChildExited { code: Some(3), signal: None, detail: "gone".into() };
        let e = io::Error::other(io::Error::other(ChildExitedIo(exit.clone())));
        assert_eq!(exit_in(&e), Some(exit));
        assert_eq!(exit_in(&io::Error::other("plain")), None);
        assert_eq!(exit_in(&io::Error::from(io::ErrorKind::BrokenPipe)), None);
    }
}

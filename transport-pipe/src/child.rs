//! A pipe between a parent process and a child it spawns, held by those two processes only.
//! See [`ChildPipe`].

use std::sync::atomic::{AtomicBool, Ordering};

use interprocess::local_socket::tokio::Stream;

use crate::{
    error::{Error, ErrorKind},
    platform,
    stream::PipeStream,
};

/// The environment variable through which [`ChildPipe::prepare`] tells the child where its
/// end is: `fd=N;pid=P` on Unix, `handle=N;pid=P` on Windows, `P` being the parent's process
/// id (a child checks that its parent is that process, so a grandchild that inherited the
/// variable does not take an unrelated descriptor for its pipe).
pub const PARENT_PIPE_ENV: &str = "PIPE_RPC_PARENT_PIPE";

/// A pipe between a parent process and a child it spawns, held by those two processes only:
/// no name anyone else can open, nothing left on the filesystem.
///
/// The parent makes a [`ChildPipe`], [prepares](ChildPipe::prepare) the child's command with
/// it, spawns the command, and keeps [its end](ChildPipe::into_parent_end). The child picks
/// its end up with [`parent_pipe`]. Either side reads end-of-file once the other has closed
/// its end or exited, because nobody else holds a copy: the parent's copy of the child's end
/// is closed as soon as the child has been spawned, and neither end is inherited by any other
/// process.
///
/// ## Platform-specific behavior
///
/// ### Unix
///
/// A `socketpair(AF_UNIX, SOCK_STREAM)`: no path, no abstract name. Both ends are created
/// close-on-exec; the child's end is made inheritable only in the child, between `fork` and
/// `exec` (a `pre_exec` hook), so a process the parent spawns at the same time from another
/// thread does not inherit it. The child finds the descriptor's number in the environment
/// variable [`PARENT_PIPE_ENV`] and makes it close-on-exec again once it has it, so its own
/// children do not inherit it either. The kernel's credentials of a socket pair are those of
/// the process that made it: the child sees its parent's (pid, uid, gid); the parent sees
/// itself, so it learns the child's pid from the spawn instead.
///
/// ### Windows
///
/// Anonymous pipes cannot do overlapped I/O, so they cannot be driven by tokio's I/O driver
/// (interprocess's tokio unnamed pipes run every read and write on tokio's blocking thread
/// pool, one direction per pipe, and a read that never completes holds a blocking thread
/// that the runtime waits for at shutdown). Instead the pair is a named pipe with one
/// instance: a random name under `\\.\pipe\pipe-rpc-child-`, created with
/// `FILE_FLAG_FIRST_PIPE_INSTANCE` (it fails rather than joining a pipe someone else made),
/// `PIPE_REJECT_REMOTE_CLIENTS`, a limit of one instance and the owner-only descriptor
/// [`OWNER_ONLY_SDDL`](crate::OWNER_ONLY_SDDL); the parent opens the client end itself at
/// once and checks that the connected client is itself. From then on the name exists only
/// while the parent's end does (interprocess keeps a dropped end open a moment longer, for
/// data its peer has not read), and its single instance is taken: opening it fails with
/// `ERROR_PIPE_BUSY`. The client end is made inheritable just before the spawn and closed in
/// the parent right after it; its handle value goes to the child in [`PARENT_PIPE_ENV`].
/// Windows makes every inheritable handle available to every process created meanwhile
/// (`CreateProcess` with `bInheritHandles`), so a process another thread spawns in that
/// instant could inherit it too; the standard library's own stdio pipes share this window.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let mut pipe = transport_pipe::ChildPipe::new()?;
/// let mut command = std::process::Command::new("my-child");
/// pipe.prepare(&mut command)?;
/// let child = command.spawn();
/// let ours = pipe.into_parent_end(); // closes our copy of the child's end, spawned or not
/// let child = child?;
/// // In `my-child`, within a tokio runtime: `let theirs = transport_pipe::parent_pipe()?;`
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ChildPipe {
    ours: Stream,
    theirs: platform::ChildEnd,
}

impl ChildPipe {
    /// Makes the pair. Must be called within a Tokio runtime with I/O enabled.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] if the operating system cannot make it (out of descriptors,
    /// outside a runtime).
    pub fn new() -> Result<ChildPipe, Error> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::new(ErrorKind::Io, "cannot make a child pipe: not within a tokio runtime"));
        }
        let (ours, theirs) = platform::child_pair().map_err(|e| {
            Error::new(ErrorKind::Io, format!("cannot make a pipe for a child process: {e}")).with_source(e)
        })?;
        Ok(ChildPipe { ours, theirs })
    }

    /// Arranges for the child that `command` spawns to inherit its end and find it: sets
    /// [`PARENT_PIPE_ENV`] and makes the end inheritable (Unix: in the child only, by a
    /// `pre_exec` hook; Windows: until [`into_parent_end`](Self::into_parent_end) or drop).
    /// Spawn `command` once, then call [`into_parent_end`](Self::into_parent_end).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] if the end cannot be made inheritable (Windows).
    pub fn prepare(&mut self, command: &mut std::process::Command) -> Result<(), Error> {
        let place = platform::prepare_child(&self.theirs, command).map_err(|e| {
            Error::new(ErrorKind::Io, format!("cannot pass a pipe to a child process: {e}")).with_source(e)
        })?;
        command.env(PARENT_PIPE_ENV, format!("{place};pid={}", std::process::id()));
        Ok(())
    }

    /// This process's end, once the child has been spawned (or failed to spawn). Closes this
    /// process's copy of the child's end, so that the child's exit is seen here as
    /// end-of-file.
    pub fn into_parent_end(self) -> PipeStream {
        drop(self.theirs);
        PipeStream::new(self.ours)
    }
}

/// Whether [`parent_pipe`] has handed out the end already: a descriptor has one owner.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// In a child spawned with a [`ChildPipe`]: its end of the pipe to the parent. Must be called
/// within a Tokio runtime with I/O enabled, at most once per process.
///
/// The end is made non-inheritable again (Unix: close-on-exec), so this process's own
/// children do not hold it: when this process exits, the parent reads end-of-file.
///
/// # Errors
///
/// [`ErrorKind::NoParentPipe`] if the process was not started that way ([`PARENT_PIPE_ENV`]
/// unset), if the variable was inherited from an ancestor (this process's parent is not
/// the process named in it), if it names no pipe, or if the end was taken already.
pub fn parent_pipe() -> Result<PipeStream, Error> {
    let no_pipe = |why: String| Error::new(ErrorKind::NoParentPipe, why);
    let value = std::env::var(PARENT_PIPE_ENV).map_err(|_| {
        no_pipe(format!(
            "this process has no pipe to a parent: {PARENT_PIPE_ENV} is not set (start it with \
             rpc_core::child::spawn, or transport_pipe::ChildPipe)"
        ))
    })?;
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::new(ErrorKind::Io, "cannot take the parent pipe: not within a tokio runtime"));
    }
    let (place, pid) = value
        .rsplit_once(";pid=")
        .and_then(|(place, pid)| Some((place, pid.parse::<u32>().ok()?)))
        .ok_or_else(|| no_pipe(format!("{PARENT_PIPE_ENV}={value:?} is not of the form `fd=N;pid=P`")))?;
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Err(no_pipe("the parent pipe was taken already (parent_pipe is called once per process)".into()));
    }
    match platform::adopt_parent_end(place, pid) {
        Ok(stream) => Ok(PipeStream::new(stream)),
        Err(why) => {
            // Nothing was taken: a later call may try again (it will fail the same way).
            TAKEN.store(false, Ordering::Release);
            Err(no_pipe(format!("{PARENT_PIPE_ENV}={value:?}: {why}")))
        }
    }
}

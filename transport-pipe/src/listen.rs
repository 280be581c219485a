//! The server side: binding a name and accepting connections.

use std::fmt;

use interprocess::local_socket::{tokio::Listener, traits::tokio::Listener as _};

use crate::{
    error::{Error, ErrorKind},
    name::PipeName,
    platform,
    stream::PipeStream,
};

/// Listener settings. Start from [`ListenOptions::default()`] and set fields.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ListenOptions {
    /// Unix: socket file mode. Default `0o600` (owner only).
    ///
    /// Only the permission bits (`0o777`) are used. Connecting to a Unix socket needs write
    /// permission on it, so `0o600` admits only the owner; `0o660` adds the group. The mode is
    /// set before the file appears, and set again exactly once it exists (the umask that
    /// `bind` applies can only have made it stricter meanwhile).
    ///
    /// Windows: ignored (see [`windows_sddl`](Self::windows_sddl)).
    pub mode: u32,
    /// Windows: the pipe's security descriptor, in the security descriptor string format
    /// (SDDL). Default [`OWNER_ONLY_SDDL`]: full access for SYSTEM and the pipe's owner (the
    /// server's user), nothing for anyone else. Without it a pipe gets the default DACL,
    /// which gives Everyone and Anonymous read access. Widen it with an SDDL of your own
    /// (for example adding `(A;;GRGW;;;AU)` for every authenticated user). A descriptor that
    /// names no owner (`O:`) gets the server's user as its owner (Windows would otherwise
    /// make it the Administrators group for an administrator or LocalSystem): clients read
    /// the owner to learn who serves the pipe. Unix: ignored.
    pub windows_sddl: String,
}

/// The default [`ListenOptions::windows_sddl`]: a protected DACL (`P`, no inherited entries)
/// allowing generic-all to SYSTEM (`SY`) and to the owner (`OW`), and to nobody else.
pub const OWNER_ONLY_SDDL: &str = "D:P(A;;GA;;;SY)(A;;GA;;;OW)";

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions { mode: 0o600, windows_sddl: OWNER_ONLY_SDDL.to_owned() }
    }
}

impl ListenOptions {
    /// Sets [`mode`](Self::mode).
    #[must_use]
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Sets [`windows_sddl`](Self::windows_sddl).
    #[must_use]
    pub fn windows_sddl(mut self, sddl: impl Into<String>) -> Self {
        self.windows_sddl = sddl.into();
        self
    }
}

/// A bound pipe name that accepts connections.
///
/// Dropping it stops listening; on Unix it also removes its socket file (only if the file is
/// still the one it created).
///
/// ## Platform-specific behavior
///
/// ### Unix
///
/// [`bind`](Self::bind) first checks (plain names) that the per-user directory is private,
/// creating it with mode `0700` if needed. If a socket file already exists at the address, it
/// connects to it: a live server makes `bind` fail with [`ErrorKind::NameInUse`] (that server
/// sees one connection that closes at once); `ECONNREFUSED` means the file is left over from a
/// crashed server, and it is removed if it belongs to this process's effective user. Another
/// user's stale socket (as in a shared directory) is never removed, not even by root: `bind`
/// fails with [`ErrorKind::ForeignSocket`], naming the owner and the path, for a person to
/// remove it by hand. Anything at the address that is not a socket is never removed either.
/// These steps, and the removal of the socket file on drop, run under an exclusive `flock` on
/// `<address>.lock`, so two servers starting together cannot displace each other. The
/// listener holds that lock for its whole life, and the lock file exists while it does.
///
/// A server that is killed (or that exits without dropping its listener) leaves its socket
/// file and its lock file behind, with the lock free: the kernel releases it with the process.
/// The next `bind` of the same name reclaims them; and every `bind` of a plain name first
/// sweeps the per-user directory: each `NAME.sock.lock` there whose lock is free is removed,
/// with `NAME.sock` beside it if that socket refuses connections (a live server's socket,
/// another user's file and anything that is not a socket are left alone; at most 256 lock
/// files a sweep). So names that are never bound again (a test's unique name, a pid in a name)
/// do not pile up files. [`remove_stale`](Self::remove_stale) does the same for one name, for
/// a supervisor or a test harness that knows its server is gone.
/// (A process that forks from a server without exec'ing shares its descriptors, lock
/// included, until it exits; the files are close-on-exec, so spawned programs do not.)
///
/// ### Windows
///
/// The first pipe instance is created with `FILE_FLAG_FIRST_PIPE_INSTANCE`, so a name already
/// served by any process fails with [`ErrorKind::NameInUse`]. The error names that process:
/// `bind` opens the pipe once as a client (at identification level, with only
/// `FILE_READ_ATTRIBUTES`, not waiting) and asks it for its server's process id, then reads that
/// process's user SID, as in `another server (pid 4242, user S-1-5-21-...) is listening on ...`;
/// the message says why when either cannot be read (every instance busy, the pipe's descriptor
/// refuses us, another user's process). That server sees one connection that closes at once.
/// Remote clients are rejected. The
/// listener keeps one spare instance waiting: while a client is connected to it but not yet
/// accepted, other clients see `ERROR_PIPE_BUSY`, which [`connect`](crate::connect) retries.
///
/// ```
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// use transport_pipe::{ConnectOptions, PipeListener, connect};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let name = format!("listener-doc-{}", std::process::id());
/// let listener = PipeListener::bind(name.as_str())?;
/// let server = tokio::spawn(async move {
///     let mut stream = listener.accept().await?;
///     let mut buf = [0u8; 5];
///     stream.read_exact(&mut buf).await?;
///     stream.write_all(&buf).await?;
///     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
/// });
/// let mut client = connect(name.as_str(), &ConnectOptions::default()).await?;
/// client.write_all(b"hello").await?;
/// let mut back = [0u8; 5];
/// client.read_exact(&mut back).await?;
/// assert_eq!(&back, b"hello");
/// server.await?.map_err(|e| e.to_string())?;
/// # Ok(()) }
/// ```
pub struct PipeListener {
    // Declared first so the Unix socket file is removed before the socket is closed.
    _reclaim: platform::Reclaim,
    inner: Listener,
    name: PipeName,
}

impl PipeListener {
    /// Binds `name` with default [`ListenOptions`].
    ///
    /// Must be called within a Tokio runtime with I/O enabled.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::NameInUse`] if a live server listens on the name (or a file that is not a
    /// socket is in the way), [`ErrorKind::ForeignSocket`] (Unix) if another user's stale
    /// socket file is, [`ErrorKind::InvalidName`] for a bad name,
    /// [`ErrorKind::PermissionDenied`] if the directory is not private or the OS refuses,
    /// [`ErrorKind::Io`] otherwise (including when called outside a Tokio runtime).
    pub fn bind(name: impl Into<PipeName>) -> Result<PipeListener, Error> {
        Self::bind_with(name, &ListenOptions::default())
    }

    /// Binds `name` with the given options. See [`bind`](Self::bind).
    ///
    /// # Errors
    ///
    /// As for [`bind`](Self::bind).
    pub fn bind_with(name: impl Into<PipeName>, opts: &ListenOptions) -> Result<PipeListener, Error> {
        let name = name.into();
        // interprocess registers the listener with the current runtime and would panic outside
        // one; an error is friendlier.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "cannot listen on pipe `{}`: PipeListener::bind must be called within a tokio \
                     runtime",
                    name.as_str()
                ),
            )
            .with_name(&name));
        }
        let addr = name.resolve()?;
        let (inner, reclaim) = platform::bind(&name, &addr, opts)?;
        tracing::debug!(pipe = name.as_str(), addr = %addr.display(), "listening");
        Ok(PipeListener { _reclaim: reclaim, inner, name })
    }

    /// Removes what a server of `name` that is gone (killed, or exited without dropping its
    /// listener) left behind: on Unix its socket file and the lock file beside it, as the
    /// next [`bind`](Self::bind) of the name would, under the same lock and with the same
    /// checks. Returns whether there was a socket file to remove. For a supervisor or a test
    /// harness that has just seen its server die; `bind` sweeps such files anyway (see the
    /// type's docs), so this only makes the cleanup immediate.
    ///
    /// Does not need a runtime. On Windows there is nothing to remove (a pipe vanishes with
    /// its last handle): `Ok(false)`.
    ///
    /// # Errors
    ///
    /// On Unix: [`ErrorKind::NameInUse`] if a live server listens on the name (its files stay),
    /// [`ErrorKind::ForeignSocket`] if the socket file is another user's, the errors of
    /// [`bind`](Self::bind) for a bad name, a directory that is not private, or a file that is
    /// not a socket.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), transport_pipe::Error> {
    /// use transport_pipe::{ErrorKind, PipeListener};
    ///
    /// let name = format!("remove-stale-doc-{}", std::process::id());
    /// let listener = PipeListener::bind(name.as_str())?;
    /// let live = PipeListener::remove_stale(name.as_str());
    /// if cfg!(unix) {
    ///     // A live server's files are refused.
    ///     assert_eq!(live.unwrap_err().kind(), ErrorKind::NameInUse);
    /// } else {
    ///     // A named pipe leaves no files: nothing to remove, ever.
    ///     assert!(!live?);
    /// }
    /// drop(listener);
    /// // Nothing left to remove.
    /// assert!(!PipeListener::remove_stale(name.as_str())?);
    /// # Ok(()) }
    /// ```
    pub fn remove_stale(name: impl Into<PipeName>) -> Result<bool, Error> {
        let name = name.into();
        let addr = name.resolve()?;
        platform::remove_stale(&name, &addr)
    }

    /// Waits for the next client.
    ///
    /// Cancel-safe: if the future is dropped before it completes, no connection is lost; the
    /// next call returns it.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Io`] for a failed accept. Errors here concern one connection attempt or a
    /// transient resource shortage (e.g. out of file descriptors): keep the listener and back
    /// off rather than giving up.
    pub async fn accept(&self) -> Result<PipeStream, Error> {
        match self.inner.accept().await {
            Ok(stream) => Ok(PipeStream::new(stream)),
            Err(e) => Err(Error::new(
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    ErrorKind::PermissionDenied
                } else {
                    ErrorKind::Io
                },
                format!("cannot accept on pipe `{}`: {e}", self.name.as_str()),
            )
            .with_name(&self.name)
            .with_source(e)),
        }
    }

    /// The name this listener was bound to.
    pub fn name(&self) -> &PipeName {
        &self.name
    }
}

impl fmt::Debug for PipeListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipeListener").field("name", &self.name).finish_non_exhaustive()
    }
}

//! Unix: filesystem Unix domain sockets in a private per-user directory.

use std::{
    ffi::OsString,
    fs, io,
    os::unix::{
        ffi::OsStrExt,
        fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt},
        io::AsRawFd,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use interprocess::{
    ConnectWaitMode,
    local_socket::{
        ConnectOptions as IpConnectOptions, GenericFilePath, ListenerOptions, ToFsName,
        tokio::{Listener, Stream},
    },
    os::unix::{local_socket::ListenerOptionsExt, uds_local_socket},
};

use super::ConnectFailure;
use crate::{
    error::{Error, ErrorKind},
    listen::ListenOptions,
    name::PipeName,
};

/// Size of `sockaddr_un::sun_path`, including the terminating NUL: 108 on Linux, 104 on macOS
/// and the BSDs. Taken from libc's struct so every target gets its own value.
pub(crate) const SUN_PATH_MAX: usize =
    size_of::<libc::sockaddr_un>() - std::mem::offset_of!(libc::sockaddr_un, sun_path);

/// How long `bind` waits for the per-name lock before reporting the name as in use. A live
/// listener holds it for its whole life, but then its socket answers the probe and `bind`
/// fails at once; otherwise holders only keep it for a probe connect and a bind (or an
/// unlink), so a lock held longer with no live socket means a pathological peer.
const LOCK_WAIT_BIND: Duration = Duration::from_secs(1);
/// How often a `bind` waiting for a busy lock probes the socket for a live server.
const PROBE_EVERY: Duration = Duration::from_millis(10);
/// How long a dropping listener that does not hold its lock (it bound beside a lock holder
/// whose socket was deleted) waits for the lock before leaving its socket file behind (the
/// next `bind` reclaims it as stale).
const LOCK_WAIT_DROP: Duration = Duration::from_millis(100);
/// Bound on the liveness probe of an existing socket file.
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);

pub(crate) fn is_absolute_path_str(s: &str) -> bool {
    s.starts_with('/')
}

/// This process's effective user and group ids: what the kernel reports to our peers.
pub(crate) fn effective_ids() -> (u32, u32) {
    #[allow(unsafe_code)]
    // SAFETY: geteuid and getegid have no preconditions, touch no memory of ours and cannot
    // fail.
    unsafe {
        (libc::geteuid(), libc::getegid())
    }
}

pub(crate) fn current_uid() -> u32 {
    #[allow(unsafe_code)]
    // SAFETY: getuid has no preconditions, touches no memory of ours and cannot fail.
    unsafe {
        libc::getuid()
    }
}

pub(crate) fn plain_name_address(name: &str) -> PathBuf {
    plain_name_dir(std::env::var_os("XDG_RUNTIME_DIR"), &std::env::temp_dir(), current_uid())
        .join(format!("{name}.sock"))
}

/// The directory for plain names: `$XDG_RUNTIME_DIR/pipe-rpc` if that variable names an
/// existing directory by absolute path, else `{temp}/pipe-rpc-{uid}`. The uid suffix keeps users
/// apart in a shared temp directory, where a fixed name could be squatted by someone else.
pub(crate) fn plain_name_dir(xdg: Option<OsString>, temp: &Path, uid: u32) -> PathBuf {
    if let Some(xdg) = xdg.map(PathBuf::from)
        && xdg.is_absolute()
        && xdg.is_dir()
    {
        return xdg.join("pipe-rpc");
    }
    temp.join(format!("pipe-rpc-{uid}"))
}

pub(crate) fn check_address(name: &PipeName, addr: &Path) -> Result<(), Error> {
    let bytes = addr.as_os_str().as_bytes();
    let invalid = |why: String| {
        Error::new(ErrorKind::InvalidName, format!("invalid pipe name `{}`: {why}", name.as_str())).with_name(name)
    };
    if bytes.is_empty() {
        return Err(invalid("the path is empty".into()));
    }
    if bytes.contains(&0) {
        return Err(invalid("the path contains a NUL byte".into()));
    }
    if bytes.len() >= SUN_PATH_MAX {
        return Err(invalid(format!(
            "the socket path {} is {} bytes, over the limit of {} bytes (a Unix socket address \
             holds {SUN_PATH_MAX} bytes including the terminating NUL); use a shorter name, or \
             PipeName::path with a shorter path",
            addr.display(),
            bytes.len(),
            SUN_PATH_MAX - 1,
        )));
    }
    Ok(())
}

/// Makes sure `dir` is a directory private to us: a real directory (not a symlink), owned by
/// our uid, not writable by group or others. With `create`, a missing directory is created with
/// mode 0700. Returns whether the directory exists.
///
/// Why refuse rather than fix: a directory we do not own, or that others can write, lets them
/// replace our socket with their own and read what clients send.
pub(crate) fn ensure_private_dir(dir: &Path, create: bool) -> Result<bool, Error> {
    let io_fail = |what: &str, e: io::Error| {
        let kind =
            if e.kind() == io::ErrorKind::PermissionDenied { ErrorKind::PermissionDenied } else { ErrorKind::Io };
        Error::new(kind, format!("cannot {what} directory {}: {e}", dir.display())).with_source(e)
    };
    let md = match fs::symlink_metadata(dir) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match fs::DirBuilder::new().mode(0o700).create(dir) {
                // The umask can only clear bits; set exactly 0700 so the owner can always use it.
                Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .map_err(|e| io_fail("set the mode of", e))?,
                // Another listener created it at the same moment; it is checked below.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_fail("create", e)),
            }
            fs::symlink_metadata(dir).map_err(|e| io_fail("inspect", e))?
        }
        Err(e) => return Err(io_fail("inspect", e)),
    };
    let refuse = |why: String| {
        Error::new(ErrorKind::PermissionDenied, format!("refusing to use directory {}: {why}", dir.display()))
    };
    if !md.file_type().is_dir() {
        return Err(refuse("it is not a directory (a symlink or file is in the way)".into()));
    }
    let uid = current_uid();
    if md.uid() != uid {
        return Err(refuse(format!("it is owned by uid {}, not by the current user (uid {uid})", md.uid())));
    }
    let mode = md.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(refuse(format!(
            "it is group- or world-writable (mode {mode:04o}); run `chmod 700 {}`",
            dir.display()
        )));
    }
    Ok(true)
}

/// An exclusive `flock` on `<socket path>.lock`, taken before a listener probes, clears and
/// binds a name and held for the listener's whole life, until it has removed its socket file.
/// Without it, two servers that both find a stale file could each unlink it and bind, and the
/// slower one would delete the faster one's fresh socket; or a listener being dropped could
/// unlink the socket of a server that just replaced it.
///
/// Held for life, it also says which socket files are stale without connecting to them: the
/// kernel releases a `flock` when the last descriptor of its file closes, so the lock of a
/// killed server is free while a live server's is not. That is what [`sweep_stale`] relies on.
/// (A process that forks without exec'ing shares the descriptor, and the lock, with the
/// child; the files are close-on-exec, so a spawned program does not.)
///
/// The lock file is deleted (by its holder) when the name is released, so unique test names do
/// not pile up lock files. That is safe because a lock only counts if, once taken, the path
/// still names the locked file: whoever waited on a file that was deleted meanwhile retries on
/// the current one.
struct NameLock {
    file: fs::File,
    path: PathBuf,
}

impl NameLock {
    fn acquire(sock_path: &Path, wait: Duration) -> io::Result<NameLock> {
        Self::acquire_while(sock_path, wait, || Ok(()))
    }

    /// [`acquire`](Self::acquire), calling `busy` while the lock is held by someone else
    /// (every [`PROBE_EVERY`], the first time at once); an `Err` from it ends the wait.
    fn acquire_while(
        sock_path: &Path,
        wait: Duration,
        mut busy: impl FnMut() -> io::Result<()>,
    ) -> io::Result<NameLock> {
        let path = lock_path(sock_path);
        let deadline = Instant::now() + wait;
        let mut next_probe = Instant::now();
        loop {
            let file = open_lock_file(&path, true)?;
            loop {
                match flock_exclusive_nonblocking(&file) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                        if Instant::now() >= next_probe {
                            busy()?;
                            next_probe = Instant::now() + PROBE_EVERY;
                        }
                        // Blocking briefly is acceptable here: holders that are not live
                        // listeners keep the lock for well under a millisecond unless a probe
                        // connect has to time out.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            let held = file.metadata()?;
            match fs::symlink_metadata(&path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                    return Ok(NameLock { file, path });
                }
                // The previous holder deleted the file we locked: retry on the current one.
                Ok(_) | Err(_) if Instant::now() < deadline => continue,
                Ok(_) => return Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the lock file belongs to this process's effective user.
    fn is_ours(&self) -> bool {
        self.file.metadata().is_ok_and(|md| md.uid() == effective_ids().0)
    }

    /// Deletes the lock file, then releases the lock (closing the file).
    fn remove(self) {
        let _ = fs::remove_file(&self.path);
        drop(self.file);
    }
}

/// `<socket path>.lock`.
fn lock_path(sock_path: &Path) -> PathBuf {
    let mut path = sock_path.as_os_str().to_owned();
    path.push(".lock");
    PathBuf::from(path)
}

fn open_lock_file(path: &Path, create: bool) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .mode(0o600)
        // Never follow a symlink planted in a shared directory such as /tmp.
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn flock_exclusive_nonblocking(file: &fs::File) -> io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: the descriptor is open for the whole call (borrowed from `file`); flock reads no
    // memory of ours.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Holds the name lock for the listener's life and removes the listener's socket file on
/// drop, under that lock and only if the file is still the one this listener created (same
/// device and inode), then the lock file. interprocess's own `reclaim_name` unlinks whatever
/// is at the path, after closing the socket.
pub(crate) struct Reclaim {
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// `None` only for a listener that bound beside a holder whose socket had been deleted.
    lock: Option<NameLock>,
}

impl std::fmt::Debug for Reclaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reclaim").field("path", &self.path).field("locked", &self.lock.is_some()).finish()
    }
}

impl Drop for Reclaim {
    fn drop(&mut self) {
        let lock = match self.lock.take() {
            Some(lock) => lock,
            None => match NameLock::acquire(&self.path, LOCK_WAIT_DROP) {
                Ok(lock) => lock,
                Err(_) => {
                    tracing::debug!(path = %self.path.display(), "name lock busy; leaving socket file");
                    return;
                }
            },
        };
        match fs::symlink_metadata(&self.path) {
            Ok(md) if md.dev() == self.dev && md.ino() == self.ino => {
                let _ = fs::remove_file(&self.path);
                lock.remove();
            }
            // Gone: nobody needs the lock file either.
            Err(e) if e.kind() == io::ErrorKind::NotFound => lock.remove(),
            // Another server's socket: its lock file stays for it.
            _ => {}
        }
    }
}

/// What a connect to an existing socket file says about it.
enum Probe {
    /// Someone accepted or queued the connection (or the backlog is full): a live server,
    /// and who it is when the connection reports it.
    Live(Option<crate::PeerCredentials>),
    /// `ECONNREFUSED`: the file is left over from a server that is gone.
    Stale,
    /// The file disappeared in the meantime.
    Gone,
    Failed(io::Error),
}

fn probe(addr: &Path) -> Probe {
    let name = match addr.to_fs_name::<GenericFilePath>() {
        Ok(n) => n,
        Err(e) => return Probe::Failed(e),
    };
    // A nonblocking connect bounded by a timeout: a plain blocking connect to a live server
    // whose backlog is full would wait until the server accepts, possibly forever.
    let result = IpConnectOptions::new().name(name).wait_mode(ConnectWaitMode::Timeout(PROBE_TIMEOUT)).connect_sync();
    match result {
        Ok(stream) => {
            use interprocess::local_socket::traits::StreamCommon as _;
            let who = stream.peer_creds().ok().map(|c| crate::PeerCredentials::of(&c));
            Probe::Live(who)
        }
        Err(e) => match e.kind() {
            io::ErrorKind::ConnectionRefused => Probe::Stale,
            io::ErrorKind::NotFound => Probe::Gone,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Probe::Live(None),
            _ => Probe::Failed(e),
        },
    }
}

fn io_error(name: &PipeName, addr: &Path, what: &str, e: io::Error) -> Error {
    let kind = if e.kind() == io::ErrorKind::PermissionDenied { ErrorKind::PermissionDenied } else { ErrorKind::Io };
    Error::new(kind, format!("cannot {what} pipe `{}` at {}: {e}", name.as_str(), addr.display()))
        .with_name(name)
        .with_source(e)
}

fn name_in_use(name: &PipeName, addr: &Path, who: Option<crate::PeerCredentials>) -> Error {
    let who = who.map(|w| format!(" ({w})")).unwrap_or_default();
    Error::new(
        ErrorKind::NameInUse,
        format!("name in use: another server{who} is listening on pipe `{}` at {}", name.as_str(), addr.display()),
    )
    .with_name(name)
}

fn not_a_socket(name: &PipeName, addr: &Path) -> Error {
    Error::new(
        ErrorKind::NameInUse,
        format!(
            "cannot listen on pipe `{}`: {} exists and is not a socket; refusing to replace it",
            name.as_str(),
            addr.display()
        ),
    )
    .with_name(name)
}

fn foreign_socket(name: &PipeName, addr: &Path, owner: u32, euid: u32) -> Error {
    Error::new(
        ErrorKind::ForeignSocket,
        format!(
            "cannot listen on pipe `{}`: {} is a stale socket file of uid {owner}, not of this              process's user (uid {euid}); refusing to take over another user's socket: if that              user's server is gone for good, remove the file by hand (`rm {}`)",
            name.as_str(),
            addr.display(),
            addr.display()
        ),
    )
    .with_name(name)
    .with_owner(addr, owner)
}

/// Removes a stale socket file of our own at `addr`; refuses to touch a live one, another
/// user's, or a non-socket. Must be called with the name lock held.
///
/// Why another user's stale socket is refused, even by root: in a shared directory it is that
/// user's name (their server may be about to restart on it, their clients may connect to it),
/// and a server that took it over would receive what those clients send. Only its owner, or a
/// person who decides so, removes it.
fn clear_stale(name: &PipeName, addr: &Path) -> Result<(), Error> {
    let md = match fs::symlink_metadata(addr) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(name, addr, "inspect", e)),
    };
    if !md.file_type().is_socket() {
        return Err(not_a_socket(name, addr));
    }
    match probe(addr) {
        Probe::Live(who) => Err(name_in_use(name, addr, who)),
        Probe::Gone => Ok(()),
        Probe::Stale => {
            // Looked at again after the probe, right before the unlink: whose file is it now?
            let md = match fs::symlink_metadata(addr) {
                Ok(md) => md,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_error(name, addr, "inspect", e)),
            };
            if !md.file_type().is_socket() {
                return Err(not_a_socket(name, addr));
            }
            let (euid, _) = effective_ids();
            if md.uid() != euid {
                return Err(foreign_socket(name, addr, md.uid(), euid));
            }
            unlink_stale(name, addr)
        }
        Probe::Failed(e) => Err(io_error(name, addr, "probe the existing socket file of", e)),
    }
}

/// Unlinks our own stale socket file at `addr`.
fn unlink_stale(name: &PipeName, addr: &Path) -> Result<(), Error> {
    match fs::remove_file(addr) {
        Ok(()) => {
            tracing::debug!(path = %addr.display(), "removed stale socket file");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(name, addr, "remove the stale socket file of", e)),
    }
}

pub(crate) fn bind(name: &PipeName, addr: &Path, opts: &ListenOptions) -> Result<(Listener, Reclaim), Error> {
    if name.is_plain()
        && let Some(dir) = addr.parent()
    {
        ensure_private_dir(dir, true)
            .map_err(|e| e.context(format_args!("cannot listen on pipe `{}`", name.as_str())).with_name(name))?;
    }
    let lock = match lock_name(name, addr, "listen on") {
        Ok(lock) => Some(lock),
        // The lock's holder has no socket at the path: a listener whose socket file someone
        // deleted (it can be reached no more). Bind beside it without the lock: `listen`
        // never displaces a socket, and neither listener's drop removes the other's file.
        Err(e)
            if e.kind() == ErrorKind::NameInUse
                && fs::symlink_metadata(addr).is_err_and(|e| e.kind() == io::ErrorKind::NotFound) =>
        {
            None
        }
        Err(e) => return Err(e),
    };
    if name.is_plain()
        && let Some(dir) = addr.parent()
    {
        // After taking our own lock, so that the sweep passes over our name.
        sweep_stale(dir);
    }
    match clear_and_listen(name, addr, opts) {
        Ok(listener) => {
            let md = fs::symlink_metadata(addr).map_err(|e| io_error(name, addr, "inspect", e))?;
            // The lock stays held, and its file in place, until `Reclaim` removes them with
            // the socket.
            Ok((listener, Reclaim { path: addr.to_owned(), dev: md.dev(), ino: md.ino(), lock }))
        }
        Err(e) => {
            // Keep the lock file while a socket (someone else's) exists at the path; but beside
            // another user's stale socket a lock file of ours would only stand in that user's
            // way when their server starts again (they cannot open it), so it goes.
            let gone = fs::symlink_metadata(addr).is_err_and(|e| e.kind() == io::ErrorKind::NotFound);
            if let Some(lock) = lock
                && (gone || (e.kind() == ErrorKind::ForeignSocket && lock.is_ours()))
            {
                lock.remove();
            }
            Err(e)
        }
    }
}

/// Takes the name lock of `addr` for `bind` or `remove_stale` (`what` they are about to do):
/// while someone else holds it, a live server answering on the socket fails the call at once
/// with [`ErrorKind::NameInUse`]; a lock held for over [`LOCK_WAIT_BIND`] with no live socket
/// fails it too.
fn lock_name(name: &PipeName, addr: &Path, what: &str) -> Result<NameLock, Error> {
    let mut live = None;
    let lock = NameLock::acquire_while(addr, LOCK_WAIT_BIND, || match probe(addr) {
        Probe::Live(who) => {
            live = Some(who);
            Err(io::ErrorKind::AddrInUse.into())
        }
        _ => Ok(()),
    });
    lock.map_err(|e| {
        if let Some(who) = live.take() {
            name_in_use(name, addr, who)
        } else if e.kind() == io::ErrorKind::WouldBlock {
            Error::new(
                ErrorKind::NameInUse,
                format!(
                    "cannot {what} pipe `{}` at {}: another process has held its lock file for over {} ms \
                     with no server answering on the socket (a process that forked from a server and \
                     kept its descriptors, or one that holds the lock by hand)",
                    name.as_str(),
                    addr.display(),
                    LOCK_WAIT_BIND.as_millis()
                ),
            )
            .with_name(name)
            .with_source(e)
        } else {
            io_error(name, addr, "open the lock file of", e)
        }
    })
}

/// Removes the socket and lock files a server of `name` left at `addr` if it is gone (its
/// lock is free and its socket refuses connections); `Ok(true)` if there was a socket file
/// to remove. Refuses a live server's, another user's and anything that is not a socket, as
/// `bind` does.
pub(crate) fn remove_stale(name: &PipeName, addr: &Path) -> Result<bool, Error> {
    if name.is_plain() {
        match addr.parent().map(|dir| ensure_private_dir(dir, false)) {
            // No directory, no files.
            Some(Ok(false)) => return Ok(false),
            Some(Err(e)) => {
                return Err(e.context(format_args!("cannot clean up pipe `{}`", name.as_str())).with_name(name));
            }
            Some(Ok(true)) | None => {}
        }
    }
    let lock = lock_name(name, addr, "clean up")?;
    let existed = fs::symlink_metadata(addr).is_ok();
    match clear_stale(name, addr) {
        Ok(()) => {
            lock.remove();
            Ok(existed)
        }
        Err(e) => {
            if e.kind() == ErrorKind::ForeignSocket && lock.is_ours() {
                lock.remove();
            }
            Err(e)
        }
    }
}

/// Most lock files one sweep looks at, so that a directory of thousands of names does not
/// slow a `bind` down by much; the next `bind` sweeps the rest.
const SWEEP_MAX: usize = 256;

/// Removes what killed servers of this user left in the per-user directory `dir`: for each
/// `NAME.sock.lock` whose lock is free (no live listener holds it), the lock file, and
/// `NAME.sock` beside it if that is a socket of ours that refuses connections. Without it,
/// every server killed on a name never bound again (a test's unique name, say) leaves its
/// two files for good. Anything else is left alone: a live socket (of a server that does not
/// take the lock), another user's file, a file that is not a socket. Best effort: a file that
/// cannot be read or removed is skipped, and the `bind` goes on.
fn sweep_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    let mut looked = 0;
    for entry in entries.flatten() {
        let lock_file = entry.path();
        let Some(sock) = lock_file
            .to_str()
            .and_then(|p| p.strip_suffix(".lock"))
            .filter(|p| p.ends_with(".sock"))
            .map(PathBuf::from)
        else {
            continue;
        };
        looked += 1;
        if looked > SWEEP_MAX {
            break;
        }
        let sock = sock.as_path();
        // Never created here: a lock file deleted meanwhile is someone else's business done.
        let Ok(file) = open_lock_file(&lock_file, false) else { continue };
        if flock_exclusive_nonblocking(&file).is_err() {
            continue; // a live listener's, or another `bind` or sweep at work on it
        }
        let Ok(held) = file.metadata() else { continue };
        match fs::symlink_metadata(&lock_file) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {}
            _ => continue, // deleted (and maybe made again) by its holder meanwhile
        }
        let lock = NameLock { file, path: lock_file };
        let stale = match fs::symlink_metadata(sock) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Ok(md) if md.file_type().is_socket() && md.uid() == effective_ids().0 => match probe(sock) {
                Probe::Stale => fs::remove_file(sock).is_ok_and(|()| {
                    tracing::debug!(path = %sock.display(), "swept a stale socket file");
                    true
                }),
                Probe::Gone => true,
                Probe::Live(_) | Probe::Failed(_) => false,
            },
            _ => false,
        };
        if stale {
            lock.remove();
        }
    }
}

/// The part of `bind` done under the name lock.
fn clear_and_listen(name: &PipeName, addr: &Path, opts: &ListenOptions) -> Result<Listener, Error> {
    clear_stale(name, addr)?;
    let fs_name = addr.to_fs_name::<GenericFilePath>().map_err(|e| io_error(name, addr, "use", e))?;
    let listener = listen(name, addr, fs_name, opts)?;
    // `bind` applies the umask on top of the mode set before it, so a mode wider than the
    // umask allows (a socket meant for other users) is set again, exactly. The file only
    // ever existed with a stricter mode.
    let mode = opts.mode & 0o777;
    let created = fs::metadata(addr).map(|m| m.mode() & 0o777).unwrap_or(mode);
    if created != mode {
        fs::set_permissions(addr, fs::Permissions::from_mode(mode))
            .map_err(|e| io_error(name, addr, "set the mode of", e))?;
    }
    Ok(listener)
}

fn listen(
    name: &PipeName,
    addr: &Path,
    fs_name: interprocess::local_socket::Name<'_>,
    opts: &ListenOptions,
) -> Result<Listener, Error> {
    ListenerOptions::new()
        .name(fs_name)
        // Applied with fchmod before bind, so the file never exists with a looser mode.
        .mode((opts.mode & 0o777) as libc::mode_t)
        // Our `Reclaim` unlinks on drop instead (under the lock, only our own file).
        .reclaim_name(false)
        // Never displace a live listener; stale files were handled above.
        .try_overwrite(false)
        .create_tokio()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                // Someone that does not take our lock bound the path in between.
                name_in_use(name, addr, None).with_source(e)
            } else {
                io_error(name, addr, "listen on", e)
            }
        })
}

/// Client-side check before each attempt: for plain names, the directory must be private to us
/// (else a squatter could impersonate the server). A missing directory just means "not running".
pub(crate) fn check_client_dir(name: &PipeName, addr: &Path) -> Result<(), Error> {
    if name.is_plain()
        && let Some(dir) = addr.parent()
    {
        ensure_private_dir(dir, false)
            .map_err(|e| e.context(format_args!("cannot connect to pipe `{}`", name.as_str())).with_name(name))?;
    }
    Ok(())
}

/// One connection attempt. tokio's connect (unlike interprocess's) reports a full backlog as
/// `WouldBlock` (EAGAIN): interprocess treats EAGAIN as "in progress", waits for writability,
/// which an unconnected Unix socket reports at once, and returns a stream that is not connected.
pub(crate) async fn connect_once(addr: &Path) -> io::Result<Stream> {
    let stream = tokio::net::UnixStream::connect(addr).await?;
    Ok(Stream::from(uds_local_socket::tokio::Stream::from(stream)))
}

pub(crate) fn classify(e: &io::Error) -> ConnectFailure {
    match e.kind() {
        // A reset or abort during connect means the listener closed while our connection
        // sat in its backlog: a server shutting down or restarting. Keep trying, as for a
        // server that is not up yet.
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
            ConnectFailure::NotRunning
        }
        io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
        io::ErrorKind::WouldBlock => ConnectFailure::Busy,
        io::ErrorKind::PermissionDenied => ConnectFailure::PermissionDenied,
        _ => ConnectFailure::Other,
    }
}

pub(crate) const BUSY_REASON: &str = "the server's listen backlog is full";

/// Whether `ECONNREFUSED` may mean a live server with a full listen backlog rather than a
/// stale socket file. Linux reports a full backlog of a Unix socket as `EAGAIN` (our `Busy`)
/// and refuses only where nothing listens; macOS and the BSDs refuse in both cases, so
/// there a refusal is retried briefly (`REFUSED_GRACE` in `connect.rs`) before it is
/// reported.
pub(crate) const REFUSED_MAY_BE_BUSY: bool = !cfg!(any(target_os = "linux", target_os = "android"));

/// The child's end of a [`ChildPipe`](crate::ChildPipe): a socket close-on-exec in this
/// process.
#[derive(Debug)]
pub(crate) struct ChildEnd(std::os::fd::OwnedFd);

/// A connected socket pair, both ends close-on-exec (std sets `SOCK_CLOEXEC`): ours for
/// tokio, and the child's.
pub(crate) fn child_pair() -> io::Result<(Stream, ChildEnd)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    let ours = tokio::net::UnixStream::from_std(ours)?;
    Ok((Stream::from(uds_local_socket::tokio::Stream::from(ours)), ChildEnd(theirs.into())))
}

/// Makes `end` inheritable in the child `command` spawns, and only there: the hook runs in
/// the child between `fork` and `exec` and clears close-on-exec on the descriptor, whose
/// number the child then reads from the environment. Returns that number as `fd=N`.
pub(crate) fn prepare_child(end: &ChildEnd, command: &mut std::process::Command) -> io::Result<String> {
    use std::os::unix::process::CommandExt as _;
    let fd = end.0.as_raw_fd();
    let clear_cloexec = move || {
        // Only async-signal-safe calls here (we are in a forked child): fcntl is one.
        #[allow(unsafe_code)]
        // SAFETY: fcntl on a descriptor number touches no memory of ours; the descriptor is
        // open in the child, inherited from the parent that holds it until after the spawn.
        let rc = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags < 0 { flags } else { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) }
        };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    };
    #[allow(unsafe_code)]
    // SAFETY: the hook only calls fcntl, which is async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(clear_cloexec);
    }
    Ok(format!("fd={fd}"))
}

/// In the child: takes the descriptor named by `place` (`fd=N`) as its end of the pipe to
/// the parent `parent_pid`, after checking that this process's parent is that process and
/// that the descriptor is a stream socket; makes it close-on-exec again.
pub(crate) fn adopt_parent_end(place: &str, parent_pid: u32) -> Result<Stream, String> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    let fd: i32 = place
        .strip_prefix("fd=")
        .and_then(|n| n.parse().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| format!("`{place}` names no descriptor (expected fd=N)"))?;
    #[allow(unsafe_code)]
    // SAFETY: getppid has no preconditions and cannot fail.
    let ppid = unsafe { libc::getppid() };
    if u32::try_from(ppid).ok() != Some(parent_pid) {
        return Err(format!(
            "the variable names pid {parent_pid} as the parent, but this process's parent is pid {ppid} (it was              inherited from an ancestor, or the parent has exited)"
        ));
    }
    #[allow(unsafe_code)]
    // SAFETY: `st` is a properly sized out-parameter; fstat on any descriptor number is sound.
    let is_socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    };
    if !is_socket {
        return Err(format!("descriptor {fd} is not an open socket"));
    }
    let mut kind: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    #[allow(unsafe_code)]
    // SAFETY: `kind` and `len` are live out-parameters of the sizes given.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, (&raw mut kind).cast(), &mut len) };
    if rc != 0 || kind != libc::SOCK_STREAM {
        return Err(format!("descriptor {fd} is not a stream socket"));
    }
    #[allow(unsafe_code)]
    // SAFETY: the descriptor is open (fstat succeeded) and was handed to this process for this
    // purpose; `parent_pipe` takes it once per process, so it gets exactly one owner.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let std_stream = std::os::unix::net::UnixStream::from(fd);
    #[allow(unsafe_code)]
    // SAFETY: fcntl on our own open descriptor.
    unsafe {
        let flags = libc::fcntl(std_stream.as_raw_fd(), libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(std_stream.as_raw_fd(), libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
    std_stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    let stream = tokio::net::UnixStream::from_std(std_stream).map_err(|e| e.to_string())?;
    Ok(Stream::from(uds_local_socket::tokio::Stream::from(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_closing_during_connect_counts_as_not_running() {
        for kind in [io::ErrorKind::NotFound, io::ErrorKind::ConnectionReset, io::ErrorKind::ConnectionAborted] {
            assert_eq!(classify(&io::Error::from(kind)), ConnectFailure::NotRunning, "{kind:?}");
        }
        assert_eq!(classify(&io::Error::from(io::ErrorKind::ConnectionRefused)), ConnectFailure::Refused);
        assert_eq!(classify(&io::Error::from(io::ErrorKind::WouldBlock)), ConnectFailure::Busy);
    }

    #[test]
    fn sun_path_size_matches_the_platform() {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert_eq!(SUN_PATH_MAX, 108);
        #[cfg(any(target_os = "macos", target_os = "freebsd", target_os = "openbsd"))]
        assert_eq!(SUN_PATH_MAX, 104);
    }

    #[test]
    fn plain_dir_prefers_an_existing_absolute_xdg_runtime_dir() {
        let temp = std::env::temp_dir();
        let existing = temp.clone().into_os_string();
        assert_eq!(plain_name_dir(Some(existing), Path::new("/t"), 7), temp.join("pipe-rpc"));
        // Missing, relative or unset: fall back to the per-uid temp directory.
        for xdg in [Some("/nonexistent/xdg-dir".into()), Some("relative".into()), None] {
            assert_eq!(plain_name_dir(xdg, Path::new("/t"), 7), Path::new("/t/pipe-rpc-7"));
        }
    }

    #[test]
    fn plain_names_map_to_sock_files() {
        let addr = PipeName::new("abc").resolve().unwrap();
        assert_eq!(addr.file_name().unwrap(), "abc.sock");
        let dir = addr.parent().unwrap().file_name().unwrap().to_string_lossy().into_owned();
        assert!(dir == "pipe-rpc" || dir == format!("pipe-rpc-{}", current_uid()), "{dir}");
    }

    #[test]
    fn overlong_socket_path_names_the_limit() {
        let long = PipeName::path(format!("/tmp/{}", "p".repeat(SUN_PATH_MAX)));
        let e = long.resolve().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidName);
        let msg = e.to_string();
        assert!(msg.contains(&format!("limit of {} bytes", SUN_PATH_MAX - 1)), "{msg}");
        assert!(msg.contains("PipeName::path"), "{msg}");
        // Exactly at the limit is fine.
        let max = format!("/tmp/{}", "p".repeat(SUN_PATH_MAX - 1 - "/tmp/".len()));
        PipeName::path(max).resolve().unwrap();
        // NUL bytes cannot be passed to the kernel.
        assert_eq!(PipeName::path("/tmp/a\0b").resolve().unwrap_err().kind(), ErrorKind::InvalidName);
    }

    fn scratch_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tp-unit-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir(&d).unwrap();
        d
    }

    #[test]
    fn private_dir_is_created_0700() {
        let base = scratch_dir("create");
        let dir = base.join("sub");
        assert!(!ensure_private_dir(&dir, false).unwrap());
        assert!(ensure_private_dir(&dir, true).unwrap());
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o700);
        assert!(ensure_private_dir(&dir, false).unwrap());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn writable_or_symlinked_dirs_are_refused() {
        let base = scratch_dir("refuse");
        let open = base.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_private_dir(&open, true).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("world-writable (mode 0777)"), "{e}");

        let link = base.join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        let e = ensure_private_dir(&link, true).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("not a directory"), "{e}");
        fs::remove_dir_all(&base).unwrap();
    }
}

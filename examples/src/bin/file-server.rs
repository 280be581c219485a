//! `file-server`: seed 004's file server, done safely. It serves the files of a directory
//! to several clients at once, each client learns who the server is from the operating
//! system before it sends anything, and each file is read only if the *calling user* may
//! read it.
//!
//! ```text
//! file-server --serve NAME DIR [--anyone]   # serve DIR on pipe NAME (NAME may be a socket path)
//! file-server --read NAME FILE [--server-uid UID]  # print who serves NAME, then FILE's contents
//! ```
//!
//! The server admits only its own user unless `--anyone` is given (then every user who
//! can open the pipe is admitted; on Unix the socket is made `0666`: put it in a directory
//! the other users can reach, such as a path under `/tmp`; on Windows the pipe's descriptor
//! also grants every authenticated user read and write, `(A;;GRGW;;;AU)`, which lets them add
//! instances of the pipe too: a client's check of who serves it refuses such an instance).
//! Either way each request is checked against the caller's credentials, which the handler
//! reads from its context, so a client never reads through the server what it could not
//! read itself:
//!
//! - Unix: the file's owner, group and mode bits against the client's uid, gid and
//!   supplementary groups (root may read anything), what `access(2)` would decide for that
//!   user. Seed 004 impersonates the client to the same end; a Unix server cannot become
//!   another user without privileges.
//! - Windows: `AccessCheck` of the file's security descriptor (owner, group, DACL) for
//!   `FILE_GENERIC_READ` against an identification-level copy of the caller's process token,
//!   and the file is read through the handle that was checked
//!   (`pipe_rpc_examples::win_access`). That module says why the token and not
//!   `ImpersonateNamedPipeClient` (a handler has the caller's pid and SID, not the pipe), and
//!   what it costs: to check callers of other users the server must be able to open their
//!   tokens (LocalSystem, or `SeDebugPrivilege`); an ordinary user's server refuses them,
//!   saying why.
//!
//! A caller whose user is unknown, or whose access cannot be checked, is refused (fail
//! closed). Paths are relative to DIR and may not leave it.
//!
//! The client accepts a server of its own user by default; `--server-uid UID` expects that
//! user instead (for a server run by another account; Unix). It prints `server: pid P, uid U`
//! (Windows: `server: pid P, user S-1-5-21-...`) from the operating system, then the file,
//! or a typed denial such as
//! `denied: uid 65534 may not read secret.txt (owner uid 0, group 0, mode 0600)` or, on
//! Windows, `denied: user S-1-5-21-...-1001 may not read secret.txt (owner
//! S-1-5-21-...-1000, DACL D:P(A;;FA;;;SY)(A;;FA;;;S-1-5-21-...-1000))`, and exits 0, or 1 on
//! an error.

use std::error::Error;
use std::fs::File;
use std::io::Read as _;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use pipe_rpc_examples::server::{OnStdinEof, stop_requested};
use rpc_core::{AccessPolicy, ClientConfig, PeerCredentials, RpcError, Server, ServerConfig, ServerIdentity};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Largest file served (the reply is one message, within the default 4 MiB limit).
const MAX_FILE: u64 = 1 << 20;

/// Why a read was refused.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
pub enum FileError {
    /// The caller's user may not read the file.
    #[error("denied: {0}")]
    Denied(String),
    /// No such file under the served directory.
    #[error("not found: {0}")]
    NotFound(String),
    /// The path is absolute, leaves the directory, or names something other than a file.
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// The file is larger than [`MAX_FILE`].
    #[error("too large: {0}")]
    TooLarge(String),
    /// The call itself failed.
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// The files of one directory, each read only if the calling user may read it.
#[rpc_core::service]
pub trait Files {
    /// The contents of `path` (relative to the served directory), if the calling user may
    /// read it.
    async fn read(&self, path: String) -> Result<ByteBuf, FileError>;
}

struct Dir {
    root: PathBuf,
}

impl Files for Dir {
    async fn read(&self, path: String) -> Result<ByteBuf, FileError> {
        let caller = rpc_core::context::current().and_then(|c| c.peer).unwrap_or_default();
        let full = resolve(&self.root, &path)?;
        let root = self.root.clone();
        // File system work on a blocking thread, not the runtime's.
        tokio::task::spawn_blocking(move || read_as(&root, &full, &path, &caller))
            .await
            .map_err(|e| FileError::Denied(format!("the read failed: {e}")))?
    }
}

/// `path` under `root`, refusing anything that could leave it.
fn resolve(root: &Path, path: &str) -> Result<PathBuf, FileError> {
    let rel = Path::new(path);
    if path.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(FileError::InvalidPath(format!("{path:?}: give a path inside the served directory")));
    }
    Ok(root.join(rel))
}

/// Reads `full` if `caller` may: on Unix the checks `access(2)` would make for that user, on
/// Windows `AccessCheck` against the caller's token.
fn read_as(root: &Path, full: &Path, shown: &str, caller: &PeerCredentials) -> Result<ByteBuf, FileError> {
    // Symbolic links could point out of the directory: resolve and check containment.
    let real = full.canonicalize().map_err(|_| FileError::NotFound(shown.to_owned()))?;
    let real_root = root.canonicalize().map_err(|e| FileError::NotFound(format!("the served directory: {e}")))?;
    if !real.starts_with(&real_root) {
        return Err(FileError::InvalidPath(format!("{shown:?} leads out of the served directory")));
    }
    let md = std::fs::metadata(&real).map_err(|_| FileError::NotFound(shown.to_owned()))?;
    if !md.is_file() {
        return Err(FileError::InvalidPath(format!("{shown:?} is not a file")));
    }
    let file = open_as(&real, &md, shown, caller)?;
    if md.len() > MAX_FILE {
        return Err(FileError::TooLarge(format!(
            "{shown} is {} bytes; this server sends at most {MAX_FILE}",
            md.len()
        )));
    }
    // Bounded even if the file grew since it was measured.
    let mut bytes = Vec::new();
    file.take(MAX_FILE + 1).read_to_end(&mut bytes).map_err(|e| FileError::Denied(format!("{shown}: {e}")))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(FileError::TooLarge(format!("{shown} grew past {MAX_FILE} bytes while it was read")));
    }
    Ok(ByteBuf::from(bytes))
}

/// Opens `real` for reading if `caller` may read it (Unix: by its owner, group and mode).
#[cfg(unix)]
fn open_as(real: &Path, md: &std::fs::Metadata, shown: &str, caller: &PeerCredentials) -> Result<File, FileError> {
    may_read(md, shown, caller)?;
    File::open(real).map_err(|e| FileError::Denied(format!("{shown}: {e}")))
}

/// Opens `real` for reading if `caller` may read it (Windows: `AccessCheck` of its security
/// descriptor against the caller's token; see `pipe_rpc_examples::win_access`).
#[cfg(windows)]
fn open_as(real: &Path, _: &std::fs::Metadata, shown: &str, caller: &PeerCredentials) -> Result<File, FileError> {
    use pipe_rpc_examples::win_access::{self, AccessError};
    let (Some(pid), Some(sid)) = (caller.pid, caller.sid) else {
        return Err(FileError::Denied(format!(
            "the caller of {shown} is unknown ({caller}: its user could not be read when it connected)"
        )));
    };
    win_access::open_for_read(real, pid, &sid).map_err(|e| match e {
        AccessError::Denied { owner, dacl } => {
            FileError::Denied(format!("user {sid} may not read {shown} (owner {owner}, DACL {dacl})"))
        }
        AccessError::Open(e) if e.kind() == std::io::ErrorKind::NotFound => FileError::NotFound(shown.to_owned()),
        AccessError::Read(e) => FileError::Denied(format!("{shown}: {e}")),
        // Whatever kept us from checking refuses the read (fail closed), saying what it was.
        e => FileError::Denied(format!("cannot tell whether user {sid} may read {shown}, so it is refused: {e}")),
    })
}

/// No access check is written for this platform: every read is refused (fail closed).
#[cfg(not(any(unix, windows)))]
fn open_as(_: &Path, _: &std::fs::Metadata, shown: &str, _: &PeerCredentials) -> Result<File, FileError> {
    Err(FileError::Denied(format!("{shown}: this server cannot check file access on this platform")))
}

#[cfg(unix)]
fn may_read(md: &std::fs::Metadata, shown: &str, caller: &PeerCredentials) -> Result<(), FileError> {
    use std::os::unix::fs::MetadataExt;
    let (Some(uid), Some(gid)) = (caller.uid, caller.gid) else {
        return Err(FileError::Denied(format!("the caller of {shown} is unknown")));
    };
    let mode = md.mode();
    let allowed = if uid == 0 {
        true
    } else if md.uid() == uid {
        mode & 0o400 != 0
    } else if md.gid() == gid || groups_of(uid, gid).contains(&md.gid()) {
        mode & 0o040 != 0
    } else {
        mode & 0o004 != 0
    };
    if allowed {
        Ok(())
    } else {
        Err(FileError::Denied(format!(
            "uid {uid} may not read {shown} (owner uid {}, group {}, mode {:04o})",
            md.uid(),
            md.gid(),
            mode & 0o7777
        )))
    }
}

/// The supplementary groups of user `uid` (primary group `gid`), from the user database.
#[cfg(unix)]
fn groups_of(uid: u32, gid: u32) -> Vec<libc::gid_t> {
    use std::ffi::CStr;
    let mut pwd: libc::passwd = unsafe_zeroed_passwd();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    #[allow(unsafe_code)]
    // SAFETY: every pointer is to a live local of the right type and `buf.len()` is its size.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return Vec::new();
    }
    #[allow(unsafe_code)]
    // SAFETY: getpwuid_r succeeded, so `pw_name` points at a NUL-terminated name in `buf`.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) }.to_owned();
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut n = groups.len() as libc::c_int;
    #[allow(unsafe_code)]
    // SAFETY: `name` is NUL-terminated, `groups` has room for `n` entries.
    let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid as _, groups.as_mut_ptr().cast(), &mut n) };
    if rc < 0 {
        return Vec::new();
    }
    groups.truncate(usize::try_from(n).unwrap_or(0));
    groups
}

#[cfg(unix)]
fn unsafe_zeroed_passwd() -> libc::passwd {
    #[allow(unsafe_code)]
    // SAFETY: `passwd` is a plain C struct of integers and pointers; all-zero is a valid value
    // (null pointers), and getpwuid_r overwrites it before anything reads it.
    unsafe {
        std::mem::zeroed()
    }
}

async fn serve(name: &str, dir: &Path, anyone: bool) -> Result<(), Box<dyn Error>> {
    let dir = dir.canonicalize().map_err(|e| format!("cannot serve {}: {e}", dir.display()))?;
    let mut config = ServerConfig::default();
    if anyone {
        config = config.access(AccessPolicy::anyone()).socket_mode(0o666);
        // Windows: the owner-only default, plus read and write for every authenticated user.
        config.listen = config.listen.windows_sddl(format!("{}(A;;GRGW;;;AU)", rpc_core::pipe::OWNER_ONLY_SDDL));
    }
    let server = Server::new(FilesServer::new(Dir { root: dir.clone() })).config(config).bind(name)?;
    let me = PeerCredentials::current_process();
    println!("listening on {} as {me}, serving {}", server.name(), dir.display());
    let shutdown = server.shutdown_handle();
    tokio::spawn(async move {
        let why = stop_requested(OnStdinEof::Shutdown).await;
        println!("{why}: shutting down");
        shutdown.shutdown();
    });
    server.run().await?;
    println!("stopped");
    Ok(())
}

async fn read(name: &str, file: &str, server_uid: Option<u32>) -> Result<bool, Box<dyn Error>> {
    let expect = server_uid.map_or(ServerIdentity::SameUser, ServerIdentity::user);
    let client = FilesClient::connect_with(name, ClientConfig::default().expect_server(expect)).await?;
    match client.channel().peer().server {
        Some(server) => println!("server: {server}"),
        None => println!("server: unknown"),
    }
    match client.read(file.to_owned()).await {
        Ok(bytes) => {
            println!("{}", String::from_utf8_lossy(&bytes));
            Ok(true)
        }
        Err(
            e @ (FileError::Denied(_) | FileError::NotFound(_) | FileError::InvalidPath(_) | FileError::TooLarge(_)),
        ) => {
            println!("{e}");
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}

const USAGE: &str = "\
usage: file-server --serve NAME DIR [--anyone]
       file-server --read NAME FILE [--server-uid UID]";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["--serve", name, dir] => serve(name, Path::new(dir), false).await.map(|()| true),
        ["--serve", name, dir, "--anyone"] => serve(name, Path::new(dir), true).await.map(|()| true),
        ["--read", name, file] => read(name, file, None).await,
        ["--read", name, file, "--server-uid", uid] => match uid.parse() {
            Ok(uid) => read(name, file, Some(uid)).await,
            Err(_) => Err(format!("--server-uid {uid}: a user id").into()),
        },
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("file-server: {e}");
            ExitCode::from(1)
        }
    }
}

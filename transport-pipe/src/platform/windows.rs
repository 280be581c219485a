//! Windows: local named pipes `\\.\pipe\NAME`, with interprocess's defaults
//! (`FILE_FLAG_FIRST_PIPE_INSTANCE`, `PIPE_REJECT_REMOTE_CLIENTS`) and an explicit,
//! owner-only security descriptor ([`ListenOptions::windows_sddl`]).

use std::{
    io,
    os::windows::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use interprocess::{
    local_socket::{
        GenericFilePath, ListenerOptions, ToFsName,
        tokio::{Listener, Stream},
    },
    os::windows::{
        local_socket::ListenerOptionsExt as _,
        named_pipe::{local_socket as np_local, pipe_mode, tokio::DuplexPipeStream},
        security_descriptor::SecurityDescriptor,
    },
};

use windows_sys::Win32::Foundation::HANDLE;

use super::ConnectFailure;
use crate::{
    error::{Error, ErrorKind},
    listen::ListenOptions,
    name::PipeName,
};

/// Longest whole pipe name (`\\.\pipe\` included), in UTF-16 units.
pub(crate) const PIPE_NAME_MAX: usize = 256;
const PIPE_PREFIX: &str = r"\\.\pipe\";
/// Where plain names live in the machine-wide pipe namespace: apart from other programs'
/// pipes, so that listing pipe-rpc's endpoints never has to connect to anyone else's.
pub(crate) const PLAIN_PREFIX: &str = r"\\.\pipe\pipe-rpc.";

const ERROR_FILE_NOT_FOUND: i32 = 2;
const ERROR_PATH_NOT_FOUND: i32 = 3;
const ERROR_ACCESS_DENIED: i32 = 5;
const ERROR_PIPE_BUSY: i32 = 231;
const ERROR_NO_TOKEN: i32 = 1008;

pub(crate) fn is_absolute_path_str(s: &str) -> bool {
    s.starts_with(r"\\")
}

pub(crate) fn plain_name_address(name: &str) -> PathBuf {
    PathBuf::from(format!("{PLAIN_PREFIX}{name}"))
}

/// The plain name whose address is the pipe `pipe` of the namespace (`pipe` without the
/// `\\.\pipe\` part), if it is one: pipe names are case-insensitive.
pub(crate) fn plain_name_of(pipe: &str) -> Option<&str> {
    let prefix = &PLAIN_PREFIX[PIPE_PREFIX.len()..];
    let head = pipe.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &pipe[prefix.len()..]).filter(|name| !name.is_empty())
}

pub(crate) fn check_address(name: &PipeName, addr: &Path) -> Result<(), Error> {
    let invalid = |why: String| {
        Error::new(ErrorKind::InvalidName, format!("invalid pipe name `{}`: {why}", name.as_str())).with_name(name)
    };
    let bytes = addr.as_os_str().as_encoded_bytes();
    // interprocess matches the `\pipe\` part case-sensitively; remote pipes are out of scope.
    if !bytes.starts_with(PIPE_PREFIX.as_bytes()) || bytes.len() == PIPE_PREFIX.len() {
        return Err(invalid(format!("a Windows pipe path must look like {PIPE_PREFIX}NAME (local pipes only)")));
    }
    if bytes.contains(&0) {
        return Err(invalid("the path contains a NUL character".into()));
    }
    let len = addr.as_os_str().encode_wide().count();
    if len > PIPE_NAME_MAX {
        return Err(invalid(format!(
            "the pipe name {} is {len} characters, over the limit of {PIPE_NAME_MAX}",
            addr.display()
        )));
    }
    Ok(())
}

/// Nothing to clean up: a pipe name disappears with the last handle to it.
#[derive(Debug)]
pub(crate) struct Reclaim;

/// Nothing to remove: a killed server's pipe vanished with its last handle.
pub(crate) fn remove_stale(_name: &PipeName, _addr: &Path) -> Result<bool, Error> {
    Ok(false)
}

pub(crate) fn bind(name: &PipeName, addr: &Path, opts: &ListenOptions) -> Result<(Listener, Reclaim), Error> {
    let io_fail = |e: io::Error| {
        Error::new(ErrorKind::Io, format!("cannot listen on pipe `{}` at {}: {e}", name.as_str(), addr.display()))
            .with_name(name)
            .with_source(e)
    };
    let fs_name = addr.to_fs_name::<GenericFilePath>().map_err(io_fail)?;
    let sd = pipe_descriptor(&opts.windows_sddl).map_err(|e| {
        Error::new(ErrorKind::Io, format!("the pipe's security descriptor {:?}: {e}", opts.windows_sddl))
            .with_name(name)
            .with_source(e)
    })?;
    // interprocess creates the first instance with FILE_FLAG_FIRST_PIPE_INSTANCE, so a name
    // that any process already serves fails with ERROR_ACCESS_DENIED instead of silently
    // adding our instances to theirs. Named pipes leave no files behind, so nothing is stale.
    let options = ListenerOptions::new().name(fs_name).security_descriptor(sd);
    options.create_tokio().map(|l| (l, Reclaim)).map_err(|e| match e.raw_os_error() {
        Some(ERROR_ACCESS_DENIED | ERROR_PIPE_BUSY) => name_in_use(name, addr, e, pipe_server(addr)),
        _ => io_fail(e),
    })
}

/// The security descriptor for our pipes from `sddl`, owned by this process's user unless
/// `sddl` names an owner (`O:`).
///
/// Clients read a pipe's owner to learn who serves it (see [`peer_credentials`]), and the
/// owner-only DACL grants the owner (`OW`). Left to default, the owner is the token's default
/// owner, which for administrators and LocalSystem is the Administrators group
/// (`S-1-5-32-544`), not the user: every user may own objects as itself, so we say so.
fn pipe_descriptor(sddl: &str) -> io::Result<SecurityDescriptor> {
    use interprocess::os::windows::security_descriptor::AsSecurityDescriptorExt as _;
    let parse = |text: &str| {
        let wide = widestring::U16CString::from_str(text).map_err(io::Error::other)?;
        SecurityDescriptor::deserialize(&wide).map_err(|e| io::Error::new(e.kind(), format!("does not parse ({e})")))
    };
    let sd = parse(sddl)?;
    if !sd.owner()?.0.is_null() {
        return Ok(sd);
    }
    let me =
        current_sid().map_err(|e| io::Error::new(e.kind(), format!("this process's user cannot be read ({e})")))?;
    parse(&format!("O:{me}{sddl}"))
}

/// `NameInUse` for a bind that failed with `e` because the name is taken, naming the process
/// that serves it as the pipe reported it (`server`, from [`pipe_server`]), as the Unix probe
/// does from the socket's peer credentials.
fn name_in_use(name: &PipeName, addr: &Path, e: io::Error, server: io::Result<PipeServer>) -> Error {
    let at = format!("pipe `{}` at {}", name.as_str(), addr.display());
    let message = match server {
        Ok(PipeServer { pid, user: Ok(sid) }) => {
            let who = crate::PeerCredentials::new(Some(pid), None, None).with_sid(Some(sid));
            format!("name in use: another server ({who}) is listening on {at}")
        }
        Ok(PipeServer { pid, user: Err(why) }) => {
            format!("name in use: another server (pid {pid}, user unknown: {why}) is listening on {at}")
        }
        Err(why) => {
            let why = match why.raw_os_error() {
                Some(ERROR_PIPE_BUSY) => BUSY_REASON.to_owned(),
                Some(ERROR_ACCESS_DENIED) => {
                    format!("the pipe's security descriptor does not let this user open it ({why})")
                }
                Some(ERROR_FILE_NOT_FOUND) => "the pipe was gone when asked (the name may be free again)".to_owned(),
                _ => why.to_string(),
            };
            format!(
                "name in use: another server is listening on {at} (or another process holds that pipe name); its \
                 pid could not be read: {why}"
            )
        }
    };
    Error::new(ErrorKind::NameInUse, message).with_name(name).with_source(e)
}

/// The process serving a pipe, as the pipe reports it.
#[derive(Debug)]
pub(crate) struct PipeServer {
    /// From `GetNamedPipeServerProcessId`.
    pub(crate) pid: u32,
    /// The user of that process's token, or why it could not be read (another user's
    /// process, without the rights to open its token; or the process has exited).
    pub(crate) user: io::Result<crate::creds::Sid>,
}

/// Asks the pipe at `addr` who serves it: one client open, at identification level (the
/// server learns who we are but cannot act as us, as in [`connect_once`]) and with only
/// `FILE_READ_ATTRIBUTES` (all `GetNamedPipeServerProcessId` needs, so a server's
/// descriptor that grants Everyone read access lets us ask, and we can neither read nor
/// write its data). No waiting: if every instance is busy the answer is `ERROR_PIPE_BUSY`.
///
/// The open takes one of the server's listening instances; the server sees a client that
/// connected and hung up, as a Unix server sees the probe of its own `bind`.
pub(crate) fn pipe_server(addr: &Path) -> io::Result<PipeServer> {
    use windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE;
    use windows_sys::Win32::Storage::FileSystem::{
        CreateFileW, FILE_READ_ATTRIBUTES, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING, SECURITY_IDENTIFICATION,
        SECURITY_SQOS_PRESENT,
    };
    use windows_sys::Win32::System::Pipes::GetNamedPipeServerProcessId;
    let wide: Vec<u16> = addr.as_os_str().encode_wide().chain([0]).collect();
    #[allow(unsafe_code)]
    // SAFETY: `wide` is a NUL-terminated UTF-16 path that outlives the call; the other
    // pointers are null, which CreateFileW accepts.
    let handle = unsafe {
        CreateFileW(
            wide.as_ptr(),
            FILE_READ_ATTRIBUTES,
            FILE_SHARE_READ | FILE_SHARE_WRITE,
            std::ptr::null(),
            OPEN_EXISTING,
            SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION,
            std::ptr::null_mut(),
        )
    };
    if handle == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    let handle = OwnedHandle(handle);
    let mut pid = 0u32;
    #[allow(unsafe_code)]
    // SAFETY: `handle` is an open pipe handle; `pid` is a live out-pointer.
    if unsafe { GetNamedPipeServerProcessId(handle.0, &mut pid) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // Read while our end is open: a diagnostic, so the short window in which the server
    // could exit and its pid be reused is acceptable (the pid is still the one reported).
    let user = process_sid(pid);
    Ok(PipeServer { pid, user })
}

pub(crate) fn check_client_dir(_name: &PipeName, _addr: &Path) -> Result<(), Error> {
    Ok(())
}

/// One connection attempt: exactly one `CreateFileW`, a busy pipe reported as
/// `ERROR_PIPE_BUSY`; our caller owns the retry loop.
///
/// We open the pipe ourselves rather than through interprocess for two reasons. Its
/// local-socket connect ignores the wait mode on Windows and, on `ERROR_PIPE_BUSY`, loops on
/// `WaitNamedPipeW(NMPWAIT_WAIT_FOREVER)` in `spawn_blocking`: cancelling the future leaves
/// that thread blocked, and a Tokio runtime waits for its blocking threads when it shuts
/// down. And we pass `SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION`: the server may learn
/// who we are, but cannot act as us (without it, whoever serves the name may impersonate the
/// client fully, the CVE-2024-4877 class).
pub(crate) async fn connect_once(addr: &Path) -> io::Result<Stream> {
    use std::os::windows::io::{FromRawHandle, OwnedHandle};
    use windows_sys::Win32::Foundation::{GENERIC_READ, GENERIC_WRITE, INVALID_HANDLE_VALUE};
    use windows_sys::Win32::Storage::FileSystem::{
        CreateFileW, FILE_FLAG_OVERLAPPED, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING, SECURITY_IDENTIFICATION,
        SECURITY_SQOS_PRESENT,
    };
    let wide: Vec<u16> = addr.as_os_str().encode_wide().chain([0]).collect();
    #[allow(unsafe_code)]
    // SAFETY: `wide` is a NUL-terminated UTF-16 path that outlives the call; the other
    // pointers are null, which CreateFileW accepts.
    let handle = unsafe {
        CreateFileW(
            wide.as_ptr(),
            GENERIC_READ | GENERIC_WRITE,
            FILE_SHARE_READ | FILE_SHARE_WRITE,
            std::ptr::null(),
            OPEN_EXISTING,
            FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION,
            std::ptr::null_mut(),
        )
    };
    if handle == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: CreateFileW just returned this handle, and nothing else owns it.
    let handle = unsafe { OwnedHandle::from_raw_handle(handle) };
    let pipe = DuplexPipeStream::<pipe_mode::Bytes>::try_from(handle).map_err(|e| {
        let what = format!("the pipe cannot be used as a byte stream: {:?}", e.details);
        e.cause.unwrap_or_else(|| io::Error::other(what))
    })?;
    Ok(Stream::from(np_local::tokio::Stream::from(pipe)))
}

pub(crate) fn classify(e: &io::Error) -> ConnectFailure {
    match e.raw_os_error() {
        Some(ERROR_FILE_NOT_FOUND | ERROR_PATH_NOT_FOUND) => ConnectFailure::NotRunning,
        Some(ERROR_PIPE_BUSY) => ConnectFailure::Busy,
        Some(ERROR_ACCESS_DENIED) => ConnectFailure::PermissionDenied,
        // interprocess's answer to ERROR_PIPE_BUSY under `Timeout(0)`.
        None if e.kind() == io::ErrorKind::TimedOut => ConnectFailure::Busy,
        _ => match e.kind() {
            io::ErrorKind::NotFound => ConnectFailure::NotRunning,
            io::ErrorKind::PermissionDenied => ConnectFailure::PermissionDenied,
            _ => ConnectFailure::Other,
        },
    }
}

// Who is at the other end of a pipe. See `PipeStream::peer_credentials` for what is read
// where, and ARCHITECTURE ("Security: where each check happens") for why.

/// The credentials of the peer of `stream`: the pid the pipe reports, and the user SID from
/// the client's own token, by impersonation (on the server end, see [`client_sid`]), or from
/// the pipe's owner (on the client end, see [`server_sid`]).
pub(crate) fn peer_credentials(stream: &Stream) -> io::Result<crate::PeerCredentials> {
    use std::os::windows::io::AsRawHandle as _;
    let Stream::NamedPipe(stream) = stream;
    let pipe = stream.inner();
    let handle = pipe.as_raw_handle();
    let (pid, sid) = if pipe.is_server() {
        let pid = pipe.client_process_id()?;
        (pid, client_sid(handle, pid))
    } else {
        let pid = pipe.server_process_id()?;
        (pid, server_sid(handle, pid))
    };
    Ok(crate::PeerCredentials::new(Some(pid), None, None).with_sid(sid))
}

/// The user of the client of the server end `pipe`, whose process the pipe says is `pid`.
///
/// From the client's token, by impersonating it ([`impersonated_client_sid`]): what it
/// connected as, readable by any server whatever its user, because our clients (and any
/// client by default) connect at identification level or above. Only if the client cannot be
/// impersonated at all (nothing has been read from the pipe yet, or this thread is
/// impersonating someone already) is the token of process `pid` read instead, which needs
/// the right to open it: a process of the same user, or a server with `SeDebugPrivilege`.
/// A client that was impersonated but whose token cannot be read (one that connected at
/// anonymous level, `ERROR_CANT_OPEN_ANONYMOUS`) gets no SID at all: falling back to `pid`
/// then would let the client choose the weaker route, and Windows lets a client make the pipe
/// report another process's pid (James Forshaw, "Spoofing Named Pipe Client PID", Project
/// Zero, 2019).
fn client_sid(pipe: HANDLE, pid: u32) -> Option<crate::creds::Sid> {
    client_user(impersonated_client_sid(pipe), || process_sid(pid), pid)
}

/// [`client_sid`]'s choice, given what impersonation gave and how to read the token of the
/// client's process.
fn client_user(
    impersonated: Result<crate::creds::Sid, ClientToken>,
    process_user: impl FnOnce() -> io::Result<crate::creds::Sid>,
    pid: u32,
) -> Option<crate::creds::Sid> {
    match impersonated {
        Ok(sid) => Some(sid),
        Err(ClientToken::NotImpersonated(why)) => match process_user() {
            Ok(sid) => Some(sid),
            Err(e) => {
                tracing::debug!(pid, impersonation = %why, process_token = %e, "a pipe client's user cannot be read");
                None
            }
        },
        Err(ClientToken::Unreadable(why)) => {
            tracing::debug!(pid, %why, "a pipe client's token cannot be read");
            None
        }
    }
}

/// Why [`impersonated_client_sid`] has no SID.
#[derive(Debug)]
enum ClientToken {
    /// The client could not be impersonated (`ImpersonateNamedPipeClient` failed, or this
    /// thread is impersonating already and is left alone).
    NotImpersonated(io::Error),
    /// The client was impersonated, but its token could not be opened or read.
    Unreadable(io::Error),
}

/// The user SID of the token the client of the server end `pipe` connected with: impersonate
/// it on this thread, open the thread's token (`OpenAsSelf`, so the access check is made as
/// this process: an identification-level token can open nothing), read `TokenUser`, and
/// revert, all before returning, whatever happens ([`Impersonating`]).
///
/// Windows allows it only once something has been read from the pipe
/// (`ERROR_CANNOT_IMPERSONATE` before): it impersonates "the security context of the last
/// message read from the pipe".
fn impersonated_client_sid(pipe: HANDLE) -> Result<crate::creds::Sid, ClientToken> {
    let _impersonating = Impersonating::start(pipe).map_err(ClientToken::NotImpersonated)?;
    let token = thread_token().map_err(ClientToken::Unreadable)?;
    token_user(token.0).map_err(ClientToken::Unreadable)
}

/// This thread's impersonation token, opened for `TOKEN_QUERY` with the access check made as
/// this process; `ERROR_NO_TOKEN` if the thread is not impersonating.
fn thread_token() -> io::Result<OwnedHandle> {
    use windows_sys::Win32::Security::TOKEN_QUERY;
    use windows_sys::Win32::System::Threading::{GetCurrentThread, OpenThreadToken};
    let mut token = std::ptr::null_mut();
    #[allow(unsafe_code)]
    // SAFETY: GetCurrentThread is a pseudo-handle needing no closing; `token` is a live
    // out-pointer.
    if unsafe { OpenThreadToken(GetCurrentThread(), TOKEN_QUERY, 1, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedHandle(token))
}

/// This thread impersonating a pipe's client, until dropped. Not `Send`: impersonation
/// belongs to the thread that started it, so the guard cannot be dropped (and revert) on
/// another.
struct Impersonating(std::marker::PhantomData<*const ()>);

impl Impersonating {
    /// Starts impersonating the client of the server end `pipe` on this thread. A thread
    /// that is impersonating someone already is refused rather than changed: reverting would
    /// end that impersonation too.
    fn start(pipe: HANDLE) -> io::Result<Impersonating> {
        use windows_sys::Win32::System::Pipes::ImpersonateNamedPipeClient;
        match thread_token() {
            Ok(_) => return Err(io::Error::other("this thread is impersonating a user already")),
            Err(e) if e.raw_os_error() == Some(ERROR_NO_TOKEN) => {}
            Err(e) => return Err(e),
        }
        #[allow(unsafe_code)]
        // SAFETY: ImpersonateNamedPipeClient takes any handle and fails on one that is not the
        // server end of a pipe; on failure nothing is impersonated (documented).
        if unsafe { ImpersonateNamedPipeClient(pipe) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Impersonating(std::marker::PhantomData))
    }
}

impl Drop for Impersonating {
    fn drop(&mut self) {
        use windows_sys::Win32::Security::RevertToSelf;
        #[allow(unsafe_code)]
        // SAFETY: no arguments; ends this thread's impersonation.
        if unsafe { RevertToSelf() } == 0 {
            // Microsoft: "If RevertToSelf fails, your application continues to run in the
            // context of the client, which is not appropriate. You should shut down the
            // process." A runtime worker left running as another user must not run anything.
            let e = io::Error::last_os_error();
            eprintln!("pipe-rpc: RevertToSelf failed after reading a pipe client's user ({e}); aborting");
            std::process::abort();
        }
    }
}

/// The user of the server of the client end `pipe`, whose process the pipe says is `pid`.
///
/// The pipe's owner ([`pipe_owner_sid`]): an instance is owned by the account that created it
/// (a process can make an object's owner only its own user or, with privileges, a group it is
/// in; our servers name their user, see [`pipe_descriptor`]), readable through our own handle
/// whoever the server is. Where the token of process `pid` can be read too (the same user, or
/// a privileged client), the two must agree: a mismatch (a pipe owned by a group, or created by
/// a process other than the one serving it) leaves the user unknown, so every identity check
/// but `Anyone` refuses it.
fn server_sid(pipe: HANDLE, pid: u32) -> Option<crate::creds::Sid> {
    server_user(pipe_owner_sid(pipe), || process_sid(pid), pid)
}

/// [`server_sid`]'s choice, given the pipe's owner and how to read the token of the server's
/// process.
fn server_user(
    owner: io::Result<crate::creds::Sid>,
    process_user: impl FnOnce() -> io::Result<crate::creds::Sid>,
    pid: u32,
) -> Option<crate::creds::Sid> {
    let owner = match owner {
        Ok(owner) => owner,
        Err(e) => {
            tracing::debug!(pid, error = %e, "a pipe's owner cannot be read");
            return None;
        }
    };
    match process_user() {
        Ok(user) if user != owner => {
            tracing::warn!(pid, %owner, %user, "the pipe's owner is not the user of the process serving it");
            None
        }
        // The same user, or a process whose token we may not read (another user's).
        _ => Some(owner),
    }
}

/// The owner of the pipe `pipe` (of the object, so of every instance: each is created with
/// its creator's descriptor), through the handle itself; needs `READ_CONTROL`, which
/// `GENERIC_READ` includes.
fn pipe_owner_sid(pipe: HANDLE) -> io::Result<crate::creds::Sid> {
    use windows_sys::Win32::Foundation::LocalFree;
    use windows_sys::Win32::Security::Authorization::{GetSecurityInfo, SE_KERNEL_OBJECT};
    use windows_sys::Win32::Security::OWNER_SECURITY_INFORMATION;
    let mut owner = std::ptr::null_mut();
    let mut sd = std::ptr::null_mut();
    #[allow(unsafe_code)]
    // SAFETY: `pipe` is a valid handle; `owner` and `sd` are live out-pointers, the rest null
    // as allowed. On success `sd` is a LocalAlloc'd descriptor that `owner` points into.
    let status = unsafe {
        GetSecurityInfo(
            pipe,
            SE_KERNEL_OBJECT,
            OWNER_SECURITY_INFORMATION,
            &mut owner,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut sd,
        )
    };
    if status != 0 {
        return Err(io::Error::from_raw_os_error(status as i32));
    }
    #[allow(unsafe_code)]
    // SAFETY: `owner` is null or points at a SID inside `sd`, which is freed once, after the
    // SID has been copied.
    unsafe {
        let sid = copy_sid(owner);
        LocalFree(sd);
        sid
    }
    .map_err(|e| io::Error::new(e.kind(), format!("the pipe's owner: {e}")))
}

/// A copy of the SID at `sid`.
///
/// # Safety
///
/// `sid` is null or points at memory that holds a SID (`IsValidSid` reads its header, then
/// `GetLengthSid` bytes are copied).
#[allow(unsafe_code)]
unsafe fn copy_sid(sid: windows_sys::Win32::Security::PSID) -> io::Result<crate::creds::Sid> {
    use windows_sys::Win32::Security::{GetLengthSid, IsValidSid};
    // SAFETY: as the caller promises.
    if sid.is_null() || unsafe { IsValidSid(sid) } == 0 {
        return Err(io::Error::other("no valid SID"));
    }
    // SAFETY: a valid SID of `GetLengthSid` bytes, as the caller promises.
    let bytes = unsafe { std::slice::from_raw_parts(sid.cast::<u8>(), GetLengthSid(sid) as usize) };
    crate::creds::Sid::from_bytes(bytes).ok_or_else(|| io::Error::other("a SID longer than SECURITY_MAX_SID_SIZE"))
}

/// The user SID of process `pid`'s token.
pub(crate) fn process_sid(pid: u32) -> io::Result<crate::creds::Sid> {
    use windows_sys::Win32::System::Threading::{OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION};
    #[allow(unsafe_code)]
    // SAFETY: OpenProcess takes no pointers; a null result is checked.
    let process = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
    if process.is_null() {
        return Err(io::Error::last_os_error());
    }
    let process = OwnedHandle(process);
    process_token_user(process.0)
}

/// This process's user SID.
pub(crate) fn current_sid() -> io::Result<crate::creds::Sid> {
    #[allow(unsafe_code)]
    // SAFETY: GetCurrentProcess returns a pseudo-handle that needs no closing.
    process_token_user(unsafe { windows_sys::Win32::System::Threading::GetCurrentProcess() })
}

/// The user of the primary token of `process`.
fn process_token_user(process: HANDLE) -> io::Result<crate::creds::Sid> {
    use windows_sys::Win32::Security::TOKEN_QUERY;
    use windows_sys::Win32::System::Threading::OpenProcessToken;
    let mut token = std::ptr::null_mut();
    #[allow(unsafe_code)]
    // SAFETY: `process` is a valid process handle; `token` is a live out-pointer.
    if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let token = OwnedHandle(token);
    token_user(token.0)
}

/// The user (`TokenUser`) of the token `token`, opened with `TOKEN_QUERY`.
fn token_user(token: HANDLE) -> io::Result<crate::creds::Sid> {
    use windows_sys::Win32::Security::{GetTokenInformation, TOKEN_USER, TokenUser};
    // TOKEN_USER plus the SID it points to; 256 bytes is ample (a SID is at most 68).
    let mut buf = [0u64; 32];
    let mut len = 0u32;
    #[allow(unsafe_code)]
    // SAFETY: `buf` is 256 writable, 8-aligned bytes and its size is passed; `len` is a live
    // out-pointer.
    let ok = unsafe { GetTokenInformation(token, TokenUser, buf.as_mut_ptr().cast(), 256, &mut len) };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: on success `buf` starts with a TOKEN_USER whose `Sid` points into `buf`, at a
    // SID.
    unsafe { copy_sid((*buf.as_ptr().cast::<TOKEN_USER>()).User.Sid) }
        .map_err(|e| io::Error::new(e.kind(), format!("the token's user: {e}")))
}

/// A handle closed on drop.
struct OwnedHandle(windows_sys::Win32::Foundation::HANDLE);

impl Drop for OwnedHandle {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: the handle is ours and closed once.
        unsafe {
            windows_sys::Win32::Foundation::CloseHandle(self.0);
        }
    }
}

pub(crate) const BUSY_REASON: &str = "every instance of the pipe is in use (ERROR_PIPE_BUSY)";

/// The child's end of a [`ChildPipe`](crate::ChildPipe): the client handle of a one-instance
/// named pipe, not inheritable until [`prepare_child`].
#[derive(Debug)]
pub(crate) struct ChildEnd(std::os::windows::io::OwnedHandle);

/// A random pipe name no other process can guess: two `RandomState` keys (seeded from the
/// OS's random source), the pid and a counter.
fn random_child_pipe_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut words = [0u64; 2];
    for (i, w) in words.iter_mut().enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_usize(i);
        *w = h.finish();
    }
    format!(r"{PIPE_PREFIX}pipe-rpc-child-{}-{:016x}{:016x}", std::process::id(), words[0], words[1])
}

/// A connected pair: a one-instance named pipe under a random name whose server end is
/// ours and whose client end, opened by this process at once, is the child's. A name that
/// exists already (`FILE_FLAG_FIRST_PIPE_INSTANCE` refuses it), or an instance someone else
/// connected to first, makes us try a fresh name.
pub(crate) fn child_pair() -> io::Result<(Stream, ChildEnd)> {
    child_pair_named().map(|(ours, theirs, _name)| (ours, theirs))
}

/// [`child_pair`], and the pipe's name (for tests).
fn child_pair_named() -> io::Result<(Stream, ChildEnd, String)> {
    use interprocess::os::windows::security_descriptor::AsSecurityDescriptor as _;
    use std::os::windows::io::{AsRawHandle as _, FromRawHandle, OwnedHandle};
    use windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE;
    use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;
    use windows_sys::Win32::Storage::FileSystem::{
        FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_OVERLAPPED, PIPE_ACCESS_DUPLEX,
    };
    use windows_sys::Win32::System::Pipes::{
        CreateNamedPipeW, GetNamedPipeClientProcessId, PIPE_READMODE_BYTE, PIPE_REJECT_REMOTE_CLIENTS, PIPE_TYPE_BYTE,
        PIPE_WAIT,
    };
    const ATTEMPTS: usize = 4;
    const BUFFER: u32 = 64 * 1024;
    let sd = pipe_descriptor(crate::listen::OWNER_ONLY_SDDL)?;
    let attributes = SECURITY_ATTRIBUTES {
        nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: sd.as_sd().cast_mut(),
        bInheritHandle: 0,
    };
    for _ in 0..ATTEMPTS {
        let name = random_child_pipe_name();
        let wide: Vec<u16> = std::ffi::OsStr::new(&name).encode_wide().chain([0]).collect();
        #[allow(unsafe_code)]
        // SAFETY: `wide` is a NUL-terminated UTF-16 name and `attributes` (with the descriptor
        // it points to) a valid SECURITY_ATTRIBUTES; both outlive the call.
        let server = unsafe {
            CreateNamedPipeW(
                wide.as_ptr(),
                PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED | FILE_FLAG_FIRST_PIPE_INSTANCE,
                PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
                1,
                BUFFER,
                BUFFER,
                0,
                &attributes,
            )
        };
        if server == INVALID_HANDLE_VALUE {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // The name exists: someone made it first. Another name.
                Some(ERROR_ACCESS_DENIED | ERROR_PIPE_BUSY) => continue,
                _ => return Err(e),
            }
        }
        #[allow(unsafe_code)]
        // SAFETY: CreateNamedPipeW just returned this handle, and nothing else owns it.
        let server = unsafe { OwnedHandle::from_raw_handle(server) };
        let client = match open_client(&wide) {
            Ok(c) => c,
            // Someone connected to our one instance first: leave it to them.
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) => continue,
            Err(e) => return Err(e),
        };
        confirm_connected(&server)?;
        let mut client_pid = 0u32;
        #[allow(unsafe_code)]
        // SAFETY: a valid server handle and a live out-pointer.
        let ok = unsafe { GetNamedPipeClientProcessId(server.as_raw_handle(), &mut client_pid) } != 0;
        if !ok || client_pid != std::process::id() {
            continue;
        }
        let pipe = DuplexPipeStream::<pipe_mode::Bytes>::try_from(server).map_err(|e| {
            let what = format!("the pipe cannot be used as a byte stream: {:?}", e.details);
            e.cause.unwrap_or_else(|| io::Error::other(what))
        })?;
        return Ok((Stream::from(np_local::tokio::Stream::from(pipe)), ChildEnd(client), name));
    }
    Err(io::Error::other(format!("could not create a private pipe: {ATTEMPTS} random names were taken")))
}

/// Opens the client end of the pipe `wide` (overlapped, at identification level, not
/// inheritable), as [`connect_once`] does.
fn open_client(wide: &[u16]) -> io::Result<std::os::windows::io::OwnedHandle> {
    use std::os::windows::io::{FromRawHandle, OwnedHandle};
    use windows_sys::Win32::Foundation::{GENERIC_READ, GENERIC_WRITE, INVALID_HANDLE_VALUE};
    use windows_sys::Win32::Storage::FileSystem::{
        CreateFileW, FILE_FLAG_OVERLAPPED, OPEN_EXISTING, SECURITY_IDENTIFICATION, SECURITY_SQOS_PRESENT,
    };
    #[allow(unsafe_code)]
    // SAFETY: `wide` is NUL-terminated UTF-16 and outlives the call; null pointers are allowed.
    let handle = unsafe {
        CreateFileW(
            wide.as_ptr(),
            GENERIC_READ | GENERIC_WRITE,
            0,
            std::ptr::null(),
            OPEN_EXISTING,
            FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION,
            std::ptr::null_mut(),
        )
    };
    if handle == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: CreateFileW just returned this handle, and nothing else owns it.
    Ok(unsafe { OwnedHandle::from_raw_handle(handle) })
}

/// `ConnectNamedPipe` on a server end whose client is connected already: it must report
/// `ERROR_PIPE_CONNECTED`. Anything pending is cancelled and waited for before returning, so
/// no operation outlives the `OVERLAPPED` on our stack.
fn confirm_connected(server: &std::os::windows::io::OwnedHandle) -> io::Result<()> {
    use std::os::windows::io::AsRawHandle as _;
    use windows_sys::Win32::Foundation::{ERROR_IO_PENDING, ERROR_PIPE_CONNECTED};
    use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};
    use windows_sys::Win32::System::Pipes::ConnectNamedPipe;
    let h = server.as_raw_handle();
    #[allow(unsafe_code)]
    // SAFETY: an all-zero OVERLAPPED is a valid initial state.
    let mut overlapped: OVERLAPPED = unsafe { std::mem::zeroed() };
    #[allow(unsafe_code)]
    // SAFETY: a valid overlapped handle; `overlapped` lives until any operation on it is over
    // (waited for below).
    let ok = unsafe { ConnectNamedPipe(h, &mut overlapped) } != 0;
    if ok {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(c) if c == ERROR_PIPE_CONNECTED as i32 => Ok(()),
        Some(c) if c == ERROR_IO_PENDING as i32 => {
            let mut n = 0u32;
            #[allow(unsafe_code)]
            // SAFETY: cancels the operation started above and waits for it to end, so
            // `overlapped` is not used after this function returns.
            unsafe {
                CancelIoEx(h, &overlapped);
                GetOverlappedResult(h, &overlapped, &mut n, 1);
            }
            Err(io::Error::other("the private pipe's client end did not connect"))
        }
        _ => Err(e),
    }
}

/// Makes the child's end inheritable: `CreateProcess` hands inheritable handles to the
/// child (with the same value). Returns that value as `handle=N`.
pub(crate) fn prepare_child(end: &ChildEnd, _command: &mut std::process::Command) -> io::Result<String> {
    use std::os::windows::io::AsRawHandle as _;
    use windows_sys::Win32::Foundation::{HANDLE_FLAG_INHERIT, SetHandleInformation};
    let h = end.0.as_raw_handle();
    #[allow(unsafe_code)]
    // SAFETY: a valid handle we own; only its inherit flag changes.
    if unsafe { SetHandleInformation(h, HANDLE_FLAG_INHERIT, HANDLE_FLAG_INHERIT) } == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(format!("handle={}", h as usize))
}

/// In the child: takes the handle named by `place` (`handle=N`) as its end of the pipe to
/// the parent `parent_pid`, after checking that it is the client end of a pipe whose server
/// is that process; makes it non-inheritable again.
pub(crate) fn adopt_parent_end(place: &str, parent_pid: u32) -> Result<Stream, String> {
    use std::os::windows::io::{FromRawHandle, OwnedHandle};
    use windows_sys::Win32::Foundation::{HANDLE, HANDLE_FLAG_INHERIT, SetHandleInformation};
    use windows_sys::Win32::Storage::FileSystem::{FILE_TYPE_PIPE, GetFileType};
    use windows_sys::Win32::System::Pipes::{GetNamedPipeInfo, GetNamedPipeServerProcessId, PIPE_SERVER_END};
    let value: usize = place
        .strip_prefix("handle=")
        .and_then(|n| n.parse().ok())
        .filter(|n| *n != 0)
        .ok_or_else(|| format!("`{place}` names no handle (expected handle=N)"))?;
    let h = value as HANDLE;
    #[allow(unsafe_code)]
    // SAFETY: GetFileType accepts any handle value and fails on an invalid one.
    if unsafe { GetFileType(h) } != FILE_TYPE_PIPE {
        return Err(format!("handle {value} is not a pipe"));
    }
    let mut flags = 0u32;
    #[allow(unsafe_code)]
    // SAFETY: `h` is a pipe handle; `flags` is a live out-pointer, the others may be null.
    let ok =
        unsafe { GetNamedPipeInfo(h, &mut flags, std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut()) }
            != 0;
    if !ok || flags & PIPE_SERVER_END != 0 {
        return Err(format!("handle {value} is not the client end of a named pipe"));
    }
    let mut server_pid = 0u32;
    #[allow(unsafe_code)]
    // SAFETY: a pipe handle and a live out-pointer.
    let ok = unsafe { GetNamedPipeServerProcessId(h, &mut server_pid) } != 0;
    if !ok || server_pid != parent_pid {
        return Err(format!(
            "the pipe of handle {value} is served by pid {server_pid}, not by pid {parent_pid} named as the parent (the              variable was inherited from an ancestor?)"
        ));
    }
    #[allow(unsafe_code)]
    // SAFETY: a valid handle this process holds; only its inherit flag changes.
    unsafe {
        SetHandleInformation(h, HANDLE_FLAG_INHERIT, 0);
    }
    #[allow(unsafe_code)]
    // SAFETY: the handle is open (checked above) and was handed to this process for this
    // purpose; `parent_pipe` takes it once per process, so it gets exactly one owner.
    let handle = unsafe { OwnedHandle::from_raw_handle(h) };
    let pipe = DuplexPipeStream::<pipe_mode::Bytes>::try_from(handle)
        .map_err(|e| format!("the pipe cannot be used as a byte stream: {:?} {:?}", e.details, e.cause))?;
    Ok(Stream::from(np_local::tokio::Stream::from(pipe)))
}

/// Windows has no stale pipes: a name exists exactly while some instance of it does.
pub(crate) const REFUSED_MAY_BE_BUSY: bool = false;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_map_to_local_pipes() {
        assert_eq!(PipeName::new("abc").resolve().unwrap(), Path::new(r"\\.\pipe\pipe-rpc.abc"));
        assert_eq!(plain_name_of("pipe-rpc.abc"), Some("abc"));
        assert_eq!(plain_name_of("PIPE-RPC.abc"), Some("abc"));
        for other in ["abc", "pipe-rpc.", "pipe-rpc-child-1", "pipe-rpc"] {
            assert_eq!(plain_name_of(other), None, "{other}");
        }
    }

    #[test]
    fn pipe_paths_are_checked() {
        for bad in [r"\\server\pipe\x", r"\\.\pipe\", r"\\.\PIPE\x"] {
            let e = PipeName::new(bad).resolve().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidName, "{bad}");
        }
        let max = format!("{PIPE_PREFIX}{}", "p".repeat(PIPE_NAME_MAX - PIPE_PREFIX.len()));
        PipeName::new(max.as_str()).resolve().unwrap();
        let e = PipeName::new(format!("{max}p")).resolve().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidName);
        assert!(e.to_string().contains("over the limit of 256"), "{e}");
    }

    #[test]
    fn the_pipe_gets_the_security_descriptor_asked_for() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let pid = std::process::id();
            let bad = ListenOptions::default().windows_sddl("not an SDDL");
            let e = crate::PipeListener::bind_with(format!("sddl-bad-{pid}"), &bad).unwrap_err();
            assert!(e.to_string().contains("does not parse"), "{e}");
            crate::PipeListener::bind_with(format!("sddl-default-{pid}"), &ListenOptions::default()).unwrap();
        });
    }

    /// The lookup `bind` uses to name a squatter: a listener of our own, asked by name, is
    /// this process, running as this process's user.
    #[test]
    fn the_server_of_a_pipe_is_named_by_pid_and_user() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let name = PipeName::new(format!("holder-{}", std::process::id()));
            let addr = name.resolve().unwrap();
            let _listener = crate::PipeListener::bind(&name).unwrap();
            let server = pipe_server(&addr).unwrap();
            let me = current_sid().unwrap();
            assert_eq!(server.pid, std::process::id());
            assert_eq!(server.user.as_ref().unwrap(), &me);

            // What `bind` makes of it when the name is taken.
            let denied = io::Error::from_raw_os_error(ERROR_ACCESS_DENIED);
            let e = name_in_use(&name, &addr, denied, Ok(server));
            assert_eq!(e.kind(), ErrorKind::NameInUse);
            let msg = e.to_string();
            let expected = format!(
                "another server (pid {}, user {me}) is listening on pipe `{}` at {}",
                std::process::id(),
                name.as_str(),
                addr.display()
            );
            assert!(msg.contains(&expected), "{msg}");
            assert_eq!(e.io_error().and_then(io::Error::raw_os_error), Some(ERROR_ACCESS_DENIED));
        });
    }

    #[test]
    fn a_pipe_whose_instances_are_all_busy_or_that_is_gone_says_so() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let name = PipeName::new(format!("holder-busy-{}", std::process::id()));
            let addr = name.resolve().unwrap();
            let listener = crate::PipeListener::bind(&name).unwrap();
            // The listener has one instance until it accepts: a client takes it.
            let _client = crate::connect(&name, &crate::ConnectOptions::default()).await.unwrap();
            let busy = pipe_server(&addr);
            assert_eq!(busy.as_ref().unwrap_err().raw_os_error(), Some(ERROR_PIPE_BUSY), "{busy:?}");
            let msg = name_in_use(&name, &addr, io::Error::from_raw_os_error(ERROR_ACCESS_DENIED), busy).to_string();
            assert!(msg.contains("its pid could not be read: every instance of the pipe is in use"), "{msg}");

            drop(listener);
            let gone = PipeName::new(format!("holder-none-{}", std::process::id()));
            let e = pipe_server(&gone.resolve().unwrap()).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(ERROR_FILE_NOT_FOUND), "{e}");
        });
    }

    #[test]
    fn a_child_pipe_cannot_be_opened_by_name_and_leaves_no_name_behind() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (ours, theirs, name) = child_pair_named().unwrap();
            let wide: Vec<u16> = std::ffi::OsStr::new(&name).encode_wide().chain([0]).collect();
            // Its one instance is taken by the child's end.
            let e = open_client(&wide).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(ERROR_PIPE_BUSY), "{e}");
            drop((ours, theirs));
            // With both ends closed the name goes (once interprocess's linger pool, which
            // keeps a dropped end a moment for data its peer has not read, lets go), and
            // until then it is still taken: nobody ever gets in.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let e = open_client(&wide).expect_err("nobody may open a child pipe by name");
                match classify(&e) {
                    ConnectFailure::NotRunning => break,
                    ConnectFailure::Busy if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                    _ => panic!("{e}"),
                }
            }
        });
    }

    /// The handle of a pipe stream, for the calls under test.
    fn raw(stream: &crate::PipeStream) -> HANDLE {
        use std::os::windows::io::AsRawHandle as _;
        let Stream::NamedPipe(stream) = stream.inner();
        stream.inner().as_raw_handle()
    }

    /// A connected pair on a fresh pipe of this process: the listener, the server's end, the
    /// client's end.
    async fn pair(tag: &str) -> (crate::PipeListener, crate::PipeStream, crate::PipeStream) {
        let name = PipeName::new(format!("{tag}-{}", std::process::id()));
        let listener = crate::PipeListener::bind(&name).unwrap();
        let opts = crate::ConnectOptions::default();
        let (server, client) = tokio::join!(listener.accept(), crate::connect(&name, &opts));
        (listener, server.unwrap(), client.unwrap())
    }

    /// The client sends a byte and the server reads it: what impersonation waits for.
    async fn one_byte_across(server: &mut crate::PipeStream, client: &mut crate::PipeStream) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        client.write_all(b"h").await.unwrap();
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte).await.unwrap();
    }

    /// Why this thread has no impersonation token (`None`: it has one).
    fn no_thread_token() -> Option<i32> {
        thread_token().err().map(|e| e.raw_os_error().unwrap_or(-1))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// Both routes to a client's user give this process's SID for a client of this process,
    /// and neither leaves the thread impersonating.
    #[test]
    fn a_server_reads_its_clients_user_by_impersonation_once_it_has_read_and_by_process_token() {
        runtime().block_on(async {
            let (_listener, mut server, mut client) = pair("client-user").await;
            let me = current_sid().unwrap();
            assert_eq!(no_thread_token(), Some(ERROR_NO_TOKEN), "the test thread impersonates already");
            one_byte_across(&mut server, &mut client).await;
            assert_eq!(impersonated_client_sid(raw(&server)).unwrap(), me);
            assert_eq!(no_thread_token(), Some(ERROR_NO_TOKEN), "left impersonating");
            let seen = server.peer_credentials().unwrap();
            assert_eq!(seen.pid, Some(std::process::id()));
            assert_eq!(seen.sid, Some(me));
            assert_eq!(process_sid(seen.pid.unwrap()).unwrap(), me);
            assert_eq!(no_thread_token(), Some(ERROR_NO_TOKEN), "left impersonating");
        });
    }

    /// The guard reverts on every way out, a panic included, and a thread that impersonates
    /// someone already is neither changed nor reverted.
    #[test]
    fn the_impersonation_guard_reverts_even_on_a_panic_and_leaves_another_impersonation_alone() {
        runtime().block_on(async {
            let (_listener, mut server, mut client) = pair("guard").await;
            one_byte_across(&mut server, &mut client).await;
            let pipe = raw(&server) as usize;
            let me = current_sid().unwrap();
            let unwound = std::panic::catch_unwind(|| {
                let pipe = pipe as HANDLE;
                let _impersonating = Impersonating::start(pipe).unwrap();
                // While the guard lives the thread has the client's token.
                let token = thread_token().expect("an impersonating thread has a token");
                assert_eq!(token_user(token.0).unwrap(), me);
                match impersonated_client_sid(pipe) {
                    Err(ClientToken::NotImpersonated(e)) => {
                        assert!(e.to_string().contains("impersonating a user already"), "{e}");
                    }
                    other => panic!("a second impersonation on an impersonating thread: {other:?}"),
                }
                assert_eq!(no_thread_token(), None, "the impersonation in progress was ended");
                panic!("a failure while impersonating (expected by the test)");
            });
            assert!(unwound.is_err());
            assert_eq!(no_thread_token(), Some(ERROR_NO_TOKEN), "the panic left the thread impersonating");
        });
    }

    /// A pipe our listener creates is owned by this user, which is what its clients read.
    #[test]
    fn the_owner_of_a_pipe_our_listener_created_is_this_user_and_its_clients_read_it() {
        runtime().block_on(async {
            let (_listener, server, client) = pair("owner").await;
            let me = current_sid().unwrap();
            assert_eq!(pipe_owner_sid(raw(&client)).unwrap(), me);
            assert_eq!(pipe_owner_sid(raw(&server)).unwrap(), me);
            let seen = client.peer_credentials().unwrap();
            assert_eq!(seen.pid, Some(std::process::id()));
            assert_eq!(seen.sid, Some(me));
        });
    }

    #[test]
    fn our_pipe_descriptors_are_owned_by_this_user_unless_the_sddl_names_an_owner() {
        use interprocess::os::windows::security_descriptor::AsSecurityDescriptorExt as _;
        let owner = |sddl: &str| {
            let sd = pipe_descriptor(sddl).unwrap();
            let (sid, _defaulted) = sd.owner().unwrap();
            #[allow(unsafe_code)]
            // SAFETY: the owner of a live descriptor, null or a SID.
            unsafe { copy_sid(sid.cast_mut()) }.unwrap()
        };
        assert_eq!(owner(crate::listen::OWNER_ONLY_SDDL), current_sid().unwrap());
        assert_eq!(owner("O:BAD:P(A;;GA;;;SY)"), "S-1-5-32-544".parse().unwrap());
    }

    #[test]
    fn a_client_impersonated_but_unreadable_gets_no_user_and_its_pid_is_not_consulted() {
        let os = io::Error::from_raw_os_error;
        let (a, b): (crate::creds::Sid, crate::creds::Sid) =
            ("S-1-5-21-1-2-3-1000".parse().unwrap(), "S-1-5-21-1-2-3-1001".parse().unwrap());
        let never = || -> io::Result<crate::creds::Sid> { panic!("the process token was read") };
        assert_eq!(client_user(Ok(a), never, 7), Some(a));
        // ERROR_CANT_OPEN_ANONYMOUS: a client connected at anonymous level.
        assert_eq!(client_user(Err(ClientToken::Unreadable(os(1347))), never, 7), None);
        // ERROR_CANNOT_IMPERSONATE: nothing read yet.
        assert_eq!(client_user(Err(ClientToken::NotImpersonated(os(1368))), || Ok(b), 7), Some(b));
        assert_eq!(client_user(Err(ClientToken::NotImpersonated(os(1368))), || Err(os(5)), 7), None);
    }

    #[test]
    fn a_servers_user_is_its_pipes_owner_and_a_process_user_that_differs_leaves_it_unknown() {
        let os = io::Error::from_raw_os_error;
        let (a, b): (crate::creds::Sid, crate::creds::Sid) =
            ("S-1-5-21-1-2-3-1000".parse().unwrap(), "S-1-5-21-1-2-3-1001".parse().unwrap());
        assert_eq!(server_user(Ok(a), || Ok(a), 7), Some(a));
        // Another user's process, whose token we may not open: the owner alone.
        assert_eq!(server_user(Ok(a), || Err(os(ERROR_ACCESS_DENIED)), 7), Some(a));
        assert_eq!(server_user(Ok(a), || Ok(b), 7), None);
        // No owner: the process token alone is not enough.
        assert_eq!(server_user(Err(os(ERROR_ACCESS_DENIED)), || Ok(a), 7), None);
    }

    #[test]
    fn busy_and_missing_are_told_apart() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(classify(&os(ERROR_FILE_NOT_FOUND)), ConnectFailure::NotRunning);
        assert_eq!(classify(&os(ERROR_PIPE_BUSY)), ConnectFailure::Busy);
        assert_eq!(classify(&io::ErrorKind::TimedOut.into()), ConnectFailure::Busy);
        assert_eq!(classify(&os(ERROR_ACCESS_DENIED)), ConnectFailure::PermissionDenied);
    }
}

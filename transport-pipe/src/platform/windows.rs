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

use super::ConnectFailure;
use crate::{
    error::{Error, ErrorKind},
    listen::ListenOptions,
    name::PipeName,
};

/// Longest whole pipe name (`\\.\pipe\` included), in UTF-16 units.
pub(crate) const PIPE_NAME_MAX: usize = 256;
const PIPE_PREFIX: &str = r"\\.\pipe\";

const ERROR_FILE_NOT_FOUND: i32 = 2;
const ERROR_PATH_NOT_FOUND: i32 = 3;
const ERROR_ACCESS_DENIED: i32 = 5;
const ERROR_PIPE_BUSY: i32 = 231;

pub(crate) fn is_absolute_path_str(s: &str) -> bool {
    s.starts_with(r"\\")
}

pub(crate) fn plain_name_address(name: &str) -> PathBuf {
    PathBuf::from(format!("{PIPE_PREFIX}{name}"))
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
    let sddl = widestring::U16CString::from_str(&opts.windows_sddl).map_err(|e| {
        Error::new(ErrorKind::Io, format!("the pipe's security descriptor {:?}: {e}", opts.windows_sddl))
            .with_name(name)
    })?;
    let sd = SecurityDescriptor::deserialize(&sddl).map_err(|e| {
        Error::new(ErrorKind::Io, format!("the pipe's security descriptor {:?} does not parse: {e}", opts.windows_sddl))
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
    token_user_sid(process.0)
}

/// This process's user SID.
pub(crate) fn current_sid() -> io::Result<crate::creds::Sid> {
    #[allow(unsafe_code)]
    // SAFETY: GetCurrentProcess returns a pseudo-handle that needs no closing.
    token_user_sid(unsafe { windows_sys::Win32::System::Threading::GetCurrentProcess() })
}

fn token_user_sid(process: windows_sys::Win32::Foundation::HANDLE) -> io::Result<crate::creds::Sid> {
    use windows_sys::Win32::Security::{GetLengthSid, GetTokenInformation, TOKEN_QUERY, TOKEN_USER, TokenUser};
    use windows_sys::Win32::System::Threading::OpenProcessToken;
    let mut token = std::ptr::null_mut();
    #[allow(unsafe_code)]
    // SAFETY: `process` is a valid process handle; `token` is a live out-pointer.
    if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    let token = OwnedHandle(token);
    // TOKEN_USER plus the SID it points to; 256 bytes is ample (a SID is at most 68).
    let mut buf = [0u64; 32];
    let mut len = 0u32;
    #[allow(unsafe_code)]
    // SAFETY: `buf` is 256 writable, 8-aligned bytes and its size is passed; `len` is a live
    // out-pointer.
    let ok = unsafe { GetTokenInformation(token.0, TokenUser, buf.as_mut_ptr().cast(), 256, &mut len) };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(unsafe_code)]
    // SAFETY: on success `buf` starts with a TOKEN_USER whose `Sid` points into `buf`, at a
    // valid SID of `GetLengthSid` bytes.
    let sid = unsafe {
        let user = &*buf.as_ptr().cast::<TOKEN_USER>();
        let n = GetLengthSid(user.User.Sid) as usize;
        std::slice::from_raw_parts(user.User.Sid.cast::<u8>(), n).to_vec()
    };
    crate::creds::Sid::from_bytes(&sid).ok_or_else(|| io::Error::other("the token's user SID is malformed"))
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
    let sddl = widestring::U16CString::from_str(crate::listen::OWNER_ONLY_SDDL).map_err(io::Error::other)?;
    let sd = SecurityDescriptor::deserialize(&sddl)?;
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
        assert_eq!(PipeName::new("abc").resolve().unwrap(), Path::new(r"\\.\pipe\abc"));
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

    #[test]
    fn busy_and_missing_are_told_apart() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(classify(&os(ERROR_FILE_NOT_FOUND)), ConnectFailure::NotRunning);
        assert_eq!(classify(&os(ERROR_PIPE_BUSY)), ConnectFailure::Busy);
        assert_eq!(classify(&io::ErrorKind::TimedOut.into()), ConnectFailure::Busy);
        assert_eq!(classify(&os(ERROR_ACCESS_DENIED)), ConnectFailure::PermissionDenied);
    }
}

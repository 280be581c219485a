//! The current user's endpoints: what `pipe-rpc list` shows.
//!
//! ## Platform-specific behavior
//!
//! - **Unix**: the sockets in the per-user directory of plain names (see [`PipeName`]),
//!   `NAME.sock` for each name `NAME`. A socket file can outlive its server (a server
//!   killed before it removed it): it is listed all the same; connecting tells (it refuses).
//!   Endpoints bound to an explicit path elsewhere are not found.
//! - **Windows**: the pipes of plain names (`\\.\pipe\pipe-rpc.NAME`) in the machine's pipe
//!   namespace. Windows has no per-user directory of pipes: other users' pipe-rpc endpoints
//!   are listed too (a probe tells whose it is), other programs' pipes are not.

use std::io;
use std::path::PathBuf;

use crate::PipeName;

/// An endpoint found by [`list_local`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalEndpoint {
    /// The name to connect to: a plain name where the address maps back to one, else the
    /// address as an explicit path.
    pub name: PipeName,
    /// The operating-system address (the socket file, or `\\.\pipe\NAME`).
    pub address: PathBuf,
}

/// Lists the endpoints of the current user, sorted by name. A missing per-user directory
/// is an empty list. Nothing is connected to or removed: telling a live endpoint from a
/// stale socket or another program's pipe takes a connection (`rpc_core::introspect::probe`).
///
/// ## Platform-specific behavior
///
/// - **Unix**: the sockets in the per-user directory of plain names (see [`PipeName`]),
///   `NAME.sock` for each name `NAME`, including those a server killed before it removed
///   its socket left behind. Endpoints bound to an explicit path elsewhere are not found.
/// - **Windows**: the pipes of plain names (`\\.\pipe\pipe-rpc.NAME`, see [`PipeName`]) in
///   the machine's pipe namespace, whichever user made them: Windows has no per-user
///   directory of pipes. Other programs' pipes, and pipe-rpc endpoints bound to an explicit
///   path, are not found.
///
/// # Errors
///
/// The directory (Unix) or the pipe namespace (Windows) could not be read.
pub fn list_local() -> io::Result<Vec<LocalEndpoint>> {
    let mut found = platform_list()?;
    found.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
    Ok(found)
}

/// `name` as a plain name if it is a valid one, else `address` as an explicit path.
fn endpoint(name: &str, address: PathBuf) -> LocalEndpoint {
    let plain = PipeName::new(name);
    let name = if !plain.is_path() && plain.resolve().is_ok_and(|a| a == address) {
        plain
    } else {
        PipeName::path(address.clone())
    };
    LocalEndpoint { name, address }
}

#[cfg(unix)]
fn platform_list() -> io::Result<Vec<LocalEndpoint>> {
    use std::os::unix::fs::FileTypeExt;
    // Where `NAME` goes: the directory of any plain name's address.
    let dir = crate::platform::plain_name_address("x").parent().map(PathBuf::from).unwrap_or_default();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io::Error::new(e.kind(), format!("cannot read {}: {e}", dir.display()))),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_socket() {
            continue;
        }
        let file = entry.file_name();
        let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".sock")) else { continue };
        found.push(endpoint(name, entry.path()));
    }
    Ok(found)
}

#[cfg(windows)]
#[allow(unsafe_code)]
fn platform_list() -> io::Result<Vec<LocalEndpoint>> {
    use windows_sys::Win32::Foundation::{ERROR_FILE_NOT_FOUND, ERROR_NO_MORE_FILES, INVALID_HANDLE_VALUE};
    use windows_sys::Win32::Storage::FileSystem::{FindClose, FindFirstFileW, FindNextFileW, WIN32_FIND_DATAW};

    let pattern: Vec<u16> = r"\\.\pipe\*".encode_utf16().chain([0]).collect();
    // SAFETY: an all-zero WIN32_FIND_DATAW is a valid value (integers and arrays).
    let mut data: WIN32_FIND_DATAW = unsafe { std::mem::zeroed() };
    // SAFETY: `pattern` is NUL-terminated and `data` is a valid out-pointer for the call.
    let handle = unsafe { FindFirstFileW(pattern.as_ptr(), &mut data) };
    if handle == INVALID_HANDLE_VALUE {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(ERROR_FILE_NOT_FOUND as i32) {
            return Ok(Vec::new());
        }
        // Unchanged, so that its OS code stays readable (wine: ERROR_BAD_DEV_TYPE).
        return Err(e);
    }
    let mut found = Vec::new();
    loop {
        let len = data.cFileName.iter().position(|&c| c == 0).unwrap_or(data.cFileName.len());
        let pipe = String::from_utf16_lossy(&data.cFileName[..len]);
        if let Some(name) = crate::platform::plain_name_of(&pipe) {
            found.push(endpoint(name, PathBuf::from(format!(r"\\.\pipe\{pipe}"))));
        }
        // SAFETY: `handle` is the open search handle, `data` a valid out-pointer.
        if unsafe { FindNextFileW(handle, &mut data) } == 0 {
            let e = io::Error::last_os_error();
            // SAFETY: `handle` is the open search handle; it is not used after this.
            unsafe { FindClose(handle) };
            if e.raw_os_error() == Some(ERROR_NO_MORE_FILES as i32) {
                break;
            }
            return Err(io::Error::new(e.kind(), format!(r"cannot list \\.\pipe\: {e}")));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bound_name_is_listed_under_its_plain_name_and_address() {
        let name = format!("list-test-{}", std::process::id());
        let listener = crate::PipeListener::bind(PipeName::new(name.as_str())).unwrap();
        let found = match list_local() {
            // wine answers FindFirstFileW on the pipe namespace with ERROR_BAD_DEV_TYPE (66);
            // Windows lists it.
            #[cfg(windows)]
            Err(e) if e.raw_os_error() == Some(66) => {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "SKIPPED: this system cannot enumerate \\\\.\\pipe\\ ({e})");
                return;
            }
            other => other.unwrap(),
        };
        let ours = found.iter().find(|e| e.name.as_str() == name).expect("the bound name is listed");
        assert_eq!(ours.address, PipeName::new(name.as_str()).resolve().unwrap());
        assert!(!ours.name.is_path());
        drop(listener);
        #[cfg(unix)]
        assert!(list_local().unwrap().iter().all(|e| e.name.as_str() != name), "gone once unbound");
    }
}

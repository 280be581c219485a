//! Windows: local named pipes `\\.\pipe\NAME`, with interprocess's defaults
//! (`FILE_FLAG_FIRST_PIPE_INSTANCE`, `PIPE_REJECT_REMOTE_CLIENTS`, default DACL).

use std::{
    io,
    os::windows::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::Duration,
};

use interprocess::{
    ConnectWaitMode,
    local_socket::{
        GenericFilePath, ListenerOptions, ToFsName,
        tokio::{Listener, Stream},
    },
    os::windows::named_pipe::{local_socket as np_local, pipe_mode, tokio::DuplexPipeStream},
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

pub(crate) fn bind(name: &PipeName, addr: &Path, _opts: &ListenOptions) -> Result<(Listener, Reclaim), Error> {
    let io_fail = |e: io::Error| {
        Error::new(ErrorKind::Io, format!("cannot listen on pipe `{}` at {}: {e}", name.as_str(), addr.display()))
            .with_name(name)
            .with_source(e)
    };
    let fs_name = addr.to_fs_name::<GenericFilePath>().map_err(io_fail)?;
    // interprocess creates the first instance with FILE_FLAG_FIRST_PIPE_INSTANCE, so a name
    // that any process already serves fails with ERROR_ACCESS_DENIED instead of silently
    // adding our instances to theirs. Named pipes leave no files behind, so nothing is stale.
    ListenerOptions::new().name(fs_name).create_tokio().map(|l| (l, Reclaim)).map_err(|e| match e.raw_os_error() {
        Some(ERROR_ACCESS_DENIED | ERROR_PIPE_BUSY) => Error::new(
            ErrorKind::NameInUse,
            format!(
                "name in use: another server is listening on pipe `{}` at {} (or another process holds \
                     that pipe name)",
                name.as_str(),
                addr.display()
            ),
        )
        .with_name(name)
        .with_source(e),
        _ => io_fail(e),
    })
}

pub(crate) fn check_client_dir(_name: &PipeName, _addr: &Path) -> Result<(), Error> {
    Ok(())
}

/// One connection attempt that never waits inside interprocess.
///
/// interprocess's local-socket connect ignores the wait mode on Windows and, on
/// `ERROR_PIPE_BUSY`, loops on `WaitNamedPipeW(NMPWAIT_WAIT_FOREVER)` in `spawn_blocking`:
/// cancelling the future leaves that thread blocked, and a Tokio runtime waits for its blocking
/// threads when it shuts down. With `Timeout(0)` the named-pipe connect makes exactly one
/// `CreateFileW` and reports a busy pipe as `TimedOut`; our caller owns the retry loop.
pub(crate) async fn connect_once(addr: &Path) -> io::Result<Stream> {
    let pipe = DuplexPipeStream::<pipe_mode::Bytes>::connect_by_path_with_wait_mode(
        addr,
        ConnectWaitMode::Timeout(Duration::ZERO),
    )
    .await?;
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

pub(crate) const BUSY_REASON: &str = "every instance of the pipe is in use (ERROR_PIPE_BUSY)";

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
    fn busy_and_missing_are_told_apart() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(classify(&os(ERROR_FILE_NOT_FOUND)), ConnectFailure::NotRunning);
        assert_eq!(classify(&os(ERROR_PIPE_BUSY)), ConnectFailure::Busy);
        assert_eq!(classify(&io::ErrorKind::TimedOut.into()), ConnectFailure::Busy);
        assert_eq!(classify(&os(ERROR_ACCESS_DENIED)), ConnectFailure::PermissionDenied);
    }
}

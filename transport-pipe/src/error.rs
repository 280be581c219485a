//! The one error type of this crate.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::name::PipeName;

/// What went wrong, coarsely: enough to decide what to do next (retry, pick another name,
/// report). Match on it with a wildcard arm: new kinds may be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No server is listening on the name (nothing there, or a stale Unix socket file left by
    /// a server that crashed). [`connect`](crate::connect) reports it at once, or after its
    /// timeout with [`ConnectOptions::wait_for_server`](crate::ConnectOptions::wait_for_server).
    NotRunning,
    /// A server exists but could not take the connection: every Windows pipe instance was in
    /// use (`ERROR_PIPE_BUSY`) or the Unix listen backlog was full (`EAGAIN`).
    /// [`connect`](crate::connect) kept retrying until its timeout.
    Busy,
    /// Another live server already listens on the name (or, on Windows, another process holds
    /// the pipe name).
    NameInUse,
    /// Unix: a socket file that belongs to another user is at the address, and no server
    /// answers on it: a stale socket that user's server left behind, typically in a shared
    /// directory. [`PipeListener::bind`](crate::PipeListener::bind) reclaims only stale
    /// sockets of its own effective user and refuses this one, whoever runs it (root
    /// included), as it refuses a file or a symlink in the way. [`Error::owner_uid`] and
    /// [`Error::path`] say whose file and where; remove it by hand if that user's server is
    /// gone for good.
    ForeignSocket,
    /// The name is malformed or too long for the platform. The message names the limit.
    InvalidName,
    /// The operating system refused access, or a directory or file on the way is not private
    /// to the current user.
    PermissionDenied,
    /// [`parent_pipe`](crate::parent_pipe): this process was not given a pipe to its parent
    /// (it was not spawned with a [`ChildPipe`](crate::ChildPipe)), or the one named in its
    /// environment is not usable. The message says which.
    NoParentPipe,

    /// Any other I/O failure; see [`Error::io_error`].
    Io,
}

/// An error of this crate: a [kind](ErrorKind), a lowercase message that names the pipe, its
/// resolved address and any limit involved, and the underlying [`io::Error`] if there is one.
///
/// [`Display`](fmt::Display) prints the message. For [`ErrorKind::Io`] and
/// [`ErrorKind::PermissionDenied`] the message ends with the operating system's error text,
/// because callers often keep only the string; [`source`](std::error::Error::source) still
/// returns the `io::Error` for programmatic inspection.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    name: Option<PipeName>,
    waited: Option<Duration>,
    /// The file in the way and its owner ([`ErrorKind::ForeignSocket`]); boxed, so the error
    /// stays small for the common kinds.
    owner: Option<Box<(PathBuf, u32)>>,
    source: Option<io::Error>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into(), name: None, waited: None, owner: None, source: None }
    }

    /// Names the file in the way and its owner ([`ErrorKind::ForeignSocket`]).
    #[cfg_attr(not(unix), allow(dead_code))] // only the Unix stale-socket check needs it
    pub(crate) fn with_owner(mut self, path: &Path, owner_uid: u32) -> Error {
        self.owner = Some(Box::new((path.to_owned(), owner_uid)));
        self
    }

    pub(crate) fn with_name(mut self, name: &PipeName) -> Error {
        self.name = Some(name.clone());
        self
    }

    /// Puts `context` (e.g. "cannot listen on pipe `x`") in front of the message.
    #[cfg_attr(not(unix), allow(dead_code))] // only the Unix directory checks need it
    pub(crate) fn context(mut self, context: impl fmt::Display) -> Error {
        self.message = format!("{context}: {}", self.message);
        self
    }

    pub(crate) fn with_source(mut self, source: io::Error) -> Error {
        self.source = Some(source);
        self
    }

    pub(crate) fn with_waited(mut self, waited: Duration) -> Error {
        self.waited = Some(waited);
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The pipe name the operation was about, if any.
    pub fn name(&self) -> Option<&PipeName> {
        self.name.as_ref()
    }

    /// How long [`connect`](crate::connect) kept trying before it gave up (set for
    /// [`ErrorKind::NotRunning`] and [`ErrorKind::Busy`]).
    pub fn waited(&self) -> Option<Duration> {
        self.waited
    }

    /// The user id that owns the file in the way (set for [`ErrorKind::ForeignSocket`]).
    pub fn owner_uid(&self) -> Option<u32> {
        self.owner.as_ref().map(|o| o.1)
    }

    /// The filesystem path of the file in the way (set for [`ErrorKind::ForeignSocket`]).
    pub fn path(&self) -> Option<&Path> {
        self.owner.as_ref().map(|o| o.0.as_path())
    }

    /// The operating-system error behind this one, if any.
    pub fn io_error(&self) -> Option<&io::Error> {
        self.source.as_ref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

/// Formats a duration the way our messages show it: milliseconds below a second, else seconds
/// with millisecond precision (`Debug` for `Duration` prints nanosecond noise).
pub(crate) fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) { format!("{} ms", d.as_millis()) } else { format!("{:.3} s", d.as_secs_f64()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_accessors_and_source() {
        let io = io::Error::from(io::ErrorKind::NotFound);
        let e = Error::new(ErrorKind::NotRunning, "no server")
            .with_name(&PipeName::new("x"))
            .with_waited(Duration::from_millis(5))
            .with_source(io);
        assert_eq!(e.kind(), ErrorKind::NotRunning);
        assert_eq!(e.name().map(PipeName::as_str), Some("x"));
        assert_eq!(e.waited(), Some(Duration::from_millis(5)));
        assert_eq!(e.io_error().map(io::Error::kind), Some(io::ErrorKind::NotFound));
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.to_string(), "no server");
        assert_eq!((e.owner_uid(), e.path()), (None, None));
        let e = Error::new(ErrorKind::ForeignSocket, "theirs").with_owner(Path::new("/tmp/x.sock"), 65534);
        assert_eq!((e.owner_uid(), e.path()), (Some(65534), Some(Path::new("/tmp/x.sock"))));
    }

    #[test]
    fn durations_format_without_noise() {
        assert_eq!(fmt_duration(Duration::from_micros(300_400)), "300 ms");
        assert_eq!(fmt_duration(Duration::from_millis(5_001)), "5.001 s");
    }

    #[test]
    fn error_is_send_sync_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Error>();
    }
}

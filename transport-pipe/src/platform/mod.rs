//! The per-platform halves of naming, binding and connecting. Each platform module provides
//! the same `pub(crate)` functions; the portable modules call them through this one.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;

/// How [`connect`](crate::connect) treats one failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnectFailure {
    /// Nothing exists at the address (no socket file, no pipe of that name), or a
    /// listener closed with our connection in its backlog: reported at once unless the
    /// caller waits for a server that is starting ([`ConnectOptions::wait_for_server`]).
    ///
    /// [`ConnectOptions::wait_for_server`]: crate::ConnectOptions::wait_for_server
    NotRunning,
    /// Unix: a socket file is there but refuses connections (`ECONNREFUSED`): left by a
    /// server that exited. On Linux that is all it can mean; on macOS and the BSDs a full
    /// listen backlog is reported the same way (see [`REFUSED_MAY_BE_BUSY`]).
    #[cfg_attr(windows, allow(dead_code))] // Windows has no socket files
    Refused,
    /// A server is there but cannot take the connection now: retry until the timeout.
    Busy,
    /// Retrying will not help.
    PermissionDenied,
    /// Retrying will not help.
    Other,
}

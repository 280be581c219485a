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
    /// Nothing is listening yet (or only a stale socket file): retry until the timeout.
    NotRunning,
    /// A server is there but cannot take the connection now: retry until the timeout.
    Busy,
    /// Retrying will not help.
    PermissionDenied,
    /// Retrying will not help.
    Other,
}

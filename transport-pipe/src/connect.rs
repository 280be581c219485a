//! The client side: connecting to a named pipe, waiting for the server to come up.

use std::{io, time::Duration};

use tokio::time::{Instant, sleep_until, timeout_at};

use crate::{
    error::{Error, ErrorKind, fmt_duration},
    name::PipeName,
    platform::{self, ConnectFailure},
    stream::PipeStream,
};

/// Backoff values below this are raised to it, so a zero backoff cannot spin.
const MIN_BACKOFF: Duration = Duration::from_millis(1);

/// Each attempt may finish at least this long after it starts, even past the timeout. Attempts
/// complete at once in practice (one `connect` or `CreateFileW`), but on Unix the result is
/// only seen after the runtime's I/O driver runs; cutting that short at the deadline would turn
/// a made connection into a failure (and with a zero timeout, always).
const ATTEMPT_GRACE: Duration = Duration::from_secs(1);

/// Client settings for [`connect`]. Start from [`ConnectOptions::default()`] and use the
/// setters.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Total time to keep trying while the server is not up yet or busy. Default 5 s. Zero =
    /// one attempt.
    pub timeout: Duration,
    /// First pause between attempts; doubles up to `max_backoff`. Default 2 ms. Values below
    /// 1 ms are raised to 1 ms.
    pub initial_backoff: Duration,
    /// Longest pause between attempts. Default 100 ms. Values below `initial_backoff` are
    /// raised to it.
    pub max_backoff: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(100),
        }
    }
}

impl ConnectOptions {
    /// Sets [`timeout`](Self::timeout).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`initial_backoff`](Self::initial_backoff).
    #[must_use]
    pub fn initial_backoff(mut self, backoff: Duration) -> Self {
        self.initial_backoff = backoff;
        self
    }

    /// Sets [`max_backoff`](Self::max_backoff).
    #[must_use]
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }
}

/// Connects to the server listening on `name`.
///
/// While nothing listens on the name yet (no socket file or pipe, or a stale socket file that
/// refuses connections), or every pipe instance is busy, it retries with exponential backoff
/// until `opts.timeout` has passed, then fails with [`ErrorKind::NotRunning`] or
/// [`ErrorKind::Busy`] (whichever the last attempt saw). The error names the pipe, its address
/// and how long it waited. So a client may be started before its server.
///
/// The total time is bounded by the timeout (plus, in theory, the completion of one last
/// attempt, which is immediate for local pipes). Cancel-safe: dropping the future abandons the
/// attempt without leaving anything behind.
///
/// # Errors
///
/// [`ErrorKind::NotRunning`] and [`ErrorKind::Busy`] as above, at once
/// [`ErrorKind::PermissionDenied`] if the OS refuses access (or, on Unix, the directory of a
/// plain name is not private to the user), [`ErrorKind::InvalidName`] for a bad name, and
/// [`ErrorKind::Io`] for anything else.
///
/// ## Platform-specific behavior
///
/// On Windows, a listener has one instance waiting for a client at a time; a burst of clients
/// sees `ERROR_PIPE_BUSY` until the server accepts and creates the next instance, so the retry
/// is part of normal operation there. On Linux, `Busy` means the listen backlog is full; macOS
/// and the BSDs report a full backlog as a refused connection, i.e. `NotRunning`.
pub async fn connect(name: impl Into<PipeName>, opts: &ConnectOptions) -> Result<PipeStream, Error> {
    let name = name.into();
    let addr = name.resolve()?;
    let start = Instant::now();
    // A timeout too large to represent means "practically forever"; a year will do.
    let deadline = start.checked_add(opts.timeout).unwrap_or_else(|| start + Duration::from_secs(365 * 24 * 3600));
    let mut backoff = opts.initial_backoff.max(MIN_BACKOFF);
    let max_backoff = opts.max_backoff.max(backoff);
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        platform::check_client_dir(&name, &addr)?;
        let attempt_start = Instant::now();
        let attempt_deadline = deadline.max(attempt_start + ATTEMPT_GRACE);
        let (failure, err) = match timeout_at(attempt_deadline, platform::connect_once(&addr)).await {
            Ok(Ok(stream)) => {
                tracing::trace!(pipe = name.as_str(), attempts, "connected");
                return Ok(PipeStream::new(stream));
            }
            Ok(Err(e)) => (platform::classify(&e), e),
            Err(_elapsed) => (
                ConnectFailure::Busy,
                io::Error::new(io::ErrorKind::TimedOut, "the connection attempt did not complete"),
            ),
        };
        let waited = start.elapsed();
        match failure {
            ConnectFailure::NotRunning | ConnectFailure::Busy => {}
            ConnectFailure::PermissionDenied => {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("permission denied connecting to pipe `{}` at {}: {err}", name.as_str(), addr.display()),
                )
                .with_name(&name)
                .with_source(err));
            }
            ConnectFailure::Other => {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("cannot connect to pipe `{}` at {}: {err}", name.as_str(), addr.display()),
                )
                .with_name(&name)
                .with_source(err));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(give_up(&name, &addr, failure, err, waited, attempts, opts.timeout));
        }
        sleep_until((now + backoff).min(deadline)).await;
        backoff = (backoff * 2).min(max_backoff);
    }
}

fn give_up(
    name: &PipeName,
    addr: &std::path::Path,
    failure: ConnectFailure,
    err: io::Error,
    waited: Duration,
    attempts: u32,
    timeout: Duration,
) -> Error {
    let tried = format!(
        "gave up after {} ({attempts} attempt{}, connect timeout {})",
        fmt_duration(waited),
        if attempts == 1 { "" } else { "s" },
        fmt_duration(timeout)
    );
    let (kind, message) = if failure == ConnectFailure::Busy {
        // Our own attempt timeout (see ATTEMPT_GRACE) is a plain TimedOut; interprocess's busy
        // report on Windows is one too, but there BUSY_REASON is exactly right.
        let reason = if cfg!(unix) && err.kind() == io::ErrorKind::TimedOut {
            "the connection attempt did not complete"
        } else {
            platform::BUSY_REASON
        };
        (ErrorKind::Busy, format!("pipe `{}` at {} is busy: {reason}; {tried}", name.as_str(), addr.display()))
    } else {
        let reason = match err.kind() {
            io::ErrorKind::ConnectionRefused => "connection refused (a stale socket file from a server that exited)",
            _ => "nothing exists at that address",
        };
        (
            ErrorKind::NotRunning,
            format!("no server is listening on pipe `{}` at {}: {reason}; {tried}", name.as_str(), addr.display()),
        )
    };
    Error::new(kind, message).with_name(name).with_waited(waited).with_source(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_documented_values() {
        let o = ConnectOptions::default();
        assert_eq!(o.timeout, Duration::from_secs(5));
        assert_eq!(o.initial_backoff, Duration::from_millis(2));
        assert_eq!(o.max_backoff, Duration::from_millis(100));
        let o =
            o.timeout(Duration::ZERO).initial_backoff(Duration::from_millis(1)).max_backoff(Duration::from_millis(7));
        assert_eq!(
            (o.timeout, o.initial_backoff, o.max_backoff),
            (Duration::ZERO, Duration::from_millis(1), Duration::from_millis(7))
        );
    }
}

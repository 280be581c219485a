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

/// How long a refused connection (`ECONNREFUSED`) is retried on platforms where it may
/// mean a full listen backlog rather than a stale socket file (macOS, the BSDs; see
/// `platform::REFUSED_MAY_BE_BUSY`) before it is reported as [`ErrorKind::NotRunning`]. Long
/// enough for a live server to take a few connections off its backlog, short enough that a
/// stale socket is still reported at once to a person.
const REFUSED_GRACE: Duration = Duration::from_millis(250);

/// Client settings for [`connect`]. Start from [`ConnectOptions::default()`] and use the
/// setters.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Total time to keep trying while the server is busy (or, with
    /// [`wait_for_server`](Self::wait_for_server), not up yet). Default 5 s. Zero = one
    /// attempt.
    pub timeout: Duration,
    /// First pause between attempts; doubles up to `max_backoff`. Default 2 ms. Values below
    /// 1 ms are raised to 1 ms.
    pub initial_backoff: Duration,
    /// Longest pause between attempts. Default 100 ms. Values below `initial_backoff` are
    /// raised to it.
    pub max_backoff: Duration,
    /// What to do when nothing listens on the name (no socket file or pipe, or a stale
    /// socket file that refuses connections). `false` (the default): fail at once with
    /// [`ErrorKind::NotRunning`], so a user who forgot to start the server is told so
    /// without waiting. `true`: keep trying until [`timeout`](Self::timeout), for a client
    /// started together with its server (a service manager, a test, a script that starts
    /// both).
    pub wait_for_server: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: Duration::from_secs(5),
            initial_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(100),
            wait_for_server: false,
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

    /// Sets [`wait_for_server`](Self::wait_for_server).
    #[must_use]
    pub fn wait_for_server(mut self, wait: bool) -> Self {
        self.wait_for_server = wait;
        self
    }

    /// The pause after the `failed`-th failed attempt (counting from 1):
    /// [`initial_backoff`](Self::initial_backoff) doubled per earlier failure, at most
    /// [`max_backoff`](Self::max_backoff), with the fields' documented floors applied. For
    /// callers that retry on top of [`connect`] with the same schedule (rpc-core retries a
    /// server that refused the connection in its handshake because it was at its connection
    /// limit).
    pub fn backoff(&self, failed: u32) -> Duration {
        let first = self.initial_backoff.max(MIN_BACKOFF);
        let max = self.max_backoff.max(first);
        let doublings = failed.saturating_sub(1).min(31);
        first.saturating_mul(1u32 << doublings).min(max)
    }

    /// The instant `timeout` after `start`; a timeout too large to represent means
    /// "practically forever" (a year).
    pub fn deadline_from(&self, start: Instant) -> Instant {
        start.checked_add(self.timeout).unwrap_or_else(|| start + Duration::from_secs(365 * 24 * 3600))
    }
}

/// Connects to the server listening on `name`.
///
/// - A busy server (every Windows pipe instance in use, a full Unix listen backlog) is
///   retried with exponential backoff until `opts.timeout` has passed, then reported as
///   [`ErrorKind::Busy`]: busy is a normal, short-lived state of a live server.
/// - Nothing listening on the name (no socket file or pipe, or a stale socket file that
///   refuses connections) is reported at once as [`ErrorKind::NotRunning`], unless
///   [`ConnectOptions::wait_for_server`] is set: then it is retried like busy, so a client
///   may be started before its server.
///
/// The error names the pipe, its address and how long it waited.
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
/// is part of normal operation there. A pipe name exists exactly while some instance of it
/// does, so a live server is never reported as missing (`ERROR_FILE_NOT_FOUND`), even
/// between two instances. On Linux, `Busy` means the listen backlog is full
/// (`EAGAIN`) and a refused connection means a stale socket file. macOS and the BSDs report
/// a full backlog as a refused connection too, so there a refusal is retried for 250 ms
/// before it is reported as `NotRunning`. A Unix server's socket file appears, already
/// listening, when [`PipeListener::bind`](crate::PipeListener::bind) returns: a client
/// started after that never sees a server that is "starting".
pub async fn connect(name: impl Into<PipeName>, opts: &ConnectOptions) -> Result<PipeStream, Error> {
    connect_since(name, opts, Instant::now()).await
}

/// Like [`connect`], with `opts.timeout` counted from `start` (an instant in the past)
/// instead of from now: for a caller that connects more than once within one timeout.
/// rpc-core does, when a server refuses a connection in its handshake because it is at its
/// connection limit: it backs off and connects again, within the same connect timeout.
///
/// # Errors
///
/// As for [`connect`].
pub async fn connect_since(
    name: impl Into<PipeName>,
    opts: &ConnectOptions,
    start: Instant,
) -> Result<PipeStream, Error> {
    let name = name.into();
    let addr = name.resolve()?;
    let deadline = opts.deadline_from(start);
    let mut attempts: u32 = 0;
    let mut first_refusal: Option<Instant> = None;
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
        let retry = match failure {
            ConnectFailure::Busy => true,
            ConnectFailure::NotRunning => opts.wait_for_server,
            ConnectFailure::Refused => {
                let first = *first_refusal.get_or_insert(attempt_start);
                opts.wait_for_server || (platform::REFUSED_MAY_BE_BUSY && first.elapsed() < REFUSED_GRACE)
            }
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
        };
        let now = Instant::now();
        if !retry || now >= deadline {
            let tried = Tried { waited, attempts, timeout: opts.timeout, waiting: opts.wait_for_server };
            return Err(give_up(&name, &addr, failure, err, tried));
        }
        sleep_until((now + opts.backoff(attempts)).min(deadline)).await;
    }
}

/// How a connect went, for its error message.
struct Tried {
    waited: Duration,
    attempts: u32,
    timeout: Duration,
    /// [`ConnectOptions::wait_for_server`] was set.
    waiting: bool,
}

fn give_up(name: &PipeName, addr: &std::path::Path, failure: ConnectFailure, err: io::Error, tried: Tried) -> Error {
    let Tried { waited, attempts, timeout, waiting } = tried;
    let retried = format!(
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
        (ErrorKind::Busy, format!("pipe `{}` at {} is busy: {reason}; {retried}", name.as_str(), addr.display()))
    } else {
        let reason = match failure {
            ConnectFailure::Refused => "connection refused (a stale socket file from a server that exited)",
            _ if err.kind() == io::ErrorKind::NotFound || cfg!(windows) => "nothing exists at that address",
            _ => "the server closed its listener (it is shutting down or restarting)",
        };
        let tried = if waiting {
            retried
        } else {
            "not waiting for a server to start (ConnectOptions::wait_for_server is off)".to_owned()
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
        assert!(!o.wait_for_server);
        let o = o
            .timeout(Duration::ZERO)
            .initial_backoff(Duration::from_millis(1))
            .max_backoff(Duration::from_millis(7))
            .wait_for_server(true);
        assert_eq!(
            (o.timeout, o.initial_backoff, o.max_backoff, o.wait_for_server),
            (Duration::ZERO, Duration::from_millis(1), Duration::from_millis(7), true)
        );
    }

    #[test]
    fn backoff_doubles_from_its_floor_up_to_its_ceiling() {
        let ms = Duration::from_millis;
        let o = ConnectOptions::default();
        let pauses: Vec<_> = (1..=9).map(|n| o.backoff(n)).collect();
        assert_eq!(pauses, [ms(2), ms(4), ms(8), ms(16), ms(32), ms(64), ms(100), ms(100), ms(100)]);
        assert_eq!(o.backoff(u32::MAX), ms(100));
        // Zero pauses are raised to 1 ms, and a ceiling below the first pause to it.
        let o = o.initial_backoff(Duration::ZERO).max_backoff(Duration::ZERO);
        assert_eq!((o.backoff(1), o.backoff(40)), (ms(1), ms(1)));
        let o = ConnectOptions::default().initial_backoff(ms(50)).max_backoff(ms(10));
        assert_eq!(o.backoff(3), ms(50));
    }

    #[test]
    fn a_huge_timeout_has_a_deadline() {
        let now = Instant::now();
        let o = ConnectOptions::default().timeout(Duration::MAX);
        assert!(o.deadline_from(now) > now + Duration::from_secs(300 * 24 * 3600));
    }
}

//! The context of the call being served: its deadline, id and caller.
//!
//! The server runs every handler inside a task-local scope holding its [`Context`], so a
//! handler can read [`current()`] without a parameter in the trait. Calls a handler makes
//! to other services inherit the remaining time: a client call made inside a handler
//! never gets a later deadline than the call being served (deadline propagation across
//! hops).

use std::time::{Duration, Instant};

tokio::task_local! {
    static CURRENT: Context;
}

/// What the server knows about the call being served.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Context {
    /// When the caller stops waiting. In process this is an absolute instant; on the wire
    /// it travels as a relative timeout, so the two processes' clocks never need to agree.
    /// It is an instant of tokio's clock (`tokio::time::Instant::into_std`), which is the
    /// system's monotonic clock unless the runtime's time is paused (`start_paused`); to
    /// compare it with "now" under paused time, use `tokio::time::Instant::now().into_std()`,
    /// as [`remaining`](Self::remaining) does.
    pub deadline: Instant,
    /// The request id, unique among the calls in flight on one connection.
    pub request_id: u64,
    /// The method being called.
    pub method: &'static str,
    /// Who is calling, as the operating system reports the pipe's peer (`None` for a
    /// connection whose transport reports no credentials, such as an in-memory pipe). On a
    /// client serving callbacks, this is the server.
    pub peer: Option<crate::access::PeerCredentials>,
}

impl Context {
    /// Time left before the deadline (zero if it has passed), on tokio's clock.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(tokio::time::Instant::now().into_std())
    }
}

/// The context of the call being served on this task, if any.
pub fn current() -> Option<Context> {
    CURRENT.try_with(Clone::clone).ok()
}

/// The deadline of the call being served on this task, if any (cheaper than [`current`]),
/// on tokio's clock like every deadline the engine keeps.
pub(crate) fn current_deadline() -> Option<tokio::time::Instant> {
    CURRENT.try_with(|c| tokio::time::Instant::from_std(c.deadline)).ok()
}

/// Wraps `fut` so it runs with `ctx` as the current context; a nameable future type, so
/// the server can keep it unboxed.
pub(crate) fn scoped<F: std::future::Future>(
    ctx: Context,
    fut: F,
) -> tokio::task::futures::TaskLocalFuture<Context, F> {
    CURRENT.scope(ctx, fut)
}

/// Runs `f` with `ctx` as the current context: the server polls each new handler once
/// inline this way, before deciding whether it needs a task slot of its own.
pub(crate) fn sync_scoped<R>(ctx: Context, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(ctx, f)
}

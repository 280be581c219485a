//! The context of the call being served: its deadline, id and caller.
//!
//! The server runs every handler inside a task-local scope holding its [`Context`], so a
//! handler can read [`current()`] without a parameter in the trait. Calls a handler makes
//! to other services inherit the remaining time: a client call made inside a handler
//! never gets a later deadline than the call being served (deadline propagation across
//! hops).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::deadlines::IdMap;

tokio::task_local! {
    static CURRENT: Current;
}

scoped_tls::scoped_thread_local! {
    /// The context of the handler being polled inline on this thread ([`sync_scoped`]): a
    /// reference, not a task-local scope, because the server polls every new handler once
    /// inline and entering a task-local scope moved a `Current` in and out (and cloned it)
    /// each time.
    static INLINE: Current
}

/// `f` of the context of the call being served here: the handler being polled inline on
/// this thread, else this task's.
fn with_current<R>(f: impl FnOnce(&Current) -> R) -> Option<R> {
    if INLINE.is_set() {
        return Some(INLINE.with(f));
    }
    CURRENT.try_with(f).ok()
}

/// What a handler's task-local scope holds, from which [`current`] builds a [`Context`].
/// Small on purpose: a handler's task-local scope is entered and left at every poll of a
/// handler in a task of its own, moving this value in and out each time; a whole
/// `Context` with the peer's credentials is three times its size (measured in ARCHITECTURE,
/// "where the time goes"). The deadline is kept as a start and a wait, computed
/// only when asked for, which most handlers never do.
#[derive(Clone)]
pub(crate) struct Current {
    /// When the call started, and how long it may run from then.
    pub(crate) since: tokio::time::Instant,
    pub(crate) wait: Duration,
    pub(crate) request_id: u64,
    pub(crate) method: &'static str,
    pub(crate) conn: Arc<ConnContext>,
    /// Whether the call's work is tied to it through `conn.work` ([`spawn`],
    /// [`spawn_blocking`]); not for a one-way call, whose work is tied to nothing.
    pub(crate) tracked: bool,
}

/// What every call of one connection shares in its [`Current`].
pub(crate) struct ConnContext {
    pub(crate) peer: Option<crate::access::PeerCredentials>,
    pub(crate) work: Arc<CallWork>,
}

impl Current {
    fn deadline(&self) -> tokio::time::Instant {
        crate::deadlines::deadline_after(self.since, self.wait)
    }

    fn work(&self) -> Option<&Arc<CallWork>> {
        self.tracked.then_some(&self.conn.work)
    }

    fn context(&self) -> Context {
        Context {
            deadline: self.deadline().into_std(),
            request_id: self.request_id,
            method: self.method,
            peer: self.conn.peer,
        }
    }
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

/// The context of the call being served on this task, if any (`None` outside a handler, or in
/// a task it spawned without [`spawn`]).
///
/// ```
/// # #[rpc_core::service] pub trait Files { async fn read(&self, path: String) -> Result<Vec<u8>, FileError>; }
/// # #[derive(Debug, serde::Serialize, serde::Deserialize, thiserror::Error)]
/// # pub enum FileError { #[error("denied")] Denied, #[error("too slow")] TooSlow, #[error(transparent)] Rpc(#[from] rpc_core::RpcError) }
/// # struct Dir;
/// impl Files for Dir {
///     async fn read(&self, path: String) -> Result<Vec<u8>, FileError> {
///         let ctx = rpc_core::context::current().expect("called by the server");
///         // Who asks (from the OS, not from the client's word), and how long they wait.
///         if ctx.peer.and_then(|p| p.uid) != Some(0) && path.starts_with("/root") {
///             return Err(FileError::Denied);
///         }
///         if ctx.remaining() < std::time::Duration::from_millis(10) {
///             return Err(FileError::TooSlow);
///         }
///         Ok(Vec::new())
///     }
/// }
/// ```
pub fn current() -> Option<Context> {
    with_current(Current::context)
}

/// The deadline of the call being served on this task, if any (cheaper than [`current`]),
/// on tokio's clock like every deadline the engine keeps.
pub(crate) fn current_deadline() -> Option<tokio::time::Instant> {
    with_current(Current::deadline)
}

/// Wraps `fut` so it runs with `ctx` as the current context; a nameable future type, so
/// the server can keep it unboxed.
pub(crate) fn scoped<F: std::future::Future>(
    ctx: Current,
    fut: F,
) -> tokio::task::futures::TaskLocalFuture<Current, F> {
    CURRENT.scope(ctx, fut)
}

/// Runs `f` with `ctx` as the current context: the server polls each new handler once
/// inline this way, before deciding whether it needs a task slot of its own. Scopes nest;
/// the one outside is back when `f` returns or unwinds.
pub(crate) fn sync_scoped<R>(ctx: &Current, f: impl FnOnce() -> R) -> R {
    INLINE.set(ctx, f)
}

/// Work the handlers of one connection handed off, tied to the exchanges they serve:
/// tokio tasks are cancelled when their exchange ends, and blocking work (which cannot be
/// cancelled) holds one of a fixed number of places until it returns.
#[derive(Debug)]
pub(crate) struct CallWork {
    /// A token per exchange that spawned work, cancelled when the exchange ends.
    tokens: Mutex<IdMap<CancellationToken>>,
    /// Set while `tokens` may be non-empty: an exchange that spawned nothing ends
    /// without taking the lock.
    any: AtomicBool,
    /// Places for blocking work: the connection's in-flight limit.
    blocking: Arc<Semaphore>,
}

impl CallWork {
    pub(crate) fn new(blocking: usize) -> Self {
        CallWork { tokens: Mutex::default(), any: AtomicBool::new(false), blocking: Arc::new(Semaphore::new(blocking)) }
    }

    fn token(&self, id: u64) -> CancellationToken {
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        self.any.store(true, Ordering::Release);
        tokens.entry(id).or_default().clone()
    }

    /// Exchange `id` is over: cancel what it spawned.
    pub(crate) fn end(&self, id: u64) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(token) = tokens.remove(&id) {
            token.cancel();
        }
        if tokens.is_empty() {
            self.any.store(false, Ordering::Release);
        }
    }

    /// The connection is over: cancel everything.
    pub(crate) fn end_all(&self) {
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, token) in tokens.drain() {
            token.cancel();
        }
        self.any.store(false, Ordering::Release);
    }
}

/// Spawns `fut` as a tokio task tied to the call being served: it is cancelled (dropped
/// at its next `.await`) when the call's exchange ends, however it ends: answered,
/// cancelled by the client, past its deadline, or with the connection. A handler that
/// returns a stream keeps its spawned producers for as long as the stream runs. Outside a
/// call (or in a one-way call) it is a plain `tokio::spawn`. The task's output is
/// `None` if it was cancelled first.
///
/// Why: work a handler starts with `tokio::spawn` is not counted anywhere, so a client
/// that calls and cancels in a loop can make a server pile up tasks without limit.
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<Option<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let token = with_current(|c| c.work().map(|w| w.token(c.request_id))).flatten();
    match token {
        Some(token) => tokio::spawn(async move { token.run_until_cancelled(fut).await }),
        None => tokio::spawn(async move { Some(fut.await) }),
    }
}

/// Runs blocking `f` on tokio's blocking pool for the call being served, counted against
/// the connection: at most its in-flight limit of such closures run at once (a call
/// beyond it waits for a place). A closure cannot be stopped, so one whose call was
/// cancelled keeps its place until it returns, which is what bounds the threads a client
/// can make the server start by calling and cancelling. Outside a call (or in a one-way
/// call) it is `tokio::task::spawn_blocking`. A panic in `f` is resumed here.
pub async fn spawn_blocking<F, R>(f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let places = with_current(|c| c.work().map(|w| w.blocking.clone())).flatten();
    let permit = match places {
        Some(places) => Some(places.acquire_owned().await.expect("the semaphore is never closed")),
        None => None,
    };
    let task = tokio::task::spawn_blocking(move || {
        let _place = permit;
        f()
    });
    match task.await {
        Ok(r) => r,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("blocking work was cancelled: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(request_id: u64, method: &'static str) -> Current {
        Current {
            since: tokio::time::Instant::now(),
            wait: Duration::from_secs(5),
            request_id,
            method,
            conn: Arc::new(ConnContext { peer: None, work: Arc::new(CallWork::new(1)) }),
            tracked: true,
        }
    }

    #[test]
    fn an_inline_scope_is_seen_inside_nests_and_is_gone_after_even_when_it_unwinds() {
        assert!(current().is_none(), "outside any call");
        let (outer, inner) = (call(7, "outer"), call(8, "inner"));
        sync_scoped(&outer, || {
            assert_eq!(current().map(|c| (c.request_id, c.method)), Some((7, "outer")));
            sync_scoped(&inner, || assert_eq!(current().map(|c| c.request_id), Some(8)));
            assert_eq!(current().map(|c| c.request_id), Some(7), "the outer scope is back");
        });
        assert!(current().is_none());
        let unwound = std::panic::catch_unwind(|| sync_scoped(&outer, || panic!("in a handler")));
        assert!(unwound.is_err());
        assert!(current().is_none(), "a panicking first poll leaves no context behind");
    }

    #[tokio::test]
    async fn a_task_scope_is_seen_when_no_inline_scope_is_set_and_an_inline_one_wins_inside_it() {
        let seen = scoped(call(3, "task"), async {
            let before = current().map(|c| c.request_id);
            tokio::task::yield_now().await;
            let inline = sync_scoped(&call(4, "inline"), || current().map(|c| c.request_id));
            (before, inline, current().map(|c| c.request_id))
        })
        .await;
        assert_eq!(seen, (Some(3), Some(4), Some(3)));
    }
}

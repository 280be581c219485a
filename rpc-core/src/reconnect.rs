//! Reconnecting clients: opt in with [`ClientConfig::reconnect`](crate::ClientConfig::reconnect).
//!
//! A client that connects by name and opts in gets a supervisor task beside its connection.
//! When the connection is lost (the server restarted, crashed, or shut down), the calling half
//! hands back what the server never saw, and the supervisor makes a new connection with
//! backoff, over which everything continues. What a caller sees:
//!
//! | the call was | when the connection broke | outcome |
//! |---|---|---|
//! | not written yet (queued, or held back by the server's window) | | sent over the next connection, within its deadline |
//! | made while there is no connection | | waits for the next connection, within its deadline (`DeadlineExceeded` at its deadline, not later) |
//! | written: the server may have run it | | fails with [`TransportError::ConnectionLost`] ("outcome unknown"), unless its method is `#[idempotent]`: then it is sent again over the next connection, within its deadline |
//! | a stream, in flight | | ends with `ConnectionLost`; open it again to go on |
//! | a one-way call not written yet | | written over the next connection |
//! | a one-way call written, not yet read by the server | | lost, as any message in flight is |
//!
//! A server that refuses the new connection for a reason no retry changes (another version
//! of the service, a permission, an impostor holding the name) fails the calls waiting for a
//! connection with that error; the supervisor keeps trying, in case the right server comes
//! back. A missing or busy server is retried. Dropping every handle (or `close()`) while
//! there is no connection ends the supervisor and fails what waits.
//!
//! The new connection is a new handshake: [`Channel::peer`](crate::Channel::peer) reports
//! the new server. Only [`Channel::connect`](crate::Channel::connect) (and a generated
//! client's `connect`/`connect_with`) can reconnect; a channel over a stream it was given
//! (`from_io`, a child process) has no name to reconnect to and ignores the setting.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::{Instant, Sleep};
use transport_pipe::{ConnectOptions, PipeName};

use crate::client::{Channel, ClientConfig, EngineTask, Shared, run_engine};
use crate::engine::calls::CloseRequest;
use crate::error::{RpcError, TransportError};
use crate::service::ServiceId;

/// How a reconnecting client waits between attempts to reconnect. See the
/// [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reconnect {
    /// The wait after the first failed attempt; each failure doubles it. Default: 20 ms.
    pub initial_backoff: Duration,
    /// The longest wait between attempts, kept while the server stays away. Default: 1 s.
    pub max_backoff: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect { initial_backoff: Duration::from_millis(20), max_backoff: Duration::from_secs(1) }
    }
}

impl Reconnect {
    /// The documented defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`initial_backoff`](Self::initial_backoff) (at least 1 ms).
    #[must_use]
    pub fn initial_backoff(mut self, d: Duration) -> Self {
        self.initial_backoff = d;
        self
    }

    /// Sets [`max_backoff`](Self::max_backoff).
    #[must_use]
    pub fn max_backoff(mut self, d: Duration) -> Self {
        self.max_backoff = d;
        self
    }

    /// The wait after `failures` failed attempts in a row (1 or more).
    fn backoff(&self, failures: u32) -> Duration {
        let first = self.initial_backoff.max(Duration::from_millis(1));
        let max = self.max_backoff.max(first).min(crate::deadlines::MAX_WAIT);
        first.saturating_mul(1 << failures.saturating_sub(1).min(20)).min(max)
    }
}

/// Runs a reconnecting client's connections, one after another, until its handles are gone.
pub(crate) async fn supervise<Req, Resp>(
    shared: Arc<Shared<Req, Resp>>,
    name: PipeName,
    service: ServiceId,
    policy: Reconnect,
    first: EngineTask,
) where
    Req: Serialize + Send + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    let mut engine = first;
    loop {
        run_engine(engine).await;
        // The calling half fails everything (the table is closed) unless it detached
        // because the connection was lost while the handles still wanted it.
        if shared.calls.closed().is_some() {
            return;
        }
        tracing::info!(pipe = name.as_str(), "connection lost; reconnecting");
        match reconnect(&shared, &name, service, policy).await {
            Some(next) => engine = next,
            None => return,
        }
    }
}

/// Makes the next connection, with backoff, keeping the waiting calls' deadlines meanwhile.
/// `None` once the handles asked to close.
async fn reconnect<Req, Resp>(
    shared: &Arc<Shared<Req, Resp>>,
    name: &PipeName,
    service: ServiceId,
    policy: Reconnect,
) -> Option<EngineTask>
where
    Req: Serialize + Send + 'static,
    Resp: DeserializeOwned + Send + 'static,
{
    // One connection attempt at a time, failing at once when nobody serves the name: the
    // waiting between attempts is ours (so deadlines are kept while we wait).
    let mut connect: ConnectOptions = shared.config.connect.clone();
    connect.timeout = Duration::ZERO;
    connect.wait_for_server = false;
    let config = ClientConfig { connect, ..shared.config.clone() };
    let mut failures = 0u32;
    loop {
        let attempt = Channel::connect_engine(name, service, &config, Some(shared));
        let result = tokio::select! {
            r = attempt => r,
            wait = keep_deadlines(shared, None) => match wait {
                Wait::Close(how) => return close(shared, how),
                // Not with no end time; were it to happen, attempt again.
                Wait::Elapsed => continue,
            },
        };
        match result {
            Ok((_, engine)) => {
                shared.calls.set_detached(false);
                tracing::info!(pipe = name.as_str(), failures, "reconnected");
                return Some(engine);
            }
            Err(e) => {
                failures += 1;
                if refuses_for_good(&e) {
                    // Waiting calls cannot be served by this server: tell them now.
                    let mut wakers = Vec::new();
                    shared.calls.lock().fail_unsent(&e, &mut wakers);
                    wakers.into_iter().for_each(Waker::wake);
                }
                tracing::debug!(pipe = name.as_str(), failures, error = %e, "reconnecting failed");
            }
        }
        let until = Instant::now() + policy.backoff(failures);
        if let Wait::Close(how) = keep_deadlines(shared, Some(until)).await {
            return close(shared, how);
        }
    }
}

/// A refusal that another attempt against the same server cannot change.
fn refuses_for_good(e: &RpcError) -> bool {
    matches!(
        e,
        RpcError::Transport(
            TransportError::Incompatible { .. }
                | TransportError::PermissionDenied { .. }
                | TransportError::ServerIdentity { .. }
                | TransportError::InvalidName { .. }
        )
    )
}

/// The handles asked to close while there was no connection: everything waiting fails.
fn close<Req, Resp>(shared: &Shared<Req, Resp>, how: CloseRequest) -> Option<EngineTask> {
    let why: RpcError = match how {
        CloseRequest::Now => RpcError::Cancelled,
        _ => TransportError::Disconnected {
            detail: "the connection was lost and the client closed before it could reconnect".into(),
        }
        .into(),
    };
    let mut wakers = Vec::new();
    let dropped = shared.calls.lock().fail_all(&why, &mut wakers);
    drop(dropped);
    wakers.into_iter().for_each(Waker::wake);
    // Wake `flush` callers: they see the connection is over.
    shared.oneways_flushed.send_modify(|_| {});
    None
}

/// Why [`keep_deadlines`] returned.
enum Wait {
    /// The time given has come.
    Elapsed,
    /// The handles asked to close.
    Close(CloseRequest),
}

/// Fails calls waiting for a connection as their deadlines pass, until `until` (`None`:
/// for ever) or until the handles ask to close. Woken by the timer and by callers (a new
/// call may have an earlier deadline: the table wakes us while detached).
fn keep_deadlines<'a, Req, Resp>(
    shared: &'a Shared<Req, Resp>,
    until: Option<Instant>,
) -> impl Future<Output = Wait> + 'a {
    let mut sleep: Option<Pin<Box<Sleep>>> = None;
    std::future::poll_fn(move |cx: &mut Context<'_>| {
        loop {
            shared.calls.register_engine(cx.waker());
            let now = Instant::now();
            let mut wakers = Vec::new();
            let (close, next) = {
                let mut t = shared.calls.lock();
                (t.close_request(), t.expire_unsent(now, &mut wakers))
            };
            wakers.into_iter().for_each(Waker::wake);
            if close != CloseRequest::None {
                return Poll::Ready(Wait::Close(close));
            }
            if until.is_some_and(|u| now >= u) {
                return Poll::Ready(Wait::Elapsed);
            }
            let Some(target) = [next, until].into_iter().flatten().min() else {
                // Nothing to time: wait for a caller.
                return Poll::Pending;
            };
            let timer = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(target)));
            if timer.deadline() != target {
                timer.as_mut().reset(target);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_wait_up_to_the_longest() {
        let p = Reconnect::new().initial_backoff(Duration::from_millis(10)).max_backoff(Duration::from_millis(70));
        let waits: Vec<u128> = (1..=6).map(|n| p.backoff(n).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 70, 70, 70]);
        // Nonsense settings still give a wait, never a panic or a spin.
        let odd = Reconnect::new().initial_backoff(Duration::ZERO).max_backoff(Duration::ZERO);
        assert_eq!(odd.backoff(1), Duration::from_millis(1));
        assert_eq!(Reconnect::new().max_backoff(Duration::MAX).backoff(u32::MAX), Duration::from_secs(1 << 20) / 50);
    }
}

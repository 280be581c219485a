//! Deadlines of many calls behind one timer.
//!
//! A tokio timer per call costs a lock on the runtime's timer wheel to register and
//! another to cancel, and often a wake-up of the I/O driver (an `eventfd` write): measured
//! at a fifth of a pipelined client's time. A connection instead keeps its calls'
//! deadlines in a min-heap and arms a single `Sleep` for the earliest one; the timer is
//! only re-armed when the earliest deadline moves, which calls made with similar timeouts
//! almost never cause.
//!
//! Entries are removed lazily: a call that completes leaves its entry in the heap, and the
//! owner checks liveness when the entry expires. [`DeadlineQueue::needs_compaction`] says
//! when stale entries outnumber live calls so the owner can rebuild the heap from its own
//! table, keeping memory proportional to the calls in flight.
//!
//! Every deadline is a `tokio::time::Instant`, the clock the timer runs on: under tokio's
//! paused time (`start_paused`, common in users' tests) the timer fires at the virtual
//! instant, and "now" must be read from the same clock. With `std::time::Instant` deadlines
//! the timer fired at the virtual instant while the real clock was still short of it, so
//! nothing was due, and the queue re-armed and polled the fired timer in a loop, at full CPU,
//! until real time caught up.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The longest wait the engine ever sets up: about 100 years. Any `Duration` a user gives as
/// a timeout or a deadline cap is accepted, and one longer than this counts as this (so
/// `Duration::MAX` means "no limit of its own"). Far enough never to matter, near enough that
/// `Instant + MAX_WAIT` cannot overflow (the platforms' monotonic clocks count from boot;
/// even one in `u64` nanoseconds holds 584 years), and its microseconds fit the wire's
/// `timeout_us` (`u64`) below `u64::MAX`, which means "no deadline" for a stream. The server
/// still ends every call at its own `ServerConfig::max_deadline` (5 min by default).
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The instant `wait` after `now`, for any `wait`: clamped to [`MAX_WAIT`], and should
/// even that not fit the clock, the latest instant that does (halving the wait). Never
/// panics, unlike `now + wait`.
pub(crate) fn deadline_after(now: Instant, wait: Duration) -> Instant {
    let mut wait = wait.min(MAX_WAIT);
    loop {
        if let Some(deadline) = now.checked_add(wait) {
            return deadline;
        }
        wait /= 2;
    }
}

/// A configured time limit (a stall or handshake timeout, a deadline cap) as the engine
/// takes it: at least 1 ms, so a zero never means "at once, always", and at most
/// [`MAX_WAIT`]. Used by both configs where they are applied.
pub(crate) fn time_limit(d: Duration) -> Duration {
    d.clamp(Duration::from_millis(1), MAX_WAIT)
}

pub(crate) struct DeadlineQueue {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    timer: Pin<Box<Sleep>>,
    /// The instant the timer is set to, if it is set.
    armed: Option<Instant>,
}

#[cfg(test)]
thread_local! {
    /// How often a deadline queue on this thread polled its timer: a test's runtime
    /// (current-thread) runs the engines it starts on its own thread.
    static TIMER_POLLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// See [`TIMER_POLLS`].
#[cfg(test)]
pub(crate) fn timer_polls() -> u64 {
    TIMER_POLLS.with(std::cell::Cell::get)
}

impl DeadlineQueue {
    pub(crate) fn new() -> Self {
        DeadlineQueue {
            heap: BinaryHeap::new(),
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: None,
        }
    }

    pub(crate) fn push(&mut self, deadline: Instant, id: u64) {
        self.heap.push(Reverse((deadline, id)));
    }

    /// Rebuilds the heap from the owner's `live` calls when stale entries (left by calls
    /// that completed) outnumber them, keeping memory proportional to calls in flight.
    pub(crate) fn compact<I: Iterator<Item = (Instant, u64)>>(&mut self, live_len: usize, live: impl FnOnce() -> I) {
        if self.heap.len() > 2 * live_len + 1024 {
            self.heap = live().map(Reverse).collect();
        }
    }

    /// Pops every entry whose deadline has passed and arms the timer (registering `cx`)
    /// for the next one. The owner checks each `(deadline, id)` against its own table:
    /// entries of calls that already completed are stale.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Vec<(Instant, u64)> {
        let mut expired = Vec::new();
        loop {
            let Some(&Reverse((next, _))) = self.heap.peek() else {
                self.armed = None;
                return expired;
            };
            if self.armed != Some(next) {
                self.timer.as_mut().reset(next);
                self.armed = Some(next);
            }
            #[cfg(test)]
            TIMER_POLLS.with(|n| n.set(n.get() + 1));
            if self.timer.as_mut().poll(cx).is_pending() {
                return expired;
            }
            // The timer fired: everything due by now goes, and `next` in any case, so a
            // fired timer is never re-armed for the same instant (that loop would spin,
            // holding the thread, until the clock read past `next`).
            let now = Instant::now().max(next);
            while let Some(&Reverse(entry)) = self.heap.peek() {
                if entry.0 > now {
                    break;
                }
                self.heap.pop();
                expired.push(entry);
            }
        }
    }
}

/// A hasher for connection-local `u64` ids: one multiply (Fibonacci hashing) instead of
/// SipHash. Ids are sequential on the client; on the server they come from the client, but
/// the tables are bounded by the in-flight limit, so a hostile choice of ids can only make
/// one connection's own lookups slower.
#[derive(Clone, Copy, Default)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by call id.
pub(crate) type IdMap<V> = std::collections::HashMap<u64, V, std::hash::BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn expires_in_deadline_order_with_one_timer_on_the_virtual_clock() {
        let mut q = DeadlineQueue::new();
        let t0 = Instant::now();
        let real = std::time::Instant::now();
        let polls = timer_polls();
        q.push(t0 + Duration::from_millis(30), 3);
        q.push(t0 + Duration::from_millis(10), 1);
        q.push(t0 + Duration::from_millis(20), 2);
        let mut got = Vec::new();
        while got.len() < 3 {
            let batch = std::future::poll_fn(|cx| {
                let expired = q.poll_expired(cx);
                if expired.is_empty() { Poll::Pending } else { Poll::Ready(expired) }
            })
            .await;
            // Each deadline expires at its own virtual instant, not later.
            assert_eq!(batch.iter().map(|&(d, _)| d).collect::<Vec<_>>(), [Instant::now()]);
            got.extend(batch.into_iter().map(|(_, id)| id));
        }
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(Instant::now(), t0 + Duration::from_millis(30));
        // Three deadlines: each armed, polled pending, then polled fired; no spinning
        // while the real clock catches up with the virtual one.
        let polls = timer_polls() - polls;
        assert!(polls <= 8, "the timer was polled {polls} times for 3 deadlines");
        assert!(real.elapsed() < Duration::from_millis(30), "waited for real time: {:?}", real.elapsed());
    }

    /// A service whose `Never` calls never answer, and whose `Remaining(ms)` sleeps `ms`
    /// and answers the handler's `Context::remaining` in milliseconds.
    struct Stuck;

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    enum StuckReq {
        Never,
        Remaining(u64),
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum StuckResp {
        Remaining(u64),
    }

    const STUCK: crate::ServiceId = crate::ServiceId::new("Stuck", 1);

    impl crate::Service for Stuck {
        type Request = StuckReq;
        type Response = StuckResp;
        const ID: crate::ServiceId = STUCK;
        fn method_name(r: &StuckReq) -> &'static str {
            match r {
                StuckReq::Never => "never",
                StuckReq::Remaining(_) => "remaining",
            }
        }
        fn call(
            &self,
            r: StuckReq,
            _: crate::service::CallStreams<StuckReq>,
        ) -> crate::service::BoxFuture<crate::service::Reply<StuckResp>> {
            Box::pin(async move {
                match r {
                    StuckReq::Never => std::future::pending().await,
                    StuckReq::Remaining(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        let left = crate::context::current().expect("a context").remaining();
                        crate::service::Reply::Value(StuckResp::Remaining(u64::try_from(left.as_millis()).unwrap()))
                    }
                }
            })
        }
    }

    async fn stuck_pair() -> crate::Channel<StuckReq, StuckResp> {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = crate::Server::new(Stuck);
        tokio::spawn(async move { server.serve_connection(b).await });
        crate::Channel::from_io(a, STUCK, crate::ClientConfig::default()).await.expect("handshake")
    }

    #[tokio::test(start_paused = true)]
    async fn under_paused_time_a_call_expires_at_its_virtual_deadline_without_spinning() {
        let ch = stuck_pair().await;
        let timeout = Duration::from_secs(10);
        let polls = timer_polls();
        let (virtual_start, real_start) = (Instant::now(), std::time::Instant::now());
        let err = ch.call(&crate::CallOptions::with_timeout(timeout), StuckReq::Never).await.unwrap_err();
        let (virtual_elapsed, real_elapsed) = (virtual_start.elapsed(), real_start.elapsed());
        let polls = timer_polls() - polls;
        assert_eq!(err, crate::RpcError::DeadlineExceeded { timeout });
        assert!(
            virtual_elapsed >= timeout && virtual_elapsed < timeout + Duration::from_millis(100),
            "expired after {virtual_elapsed:?} of virtual time"
        );
        // Both halves' queues (the client's and the server's) together: a handful of polls,
        // not one per turn of a loop waiting for the real clock.
        assert!(polls < 100, "the deadline timers were polled {polls} times");
        assert!(real_elapsed < timeout / 2, "the call took {real_elapsed:?} of real time");
    }

    #[tokio::test(start_paused = true)]
    async fn under_paused_time_a_handler_sees_its_remaining_time_on_the_virtual_clock() {
        let ch = stuck_pair().await;
        let opts = crate::CallOptions::with_timeout(Duration::from_secs(10));
        let left = ch.call(&opts, StuckReq::Remaining(4_000)).await.unwrap();
        assert_eq!(left, StuckResp::Remaining(6_000));
    }

    #[test]
    fn a_deadline_after_any_duration_is_clamped_instead_of_overflowing() {
        let now = Instant::now();
        assert_eq!(deadline_after(now, Duration::MAX), now + MAX_WAIT);
        assert_eq!(deadline_after(now, MAX_WAIT + Duration::from_nanos(1)), now + MAX_WAIT);
        assert_eq!(deadline_after(now, Duration::from_secs(5)), now + Duration::from_secs(5));
        // The wire's "no deadline" marker stays out of reach of any clamped wait.
        assert!(MAX_WAIT.as_micros() < u128::from(u64::MAX));
    }

    #[test]
    fn compaction_keeps_memory_proportional_to_live_calls() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let _g = rt.enter();
        let mut q = DeadlineQueue::new();
        let t = Instant::now() + Duration::from_secs(60);
        for id in 0..5000 {
            q.push(t, id);
        }
        q.compact(10, || (0..10).map(|id| (t, id)));
        assert_eq!(q.heap.len(), 10);
        // Below the threshold nothing is rebuilt.
        q.compact(0, std::iter::empty);
        assert_eq!(q.heap.len(), 10);
    }
}

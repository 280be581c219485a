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

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Instant;

use tokio::time::Sleep;

pub(crate) struct DeadlineQueue {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    timer: Pin<Box<Sleep>>,
    /// The instant the timer is set to, if it is set.
    armed: Option<Instant>,
}

impl DeadlineQueue {
    pub(crate) fn new() -> Self {
        DeadlineQueue {
            heap: BinaryHeap::new(),
            timer: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
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
                self.timer.as_mut().reset(next.into());
                self.armed = Some(next);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return expired;
            }
            // The timer fired: everything due by now goes, `next` included even if this
            // clock has not reached it (tokio's clock, paused and advanced in tests, runs
            // ahead of it: the loop spun, holding the thread, until it caught up).
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
    async fn expires_in_deadline_order_with_one_timer() {
        let mut q = DeadlineQueue::new();
        let t0 = Instant::now();
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
            got.extend(batch.into_iter().map(|(_, id)| id));
        }
        assert_eq!(got, [1, 2, 3]);
        // By the timer's clock (tokio's, paused and advanced here), not by `Instant`'s.
        assert!(tokio::time::Instant::now() >= (t0 + Duration::from_millis(30)).into());
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_ahead_of_the_clock_expires_at_once_without_spinning() {
        // tokio's paused clock a minute ahead of `Instant`'s: the timer of a deadline 10 s
        // away fires at once. The queue used to spin until `Instant`'s clock got there.
        tokio::time::advance(Duration::from_secs(60)).await;
        let mut q = DeadlineQueue::new();
        let t = Instant::now() + Duration::from_secs(10);
        q.push(t, 1);
        let started = Instant::now();
        let expired = std::future::poll_fn(|cx| {
            let expired = q.poll_expired(cx);
            if expired.is_empty() { Poll::Pending } else { Poll::Ready(expired) }
        })
        .await;
        assert_eq!(expired, [(t, 1)]);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
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

//! Timers for a peer that stops making progress: a frame left half-sent, or our writes
//! left unread. Armed lazily: a busy connection pays a counter increment per frame and a
//! timer reset only when the timer fires or the condition begins, never per frame.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Fires once a condition (bytes pending) has held for `limit` with no progress.
pub(crate) struct StallTimer {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// The progress counter when the timer was (re)armed.
    mark: u64,
}

impl StallTimer {
    pub(crate) fn new(limit: Duration) -> Self {
        StallTimer { limit, sleep: None, armed: false, mark: 0 }
    }

    /// One limit from now (never an overflow, whatever the limit).
    fn deadline(&self) -> Instant {
        crate::deadlines::deadline_after(Instant::now(), self.limit)
    }

    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// `pending`: the condition holds now; `progress`: a counter that moves whenever
    /// progress is made. True once the condition has held for `limit` without progress
    /// (measured from when it began, or from the last time the timer found progress: a
    /// stall is caught after between one and two limits, exactly one for a peer that
    /// makes none at all).
    pub(crate) fn stalled(&mut self, cx: &mut Context<'_>, pending: bool, progress: u64) -> bool {
        if !pending {
            self.armed = false;
            return false;
        }
        if !self.armed {
            self.armed = true;
            self.mark = progress;
            let deadline = self.deadline();
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let limit = self.limit;
        let Some(sleep) = self.sleep.as_mut() else { return false };
        if sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        if progress == self.mark {
            return true;
        }
        // Progress since it was armed: wait one more limit from now.
        self.mark = progress;
        sleep.as_mut().reset(crate::deadlines::deadline_after(Instant::now(), limit));
        // Registers the waker for the new deadline.
        let _ = sleep.as_mut().poll(cx);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Poll;

    async fn check(timer: &mut StallTimer, pending: bool, progress: u64) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(timer.stalled(cx, pending, progress))).await
    }

    #[tokio::test(start_paused = true)]
    async fn fires_after_the_limit_only_without_progress() {
        let mut t = StallTimer::new(Duration::from_secs(30));
        assert!(!check(&mut t, true, 0).await);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!check(&mut t, true, 0).await);
        // Progress before the limit: not stalled at 30 s, but at 60 s with none since.
        assert!(!check(&mut t, true, 1).await);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!check(&mut t, true, 1).await, "progress was made within the limit");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!check(&mut t, true, 1).await);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(check(&mut t, true, 1).await, "no progress for a whole limit");
    }

    #[tokio::test(start_paused = true)]
    async fn the_condition_ending_disarms_it() {
        let mut t = StallTimer::new(Duration::from_secs(30));
        assert!(!check(&mut t, true, 0).await);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(!check(&mut t, false, 0).await);
        tokio::time::advance(Duration::from_secs(20)).await;
        // Pending again: the limit counts from now.
        assert!(!check(&mut t, true, 0).await);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!check(&mut t, true, 0).await);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(check(&mut t, true, 0).await);
    }
}

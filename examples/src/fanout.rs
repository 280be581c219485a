//! [`Fanout`]: one producer, many subscribers, each fed through its own server-to-client
//! [`RpcStream`]. Shared by the `push-lines` and `pubsub` examples.
//!
//! The policy is the stream's own: **backpressure, nothing dropped**. [`Fanout::send`]
//! gives an item to every subscriber at once and waits until each has room for it, so a
//! subscriber that reads slowly slows the producer down once its buffer (the channel plus
//! the stream's flow-control window) is full; memory per subscriber stays bounded. A
//! subscriber that goes away (its process exits, it drops the stream) is removed as soon as
//! the server notices, which is when its channel's sender would fail.
//!
//! [`Fanout::close`] ends every stream *normally*: each subscriber still gets the items
//! already given to it, then the end of its stream, and `close` waits until every stream
//! has delivered its end, so a server can then shut down without cutting the last items
//! off (a server shutdown ends open streams at once, with `ShuttingDown`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use rpc_core::RpcStream;
use tokio::sync::{mpsc, watch};

/// Called once when a subscriber leaves: its id and how many subscribers remain.
pub type OnLeave = Box<dyn FnOnce(u64, usize) + Send>;

/// Subscribers of one feed. Cheap to clone; clones share the subscribers.
#[derive(Clone)]
pub struct Fanout<T> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    /// Items each subscriber's channel holds (beyond what its stream window holds).
    buffer: usize,
    state: Mutex<State<T>>,
    /// Becomes true when the feed closes: the departure watchers let go of their senders.
    closing: watch::Sender<bool>,
    /// Streams that have not yet delivered their end (or been dropped).
    open_streams: watch::Sender<usize>,
}

struct State<T> {
    next_id: u64,
    subscribers: BTreeMap<u64, mpsc::Sender<T>>,
    closed: bool,
}

impl<T> std::fmt::Debug for Fanout<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout").field("subscribers", &self.len()).finish_non_exhaustive()
    }
}

impl<T> Fanout<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every update is a single map operation: a poisoned lock holds consistent state.
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Subscribers now.
    pub fn len(&self) -> usize {
        self.lock().subscribers.len()
    }

    /// True if nobody is subscribed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Clone + Send + 'static> Fanout<T> {
    /// A feed with no subscribers; each one's channel holds `buffer` items (at least 1).
    pub fn new(buffer: usize) -> Self {
        let state = State { next_id: 1, subscribers: BTreeMap::new(), closed: false };
        let shared = Shared {
            buffer: buffer.max(1),
            state: Mutex::new(state),
            closing: watch::channel(false).0,
            open_streams: watch::channel(0).0,
        };
        Fanout { shared: Arc::new(shared) }
    }

    /// Adds a subscriber and returns its stream, to hand back from a handler. Its first
    /// item is `first(id, subscribers)` (the subscriber's id and the count including it):
    /// a stream call returns to the client before the server has seen it, so a client that
    /// needs to know it is subscribed waits for that item. `on_leave` runs when the
    /// subscriber goes away before the feed closes.
    ///
    /// `None` once the feed is [closed](Self::close).
    ///
    /// Must be called inside a tokio runtime (it starts a task that notices departures).
    pub fn subscribe(&self, first: impl FnOnce(u64, usize) -> T, on_leave: OnLeave) -> Option<RpcStream<T>> {
        let (tx, mut rx) = mpsc::channel(self.shared.buffer);
        let id = {
            let mut state = self.lock();
            if state.closed {
                return None;
            }
            let id = state.next_id;
            state.next_id += 1;
            state.subscribers.insert(id, tx.clone());
            // A new channel has room for at least one item.
            let sent = tx.try_send(first(id, state.subscribers.len())).is_ok();
            debug_assert!(sent);
            id
        };

        // Counts the stream as open until it has yielded its end, or is dropped unfinished.
        self.shared.open_streams.send_modify(|n| *n += 1);
        let mut open = Some(OpenStream(self.shared.open_streams.clone()));
        let stream = RpcStream::new(futures::stream::poll_fn(move |cx| {
            let polled = rx.poll_recv(cx);
            if let Poll::Ready(None) = polled {
                drop(open.take());
            }
            polled
        }));

        // Departures: the receiver is dropped when the subscriber's stream ends on the
        // server (the client dropped it, or its connection broke). The watcher holds a
        // sender, so it lets go when the feed closes, or the stream could never end.
        let fanout = self.clone();
        let mut closing = self.shared.closing.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                () = tx.closed() => {
                    let remaining = {
                        let mut state = fanout.lock();
                        state.subscribers.remove(&id).map(|_| state.subscribers.len())
                    };
                    if let Some(remaining) = remaining {
                        on_leave(id, remaining);
                    }
                }
                _ = closing.wait_for(|&closing| closing) => {}
            }
        });
        Some(stream)
    }

    /// Gives `item` to every subscriber, all at once, waiting while any of them has no
    /// room; returns how many got it. Subscribers that are gone do not count.
    pub async fn send(&self, item: T) -> usize {
        let targets: Vec<mpsc::Sender<T>> = self.lock().subscribers.values().cloned().collect();
        let sends = targets.iter().map(|tx| tx.send(item.clone()));
        futures::future::join_all(sends).await.into_iter().filter(Result::is_ok).count()
    }

    /// Closes the feed: no new subscribers, and every stream ends normally once the items
    /// already given to it are delivered. Waits up to `grace` for that; returns how many
    /// streams were still delivering when it gave up (0: all done).
    pub async fn close(&self, grace: Duration) -> usize {
        let subscribers = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.subscribers)
        };
        self.shared.closing.send_replace(true);
        drop(subscribers);
        let mut open = self.shared.open_streams.subscribe();
        let delivered = tokio::time::timeout(grace, open.wait_for(|&n| n == 0)).await.is_ok();
        if delivered { 0 } else { *open.borrow() }
    }
}

/// Decrements the open-stream count when dropped.
struct OpenStream(watch::Sender<usize>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn quiet() -> OnLeave {
        Box::new(|_, _| {})
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_item_then_a_normal_end() {
        let feed = Fanout::new(4);
        let mut a = feed.subscribe(|id, n| (id, n as u64), quiet()).unwrap();
        let mut b = feed.subscribe(|id, n| (id, n as u64), quiet()).unwrap();
        assert_eq!(a.next().await.unwrap().unwrap(), (1, 1));
        assert_eq!(b.next().await.unwrap().unwrap(), (2, 2));
        assert_eq!(feed.send((0, 7)).await, 2);
        let closing = tokio::spawn({
            let feed = feed.clone();
            async move { feed.close(Duration::from_secs(10)).await }
        });
        for s in [&mut a, &mut b] {
            assert_eq!(s.next().await.unwrap().unwrap(), (0, 7));
            assert!(s.next().await.is_none());
        }
        assert_eq!(closing.await.unwrap(), 0);
        assert!(feed.subscribe(|_, _| (0, 0), quiet()).is_none());
    }

    #[tokio::test]
    async fn a_subscriber_that_leaves_is_removed_and_reported() {
        let feed = Fanout::new(4);
        let (left_tx, mut left) = mpsc::unbounded_channel();
        let a = feed.subscribe(|_, _| 0u8, Box::new(move |id, n| left_tx.send((id, n)).unwrap())).unwrap();
        let _b = feed.subscribe(|_, _| 0u8, quiet()).unwrap();
        drop(a);
        assert_eq!(left.recv().await, Some((1, 1)));
        assert_eq!(feed.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn close_gives_up_on_a_subscriber_that_does_not_read() {
        let feed = Fanout::new(1);
        let _stuck = feed.subscribe(|_, _| 0u8, quiet()).unwrap();
        assert_eq!(feed.close(Duration::from_secs(1)).await, 1);
    }
}

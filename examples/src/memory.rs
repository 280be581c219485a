//! [`MemoryQueues`]: the work-queue service, kept in memory.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rpc_core::RpcStream;
use tokio::sync::{Notify, broadcast};

use crate::{QueueError, QueueEvent, QueueInfo, QueueState, WorkItem, WorkQueues};

/// Longest queue name, in characters.
const NAME_MAX: usize = 64;

/// Events the server holds for watchers that have not read them yet, all queues together.
/// A watcher further behind than this skips ahead and gets [`QueueEvent::Lagged`].
const EVENT_BUFFER: usize = 1024;

/// Log lines kept (the oldest go first).
const LOG_KEPT: usize = 100;

/// Where log lines go besides the kept ones.
type LogSink = Box<dyn Fn(&str) + Send + Sync>;

/// An in-memory [`WorkQueues`]: queues live as long as the value does.
///
/// One mutex guards all queues; every method holds it only for a few map operations and
/// never across an `.await`, so a `std` mutex is the right tool (and cheaper than an async
/// one). Events for [`watch`](WorkQueues::watch) are published while it is held, so every
/// watcher sees them in the order the changes happened.
pub struct MemoryQueues {
    state: Mutex<State>,
    /// Wakes waiting `take_work` calls whenever a queue gains work or changes state.
    changed: Notify,
    /// Every queue's events, tagged with the queue's name. A broadcast channel: a slow
    /// watcher loses events (and is told) instead of holding the service up.
    events: broadcast::Sender<(String, QueueEvent)>,
    /// The last [`LOG_KEPT`] log lines.
    log: Mutex<VecDeque<String>>,
    log_sink: Option<LogSink>,
}

impl Default for MemoryQueues {
    fn default() -> Self {
        MemoryQueues {
            state: Mutex::default(),
            changed: Notify::new(),
            events: broadcast::channel(EVENT_BUFFER).0,
            log: Mutex::default(),
            log_sink: None,
        }
    }
}

impl std::fmt::Debug for MemoryQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryQueues").field("state", &self.state).finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct State {
    /// A `BTreeMap`, so `list` comes out sorted by name.
    queues: BTreeMap<String, Queue>,
    /// Ids are unique across queues, so a worker can log them unambiguously.
    next_id: u64,
}

#[derive(Debug)]
struct Queue {
    state: QueueState,
    items: VecDeque<(u64, WorkItem)>,
    taken: u64,
}

impl Queue {
    fn info(&self, name: &str) -> QueueInfo {
        QueueInfo { name: name.to_owned(), state: self.state, pending: self.items.len() as u64, taken: self.taken }
    }
}

impl MemoryQueues {
    /// An empty set of queues.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also hands every [`log`](WorkQueues::log) line to `sink` (the server prints them).
    #[must_use]
    pub fn with_log_sink(mut self, sink: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.log_sink = Some(Box::new(sink));
        self
    }

    /// The last log lines received, oldest first (at most 100).
    pub fn recent_log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }

    /// Tells watchers of `queue`; `event` is only built if anyone watches. Call with the
    /// state lock held, so events keep the order of the changes.
    fn emit(&self, queue: &str, event: impl FnOnce() -> QueueEvent) {
        if self.events.receiver_count() > 0 {
            // Fails only if every watcher left meanwhile: nobody to tell.
            let _ = self.events.send((queue.to_owned(), event()));
        }
    }

    /// Number of queues and of items pending in all of them.
    pub fn totals(&self) -> (usize, u64) {
        let state = self.lock();
        (state.queues.len(), state.queues.values().map(|q| q.items.len() as u64).sum())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking handler cannot leave `State` half-updated (every mutation is a
        // single map or deque operation), so a poisoned lock is safe to keep using; the
        // server goes on serving the other calls.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the named queue.
    fn with_queue<T>(&self, name: &str, f: impl FnOnce(&mut Queue) -> T) -> Result<T, QueueError> {
        let mut state = self.lock();
        let queue = state.queues.get_mut(name).ok_or_else(|| QueueError::NotFound { name: name.to_owned() })?;
        Ok(f(queue))
    }

    fn set_state(&self, name: &str, new: QueueState) -> Result<QueueInfo, QueueError> {
        let info = self.with_queue(name, |q| {
            if q.state != new {
                q.state = new;
                self.emit(name, || if new == QueueState::Running { QueueEvent::Started } else { QueueEvent::Stopped });
            }
            q.info(name)
        })?;
        // Waiting takers re-check: they may now take work, or must report `Stopped`.
        self.changed.notify_waiters();
        Ok(info)
    }
}

/// Checks the documented name rules, so names are safe to print and to use as file names.
fn validate_name(name: &str) -> Result<(), QueueError> {
    let reason = if name.is_empty() {
        "the name is empty".to_owned()
    } else if name.chars().count() > NAME_MAX {
        format!("longer than {NAME_MAX} characters")
    } else if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c))) {
        format!("{c:?} is not allowed (use A-Z, a-z, 0-9, '-', '_', '.')")
    } else {
        return Ok(());
    };
    Err(QueueError::InvalidName { name: name.to_owned(), reason })
}

impl WorkQueues for MemoryQueues {
    async fn create(&self, name: String) -> Result<QueueInfo, QueueError> {
        validate_name(&name)?;
        let mut state = self.lock();
        if state.queues.contains_key(&name) {
            return Err(QueueError::AlreadyExists { name });
        }
        let queue = Queue { state: QueueState::Stopped, items: VecDeque::new(), taken: 0 };
        let info = queue.info(&name);
        self.emit(&name, || QueueEvent::Created);
        state.queues.insert(name, queue);
        Ok(info)
    }

    async fn delete(&self, name: String) -> Result<(), QueueError> {
        {
            let mut state = self.lock();
            let queue = state.queues.remove(&name).ok_or_else(|| QueueError::NotFound { name: name.clone() })?;
            self.emit(&name, || QueueEvent::Deleted { discarded: queue.items.len() as u64 });
        }
        // Waiting takers on it report `NotFound` now instead of at their timeout.
        self.changed.notify_waiters();
        Ok(())
    }

    async fn start(&self, name: String) -> Result<QueueInfo, QueueError> {
        self.set_state(&name, QueueState::Running)
    }

    async fn stop(&self, name: String) -> Result<QueueInfo, QueueError> {
        self.set_state(&name, QueueState::Stopped)
    }

    async fn list(&self) -> Vec<QueueInfo> {
        self.lock().queues.iter().map(|(name, q)| q.info(name)).collect()
    }

    async fn add_work(&self, queue: String, item: WorkItem) -> Result<u64, QueueError> {
        let id = {
            let mut state = self.lock();
            let id = state.next_id + 1;
            let q = state.queues.get_mut(&queue).ok_or_else(|| QueueError::NotFound { name: queue.clone() })?;
            self.emit(&queue, || QueueEvent::Added { id, item: item.clone() });
            q.items.push_back((id, item));
            state.next_id = id;
            id
        };
        // All waiters wake, not one: they may wait on other queues. Fine at this scale;
        // a per-queue `Notify` would avoid the extra wake-ups.
        self.changed.notify_waiters();
        Ok(id)
    }

    async fn take_work(&self, queue: String, wait_ms: u64) -> Result<Option<(u64, WorkItem)>, QueueError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        loop {
            // Register for wake-ups *before* looking, so work added between the look and
            // the wait still wakes us.
            let mut changed = std::pin::pin!(self.changed.notified());
            changed.as_mut().enable();

            let taken = self.with_queue(&queue, |q| match q.state {
                QueueState::Stopped => Err(QueueError::Stopped { name: queue.clone() }),
                QueueState::Running => {
                    let item = q.items.pop_front();
                    if let Some((id, _)) = &item {
                        q.taken += 1;
                        self.emit(&queue, || QueueEvent::Taken { id: *id });
                    }
                    Ok(item)
                }
            })??;
            if taken.is_some() {
                return Ok(taken);
            }
            // The lock is released here: only the wait below is an await point.
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Ok(None);
            }
        }
    }

    async fn watch(&self, queue: String) -> RpcStream<QueueEvent> {
        // Subscribe and look under the lock: no change can fall between the snapshot and
        // the first event.
        let (events, now) = {
            let state = self.lock();
            (self.events.subscribe(), state.queues.get(&queue).map(|q| q.info(&queue)))
        };
        let later = futures::stream::unfold((events, queue), |(mut events, queue)| async move {
            loop {
                match events.recv().await {
                    Ok((name, event)) if name == queue => return Some((event, (events, queue))),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        return Some((QueueEvent::Lagged { missed }, (events, queue)));
                    }
                    // The service is gone: so is the server.
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        // The engine polls this stream only while the watcher has room, on the connection's
        // task; `recv` never blocks, so no task of its own is needed.
        RpcStream::new(futures::StreamExt::chain(futures::stream::iter([QueueEvent::Watching(now)]), later))
    }

    async fn log(&self, line: String) {
        if let Some(sink) = &self.log_sink {
            sink(&line);
        }
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if log.len() == LOG_KEPT {
            log.pop_front();
        }
        log.push_back(line);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn item(payload: &str) -> WorkItem {
        WorkItem::new("test", payload)
    }

    async fn running(qs: &MemoryQueues, name: &str) {
        qs.create(name.into()).await.unwrap();
        qs.start(name.into()).await.unwrap();
    }

    #[tokio::test]
    async fn queues_are_created_stopped_and_listed_by_name() {
        let qs = MemoryQueues::new();
        let info = qs.create("b".into()).await.unwrap();
        assert_eq!(info, QueueInfo { name: "b".into(), state: QueueState::Stopped, pending: 0, taken: 0 });
        qs.create("a".into()).await.unwrap();
        let names: Vec<_> = qs.list().await.into_iter().map(|q| q.name).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[tokio::test]
    async fn duplicate_and_missing_names_are_typed_errors() {
        let qs = MemoryQueues::new();
        qs.create("jobs".into()).await.unwrap();
        assert_eq!(qs.create("jobs".into()).await, Err(QueueError::AlreadyExists { name: "jobs".into() }));
        let missing = || QueueError::NotFound { name: "nope".into() };
        assert_eq!(qs.delete("nope".into()).await, Err(missing()));
        assert_eq!(qs.start("nope".into()).await, Err(missing()));
        assert_eq!(qs.stop("nope".into()).await, Err(missing()));
        assert_eq!(qs.add_work("nope".into(), item("x")).await, Err(missing()));
        assert_eq!(qs.take_work("nope".into(), 0).await, Err(missing()));
    }

    #[tokio::test]
    async fn invalid_names_say_why() {
        let qs = MemoryQueues::new();
        for (name, why) in [("", "empty"), ("a b", "' '"), (&"x".repeat(65), "64")] {
            match qs.create(name.to_owned()).await {
                Err(QueueError::InvalidName { reason, .. }) => assert!(reason.contains(why), "{name:?}: {reason}"),
                other => panic!("{name:?}: {other:?}"),
            }
        }
        assert!(qs.create("x".repeat(64)).await.is_ok());
    }

    #[tokio::test]
    async fn stopped_queues_accumulate_work_but_refuse_takers() {
        let qs = MemoryQueues::new();
        qs.create("jobs".into()).await.unwrap();
        assert_eq!(qs.add_work("jobs".into(), item("1")).await, Ok(1));
        assert_eq!(qs.add_work("jobs".into(), item("2")).await, Ok(2));
        assert_eq!(qs.take_work("jobs".into(), 0).await, Err(QueueError::Stopped { name: "jobs".into() }));
        let info = qs.start("jobs".into()).await.unwrap();
        assert_eq!((info.state, info.pending), (QueueState::Running, 2));
    }

    #[tokio::test]
    async fn work_is_taken_oldest_first_and_counted() {
        let qs = MemoryQueues::new();
        running(&qs, "jobs").await;
        for p in ["a", "b"] {
            qs.add_work("jobs".into(), item(p)).await.unwrap();
        }
        assert_eq!(qs.take_work("jobs".into(), 0).await, Ok(Some((1, item("a")))));
        assert_eq!(qs.take_work("jobs".into(), 0).await, Ok(Some((2, item("b")))));
        assert_eq!(qs.take_work("jobs".into(), 0).await, Ok(None));
        let info = qs.stop("jobs".into()).await.unwrap();
        assert_eq!((info.state, info.pending, info.taken), (QueueState::Stopped, 0, 2));
        assert_eq!(qs.totals(), (1, 0));
    }

    #[tokio::test]
    async fn ids_are_unique_across_queues() {
        let qs = MemoryQueues::new();
        running(&qs, "a").await;
        running(&qs, "b").await;
        assert_eq!(qs.add_work("a".into(), item("")).await, Ok(1));
        assert_eq!(qs.add_work("b".into(), item("")).await, Ok(2));
        assert_eq!(qs.totals(), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn take_waits_for_work_to_arrive() {
        let qs = Arc::new(MemoryQueues::new());
        running(&qs, "jobs").await;
        let taker = tokio::spawn({
            let qs = qs.clone();
            async move { qs.take_work("jobs".into(), 10_000).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        qs.add_work("jobs".into(), item("late")).await.unwrap();
        assert_eq!(taker.await.unwrap(), Ok(Some((1, item("late")))));
    }

    #[tokio::test(start_paused = true)]
    async fn take_gives_up_after_its_wait() {
        let qs = MemoryQueues::new();
        running(&qs, "jobs").await;
        let start = tokio::time::Instant::now();
        assert_eq!(qs.take_work("jobs".into(), 250).await, Ok(None));
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test]
    async fn a_watch_starts_with_a_snapshot_then_reports_each_change_of_its_queue() {
        use futures::StreamExt;
        let qs = MemoryQueues::new();
        let mut watch = qs.watch("jobs".into()).await;
        running(&qs, "other").await;
        qs.create("jobs".into()).await.unwrap();
        qs.add_work("jobs".into(), item("a")).await.unwrap();
        qs.add_work("other".into(), item("b")).await.unwrap();
        qs.start("jobs".into()).await.unwrap();
        qs.start("jobs".into()).await.unwrap();
        qs.take_work("jobs".into(), 0).await.unwrap();
        qs.stop("jobs".into()).await.unwrap();
        qs.add_work("jobs".into(), item("c")).await.unwrap();
        qs.delete("jobs".into()).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..8 {
            got.push(watch.next().await.unwrap().unwrap());
        }
        assert_eq!(
            got,
            [
                QueueEvent::Watching(None),
                QueueEvent::Created,
                QueueEvent::Added { id: 1, item: item("a") },
                QueueEvent::Started,
                QueueEvent::Taken { id: 1 },
                QueueEvent::Stopped,
                QueueEvent::Added { id: 3, item: item("c") },
                QueueEvent::Deleted { discarded: 1 },
            ]
        );
        let mut again = qs.watch("other".into()).await;
        let now = QueueInfo { name: "other".into(), state: QueueState::Running, pending: 1, taken: 0 };
        assert_eq!(again.next().await.unwrap().unwrap(), QueueEvent::Watching(Some(now)));
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_told_how_much_it_missed() {
        use futures::StreamExt;
        let qs = MemoryQueues::new();
        qs.create("jobs".into()).await.unwrap();
        let mut watch = qs.watch("jobs".into()).await;
        for _ in 0..EVENT_BUFFER + 10 {
            qs.add_work("jobs".into(), item("x")).await.unwrap();
        }
        assert!(matches!(watch.next().await.unwrap().unwrap(), QueueEvent::Watching(Some(_))));
        assert_eq!(watch.next().await.unwrap().unwrap(), QueueEvent::Lagged { missed: 10 });
        assert_eq!(watch.next().await.unwrap().unwrap(), QueueEvent::Added { id: 11, item: item("x") });
    }

    #[tokio::test]
    async fn log_lines_are_kept_and_handed_to_the_sink() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let qs = MemoryQueues::new().with_log_sink({
            let seen = seen.clone();
            move |line| seen.lock().unwrap().push(line.to_owned())
        });
        for n in 0..LOG_KEPT + 1 {
            qs.log(format!("line {n}")).await;
        }
        assert_eq!(seen.lock().unwrap().len(), LOG_KEPT + 1);
        let kept = qs.recent_log();
        assert_eq!((kept.len(), kept[0].as_str()), (LOG_KEPT, "line 1"));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_takers_hear_about_stop_and_delete() {
        let qs = Arc::new(MemoryQueues::new());
        running(&qs, "a").await;
        running(&qs, "b").await;
        let take = |name: &'static str| {
            let qs = qs.clone();
            tokio::spawn(async move { qs.take_work(name.into(), 60_000).await })
        };
        let (on_a, on_b) = (take("a"), take("b"));
        tokio::time::sleep(Duration::from_millis(10)).await;
        qs.stop("a".into()).await.unwrap();
        qs.delete("b".into()).await.unwrap();
        assert_eq!(on_a.await.unwrap(), Err(QueueError::Stopped { name: "a".into() }));
        assert_eq!(on_b.await.unwrap(), Err(QueueError::NotFound { name: "b".into() }));
    }
}

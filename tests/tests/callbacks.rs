//! Callbacks across processes: during a call, the server calls a trait the client
//! implements, on the same connection; each callback reaches the object of its own call,
//! has a deadline and is cancelled like any call, and is refused once its call is over.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pipe_rpc_tests::{ProbeError, ServerProcess, Ticks, TicksServer, connect, unique_name, watchdog};
use rpc_core::{RpcError, ServerErrorKind};
use tokio::sync::Notify;

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

/// The client's side of the callback: records what the server asked.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<u64>>>,
    /// `tick(999)` handlers dropped before they answered: cancelled by the server.
    cancelled: Arc<AtomicUsize>,
    changed: Arc<Notify>,
}

struct CountDrop(Recorder);
impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

impl Ticks for Recorder {
    async fn tick(&self, n: u64) -> u64 {
        self.seen.lock().unwrap().push(n);
        if n == 999 {
            let _guard = CountDrop(self.clone());
            std::future::pending::<()>().await;
        }
        n * 10
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_calls_the_client_back_during_the_call() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let recorder = Recorder::default();
        let answers = c.run_ticks(5, TicksServer::new(recorder.clone())).await.unwrap();
        assert_eq!(answers, vec![0, 10, 20, 30, 40]);
        assert_eq!(*recorder.seen.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_each_reach_their_own_callback_object() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let recorders: Vec<Recorder> = (0..8).map(|_| Recorder::default()).collect();
        let calls = recorders.iter().enumerate().map(|(i, r)| {
            let (c, r) = (c.clone(), r.clone());
            async move { c.run_ticks(i as u64 + 1, TicksServer::new(r)).await.unwrap() }
        });
        let answers = futures::future::join_all(calls).await;
        for (i, (answer, recorder)) in answers.iter().zip(&recorders).enumerate() {
            assert_eq!(answer.len(), i + 1);
            assert_eq!(*recorder.seen.lock().unwrap(), (0..i as u64 + 1).collect::<Vec<_>>());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_used_after_its_call_ended_is_refused() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let recorder = Recorder::default();
        c.keep_ticks(TicksServer::new(recorder.clone())).await.unwrap();
        match c.tick_kept(3).await {
            Err(ProbeError::Rpc(RpcError::Server(e))) => {
                assert_eq!(e.kind, ServerErrorKind::BadRequest, "{e:?}");
                assert!(e.detail.contains("has ended"), "{e:?}");
            }
            other => panic!("expected the client to refuse the stale callback, got {other:?}"),
        }
        assert!(recorder.seen.lock().unwrap().is_empty(), "the stale callback reached the object");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_call_has_a_deadline_and_its_handler_on_the_client_is_cancelled() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let recorder = Recorder::default();
        let got = c.tick_with_timeout(999, 200, TicksServer::new(recorder.clone())).await;
        assert_eq!(got, Err(ProbeError::Rpc(RpcError::DeadlineExceeded { timeout: Duration::from_millis(200) })));
        // The server's cancel reached the client: the handler was dropped unfinished.
        loop {
            let changed = recorder.changed.notified();
            if recorder.cancelled.load(Ordering::SeqCst) == 1 {
                break;
            }
            changed.await;
        }
        // The connection is fine, callbacks included.
        assert_eq!(c.run_ticks(2, TicksServer::new(Recorder::default())).await.unwrap(), vec![0, 10]);
    })
    .await;
}

//! Cancellation across processes: dropping a call's future, or closing the client,
//! stops the handler in the server process.

use std::time::Duration;

use pipe_rpc_tests::{ServerProcess, TagStats, connect, unique_name, wait_stats, watchdog};
use rpc_core::RpcError;

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_call_future_stops_the_handler_on_the_server() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let slow = c.with_timeout(Duration::from_secs(60));
        // Race the long call against "the server has started it" on the same connection;
        // the latter wins, and `select!` drops the long call's future.
        tokio::select! {
            r = slow.sleep_ms(1, 60_000) => panic!("the 60 s call returned: {r:?}"),
            s = wait_stats(&c, 1, TagStats::min_started(1)) => assert_eq!(s.started, 1),
        }
        let stats = wait_stats(&c, 1, TagStats::min_dropped(1)).await;
        assert_eq!((stats.started, stats.finished, stats.dropped_unfinished, stats.running), (1, 0, 1, 0), "{stats:?}");
        // Only that call was cancelled: the connection carries on.
        assert_eq!(c.echo_string("still here".into()).await.unwrap(), "still here");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_around_the_call_cancels_it() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        // The call's own deadline is 60 s; the caller gives up after 100 ms instead.
        let long = c.with_timeout(Duration::from_secs(60));
        let outer = tokio::time::timeout(Duration::from_millis(100), long.sleep_ms(2, 60_000)).await;
        assert!(outer.is_err(), "the 60 s call completed within 100 ms: {outer:?}");
        let stats = wait_stats(&c, 2, TagStats::min_dropped(1)).await;
        assert_eq!((stats.finished, stats.dropped_unfinished, stats.running), (0, 1, 0), "{stats:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_dropped_calls_are_cancelled() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let long = c.with_timeout(Duration::from_secs(60));
        // Three calls that finish on their own (tag 4) and three that will be dropped (tag 3).
        let keep: Vec<_> = (0..3)
            .map(|_| {
                tokio::spawn({
                    let c = c.clone();
                    async move { c.with_timeout(Duration::from_secs(60)).sleep_ms(4, 1_000).await }
                })
            })
            .collect();
        let drop_these: Vec<_> = (0..3)
            .map(|_| {
                tokio::spawn({
                    let long = long.clone();
                    async move { long.sleep_ms(3, 60_000).await }
                })
            })
            .collect();
        wait_stats(&c, 3, TagStats::min_started(3)).await;
        wait_stats(&c, 4, TagStats::min_started(3)).await;
        for task in &drop_these {
            task.abort();
        }
        let dropped = wait_stats(&c, 3, TagStats::min_dropped(3)).await;
        assert_eq!((dropped.started, dropped.finished, dropped.dropped_unfinished), (3, 0, 3), "{dropped:?}");
        for task in keep {
            assert_eq!(task.await.unwrap().unwrap(), 4);
        }
        let kept = c.stats(4).await.unwrap();
        assert_eq!((kept.started, kept.finished, kept.dropped_unfinished), (3, 3, 0), "{kept:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_client_cancels_its_calls_on_the_server() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let observer = connect(&name).await;
        let c = connect(&name).await;
        let call = tokio::spawn({
            let c = c.with_timeout(Duration::from_secs(60));
            async move { c.sleep_ms(5, 60_000).await }
        });
        wait_stats(&observer, 5, TagStats::min_started(1)).await;
        c.channel().close();
        assert_eq!(call.await.unwrap(), Err(RpcError::Cancelled));
        // The server noticed the client leaving and dropped its handler.
        let stats = wait_stats(&observer, 5, TagStats::min_dropped(1)).await;
        assert_eq!((stats.finished, stats.dropped_unfinished), (0, 1), "{stats:?}");
        // Later calls on the closed client fail at once.
        assert_eq!(c.unit().await, Err(RpcError::Cancelled));
    })
    .await;
}

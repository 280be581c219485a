//! Deadlines across processes: a call past its deadline fails promptly and the server
//! stops its handler; the handler sees the caller's deadline, and so does a server one
//! hop further.

use std::time::{Duration, Instant};

use pipe_rpc_tests::{ServerProcess, TagStats, connect, unique_name, wait_stats, watchdog};
use rpc_core::RpcError;

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_fails_promptly_and_the_handler_is_stopped() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let timeout = Duration::from_millis(100);
        let t0 = Instant::now();
        let err = c.with_timeout(timeout).sleep_ms(1, 60_000).await.unwrap_err();
        let waited = t0.elapsed();
        assert_eq!(err, RpcError::DeadlineExceeded { timeout });
        assert!(waited >= timeout, "failed before its deadline: {waited:?}");
        assert!(waited < Duration::from_secs(10), "took far longer than its deadline: {waited:?}");
        // The server dropped the handler (event: its dropped_unfinished count).
        let stats = wait_stats(&c, 1, TagStats::min_dropped(1)).await;
        assert_eq!((stats.started, stats.finished, stats.dropped_unfinished, stats.running), (1, 0, 1, 0), "{stats:?}");
        // The connection is unaffected.
        assert_eq!(c.echo_string("after".into()).await.unwrap(), "after");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handler_sees_the_callers_deadline() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let short = c.with_timeout(Duration::from_secs(5)).remaining_deadline_ms().await.unwrap();
        let short = short.expect("the handler has a context");
        assert!(short > 0 && short <= 5_000, "{short} ms left of 5 s");
        // Far above the 10 s client default: the figure is the caller's, not a default.
        let long = c.with_timeout(Duration::from_secs(60)).remaining_deadline_ms().await.unwrap();
        let long = long.expect("the handler has a context");
        assert!(long > 30_000 && long <= 60_000, "{long} ms left of 60 s");
        // Without a per-call timeout the client default (10 s) travels.
        let default = c.remaining_deadline_ms().await.unwrap().expect("the handler has a context");
        assert!(default > 5_000 && default <= 10_000, "{default} ms left of the 10 s default");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_made_inside_a_handler_inherits_the_remaining_deadline() {
    watchdog(async {
        let (first, second) = (unique_name!(), unique_name!());
        let _a = ServerProcess::spawn(EXE, &first, &[]).await;
        let _b = ServerProcess::spawn(EXE, &second, &[]).await;
        let c = connect(&first).await;
        // Server A calls server B with a 60 s client timeout of its own; B must still see
        // no more than what is left of our 3 s.
        let seen = c.with_timeout(Duration::from_secs(3)).relay_remaining(second.as_str().to_owned()).await;
        let seen = seen.unwrap().expect("the second hop's handler has a context");
        assert!(seen > 0 && seen <= 3_000, "second hop saw {seen} ms left of 3 s");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_capping_deadlines_stops_the_handler_and_reports_deadline_exceeded() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &["--max-deadline-ms", "200"]).await;
        let c = connect(&name).await;
        let timeout = Duration::from_secs(60);
        let t0 = Instant::now();
        let err = c.with_timeout(timeout).sleep_ms(2, 60_000).await.unwrap_err();
        let waited = t0.elapsed();
        // Reported with the caller's own figure, long before it.
        assert_eq!(err, RpcError::DeadlineExceeded { timeout });
        assert!(waited >= Duration::from_millis(200), "{waited:?}");
        assert!(waited < Duration::from_secs(10), "{waited:?}");
        let stats = c.stats(2).await.unwrap();
        assert_eq!((stats.started, stats.finished, stats.dropped_unfinished), (1, 0, 1), "{stats:?}");
    })
    .await;
}

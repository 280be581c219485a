//! Server limits across processes: the per-connection in-flight limit applies
//! backpressure (calls wait, none fail), and a client refused at the connection limit keeps
//! trying within its connect timeout: it gets in once a slot frees up, or gets `Busy` naming
//! the limit when the timeout passes.

use std::time::{Duration, Instant};

use futures::future::join_all;
use pipe_rpc_tests::{ProbeClient, ServerProcess, TagStats, client_config, connect, unique_name, wait_stats, watchdog};
use rpc_core::{RpcError, TransportError};

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_limit_a_connection_runs_its_calls_concurrently() {
    // The control for the next test: the same calls do overlap when nothing limits them.
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let observer = connect(&name).await;
        let calls: Vec<_> = (0..10)
            .map(|_| {
                let c = c.with_timeout(Duration::from_secs(20));
                tokio::spawn(async move { c.sleep_ms(1, 60_000).await })
            })
            .collect();
        let stats = wait_stats(&observer, 1, TagStats { max_concurrent: 10, ..TagStats::default() }).await;
        assert_eq!(stats.running, 10);
        for call in calls {
            call.abort();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_limit_applies_backpressure_not_errors() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &["--max-in-flight", "2"]).await;
        let (a, b) = (connect(&name).await, connect(&name).await);
        let calls = (0..10u64).map(|i| {
            let (c, tag) = if i % 2 == 0 { (a.clone(), 1) } else { (b.clone(), 2) };
            async move { c.with_timeout(Duration::from_secs(20)).sleep_ms(tag, 40).await }
        });
        let results = join_all(calls).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        // Observed from a third connection, so it takes no slot of the two above.
        let observer = connect(&name).await;
        for tag in [1, 2] {
            let stats = observer.stats(tag).await.unwrap();
            assert_eq!((stats.started, stats.finished), (5, 5), "{stats:?}");
            assert!(stats.max_concurrent <= 2, "tag {tag}: {stats:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_refused_at_the_connection_limit_gets_busy_naming_the_limit_at_its_timeout() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &["--max-connections", "2"]).await;
        let a = connect(&name).await;
        let b = connect(&name).await;
        assert_eq!(a.unit().await, Ok(()));
        assert_eq!(b.unit().await, Ok(()));
        let timeout = Duration::from_millis(400);
        let t0 = Instant::now();
        let err = ProbeClient::connect_with(name.clone(), client_config().connect_timeout(timeout)).await.unwrap_err();
        let waited = t0.elapsed();
        match &err {
            RpcError::Transport(TransportError::Busy { detail }) => {
                assert!(detail.contains("limit of 2 connections"), "{detail}");
                assert!(detail.contains("gave up after"), "{detail}");
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        // Busy is retried within the connect timeout, not reported at the first refusal.
        assert!(waited >= timeout, "gave up after {waited:?}, before the {timeout:?} timeout");
        assert!(err.is_safe_to_retry());
        // The clients already connected are unaffected.
        assert_eq!(a.echo_string("a".into()).await.unwrap(), "a");
        assert_eq!(b.echo_string("b".into()).await.unwrap(), "b");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_the_connection_limit_is_retried_and_gets_in_once_a_slot_frees() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &["--max-connections", "1"]).await;
        let a = connect(&name).await;
        assert_eq!(a.unit().await, Ok(()));
        // The server is at its limit: one attempt (a zero timeout) is refused at once.
        let once = ProbeClient::connect_with(name.clone(), client_config().connect_timeout(Duration::ZERO)).await;
        assert!(matches!(once, Err(RpcError::Transport(TransportError::Busy { .. }))), "{once:?}");
        // A client with time to spare keeps trying: it is still waiting (not failed) well
        // after its first refusal...
        let t0 = Instant::now();
        let mut b = tokio::spawn(ProbeClient::connect_with(name.clone(), client_config()));
        let early = tokio::time::timeout(Duration::from_millis(500), &mut b).await;
        assert!(early.is_err(), "the client at the limit did not keep trying: {early:?}");
        // ... and gets in once the connected client leaves (the server frees the slot when it
        // sees the pipe close).
        drop(a);
        let b = b.await.unwrap().expect("the retrying client gets the freed slot");
        assert!(t0.elapsed() >= Duration::from_millis(500));
        assert_eq!(b.echo_string("b".into()).await.unwrap(), "b");
    })
    .await;
}

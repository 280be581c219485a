//! Server limits across processes: the per-connection in-flight limit applies
//! backpressure (calls wait, none fail), and the connection limit refuses extra clients
//! with `Busy` until a slot frees up.

use std::time::Duration;

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
async fn the_connection_limit_refuses_extra_clients_with_busy() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &["--max-connections", "2"]).await;
        let a = connect(&name).await;
        let b = connect(&name).await;
        assert_eq!(a.unit().await, Ok(()));
        assert_eq!(b.unit().await, Ok(()));
        let err = ProbeClient::connect_with(name.clone(), client_config()).await.unwrap_err();
        match &err {
            RpcError::Transport(TransportError::Busy { detail }) => assert!(detail.contains('2'), "{detail}"),
            other => panic!("expected Busy, got {other:?}"),
        }
        assert!(err.is_safe_to_retry());
        // The clients already connected are unaffected.
        assert_eq!(a.echo_string("a".into()).await.unwrap(), "a");
        // Once one leaves, a new client gets in. The server frees the slot when it sees
        // the pipe close, which the client cannot observe: retry, under the watchdog.
        drop(b);
        let c = loop {
            match ProbeClient::connect_with(name.clone(), client_config()).await {
                Ok(c) => break c,
                Err(RpcError::Transport(TransportError::Busy { .. })) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e:?}"),
            }
        };
        assert_eq!(c.echo_string("c".into()).await.unwrap(), "c");
    })
    .await;
}

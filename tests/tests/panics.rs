//! A handler that panics fails only its own call, with `HandlerPanicked`; the server
//! process keeps serving that connection and others.

use std::time::Duration;

use futures::future::join_all;
use pipe_rpc_tests::{ServerProcess, TagStats, connect, unique_name, wait_stats, watchdog};
use rpc_core::{RpcError, ServerErrorKind};

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

fn assert_panicked(r: Result<u32, RpcError>, msg: &str) {
    match r {
        Err(RpcError::Server(e)) => {
            assert_eq!(e.kind, ServerErrorKind::HandlerPanicked, "{e:?}");
            assert!(e.detail.contains(msg), "{e:?}");
        }
        other => panic!("expected HandlerPanicked, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panic_fails_only_that_call() {
    watchdog(async {
        let name = unique_name!();
        let server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        // A call in flight on the same connection while the handler panics.
        let in_flight = tokio::spawn({
            let c = c.with_timeout(Duration::from_secs(20));
            async move { c.sleep_ms(1, 500).await }
        });
        wait_stats(&c, 1, TagStats::min_started(1)).await;
        assert_panicked(c.boom("kaboom 42".into()).await, "kaboom 42");
        assert_eq!(in_flight.await.unwrap(), Ok(1));
        // The same connection, and a new one, still work; the process did not restart.
        assert_eq!(c.echo_string("after".into()).await.unwrap(), "after");
        let fresh = connect(&name).await;
        assert_eq!(fresh.pid().await.unwrap(), server.pid());
        // Many panics at once, mixed with good calls.
        let calls = (0..20u32).map(|i| {
            let c = c.clone();
            async move {
                if i % 2 == 0 {
                    assert_panicked(c.boom(format!("panic #{i}")).await, &format!("panic #{i}"));
                } else {
                    assert_eq!(c.divide(i64::from(i), 1).await, Ok(i64::from(i)));
                }
            }
        });
        join_all(calls).await;
        assert_eq!(c.pid().await.unwrap(), server.pid());
        let exit = server.shutdown_gracefully().await;
        assert!(exit.status.success(), "{exit:?}");
        assert!(exit.stderr.contains("kaboom 42"), "the panic was not reported on stderr: {}", exit.stderr);
    })
    .await;
}

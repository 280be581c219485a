//! Graceful shutdown of a server process: calls in flight are answered, new calls are
//! refused (not left hanging), the process exits 0 after `drained`, and the name is free
//! for a new server.

use std::time::Duration;

use pipe_rpc_tests::{
    ProbeClient, ServerProcess, TagStats, client_config, connect, is_disconnected, unique_name, wait_stats, watchdog,
};
use rpc_core::{RpcError, ServerErrorKind, TransportError};

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_calls_in_flight() {
    watchdog(async {
        let name = unique_name!();
        let mut server = ServerProcess::spawn(EXE, &name, &[]).await;
        let old_pid = server.pid();
        let c = connect(&name).await;
        let other = connect(&name).await; // a second connection with calls in flight
        let in_flight: Vec<_> = (0..6)
            .map(|i| {
                let c = if i % 2 == 0 { c.clone() } else { other.clone() };
                tokio::spawn(async move { c.with_timeout(Duration::from_secs(20)).sleep_ms(1, 1_500).await })
            })
            .collect();
        assert_eq!(wait_stats(&c, 1, TagStats::min_started(6)).await.started, 6);

        server.begin_shutdown().await;
        // A new call on a connection that is draining is refused, not started or left hanging.
        let late = c.unit().await;
        let still_in_flight = in_flight.iter().all(|t| !t.is_finished());
        match &late {
            Err(RpcError::Server(e)) => {
                assert_eq!(e.kind, ServerErrorKind::ShuttingDown, "{e:?}");
                assert!(late.as_ref().unwrap_err().is_safe_to_retry());
            }
            // Only once the drained connection has closed may the refusal be a disconnect.
            Err(e) if !still_in_flight && is_disconnected(e) => {}
            other => panic!("a call after the shutdown began got {other:?} (calls in flight: {still_in_flight})"),
        }
        // A new connection is not accepted: a transport error, not a hang. Which one
        // depends on the platform: NotRunning once the name is gone; Disconnected or (on
        // Unix) an `Io` "connection reset" when the listener closed with this connection in
        // its backlog; on Windows Busy, as the pipe name lives on in the instances of the
        // draining connections while no instance accepts.
        let config = client_config().connect_timeout(Duration::from_millis(300));
        match ProbeClient::connect_with(name.clone(), config).await {
            Err(RpcError::Transport(
                TransportError::NotRunning { .. }
                | TransportError::Disconnected { .. }
                | TransportError::Io { .. }
                | TransportError::Busy { .. },
            )) => {}
            other => panic!("a new connection during shutdown got {other:?}"),
        }
        // Every call that had started is answered.
        for t in in_flight {
            assert_eq!(t.await.unwrap(), Ok(1));
        }
        let exit = server.wait_exit().await;
        assert!(exit.status.success(), "{exit:?}");
        assert!(exit.stdout.iter().any(|l| l == "drained"), "{exit:?}");
        // The clients' connections were closed by the server.
        assert!(is_disconnected(&c.unit().await.unwrap_err()));
        assert!(is_disconnected(&other.unit().await.unwrap_err()));

        // The name is free: a new server binds it and serves.
        let next = ServerProcess::spawn(EXE, &name, &[]).await;
        assert_ne!(next.pid(), old_pid);
        assert_eq!(connect(&name).await.pid().await.unwrap(), next.pid());
        let exit = next.shutdown_gracefully().await;
        assert!(exit.status.success(), "{exit:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_grace_period_are_dropped() {
    watchdog(async {
        let name = unique_name!();
        let mut server = ServerProcess::spawn(EXE, &name, &["--shutdown-grace-ms", "200"]).await;
        let c = connect(&name).await;
        let call = tokio::spawn({
            let c = c.with_timeout(Duration::from_secs(60));
            async move { c.sleep_ms(1, 60_000).await }
        });
        wait_stats(&c, 1, TagStats::min_started(1)).await;
        server.begin_shutdown().await;
        // The process exits after the grace period instead of waiting 60 s for the call.
        let exit = server.wait_exit().await;
        assert!(exit.status.success(), "{exit:?}");
        let err = call.await.unwrap().unwrap_err();
        assert!(is_disconnected(&err), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_shuts_down_at_once() {
    watchdog(async {
        let name = unique_name!();
        let server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        assert_eq!(c.pid().await.unwrap(), server.pid());
        let exit = server.shutdown_gracefully().await;
        assert!(exit.status.success(), "{exit:?}");
        assert_eq!(exit.stdout, ["ready", "shutting-down", "drained"], "{exit:?}");
        assert!(is_disconnected(&c.unit().await.unwrap_err()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_stdin_shuts_the_server_down_gracefully() {
    watchdog(async {
        let name = unique_name!();
        let mut server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let call = tokio::spawn({
            let c = c.with_timeout(Duration::from_secs(20));
            async move { c.sleep_ms(1, 500).await }
        });
        wait_stats(&c, 1, TagStats::min_started(1)).await;
        // What happens when the test process dies: the server's stdin ends.
        server.close_stdin();
        assert_eq!(call.await.unwrap(), Ok(1));
        let exit = server.wait_exit().await;
        assert!(exit.status.success(), "{exit:?}");
        assert_eq!(exit.stdout, ["ready", "shutting-down", "drained"], "{exit:?}");
    })
    .await;
}

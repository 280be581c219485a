//! The server process dies (hard kill) with calls in flight: every pending call fails
//! fast with `Disconnected`, long before its deadline, and later calls fail at once.

use std::time::{Duration, Instant};

use futures::future::join_all;
use pipe_rpc_tests::{ServerProcess, TagStats, connect, is_disconnected, unique_name, wait_stats, watchdog};

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_fails_pending_calls_fast() {
    watchdog(async {
        let name = unique_name!();
        let server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let long = c.with_timeout(Duration::from_secs(60));
        let calls: Vec<_> = (0..10)
            .map(|_| {
                let long = long.clone();
                tokio::spawn(async move {
                    let r = long.sleep_ms(1, 60_000).await;
                    (r, Instant::now())
                })
            })
            .collect();
        assert_eq!(wait_stats(&c, 1, TagStats::min_started(10)).await.started, 10);
        let killed_at = Instant::now();
        let exit = server.kill().await;
        assert!(!exit.status.success(), "a killed server exited successfully: {exit:?}");
        for (i, r) in join_all(calls).await.into_iter().enumerate() {
            let (result, at) = r.expect("call task");
            let err = result.expect_err("a call to a killed server succeeded");
            assert!(is_disconnected(&err), "call {i}: {err:?}");
            let after = at.duration_since(killed_at);
            assert!(after < Duration::from_secs(10), "call {i} failed only after {after:?} (deadline 60 s)");
        }
        // Later calls fail at once, with the same reason, and the client knows it is closed.
        let t0 = Instant::now();
        let later = c.with_timeout(Duration::from_secs(60)).unit().await.unwrap_err();
        assert!(is_disconnected(&later), "{later:?}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(c.channel().is_closed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_is_not_running_for_new_clients_and_can_be_replaced() {
    watchdog(async {
        let name = unique_name!();
        let server = ServerProcess::spawn(EXE, &name, &[]).await;
        let old_pid = server.pid();
        let c = connect(&name).await;
        assert_eq!(c.pid().await.unwrap(), old_pid);
        let crashed = server.kill().await;
        // Nothing listens any more (on Unix a stale socket file is left behind, unless
        // another test's bind swept it already).
        let config = pipe_rpc_tests::client_config().connect_timeout(Duration::from_millis(300));
        let err = pipe_rpc_tests::ProbeClient::connect_with(name.clone(), config).await.unwrap_err();
        assert!(matches!(err, rpc_core::RpcError::Transport(rpc_core::TransportError::NotRunning { .. })), "{err:?}");
        // A new server reclaims the name.
        let replacement = ServerProcess::spawn(EXE, &name, &[]).await;
        let c2 = connect(&name).await;
        assert_eq!(c2.pid().await.unwrap(), replacement.pid());
        assert_ne!(replacement.pid(), old_pid);
        // The old client stays disconnected; it does not silently reconnect.
        assert!(is_disconnected(&c.pid().await.unwrap_err()));
        drop(crashed);
    })
    .await;
}

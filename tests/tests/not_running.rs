//! Connecting when no server is up: a clear `NotRunning` error within the connect
//! timeout, and a client started before its server connects once the server is up.

use std::time::{Duration, Instant};

use pipe_rpc_tests::{ProbeClient, ServerProcess, client_config, unique_name, watchdog};
use rpc_core::{ClientConfig, RpcError, TransportError};

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_name_nobody_serves_fails_with_not_running() {
    watchdog(async {
        let name = unique_name!();
        let timeout = Duration::from_millis(300);
        let t0 = Instant::now();
        let err = ProbeClient::connect_with(name.clone(), ClientConfig::default().connect_timeout(timeout))
            .await
            .unwrap_err();
        let waited = t0.elapsed();
        let RpcError::Transport(TransportError::NotRunning { detail }) = &err else {
            panic!("expected NotRunning, got {err:?}");
        };
        // It kept trying for the whole timeout, and no (much) longer.
        assert!(waited >= timeout, "gave up after {waited:?}, before the {timeout:?} timeout");
        assert!(waited < timeout + Duration::from_secs(5), "took {waited:?} for a {timeout:?} timeout");
        // The message names the pipe.
        assert!(detail.contains(name.as_str()), "{detail}");
        assert!(err.to_string().contains(name.as_str()), "{err}");
        assert!(err.is_safe_to_retry());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_connect_timeout_makes_one_attempt() {
    watchdog(async {
        let name = unique_name!();
        let t0 = Instant::now();
        let err = ProbeClient::connect_with(name.clone(), ClientConfig::default().connect_timeout(Duration::ZERO))
            .await
            .unwrap_err();
        assert!(matches!(&err, RpcError::Transport(TransportError::NotRunning { .. })), "{err:?}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_started_before_its_server_connects_once_the_server_is_up() {
    watchdog(async {
        let name = unique_name!();
        let mut connecting = Box::pin(ProbeClient::connect_with(name.clone(), client_config()));
        // First attempt, before the server process exists: nobody serves the name yet.
        assert!(futures::poll!(connecting.as_mut()).is_pending(), "connected before any server existed");
        // Keep retrying in the background while the server process starts.
        let connecting = tokio::spawn(connecting);
        let server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connecting.await.unwrap().expect("the retrying connect reaches the server");
        assert_eq!(c.pid().await.unwrap(), server.pid());
    })
    .await;
}

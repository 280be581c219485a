//! Connecting when no server is up: `NotRunning` at once by default (a user who forgot to
//! start the server is told so without waiting out the connect timeout), and, with
//! `wait_for_server`, retries within the timeout so a client started before its server
//! connects once the server is up.

use std::time::{Duration, Instant};

use pipe_rpc_tests::{ProbeClient, ServerProcess, client_config, unique_name, watchdog};
use rpc_core::{ClientConfig, RpcError, TransportError};

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

/// Far above what one failed connection attempt takes, even under wine on a loaded machine,
/// and far below the connect timeouts the tests below set: "at once" without tight timing.
const AT_ONCE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_nobody_serves_fails_at_once_with_not_running() {
    watchdog(async {
        let name = unique_name!();
        let timeout = Duration::from_secs(20);
        let t0 = Instant::now();
        let err = ProbeClient::connect_with(name.clone(), ClientConfig::default().connect_timeout(timeout))
            .await
            .unwrap_err();
        let waited = t0.elapsed();
        let RpcError::Transport(TransportError::NotRunning { detail }) = &err else {
            panic!("expected NotRunning, got {err:?}");
        };
        assert!(waited < AT_ONCE, "took {waited:?} to report a missing server (connect timeout {timeout:?})");
        // The message names the pipe and says how to wait for a server instead.
        assert!(detail.contains(name.as_str()), "{detail}");
        assert!(detail.contains("wait_for_server"), "{detail}");
        assert!(err.is_not_running() && err.is_safe_to_retry());
    })
    .await;
}

/// A socket file left behind by a server that exited refuses connections: that is a server
/// not running, reported at once too (Linux: `ECONNREFUSED` means nothing else there).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_file_fails_at_once_with_not_running() {
    watchdog(async {
        let path = std::env::temp_dir().join(format!("rpct-stale-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        // std's listener leaves its socket file behind when dropped, as a crashed server does.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let name = rpc_core::PipeName::path(path.to_str().unwrap());
        let t0 = Instant::now();
        let err = ProbeClient::connect_with(name, ClientConfig::default().connect_timeout(Duration::from_secs(20)))
            .await
            .unwrap_err();
        let waited = t0.elapsed();
        let _ = std::fs::remove_file(&path);
        let RpcError::Transport(TransportError::NotRunning { detail }) = &err else {
            panic!("expected NotRunning, got {err:?}");
        };
        assert!(waited < AT_ONCE, "took {waited:?} to report a stale socket");
        assert!(detail.contains("stale socket file"), "{detail}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_server_that_never_comes_fails_with_not_running_at_the_timeout() {
    watchdog(async {
        let name = unique_name!();
        let timeout = Duration::from_millis(300);
        let config = ClientConfig::default().connect_timeout(timeout).wait_for_server(true);
        let t0 = Instant::now();
        let err = ProbeClient::connect_with(name.clone(), config).await.unwrap_err();
        let waited = t0.elapsed();
        let RpcError::Transport(TransportError::NotRunning { detail }) = &err else {
            panic!("expected NotRunning, got {err:?}");
        };
        // It kept trying for the whole timeout, and no (much) longer.
        assert!(waited >= timeout, "gave up after {waited:?}, before the {timeout:?} timeout");
        assert!(waited < timeout + Duration::from_secs(5), "took {waited:?} for a {timeout:?} timeout");
        assert!(detail.contains(name.as_str()) && detail.contains("gave up after"), "{detail}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_connect_timeout_makes_one_attempt() {
    watchdog(async {
        let name = unique_name!();
        let t0 = Instant::now();
        let config = ClientConfig::default().connect_timeout(Duration::ZERO).wait_for_server(true);
        let err = ProbeClient::connect_with(name.clone(), config).await.unwrap_err();
        assert!(matches!(&err, RpcError::Transport(TransportError::NotRunning { .. })), "{err:?}");
        assert!(t0.elapsed() < AT_ONCE, "{:?}", t0.elapsed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_for_its_server_connects_once_the_server_is_up() {
    watchdog(async {
        let name = unique_name!();
        let mut connecting = Box::pin(ProbeClient::connect_with(name.clone(), client_config().wait_for_server(true)));
        // First attempt, before the server process exists: nobody serves the name yet.
        assert!(futures::poll!(connecting.as_mut()).is_pending(), "connected before any server existed");
        // Keep retrying in the background while the server process starts.
        let connecting = tokio::spawn(connecting);
        let server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connecting.await.unwrap().expect("the waiting connect reaches the server");
        assert_eq!(c.pid().await.unwrap(), server.pid());
    })
    .await;
}

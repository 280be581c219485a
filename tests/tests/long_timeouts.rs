//! Any `Duration` is a valid timeout or deadline cap: `Duration::MAX` on the client (per call,
//! per handle, or as the default) and on the server (`max_deadline`) works like a very long
//! time instead of panicking with "overflow when adding duration to instant". The client
//! clamps its waits to about 100 years; the server still caps each call at `max_deadline`.

use std::time::Duration;

use futures::StreamExt;
use pipe_rpc_tests::{ProbeClient, ServerProcess, TagStats, client_config, connect, unique_name, wait_stats, watchdog};
use rpc_core::CallOptions;

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

/// 10 years in milliseconds: more than any cap but the client's own ceiling.
const TEN_YEARS_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_with_a_duration_max_timeout_completes_and_the_server_caps_its_deadline() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        assert_eq!(c.with_timeout(Duration::MAX).echo_string("max".into()).await.unwrap(), "max");
        // The same through the channel's own options.
        let opts = CallOptions::with_timeout(Duration::MAX);
        let c2 = c.with_options(opts);
        assert_eq!(c2.echo_string("opts".into()).await.unwrap(), "opts");
        // The handler's deadline is the server's cap (5 min by default), not "forever".
        let left = c.with_timeout(Duration::MAX).remaining_deadline_ms().await.unwrap().expect("a context");
        assert!(left > 200_000 && left <= 300_000, "{left} ms left under the server's 5 min cap");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_default_timeout_duration_max_completes_calls_and_streams() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = ProbeClient::connect_with(name.clone(), client_config().default_timeout(Duration::MAX)).await.unwrap();
        assert_eq!(c.echo_string("default".into()).await.unwrap(), "default");
        c.note(1, 0, 0).await.unwrap();
        let stats = wait_stats(&c, 1, TagStats { finished: 1, ..TagStats::default() }).await;
        assert_eq!(stats.started, 1);
        // A stream given a `Duration::MAX` deadline runs to its end.
        let items: Vec<u64> =
            c.with_timeout(Duration::MAX).count(0, 3, 0).await.unwrap().map(Result::unwrap).collect().await;
        assert_eq!(items, [0, 1, 2]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_max_deadline_duration_max_serves_calls_streams_and_one_way_calls() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &["--max-deadline-ms", "max"]).await;
        let c = connect(&name).await;
        assert_eq!(c.echo_string("capless".into()).await.unwrap(), "capless");
        // A one-way handler runs under the server's cap, here `Duration::MAX`.
        c.note(2, 0, 0).await.unwrap();
        let stats = wait_stats(&c, 2, TagStats { finished: 1, ..TagStats::default() }).await;
        assert_eq!(stats.started, 1);
        // With no cap on the server, a `Duration::MAX` call gets the client's ceiling.
        let left = c.with_timeout(Duration::MAX).remaining_deadline_ms().await.unwrap().expect("a context");
        assert!(left > TEN_YEARS_MS, "{left} ms left of a call without limits");
        let items: Vec<u64> =
            c.with_timeout(Duration::MAX).count(0, 3, 0).await.unwrap().map(Result::unwrap).collect().await;
        assert_eq!(items, [0, 1, 2]);
        // The connection is still good.
        assert_eq!(c.echo_string("after".into()).await.unwrap(), "after");
    })
    .await;
}

//! A reconnecting client (`ClientConfig::reconnect`) across a real server process that is
//! killed and started again on the same name: what was in flight fails as "connection lost,
//! outcome unknown" (or is sent again, for an `#[idempotent]` method), what is made while
//! the server is down waits for the next server within its deadline, streams end, and the
//! client can be closed while it waits.

use std::time::{Duration, Instant};

use futures::StreamExt;
use pipe_rpc_tests::{ProbeClient, ServerProcess, TagStats, client_config, unique_name, wait_stats, watchdog};
use rpc_core::{PipeName, Reconnect, RpcError, TransportError};

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

async fn reconnecting(name: &PipeName) -> ProbeClient {
    let config = client_config().reconnect(Reconnect::new().max_backoff(Duration::from_millis(100)));
    ProbeClient::connect_with(name.clone(), config).await.expect("connect")
}

fn is_lost(e: &RpcError) -> bool {
    matches!(e, RpcError::Transport(TransportError::ConnectionLost { .. }))
}

/// Kills the server while a plain call runs on it, and checks that call fails as lost: the
/// client has then seen the connection go (what follows is made while it is down).
async fn kill_under_a_call(server: ServerProcess, c: &ProbeClient, tag: u64) {
    let plain = c.with_timeout(Duration::from_secs(60));
    let call = tokio::spawn(async move { plain.sleep_ms(tag, 60_000).await });
    wait_stats(c, tag, TagStats::min_started(1)).await;
    server.kill().await;
    let lost = call.await.expect("call task").expect_err("a call on a killed server succeeded");
    assert!(is_lost(&lost), "expected ConnectionLost, got {lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_takes_over_calls_in_flight_fail_as_lost_and_idempotent_ones_are_sent_again() {
    watchdog(async {
        let name = unique_name!();
        let first = ServerProcess::spawn(EXE, &name, &[]).await;
        let first_pid = first.pid();
        let c = reconnecting(&name).await;
        assert_eq!(c.pid().await.unwrap(), first_pid);
        assert_eq!(c.channel().peer().server_pid, first_pid);

        // Two calls running on the first server: one plain, one idempotent.
        let long = c.with_timeout(Duration::from_secs(60));
        let plain = tokio::spawn({
            let long = long.clone();
            async move { long.sleep_ms(1, 60_000).await }
        });
        let again = tokio::spawn({
            let long = long.clone();
            async move { long.sleep_ms_idempotent(2, 300).await }
        });
        wait_stats(&c, 1, TagStats::min_started(1)).await;
        wait_stats(&c, 2, TagStats::min_started(1)).await;
        first.kill().await;

        let lost = plain.await.unwrap().expect_err("the plain call succeeded on a killed server");
        assert!(is_lost(&lost), "{lost:?}");
        assert!(!lost.is_safe_to_retry(), "an outcome-unknown call must not say it is safe to retry");

        let second = ServerProcess::spawn(EXE, &name, &[]).await;
        // The idempotent call ran again on the second server and its answer came from there.
        assert_eq!(again.await.unwrap().unwrap(), 2);
        let on_second = c.stats(2).await.unwrap();
        assert_eq!((on_second.started, on_second.finished), (1, 1), "{on_second:?}");
        // Later calls, and the handshake's view of the server, are the second server's.
        assert_eq!(c.pid().await.unwrap(), second.pid());
        assert_eq!(c.channel().peer().server_pid, second.pid());
        assert!(!c.channel().is_closed());
        assert!(second.shutdown_gracefully().await.status.success());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_made_while_the_server_is_down_wait_for_the_next_one_within_their_deadline() {
    watchdog(async {
        let name = unique_name!();
        let first = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = reconnecting(&name).await;
        kill_under_a_call(first, &c, 1).await;

        // Down: a call with a short deadline fails at its deadline, not before, not much later.
        let started = Instant::now();
        let short = c.with_timeout(Duration::from_millis(300)).unit().await.unwrap_err();
        assert!(matches!(short, RpcError::DeadlineExceeded { .. }), "{short:?}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "failed before its deadline: {took:?}");
        assert!(took < Duration::from_secs(5), "failed long after its deadline: {took:?}");

        // Down: calls with room in their deadline wait, and a one-way call is kept too.
        let waiting: Vec<_> = (0..5)
            .map(|i| {
                let c = c.with_timeout(Duration::from_secs(30));
                tokio::spawn(async move { c.echo_string(format!("queued {i}")).await })
            })
            .collect();
        c.note(7, 1, 0).await.expect("a one-way call is queued while the server is down");
        let second = ServerProcess::spawn(EXE, &name, &[]).await;
        for (i, call) in waiting.into_iter().enumerate() {
            assert_eq!(call.await.unwrap().unwrap(), format!("queued {i}"));
        }
        assert_eq!(c.with_timeout(Duration::from_secs(20)).notes(7).await.unwrap(), [1]);
        assert_eq!(c.pid().await.unwrap(), second.pid());
        assert!(second.shutdown_gracefully().await.status.success());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_in_flight_ends_with_connection_lost_and_can_be_opened_again() {
    watchdog(async {
        let name = unique_name!();
        let first = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = reconnecting(&name).await;
        let mut items = c.count(0, 1_000_000, 5).await.unwrap();
        assert_eq!(items.next().await.unwrap().unwrap(), 0);
        first.kill().await;
        let end = loop {
            match items.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("the stream ended normally on a killed server"),
            }
        };
        assert!(is_lost(&end), "{end:?}");
        assert!(items.next().await.is_none());
        let _second = ServerProcess::spawn(EXE, &name, &[]).await;
        let again: Vec<u64> = c.count(10, 3, 0).await.unwrap().map(|r| r.unwrap()).collect::<Vec<_>>().await;
        assert_eq!(again, [10, 11, 12]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_client_while_it_waits_to_reconnect_fails_what_waits_at_once() {
    watchdog(async {
        let name = unique_name!();
        let first = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = reconnecting(&name).await;
        kill_under_a_call(first, &c, 1).await;
        let patient = c.with_timeout(Duration::from_secs(60));
        let mut waiting = std::pin::pin!(patient.unit());
        // Polled once: the call is queued for a connection that is not there.
        assert!(futures::poll!(&mut waiting).is_pending());
        // Closing ends it now, not at its deadline.
        let t0 = Instant::now();
        c.channel().close();
        let err = waiting.await.unwrap_err();
        assert!(matches!(err, RpcError::Cancelled), "{err:?}");
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
        assert!(c.channel().is_closed());
        let later = c.unit().await.unwrap_err();
        assert!(matches!(later, RpcError::Cancelled), "{later:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconnect_a_lost_connection_stays_lost() {
    watchdog(async {
        let name = unique_name!();
        let first = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = ProbeClient::connect_with(name.clone(), client_config()).await.unwrap();
        assert_eq!(c.pid().await.unwrap(), first.pid());
        first.kill().await;
        let _second = ServerProcess::spawn(EXE, &name, &[]).await;
        let err = c.with_timeout(Duration::from_secs(20)).pid().await.unwrap_err();
        assert!(err.is_disconnected() && !is_lost(&err), "{err:?}");
        assert!(c.channel().is_closed());
    })
    .await;
}

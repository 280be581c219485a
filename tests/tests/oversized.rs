//! Messages over the size limit fail only their own call, in either direction; other
//! calls on the same connection, including ones in flight at the same time, carry on.

use pipe_rpc_tests::{ServerProcess, TagStats, connect, pattern_byte, unique_name, wait_stats, watchdog};
use rpc_core::{Direction, RpcError, TransportError};
use serde_bytes::ByteBuf;

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

/// The server's `--max-message`.
const LIMIT: u64 = 65_536;

fn too_large(e: &RpcError) -> (u64, u64, Direction) {
    match e {
        RpcError::Transport(TransportError::MessageTooLarge { size, limit, direction }) => (*size, *limit, *direction),
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_fails_only_that_call() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &["--max-message", &LIMIT.to_string()]).await;
        let c = connect(&name).await;
        // The limit in force is the smaller of the client's (4 MiB) and the server's.
        assert_eq!(c.channel().peer().max_message as u64, LIMIT);
        // A call in flight across the failure.
        let before = tokio::spawn({
            let c = c.clone();
            async move { c.sleep_ms(1, 300).await }
        });
        wait_stats(&c, 1, TagStats::min_started(1)).await;
        let big = ByteBuf::from(vec![0xab; 100_000]);
        let small = ByteBuf::from(vec![0xcd; 1_000]);
        // Oversized and normal calls issued together.
        let (big_result, small_result, sleep_result) =
            tokio::join!(c.echo_bytes(big), c.echo_bytes(small.clone()), c.sleep_ms(2, 50));
        let err = big_result.unwrap_err();
        let (size, limit, direction) = too_large(&err);
        assert_eq!(direction, Direction::Request);
        assert_eq!(limit, LIMIT);
        assert!(size > 100_000 && size < 100_100, "encoded size {size}");
        let msg = err.to_string();
        assert!(msg.contains(&size.to_string()) && msg.contains(&LIMIT.to_string()), "{msg}");
        assert!(msg.contains("request"), "{msg}");
        // The request never left the client, so retrying cannot run it twice.
        assert!(err.is_safe_to_retry());
        assert_eq!(small_result.unwrap(), small);
        assert_eq!(sleep_result.unwrap(), 2);
        assert_eq!(before.await.unwrap().unwrap(), 1);
        // Just under the limit still goes through.
        let fits = ByteBuf::from(vec![1; (LIMIT - 100) as usize]);
        assert_eq!(c.echo_bytes(fits.clone()).await.unwrap(), fits);
        assert_eq!(c.echo_string("after".into()).await.unwrap(), "after");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_response_fails_only_that_call() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &["--max-message", &LIMIT.to_string()]).await;
        let c = connect(&name).await;
        let before = tokio::spawn({
            let c = c.clone();
            async move { c.sleep_ms(1, 300).await }
        });
        wait_stats(&c, 1, TagStats::min_started(1)).await;
        let (big_result, small_result, sleep_result) =
            tokio::join!(c.make_bytes(200_000), c.make_bytes(1_000), c.sleep_ms(2, 50));
        let err = big_result.unwrap_err();
        let (size, limit, direction) = too_large(&err);
        assert_eq!(direction, Direction::Response);
        assert_eq!(limit, LIMIT);
        assert!(size > 200_000 && size < 200_100, "encoded size {size}");
        let msg = err.to_string();
        assert!(msg.contains(&size.to_string()) && msg.contains(&LIMIT.to_string()), "{msg}");
        assert!(msg.contains("response"), "{msg}");
        // The handler ran: not safe to retry blindly.
        assert!(!err.is_safe_to_retry());
        let small = small_result.unwrap();
        assert_eq!(small.len(), 1_000);
        assert!(small.iter().enumerate().all(|(i, b)| *b == pattern_byte(i)));
        assert_eq!(sleep_result.unwrap(), 2);
        assert_eq!(before.await.unwrap().unwrap(), 1);
        assert_eq!(c.make_bytes(10).await.unwrap().len(), 10);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smaller_client_limit_wins() {
    watchdog(async {
        let name = unique_name!();
        // Server at the default 4 MiB; this client accepts only 64 KiB.
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let config = pipe_rpc_tests::client_config().max_message(LIMIT as usize);
        let c = pipe_rpc_tests::ProbeClient::connect_with(name.clone(), config).await.unwrap();
        assert_eq!(c.channel().peer().max_message as u64, LIMIT);
        let (size, limit, direction) = too_large(&c.make_bytes(100_000).await.unwrap_err());
        assert_eq!((limit, direction), (LIMIT, Direction::Response));
        assert!(size > 100_000, "{size}");
        let (_, limit, direction) = too_large(&c.echo_bytes(ByteBuf::from(vec![0; 100_000])).await.unwrap_err());
        assert_eq!((limit, direction), (LIMIT, Direction::Request));
        assert_eq!(c.make_bytes(100).await.unwrap().len(), 100);
    })
    .await;
}

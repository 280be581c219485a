//! One-way calls across processes: they return once queued, run on the server in the
//! order sent, never get a reply frame, respect the server's credit, and fail with a
//! typed error when they cannot be sent.

use std::time::Duration;

use pipe_rpc_tests::raw::{raw_handshake, read_frame, write_frame};
use pipe_rpc_tests::{
    ProbeClient, ProbeRequest, ServerProcess, TagStats, client_config, connect, unique_name, wait_stats, watchdog,
};
use rpc_core::codec::Codec;
use rpc_core::wire::{Frame, Kind};
use rpc_core::{Direction, RpcError, TransportError};
use serde_bytes::ByteBuf;

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_calls_run_on_the_server_in_the_order_sent() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        for seq in 0..300 {
            c.note(1, seq, 0).await.unwrap();
        }
        let stats = wait_stats(&c, 1, TagStats { finished: 300, ..TagStats::default() }).await;
        assert_eq!(stats.started, 300);
        assert_eq!(c.notes(1).await.unwrap(), (0..300).collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_call_returns_before_its_handler_finishes() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        // The handler sleeps for far longer than the watchdog allows the test to run.
        c.note(2, 0, 600_000).await.unwrap();
        let stats = wait_stats(&c, 2, TagStats::min_started(1)).await;
        assert_eq!((stats.running, stats.finished), (1, 0), "{stats:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_calls_beyond_the_servers_credit_wait_in_the_client_and_all_run() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &["--max-oneway", "2"]).await;
        let c = connect(&name).await;
        assert_eq!(c.channel().peer().max_oneway, 2);
        for seq in 0..20 {
            c.note(3, seq, 20).await.unwrap();
        }
        let stats = wait_stats(&c, 3, TagStats { finished: 20, ..TagStats::default() }).await;
        assert!(stats.max_concurrent <= 2, "the server ran more one-way calls at once than it granted: {stats:?}");
        assert_eq!(c.notes(3).await.unwrap(), (0..20).collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_one_way_queue_makes_the_caller_wait_then_time_out() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &["--max-oneway", "1"]).await;
        let config = client_config().max_queued_oneway(2).default_timeout(Duration::from_millis(300));
        let c = ProbeClient::connect_with(name.clone(), config).await.unwrap();
        // One runs (the server's whole credit), two wait in the client's queue...
        for seq in 0..3 {
            c.note(4, seq, 60_000).await.unwrap();
        }
        wait_stats(&c, 4, TagStats::min_started(1)).await;
        // ...and the next finds the queue full: it waits for room, then times out.
        let err = c.note(4, 3, 0).await.unwrap_err();
        assert_eq!(err, RpcError::DeadlineExceeded { timeout: Duration::from_millis(300) });
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_one_way_call_fails_at_once_with_the_limit() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = ProbeClient::connect_with(name.clone(), client_config().max_message(64 * 1024)).await.unwrap();
        match c.sink(ByteBuf::from(vec![0; 100_000])).await.unwrap_err() {
            RpcError::Transport(TransportError::MessageTooLarge { size, limit, direction }) => {
                assert!(size > 100_000, "{size}");
                assert_eq!((limit, direction), (64 * 1024, Direction::Request));
            }
            other => panic!("{other:?}"),
        }
        // Nothing was sent; the connection carries on.
        c.sink(ByteBuf::from(vec![0; 1000])).await.unwrap();
        assert_eq!(c.echo_string("after".into()).await.unwrap(), "after");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_call_to_a_dead_server_fails_with_a_typed_error() {
    watchdog(async {
        let name = unique_name!();
        let server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        c.note(5, 0, 0).await.unwrap();
        server.kill().await;
        // The client learns at once that the server is gone (a call in flight fails)...
        let call = c.with_timeout(Duration::from_secs(20)).sleep_ms(5, 60_000).await.unwrap_err();
        assert!(call.is_disconnected(), "{call:?}");
        // ...and a one-way call after that fails at send.
        let err = c.note(5, 1, 0).await.unwrap_err();
        assert!(err.is_disconnected(), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_call_gets_no_reply_frame_only_credit() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let mut io = raw_handshake(&name).await;
        let oneway = Frame::<_, ()>::OneWay { id: 7, body: ProbeRequest::Note { tag: 6, seq: 0, ms: 0 } };
        write_frame(&mut io, &oneway.encode(Codec::Bincode, 1 << 20).unwrap()).await;
        let call = Frame::<_, ()>::Call { id: 8, timeout_us: 5_000_000, body: ProbeRequest::Notes { tag: 6 } };
        write_frame(&mut io, &call.encode(Codec::Bincode, 1 << 20).unwrap()).await;
        let mut kinds = Vec::new();
        loop {
            let f: Frame<(), pipe_rpc_tests::ProbeResponse> =
                Frame::decode(Codec::Bincode, &read_frame(&mut io).await).unwrap();
            kinds.push((f.kind(), f.id()));
            if let Frame::Reply { id: 8, body } = f {
                assert!(
                    matches!(body, pipe_rpc_tests::ProbeResponse::Notes(ref v) if v == &[0]),
                    "the notes of tag 6 are not [0]"
                );
                break;
            }
        }
        // Whatever came before the reply to call 8 was credit for the one-way call, never
        // a reply to it.
        assert!(kinds.iter().all(|&(k, id)| k == Kind::Credit && id == 0 || (k, id) == (Kind::Reply, 8)), "{kinds:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_waits_until_queued_one_way_calls_are_written() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &["--max-oneway", "1"]).await;
        let c = connect(&name).await;
        let observer = connect(&name).await;
        // With a credit of one, most of these wait in the client's queue when `flush` starts.
        for seq in 0..20 {
            c.note(7, seq, 5).await.unwrap();
        }
        c.channel().flush().await.unwrap();
        // Written means they are in the pipe: closing at once (which drops whatever is still
        // queued, as a process exit would) loses none of them.
        c.channel().close();
        let stats = wait_stats(&observer, 7, TagStats::min_started(20)).await;
        assert_eq!(stats.started, 20);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_way_calls_flushed_before_a_graceful_shutdown_all_run() {
    watchdog(async {
        // An in-process server over a real pipe, so the notes it ran can be read after it
        // stopped. Many rounds: the loss this guards against depended on where a read pass
        // stopped when the shutdown came.
        for round in 0..20u64 {
            let name = unique_name!();
            let probe = pipe_rpc_tests::ProbeImpl::default();
            let view = probe.shared();
            let server = rpc_core::Server::new(pipe_rpc_tests::ProbeServer::new(probe)).bind(name.clone()).unwrap();
            let shutdown = server.shutdown_handle();
            let running = tokio::spawn(server.run());
            let c = connect(&name).await;
            for seq in 0..500 {
                c.note(round, seq, 0).await.unwrap();
            }
            c.channel().flush().await.unwrap();
            shutdown.shutdown();
            running.await.unwrap().unwrap();
            let ran = view.notes_of(round);
            assert_eq!(ran.len(), 500, "round {round}: {} of 500 flushed notes ran", ran.len());
            assert!(ran.iter().copied().eq(0..500), "round {round}: out of order");
        }
    })
    .await;
}

//! Streams across processes, in both directions: order, the four ways a stream ends
//! (normally, a typed error item, the deadline, the server going away), flow control
//! (a slow consumer pauses the producer), and teardown (a consumer that drops its stream
//! stops the producer; server shutdown ends open streams with a reason).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pipe_rpc_tests::{
    ProbeClient, ProbeError, ServerProcess, TagStats, client_config, connect, pattern_byte, unique_name, wait_stats,
    watchdog,
};
use rpc_core::{Direction, RpcError, RpcStream, ServerErrorKind, TransportError};
use serde_bytes::ByteBuf;

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

/// Every item of `stream`, then how it ended (`None`: normally).
async fn drain<T>(mut stream: RpcStream<T>) -> (Vec<T>, Option<RpcError>) {
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(v) => items.push(v),
            Err(e) => {
                assert!(stream.next().await.is_none(), "a stream goes on after its error");
                return (items, Some(e));
            }
        }
    }
    (items, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stream_delivers_every_item_in_order_then_ends() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let (items, end) = drain(c.count(5, 2000, 0).await.unwrap()).await;
        assert_eq!(end, None);
        assert_eq!(items, (5..2005).collect::<Vec<_>>());
        // The connection carries on.
        assert_eq!(c.echo_string("after".into()).await.unwrap(), "after");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stream_reaches_the_handler_in_order_and_its_reply_comes_back() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        assert_eq!(c.sum(RpcStream::iter(1..=10_000u64)).await.unwrap(), 50_005_000);
        // 8 MiB in 64 KiB items: more than the stream window many times over.
        let mut offset = 0usize;
        let chunks = (0..128).map(move |_| {
            let v: Vec<u8> = (offset..offset + 65536).map(pattern_byte).collect();
            offset += 65536;
            ByteBuf::from(v)
        });
        assert_eq!(c.upload_check(RpcStream::iter(chunks)).await.unwrap(), (128 * 65536, true));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_answers_items_as_they_come() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let (tx, input) = RpcStream::channel(4);
        let mut output = c.double(input).await.unwrap();
        // Lock-step: each answer arrives before the next item is sent.
        for i in 0..50u64 {
            tx.send(i).await.unwrap();
            assert_eq!(output.next().await.unwrap().unwrap(), i * 2);
        }
        drop(tx);
        assert!(output.next().await.is_none(), "the stream did not end after the input did");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_error_mid_stream_is_a_typed_item() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let (items, end) = drain(c.fail_after(3).await.unwrap()).await;
        assert_eq!(end, None);
        assert_eq!(items, vec![Ok(0), Ok(1), Ok(2), Err(ProbeError::Overflow)]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_its_deadline_ends_with_deadline_exceeded() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let stream = c.with_timeout(Duration::from_millis(300)).count(0, 1000, 50).await.unwrap();
        let (items, end) = drain(stream).await;
        assert_eq!(end, Some(RpcError::DeadlineExceeded { timeout: Duration::from_millis(300) }));
        assert!(items.len() < 1000, "{} items", items.len());
        assert_eq!(items, (0..items.len() as u64).collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_many_reads_a_stream_four_times_its_window_in_order_in_batches_then_ends() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        // Four windows in 16 KiB items: the producer needs credit back, which only what
        // `recv_many` takes gives.
        let n = 4 * rpc_core::DEFAULT_STREAM_WINDOW as usize / (16 * 1024);
        let mut stream = c.blobs(n as u64, 16 * 1024).await.unwrap();
        let (mut batch, mut items, mut calls) = (Vec::new(), 0usize, 0usize);
        let mut offset = 0usize;
        loop {
            let n = stream.recv_many(&mut batch, 8).await.unwrap();
            if n == 0 {
                break;
            }
            calls += 1;
            assert!((1..=8).contains(&n) && n == batch.len(), "{n} items, {} in the batch", batch.len());
            for item in batch.drain(..) {
                assert!(item.iter().enumerate().all(|(i, b)| *b == pattern_byte(offset + i)), "item {items}");
                offset += item.len();
                items += 1;
            }
        }
        assert_eq!((items, offset), (n, n * 16 * 1024));
        assert!(calls >= 8, "{calls} batches of at most 8");
        assert_eq!(stream.recv_many(&mut batch, 8).await, Ok(0), "it stays ended");
        // The connection carries on.
        assert_eq!(c.echo_string("after".into()).await.unwrap(), "after");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recv_many_returns_the_items_before_a_deadline_then_deadline_exceeded() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let mut stream = c.with_timeout(Duration::from_millis(300)).count(0, 1000, 20).await.unwrap();
        let mut items = Vec::new();
        let end = loop {
            match stream.recv_many(&mut items, 100).await {
                Ok(0) => panic!("ended normally after {} items, before its deadline", items.len()),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(end, RpcError::DeadlineExceeded { timeout: Duration::from_millis(300) });
        assert!(!items.is_empty() && items.len() < 1000, "{} items", items.len());
        assert_eq!(items, (0..items.len() as u64).collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_server_dies_ends_with_disconnected_at_once() {
    watchdog(async {
        let name = unique_name!();
        let server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let mut stream = c.count(0, u64::MAX, 10).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap(), 0);
        server.kill().await;
        let t0 = std::time::Instant::now();
        let end = loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("the stream ended normally although its server died"),
            }
        };
        assert!(end.is_disconnected(), "{end:?}");
        assert!(t0.elapsed() < Duration::from_secs(10), "noticed only after {:?}", t0.elapsed());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_stops_its_producer_on_the_server() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let observer = connect(&name).await;
        let mut stream = c.endless(1).await.unwrap();
        for _ in 0..3 {
            stream.next().await.unwrap().unwrap();
        }
        drop(stream);
        wait_stats(&observer, 1, TagStats::min_dropped(1)).await;
        assert_eq!(c.echo_string("still here".into()).await.unwrap(), "still here");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_pauses_the_producer_within_the_window() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let observer = connect(&name).await;
        let mut stream = c.endless(2).await.unwrap();
        for _ in 0..10 {
            stream.next().await.unwrap().unwrap();
        }
        // Now the consumer reads nothing. Beyond the 10 items read, the producer may fill
        // the window (64 KiB items, a little over 64 KiB framed: the last one overshooting)
        // and its channel (2), and hold one more (2 more allowed). Without flow control it
        // would pass that within microseconds; it must not within a second.
        let window_items = (rpc_core::DEFAULT_STREAM_WINDOW as usize).div_ceil(64 * 1024 + 16);
        let bound = (10 + window_items + 2 + 1 + 2) as u64;
        let over = observer.with_timeout(Duration::from_secs(1)).wait_stats(2, TagStats::min_started(bound + 1)).await;
        assert!(matches!(over, Err(RpcError::DeadlineExceeded { .. })), "the producer ran ahead: {over:?}");
        let stalled = observer.stats(2).await.unwrap();
        assert!(
            stalled.started >= 11 && stalled.max_concurrent == 1,
            "the producer did not fill the window: {stalled:?}"
        );
        // Reading again resumes it.
        for _ in 0..20 {
            stream.next().await.unwrap().unwrap();
        }
        wait_stats(&observer, 2, TagStats { started: stalled.started + 10, ..TagStats::default() }).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_stops_reading_stops_the_clients_producer() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let (tx, input) = RpcStream::channel(1);
        let feeder = tokio::spawn(async move {
            let mut sent = 0u64;
            while tx.send(sent).await.is_ok() {
                sent += 1;
            }
            sent
        });
        assert_eq!(c.take(5, input).await.unwrap(), vec![0, 1, 2, 3, 4]);
        // The reply ended the exchange: the client stopped pulling from the channel and
        // dropped it, so the feeder's next send failed.
        let sent = feeder.await.unwrap();
        assert!(sent >= 5, "{sent}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stream_fed_through_a_sink_reaches_the_handler_and_closing_the_sink_ends_it() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let (mut sink, input) = RpcStream::sink(4);
        let feeder = tokio::spawn(async move {
            sink.send_all(&mut futures::stream::iter((1..=10_000u64).map(Ok))).await.unwrap();
            // The handler sums until the stream ends: without the close, `sum` never returns.
            sink.close().await.unwrap();
        });
        assert_eq!(c.sum(input).await.unwrap(), 50_005_000);
        feeder.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_whose_handler_stopped_reading_fails_with_sink_closed() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let (mut sink, input) = RpcStream::sink(1);
        let feeder = tokio::spawn(async move {
            let mut sent = 0u64;
            let error = loop {
                match sink.send(sent).await {
                    Ok(()) => sent += 1,
                    Err(e) => break e,
                }
            };
            assert!(sink.is_closed());
            (sent, error)
        });
        assert_eq!(c.take(5, input).await.unwrap(), vec![0, 1, 2, 3, 4]);
        // The reply ended the exchange, so the client dropped the stream: the feeder's
        // next send failed, with the sink's error.
        let (sent, error) = feeder.await.unwrap();
        assert!(sent >= 5, "{sent}");
        assert_eq!(error, rpc_core::SinkClosed);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shutdown_ends_open_streams_with_shutting_down() {
    watchdog(async {
        let name = unique_name!();
        let mut server = ServerProcess::spawn(EXE, &name, &["--shutdown-grace-ms", "5000"]).await;
        let c = connect(&name).await;
        let mut stream = c.endless(3).await.unwrap();
        stream.next().await.unwrap().unwrap();
        server.begin_shutdown().await;
        let end = loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("the stream ended normally at shutdown"),
            }
        };
        match &end {
            RpcError::Server(e) => assert_eq!(e.kind, ServerErrorKind::ShuttingDown, "{e:?}"),
            other => panic!("expected ShuttingDown, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_over_the_message_limit_fails_its_stream_and_the_connection_goes_on() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = ProbeClient::connect_with(name.clone(), client_config().max_message(64 * 1024)).await.unwrap();
        let (items, end) = drain(c.blobs(3, 100_000).await.unwrap()).await;
        assert!(items.is_empty());
        match end {
            Some(RpcError::Transport(TransportError::MessageTooLarge { limit, direction, .. })) => {
                assert_eq!((limit, direction), (64 * 1024, Direction::Response));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.echo_string("fine".into()).await.unwrap(), "fine");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_complete_while_a_large_stream_flows_on_the_same_pipe() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        // 128 MiB natively; wine's named pipes move about 10 MB/s, so 12.5 MiB there.
        let items = if cfg!(windows) { 200 } else { 2000 };
        let mut stream = c.blobs(items, 65536).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut n = 0;
            while let Some(item) = stream.next().await {
                item.unwrap();
                n += 1;
            }
            n
        });
        for i in 0..200 {
            assert_eq!(c.echo_string(format!("call {i}")).await.unwrap(), format!("call {i}"));
        }
        assert_eq!(reader.await.unwrap(), items);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Hostile peers: raw frames written by hand.
// ---------------------------------------------------------------------------------------------

use pipe_rpc_tests::ProbeRequest;
use pipe_rpc_tests::raw::{
    frames_until_closed, raw_handshake, raw_handshake_with, split_abort, write_all_checked, write_frame,
};
use rpc_core::codec::Codec;
use rpc_core::wire::{Frame, Kind};

fn frame(f: Frame<ProbeRequest, ()>) -> Vec<u8> {
    f.encode(Codec::Bincode, 1 << 20).unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_items_beyond_the_granted_credit_close_only_that_connection_with_an_abort() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let bystander = connect(&name).await;
        let mut io = raw_handshake(&name).await;
        write_frame(
            &mut io,
            &frame(Frame::Call { id: 1, timeout_us: 30_000_000, body: ProbeRequest::Hold { ms: 20_000 } }),
        )
        .await;
        // Items without waiting for credit: the window this raw client was given (the
        // server's default) plus one message (1 MiB, the limit this client announced) is all
        // a stream may hold; this sends 2 MiB more than that, which the handler never reads.
        let may_hold = rpc_core::DEFAULT_STREAM_WINDOW as usize + (1 << 20);
        let item = frame(Frame::UpItem { id: 1, body: ProbeRequest::__HoldItem(7) });
        let mut batch = Vec::new();
        while batch.len() < 64 * 1024 {
            batch.extend_from_slice(&u32::try_from(item.len()).unwrap().to_be_bytes());
            batch.extend_from_slice(&item);
        }
        // Written 64 KiB at a time (a write per frame is very slow under wine).
        for _ in 0..(may_hold + (2 << 20)) / batch.len() + 1 {
            if write_all_checked(&mut io, &batch).await.is_err() {
                break; // closed while we were still writing: what the test expects
            }
        }
        let (frames, why) = split_abort(frames_until_closed(&mut io).await);
        let why = why.expect("an abort saying why");
        assert!(why.contains("beyond the credit granted"), "{why}");
        let kinds: Vec<Kind> = frames.iter().map(|f| Kind::from_code(f[0]).unwrap()).collect();
        assert!(!kinds.contains(&Kind::Reply), "the call was answered instead of the connection closed: {kinds:?}");
        assert_eq!(bystander.echo_string("unaffected".into()).await.unwrap(), "unaffected");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_frames_on_a_connection_that_did_not_negotiate_streams_close_it_with_an_abort() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let mut io = raw_handshake_with(&name, 0).await;
        write_frame(&mut io, &frame(Frame::UpItem { id: 1, body: ProbeRequest::__SumItem(1) })).await;
        let (frames, why) = split_abort(frames_until_closed(&mut io).await);
        assert!(frames.is_empty(), "{frames:?}");
        assert!(why.expect("an abort").contains("UpItem frame, which this connection did not negotiate"));
        // Nor one-way calls.
        let mut io = raw_handshake_with(&name, 0).await;
        write_frame(&mut io, &frame(Frame::OneWay { id: 1, body: ProbeRequest::Note { tag: 9, seq: 0, ms: 0 } })).await;
        let (frames, why) = split_abort(frames_until_closed(&mut io).await);
        assert!(frames.is_empty(), "{frames:?}");
        assert!(why.expect("an abort").contains("OneWay frame, which this connection did not negotiate"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_item_sent_as_a_call_is_a_bad_request_and_stray_stream_frames_are_ignored() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let mut io = raw_handshake(&name).await;
        // Stream frames for exchanges that do not exist (late, after the exchange ended).
        write_frame(&mut io, &frame(Frame::UpItem { id: 77, body: ProbeRequest::__SumItem(1) })).await;
        write_frame(&mut io, &frame(Frame::UpEnd { id: 77 })).await;
        write_frame(&mut io, &frame(Frame::DownCredit { id: 77, grant: 1 << 20 })).await;
        // An item variant as a call.
        write_frame(&mut io, &frame(Frame::Call { id: 3, timeout_us: 5_000_000, body: ProbeRequest::__SumItem(1) }))
            .await;
        let reply = pipe_rpc_tests::raw::read_frame(&mut io).await;
        match Frame::<(), pipe_rpc_tests::ProbeResponse>::decode(Codec::Bincode, &reply).unwrap() {
            Frame::Error { id: 3, error } => {
                assert_eq!(error.kind, ServerErrorKind::BadRequest);
                assert!(error.detail.contains("sum"), "{error:?}");
            }
            other => panic!("expected a bad request for call 3, got {:?}", other.kind()),
        }
        // The connection still serves calls.
        write_frame(&mut io, &frame(Frame::Call { id: 4, timeout_us: 5_000_000, body: ProbeRequest::Pid {} })).await;
        let reply = pipe_rpc_tests::raw::read_frame(&mut io).await;
        let f = Frame::<(), pipe_rpc_tests::ProbeResponse>::decode(Codec::Bincode, &reply).unwrap();
        assert!(matches!(f, Frame::Reply { id: 4, .. }), "{:?}", f.kind());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_goes_away_stops_the_servers_producers() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let observer = connect(&name).await;
        let mut stream = c.endless(4).await.unwrap();
        stream.next().await.unwrap().unwrap();
        // The whole connection ends (as when the client process dies), the stream with it.
        c.channel().close();
        let end = loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("the stream ended normally when its connection closed"),
            }
        };
        assert_eq!(end, RpcError::Cancelled);
        wait_stats(&observer, 4, TagStats::min_dropped(1)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_larger_than_a_piece_cross_whole_in_both_directions() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        // 1 MiB items go out as 64 KiB pieces and come back together.
        let (items, end) = drain(c.blobs(6, 1 << 20).await.unwrap()).await;
        assert_eq!(end, None);
        assert_eq!(items.len(), 6);
        for (k, item) in items.iter().enumerate() {
            assert_eq!(item.len(), 1 << 20);
            let offset = k << 20;
            assert!(item.iter().enumerate().all(|(i, &b)| b == pattern_byte(offset + i)), "item {k} is corrupt");
        }
        let mut offset = 0usize;
        let chunks = (0..6).map(move |_| {
            let v: Vec<u8> = (offset..offset + (1 << 20) + 17).map(pattern_byte).collect();
            offset += (1 << 20) + 17;
            ByteBuf::from(v)
        });
        assert_eq!(c.upload_check(RpcStream::iter(chunks)).await.unwrap(), (6 * ((1 << 20) + 17), true));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_that_grow_past_the_message_limit_close_only_that_connection() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let bystander = connect(&name).await;
        let mut io = raw_handshake(&name).await;
        write_frame(
            &mut io,
            &frame(Frame::Call { id: 1, timeout_us: 30_000_000, body: ProbeRequest::Hold { ms: 20_000 } }),
        )
        .await;
        // Pieces of one "item" that never ends: past the 1 MiB limit this client announced.
        let piece = frame(Frame::Piece { id: 1, from_opener: true, more: true, bytes: vec![0u8; 60_000].into() });
        let mut batch = Vec::new();
        for _ in 0..4 {
            batch.extend_from_slice(&u32::try_from(piece.len()).unwrap().to_be_bytes());
            batch.extend_from_slice(&piece);
        }
        for _ in 0..8 {
            if write_all_checked(&mut io, &batch).await.is_err() {
                break;
            }
        }
        let frames = frames_until_closed(&mut io).await;
        assert!(frames.iter().all(|f| Kind::from_code(f[0]) != Some(Kind::Reply)), "the call was answered");
        assert_eq!(bystander.echo_string("unaffected".into()).await.unwrap(), "unaffected");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_item_goes_out_as_pieces_of_at_most_64_kib() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let mut io = raw_handshake(&name).await;
        write_frame(
            &mut io,
            &frame(Frame::Call {
                id: 1,
                timeout_us: 30_000_000,
                body: ProbeRequest::Blobs { n: 1, size: (1 << 20) - 64 },
            }),
        )
        .await;
        let mut pieces = 0;
        let mut whole = Vec::new();
        loop {
            let f = pipe_rpc_tests::raw::read_frame(&mut io).await;
            match Frame::<(), pipe_rpc_tests::ProbeResponse>::decode(Codec::Bincode, &f).unwrap() {
                Frame::Piece { id: 1, from_opener: false, more, bytes } => {
                    assert!(f.len() <= 64 * 1024 + 16, "a piece of {} bytes", f.len());
                    pieces += 1;
                    whole.extend_from_slice(&bytes);
                    if !more {
                        break;
                    }
                }
                other => panic!("expected pieces, got {:?}", other.kind()),
            }
        }
        assert_eq!(pieces, 16, "just under 1 MiB (the limit this client announced) in 64 KiB pieces");
        match Frame::<(), pipe_rpc_tests::ProbeResponse>::decode(Codec::Bincode, &whole).unwrap() {
            Frame::DownItem { id: 1, body: pipe_rpc_tests::ProbeResponse::Blobs(item) } => {
                assert_eq!(item.len(), (1 << 20) - 64)
            }
            other => panic!("the pieces made a {:?}", other.kind()),
        }
    })
    .await;
}

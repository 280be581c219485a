//! The counters of `rpc_core::stats` across processes: a client makes calls of every
//! outcome against a `test-server` process, and both ends' counts are exact (the server's
//! read through its stdin, `stats`).

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use pipe_rpc_tests::{ProbeClient, ServerProcess, TagStats, client_config, connect, unique_name, wait_stats, watchdog};
use rpc_core::{Channel, RpcError, RpcStream, ServerErrorKind, ServiceId, TransportError};

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ends_count_every_call_by_outcome_and_agree_on_the_bytes() {
    watchdog(async {
        let name = unique_name!();
        let mut server = ServerProcess::spawn(EXE, &name, &["--max-message", "65536"]).await;

        // Refused in the handshake: another service. Counted, and nothing else.
        let other = ServiceId::new("NotProbe", 1);
        let refused = Channel::<(), ()>::connect(name.clone(), other, client_config()).await.unwrap_err();
        assert!(matches!(refused, RpcError::Transport(TransportError::Incompatible { .. })), "{refused:?}");

        let c = connect(&name).await;
        for i in 0..5 {
            assert_eq!(c.echo_string(format!("hi {i}")).await.unwrap(), format!("hi {i}"));
        }
        for _ in 0..2 {
            let err = c.boom("on purpose".into()).await.unwrap_err();
            assert!(matches!(&err, RpcError::Server(e) if e.kind == ServerErrorKind::HandlerPanicked), "{err:?}");
        }
        let err = c.make_bytes(100_000).await.unwrap_err();
        assert!(matches!(err, RpcError::Transport(TransportError::MessageTooLarge { .. })), "{err:?}");
        cancel_one(&c).await;
        let items: Vec<u64> = c.count(0, 3, 0).await.unwrap().map(Result::unwrap).collect().await;
        assert_eq!(items, [0, 1, 2]);
        assert_eq!(c.sum(RpcStream::iter([1, 2, 3])).await.unwrap(), 6);
        c.note(7, 1, 0).await.unwrap();
        // Handled in order: once this answers, the one-way call before it has run.
        assert_eq!(c.echo_string("last".into()).await.unwrap(), "last");

        let s = server.stats().await;
        let mine = c.channel().stats();
        // 5 echoes, 2 panics, 1 too large, 1 cancelled (and the 2 waits around it), 2
        // streams, 1 one-way call, the last echo: 15 exchanges, 11 of them ok.
        let expected = HashMap::from([
            ("connections_open", 1),
            ("connections_total", 1),
            ("connections_refused", 1),
            ("started", 15),
            ("finished", 15),
            ("in_flight", 0),
            ("oneway", 1),
            ("streams_started", 2),
            ("streams_open", 0),
            ("ok", 11),
            ("handler_panicked", 2),
            ("too_large", 1),
            ("cancelled", 1),
            ("deadline_exceeded", 0),
            ("disconnected", 0),
        ]);
        for (key, value) in &expected {
            assert_eq!(s[*key], *value, "server's {key}: {s:?}");
        }
        let calls = mine.calls;
        let client_counts = [
            ("started", calls.started),
            ("finished", calls.finished),
            ("in_flight", calls.in_flight),
            ("oneway", calls.oneway),
            ("streams_started", calls.streams_started),
            ("streams_open", calls.streams_open),
            ("ok", calls.ok),
            ("handler_panicked", calls.errors.handler_panicked),
            ("too_large", calls.errors.too_large),
            ("cancelled", calls.errors.cancelled),
        ];
        for (key, value) in client_counts {
            assert_eq!(value, expected[key], "client's {key}: {mine:?}");
        }
        assert_eq!(calls.errors.total(), 4, "{mine:?}");
        assert_eq!(mine.connections, 1);
        // What one end wrote the other read, to the byte (the refused connection sent none
        // after a handshake it never finished).
        assert_eq!((s["bytes_in"], s["bytes_out"]), (mine.bytes_out, mine.bytes_in), "server {s:?}, client {mine:?}");
        assert!(mine.bytes_out > 15 * 14 && mine.bytes_in > 15 * 14, "at least a header per frame: {mine:?}");

        // The connection ends: the server's totals keep what it counted.
        drop(c);
        let s = loop {
            let s = server.stats().await;
            if s["connections_open"] == 0 {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!((s["connections_total"], s["started"], s["ok"]), (1, 15, 11), "{s:?}");
        server.shutdown_gracefully().await;
    })
    .await;
}

/// A call the client gives up on while its handler runs: the server stops the handler and
/// counts it cancelled (the handler is dropped once the server has taken the cancel).
async fn cancel_one(c: &ProbeClient) {
    let tag = 4242;
    let sleeping = tokio::spawn({
        let c = c.clone();
        async move { c.sleep_ms(tag, 60_000).await }
    });
    wait_stats(c, tag, TagStats::min_started(1)).await;
    sleeping.abort();
    wait_stats(c, tag, TagStats::min_dropped(1)).await;
}

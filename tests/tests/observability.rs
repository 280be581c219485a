//! The counters of `rpc_core::stats` across processes: a client makes calls of every
//! outcome against a `test-server` process, and both ends' counts are exact (the server's
//! read through its stdin, `stats`); the spans of that process name each exchange's method,
//! peer, deadline and outcome.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use pipe_rpc_tests::span_lines::SpanLine;
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
            ("connections_accepted", 1),
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
            // 3 items down (`count`), 3 up (`sum`).
            ("items_in", 3),
            ("items_out", 3),
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
        assert_eq!((mine.items_in, mine.items_out), (3, 3), "{mine:?}");
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
        assert_eq!((s["connections_accepted"], s["started"], s["ok"]), (1, 15, 11), "{s:?}");
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

/// The spans of a server process (printed by `test-server --spans 1`): each exchange's
/// names its method and the client the OS reports (this process), the deadline it ran
/// under and how it ended, by kind; the connection's names the same peer and counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_process_spans_name_the_method_the_peer_the_deadline_and_the_outcome() {
    watchdog(async {
        let name = unique_name!();
        // Calls are capped at 2 s on the server (`max_deadline`): `sleep_ms` ends there.
        let args = ["--spans", "1", "--max-message", "65536", "--max-deadline-ms", "2000"];
        let mut server = ServerProcess::spawn(EXE, &name, &args).await;
        let c = connect(&name).await;
        assert_eq!(c.with_timeout(Duration::from_millis(1500)).echo_string("hi".into()).await.unwrap(), "hi");
        let err = c.boom("on purpose".into()).await.unwrap_err();
        assert!(matches!(&err, RpcError::Server(e) if e.kind == ServerErrorKind::HandlerPanicked), "{err:?}");
        let err = c.make_bytes(100_000).await.unwrap_err();
        assert!(matches!(err, RpcError::Transport(TransportError::MessageTooLarge { .. })), "{err:?}");
        let err = c.sleep_ms(1, 60_000).await.unwrap_err();
        assert!(matches!(err, RpcError::DeadlineExceeded { .. }), "{err:?}");
        let items: Vec<u64> = c.count(0, 3, 0).await.unwrap().map(Result::unwrap).collect().await;
        assert_eq!(items, [0, 1, 2]);
        c.note(7, 1, 0).await.unwrap();
        c.channel().flush().await.unwrap();
        drop(c);
        // 6 exchanges and their connection.
        let spans = server.spans(7).await;

        let me = std::process::id().to_string();
        let mine = rpc_core::PeerCredentials::current_process();
        let user = mine.uid.map(|u| u.to_string()).or_else(|| mine.sid.map(|s| s.to_string())).expect("a user");
        for s in &spans {
            assert_eq!((s.get("service"), s.get("peer_pid"), s.get("peer_user")), ("Probe", &*me, &*user), "{s:?}");
        }
        let of = |method: &str| -> &SpanLine {
            let found: Vec<&SpanLine> = spans.iter().filter(|s| s.get("method") == method).collect();
            assert_eq!(found.len(), 1, "one span of `{method}` in {spans:#?}");
            found[0]
        };
        let ms =
            |s: &SpanLine, field: &str| s.get(field).parse::<u64>().unwrap_or_else(|e| panic!("{field}: {e}: {s:?}"));

        let echo = of("echo_string");
        assert_eq!((echo.name.as_str(), echo.get("outcome")), ("rpc.call", "ok"), "{echo:?}");
        // The client's deadline, as much of it as was left when the call was written.
        assert!((1000..=1500).contains(&ms(echo, "timeout_ms")), "{echo:?}");
        let boom = of("boom");
        assert_eq!(boom.get("outcome"), "panicked", "{boom:?}");
        assert!(boom.get("error").contains("on purpose"), "{boom:?}");
        assert_eq!(of("make_bytes").get("outcome"), "too_large", "{:?}", of("make_bytes"));
        let slept = of("sleep_ms");
        // The client's default deadline (30 s), capped by the server at 2 s, where it ended.
        assert_eq!((slept.get("outcome"), slept.get("timeout_ms")), ("deadline_exceeded", "2000"), "{slept:?}");
        assert!(ms(slept, "duration_us") >= 2_000_000, "{slept:?}");
        let count = of("count");
        assert_eq!((count.name.as_str(), count.get("direction"), count.get("items_out")), ("rpc.stream", "down", "3"));
        assert_eq!(count.get("outcome"), "ok", "{count:?}");
        let note = of("note");
        assert_eq!((note.name.as_str(), note.get("outcome")), ("rpc.oneway", "ok"), "{note:?}");

        // The connection closes last, with its 6 calls.
        let conn = spans.last().unwrap();
        assert_eq!((conn.name.as_str(), conn.get("calls")), ("rpc.connection", "6"), "{spans:#?}");
        assert!(ms(conn, "bytes_in") > 0 && ms(conn, "bytes_out") > 0, "{conn:?}");
        server.shutdown_gracefully().await;
    })
    .await;
}

//! Many concurrent calls on one connection, and many connections at once, all answered
//! correctly by one server process.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::join_all;
use pipe_rpc_tests::{ServerProcess, connect, sample_record, unique_name, watchdog};

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

/// The tag all sleeping calls of the first test count under.
const SLEEP_TAG: u64 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_on_one_connection() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let c = connect(&name).await;
        let completed = Arc::new(AtomicUsize::new(0));
        // A mix of shapes; the sleeps get shorter as `i` grows, so later calls overtake
        // earlier ones and responses come back out of order.
        let calls = (0..1000u64).map(|i| {
            let (c, completed) = (c.clone(), completed.clone());
            async move {
                match i % 4 {
                    0 => {
                        let ms = (1000 - i) / 20;
                        assert_eq!(c.sleep_ms(SLEEP_TAG, ms).await.unwrap(), SLEEP_TAG, "call {i}");
                    }
                    1 => assert_eq!(c.echo_string(format!("call {i}")).await.unwrap(), format!("call {i}"), "call {i}"),
                    2 => assert_eq!(c.echo_struct(sample_record(i)).await.unwrap(), sample_record(i), "call {i}"),
                    _ => assert_eq!(c.divide(i as i64 * 3, 3).await.unwrap(), i as i64, "call {i}"),
                }
                (i, completed.fetch_add(1, Ordering::SeqCst))
            }
        });
        let results = join_all(calls).await;
        assert_eq!(results.len(), 1000);
        // Completion order differs from issue order: the calls really ran concurrently
        // and the responses were matched by id, not by position.
        let out_of_order = results.iter().filter(|(i, done)| *i as usize != *done).count();
        assert!(out_of_order > 0, "every call completed in issue order");
        // The server ran many sleeps at once.
        let stats = c.stats(SLEEP_TAG).await.unwrap();
        assert_eq!(
            (stats.started, stats.finished, stats.dropped_unfinished, stats.running),
            (250, 250, 0, 0),
            "{stats:?}"
        );
        assert!(stats.max_concurrent > 1, "the server never ran two calls of one connection at once: {stats:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_at_once() {
    watchdog(async {
        let name = unique_name!();
        let server = ServerProcess::spawn(EXE, &name, &[]).await;
        let server_pid = server.pid();
        let clients = (0..50u64).map(|k| {
            let name = name.clone();
            tokio::spawn(async move {
                // Each task opens its own connection.
                let c = connect(&name).await;
                assert_eq!(c.pid().await.unwrap(), server_pid);
                let tag = 100 + k;
                let (a, b, d, e) = tokio::join!(
                    c.echo_string(format!("client {k}")),
                    c.sleep_ms(tag, 20 + k % 7),
                    c.echo_struct(sample_record(k)),
                    c.many_args(k as u8, format!("{k}"), vec![k as u16; 3], Some(k % 2 == 0)),
                );
                assert_eq!(a.unwrap(), format!("client {k}"));
                assert_eq!(b.unwrap(), tag);
                assert_eq!(d.unwrap(), sample_record(k));
                assert_eq!(e.unwrap(), (k as u8, format!("{k}"), vec![k as u16; 3], Some(k % 2 == 0)));
                assert_eq!(c.divide(k as i64, 1).await.unwrap(), k as i64);
                // Keep the connection open until every client has done its calls, so all
                // 50 are connected at the same time at the end.
                c
            })
        });
        let clients: Vec<_> = join_all(clients).await.into_iter().map(|r| r.expect("client task")).collect();
        assert_eq!(clients.len(), 50);
        for (k, c) in clients.iter().enumerate() {
            assert!(!c.channel().is_closed(), "client {k}");
            assert_eq!(c.stats(100 + k as u64).await.unwrap().finished, 1, "client {k}");
        }
    })
    .await;
}

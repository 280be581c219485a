//! The blocking client (`ProbeBlockingClient`) across processes, from plain threads with no
//! async runtime of their own: every exchange pattern, calls from many threads at once on
//! one connection, dropping a stream mid-way, one-way calls from a process that exits at
//! once, and the typed refusal inside a runtime.
//!
//! Each test runs on a thread of its own under [`blocking_watchdog`]; a tokio runtime of the
//! test's starts the server process (and is never entered by the blocking client's calls).

use std::sync::{Arc, Barrier};
use std::time::Duration;

use pipe_rpc_tests::{
    EVENT_WAIT, ProbeBlockingClient, ProbeError, ServerProcess, TagStats, Ticks, TicksServer, blocking_watchdog,
    client_config, unique_name,
};
use rpc_core::{PipeName, RpcError, RpcStream};
use serde_bytes::ByteBuf;

const EXE: &str = env!("CARGO_BIN_EXE_test-server");
const CLIENT_EXE: &str = env!("CARGO_BIN_EXE_test-client");

/// A `test-server` process serving `name`, and the runtime that watches it.
struct Server {
    process: Option<ServerProcess>,
    runtime: tokio::runtime::Runtime,
}

impl Server {
    fn start(name: &PipeName, args: &[&str]) -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let process = runtime.block_on(ServerProcess::spawn(EXE, name, args));
        Server { process: Some(process), runtime }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The child is killed where its runtime can reap it.
        let _enter = self.runtime.enter();
        self.process.take();
    }
}

fn connect(name: &PipeName) -> ProbeBlockingClient {
    match ProbeBlockingClient::connect_with(name.clone(), client_config()) {
        Ok(c) => c,
        Err(e) => panic!("cannot connect to {name}: {e}"),
    }
}

/// Waits on the server until the stats of `tag` reach `at_least`.
fn wait_stats(c: &ProbeBlockingClient, tag: u64, at_least: TagStats) -> TagStats {
    match c.with_timeout(EVENT_WAIT).wait_stats(tag, at_least) {
        Ok(s) => s,
        Err(e) => panic!("stats of tag {tag} did not reach {at_least:?}: {e}"),
    }
}

#[test]
fn blocking_calls_return_what_the_async_client_returns() {
    blocking_watchdog(|| {
        let name = unique_name!();
        let _server = Server::start(&name, &[]);
        let c = connect(&name);
        c.unit().unwrap();
        assert_eq!(c.echo_string("hé".into()).unwrap(), "hé");
        assert_eq!(c.many_args(1, "b".into(), vec![3], None).unwrap(), (1, "b".into(), vec![3], None));
        // `Result<T, E>` flattened as for the async client, application errors included.
        assert_eq!(c.divide(7, 2), Ok(3));
        assert_eq!(c.divide(7, 0), Err(ProbeError::DivideByZero { dividend: 7 }));
        assert_eq!(c.parse_u32("7".into()).unwrap(), Ok(7));
        assert!(c.parse_u32("x".into()).unwrap().unwrap_err().contains("is not a u32"));
        // Deadlines: `with_timeout` as on the async client.
        let late = c.with_timeout(Duration::from_millis(200)).sleep_ms(1, 60_000);
        assert!(matches!(late, Err(RpcError::DeadlineExceeded { .. })), "{late:?}");
        assert_eq!(c.pid().unwrap(), _server.process.as_ref().unwrap().pid());
    });
}

#[test]
fn one_way_calls_return_once_queued_and_run_in_order() {
    blocking_watchdog(|| {
        let name = unique_name!();
        let _server = Server::start(&name, &[]);
        let c = connect(&name);
        for seq in 0..200 {
            c.note(1, seq, 0).unwrap();
        }
        let stats = wait_stats(&c, 1, TagStats { finished: 200, ..TagStats::default() });
        assert_eq!(stats.started, 200);
        assert_eq!(c.notes(1).unwrap(), (0..200).collect::<Vec<_>>());
    });
}

#[test]
fn a_process_that_exits_right_after_one_way_calls_delivers_them() {
    blocking_watchdog(|| {
        let name = unique_name!();
        // Two one-way calls at a time on the server: most of the 300 wait in the exiting
        // client's queue, and only reach the pipe if dropping the client waits for them.
        let server = Server::start(&name, &["--max-oneway", "2"]);
        let output = server
            .runtime
            .block_on(async {
                let mut client = tokio::process::Command::new(CLIENT_EXE);
                client.args([name.as_str(), "--blocking-notes", "2", "300"]).kill_on_drop(true);
                client.output().await
            })
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success() && stdout.trim() == "sent", "test-client: {output:?}");
        let c = connect(&name);
        wait_stats(&c, 2, TagStats { finished: 300, ..TagStats::default() });
        assert_eq!(c.notes(2).unwrap(), (0..300).collect::<Vec<_>>());
    });
}

#[test]
fn a_server_stream_reads_as_an_iterator() {
    blocking_watchdog(|| {
        let name = unique_name!();
        let _server = Server::start(&name, &[]);
        let c = connect(&name);
        let items: Vec<u64> = c.count(5, 100, 0).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(items, (5..105).collect::<Vec<_>>());
        // An application error mid-stream is an item; the iterator ends after the last.
        let mut stream = c.fail_after(2).unwrap();
        assert_eq!(stream.next(), Some(Ok(Ok(0))));
        assert_eq!(stream.next(), Some(Ok(Ok(1))));
        assert!(matches!(stream.next(), Some(Ok(Err(ProbeError::Overflow)))));
        assert_eq!(stream.next(), None);
        assert_eq!(stream.next(), None);
    });
}

#[test]
fn dropping_a_blocking_stream_mid_way_cancels_it_on_the_server() {
    blocking_watchdog(|| {
        let name = unique_name!();
        let _server = Server::start(&name, &[]);
        let c = connect(&name);
        let mut stream = c.endless(3).unwrap();
        for _ in 0..3 {
            assert_eq!(stream.next().unwrap().unwrap().len(), 64 * 1024);
        }
        drop(stream);
        // The server's producer learns the consumer is gone.
        wait_stats(&c, 3, TagStats::min_dropped(1));
        assert_eq!(c.echo_string("still here".into()).unwrap(), "still here");
    });
}

#[test]
fn an_upload_takes_an_iterator_or_a_stream() {
    blocking_watchdog(|| {
        let name = unique_name!();
        let _server = Server::start(&name, &[]);
        let c = connect(&name);
        assert_eq!(c.sum(1..=1000u64).unwrap(), 500_500);
        assert_eq!(c.sum(vec![1, 2, 3]).unwrap(), 6);
        assert_eq!(c.sum(RpcStream::iter([4u64, 5])).unwrap(), 9);
        // 4 MiB in 64 KiB items, under flow control.
        let items = (0..64usize).map(|i| {
            ByteBuf::from((0..64 * 1024).map(|j| pipe_rpc_tests::pattern_byte(i * 64 * 1024 + j)).collect::<Vec<_>>())
        });
        assert_eq!(c.upload_check(items.collect::<Vec<_>>()).unwrap(), (4 << 20, true));
        // The handler reads 5 items of an endless iterator and answers: the call ends.
        assert_eq!(c.take(5, 0u64..).unwrap(), vec![0, 1, 2, 3, 4]);
        // Both ways: an iterator up, an iterator down.
        let doubled: Vec<u64> = c.double(1..=5u64).unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(doubled, vec![2, 4, 6, 8, 10]);
    });
}

#[test]
fn an_upload_iterator_that_blocks_does_not_hold_up_other_calls() {
    blocking_watchdog(|| {
        let name = unique_name!();
        let _server = Server::start(&name, &[]);
        let c = connect(&name);
        // An iterator that blocks until this thread feeds it (as `stdin().lines()` would).
        let (feed, items) = std::sync::mpsc::channel::<u64>();
        let upload = {
            let c = c.clone();
            std::thread::spawn(move || c.sum(items.into_iter()))
        };
        feed.send(1).unwrap();
        // Calls go through while the upload's iterator is blocked in `next`.
        for i in 0..20 {
            assert_eq!(c.echo_string(format!("{i}")).unwrap(), format!("{i}"));
        }
        feed.send(2).unwrap();
        drop(feed);
        assert_eq!(upload.join().unwrap().unwrap(), 3);
    });
}

/// The client's side of the callback trait.
struct Tens;

impl Ticks for Tens {
    async fn tick(&self, n: u64) -> u64 {
        n * 10
    }
}

#[test]
fn a_callback_runs_the_clients_handler_during_a_blocking_call() {
    blocking_watchdog(|| {
        let name = unique_name!();
        let _server = Server::start(&name, &[]);
        let c = connect(&name);
        assert_eq!(c.run_ticks(4, TicksServer::new(Tens)).unwrap(), vec![0, 10, 20, 30]);
    });
}

#[test]
fn calls_from_many_threads_at_once_share_one_connection() {
    const THREADS: usize = 8;
    const CALLS: u64 = 200;
    blocking_watchdog(|| {
        let name = unique_name!();
        // One connection is all the server admits: every call below goes through it.
        let _server = Server::start(&name, &["--max-connections", "1"]);
        let c = connect(&name);
        let start = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS as u64)
            .map(|t| {
                let (c, start) = (c.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    // In flight at once: each thread's sleep overlaps the others'.
                    assert_eq!(c.sleep_ms(4, 300).unwrap(), 4);
                    for i in 0..CALLS {
                        let text = format!("{t}-{i}");
                        assert_eq!(c.echo_string(text.clone()).unwrap(), text);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let stats = c.stats(4).unwrap();
        assert_eq!(stats.finished, THREADS as u64);
        assert!(stats.max_concurrent >= 2, "the calls of the threads did not overlap: {stats:?}");
    });
}

#[test]
fn inside_a_runtime_every_method_refuses_with_a_typed_error() {
    blocking_watchdog(|| {
        let name = unique_name!();
        let _server = Server::start(&name, &[]);
        let c = connect(&name);
        let mut stream = c.count(0, 1000, 0).unwrap();
        assert_eq!(stream.next(), Some(Ok(0)));
        let refused = |call: &str| RpcError::BlockingInRuntime { call: call.to_owned() };
        for flavor in ["current_thread", "multi_thread"] {
            let runtime = match flavor {
                "current_thread" => tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
                _ => tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap(),
            };
            runtime.block_on(async {
                assert_eq!(c.sleep_ms(5, 0), Err(refused("ProbeBlockingClient::sleep_ms")), "{flavor}");
                assert_eq!(c.divide(1, 1), Err(ProbeError::Rpc(refused("ProbeBlockingClient::divide"))), "{flavor}");
                assert_eq!(c.note(5, 0, 0), Err(refused("ProbeBlockingClient::note")), "{flavor}");
                assert_eq!(c.sum(0..3u64), Err(refused("ProbeBlockingClient::sum")), "{flavor}");
                let connected = ProbeBlockingClient::connect(name.clone()).map(drop);
                assert_eq!(connected, Err(refused("ProbeBlockingClient::connect")), "{flavor}");
                // The async client on the same connection is the way there.
                assert_eq!(c.as_async().echo_string("async".into()).await.unwrap(), "async");
            });
            // Also in a task, and a `spawn_blocking` closure (tokio does not tell it apart).
            let c2 = c.clone();
            let in_task = runtime.block_on(async move { tokio::spawn(async move { c2.unit() }).await.unwrap() });
            assert_eq!(in_task, Err(refused("ProbeBlockingClient::unit")), "{flavor}");
            let c2 = c.clone();
            let blocking = runtime.block_on(runtime.spawn_blocking(move || c2.unit())).unwrap();
            assert_eq!(blocking, Err(refused("ProbeBlockingClient::unit")), "{flavor}");
        }
        // Nothing refused was sent.
        let stats = c.stats(5).unwrap();
        assert_eq!(stats.started, 0, "{stats:?}");
        assert!(c.notes(5).unwrap().is_empty());
        // A stream read inside a runtime yields the error once, then ends (its call is over).
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let read = runtime.block_on(async { (stream.next(), stream.next()) });
        assert_eq!(read, (Some(Err(refused("ProbeBlockingClient::count"))), None));
        // Outside again, the client works.
        assert_eq!(c.echo_string("outside".into()).unwrap(), "outside");
    });
}

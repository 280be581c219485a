//! The blocking client's background thread lives as long as its connection has a handle
//! (blocking clients, their streams, async clients taken from them) and ends after the last
//! one is dropped. A test binary of its own, so that no other test's client thread is
//! counted.

use std::time::{Duration, Instant};

use pipe_rpc_tests::{ProbeBlockingClient, ServerProcess, blocking_watchdog, client_config, unique_name};
use rpc_core::PipeName;

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

/// The threads of this process named as the blocking client names its runtime's thread.
fn runtime_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "rpc-blocking")
        .count()
}

/// Waits (at most 10 s) until there are `n` such threads; returns how many there were.
fn wait_for_threads(n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = runtime_threads();
        if now == n || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn connect(name: &PipeName) -> ProbeBlockingClient {
    ProbeBlockingClient::connect_with(name.clone(), client_config()).expect("connect")
}

#[test]
fn the_runtime_thread_ends_after_the_last_handle_of_its_connection() {
    if !cfg!(target_os = "linux") {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED: counts threads through /proc/self/task (Linux)");
        return;
    }
    blocking_watchdog(|| {
        let name = unique_name!();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let server = runtime.block_on(ServerProcess::spawn(EXE, &name, &[]));
        assert_eq!(runtime_threads(), 0);

        let c = connect(&name);
        assert_eq!(runtime_threads(), 1);
        let clone = c.with_timeout(Duration::from_secs(5));
        let mut stream = c.count(0, 1000, 0).unwrap();
        let async_client = c.as_async().clone();
        drop(c);
        drop(clone);
        // The stream and the async client still have the connection, and its runtime.
        assert_eq!(stream.next(), Some(Ok(0)));
        drop(stream);
        let answer = runtime.block_on(async_client.echo_string("async".into())).unwrap();
        assert_eq!(answer, "async");
        assert_eq!(runtime_threads(), 1);
        drop(async_client);
        assert_eq!(wait_for_threads(0), 0, "the runtime thread outlived its connection");

        // `into_async` keeps it until the async client goes.
        let c = connect(&name).into_async();
        assert_eq!(runtime.block_on(c.echo_string("x".into())).unwrap(), "x");
        drop(c);
        assert_eq!(wait_for_threads(0), 0, "the runtime thread outlived its connection");

        // A client that never connected leaves no thread either.
        let refused = ProbeBlockingClient::connect_with(
            unique_name!(),
            client_config().connect_timeout(Duration::from_millis(100)),
        );
        assert!(refused.unwrap_err().is_not_running());
        assert_eq!(wait_for_threads(0), 0, "a failed connect left its runtime thread");

        let _enter = runtime.enter();
        drop(server);
    });
}

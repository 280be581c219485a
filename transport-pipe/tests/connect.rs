//! `connect` failures: nothing listening (at once, or within the timeout when waiting for the
//! server), busy servers (retried within the timeout), permissions (at once).

mod support;

use std::time::{Duration, Instant};

use support::{timing_margin, unique_name, watchdog};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transport_pipe::{ConnectOptions, ErrorKind, PipeListener, connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_listening_is_not_running_at_once() {
    watchdog(async {
        let name = unique_name();
        let t0 = Instant::now();
        let err = connect(&name, &ConnectOptions::default().timeout(Duration::from_secs(20))).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotRunning, "{err}");
        assert!(t0.elapsed() < timing_margin(), "took {:?}", t0.elapsed());
        let msg = err.to_string();
        let addr = name.resolve().unwrap().display().to_string();
        assert!(msg.contains(name.as_str()) && msg.contains(&addr), "{msg}");
        assert!(msg.contains("no server is listening") && msg.contains("wait_for_server is off"), "{msg}");
        assert!(err.waited().is_some() && err.io_error().is_some());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_listening_while_waiting_for_the_server_is_not_running_after_the_timeout() {
    watchdog(async {
        let name = unique_name();
        let timeout = Duration::from_millis(300);
        let t0 = Instant::now();
        let err = connect(&name, &ConnectOptions::default().timeout(timeout).wait_for_server(true)).await.unwrap_err();
        let elapsed = t0.elapsed();
        assert_eq!(err.kind(), ErrorKind::NotRunning, "{err}");
        assert!(elapsed >= timeout, "gave up early: {elapsed:?}");
        assert!(elapsed < timeout + timing_margin(), "gave up late: {elapsed:?}");
        let waited = err.waited().expect("waited is set");
        assert!(waited >= timeout && waited <= elapsed, "{waited:?}");
        assert_eq!(err.name(), Some(&name));
        let msg = err.to_string();
        let addr = name.resolve().unwrap().display().to_string();
        assert!(msg.contains(name.as_str()) && msg.contains(&addr), "{msg}");
        assert!(msg.contains("no server is listening") && msg.contains("gave up after"), "{msg}");
        assert!(msg.contains("connect timeout 300 ms"), "{msg}");
        assert!(err.io_error().is_some());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_timeout_makes_exactly_one_attempt() {
    watchdog(async {
        let name = unique_name();
        let t0 = Instant::now();
        let opts = ConnectOptions::default().timeout(Duration::ZERO).wait_for_server(true);
        let err = connect(&name, &opts).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotRunning);
        assert!(t0.elapsed() < timing_margin());
        assert!(err.to_string().contains("(1 attempt,"), "{err}");

        // And one attempt is enough when the server is up.
        let listener = PipeListener::bind(&name).unwrap();
        let accept = tokio::spawn(async move { listener.accept().await.map(|_| listener) });
        connect(&name, &ConnectOptions::default().timeout(Duration::ZERO)).await.unwrap();
        accept.await.unwrap().unwrap();
    })
    .await;
}

/// A stale socket file (server crashed without unlinking) answers ECONNREFUSED: that is "not
/// running", not an I/O error; at once on Linux (elsewhere a refusal may be a full backlog
/// and is retried briefly), or at the timeout when waiting for the server.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_file_is_not_running() {
    watchdog(async {
        let dir = support::scratch_dir();
        let path = dir.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let t0 = Instant::now();
        let err =
            connect(path.as_path(), &ConnectOptions::default().timeout(Duration::from_secs(20))).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotRunning, "{err}");
        assert!(t0.elapsed() < timing_margin(), "took {:?}", t0.elapsed());
        assert!(err.to_string().contains("connection refused"), "{err}");

        let timeout = Duration::from_millis(200);
        let t0 = Instant::now();
        let opts = ConnectOptions::default().timeout(timeout).wait_for_server(true);
        let err = connect(path.as_path(), &opts).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotRunning, "{err}");
        assert!(t0.elapsed() >= timeout);
        assert!(err.to_string().contains("connection refused"), "{err}");
    })
    .await;
}

/// Busy on Linux: a listener with a backlog of 0 takes one pending connection; the next
/// connect gets EAGAIN. `connect` retries until the timeout, reports Busy, and succeeds once
/// the server accepts and frees the slot. (interprocess's listener uses the maximum backlog,
/// so this uses a raw tokio socket at the same path.)
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_backlog_is_busy_then_connects_after_accept() {
    watchdog(async {
        let dir = support::scratch_dir();
        let path = dir.join("busy.sock");
        let sock = tokio::net::UnixSocket::new_stream().unwrap();
        sock.bind(&path).unwrap();
        let listener = sock.listen(0).unwrap();
        let _first = tokio::net::UnixStream::connect(&path).await.unwrap();

        let timeout = Duration::from_millis(300);
        let t0 = Instant::now();
        let err = connect(path.as_path(), &ConnectOptions::default().timeout(timeout)).await.unwrap_err();
        let elapsed = t0.elapsed();
        assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
        assert!(elapsed >= timeout && elapsed < timeout + timing_margin(), "{elapsed:?}");
        assert!(err.to_string().contains("backlog is full"), "{err}");

        let waiting = tokio::spawn({
            let path = path.clone();
            async move { connect(path.as_path(), &ConnectOptions::default()).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "connect should still be retrying");
        let _accepted = listener.accept().await.unwrap();
        waiting.await.unwrap().expect("connect succeeds once the backlog has room");
    })
    .await;
}

/// Busy on Windows: a listener has one instance waiting; a client that connects and is not
/// accepted occupies it, so the next client sees ERROR_PIPE_BUSY until the server accepts.
#[cfg(windows)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_instances_in_use_is_busy_then_connects_after_accept() {
    watchdog(async {
        let name = unique_name();
        let listener = PipeListener::bind(&name).unwrap();
        let _first = connect(&name, &ConnectOptions::default()).await.unwrap();

        let timeout = Duration::from_millis(300);
        let t0 = Instant::now();
        let err = connect(&name, &ConnectOptions::default().timeout(timeout)).await.unwrap_err();
        let elapsed = t0.elapsed();
        assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
        assert!(elapsed >= timeout && elapsed < timeout + timing_margin(), "{elapsed:?}");
        assert!(err.to_string().contains("ERROR_PIPE_BUSY"), "{err}");

        let waiting = tokio::spawn({
            let name = name.clone();
            async move { connect(&name, &ConnectOptions::default()).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "connect should still be retrying");
        let _accepted = listener.accept().await.unwrap();
        waiting.await.unwrap().expect("connect succeeds once a new instance exists");
    })
    .await;
}

/// A socket the user may not write to is refused at once, not retried.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_denied_fails_at_once() {
    if support::is_root() {
        eprintln!("skipped as root: root bypasses socket file permissions");
        return;
    }
    watchdog(async {
        let dir = support::scratch_dir();
        let path = dir.join("locked.sock");
        let mut opts = transport_pipe::ListenOptions::default();
        opts.mode = 0o000;
        let _listener = PipeListener::bind_with(path.as_path(), &opts).unwrap();
        let timeout = Duration::from_secs(5);
        let t0 = Instant::now();
        let err = connect(path.as_path(), &ConnectOptions::default().timeout(timeout)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        assert!(t0.elapsed() < Duration::from_secs(1), "should not retry");
    })
    .await;
}

/// The error of a bad name comes from `connect` as from `bind`, without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_name_fails_connect_at_once() {
    watchdog(async {
        let err = connect("bad name!", &ConnectOptions::default()).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidName);
        assert!(err.to_string().contains("' '"), "{err}");
    })
    .await;
}

/// The stream stays usable after the retries: a full request/response on a late server, for
/// a client that waits for its server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_connection_carries_data() {
    watchdog(async {
        let name = unique_name();
        let server = tokio::spawn({
            let name = name.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let listener = PipeListener::bind(&name).unwrap();
                let mut s = listener.accept().await.unwrap();
                let mut b = [0u8; 4];
                s.read_exact(&mut b).await.unwrap();
                s.write_all(&b).await.unwrap();
            }
        });
        let mut c = connect(&name, &ConnectOptions::default().wait_for_server(true)).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        server.await.unwrap();
    })
    .await;
}

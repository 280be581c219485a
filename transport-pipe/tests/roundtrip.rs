//! Bind, accept, connect and exchange bytes and frames over a real pipe.

mod support;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use support::{timing_margin, unique_name, watchdog};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transport_pipe::{ConnectOptions, PipeListener, connect, length_delimited};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trip_both_directions() {
    watchdog(async {
        let name = unique_name();
        let listener = PipeListener::bind(&name).unwrap();
        assert_eq!(listener.name(), &name);
        let server = tokio::spawn(async move {
            let mut s = listener.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"hello");
            s.write_all(b"world").await.unwrap();
            // The client drops its end after reading: we see end-of-file.
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        });
        let mut c = connect(&name, &ConnectOptions::default()).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"world");
        drop(c);
        server.await.unwrap();
    })
    .await;
}

/// A megabyte each way at the same time, so both directions' buffers fill and drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_echo_in_both_directions_at_once() {
    watchdog(async {
        let name = unique_name();
        let listener = PipeListener::bind(&name).unwrap();
        let server = tokio::spawn(async move {
            let s = listener.accept().await.unwrap();
            let (mut r, mut w) = tokio::io::split(s);
            let mut buf = vec![0u8; 1 << 20];
            r.read_exact(&mut buf).await.unwrap();
            w.write_all(&buf).await.unwrap();
        });
        let c = connect(&name, &ConnectOptions::default()).await.unwrap();
        let (mut r, mut w) = tokio::io::split(c);
        let payload: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        let expected = payload.clone();
        let writer = tokio::spawn(async move { w.write_all(&payload).await.unwrap() });
        let mut got = vec![0u8; 1 << 20];
        r.read_exact(&mut got).await.unwrap();
        assert!(got == expected, "echoed bytes differ");
        writer.await.unwrap();
        server.await.unwrap();
    })
    .await;
}

/// Several clients at once. On Windows only one pipe instance waits at a time, so most of
/// them first see ERROR_PIPE_BUSY and get through only because `connect` retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_all_get_through() {
    watchdog(async {
        const CLIENTS: u8 = 8;
        let name = unique_name();
        let listener = PipeListener::bind(&name).unwrap();
        let server = tokio::spawn(async move {
            let mut handlers = Vec::new();
            for _ in 0..CLIENTS {
                let mut s = listener.accept().await.unwrap();
                handlers.push(tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await.unwrap();
                    s.write_all(&[b[0].wrapping_add(1)]).await.unwrap();
                    // Keep the connection until the client has read the reply.
                    let _ = s.read(&mut b).await;
                }));
            }
            for h in handlers {
                h.await.unwrap();
            }
        });
        let clients = (0..CLIENTS).map(|i| {
            let name = name.clone();
            tokio::spawn(async move {
                let mut c = connect(&name, &ConnectOptions::default()).await.unwrap();
                c.write_all(&[i]).await.unwrap();
                let mut b = [0u8; 1];
                c.read_exact(&mut b).await.unwrap();
                assert_eq!(b[0], i + 1);
            })
        });
        for c in clients.collect::<Vec<_>>() {
            c.await.unwrap();
        }
        server.await.unwrap();
    })
    .await;
}

/// The client starts first and waits for its server (`wait_for_server`), retrying; the server
/// binds only once the client's `connect` has been running for a while. Success then proves
/// the retry loop (a single attempt would have failed), and the time of success proves it
/// noticed the server promptly (within about one `max_backoff`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_waiting_for_its_server_succeeds_once_the_server_appears() {
    watchdog(async {
        let name = unique_name();
        let opts = ConnectOptions::default()
            .timeout(Duration::from_secs(10))
            .max_backoff(Duration::from_millis(50))
            .wait_for_server(true);
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let client = tokio::spawn({
            let name = name.clone();
            async move {
                let t0 = Instant::now();
                started_tx.send(t0).unwrap();
                let r = connect(&name, &opts).await;
                (r, Instant::now())
            }
        });
        let t0 = started_rx.await.unwrap();
        // Let the client fail a number of attempts first.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(!client.is_finished(), "connect returned before any server existed");
        let listener = PipeListener::bind(&name).unwrap();
        let bound_at = Instant::now();
        let accepted = tokio::spawn(async move { listener.accept().await.map(|s| (s, listener)) });
        let (result, done_at) = client.await.unwrap();
        let mut stream = result.expect("connect should succeed once the server is up");
        assert!(done_at >= bound_at);
        assert!(bound_at - t0 >= Duration::from_millis(400));
        let noticed = done_at - bound_at;
        assert!(noticed < Duration::from_millis(50) + timing_margin(), "took {noticed:?} to notice the server");
        let (_server_end, _listener) = accepted.await.unwrap().unwrap();
        stream.write_all(b"x").await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_round_trip_over_a_pipe() {
    watchdog(async {
        let name = unique_name();
        let listener = PipeListener::bind(&name).unwrap();
        let server = tokio::spawn(async move {
            let mut frames = length_delimited(listener.accept().await.unwrap(), 1024);
            while let Some(frame) = frames.next().await {
                let mut frame = frame.unwrap();
                frame.reverse();
                frames.send(frame.freeze()).await.unwrap();
            }
        });
        let mut frames = length_delimited(connect(&name, &ConnectOptions::default()).await.unwrap(), 1024);
        for msg in [&b"abc"[..], b"", &[7u8; 1024]] {
            frames.send(bytes::Bytes::copy_from_slice(msg)).await.unwrap();
            let got = frames.next().await.unwrap().unwrap();
            let mut want = msg.to_vec();
            want.reverse();
            assert_eq!(&got[..], &want[..]);
        }
        drop(frames);
        server.await.unwrap();
    })
    .await;
}

/// Unix streams half-close: after `shutdown` the peer reads EOF but can still answer.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_eof_and_keeps_the_read_side() {
    watchdog(async {
        let name = unique_name();
        let listener = PipeListener::bind(&name).unwrap();
        let server = tokio::spawn(async move {
            let mut s = listener.accept().await.unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).await.unwrap();
            s.write_all(&all).await.unwrap();
        });
        let mut c = connect(&name, &ConnectOptions::default()).await.unwrap();
        c.write_all(b"request").await.unwrap();
        c.shutdown().await.unwrap();
        let mut reply = Vec::new();
        c.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"request");
        server.await.unwrap();
    })
    .await;
}

/// Dropping a pending `accept` loses no connection: the next `accept` returns it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_is_cancel_safe() {
    watchdog(async {
        let name = unique_name();
        let listener = PipeListener::bind(&name).unwrap();
        // An accept that is cancelled before any client arrives.
        let r = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
        assert!(r.is_err());
        let client = tokio::spawn({
            let name = name.clone();
            async move {
                let mut c = connect(&name, &ConnectOptions::default()).await.unwrap();
                c.write_all(b"k").await.unwrap();
                let mut b = [0u8; 1];
                c.read_exact(&mut b).await.unwrap();
            }
        });
        let mut s = listener.accept().await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        s.write_all(&b).await.unwrap();
        client.await.unwrap();
    })
    .await;
}

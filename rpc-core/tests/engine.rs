//! The protocol engine over in-memory pipes (`tokio::io::duplex`), with a hand-written
//! service so these tests do not depend on the macro. Cross-process behaviour over real
//! OS pipes is tested in the `tests/` crate.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use rpc_core::service::{BoxFuture, CallStreams, Reply};
use rpc_core::wire::{Frame, Hello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Welcome, caps};
use rpc_core::{
    CallOptions, Channel, ClientConfig, Codec, Direction, RpcError, Server, ServerConfig, ServerErrorKind, Service,
    ServiceId, TransportError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Debug, Serialize, Deserialize)]
enum Req {
    Echo(#[serde(with = "serde_bytes")] Vec<u8>),
    Big(usize),
    Sleep(u64),
    Panic,
    /// Burns CPU for `min_ms`, then on until another `Spin` runs at the same time or
    /// `overlap_ms` pass; answers the most `Spin`s seen running at once.
    Spin {
        min_ms: u64,
        overlap_ms: u64,
    },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Resp {
    Echo(#[serde(with = "serde_bytes")] Vec<u8>),
    Slept(u64),
    Concurrency(usize),
}

#[derive(Default)]
struct Probe {
    started: AtomicUsize,
    dropped_unfinished: AtomicUsize,
    spinning: AtomicUsize,
    max_spinning: AtomicUsize,
    notify: Notify,
}

struct Svc(Arc<Probe>);

/// Counts handlers dropped before they finished: proof the server stopped them.
struct DropProbe(Arc<Probe>, bool);
impl Drop for DropProbe {
    fn drop(&mut self) {
        if !self.1 {
            self.0.dropped_unfinished.fetch_add(1, Ordering::SeqCst);
            self.0.notify.notify_waiters();
        }
    }
}

const ID: ServiceId = ServiceId::new("Test", 0xfeed);

impl Service for Svc {
    type Request = Req;
    type Response = Resp;
    const ID: ServiceId = ID;
    fn method_name(r: &Req) -> &'static str {
        match r {
            Req::Echo(_) => "echo",
            Req::Big(_) => "big",
            Req::Sleep(_) => "sleep",
            Req::Panic => "panic",
            Req::Spin { .. } => "spin",
        }
    }
    fn call(&self, r: Req, _streams: CallStreams<Req>) -> BoxFuture<Reply<Resp>> {
        let probe = self.0.clone();
        Box::pin(async move {
            Reply::Value(match r {
                Req::Echo(v) => Resp::Echo(v),
                Req::Big(n) => Resp::Echo(vec![7; n]),
                Req::Sleep(ms) => {
                    probe.started.fetch_add(1, Ordering::SeqCst);
                    probe.notify.notify_waiters();
                    let mut guard = DropProbe(probe.clone(), false);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    guard.1 = true;
                    Resp::Slept(ms)
                }
                Req::Panic => panic!("handler exploded"),
                Req::Spin { min_ms, overlap_ms } => {
                    let now = probe.spinning.fetch_add(1, Ordering::SeqCst) + 1;
                    probe.max_spinning.fetch_max(now, Ordering::SeqCst);
                    let t0 = std::time::Instant::now();
                    while t0.elapsed() < Duration::from_millis(min_ms)
                        || (probe.max_spinning.load(Ordering::SeqCst) < 2
                            && t0.elapsed() < Duration::from_millis(overlap_ms))
                    {
                        std::hint::spin_loop();
                    }
                    probe.max_spinning.fetch_max(probe.spinning.load(Ordering::SeqCst), Ordering::SeqCst);
                    probe.spinning.fetch_sub(1, Ordering::SeqCst);
                    Resp::Concurrency(probe.max_spinning.load(Ordering::SeqCst))
                }
            })
        })
    }
}

async fn watchdog<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f).await.expect("test hung: watchdog fired")
}

/// Waits until `cond` holds, re-checking whenever the probe signals.
async fn until(probe: &Probe, cond: impl Fn(&Probe) -> bool) {
    loop {
        let notified = probe.notify.notified();
        if cond(probe) {
            return;
        }
        notified.await;
    }
}

type ServerTask = tokio::task::JoinHandle<Result<(), TransportError>>;

fn pair(
    server_cfg: ServerConfig,
    client_cfg: ClientConfig,
) -> (Arc<Probe>, impl std::future::Future<Output = Channel<Req, Resp>>, ServerTask) {
    let probe = Arc::new(Probe::default());
    let (a, b) = tokio::io::duplex(1 << 16);
    let server = Server::new(Svc(probe.clone())).config(server_cfg);
    let task = tokio::spawn(async move { server.serve_connection(b).await });
    let client = async move { Channel::<Req, Resp>::from_io(a, ID, client_cfg).await.expect("handshake") };
    (probe, client, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_complete_out_of_order() {
    watchdog(async {
        let (_probe, client, _t) = pair(ServerConfig::default(), ClientConfig::default());
        let ch = client.await;
        let opts = CallOptions::default();
        // Longer sleeps first: responses must come back in the opposite order.
        let calls = (0..200u64).rev().map(|i| {
            let ch = ch.clone();
            async move { (i, ch.call(&opts, Req::Sleep(i % 20)).await) }
        });
        let results = futures::future::join_all(calls).await;
        for (i, r) in results {
            assert_eq!(r.unwrap(), Resp::Slept(i % 20));
        }
    })
    .await;
}

#[tokio::test]
async fn deadline_exceeded_fails_the_call_and_stops_the_handler() {
    watchdog(async {
        let (probe, client, _t) = pair(ServerConfig::default(), ClientConfig::default());
        let ch = client.await;
        let err = ch.call(&CallOptions::with_timeout(Duration::from_millis(50)), Req::Sleep(60_000)).await.unwrap_err();
        assert_eq!(err, RpcError::DeadlineExceeded { timeout: Duration::from_millis(50) });
        until(&probe, |p| p.dropped_unfinished.load(Ordering::SeqCst) == 1).await;
        // The connection is still good.
        assert_eq!(ch.call(&CallOptions::default(), Req::Echo(vec![1])).await.unwrap(), Resp::Echo(vec![1]));
    })
    .await;
}

#[tokio::test]
async fn dropping_the_call_future_cancels_it_on_the_server() {
    watchdog(async {
        let (probe, client, _t) = pair(ServerConfig::default(), ClientConfig::default());
        let ch = client.await;
        let ch2 = ch.clone();
        let call = tokio::spawn(async move { ch2.call(&CallOptions::default(), Req::Sleep(60_000)).await });
        until(&probe, |p| p.started.load(Ordering::SeqCst) == 1).await;
        call.abort();
        until(&probe, |p| p.dropped_unfinished.load(Ordering::SeqCst) == 1).await;
        assert_eq!(ch.call(&CallOptions::default(), Req::Echo(vec![2])).await.unwrap(), Resp::Echo(vec![2]));
    })
    .await;
}

#[tokio::test]
async fn server_caps_deadlines_and_says_so() {
    watchdog(async {
        let mut cfg = ServerConfig::default();
        cfg.max_deadline = Duration::from_millis(30);
        let (probe, client, _t) = pair(cfg, ClientConfig::default());
        let ch = client.await;
        let err = ch.call(&CallOptions::with_timeout(Duration::from_secs(60)), Req::Sleep(60_000)).await.unwrap_err();
        assert!(matches!(err, RpcError::DeadlineExceeded { .. }), "{err:?}");
        assert_eq!(probe.dropped_unfinished.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test]
async fn oversized_request_fails_only_that_call() {
    watchdog(async {
        let (_p, client, _t) = pair(ServerConfig::default().max_message(64 * 1024), ClientConfig::default());
        let ch = client.await;
        assert_eq!(ch.peer().max_message, 64 * 1024);
        let opts = CallOptions::default();
        let small = ch.call(&opts, Req::Echo(vec![3; 10]));
        let big = ch.call(&opts, Req::Echo(vec![0; 100_000]));
        let (small, big) = tokio::join!(small, big);
        assert_eq!(small.unwrap(), Resp::Echo(vec![3; 10]));
        match big.unwrap_err() {
            RpcError::Transport(TransportError::MessageTooLarge { size, limit, direction }) => {
                assert!(size > 100_000 && size < 100_032, "{size}");
                assert_eq!(limit, 64 * 1024);
                assert_eq!(direction, Direction::Request);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ch.call(&opts, Req::Echo(vec![4])).await.unwrap(), Resp::Echo(vec![4]));
    })
    .await;
}

#[tokio::test]
async fn oversized_response_fails_only_that_call() {
    watchdog(async {
        let (_p, client, _t) = pair(ServerConfig::default(), ClientConfig::default().max_message(64 * 1024));
        let ch = client.await;
        let opts = CallOptions::default();
        let err = ch.call(&opts, Req::Big(200_000)).await.unwrap_err();
        let msg = err.to_string();
        match err {
            RpcError::Transport(TransportError::MessageTooLarge {
                size,
                limit: 65536,
                direction: Direction::Response,
            }) => {
                assert!(size > 200_000, "{size}");
            }
            other => panic!("{other:?}"),
        }
        assert!(msg.contains("65536") && msg.contains("response"), "{msg}");
        assert_eq!(ch.call(&opts, Req::Big(10)).await.unwrap(), Resp::Echo(vec![7; 10]));
    })
    .await;
}

#[tokio::test]
async fn handler_panic_is_reported_and_the_connection_survives() {
    watchdog(async {
        let (_p, client, _t) = pair(ServerConfig::default(), ClientConfig::default());
        let ch = client.await;
        let opts = CallOptions::default();
        match ch.call(&opts, Req::Panic).await.unwrap_err() {
            RpcError::Server(e) => {
                assert_eq!(e.kind, ServerErrorKind::HandlerPanicked);
                assert!(e.detail.contains("handler exploded"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ch.call(&opts, Req::Echo(vec![5])).await.unwrap(), Resp::Echo(vec![5]));
    })
    .await;
}

#[tokio::test]
async fn server_gone_mid_call_fails_pending_calls_at_once() {
    watchdog(async {
        let (probe, client, task) = pair(ServerConfig::default(), ClientConfig::default());
        let ch = client.await;
        let ch2 = ch.clone();
        let call = tokio::spawn(async move {
            let t0 = std::time::Instant::now();
            (ch2.call(&CallOptions::with_timeout(Duration::from_secs(30)), Req::Sleep(60_000)).await, t0.elapsed())
        });
        until(&probe, |p| p.started.load(Ordering::SeqCst) == 1).await;
        task.abort(); // the server's connection dies with the handler in flight
        let (res, waited) = call.await.unwrap();
        assert!(matches!(res, Err(RpcError::Transport(TransportError::Disconnected { .. }))), "{res:?}");
        assert!(waited < Duration::from_secs(10), "failed only at the deadline: {waited:?}");
        // Later calls fail at once with the same reason.
        let later = ch.call(&CallOptions::default(), Req::Echo(vec![])).await;
        assert!(matches!(later, Err(RpcError::Transport(TransportError::Disconnected { .. }))), "{later:?}");
        assert!(ch.is_closed());
    })
    .await;
}

#[tokio::test]
async fn close_cancels_calls_in_flight() {
    watchdog(async {
        let (probe, client, _t) = pair(ServerConfig::default(), ClientConfig::default());
        let ch = client.await;
        let ch2 = ch.clone();
        let call = tokio::spawn(async move { ch2.call(&CallOptions::default(), Req::Sleep(60_000)).await });
        until(&probe, |p| p.started.load(Ordering::SeqCst) == 1).await;
        ch.close();
        assert_eq!(call.await.unwrap(), Err(RpcError::Cancelled));
        until(&probe, |p| p.dropped_unfinished.load(Ordering::SeqCst) == 1).await;
    })
    .await;
}

#[tokio::test]
async fn postcard_codec_works_end_to_end() {
    watchdog(async {
        let (_p, client, _t) = pair(ServerConfig::default(), ClientConfig::default().codec(Codec::Postcard));
        let ch = client.await;
        assert_eq!(ch.peer().codec, Codec::Postcard);
        assert_eq!(ch.call(&CallOptions::default(), Req::Echo(vec![9; 3])).await.unwrap(), Resp::Echo(vec![9; 3]));
    })
    .await;
}

#[tokio::test]
async fn json_codec_works_end_to_end_with_cancels_deadlines_and_errors() {
    watchdog(async {
        let (probe, client, _t) = pair(ServerConfig::default(), ClientConfig::default().codec(Codec::Json));
        let ch = client.await;
        assert_eq!(ch.peer().codec, Codec::Json);
        let opts = CallOptions::default();
        assert_eq!(ch.call(&opts, Req::Echo(vec![9; 3])).await.unwrap(), Resp::Echo(vec![9; 3]));
        // A cancel is a frame without a body: it must reach the server under JSON too.
        let ch2 = ch.clone();
        let call = tokio::spawn(async move { ch2.call(&CallOptions::default(), Req::Sleep(60_000)).await });
        until(&probe, |p| p.started.load(Ordering::SeqCst) == 1).await;
        call.abort();
        until(&probe, |p| p.dropped_unfinished.load(Ordering::SeqCst) == 1).await;
        let err = ch.call(&CallOptions::with_timeout(Duration::from_millis(30)), Req::Sleep(60_000)).await.unwrap_err();
        assert_eq!(err, RpcError::DeadlineExceeded { timeout: Duration::from_millis(30) });
        match ch.call(&opts, Req::Panic).await.unwrap_err() {
            RpcError::Server(e) => assert_eq!(e.kind, ServerErrorKind::HandlerPanicked),
            other => panic!("{other:?}"),
        }
        assert_eq!(ch.call(&opts, Req::Echo(vec![1])).await.unwrap(), Resp::Echo(vec![1]));
    })
    .await;
}

#[tokio::test]
async fn json_messages_over_the_limit_fail_with_their_exact_size_both_ways() {
    watchdog(async {
        let limit = 64 * 1024;
        let (_p, client, _t) =
            pair(ServerConfig::default().max_message(limit), ClientConfig::default().codec(Codec::Json));
        let ch = client.await;
        let opts = CallOptions::default();
        // The request: the frame header, then `{"Echo":[7,7,...]}`.
        let payload = vec![7u8; 40_000];
        let body = Codec::Json.encode(&Req::Echo(payload.clone()), usize::MAX).unwrap().len();
        assert_eq!(body, r#"{"Echo":[]}"#.len() + 2 * payload.len() - 1);
        let header = rpc_core::wire::HEADER_LEN + 8;
        match ch.call(&opts, Req::Echo(payload)).await.unwrap_err() {
            RpcError::Transport(TransportError::MessageTooLarge { size, limit: l, direction }) => {
                assert_eq!((size, l, direction), ((header + body) as u64, limit as u64, Direction::Request));
            }
            other => panic!("{other:?}"),
        }
        // The response: the server refuses to build it and says how large it was.
        let resp = Codec::Json.encode(&Resp::Echo(vec![7; 40_000]), usize::MAX).unwrap().len();
        match ch.call(&opts, Req::Big(40_000)).await.unwrap_err() {
            RpcError::Transport(TransportError::MessageTooLarge { size, limit: l, direction }) => {
                let reply_header = rpc_core::wire::HEADER_LEN as u64;
                assert_eq!((size, l, direction), (reply_header + resp as u64, limit as u64, Direction::Response));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ch.call(&opts, Req::Big(10)).await.unwrap(), Resp::Echo(vec![7; 10]));
    })
    .await;
}

#[tokio::test]
async fn wrong_fingerprint_and_wrong_service_are_refused_in_the_handshake() {
    watchdog(async {
        for (id, needle) in
            [(ServiceId::new("Test", 1), "fingerprint mismatch"), (ServiceId::new("Other", 0xfeed), "wrong service")]
        {
            let (a, b) = tokio::io::duplex(1 << 16);
            let server = Server::new(Svc(Arc::default()));
            let task = tokio::spawn(async move { server.serve_connection(b).await });
            let err = Channel::<Req, Resp>::from_io(a, id, ClientConfig::default()).await.unwrap_err();
            match &err {
                RpcError::Transport(TransportError::Incompatible { detail }) => {
                    assert!(detail.contains(needle), "{detail}")
                }
                other => panic!("{other:?}"),
            }
            assert!(task.await.unwrap().is_err());
        }
    })
    .await;
}

/// A raw client: handshake by hand, then arbitrary frames.
type RawFramed = tokio_util::codec::Framed<tokio::io::DuplexStream, rpc_core::pipe::LengthPrefixed>;

async fn raw_client(max: usize) -> (RawFramed, ServerTask) {
    let (a, b) = tokio::io::duplex(1 << 16);
    let server = Server::new(Svc(Arc::default()));
    let task = tokio::spawn(async move { server.serve_connection(b).await });
    let mut framed = rpc_core::pipe::length_delimited(a, max);
    let hello = Hello {
        methods: Vec::new(),
        flags: 0,
        version: PROTOCOL_VERSION,
        min_version: MIN_PROTOCOL_VERSION,
        capabilities: caps::SUPPORTED & !caps::BATCH,
        stream_window: 1 << 18,
        codec: 0,
        max_message: max as u32,
        fingerprint: 0xfeed,
        service: "Test".into(),
    };
    framed.send(Bytes::from(hello.encode())).await.unwrap();
    let w = Welcome::decode(&framed.next().await.unwrap().unwrap()).unwrap();
    assert_eq!(w.message, "");
    (framed, task)
}

#[tokio::test]
async fn malformed_request_gets_bad_request_and_the_connection_goes_on() {
    watchdog(async {
        let (mut framed, _task) = raw_client(1 << 20).await;
        // A call frame whose body is not a `Req`: the variant index is out of range.
        let bad = Frame::<_, ()>::Call { id: 41, timeout_us: 1_000_000, body: (99u32, 1u8) };
        framed.send(bad.encode(Codec::Bincode, 1 << 20).unwrap()).await.unwrap();
        let good = Frame::<_, ()>::Call { id: 42, timeout_us: 1_000_000, body: Req::Echo(vec![1, 2]) };
        framed.send(good.encode(Codec::Bincode, 1 << 20).unwrap()).await.unwrap();
        let f1: Frame<(), Resp> = Frame::decode(Codec::Bincode, &framed.next().await.unwrap().unwrap()).unwrap();
        let f2: Frame<(), Resp> = Frame::decode(Codec::Bincode, &framed.next().await.unwrap().unwrap()).unwrap();
        match f1 {
            Frame::Error { id: 41, error } => {
                assert_eq!(error.kind, ServerErrorKind::BadRequest);
                assert!(error.detail.contains("Test"), "{}", error.detail);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(f2, Frame::Reply { id: 42, body: Resp::Echo(ref v) } if v == &[1, 2]), "{f2:?}");
    })
    .await;
}

#[tokio::test]
async fn unreadable_frames_and_oversized_frames_close_only_that_connection() {
    watchdog(async {
        // Unreadable: not even a frame head.
        let (mut framed, task) = raw_client(1 << 20).await;
        framed.send(Bytes::from_static(&[0xff; 3])).await.unwrap();
        let ended = task.await.unwrap();
        assert!(matches!(ended, Err(TransportError::Protocol { .. })), "{ended:?}");
        // Oversized: a length prefix beyond the server's limit.
        let (framed, task) = raw_client(64 << 20).await;
        let mut io = framed.into_inner();
        tokio::io::AsyncWriteExt::write_all(&mut io, &(100u32 << 20).to_be_bytes()).await.unwrap();
        let ended = task.await.unwrap();
        assert!(matches!(ended, Err(TransportError::Protocol { .. })), "{ended:?}");
    })
    .await;
}

#[tokio::test]
async fn a_peer_that_is_not_pipe_rpc_is_refused_with_a_clear_error() {
    watchdog(async {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            // Answers with an HTTP response in a length-delimited frame.
            let mut buf = [0u8; 256];
            let _ = tokio::io::AsyncReadExt::read(&mut b, &mut buf).await;
            let body = b"HTTP/1.1 400 Bad Request\r\n\r\n";
            let mut out = (body.len() as u32).to_be_bytes().to_vec();
            out.extend_from_slice(body);
            tokio::io::AsyncWriteExt::write_all(&mut b, &out).await.unwrap();
        });
        let err = Channel::<Req, Resp>::from_io(a, ID, ClientConfig::default()).await.unwrap_err();
        assert!(err.to_string().contains("not a pipe-rpc endpoint"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn in_flight_limit_applies_backpressure_not_errors() {
    watchdog(async {
        let (probe, client, _t) =
            pair(ServerConfig::default().max_in_flight_per_connection(4), ClientConfig::default());
        let ch = client.await;
        let opts = CallOptions::default();
        let calls: Vec<_> = (0..20).map(|_| ch.call(&opts, Req::Sleep(20))).collect();
        let results = futures::future::join_all(calls).await;
        assert!(results.iter().all(|r| r == &Ok(Resp::Slept(20))));
        assert_eq!(probe.started.load(Ordering::SeqCst), 20);
        // The client learnt the window in the handshake and held the rest back itself.
        assert_eq!(ch.peer().max_in_flight, 4);
    })
    .await;
}

#[tokio::test]
async fn a_client_that_never_speaks_is_dropped_at_the_handshake_timeout() {
    watchdog(async {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = Server::new(Svc(Arc::default()))
            .config(ServerConfig::default().handshake_timeout(Duration::from_millis(100)));
        let t0 = std::time::Instant::now();
        let ended = server.serve_connection(b).await;
        match ended {
            Err(TransportError::Protocol { detail }) => assert!(detail.contains("no handshake"), "{detail}"),
            other => panic!("{other:?}"),
        }
        assert!(t0.elapsed() >= Duration::from_millis(100), "{:?}", t0.elapsed());
        drop(a); // held open (and silent) until here
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The client against a scripted server: handshake by hand, then frames chosen by the test.
// ---------------------------------------------------------------------------------------------

const MAX: usize = 1 << 20;

/// Answers the client's `Hello` with an `Ok` and hands back the raw framed pipe.
async fn scripted_server(io: tokio::io::DuplexStream) -> RawFramed {
    let mut framed = rpc_core::pipe::length_delimited(io, MAX);
    let hello = Hello::decode(&framed.next().await.unwrap().unwrap()).unwrap();
    let welcome = Welcome {
        method_status: Vec::new(),
        codecs: 0,
        features: 0,
        methods: Vec::new(),
        version: PROTOCOL_VERSION,
        capabilities: 0,
        max_in_flight: 128,
        max_oneway: 0,
        stream_window: 1 << 18,
        status: rpc_core::wire::HandshakeStatus::Ok,
        codec: hello.codec,
        max_message: MAX as u32,
        fingerprint: 0xfeed,
        server_pid: 1,
        service: "Test".into(),
        message: String::new(),
    };
    framed.send(Bytes::from(welcome.encode())).await.unwrap();
    framed
}

async fn next_client_frame(framed: &mut RawFramed) -> Frame<Req, Resp> {
    Frame::decode(Codec::Bincode, &framed.next().await.expect("client frame").unwrap()).unwrap()
}

fn server_frame(f: &Frame<Req, Resp>) -> Bytes {
    f.encode(Codec::Bincode, MAX).unwrap()
}

fn call_id(f: &Frame<Req, Resp>) -> u64 {
    f.id()
}

#[tokio::test]
async fn responses_that_arrive_with_the_servers_close_are_still_delivered() {
    watchdog(async {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut framed = scripted_server(b).await;
            let (f1, f2) = (next_client_frame(&mut framed).await, next_client_frame(&mut framed).await);
            // Both replies and the end of the stream reach the client in one read: this
            // (current-thread) runtime does not poll the client between these writes.
            for f in [&f2, &f1] {
                framed
                    .feed(server_frame(&Frame::Reply { id: call_id(f), body: Resp::Slept(call_id(f)) }))
                    .await
                    .unwrap();
            }
            SinkExt::<Bytes>::flush(&mut framed).await.unwrap();
            (call_id(&f1), call_id(&f2))
        });
        let ch = Channel::<Req, Resp>::from_io(a, ID, ClientConfig::default()).await.unwrap();
        let opts = CallOptions::default();
        let (r1, r2) = tokio::join!(ch.call(&opts, Req::Sleep(1)), ch.call(&opts, Req::Sleep(2)));
        let (id1, id2) = server.await.unwrap();
        let mut got = [r1.unwrap(), r2.unwrap()];
        got.sort_by_key(|r| match r {
            Resp::Slept(id) => *id,
            _ => 0,
        });
        let mut want = [Resp::Slept(id1), Resp::Slept(id2)];
        want.sort_by_key(|r| match r {
            Resp::Slept(id) => *id,
            _ => 0,
        });
        assert_eq!(got, want);
        // And the connection is known to be over.
        let later = ch.call(&opts, Req::Echo(vec![])).await;
        assert!(matches!(later, Err(RpcError::Transport(TransportError::Disconnected { .. }))), "{later:?}");
    })
    .await;
}

#[tokio::test]
async fn a_late_response_to_an_abandoned_call_never_reaches_a_later_call() {
    watchdog(async {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ids_tx, ids_rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            let mut framed = scripted_server(b).await;
            let first = next_client_frame(&mut framed).await;
            let cancel = next_client_frame(&mut framed).await;
            assert!(matches!(cancel, Frame::Cancel { id } if id == call_id(&first)), "{cancel:?}");
            let second = next_client_frame(&mut framed).await;
            ids_tx.send((call_id(&first), call_id(&second))).unwrap();
            // The abandoned call's response comes late, right before the new call's.
            framed.feed(server_frame(&Frame::Reply { id: call_id(&first), body: Resp::Slept(1) })).await.unwrap();
            framed.feed(server_frame(&Frame::Reply { id: call_id(&second), body: Resp::Slept(2) })).await.unwrap();
            SinkExt::<Bytes>::flush(&mut framed).await.unwrap();
            framed
        });
        let ch = Channel::<Req, Resp>::from_io(a, ID, ClientConfig::default()).await.unwrap();
        // The first call gives up after its request went out.
        let first = ch.call(&CallOptions::with_timeout(Duration::from_millis(50)), Req::Sleep(1)).await;
        assert!(matches!(first, Err(RpcError::DeadlineExceeded { .. })), "{first:?}");
        let second = ch.call(&CallOptions::default(), Req::Sleep(2)).await;
        assert_eq!(second, Ok(Resp::Slept(2)));
        let (id1, id2) = ids_rx.await.unwrap();
        // The point of the test: the second call reused the first one's slot, so only the
        // id (slot generation) tells the two responses apart.
        assert_ne!(id1, id2);
        assert_eq!(id1 & 0xffff_ffff, id2 & 0xffff_ffff, "expected slot reuse: {id1:#x} {id2:#x}");
        drop(server.await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn an_answer_to_a_call_not_yet_written_is_never_taken_for_its_answer() {
    watchdog(async {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut framed = rpc_core::pipe::length_delimited(b, MAX);
            let hello = Hello::decode(&framed.next().await.unwrap().unwrap()).unwrap();
            // A window of one call: the client holds its second call back until the first
            // is answered.
            let welcome = Welcome {
                method_status: Vec::new(),
                codecs: 0,
                features: 0,
                methods: Vec::new(),
                version: PROTOCOL_VERSION,
                capabilities: 0,
                max_in_flight: 1,
                max_oneway: 0,
                stream_window: 1 << 18,
                status: rpc_core::wire::HandshakeStatus::Ok,
                codec: hello.codec,
                max_message: MAX as u32,
                fingerprint: 0xfeed,
                server_pid: 1,
                service: "Test".into(),
                message: String::new(),
            };
            framed.send(Bytes::from(welcome.encode())).await.unwrap();
            let first = call_id(&next_client_frame(&mut framed).await);
            // The id the held-back call will have (the next slot, same generation), answered
            // before the client wrote it.
            let guessed = (first & !0xffff_ffff) | ((first + 1) & 0xffff_ffff);
            framed.feed(server_frame(&Frame::Reply { id: guessed, body: Resp::Slept(666) })).await.unwrap();
            framed.send(server_frame(&Frame::Reply { id: first, body: Resp::Slept(1) })).await.unwrap();
            let second = call_id(&next_client_frame(&mut framed).await);
            framed.send(server_frame(&Frame::Reply { id: second, body: Resp::Slept(2) })).await.unwrap();
            (guessed, second, framed)
        });
        let ch = Channel::<Req, Resp>::from_io(a, ID, ClientConfig::default()).await.unwrap();
        let opts = CallOptions::default();
        let (r1, r2) = tokio::join!(ch.call(&opts, Req::Sleep(1)), ch.call(&opts, Req::Sleep(2)));
        let (guessed, second, _framed) = server.await.unwrap();
        assert_eq!(guessed, second, "the test must answer the held-back call's real id early");
        assert_eq!((r1.unwrap(), r2.unwrap()), (Resp::Slept(1), Resp::Slept(2)));
    })
    .await;
}

#[test]
fn calls_fail_when_the_runtime_running_their_connection_shuts_down() {
    // The connection's driver runs on `conn_rt`; the caller and the server live elsewhere,
    // so only the driver goes away when `conn_rt` is dropped.
    let conn_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let other_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (a, b) = tokio::io::duplex(1 << 16);
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    let server = other_rt.spawn(async move {
        let mut framed = scripted_server(b).await;
        let f = next_client_frame(&mut framed).await;
        seen_tx.send(call_id(&f)).unwrap();
        // Never answers; keeps the pipe open.
        std::future::pending::<()>().await;
        drop(framed);
    });
    let ch = conn_rt.block_on(Channel::<Req, Resp>::from_io(a, ID, ClientConfig::default())).unwrap();
    let call = other_rt.spawn(async move {
        let t0 = std::time::Instant::now();
        (ch.call(&CallOptions::with_timeout(Duration::from_secs(60)), Req::Sleep(1)).await, t0.elapsed())
    });
    other_rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), seen_rx).await.unwrap().unwrap() });
    drop(conn_rt);
    let (res, waited) =
        other_rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), call).await }).unwrap().unwrap();
    match &res {
        Err(RpcError::Transport(TransportError::Disconnected { detail })) => {
            assert!(detail.contains("runtime"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
    assert!(waited < Duration::from_secs(20), "{waited:?}");
    server.abort();
}

// ---------------------------------------------------------------------------------------------
// The engine's rules: reading never stops, cancelled work is never sent, panics in user
// `Deserialize` impls fail one exchange, long handlers run in parallel.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cancels_reach_the_server_while_its_window_is_full() {
    watchdog(async {
        let (probe, client, _t) =
            pair(ServerConfig::default().max_in_flight_per_connection(2), ClientConfig::default());
        let ch = client.await;
        let (c1, c2) = (ch.clone(), ch.clone());
        let long1 = tokio::spawn(async move { c1.call(&CallOptions::default(), Req::Sleep(60_000)).await });
        let long2 = tokio::spawn(async move { c2.call(&CallOptions::default(), Req::Sleep(60_000)).await });
        until(&probe, |p| p.started.load(Ordering::SeqCst) == 2).await;
        // The window is full: this call waits in the client.
        let c3 = ch.clone();
        let waiting = tokio::spawn(async move { c3.call(&CallOptions::default(), Req::Echo(vec![6])).await });
        // Giving up on the long calls must stop them now, not at their deadlines.
        long1.abort();
        long2.abort();
        until(&probe, |p| p.dropped_unfinished.load(Ordering::SeqCst) == 2).await;
        assert_eq!(waiting.await.unwrap().unwrap(), Resp::Echo(vec![6]));
    })
    .await;
}

#[tokio::test]
async fn a_call_cancelled_after_its_reply_was_queued_gets_no_reply() {
    watchdog(async {
        // A raw client that does not read: the 200 kB reply to call 1 fills the pipe, so
        // the reply to call 2 waits in the server when call 2's cancel arrives.
        let (mut framed, _task) = raw_client(1 << 20).await;
        let send = |f: Frame<Req, ()>| f.encode(Codec::Bincode, 1 << 20).unwrap();
        framed.send(send(Frame::Call { id: 1, timeout_us: 10_000_000, body: Req::Big(200_000) })).await.unwrap();
        framed.send(send(Frame::Call { id: 2, timeout_us: 10_000_000, body: Req::Echo(vec![2]) })).await.unwrap();
        framed.send(send(Frame::Cancel { id: 2 })).await.unwrap();
        framed.send(send(Frame::Call { id: 3, timeout_us: 10_000_000, body: Req::Echo(vec![3]) })).await.unwrap();
        let mut ids = Vec::new();
        while ids.len() < 2 {
            let f: Frame<(), Resp> = Frame::decode(Codec::Bincode, &framed.next().await.unwrap().unwrap()).unwrap();
            ids.push(f.id());
        }
        assert_eq!(ids, [1, 3], "the cancelled call 2 was answered");
    })
    .await;
}

#[tokio::test]
async fn a_call_that_expires_while_the_pipe_is_full_is_never_written() {
    watchdog(async {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let mut framed = scripted_server(b).await;
            // Read nothing until the client's short call has expired.
            go_rx.await.unwrap();
            let mut seen = Vec::new();
            while seen.len() < 2 {
                let f = next_client_frame(&mut framed).await;
                seen.push((f.kind(), f.id()));
                if let Frame::Call { id, body: Req::Echo(v), .. } = f
                    && v.len() == 1
                {
                    framed.send(server_frame(&Frame::Reply { id, body: Resp::Echo(v) })).await.unwrap();
                }
            }
            seen
        });
        let ch = Channel::<Req, Resp>::from_io(a, ID, ClientConfig::default()).await.unwrap();
        let opts = CallOptions::with_timeout(Duration::from_secs(20));
        // 300 kB: more than the pipe holds, so what follows waits in the client. Polled
        // once, so it is queued before the short call.
        let mut big = std::pin::pin!(ch.call(&opts, Req::Echo(vec![0; 300_000])));
        assert!(futures::poll!(&mut big).is_pending());
        let short = ch.call(&CallOptions::with_timeout(Duration::from_millis(50)), Req::Echo(vec![1, 1])).await;
        assert!(matches!(short, Err(RpcError::DeadlineExceeded { .. })), "{short:?}");
        go_tx.send(()).unwrap();
        let after = ch.call(&CallOptions::default(), Req::Echo(vec![3])).await;
        assert_eq!(after.unwrap(), Resp::Echo(vec![3]));
        let seen = server.await.unwrap();
        // The big call, then the one after the expired call: neither it nor a cancel for it.
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), [rpc_core::wire::Kind::Call; 2], "{seen:?}");
    })
    .await;
}

/// A response type whose `Deserialize` panics on the value 13.
#[derive(Debug, PartialEq, Serialize)]
struct Touchy(u8);

impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u8::deserialize(d)?;
        assert_ne!(v, 13, "unlucky number");
        Ok(Touchy(v))
    }
}

#[tokio::test]
async fn a_panicking_response_deserialize_fails_only_that_call() {
    watchdog(async {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut framed = scripted_server(b).await;
            for value in [13u8, 1] {
                let id = next_client_frame(&mut framed).await.id();
                let reply = Frame::<(), u8>::Reply { id, body: value }.encode(Codec::Bincode, MAX).unwrap();
                framed.send(reply).await.unwrap();
            }
            framed
        });
        let ch = Channel::<Req, Touchy>::from_io(a, ID, ClientConfig::default()).await.unwrap();
        let first = ch.call(&CallOptions::default(), Req::Echo(vec![])).await;
        match &first {
            Err(RpcError::Transport(TransportError::Protocol { detail })) => {
                assert!(detail.contains("panicked") && detail.contains("unlucky number"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ch.call(&CallOptions::default(), Req::Echo(vec![])).await, Ok(Touchy(1)));
        drop(server.await.unwrap());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_running_handlers_of_one_connection_run_in_parallel() {
    watchdog(async {
        let (probe, client, _t) = pair(ServerConfig::default(), ClientConfig::default());
        let ch = client.await;
        let opts = CallOptions::default();
        // The first call of a method that burns CPU runs inline and marks it as long-running.
        assert_eq!(ch.call(&opts, Req::Spin { min_ms: 2, overlap_ms: 0 }).await, Ok(Resp::Concurrency(1)));
        // Each of these spins until it sees another one running, for up to 5 s; run one
        // after another, none would.
        let calls = (0..4).map(|_| ch.call(&opts, Req::Spin { min_ms: 1, overlap_ms: 5_000 }));
        let results = futures::future::join_all(calls).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert!(probe.max_spinning.load(Ordering::SeqCst) >= 2, "the handlers ran one at a time");
    })
    .await;
}

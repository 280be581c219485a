//! Failures around the server: a second server on a taken name, an incompatible client
//! (another version of the trait, another service), and a peer sending garbage. None of
//! them disturbs the server or its other clients.

use std::time::Duration;

use pipe_rpc_tests::raw::{expect_told_and_closed, raw_connect, raw_handshake, read_frame, write_frame};
use pipe_rpc_tests::{
    ProbeClient, ServerProcess, TagStats, client_config, connect, skip_under_wine, unique_name, wait_stats, watchdog,
};
use rpc_core::codec::Codec;
use rpc_core::wire::Frame;
use rpc_core::{RpcError, ServerErrorKind, TransportError};
use tokio::io::AsyncWriteExt;

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

/// Another version of `Probe`: same service name, a different `unit` signature.
#[rpc_core::service(name = "Probe")]
trait ProbeV2 {
    async fn unit(&self, extra: u8);
}

/// A different service altogether.
#[rpc_core::service]
trait Unrelated {
    async fn unit(&self);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_a_taken_name_fails_to_start() {
    if skip_under_wine(
        "wine does not enforce FILE_FLAG_FIRST_PIPE_INSTANCE: a second server creates more \
         instances of the same pipe instead of failing with ERROR_ACCESS_DENIED",
    ) {
        return;
    }
    watchdog(async {
        let name = unique_name!();
        let first = ServerProcess::spawn(EXE, &name, &[]).await;
        let exit = match ServerProcess::try_spawn(EXE, &name, &[]).await {
            Ok(second) => panic!("a second server started on {name} (pid {})", second.pid()),
            Err(exit) => exit,
        };
        assert_eq!(exit.status.code(), Some(2), "{exit:?}");
        assert!(!exit.stdout.iter().any(|l| l == "ready"), "{exit:?}");
        assert!(exit.stderr.contains("NameInUse"), "{}", exit.stderr);
        assert!(exit.stderr.contains("another server") && exit.stderr.contains("is listening"), "{}", exit.stderr);
        // The squatter (here the first server) is named by the OS: on Unix by the kernel's
        // credentials of a probe connection, on Windows by the pipe's server process id.
        let who = if cfg!(unix) { "uid" } else { "user S-1-" };
        assert!(exit.stderr.contains(&format!("(pid {}, {who}", first.pid())), "{}", exit.stderr);
        assert!(exit.stderr.contains(name.as_str()), "{}", exit.stderr);
        // The first server was not displaced.
        assert_eq!(connect(&name).await.pid().await.unwrap(), first.pid());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_version_of_the_trait_is_refused_in_the_handshake_under_the_exact_rule() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        assert_eq!(ProbeV2Client::ID.name, ProbeClient::ID.name);
        assert_ne!(ProbeV2Client::ID.fingerprint, ProbeClient::ID.fingerprint);
        let exact = client_config().exact_fingerprint(true);
        let err = ProbeV2Client::connect_with(name.clone(), exact).await.unwrap_err();
        match &err {
            RpcError::Transport(TransportError::Incompatible { detail }) => {
                assert!(detail.contains("fingerprint"), "{detail}");
                assert!(detail.contains("Probe"), "{detail}");
            }
            other => panic!("expected Incompatible, got {other:?}"),
        }
        assert!(err.to_string().contains("fingerprint"), "{err}");
        // With service evolution (the default) it connects, and its changed method is
        // refused by name when called (see `evolution.rs`).
        let v2 = ProbeV2Client::connect_with(name.clone(), client_config()).await.unwrap();
        match v2.unit(1).await {
            Err(RpcError::Incompatible { method, reason }) => {
                assert_eq!((method.as_str(), reason), ("unit", rpc_core::evolution::MethodStatus::Changed));
            }
            other => panic!("expected Incompatible, got {other:?}"),
        }
        // The server still serves compatible clients.
        assert_eq!(connect(&name).await.echo_string("ok".into()).await.unwrap(), "ok");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_service_is_refused_in_the_handshake() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let err = UnrelatedClient::connect_with(name.clone(), client_config()).await.unwrap_err();
        match &err {
            RpcError::Transport(TransportError::Incompatible { detail }) => {
                assert!(detail.contains("wrong service"), "{detail}");
                assert!(detail.contains("Unrelated") && detail.contains("Probe"), "{detail}");
            }
            other => panic!("expected Incompatible, got {other:?}"),
        }
        assert_eq!(connect(&name).await.echo_string("ok".into()).await.unwrap(), "ok");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_one_peer_is_answered_with_its_reason_and_does_not_disturb_other_clients() {
    watchdog(async {
        let name = unique_name!();
        let server = ServerProcess::spawn(EXE, &name, &[]).await;
        // A well-behaved client, mid-conversation: a call in flight throughout.
        let c = connect(&name).await;
        let in_flight = tokio::spawn({
            let c = c.with_timeout(Duration::from_secs(20));
            async move { c.sleep_ms(1, 1_000).await }
        });
        wait_stats(&c, 1, TagStats::min_started(1)).await;

        // 1. Not even framed: an HTTP request (its first bytes read as a huge length).
        let mut io = raw_connect(&name).await;
        io.write_all(b"GET / HTTP/1.1\r\nHost: pipe\r\n\r\n").await.unwrap();
        let why = expect_told_and_closed(&mut io, "an HTTP request").await;
        assert!(why.contains("over this end's limit of 65536 bytes"), "{why}");

        // 2. A valid length prefix around junk instead of a handshake.
        let mut io = raw_connect(&name).await;
        write_frame(&mut io, b"definitely not a pipe-rpc hello").await;
        let why = expect_told_and_closed(&mut io, "a junk handshake").await;
        assert!(why.contains("not a pipe-rpc hello"), "{why}");

        // 3. A good handshake, then an unreadable frame.
        let mut io = raw_handshake(&name).await;
        write_frame(&mut io, &[0xff; 7]).await;
        let why = expect_told_and_closed(&mut io, "an unreadable frame").await;
        assert!(why.contains("7 bytes, shorter than the 10-byte header"), "{why}");

        // 4. A good handshake, then a length prefix over the limit.
        let mut io = raw_handshake(&name).await;
        io.write_all(&(200u32 << 20).to_be_bytes()).await.unwrap();
        let why = expect_told_and_closed(&mut io, "an oversized length prefix").await;
        assert!(why.contains(&format!("a frame of {} bytes, over this end's limit", 200u32 << 20)), "{why}");

        // 5. Connect and leave without a word.
        drop(raw_connect(&name).await);

        // The well-behaved client did not notice.
        assert_eq!(in_flight.await.unwrap(), Ok(1));
        assert_eq!(c.echo_string("still fine".into()).await.unwrap(), "still fine");
        // The server is the same process and serves new clients.
        let fresh = connect(&name).await;
        assert_eq!(fresh.pid().await.unwrap(), server.pid());
        assert_eq!(fresh.divide(6, 3).await.unwrap(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_does_not_decode_gets_bad_request_and_the_connection_goes_on() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let mut io = raw_handshake(&name).await;
        // A call frame whose body is no `ProbeRequest`: the variant index is out of range.
        let bad = Frame::<_, ()>::Call { id: 41, timeout_us: 5_000_000, body: (999u32, 1u8) };
        write_frame(&mut io, &bad.encode(Codec::Bincode, 1 << 20).unwrap()).await;
        let frame: Frame<(), pipe_rpc_tests::ProbeResponse> =
            Frame::decode(Codec::Bincode, &read_frame(&mut io).await).unwrap();
        match frame {
            Frame::Error { id: 41, error } => {
                assert_eq!(error.kind, ServerErrorKind::BadRequest, "{error:?}");
                assert!(error.detail.contains("Probe"), "{error:?}");
            }
            other => panic!("expected a BadRequest error for call 41, got {:?}", frame_kind(&other)),
        }
        // The same connection still works.
        let good = pipe_rpc_tests::ProbeRequest::EchoString { s: "raw".into() };
        let good = Frame::<_, ()>::Call { id: 42, timeout_us: 5_000_000, body: good };
        write_frame(&mut io, &good.encode(Codec::Bincode, 1 << 20).unwrap()).await;
        let frame: Frame<(), pipe_rpc_tests::ProbeResponse> =
            Frame::decode(Codec::Bincode, &read_frame(&mut io).await).unwrap();
        match frame {
            Frame::Reply { id: 42, body: pipe_rpc_tests::ProbeResponse::EchoString(s) } => assert_eq!(s, "raw"),
            other => panic!("expected the reply to call 42, got {:?}", frame_kind(&other)),
        }
    })
    .await;
}

fn frame_kind<R>(f: &Frame<(), R>) -> String {
    match f {
        Frame::Error { id, error } => format!("Error {{ id: {id}, error: {error:?} }}"),
        other => format!("{:?} {{ id: {} }}", other.kind(), other.id()),
    }
}

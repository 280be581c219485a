//! Hostile peers against a real server process: decode bombs, trickled frames, silent
//! connections, a client that never reads, reused call ids, a bad configuration, and
//! exhausted file descriptors. In each, the offending connection or call gets a specific
//! error, the server stays up, memory stays inside its budget, and a canary client calling
//! every 50 ms throughout sees no error and no long stall.

use std::time::Duration;

use pipe_rpc_tests::raw::{
    expect_told_and_closed, frames_until_closed, raw_connect, raw_handshake, read_frame, split_abort, write_frame,
};
use pipe_rpc_tests::{
    CANARY_STALL, Canary, ProbeRequest, ProbeResponse, ServerProcess, TagStats, Tree, connect, unique_name, watchdog,
};
use rpc_core::codec::Codec;
use rpc_core::wire::{Frame, Kind};
use rpc_core::{ServerError, ServerErrorKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

fn call_frame(id: u64, body: ProbeRequest) -> Vec<u8> {
    Frame::<ProbeRequest, ()>::Call { id, timeout_us: 20_000_000, body }
        .encode(Codec::Bincode, 1 << 22)
        .unwrap()
        .to_vec()
}

/// bincode's varint length prefix.
fn varint(n: u64) -> Vec<u8> {
    match n {
        0..=250 => vec![n as u8],
        251..=0xffff => [&[251u8][..], &(n as u16).to_le_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[252u8][..], &(n as u32).to_le_bytes()].concat(),
        _ => [&[253u8][..], &n.to_le_bytes()].concat(),
    }
}

/// A call frame whose body is `request` (encoded with an empty collection as its last
/// byte) with that empty collection replaced by `len` followed by `items`: a declared
/// length the encoder would never write.
fn forged_call(id: u64, request: ProbeRequest, len: u64, items: &[u8]) -> Vec<u8> {
    let mut frame = call_frame(id, request);
    assert_eq!(frame.pop(), Some(0), "the request ends in an empty collection");
    frame.extend_from_slice(&varint(len));
    frame.extend_from_slice(items);
    frame
}

/// Reads frames until the answer to `id`, which must be an `Error` frame; returns it.
async fn error_for(io: &mut rpc_core::pipe::PipeStream, id: u64) -> ServerError {
    loop {
        let f = read_frame(io).await;
        match Frame::<(), ProbeResponse>::decode(Codec::Bincode, &f) {
            Ok(Frame::Error { id: got, error }) if got == id => return error,
            Ok(Frame::Reply { id: got, .. }) if got == id => panic!("call {id} was answered"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decode_bombs_fail_only_their_call_within_the_memory_budget_and_the_server_goes_on() {
    watchdog(async {
        let name = unique_name!();
        let server = ServerProcess::spawn(EXE, &name, &[]).await;
        let canary = Canary::start(&name).await;
        let peak_before = pipe_rpc_tests::proc_status_kib(server.pid(), "VmHWM:");
        let mut io = raw_handshake(&name).await;

        // 1 MiB of `None`s, each about 1 KiB in memory: over 1 GiB decoded unbounded.
        let n = 1 << 20;
        write_frame(&mut io, &forged_call(1, ProbeRequest::CountBlobs { v: vec![] }, n, &vec![0u8; n as usize])).await;
        let e = error_for(&mut io, 1).await;
        assert_eq!(e.kind, ServerErrorKind::BadRequest, "{e}");
        assert!(e.detail.contains("would allocate more than") && e.detail.contains("16x"), "{e}");

        // A few bytes declaring 2^60 items of a zero-sized type: a spin without a budget.
        write_frame(&mut io, &forged_call(2, ProbeRequest::CountUnits { v: vec![] }, 1 << 60, &[])).await;
        let e = error_for(&mut io, 2).await;
        assert!(e.detail.contains("would allocate more than"), "{e}");

        // 100 000 levels of a recursive type: a stack overflow without a depth limit.
        let mut body = call_frame(3, ProbeRequest::TreeDepth { t: Tree::Leaf });
        assert_eq!(body.pop(), Some(0), "Leaf is variant 0");
        body.extend(std::iter::repeat_n(1u8, 100_000));
        body.push(0);
        write_frame(&mut io, &body).await;
        let e = error_for(&mut io, 3).await;
        assert!(e.detail.contains("nests deeper than 64 levels"), "{e}");

        // The same connection, and typed clients, go on; values within the limits decode.
        write_frame(&mut io, &call_frame(4, ProbeRequest::CountUnits { v: vec![(); 1000] })).await;
        let reply = read_frame(&mut io).await;
        assert!(matches!(
            Frame::<(), ProbeResponse>::decode(Codec::Bincode, &reply),
            Ok(Frame::Reply { id: 4, body: ProbeResponse::CountUnits(1000) })
        ));
        let c = connect(&name).await;
        assert_eq!(c.tree_depth(Tree::of_depth(20)).await.unwrap(), 20);
        assert_eq!(c.count_blobs(vec![None, Some([[7; 32]; 32]), None]).await.unwrap(), 1);
        if let (Some(before), Some(after)) = (peak_before, pipe_rpc_tests::proc_status_kib(server.pid(), "VmHWM:")) {
            // Budget for the 1 MiB frame: 16 MiB + 64 KiB, and up to twice that while a
            // vector grows. Unbounded, the first bomb alone took over 1 GiB.
            let grew = after.saturating_sub(before);
            eprintln!("server peak resident memory grew by {grew} KiB");
            assert!(grew < 80 * 1024, "the server's peak memory grew by {grew} KiB");
        } else {
            eprintln!("no /proc here: the memory bound is checked by rpc-core's decode_budget tests only");
        }
        canary.finish(CANARY_STALL).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_frames_hold_only_what_arrived_and_are_closed_at_the_frame_read_timeout() {
    watchdog(async {
        let name = unique_name!();
        let server =
            ServerProcess::spawn(EXE, &name, &["--frame-read-timeout-ms", "1500", "--max-message", "16777216"]).await;
        let canary = Canary::start(&name).await;
        let peak_before = pipe_rpc_tests::proc_status_kib(server.pid(), "VmPeak:");
        // Each claims a frame just under the 16 MiB limit, then sends a sliver of it.
        let mut conns = Vec::new();
        for _ in 0..60 {
            let mut io = raw_handshake(&name).await;
            io.write_all(&((16 << 20) - 1u32).to_be_bytes()).await.unwrap();
            io.write_all(&[0u8; 100]).await.unwrap();
            io.flush().await.unwrap();
            conns.push(io);
        }
        for io in &mut conns {
            let why = expect_told_and_closed(io, "a trickled frame").await;
            assert!(why.contains("left a frame unfinished") && why.contains("frame_read_timeout"), "{why}");
        }
        if let (Some(before), Some(after)) = (peak_before, pipe_rpc_tests::proc_status_kib(server.pid(), "VmPeak:")) {
            // Reserving each declared size would be 960 MiB of address space; reading only
            // what arrives (plus 64 KiB ahead) is a few MiB, plus up to a malloc arena or two
            // (64 MiB of address space each) for threads that start meanwhile.
            let grew = after.saturating_sub(before);
            eprintln!("server peak virtual memory grew by {grew} KiB");
            assert!(grew < 300 * 1024, "the server's peak virtual memory grew by {grew} KiB");
        }
        canary.finish(CANARY_STALL).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_speak_cannot_keep_a_client_out() {
    watchdog(async {
        let name = unique_name!();
        // Few places, and a handshake timeout far longer than the test: only eviction
        // (and not counting handshakes as connections) can let the client in.
        let args = ["--max-handshaking", "8", "--max-connections", "8", "--handshake-timeout-ms", "60000"];
        let _server = ServerProcess::spawn(EXE, &name, &args).await;
        let mut silent = Vec::new();
        for _ in 0..30 {
            silent.push(raw_connect(&name).await);
        }
        let c = connect(&name).await;
        assert_eq!(c.echo_string("let in".into()).await.unwrap(), "let in");
        // The oldest silent connection was closed to make room.
        let mut buf = [0u8; 64];
        let n = silent[0].read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "the evicted connection got {:?}", &buf[..n]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_replies_is_closed_at_the_write_stall_timeout() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &["--write-stall-ms", "1000"]).await;
        let canary = Canary::start(&name).await;
        let mut io = raw_handshake(&name).await;
        // 4 MiB of replies, far more than a pipe buffers.
        let calls = 32;
        for id in 1..=calls {
            // Echoes: replies that cost the server a copy, not CPU work of their own.
            let body = ProbeRequest::EchoBytes { b: serde_bytes::ByteBuf::from(vec![7u8; 128 << 10]) };
            write_frame(&mut io, &call_frame(id, body)).await;
        }
        // The scenario itself: a client that does not read for three times the limit.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let frames = tokio::time::timeout(Duration::from_secs(10), frames_until_closed(&mut io))
            .await
            .expect("the server kept the connection of a client that does not read");
        let replies = frames.iter().filter(|f| f[0] == Kind::Reply.code()).count() as u64;
        assert!(replies < calls, "all {replies} replies were delivered: the connection was not closed");
        canary.finish(CANARY_STALL).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_call_id_closes_the_connection_and_no_id_gets_two_answers() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let canary = Canary::start(&name).await;
        let mut io = raw_handshake(&name).await;
        write_frame(&mut io, &call_frame(7, ProbeRequest::SleepMs { tag: 1, ms: 300 })).await;
        write_frame(&mut io, &call_frame(7, ProbeRequest::EchoString { s: "again".into() })).await;
        let (frames, why) = split_abort(frames_until_closed(&mut io).await);
        let why = why.expect("an abort saying why");
        assert!(why.contains("id 7") && why.contains("still open"), "{why}");
        assert!(frames.is_empty(), "answered after the id was reused: {frames:?}");
        canary.finish(CANARY_STALL).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_calls_in_flight_set_through_the_public_field_still_serves_calls() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &["--max-in-flight-field", "0"]).await;
        let c = connect(&name).await;
        assert_eq!(c.echo_string("served".into()).await.unwrap(), "served");
        assert_eq!(c.divide(9, 3).await.unwrap(), 3);
    })
    .await;
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_file_descriptors_do_not_stop_the_server() {
    watchdog(async {
        if std::process::Command::new("prlimit").arg("--version").output().is_err() {
            eprintln!("skipped: prlimit (util-linux) is not installed");
            return;
        }
        let name = unique_name!();
        let server = ServerProcess::spawn_via(&["prlimit", "--nofile=48"], EXE, &name, &[]).await;
        let canary = Canary::start(&name).await;
        // More connections than the server has descriptors: its accepts fail (EMFILE)
        // while these are open.
        let mut flood = Vec::new();
        for _ in 0..80 {
            flood.push(raw_connect(&name).await);
        }
        // Let the server hit the wall a few times, with the canary calling throughout.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drop(flood);
        let c = connect(&name).await;
        assert_eq!(c.pid().await.unwrap(), server.pid(), "the same server process serves");
        canary.finish(CANARY_STALL).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_a_handler_spawns_through_the_context_end_with_its_call() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let canary = Canary::start(&name).await;
        let c = connect(&name).await;
        // Call, then give up (the deadline), in a loop: every spawned task must go with
        // its call, not pile up on the server.
        let quick = c.with_timeout(Duration::from_millis(50));
        for _ in 0..20 {
            let e = quick.spawned_sleep(1, 60_000).await.unwrap_err();
            assert!(e.is_deadline_exceeded(), "{e}");
        }
        let stats = pipe_rpc_tests::wait_stats(&c, 1, TagStats::min_dropped(20)).await;
        assert_eq!((stats.started, stats.dropped_unfinished, stats.running), (20, 20, 0), "{stats:?}");
        // A call that waits for its task gets its result.
        assert_eq!(c.spawned_sleep(2, 5).await.unwrap(), 2);
        assert_eq!(c.stats(2).await.unwrap().finished, 1);
        canary.finish(CANARY_STALL).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_work_of_cancelled_calls_stays_within_the_in_flight_limit() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &["--max-in-flight", "4"]).await;
        let c = connect(&name).await;
        // Each call gives up long before its blocking work ends, freeing its call slot;
        // the work itself keeps its place until it returns.
        let quick = c.with_timeout(Duration::from_millis(20));
        for _ in 0..40 {
            let e = quick.blocking_sleep(3, 200).await.unwrap_err();
            assert!(e.is_deadline_exceeded(), "{e}");
        }
        // Waits for a place, so for the work before it.
        assert_eq!(c.blocking_sleep(3, 0).await.unwrap(), 3);
        let stats = c.stats(3).await.unwrap();
        assert!(stats.started >= 4, "{stats:?}");
        assert!(stats.max_concurrent <= 4, "more blocking closures ran at once than the in-flight limit: {stats:?}");
    })
    .await;
}

/// A hostile server, played by the test: accepts one client on `name`, completes the
/// handshake like a real `Probe` server, reads the client's first call, and hands the
/// pipe and that call's id to `then`.
async fn fake_server<F, Fut>(name: &rpc_core::PipeName, then: F) -> tokio::task::JoinHandle<()>
where
    F: FnOnce(rpc_core::pipe::PipeStream, u64) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    use pipe_rpc_tests::ProbeClient;
    use rpc_core::wire::{HandshakeStatus, Hello, Welcome};
    let listener = rpc_core::pipe::PipeListener::bind(name.clone()).unwrap();
    tokio::spawn(async move {
        let mut io = listener.accept().await.unwrap();
        let hello = Hello::decode(&read_frame(&mut io).await).unwrap();
        let welcome = Welcome {
            method_status: Vec::new(),
            codecs: 0,
            features: 0,
            methods: Vec::new(),
            version: hello.version,
            capabilities: 0,
            max_in_flight: 16,
            max_oneway: 16,
            stream_window: 1 << 18,
            status: HandshakeStatus::Ok,
            codec: hello.codec,
            max_message: 1 << 22,
            fingerprint: ProbeClient::ID.fingerprint,
            server_pid: std::process::id(),
            service: ProbeClient::ID.name.to_owned(),
            message: String::new(),
        };
        write_frame(&mut io, &welcome.encode()).await;
        let call = read_frame(&mut io).await;
        let id = u64::from_le_bytes(call[2..10].try_into().unwrap());
        then(io, id).await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_declaring_2_pow_60_items_fails_only_its_call_on_the_client() {
    watchdog(async {
        let name = unique_name!();
        let server = fake_server(&name, |mut io, id| async move {
            // `notes` returns a `Vec<u64>`: declare 2^60 of them in a few bytes.
            let mut reply = Frame::<(), ProbeResponse>::Reply { id, body: ProbeResponse::Notes(vec![]) }
                .encode(Codec::Bincode, 1 << 20)
                .unwrap()
                .to_vec();
            assert_eq!(reply.pop(), Some(0));
            reply.extend_from_slice(&varint(1 << 60));
            write_frame(&mut io, &reply).await;
            // The next call is answered properly: the connection must still be good.
            let next = read_frame(&mut io).await;
            let id = u64::from_le_bytes(next[2..10].try_into().unwrap());
            let good = Frame::<(), ProbeResponse>::Reply { id, body: ProbeResponse::EchoString("fine".into()) };
            write_frame(&mut io, &good.encode(Codec::Bincode, 1 << 20).unwrap()).await;
            let _ = frames_until_closed(&mut io).await;
        })
        .await;
        let c = connect(&name).await;
        let e = c.notes(1).await.unwrap_err();
        assert!(e.to_string().contains("malformed response"), "{e}");
        assert_eq!(c.echo_string("x".into()).await.unwrap(), "fine");
        drop(c);
        server.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_leaves_a_reply_half_sent_fails_the_client_at_its_frame_read_timeout() {
    watchdog(async {
        let name = unique_name!();
        let server = fake_server(&name, |mut io, _id| async move {
            // A header promising a large reply, and a sliver of it.
            io.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
            io.write_all(&[4u8; 10]).await.unwrap();
            io.flush().await.unwrap();
            // The client must give up on its own; then it says why.
            let (_, why) = split_abort(frames_until_closed(&mut io).await);
            let why = why.expect("the client's abort");
            assert!(why.contains("left a frame unfinished"), "{why}");
        })
        .await;
        let config = pipe_rpc_tests::client_config().frame_read_timeout(Duration::from_millis(500));
        let c = pipe_rpc_tests::ProbeClient::connect_with(name.clone(), config).await.unwrap();
        let e = c.with_timeout(Duration::from_secs(20)).echo_string("x".into()).await.unwrap_err();
        assert!(
            matches!(e.transport(), Some(rpc_core::TransportError::Stalled { .. })),
            "the call failed with {e} instead of the stall"
        );
        server.await.unwrap();
    })
    .await;
}

//! Batches on the wire, across processes: many frames in one pipe message when both ends
//! announced `caps::BATCH`, read exactly like frames sent alone; never sent to a peer that
//! did not announce them; and a malformed batch closes only its own connection.

use pipe_rpc_tests::raw::{
    frames_until_closed, raw_handshake, raw_handshake_with, read_frame, split_abort, write_frame,
};
use pipe_rpc_tests::{ProbeClient, ProbeRequest, ProbeResponse, ServerProcess, connect, unique_name, watchdog};
use rpc_core::codec::Codec;
use rpc_core::wire::{BATCH_ENTRY_LEN, Frame, HEADER_LEN, Kind, caps, split_batch};

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

fn encode(f: Frame<ProbeRequest, ()>) -> Vec<u8> {
    f.encode(Codec::Bincode, 1 << 20).unwrap().to_vec()
}

fn call(id: u64, s: &str) -> Vec<u8> {
    encode(Frame::Call { id, timeout_us: 10_000_000, body: ProbeRequest::EchoString { s: s.into() } })
}

/// A `Batch` message holding `entries` as they are (each a length-prefixed frame).
fn batch(entries: &[u8]) -> Vec<u8> {
    let mut m = vec![0u8; HEADER_LEN];
    m[0] = Kind::Batch.code();
    m.extend_from_slice(entries);
    m
}

/// One batch entry: `frame` after its length.
fn entry(frame: &[u8]) -> Vec<u8> {
    let mut e = u32::try_from(frame.len()).unwrap().to_le_bytes().to_vec();
    e.extend_from_slice(frame);
    e
}

/// The frames in one message from the server: a batch's, or the message itself.
fn frames_of(message: &[u8]) -> Vec<Frame<(), ProbeResponse>> {
    let frames = if message[0] == Kind::Batch.code() { split_batch(message).unwrap() } else { vec![message] };
    frames.into_iter().map(|f| Frame::decode(Codec::Bincode, f).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calls_of_one_batch_are_each_answered_in_order() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let mut io = raw_handshake_with(&name, caps::SUPPORTED).await;
        let entries: Vec<u8> = (1..=3).flat_map(|i| entry(&call(i, &format!("call {i}")))).collect();
        write_frame(&mut io, &batch(&entries)).await;
        let mut replies = Vec::new();
        while replies.len() < 3 {
            replies.extend(frames_of(&read_frame(&mut io).await));
        }
        let got: Vec<(u64, String)> = replies
            .into_iter()
            .map(|f| match f {
                Frame::Reply { id, body: ProbeResponse::EchoString(s) } => (id, s),
                other => panic!("expected a reply, got a {:?} frame", other.kind()),
            })
            .collect();
        assert_eq!(got, (1..=3).map(|i| (i, format!("call {i}"))).collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_answers_come_in_batches_to_a_peer_that_announced_them() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let mut io = raw_handshake_with(&name, caps::SUPPORTED).await;
        // 200 calls in one batch: the server reads them in one go, so it answers several
        // in the same pass and packs them.
        let entries: Vec<u8> = (1..=200).flat_map(|i| entry(&call(i, "x"))).collect();
        write_frame(&mut io, &batch(&entries)).await;
        let (mut answered, mut batches) = (Vec::new(), 0);
        while answered.len() < 200 {
            let message = read_frame(&mut io).await;
            batches += usize::from(message[0] == Kind::Batch.code());
            answered.extend(frames_of(&message).iter().map(Frame::id));
        }
        answered.sort_unstable();
        assert_eq!(answered, (1..=200).collect::<Vec<_>>());
        assert!(batches > 0, "200 answers, none of them batched");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_did_not_announce_batches_gets_every_frame_alone() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let mut io = raw_handshake(&name).await;
        for i in 1..=200 {
            write_frame(&mut io, &call(i, "x")).await;
        }
        let mut answered = Vec::new();
        while answered.len() < 200 {
            let message = read_frame(&mut io).await;
            assert_eq!(message[0], Kind::Reply.code(), "a {:#x} message to a peer without batches", message[0]);
            match Frame::<(), ProbeResponse>::decode(Codec::Bincode, &message).unwrap() {
                Frame::Reply { id, .. } => answered.push(id),
                other => panic!("expected a reply, got a {:?} frame", other.kind()),
            }
        }
        answered.sort_unstable();
        assert_eq!(answered, (1..=200).collect::<Vec<_>>());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_batches_close_only_their_own_connection_with_an_abort_saying_why() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let bystander = connect(&name).await;
        let good = entry(&call(1, "never answered"));
        let mut truncated_len = good.clone();
        truncated_len.extend_from_slice(&[9, 0]);
        let mut past_the_end = good.clone();
        past_the_end.extend_from_slice(&entry(&call(2, "y"))[..BATCH_ENTRY_LEN + 3]);
        let mut zero_length = good.clone();
        zero_length.extend_from_slice(&0u32.to_le_bytes());
        let nested = [good.clone(), entry(&batch(&good))].concat();
        let cases: [(&str, Vec<u8>); 5] = [
            ("an empty batch", batch(&[])),
            ("a batch ending in half a length", batch(&truncated_len)),
            ("an entry longer than the rest of the batch", batch(&past_the_end)),
            ("an entry of zero bytes", batch(&zero_length)),
            ("a batch inside a batch", batch(&nested)),
        ];
        for (what, message) in cases {
            let mut io = raw_handshake_with(&name, caps::SUPPORTED).await;
            write_frame(&mut io, &message).await;
            // The connection closes; a call before the fault may or may not be answered
            // first, but nothing after it is.
            let (frames, why) = split_abort(frames_until_closed(&mut io).await);
            let why = why.unwrap_or_else(|| panic!("{what}: closed without an abort"));
            assert!(why.contains("batch"), "{what}: {why}");
            for f in &frames {
                let ids: Vec<u64> = frames_of(f).iter().map(Frame::id).collect();
                assert!(ids.iter().all(|&id| id == 1), "{what}: answered {ids:?}");
            }
            assert_eq!(bystander.echo_string(what.into()).await.unwrap(), what, "after {what}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_from_a_peer_that_did_not_announce_batches_closes_its_connection_with_an_abort() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        let mut io = raw_handshake(&name).await;
        write_frame(&mut io, &batch(&entry(&call(1, "x")))).await;
        let (frames, why) = split_abort(frames_until_closed(&mut io).await);
        assert!(frames.is_empty(), "a batch was read without the capability");
        let why = why.expect("an abort saying why");
        assert!(why.contains("a Batch frame, which this connection did not negotiate"), "{why}");
        let c: ProbeClient = connect(&name).await;
        assert_eq!(c.echo_string("still serving".into()).await.unwrap(), "still serving");
    })
    .await;
}

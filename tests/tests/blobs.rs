//! `rpc_core::Blob` across processes: arguments, replies and stream items of every size
//! around the zero-copy threshold (below it a blob is copied into its frame, from it on
//! the frame is written around the blob's own memory, past the largest frame sent whole a
//! stream item goes in pieces), in every codec, each byte checked against a pattern that
//! counts offsets across items, so a part written twice, dropped or out of order shows.

use futures::StreamExt;
use pipe_rpc_tests::{ServerProcess, client_config, connect, pattern_byte, unique_name, watchdog};
use rpc_core::{Blob, Codec, RpcStream};

const EXE: &str = env!("CARGO_BIN_EXE_test-server");

/// `len` bytes of the pattern from offset `from`.
fn pattern(from: usize, len: usize) -> Blob {
    Blob::from((from..from + len).map(pattern_byte).collect::<Vec<u8>>())
}

/// Sizes on both sides of each threshold: the zero-copy one, a 64 KiB piece, the largest
/// frame sent whole (128 KiB), and well past it.
fn sizes() -> Vec<usize> {
    let z = Blob::ZERO_COPY_MIN;
    vec![0, 1, z - 1, z, z + 1, 64 << 10, (128 << 10) - 40, (128 << 10) + 1, 1 << 20]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_of_every_size_echo_back_byte_for_byte_in_every_codec() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        for codec in [Codec::Bincode, Codec::Postcard, Codec::Json] {
            let c =
                pipe_rpc_tests::ProbeClient::connect_with(name.clone(), client_config().codec(codec)).await.unwrap();
            for (i, len) in sizes().into_iter().enumerate() {
                // JSON spells each byte as a number: keep its largest message small.
                if codec == Codec::Json && len > 200 << 10 {
                    continue;
                }
                let sent = pattern(i * 7, len);
                let back = c.echo_blob(sent.clone()).await.unwrap_or_else(|e| panic!("{codec:?}, {len} B: {e}"));
                assert!(back == sent, "{codec:?}: a {len}-byte blob came back changed");
            }
            // A blob as a plain byte buffer on the other side (same wire form).
            let sent = pattern(3, Blob::ZERO_COPY_MIN + 9);
            let back = c.echo_bytes(serde_bytes::ByteBuf::from(sent.to_vec())).await.unwrap();
            assert_eq!(&back[..], &sent[..], "{codec:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_streams_carry_every_byte_in_order_both_ways_while_calls_interleave() {
    watchdog(async {
        let name = unique_name!();
        let _server = ServerProcess::spawn(EXE, &name, &[]).await;
        for codec in [Codec::Bincode, Codec::Postcard] {
            let c =
                pipe_rpc_tests::ProbeClient::connect_with(name.clone(), client_config().codec(codec)).await.unwrap();
            // Down: 16 MiB in 64 KiB + 5 items, with calls on the same pipe meanwhile.
            let size = (64 << 10) + 5;
            let n = 256;
            let mut items = c.blob_stream(n as u64, size as u64).await.unwrap();
            let mut offset = 0;
            let mut received = 0;
            while let Some(item) = items.next().await {
                let item = item.unwrap();
                assert_eq!(item.len(), size, "{codec:?}: item {received}");
                assert!(item == pattern(offset, size), "{codec:?}: item {received} differs from the pattern");
                offset += size;
                received += 1;
                if received % 32 == 0 {
                    assert_eq!(c.echo_string(format!("call {received}")).await.unwrap(), format!("call {received}"));
                }
            }
            assert_eq!(received, n, "{codec:?}: the stream ended early");

            // Up: every size, offsets continuing across items.
            let mut offset = 0;
            let items: Vec<Blob> = sizes()
                .into_iter()
                .cycle()
                .take(40)
                .map(|len| {
                    let b = pattern(offset, len);
                    offset += len;
                    b
                })
                .collect();
            let (len, ok) = c.upload_blobs(RpcStream::iter(items)).await.unwrap();
            assert_eq!(len, offset as u64, "{codec:?}: bytes the handler counted");
            assert!(ok, "{codec:?}: the handler saw bytes out of the pattern");
        }
        // The same server, a plain client afterwards: nothing left over.
        assert_eq!(connect(&name).await.echo_string("after".into()).await.unwrap(), "after");
    })
    .await;
}

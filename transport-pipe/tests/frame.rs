//! Framing limits on encode and decode, and the serde transport on top.

mod support;

use std::{io, pin::Pin};

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use support::{unique_name, watchdog};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Framed;
use transport_pipe::{
    ConnectOptions, PipeListener, connect, length_delimited, length_delimited_codec, serde_transport,
};

#[tokio::test]
async fn oversized_frame_is_rejected_on_encode_and_nothing_is_written() {
    watchdog(async {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut framed = length_delimited(a, 16);
        let err = framed.send(Bytes::from(vec![1u8; 17])).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // A frame at the limit still goes through, right after the rejected one.
        framed.send(Bytes::from(vec![2u8; 16])).await.unwrap();
        drop(framed);
        let mut wire = Vec::new();
        b.read_to_end(&mut wire).await.unwrap();
        let mut want = vec![0, 0, 0, 16];
        want.extend_from_slice(&[2u8; 16]);
        assert_eq!(wire, want, "only the accepted frame may reach the wire");
    })
    .await;
}

/// A header that declares more than `max_frame` is an error as soon as the header arrives,
/// and the declared length is never reserved (tokio-util reserves it for accepted headers).
#[tokio::test]
async fn oversized_header_is_rejected_on_decode_without_reserving() {
    watchdog(async {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut framed = length_delimited(a, 1024);
        b.write_all(&(64u32 << 20).to_be_bytes()).await.unwrap();
        let err = framed.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(framed.read_buffer().capacity() < 1 << 20, "reserved {} bytes", framed.read_buffer().capacity());
    })
    .await;
}

#[tokio::test]
async fn frame_at_the_limit_decodes_and_one_over_does_not() {
    watchdog(async {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut framed = length_delimited(a, 8);
        b.write_all(&[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]).await.unwrap();
        assert_eq!(&framed.next().await.unwrap().unwrap()[..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        b.write_all(&[0, 0, 0, 9]).await.unwrap();
        assert!(framed.next().await.unwrap().is_err());
    })
    .await;
}

/// A minimal tokio-serde codec for the test (bincode 1).
struct Bin;

impl<T: Serialize> tokio_serde::Serializer<T> for Bin {
    type Error = io::Error;
    fn serialize(self: Pin<&mut Self>, item: &T) -> Result<Bytes, io::Error> {
        bincode::serialize(item).map(Bytes::from).map_err(io::Error::other)
    }
}

impl<T: for<'de> Deserialize<'de>> tokio_serde::Deserializer<T> for Bin {
    type Error = io::Error;
    fn deserialize(self: Pin<&mut Self>, src: &BytesMut) -> Result<T, io::Error> {
        bincode::deserialize(src).map_err(io::Error::other)
    }
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Msg {
    Add(i64, i64),
    Sum(i64),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serde_transport_round_trip_over_a_pipe() {
    watchdog(async {
        let name = unique_name();
        let listener = PipeListener::bind(&name).unwrap();
        let server = tokio::spawn(async move {
            let io = listener.accept().await.unwrap();
            let mut t = serde_transport::<_, Msg, Msg, _>(Framed::new(io, length_delimited_codec(4096)), Bin);
            while let Some(msg) = t.next().await {
                if let Msg::Add(a, b) = msg.unwrap() {
                    t.send(Msg::Sum(a + b)).await.unwrap();
                }
            }
        });
        let io = connect(&name, &ConnectOptions::default()).await.unwrap();
        let mut t = serde_transport::<_, Msg, Msg, _>(Framed::new(io, length_delimited_codec(4096)), Bin);
        t.send(Msg::Add(2, 40)).await.unwrap();
        assert_eq!(t.next().await.unwrap().unwrap(), Msg::Sum(42));
        drop(t);
        server.await.unwrap();
    })
    .await;
}

//! A raw client for tests that write frames by hand: the handshake done by hand, then
//! length-delimited frames in and out.

use std::time::Duration;

use rpc_core::codec::Codec;
use rpc_core::pipe::{ConnectOptions, PipeStream};
use rpc_core::wire::{HandshakeStatus, Hello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Welcome, caps};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ProbeClient;

/// Writes one length-delimited frame.
pub async fn write_frame(io: &mut PipeStream, body: &[u8]) {
    io.write_all(&u32::try_from(body.len()).unwrap().to_be_bytes()).await.unwrap();
    io.write_all(body).await.unwrap();
    io.flush().await.unwrap();
}

/// Writes raw bytes (frames already length-prefixed), reporting a pipe the peer closed
/// instead of panicking.
pub async fn write_all_checked(io: &mut PipeStream, bytes: &[u8]) -> std::io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// Reads one length-delimited frame.
pub async fn read_frame(io: &mut PipeStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await.expect("read a frame length");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    io.read_exact(&mut body).await.expect("read a frame body");
    body
}

/// Reads until the server closes the connection; panics if it sends anything.
pub async fn expect_closed(io: &mut PipeStream, what: &str) {
    let mut buf = [0u8; 256];
    match io.read(&mut buf).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("after {what} the server sent {:?} instead of closing", &buf[..n]),
    }
}

/// Reads until the server closes the connection and returns the reason its last frame
/// gave: an `Abort` frame after the handshake, or a `Welcome` refusing with
/// `ProtocolError` before it. Panics if the server closed without saying why.
pub async fn expect_told_and_closed(io: &mut PipeStream, what: &str) -> String {
    let frames = frames_until_closed(io).await;
    let Some(last) = frames.last() else { panic!("after {what} the server closed without a word") };
    if let Some(reason) = rpc_core::wire::read_abort(last) {
        return reason;
    }
    match Welcome::decode(last) {
        Ok(w) if w.status == HandshakeStatus::ProtocolError => w.message,
        other => panic!("after {what} the server's last frame was {last:?} ({other:?}), not an abort"),
    }
}

/// Splits the `Abort` frame off the end of `frames`: the frames before it, and its reason.
pub fn split_abort(mut frames: Vec<Vec<u8>>) -> (Vec<Vec<u8>>, Option<String>) {
    let reason = frames.last().and_then(|f| rpc_core::wire::read_abort(f));
    if reason.is_some() {
        frames.pop();
    }
    (frames, reason)
}

/// Connects to `name` without a handshake.
pub async fn raw_connect(name: &rpc_core::PipeName) -> PipeStream {
    rpc_core::pipe::connect(name.clone(), &ConnectOptions::default().timeout(Duration::from_secs(20))).await.unwrap()
}

/// A raw client that completed the handshake as `Probe`, announcing every capability but
/// batches (so each frame it reads is one frame).
pub async fn raw_handshake(name: &rpc_core::PipeName) -> PipeStream {
    raw_handshake_with(name, caps::SUPPORTED & !caps::BATCH).await
}

/// Reads frames until the server closes the connection; returns them.
pub async fn frames_until_closed(io: &mut PipeStream) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if io.read_exact(&mut len).await.is_err() {
            return frames;
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        if io.read_exact(&mut body).await.is_err() {
            return frames;
        }
        frames.push(body);
    }
}

/// A raw client that completed the handshake as `Probe`, announcing `capabilities`.
pub async fn raw_handshake_with(name: &rpc_core::PipeName, capabilities: u32) -> PipeStream {
    let mut io = raw_connect(name).await;
    let hello = Hello {
        methods: Vec::new(),
        flags: 0,
        version: PROTOCOL_VERSION,
        min_version: MIN_PROTOCOL_VERSION,
        capabilities,
        stream_window: 1 << 18,
        codec: Codec::Bincode.id(),
        max_message: 1 << 20,
        fingerprint: ProbeClient::ID.fingerprint,
        service: ProbeClient::ID.name.to_owned(),
    };
    write_frame(&mut io, &hello.encode()).await;
    let welcome = Welcome::decode(&read_frame(&mut io).await).unwrap();
    assert_eq!(welcome.status, HandshakeStatus::Ok, "{welcome:?}");
    io
}

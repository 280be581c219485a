//! The wire protocol: a handshake, then frames.
//!
//! Every message is one length-delimited frame (4-byte big-endian length, then the body),
//! carried by a `tokio_serde` transport over `transport_pipe::LengthPrefixed` framing.
//!
//! 1. **Handshake** (fixed binary layout, codec-independent, so a mismatch of codec or
//!    version is reported instead of misread): the client sends [`Hello`], the server
//!    answers [`Welcome`]. They agree on a protocol version from both sides' ranges, on
//!    the capabilities both announce ([`caps`]), on the message limit and on the server's
//!    admission window. Only after a `Welcome` with [`HandshakeStatus::Ok`] do the two
//!    sides exchange frames.
//! 2. **Frames** ([`Frame`]): a fixed binary header (kind, flags, exchange id) and a body
//!    encoded by the negotiated [`Codec`]. Exchanges are matched by id, so many run at
//!    once on one pipe and complete in any order.
//!
//! Evolution: a new frame kind gets a new code, and is only sent to a peer whose
//! handshake announced the capability that covers it; a peer that receives a kind it did
//! not negotiate closes the connection as a protocol violation.

mod describe;
mod frame;

pub use describe::{MAX_DESCRIBED_ARGS, MAX_DESCRIBED_METHODS};

pub use frame::{BATCH_ENTRY_LEN, FLAG_MORE, FLAG_OPENER, Frame, FrameError, HEADER_LEN, Kind, Never, split_batch};
pub(crate) use frame::{decode_item_body, encode_item_append, item_header, next_in_batch};

use crate::codec::Codec;
use crate::introspect::MethodInfo;

/// The kind code of an `Abort` frame: the last frame an end sends before it closes a
/// connection because the peer broke the protocol or stalled. Header: this code, flags 0,
/// exchange id 0; body: the reason, UTF-8, at most [`ABORT_REASON_MAX`] bytes. It needs no
/// capability (a peer that does not know it closes the connection anyway) and is never
/// batched.
pub const ABORT: u8 = 17;

/// The kind code of a `Goodbye` frame: a server that finished draining tells a client that
/// announced [`caps::GOODBYE`] to close its end. Header only: this code, flags 0, exchange
/// id 0; never batched. The server runs no call from then on (calls the client made meanwhile
/// are not run), but still runs the one-way calls that arrive until the client's end of file,
/// so one-way calls a client flushed before the shutdown are never lost, on named pipes too
/// (which have no half-close to wait behind).
///
/// When both ends announced [`caps::GOODBYE_ACK`], the client answers with a `Goodbye` of its
/// own and then waits for the server to close first (at most a couple of seconds): everything
/// the client sent is before its answer on the pipe, so the server, having read up to it, has
/// run every one-way call, and closes. Without it the client closed at once, and a pipe whose
/// reader had not read everything yet when the writer closed could lose the rest (wine's named
/// pipes did: a server's read could report nothing more while the client's last flushed bytes
/// were still in transit).
pub const GOODBYE: u8 = 18;

/// A `Goodbye` frame.
pub fn goodbye_frame() -> bytes::Bytes {
    let mut frame = [0u8; HEADER_LEN];
    frame[0] = GOODBYE;
    bytes::Bytes::copy_from_slice(&frame)
}

/// True if `frame` is a `Goodbye` frame.
pub fn is_goodbye(frame: &[u8]) -> bool {
    frame.len() == HEADER_LEN && frame[0] == GOODBYE
}

/// Longest reason an `Abort` frame carries, in bytes.
pub const ABORT_REASON_MAX: usize = 1024;

/// An `Abort` frame saying `reason` (cut to [`ABORT_REASON_MAX`] bytes at a character
/// boundary).
pub fn abort_frame(reason: &str) -> bytes::Bytes {
    let mut end = reason.len().min(ABORT_REASON_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut frame = Vec::with_capacity(HEADER_LEN + end);
    frame.push(ABORT);
    frame.extend_from_slice(&[0; HEADER_LEN - 1]);
    frame.extend_from_slice(&reason.as_bytes()[..end]);
    bytes::Bytes::from(frame)
}

/// The reason in an `Abort` frame, if `frame` is one.
pub fn read_abort(frame: &[u8]) -> Option<String> {
    if frame.len() < HEADER_LEN || frame[0] != ABORT {
        return None;
    }
    let body = &frame[HEADER_LEN..];
    Some(String::from_utf8_lossy(&body[..body.len().min(ABORT_REASON_MAX)]).into_owned())
}

/// [`Hello::flags`] bit: a probe. The client does not name a service; the server answers
/// with a [`Welcome`] of status [`HandshakeStatus::Described`] saying what it is (and, with
/// introspection on, its methods), then closes. A server that predates the flag ignores it
/// and refuses the hello as a wrong service, which names the service too.
pub const HELLO_PROBE: u8 = 0x01;

/// [`Welcome::features`] bit: the server describes its methods to probes
/// ([`ServerConfig::introspection`](crate::ServerConfig::introspection)).
pub const FEATURE_INTROSPECTION: u32 = 1 << 0;

/// First bytes of both handshake messages.
pub const MAGIC: [u8; 4] = *b"PRPC";

/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;

/// The oldest protocol version this build speaks. Version 1 (bincode-encoded frame enums,
/// no capabilities) is not spoken any more.
pub const MIN_PROTOCOL_VERSION: u16 = 2;

/// Capability bits announced in the handshake. A frame kind outside the base set
/// (calls, cancels, replies, errors) is sent only when both ends announced its bit.
pub mod caps {
    /// One-way calls (`Kind::OneWay`) and their credits (`Kind::Credit`).
    pub const ONEWAY: u32 = 1 << 0;
    /// Streams in both directions (`Kind::UpItem` to `Kind::UpStop`).
    pub const STREAMS: u32 = 1 << 1;
    /// Callbacks: the server sends `Call` frames whose body is a [`CallbackCall`](super::CallbackCall).
    pub const CALLBACKS: u32 = 1 << 2;
    /// `Kind::Batch`: many frames in one pipe message. A peer that reads the wire itself
    /// can leave this bit out and get every frame on its own.
    pub const BATCH: u32 = 1 << 3;
    /// The server says goodbye ([`GOODBYE`](super::GOODBYE)) when it has drained, and the
    /// client closes its end.
    pub const GOODBYE: u32 = 1 << 4;
    /// Service evolution ([`crate::evolution`]): the hello carries the client's method
    /// table ([`Hello::methods`](super::Hello::methods)), the welcome says per method whether
    /// the server has it ([`Welcome::method_status`](super::Welcome::method_status)), and a
    /// fingerprint mismatch is no longer a refusal.
    pub const EVOLUTION: u32 = 1 << 5;
    /// The client answers the server's goodbye with one of its own after everything it
    /// sent, and the server closes first (see [`GOODBYE`](super::GOODBYE)).
    pub const GOODBYE_ACK: u32 = 1 << 6;
    /// The capabilities this build announces (a client without a method table, or a server
    /// without one, leaves [`EVOLUTION`] out).
    pub const SUPPORTED: u32 = ONEWAY | STREAMS | CALLBACKS | BATCH | GOODBYE | EVOLUTION | GOODBYE_ACK;
}

/// The body of a callback call (a `Call` frame from the server): the call it belongs to and
/// the callback's request, encoded with the connection's codec. The client answers with
/// the encoded response as a byte string.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CallbackCall {
    /// The client's call that handed the callback over.
    pub parent: u64,
    /// The callback trait's request enum, encoded.
    pub call: serde_bytes::ByteBuf,
}

/// Outcome of a handshake, sent in [`Welcome`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeStatus {
    /// Proceed.
    Ok,
    /// The server does not speak the client's protocol version.
    VersionUnsupported,
    /// The server serves another service.
    WrongService,
    /// Same service name, different method signatures.
    FingerprintMismatch,
    /// The server does not know the client's codec.
    CodecUnsupported,
    /// The server is at its connection limit.
    Overloaded,
    /// The server is shutting down.
    ShuttingDown,
    /// The server's access policy does not admit this client (the message names the rule).
    PermissionDenied,
    /// The client's hello was not a hello (bad magic, truncated, too large) or did not
    /// come in time; the message says which.
    ProtocolError,
    /// The answer to a probe ([`HELLO_PROBE`]): the server described itself and closes.
    Described,
}

impl HandshakeStatus {
    fn to_u8(self) -> u8 {
        match self {
            HandshakeStatus::Ok => 0,
            HandshakeStatus::VersionUnsupported => 1,
            HandshakeStatus::WrongService => 2,
            HandshakeStatus::FingerprintMismatch => 3,
            HandshakeStatus::CodecUnsupported => 4,
            HandshakeStatus::Overloaded => 5,
            HandshakeStatus::ShuttingDown => 6,
            HandshakeStatus::PermissionDenied => 7,
            HandshakeStatus::ProtocolError => 8,
            HandshakeStatus::Described => 9,
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => HandshakeStatus::Ok,
            1 => HandshakeStatus::VersionUnsupported,
            2 => HandshakeStatus::WrongService,
            3 => HandshakeStatus::FingerprintMismatch,
            4 => HandshakeStatus::CodecUnsupported,
            5 => HandshakeStatus::Overloaded,
            6 => HandshakeStatus::ShuttingDown,
            7 => HandshakeStatus::PermissionDenied,
            8 => HandshakeStatus::ProtocolError,
            9 => HandshakeStatus::Described,
            _ => return None,
        })
    }
}

/// The client's opening message.
///
/// Layout (little-endian): magic `PRPC`, version u16, codec u8, flags u8
/// ([`HELLO_PROBE`]; other bits zero, ignored by readers), max message u32, fingerprint u64,
/// service-name length u16, service name (UTF-8), min version u16, capabilities u32, stream
/// window u32. Later versions may append fields; readers ignore trailing bytes, and a reader
/// of a shorter (older) message takes `min_version = version`, no capabilities and no stream
/// window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Flag bits: [`HELLO_PROBE`]. Zero for a client that wants a session.
    pub flags: u8,
    /// The newest protocol version the client speaks.
    pub version: u16,
    /// The oldest protocol version the client speaks.
    pub min_version: u16,
    /// The client's capability bits ([`caps`]).
    pub capabilities: u32,
    /// Bytes of a server stream's items the client accepts before it gives credit.
    pub stream_window: u32,
    /// Codec id the client will use ([`Codec::id`]).
    pub codec: u8,
    /// Largest message the client accepts.
    pub max_message: u32,
    /// Service fingerprint the client was built with.
    pub fingerprint: u64,
    /// Service name the client wants.
    pub service: String,
    /// The client's methods, in declaration order, when it announces [`caps::EVOLUTION`]
    /// (at most [`MAX_HANDSHAKE_METHODS`]).
    pub methods: Vec<OfferedMethod>,
}

/// One method of the client's table in a [`Hello`] (see [`crate::evolution`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferedMethod {
    /// The method's name.
    pub name: String,
    /// Its shape hash.
    pub shape: u64,
    /// Whether it takes a stream.
    pub upload: bool,
}

/// Most methods a [`Hello`] or a [`Welcome`] carries in its evolution fields; a longer table
/// is refused as malformed (and a hello is at most 64 KiB anyway).
pub const MAX_HANDSHAKE_METHODS: usize = 4096;

/// The server's answer to [`Hello`].
///
/// Layout (little-endian): magic `PRPC`, version u16, status u8, codec u8, max message u32,
/// fingerprint u64, server process id u32, service-name length u16, service name,
/// message length u16, message (UTF-8, why a refusal happened), capabilities u32,
/// max in flight u32, max one-way u32, stream window u32, codecs u32 (bit `1 << id` per
/// codec the server accepts), features u32 ([`FEATURE_INTROSPECTION`]), then, in a
/// [`Described`](HandshakeStatus::Described) answer with introspection, the methods (see
/// `wire/describe.rs`). Readers ignore trailing bytes and read missing trailing fields as
/// zero (none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// The codecs the server accepts: bit `1 << id` per [`Codec::id`] (0: not said).
    pub codecs: u32,
    /// Feature bits ([`FEATURE_INTROSPECTION`]).
    pub features: u32,
    /// The server's methods: only in a [`Described`](HandshakeStatus::Described) answer of
    /// a server with [`FEATURE_INTROSPECTION`].
    pub methods: Vec<MethodInfo>,
    /// The protocol version chosen (on a version refusal: the newest the server speaks).
    pub version: u16,
    /// The capabilities in force: those both sides announced.
    pub capabilities: u32,
    /// Calls the server admits at once on this connection; the client holds further
    /// calls back until one is answered.
    pub max_in_flight: u32,
    /// One-way calls the client may send before the server grants more credit.
    pub max_oneway: u32,
    /// Bytes of a client stream's items the server accepts before it gives credit.
    pub stream_window: u32,
    /// Whether the connection proceeds.
    pub status: HandshakeStatus,
    /// Codec id the server will use (the client's, when status is Ok).
    pub codec: u8,
    /// Largest message the server accepts.
    pub max_message: u32,
    /// The server's service fingerprint.
    pub fingerprint: u64,
    /// The server's process id (informational).
    pub server_pid: u32,
    /// The server's service name.
    pub service: String,
    /// Human-readable reason for a refusal; empty on success.
    pub message: String,
    /// Per method of the client's [`Hello::methods`], in its order, what the server has:
    /// only in an [`Ok`](HandshakeStatus::Ok) answer with [`caps::EVOLUTION`] in force.
    pub method_status: Vec<crate::evolution::MethodStatus>,
}

/// A handshake message that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeDecodeError {
    /// The first bytes are not `PRPC`: the peer does not speak pipe-rpc.
    #[error("the peer is not a pipe-rpc endpoint (bad magic bytes {0:02x?})")]
    BadMagic(Vec<u8>),
    /// The message ended early or holds invalid text.
    #[error("malformed handshake: {0}")]
    Malformed(&'static str),
}

impl Hello {
    /// Encodes for the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(22 + self.service.len());
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        b.push(self.codec);
        b.push(self.flags);
        b.extend_from_slice(&self.max_message.to_le_bytes());
        b.extend_from_slice(&self.fingerprint.to_le_bytes());
        put_str(&mut b, &self.service);
        b.extend_from_slice(&self.min_version.to_le_bytes());
        b.extend_from_slice(&self.capabilities.to_le_bytes());
        b.extend_from_slice(&self.stream_window.to_le_bytes());
        if self.capabilities & caps::EVOLUTION != 0 {
            let methods = &self.methods[..self.methods.len().min(MAX_HANDSHAKE_METHODS)];
            b.extend_from_slice(&(methods.len() as u16).to_le_bytes());
            for m in methods {
                put_str(&mut b, &m.name);
                b.extend_from_slice(&m.shape.to_le_bytes());
                b.push(u8::from(m.upload));
            }
        }
        b
    }

    /// Decodes from the wire.
    pub fn decode(buf: &[u8]) -> Result<Self, HandshakeDecodeError> {
        let mut r = Reader::new(buf)?;
        let version = r.u16()?;
        let codec = r.u8()?;
        let flags = r.u8()?;
        let (max_message, fingerprint, service) = (r.u32()?, r.u64()?, r.str()?);
        let min_version = r.opt_u16()?.unwrap_or(version);
        let capabilities = r.opt_u32()?.unwrap_or(0);
        let stream_window = r.opt_u32()?.unwrap_or(0);
        let mut methods = Vec::new();
        if capabilities & caps::EVOLUTION != 0 {
            let n = r.count()?;
            for _ in 0..n {
                let (name, shape, flags) = (r.str()?, r.u64()?, r.u8()?);
                methods.push(OfferedMethod { name, shape, upload: flags & 1 != 0 });
            }
        }
        Ok(Hello {
            flags,
            version,
            min_version,
            capabilities,
            stream_window,
            codec,
            max_message,
            fingerprint,
            service,
            methods,
        })
    }
}

impl Welcome {
    /// Encodes for the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(30 + self.service.len() + self.message.len());
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        b.push(self.status.to_u8());
        b.push(self.codec);
        b.extend_from_slice(&self.max_message.to_le_bytes());
        b.extend_from_slice(&self.fingerprint.to_le_bytes());
        b.extend_from_slice(&self.server_pid.to_le_bytes());
        put_str(&mut b, &self.service);
        put_str(&mut b, &self.message);
        b.extend_from_slice(&self.capabilities.to_le_bytes());
        b.extend_from_slice(&self.max_in_flight.to_le_bytes());
        b.extend_from_slice(&self.max_oneway.to_le_bytes());
        b.extend_from_slice(&self.stream_window.to_le_bytes());
        b.extend_from_slice(&self.codecs.to_le_bytes());
        b.extend_from_slice(&self.features.to_le_bytes());
        if self.carries_methods() {
            describe::put_methods(&mut b, &self.methods);
        }
        if self.carries_method_status() {
            let status = &self.method_status[..self.method_status.len().min(MAX_HANDSHAKE_METHODS)];
            b.extend_from_slice(&(status.len() as u16).to_le_bytes());
            b.extend(status.iter().map(|s| s.to_u8()));
        }
        b
    }

    /// Whether the per-method answers follow (after the methods, if those are there).
    fn carries_method_status(&self) -> bool {
        self.status == HandshakeStatus::Ok && self.capabilities & caps::EVOLUTION != 0
    }

    /// Whether the methods follow the fixed fields.
    fn carries_methods(&self) -> bool {
        self.status == HandshakeStatus::Described && self.features & FEATURE_INTROSPECTION != 0
    }

    /// Decodes from the wire.
    pub fn decode(buf: &[u8]) -> Result<Self, HandshakeDecodeError> {
        let mut r = Reader::new(buf)?;
        let version = r.u16()?;
        let status = HandshakeStatus::from_u8(r.u8()?).ok_or(HandshakeDecodeError::Malformed("unknown status"))?;
        let (codec, max_message, fingerprint, server_pid) = (r.u8()?, r.u32()?, r.u64()?, r.u32()?);
        let (service, message) = (r.str()?, r.str()?);
        let capabilities = r.opt_u32()?.unwrap_or(0);
        let max_in_flight = r.opt_u32()?.unwrap_or(u32::MAX);
        let max_oneway = r.opt_u32()?.unwrap_or(0);
        let stream_window = r.opt_u32()?.unwrap_or(0);
        let codecs = r.opt_u32()?.unwrap_or(0);
        let features = r.opt_u32()?.unwrap_or(0);
        let mut welcome = Welcome {
            codecs,
            features,
            methods: Vec::new(),
            version,
            capabilities,
            max_in_flight,
            max_oneway,
            stream_window,
            status,
            codec,
            max_message,
            fingerprint,
            server_pid,
            service,
            message,
            method_status: Vec::new(),
        };
        if welcome.carries_methods() {
            welcome.methods = describe::read_methods(&mut r)?;
        }
        if welcome.carries_method_status() {
            let n = r.count()?;
            welcome.method_status = r.take(n)?.iter().map(|b| crate::evolution::MethodStatus::from_u8(*b)).collect();
        }
        Ok(welcome)
    }
}

/// The `Welcome::codecs` bits of `codecs`.
pub fn codec_bits(codecs: &[Codec]) -> u32 {
    codecs.iter().fold(0, |bits, c| bits | 1u32.checked_shl(u32::from(c.id())).unwrap_or(0))
}

/// Describes a codec id for messages.
pub(crate) fn codec_name(id: u8) -> String {
    Codec::from_id(id).map_or_else(|| format!("unknown codec #{id}"), |c| c.name().to_owned())
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    // Names and messages are short; cut at a char boundary rather than fail.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    b.extend_from_slice(&(end as u16).to_le_bytes());
    b.extend_from_slice(&s.as_bytes()[..end]);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Result<Self, HandshakeDecodeError> {
        if buf.len() < 4 || buf[..4] != MAGIC {
            return Err(HandshakeDecodeError::BadMagic(buf[..buf.len().min(4)].to_vec()));
        }
        Ok(Reader(&buf[4..]))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], HandshakeDecodeError> {
        if self.0.len() < n {
            return Err(HandshakeDecodeError::Malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, HandshakeDecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, HandshakeDecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, HandshakeDecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, HandshakeDecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    /// A trailing field that older peers do not send: `None` at the end of the message.
    fn opt_u16(&mut self) -> Result<Option<u16>, HandshakeDecodeError> {
        if self.0.is_empty() { Ok(None) } else { self.u16().map(Some) }
    }
    fn opt_u32(&mut self) -> Result<Option<u32>, HandshakeDecodeError> {
        if self.0.is_empty() { Ok(None) } else { self.u32().map(Some) }
    }
    /// The length of an evolution table, at most [`MAX_HANDSHAKE_METHODS`].
    fn count(&mut self) -> Result<usize, HandshakeDecodeError> {
        let n = self.u16()? as usize;
        if n > MAX_HANDSHAKE_METHODS {
            return Err(HandshakeDecodeError::Malformed("more methods than a handshake carries (4096)"));
        }
        Ok(n)
    }
    /// Bytes not read yet.
    fn remaining(&self) -> usize {
        self.0.len()
    }
    fn str(&mut self) -> Result<String, HandshakeDecodeError> {
        let n = self.u16()? as usize;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| HandshakeDecodeError::Malformed("invalid UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_ignores_trailing_fields() {
        let h = Hello {
            methods: Vec::new(),
            flags: 0,
            version: 3,
            min_version: 2,
            capabilities: 0b101,
            stream_window: 1 << 18,
            codec: 0,
            max_message: 4 << 20,
            fingerprint: 0xdead_beef_0102_0304,
            service: "WorkQueues".into(),
        };
        let mut bytes = h.encode();
        assert_eq!(Hello::decode(&bytes).unwrap(), h);
        bytes.extend_from_slice(b"future fields");
        assert_eq!(Hello::decode(&bytes).unwrap(), h);
    }

    #[test]
    fn welcome_round_trips() {
        let w = Welcome {
            method_status: Vec::new(),
            codecs: 0,
            features: 0,
            methods: Vec::new(),
            version: 2,
            capabilities: 1,
            max_in_flight: 128,
            max_oneway: 64,
            stream_window: 1 << 18,
            status: HandshakeStatus::FingerprintMismatch,
            codec: 1,
            max_message: 1024,
            fingerprint: 7,
            server_pid: 42,
            service: "S".into(),
            message: "différent".into(),
        };
        assert_eq!(Welcome::decode(&w.encode()).unwrap(), w);
    }

    #[test]
    fn a_hello_without_the_version_range_reads_as_one_version_without_capabilities() {
        let h = Hello {
            methods: Vec::new(),
            flags: 0,
            version: 1,
            min_version: 1,
            capabilities: 0,
            stream_window: 0,
            codec: 0,
            max_message: 10,
            fingerprint: 1,
            service: "S".into(),
        };
        let mut bytes = h.encode();
        bytes.truncate(bytes.len() - 10);
        assert_eq!(Hello::decode(&bytes).unwrap(), h);
    }

    fn described(methods: Vec<MethodInfo>, features: u32) -> Welcome {
        Welcome {
            method_status: Vec::new(),
            codecs: codec_bits(&Codec::ALL),
            features,
            methods,
            version: 2,
            capabilities: caps::SUPPORTED,
            max_in_flight: 128,
            max_oneway: 128,
            stream_window: 1 << 18,
            status: HandshakeStatus::Described,
            codec: 2,
            max_message: 4 << 20,
            fingerprint: 9,
            server_pid: 42,
            service: "Probe".into(),
            message: String::new(),
        }
    }

    fn sample_methods() -> Vec<MethodInfo> {
        use std::borrow::Cow;
        const ARGS: &[crate::introspect::ArgInfo] =
            &[crate::__private::arg_info("a", "u8"), crate::__private::arg_info("b", "Vec<String>")];
        vec![
            crate::__private::method_info("call", "Call", ARGS, "u8", crate::introspect::MethodShape::CALL, "Doc."),
            crate::__private::method_info(
                "both",
                "Both",
                &[],
                "Result<RpcStream<u64>, E>",
                crate::__private::method_shape(false, true, Some(("items", "u64", "__BothItem")), Some("u64"), None),
                "",
            ),
            MethodInfo {
                name: Cow::Owned("événement".into()),
                variant: "Événement".into(),
                args: Cow::Owned(vec![]),
                returns: "()".into(),
                shape: crate::__private::method_shape(true, false, None, None, Some(("events", "EventsClient"))),
                doc: "".into(),
            },
        ]
    }

    #[test]
    fn a_probe_hello_keeps_its_flag() {
        let h = Hello {
            methods: Vec::new(),
            flags: HELLO_PROBE,
            version: 2,
            min_version: 2,
            capabilities: 0,
            stream_window: 0,
            codec: 2,
            max_message: 10,
            fingerprint: 0,
            service: String::new(),
        };
        assert_eq!(h.encode()[7], HELLO_PROBE);
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn a_described_welcome_with_introspection_carries_its_methods_both_ways() {
        let w = described(sample_methods(), FEATURE_INTROSPECTION);
        assert_eq!(Welcome::decode(&w.encode()).unwrap(), w);
        // Cut anywhere inside the methods: malformed, never misread.
        let bytes = w.encode();
        let fixed = described(vec![], 0).encode().len() + 2;
        for cut in fixed..bytes.len() {
            assert!(Welcome::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn methods_are_sent_only_in_a_described_answer_of_an_introspecting_server() {
        let without = described(sample_methods(), 0);
        assert_eq!(Welcome::decode(&without.encode()).unwrap().methods, vec![]);
        let mut ok = described(sample_methods(), FEATURE_INTROSPECTION);
        ok.status = HandshakeStatus::Ok;
        assert_eq!(Welcome::decode(&ok.encode()).unwrap().methods, vec![]);
        // (Without evolution, whose answers an `Ok` does carry: see below.)
        ok.capabilities &= !caps::EVOLUTION;
        assert_eq!(ok.encode().len(), described(vec![], 0).encode().len());
    }

    fn evolving_hello() -> Hello {
        Hello {
            methods: vec![
                OfferedMethod { name: "get".into(), shape: 0x0123_4567_89ab_cdef, upload: false },
                OfferedMethod { name: "événement".into(), shape: 7, upload: true },
            ],
            flags: 0,
            version: 2,
            min_version: 2,
            capabilities: caps::SUPPORTED,
            stream_window: 4096,
            codec: 0,
            max_message: 1 << 20,
            fingerprint: 42,
            service: "Probe".into(),
        }
    }

    #[test]
    fn an_evolving_hello_carries_its_method_table_both_ways_and_a_cut_one_is_malformed() {
        let h = evolving_hello();
        assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        let bytes = h.encode();
        let table_start = Hello { methods: vec![], ..h.clone() }.encode().len();
        for cut in table_start..bytes.len() {
            assert!(Hello::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Without the capability, no table is sent (and none is read).
        let plain = Hello { capabilities: caps::SUPPORTED & !caps::EVOLUTION, ..h };
        assert_eq!(Hello::decode(&plain.encode()).unwrap().methods, vec![]);
    }

    #[test]
    fn a_method_table_longer_than_the_handshake_limit_is_refused() {
        let h = Hello { methods: vec![], ..evolving_hello() };
        let mut bytes = h.encode();
        let at = bytes.len() - 2;
        bytes[at..].copy_from_slice(&((MAX_HANDSHAKE_METHODS + 1) as u16).to_le_bytes());
        assert_eq!(
            Hello::decode(&bytes),
            Err(HandshakeDecodeError::Malformed("more methods than a handshake carries (4096)"))
        );
    }

    #[test]
    fn an_ok_welcome_with_evolution_carries_the_answers_both_ways() {
        use crate::evolution::MethodStatus;
        let mut ok = described(vec![], 0);
        ok.status = HandshakeStatus::Ok;
        ok.capabilities = caps::SUPPORTED;
        ok.method_status = vec![MethodStatus::Same, MethodStatus::Missing, MethodStatus::Changed, MethodStatus::Moved];
        assert_eq!(Welcome::decode(&ok.encode()).unwrap(), ok);
        let bytes = ok.encode();
        assert!(Welcome::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn a_welcome_of_an_older_server_reads_as_no_codecs_and_no_features() {
        let w = described(sample_methods(), FEATURE_INTROSPECTION);
        let bytes = w.encode();
        let old = &bytes[..described(vec![], 0).encode().len() - 8];
        let read = Welcome::decode(old).unwrap();
        assert_eq!((read.codecs, read.features, read.methods.len()), (0, 0, 0));
        assert_eq!(read.stream_window, w.stream_window);
    }

    /// A described welcome with introspection whose method list is `list` (count first).
    fn with_method_bytes(list: &[u8]) -> Vec<u8> {
        let mut bytes = described(vec![], FEATURE_INTROSPECTION).encode();
        bytes.truncate(bytes.len() - 2);
        bytes.extend_from_slice(list);
        bytes
    }

    fn malformed(bytes: &[u8]) -> &'static str {
        match Welcome::decode(bytes) {
            Err(HandshakeDecodeError::Malformed(why)) => why,
            other => panic!("expected a malformed welcome, got {other:?}"),
        }
    }

    /// One minimal method: four empty strings, no arguments, no shape flags.
    const EMPTY_METHOD: [u8; 11] = [0; 11];

    #[test]
    fn a_hostile_method_count_is_refused_before_anything_is_reserved_for_it() {
        // 65535 methods claimed, 2 bytes there.
        let why = malformed(&with_method_bytes(&[0xff, 0xff, 0, 0]));
        assert!(why.contains("more methods"), "{why}");
        let why = malformed(&with_method_bytes(&[10, 0, 0, 0]));
        assert!(why.contains("larger than the bytes that follow"), "{why}");
        // 513 well-formed methods: over the limit even though the bytes are there.
        let mut list = 513u16.to_le_bytes().to_vec();
        (0..513).for_each(|_| list.extend_from_slice(&EMPTY_METHOD));
        assert!(malformed(&with_method_bytes(&list)).contains("(512)"));
        // 512 of them are accepted.
        let mut list = 512u16.to_le_bytes().to_vec();
        (0..512).for_each(|_| list.extend_from_slice(&EMPTY_METHOD));
        assert_eq!(Welcome::decode(&with_method_bytes(&list)).unwrap().methods.len(), MAX_DESCRIBED_METHODS);
    }

    #[test]
    fn a_hostile_argument_count_is_refused() {
        // One method: name, variant, then 257 arguments claimed with their bytes there.
        let mut list = vec![1, 0, 0, 0, 0, 0];
        list.extend_from_slice(&257u16.to_le_bytes());
        list.extend_from_slice(&[0; 257 * 4 + 5]);
        assert!(malformed(&with_method_bytes(&list)).contains("(256)"));
        // 200 claimed, a few bytes there.
        let mut list = vec![1, 0, 0, 0, 0, 0];
        list.extend_from_slice(&200u16.to_le_bytes());
        list.extend_from_slice(&[0; 20]);
        assert!(malformed(&with_method_bytes(&list)).contains("larger than the bytes that follow"));
    }

    #[test]
    fn a_service_with_more_methods_than_a_description_holds_describes_the_first_512() {
        let many: Vec<MethodInfo> = (0..600).map(|_| sample_methods().remove(0)).collect();
        let w = described(many, FEATURE_INTROSPECTION);
        assert_eq!(Welcome::decode(&w.encode()).unwrap().methods.len(), MAX_DESCRIBED_METHODS);
    }

    #[test]
    fn garbage_is_reported_not_misread() {
        assert!(matches!(Hello::decode(b"GET / HTTP/1.1"), Err(HandshakeDecodeError::BadMagic(_))));
        assert_eq!(Hello::decode(b"PRPC\x01"), Err(HandshakeDecodeError::Malformed("truncated")));
        assert!(matches!(Welcome::decode(b""), Err(HandshakeDecodeError::BadMagic(_))));
    }
}

//! The methods in a probe's answer: a fixed little-endian layout like the rest of the
//! handshake (no codec is agreed during a probe).
//!
//! ```text
//! count u16, then per method:
//!   name str, variant str, args count u16, (arg name str, type str) per arg,
//!   returns str, doc str, shape flags u8 (1 one-way, 2 fallible, 4 upload, 8 download,
//!   16 callback), then for upload: name str, item type str, item variant str;
//!   for download: item type str; for callback: name str, client type str
//! ```
//!
//! A `str` is a u16 length and UTF-8 bytes, as elsewhere in the handshake.
//!
//! Bounds (a probe may reach a hostile server: a squatter on the name): at most
//! [`MAX_DESCRIBED_METHODS`] methods and [`MAX_DESCRIBED_ARGS`] arguments per method; a
//! count is checked against those limits and against the bytes left (each entry has a
//! minimum size) before anything is reserved for it, and a lying count is refused as
//! malformed instead of being believed: a description stays within the decode budget of
//! any frame (`DecodeLimits::DEFAULT`).

use std::borrow::Cow;

use super::{HandshakeDecodeError, Reader, put_str};
use crate::introspect::{ArgInfo, MethodInfo, MethodShape};

const ONEWAY: u8 = 1;
const FALLIBLE: u8 = 2;
const UPLOAD: u8 = 4;
const DOWNLOAD: u8 = 8;
const CALLBACK: u8 = 16;

/// The most methods a probe's answer describes (and a reader accepts). A service with
/// more describes its first 512 (in trait order). Why 512: a decoded method takes about
/// 270 bytes of memory for the 11 bytes an empty one takes on the wire, so the count is
/// what bounds a description's memory; 512 of them (140 KiB) stay within the decode budget
/// every frame has (`DecodeLimits::DEFAULT`: 16 bytes per byte plus 64 KiB), and real
/// services have tens.
pub const MAX_DESCRIBED_METHODS: usize = 512;

/// The most arguments a described method has (and a reader accepts).
pub const MAX_DESCRIBED_ARGS: usize = 256;

/// The fewest bytes a method takes: four empty strings (name, variant, returns, doc), the
/// argument count, the flags.
const MIN_METHOD_BYTES: usize = 4 * 2 + 2 + 1;

/// The fewest bytes an argument takes: two empty strings.
const MIN_ARG_BYTES: usize = 2 * 2;

/// Appends `methods` (at most [`MAX_DESCRIBED_METHODS`] of them, each with at most
/// [`MAX_DESCRIBED_ARGS`] arguments: what a reader accepts).
pub(super) fn put_methods(b: &mut Vec<u8>, methods: &[MethodInfo]) {
    let methods = &methods[..methods.len().min(MAX_DESCRIBED_METHODS)];
    b.extend_from_slice(&(methods.len() as u16).to_le_bytes());
    for m in methods {
        put_str(b, &m.name);
        put_str(b, &m.variant);
        let args = &m.args[..m.args.len().min(MAX_DESCRIBED_ARGS)];
        b.extend_from_slice(&(args.len() as u16).to_le_bytes());
        for a in args {
            put_str(b, &a.name);
            put_str(b, &a.ty);
        }
        put_str(b, &m.returns);
        put_str(b, &m.doc);
        let s = &m.shape;
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        b.push(
            flag(s.oneway, ONEWAY)
                | flag(s.fallible, FALLIBLE)
                | flag(s.upload.is_some(), UPLOAD)
                | flag(s.download.is_some(), DOWNLOAD)
                | flag(s.callback.is_some(), CALLBACK),
        );
        if let Some(up) = &s.upload {
            put_str(b, &up.name);
            put_str(b, &up.ty);
            put_str(b, s.upload_variant.as_deref().unwrap_or(""));
        }
        if let Some(down) = &s.download {
            put_str(b, down);
        }
        if let Some(cb) = &s.callback {
            put_str(b, &cb.name);
            put_str(b, &cb.ty);
        }
    }
}

/// Reads what [`put_methods`] wrote.
pub(super) fn read_methods(r: &mut Reader<'_>) -> Result<Vec<MethodInfo>, HandshakeDecodeError> {
    let count = usize::from(r.u16()?);
    if count > MAX_DESCRIBED_METHODS {
        return Err(HandshakeDecodeError::Malformed("more methods than a description may hold (512)"));
    }
    if count * MIN_METHOD_BYTES > r.remaining() {
        return Err(HandshakeDecodeError::Malformed("a method count larger than the bytes that follow"));
    }
    let mut methods = Vec::with_capacity(count);
    let owned = |s: String| Cow::Owned(s);
    for _ in 0..count {
        let (name, variant) = (r.str()?, r.str()?);
        let nargs = usize::from(r.u16()?);
        if nargs > MAX_DESCRIBED_ARGS {
            return Err(HandshakeDecodeError::Malformed("more arguments than a described method may have (256)"));
        }
        if nargs * MIN_ARG_BYTES > r.remaining() {
            return Err(HandshakeDecodeError::Malformed("an argument count larger than the bytes that follow"));
        }
        let mut args = Vec::with_capacity(nargs);
        for _ in 0..nargs {
            args.push(ArgInfo::new(owned(r.str()?), owned(r.str()?)));
        }
        let (returns, doc) = (r.str()?, r.str()?);
        let flags = r.u8()?;
        if flags & !(ONEWAY | FALLIBLE | UPLOAD | DOWNLOAD | CALLBACK) != 0 {
            return Err(HandshakeDecodeError::Malformed("unknown method shape flags"));
        }
        let mut shape =
            MethodShape { oneway: flags & ONEWAY != 0, fallible: flags & FALLIBLE != 0, ..MethodShape::CALL };
        if flags & UPLOAD != 0 {
            shape.upload = Some(ArgInfo::new(owned(r.str()?), owned(r.str()?)));
            shape.upload_variant = Some(owned(r.str()?));
        }
        if flags & DOWNLOAD != 0 {
            shape.download = Some(owned(r.str()?));
        }
        if flags & CALLBACK != 0 {
            shape.callback = Some(ArgInfo::new(owned(r.str()?), owned(r.str()?)));
        }
        methods.push(MethodInfo {
            name: owned(name),
            variant: owned(variant),
            args: Cow::Owned(args),
            returns: owned(returns),
            shape,
            doc: owned(doc),
        });
    }
    Ok(methods)
}

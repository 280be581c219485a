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
//! A `str` is a u16 length and UTF-8 bytes, as elsewhere in the handshake. Nothing is
//! allocated for a count before its entries are read, so a lying count costs only the bytes
//! that are there.

use std::borrow::Cow;

use super::{HandshakeDecodeError, Reader, put_str};
use crate::introspect::{ArgInfo, MethodInfo, MethodShape};

const ONEWAY: u8 = 1;
const FALLIBLE: u8 = 2;
const UPLOAD: u8 = 4;
const DOWNLOAD: u8 = 8;
const CALLBACK: u8 = 16;

/// Appends `methods` (at most `u16::MAX` of them).
pub(super) fn put_methods(b: &mut Vec<u8>, methods: &[MethodInfo]) {
    let methods = &methods[..methods.len().min(usize::from(u16::MAX))];
    b.extend_from_slice(&(methods.len() as u16).to_le_bytes());
    for m in methods {
        put_str(b, &m.name);
        put_str(b, &m.variant);
        let args = &m.args[..m.args.len().min(usize::from(u16::MAX))];
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
    let count = r.u16()?;
    let mut methods = Vec::new();
    let owned = |s: String| Cow::Owned(s);
    for _ in 0..count {
        let (name, variant) = (r.str()?, r.str()?);
        let nargs = r.u16()?;
        let mut args = Vec::new();
        for _ in 0..nargs {
            args.push(ArgInfo::new(owned(r.str()?), owned(r.str()?)));
        }
        let (returns, doc) = (r.str()?, r.str()?);
        let flags = r.u8()?;
        if flags & !(ONEWAY | FALLIBLE | UPLOAD | DOWNLOAD | CALLBACK) != 0 {
            return Err(HandshakeDecodeError::Malformed("unknown method shape flags"));
        }
        let mut shape = MethodShape { oneway: flags & ONEWAY != 0, fallible: flags & FALLIBLE != 0, ..MethodShape::CALL };
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

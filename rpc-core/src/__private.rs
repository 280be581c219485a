//! Paths used by code that `#[service]` generates. Not a public API: names here may
//! change in any release.

pub use crate::blocking::{
    BlockingRuntime, BlockingStream, Upload, finish as blocking_finish, finish_stream as blocking_finish_stream,
};
pub use crate::callback::{Callback, Client, erase as erase_callback, mix_fingerprints};
pub use crate::client::{CallOptions, Channel, ClientConfig};
pub use crate::error::RpcError;
pub use crate::error::ServerError;
pub use crate::evolution::{MethodEntry, MethodSpec, trace_methods};
pub use crate::service::{BoxFuture, CallStreams, Reply, Service, ServiceId, Shape};
pub use crate::stream::RpcStream;
pub use ::serde;
pub use ::std;
pub use tokio::net::ToSocketAddrs;
pub use transport_pipe::PipeName;

use std::borrow::Cow;

use crate::error::TransportError;
pub use crate::introspect::{ArgInfo, MethodInfo, MethodShape};

/// An [`ArgInfo`] from static text, in a `const`.
#[must_use]
pub const fn arg_info(name: &'static str, ty: &'static str) -> ArgInfo {
    ArgInfo::new(Cow::Borrowed(name), Cow::Borrowed(ty))
}

/// The shape of a method, in a `const`: `upload` is the stream argument's name, item type
/// and item variant, `download` the item type, `callback` the callback argument's name and
/// client type.
#[must_use]
pub const fn method_shape(
    oneway: bool,
    fallible: bool,
    upload: Option<(&'static str, &'static str, &'static str)>,
    download: Option<&'static str>,
    callback: Option<(&'static str, &'static str)>,
) -> MethodShape {
    // (No tuple of the two: a `const fn` cannot drop one.)
    let upload_variant = match upload {
        Some((_, _, variant)) => Some(Cow::Borrowed(variant)),
        None => None,
    };
    let upload = match upload {
        Some((name, item, _)) => Some(arg_info(name, item)),
        None => None,
    };
    let download = match download {
        Some(item) => Some(Cow::Borrowed(item)),
        None => None,
    };
    let callback = match callback {
        Some((name, client)) => Some(arg_info(name, client)),
        None => None,
    };
    MethodShape { oneway, fallible, upload, upload_variant, download, callback }
}

/// A [`MethodInfo`] from static parts, in a `const` (`Service::METHODS`).
#[must_use]
pub const fn method_info(
    name: &'static str,
    variant: &'static str,
    args: &'static [ArgInfo],
    returns: &'static str,
    shape: MethodShape,
    doc: &'static str,
) -> MethodInfo {
    MethodInfo {
        name: Cow::Borrowed(name),
        variant: Cow::Borrowed(variant),
        args: Cow::Borrowed(args),
        returns: Cow::Borrowed(returns),
        shape,
        doc: Cow::Borrowed(doc),
    }
}

/// One step of a service fingerprint: FNV-1a 64 continued over `text`, from `state`, the
/// hash of the text before it. Generated code folds each compiled-in method's piece of the
/// canonical text into the fingerprint with this, in a `const`, under that method's
/// `#[cfg]`s; it is the macro's `fnv1a64_extend`, so with every method compiled in the
/// result is FNV-1a 64 of the whole text.
#[must_use]
pub const fn fingerprint_extend(state: u64, text: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = state;
    let mut i = 0;
    while i < text.len() {
        hash = (hash ^ text[i] as u64).wrapping_mul(PRIME);
        i += 1;
    }
    hash
}

/// What an argument or return type needs to cross the wire.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot cross the pipe: it must implement `serde::Serialize`, `serde::de::DeserializeOwned` and `Send`, and be `'static`",
    label = "used as an RPC argument or return type here",
    note = "derive them with `#[derive(serde::Serialize, serde::Deserialize)]`; for bulk bytes use `serde_bytes::ByteBuf` or `#[serde(with = \"serde_bytes\")]`"
)]
pub trait Wire: ::serde::Serialize + ::serde::de::DeserializeOwned + Send + 'static {}
impl<T: ::serde::Serialize + ::serde::de::DeserializeOwned + Send + 'static> Wire for T {}

/// [`Wire`] with a lifetime to bind. Generated impls that need their wire enums to be
/// serde types say `where for<'a> Enum: WireAt<'a>`: a bound under a binder is not
/// checked where the impl is declared, only where it is used (and inside the impl it is
/// assumed), so a wire type without its serde derives is not reported once more by every
/// generated item that uses it. The binder's lifetime is used, so `unused_lifetimes` has
/// nothing to say about it.
pub trait WireAt<'a>: Wire {}
impl<T: Wire> WireAt<'_> for T {}

/// `serde::Serialize` with a lifetime to bind: the wire enums' derived `Serialize` is bounded
/// by `for<'a> Field: SerializeAt<'a>` per field, for the reason given at [`WireAt`].
pub trait SerializeAt<'a>: ::serde::Serialize {}
impl<T: ?Sized + ::serde::Serialize> SerializeAt<'_> for T {}

/// Compile-time check that an argument or return type can cross the wire, one error per
/// mistake. The macro writes it at the type's own span, so an error points at the user's
/// type: `(&WireProbe::<T>::NEW).step().check::<T>()`. Method resolution picks the
/// probe's answer, [`SerializeFound`] if `T: Serialize` and [`SerializeMissing`] if not
/// (autoref specialization: the fallback impl is on `&WireProbe<T>`, reached only when
/// the impl on `WireProbe<T>` does not apply), and each answer's `check` asks for what is
/// left to prove. A type without serde derives therefore fails only its `Serialize`
/// bound, where a plain `T: Wire` bound failed both `Serialize` and `Deserialize`: two
/// errors for one missing derive.
pub struct WireProbe<T>(std::marker::PhantomData<T>);
impl<T> WireProbe<T> {
    /// The probe for `T`.
    pub const NEW: Self = WireProbe(std::marker::PhantomData);
}

/// The answer of [`WireProbe`]: `T` is `Serialize`, check the rest.
pub struct SerializeFound;
impl SerializeFound {
    /// Requires everything else a wire type needs.
    pub fn check<T: Wire>(self) {}
}

/// The answer of [`WireProbe`]: `T` is not `Serialize`; report only that.
pub struct SerializeMissing;
impl SerializeMissing {
    /// Fails, with the message of [`WireSerialize`].
    pub fn check<T: WireSerialize>(self) {}
}

/// See [`WireProbe`]: the probe's answer when `T: Serialize`.
pub trait ProbeSerialize {
    /// The answer.
    fn step(&self) -> SerializeFound {
        SerializeFound
    }
}
impl<T: ::serde::Serialize> ProbeSerialize for WireProbe<T> {}

/// See [`WireProbe`]: the probe's answer otherwise.
pub trait ProbeFallback {
    /// The answer.
    fn step(&self) -> SerializeMissing {
        SerializeMissing
    }
}
impl<T> ProbeFallback for &WireProbe<T> {}

/// [`Wire`]'s message for a type that is not even `Serialize` (`Self` is the user's type,
/// so rustc reports this message, and the missing `Serialize` as its help).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot cross the pipe: it must implement `serde::Serialize`, `serde::de::DeserializeOwned` and `Send`, and be `'static`",
    label = "used as an RPC argument or return type here",
    note = "derive them with `#[derive(serde::Serialize, serde::Deserialize)]`; for bulk bytes use `serde_bytes::ByteBuf` or `#[serde(with = \"serde_bytes\")]`"
)]
pub trait WireSerialize: ::serde::Serialize {}
impl<T: ::serde::Serialize> WireSerialize for T {}

/// Compile-time check that the type in `Callback<C>` is a generated client.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not the client of a `#[rpc_core::service]` trait",
    label = "a `Callback` takes the generated client of the callback trait",
    note = "write `Callback<EventsClient>` for a trait `Events` declared with `#[rpc_core::service]`"
)]
pub trait IsClient: crate::Client {}
impl<C: crate::Client> IsClient for C {}

/// See [`IsClient`].
pub const fn assert_client<C: IsClient>() {}

/// Compile-time check that the error type of a method returning `Result<T, E>` can carry
/// transport and call errors, since the generated client returns `Result<T, E>`.
#[diagnostic::on_unimplemented(
    message = "the client returns `Result<T, {Self}>`, so `{Self}` must be able to carry transport errors: implement `From<rpc_core::RpcError>` for it",
    label = "this error type needs `impl From<rpc_core::RpcError>`",
    note = "or name the return type through an alias (`type Reply = Result<T, {Self}>;` and `-> Reply`) to get `Result<Reply, RpcError>` on the client"
)]
pub trait AbsorbsRpcError: From<RpcError> {}
impl<E: From<RpcError>> AbsorbsRpcError for E {}

/// [`AbsorbsRpcError`] with a lifetime to bind, for `where` clauses of generated methods
/// (see [`WireAt`]): a blocking method whose error type cannot absorb `RpcError` is then
/// reported once, by the async client's check at `E`, not again by the blocking one.
pub trait AbsorbsRpcErrorAt<'a>: AbsorbsRpcError {}
impl<E: AbsorbsRpcError> AbsorbsRpcErrorAt<'_> for E {}

/// [`Client`](crate::Client) with a lifetime to bind, for `where` clauses of generated
/// methods that take a callback (see [`WireAt`]): a `Callback<C>` whose `C` is not a
/// generated client is reported by the check at `C`, not again by every client method.
pub trait ClientAt<'a>: crate::Client {}
impl<C: crate::Client> ClientAt<'_> for C {}

/// The server's answer to a stream item sent as if it were a call.
pub fn not_a_call(method: &'static str) -> ServerError {
    ServerError::new(
        crate::ServerErrorKind::BadRequest,
        format!("a stream item of `{method}` was sent as a call; items belong to an open exchange"),
    )
}

fn unexpected(method: &'static str) -> RpcError {
    TransportError::Protocol { detail: format!("the server answered `{method}` with the response of another method") }
        .into()
}

/// Client side of a method returning a plain `T`: `Result<T, RpcError>`.
#[inline]
pub fn plain<Resp, T>(
    result: Result<Resp, RpcError>,
    method: &'static str,
    pick: impl FnOnce(Resp) -> Option<T>,
) -> Result<T, RpcError> {
    pick(result?).ok_or_else(|| unexpected(method))
}

/// Client side of a method returning `Result<T, E>`: transport and call errors are
/// converted into `E`, so the caller sees one `Result<T, E>`.
#[inline]
pub fn fallible<Resp, T, E: AbsorbsRpcError>(
    result: Result<Resp, RpcError>,
    method: &'static str,
    pick: impl FnOnce(Resp) -> Option<Result<T, E>>,
) -> Result<T, E> {
    match result {
        Ok(resp) => pick(resp).unwrap_or_else(|| Err(E::from(unexpected(method)))),
        Err(e) => Err(E::from(e)),
    }
}

/// How many spans (`crate::spans`) this process has opened: for tests that show that none
/// is made when no subscriber wants them.
pub fn spans_opened() -> u64 {
    crate::spans::opened()
}

/// What an `#[idempotent]` method asks of each argument: it is sent again after a
/// reconnection, so the client keeps a copy.
#[diagnostic::on_unimplemented(
    message = "an `#[idempotent]` method's arguments must be `Clone`: `{Self}` is not",
    label = "cloned so the call can be sent again after a reconnection",
    note = "derive or implement `Clone` for it, or remove `#[idempotent]`"
)]
pub trait ResendArg: Clone {}

impl<T: Clone> ResendArg for T {}

/// A copy of an `#[idempotent]` method's argument for one attempt.
#[inline]
pub fn clone_for_resend<T: ResendArg>(arg: &T) -> T {
    arg.clone()
}

#[cfg(test)]
mod tests {
    use super::fingerprint_extend;

    #[test]
    fn fingerprint_extend_is_fnv1a64() {
        // Published FNV-1a 64 test vectors, from the offset basis.
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        assert_eq!(fingerprint_extend(OFFSET, b""), OFFSET);
        assert_eq!(fingerprint_extend(OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fingerprint_extend(OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fingerprint_extend(fingerprint_extend(OFFSET, b"foo"), b"bar"), 0x8594_4171_f739_67e8);
    }
}

//! The contract between generated code and the runtime.

use std::future::Future;
use std::pin::Pin;

use serde::{Serialize, de::DeserializeOwned};

use crate::error::RpcError;
use crate::evolution::MethodEntry;
use crate::stream::RpcStream;

/// A boxed, sendable future: what a [`Service`] returns for one call.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Identity of a service, checked in the connection handshake.
///
/// The name is the trait's name unless `#[service(name = "...")]` overrides it. The
/// fingerprint is computed by `#[service]` at compile time from the names of the methods
/// that are compiled in and the spelling of their argument and return types. Peers that
/// both speak [`caps::EVOLUTION`](crate::wire::caps::EVOLUTION) compare each method's
/// shape instead (see [`crate::evolution`]): a client built from an older trait then works
/// with a server that added methods, and a call of a method the server lacks or changed
/// fails with [`RpcError::Incompatible`]. Peers without it
/// (or ids without a method table) keep the exact rule: a client and a server built from
/// different versions of the trait refuse each other with
/// [`TransportError::Incompatible`](crate::TransportError::Incompatible) instead of
/// misreading each other's messages.
#[derive(Clone, Copy, Debug)]
pub struct ServiceId {
    /// The service name.
    pub name: &'static str,
    /// The compile-time fingerprint of the method signatures.
    pub fingerprint: u64,
    /// The method table, computed on first use (`#[service]` sets it).
    methods: Option<fn() -> &'static [MethodEntry]>,
}

impl ServiceId {
    /// Builds an id; used by generated code.
    pub const fn new(name: &'static str, fingerprint: u64) -> Self {
        ServiceId { name, fingerprint, methods: None }
    }

    /// The id with a method table: `methods` gives each compiled-in method's name and shape
    /// in declaration order (see [`crate::evolution`]). Used by generated code.
    #[must_use]
    pub const fn with_methods(mut self, methods: fn() -> &'static [MethodEntry]) -> Self {
        self.methods = Some(methods);
        self
    }

    /// The method table, if this id has one (computed on the first call, then shared).
    pub fn methods(&self) -> Option<&'static [MethodEntry]> {
        self.methods.map(|f| f())
    }
}

/// Ids are equal when their names and fingerprints are (the method table follows from them).
impl PartialEq for ServiceId {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.fingerprint == other.fingerprint
    }
}

impl Eq for ServiceId {}

impl std::hash::Hash for ServiceId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.fingerprint.hash(state);
    }
}

/// A service the server runtime can dispatch to. `#[service]` implements it for the
/// generated `{Trait}Server<S>`; hand-written implementations are possible but the
/// generated one is the supported path.
pub trait Service: Send + Sync + 'static {
    /// The wire request enum: one variant per method.
    type Request: Serialize + DeserializeOwned + Send + 'static;
    /// The wire response enum: one variant per method.
    type Response: Serialize + DeserializeOwned + Send + 'static;
    /// Name and fingerprint announced in the handshake.
    const ID: ServiceId;
    /// True if some method takes a `Callback`: the server then keeps a way to call the
    /// client back on each connection that supports it.
    const CALLBACKS: bool = false;
    /// The methods, described for probes of a server with introspection on (see
    /// [`crate::introspect`]); `#[service]` lists every compiled-in method. Empty by
    /// default.
    const METHODS: &'static [crate::introspect::MethodInfo] = &[];
    /// The method a request calls, for logs and errors.
    fn method_name(request: &Self::Request) -> &'static str;
    /// Which directions of the call `request` starts carry a stream. Requests that are
    /// stream items (not calls) may answer anything: the runtime never asks for them.
    fn shape(request: &Self::Request) -> Shape {
        let _ = request;
        Shape::UNARY
    }
    /// Runs one call; `streams` holds its inbound stream if its shape has one. The future
    /// owns what it needs (it is `'static`), so the runtime can drop it at any await point
    /// to cancel the call.
    fn call(&self, request: Self::Request, streams: CallStreams<Self::Request>) -> BoxFuture<Reply<Self::Response>>;
}

/// Which directions of a call carry a stream, by method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Shape {
    /// The caller streams items to the handler (an `RpcStream` argument).
    pub upload: bool,
    /// The handler streams items back (an `RpcStream` return type).
    pub download: bool,
    /// The handler gets a `Callback` to the caller.
    pub callback: bool,
}

impl Shape {
    /// A plain call: one request, one reply.
    pub const UNARY: Shape = Shape { upload: false, download: false, callback: false };
    /// A shape with the given directions.
    pub const fn new(upload: bool, download: bool) -> Shape {
        Shape { upload, download, callback: false }
    }
    /// A call whose handler gets a `Callback` to the caller.
    pub const CALLBACK: Shape = Shape { upload: false, download: false, callback: true };
}

/// What a handler produced: one value, or a stream of values (for a method returning
/// `RpcStream`), each wrapped in the service's response enum.
pub enum Reply<R> {
    /// The reply.
    Value(R),
    /// The items of a download stream.
    Stream(futures::stream::BoxStream<'static, Result<R, RpcError>>),
    /// The request was not a call the service takes (a stream item sent as a call).
    Error(crate::ServerError),
}

/// The inbound stream of a call that takes one (an `RpcStream` argument), as the runtime
/// hands it to [`Service::call`].
pub struct CallStreams<Req> {
    pub(crate) up: Option<crate::engine::streams::Remote<Req>>,
    pub(crate) callback: Option<crate::callback::CallbackLink>,
}

impl<Req: Send + 'static> CallStreams<Req> {
    /// No inbound stream.
    pub fn none() -> Self {
        CallStreams { up: None, callback: None }
    }

    /// The call's inbound stream, its items picked out of the request enum by `pick`. A
    /// call without one gets a stream that fails with a protocol error.
    pub fn upload<T: Send + 'static>(&mut self, pick: impl Fn(Req) -> Option<T> + Send + 'static) -> RpcStream<T> {
        match self.up.take() {
            Some(remote) => RpcStream::inbound(remote, pick),
            None => {
                let err: RpcError =
                    crate::TransportError::Protocol { detail: "this call has no inbound stream".to_owned() }.into();
                RpcStream::from_results(futures::stream::iter([Err(err)]))
            }
        }
    }
}

impl<Req> std::fmt::Debug for CallStreams<Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallStreams").field("upload", &self.up.is_some()).finish()
    }
}

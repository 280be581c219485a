//! The contract between generated code and the runtime.

use std::future::Future;
use std::pin::Pin;

use serde::{Serialize, de::DeserializeOwned};

/// A boxed, sendable future: what a [`Service`] returns for one call.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Identity of a service, checked in the connection handshake.
///
/// The name is the trait's name unless `#[service(name = "...")]` overrides it. The
/// fingerprint is computed by `#[service]` at compile time from the method names and the
/// spelling of their argument and return types, so a client and a server built from
/// different versions of the trait refuse each other with
/// [`TransportError::Incompatible`](crate::TransportError::Incompatible) instead of
/// misreading each other's messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceId {
    /// The service name.
    pub name: &'static str,
    /// The compile-time fingerprint of the method signatures.
    pub fingerprint: u64,
}

impl ServiceId {
    /// Builds an id; used by generated code.
    pub const fn new(name: &'static str, fingerprint: u64) -> Self {
        ServiceId { name, fingerprint }
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
    /// The method a request calls, for logs and errors.
    fn method_name(request: &Self::Request) -> &'static str;
    /// Runs one call. The future owns what it needs (it is `'static`), so the runtime
    /// can drop it at any await point to cancel the call.
    fn call(&self, request: Self::Request) -> BoxFuture<Self::Response>;
}

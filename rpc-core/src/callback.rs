//! Callbacks: the server calls methods of a trait the client implements, on the same
//! connection, while the call that handed it over is open.
//!
//! ```ignore
//! #[rpc_core::service]
//! pub trait QueueEvents {
//!     async fn job_added(&self, job: String) -> bool;
//! }
//!
//! #[rpc_core::service]
//! pub trait WorkQueues {
//!     /// Calls `events` for every job added to `queue` until the client cancels.
//!     async fn watch(&self, queue: String, events: Callback<QueueEventsClient>) -> Result<(), QueueError>;
//! }
//!
//! // Server: `events` is a `QueueEventsClient` bound to this call.
//! async fn watch(&self, queue: String, events: Callback<QueueEventsClient>) -> Result<(), QueueError> {
//!     events.job_added("resize".into()).await?;
//!     Ok(())
//! }
//!
//! // Client: hand over anything that serves `QueueEvents`.
//! queues.watch("jobs".into(), QueueEventsServer::new(Printer)).await?;
//! ```
//!
//! A callback call is an ordinary call from the server to the client: it has a deadline
//! (the handler's remaining time unless the handle sets one with `with_timeout`), it is
//! cancelled when its future is dropped, its errors are typed. Once the call that handed the
//! callback over has ended, the client refuses callback calls for it: the server gets
//! [`ServerErrorKind::BadRequest`] saying so.
//!
//! On the wire a callback call is a `Call` frame sent by the server whose body is a
//! [`CallbackCall`]: the id of the call it belongs to and the
//! callback's request, encoded with the connection's codec; the client's reply carries the
//! encoded response. Both ends must have announced the `CALLBACKS` capability.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Serialize, de::DeserializeOwned};
use serde_bytes::ByteBuf;

use crate::client::Channel;
use crate::codec::Codec;
use crate::error::{RpcError, ServerError, ServerErrorKind, TransportError};
use crate::service::{BoxFuture, CallStreams, Reply, Service, ServiceId};
use crate::wire::CallbackCall;

/// Implemented by every generated client (`FooClient`): what a [`Callback`] needs to build
/// one over a callback channel.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not the client of a `#[rpc_core::service]` trait",
    label = "a `Callback` takes the generated client of the callback trait",
    note = "write `Callback<EventsClient>` for a trait `Events` declared with `#[rpc_core::service]`"
)]
pub trait Client: Sized + Send + Sync + 'static {
    /// The service's request enum.
    type Request: Serialize + DeserializeOwned + Send + 'static;
    /// The service's response enum.
    type Response: Serialize + DeserializeOwned + Send + 'static;
    /// Name and fingerprint of the service.
    const ID: ServiceId;
    /// Wraps a channel.
    fn from_channel(channel: Channel<Self::Request, Self::Response>) -> Self;
}

/// A client of a trait the caller implements, bound to the call that handed it over (see
/// the [module docs](self)). Use it as the client it wraps: it derefs to `C`.
pub struct Callback<C> {
    client: C,
}

impl<C> Deref for Callback<C> {
    type Target = C;
    fn deref(&self) -> &C {
        &self.client
    }
}

impl<C: std::fmt::Debug> std::fmt::Debug for Callback<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Callback").field(&self.client).finish()
    }
}

impl<C: Client> Callback<C> {
    /// The callback of the call being dispatched (generated code calls this).
    #[doc(hidden)]
    pub fn bind<Req>(streams: &mut CallStreams<Req>) -> Self {
        Callback { client: C::from_channel(Channel::bridge(streams.callback.take())) }
    }

    /// The client inside.
    pub fn into_inner(self) -> C {
        self.client
    }
}

/// The server's way back to the client: its callback channel and the call it belongs to.
#[derive(Clone)]
pub(crate) struct CallbackLink {
    pub(crate) channel: Channel<CallbackCall, ByteBuf>,
    pub(crate) parent: u64,
    pub(crate) codec: Codec,
    pub(crate) limit: usize,
}

impl CallbackLink {
    /// Makes one callback call: `body` encoded, sent in an envelope, the answer decoded.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        options: &crate::CallOptions,
        body: Req,
    ) -> Result<Resp, RpcError> {
        let call = self.codec.encode(&body, self.limit).map_err(|e| crate::engine::request_encode_error(&e))?;
        let envelope = CallbackCall { parent: self.parent, call: ByteBuf::from(call.to_vec()) };
        let reply = self.channel.call_direct(options, envelope).await?;
        self.codec.decode::<Resp>(&reply).map_err(|e| {
            TransportError::Protocol { detail: format!("the client's callback answer does not decode: {e}") }.into()
        })
    }
}

/// A callback object with its types erased, as the client's router holds it.
#[doc(hidden)]
pub trait ErasedCallback: Send + Sync {
    fn call(&self, codec: Codec, limit: usize, call: ByteBuf) -> BoxFuture<Reply<ByteBuf>>;
}

impl<S: Service> ErasedCallback for S {
    fn call(&self, codec: Codec, limit: usize, call: ByteBuf) -> BoxFuture<Reply<ByteBuf>> {
        let request = match codec.decode::<S::Request>(&call) {
            Ok(r) => r,
            Err(e) => {
                let error = ServerError::new(
                    ServerErrorKind::BadRequest,
                    format!("the callback request does not decode as a call of `{}`: {e}", S::ID.name),
                );
                return Box::pin(std::future::ready(Reply::Error(error)));
            }
        };
        let run = Service::call(self, request, CallStreams::none());
        Box::pin(async move {
            match run.await {
                Reply::Value(resp) => match codec.encode(&resp, limit) {
                    Ok(bytes) => Reply::Value(ByteBuf::from(bytes.to_vec())),
                    Err(e) => Reply::Error(ServerError::new(
                        ServerErrorKind::ResponseTooLarge,
                        format!("the callback's answer cannot be sent: {e}"),
                    )),
                },
                Reply::Stream(_) => Reply::Error(ServerError::new(
                    ServerErrorKind::BadRequest,
                    "callback methods cannot return streams",
                )),
                Reply::Error(e) => Reply::Error(e),
            }
        })
    }
}

/// Erases a callback object's type (generated client methods call this).
#[doc(hidden)]
pub fn erase<S: Service>(service: S) -> Arc<dyn ErasedCallback> {
    Arc::new(service)
}

/// The callback objects of a client's open calls, by call id.
#[derive(Default)]
pub(crate) struct Registry {
    map: Mutex<HashMap<u64, Arc<dyn ErasedCallback>>>,
}

impl Registry {
    pub(crate) fn insert(&self, id: u64, callback: Arc<dyn ErasedCallback>) {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).insert(id, callback);
    }

    pub(crate) fn remove(&self, id: u64) {
        let gone = self.map.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
        drop(gone);
    }

    fn get(&self, id: u64) -> Option<Arc<dyn ErasedCallback>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()
    }
}

/// The service a client serves on its connection: callback calls, routed to the object
/// of the call they belong to.
pub(crate) struct CallbackRouter {
    pub(crate) registry: Arc<Registry>,
    pub(crate) codec: Codec,
    pub(crate) limit: usize,
}

impl Service for CallbackRouter {
    type Request = CallbackCall;
    type Response = ByteBuf;
    const ID: ServiceId = ServiceId::new("callbacks", 0);

    fn method_name(_: &CallbackCall) -> &'static str {
        "callback"
    }

    fn call(&self, request: CallbackCall, _: CallStreams<CallbackCall>) -> BoxFuture<Reply<ByteBuf>> {
        match self.registry.get(request.parent) {
            Some(callback) => callback.call(self.codec, self.limit, request.call),
            None => Box::pin(std::future::ready(Reply::Error(ServerError::new(
                ServerErrorKind::BadRequest,
                format!(
                    "the call {} this callback belongs to has ended: a callback is only valid while its call is open",
                    request.parent
                ),
            )))),
        }
    }
}

/// Folds the fingerprints of the callback traits a service uses into its own, so both ends
/// must agree on those traits too (generated code calls this in a `const`).
#[doc(hidden)]
pub const fn mix_fingerprints(own: u64, callbacks: &[u64]) -> u64 {
    let mut fp = own;
    let mut i = 0;
    while i < callbacks.len() {
        fp = (fp ^ callbacks[i]).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(17);
        i += 1;
    }
    fp
}

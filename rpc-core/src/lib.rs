//! Typed RPC between processes over local pipes.
//!
//! Declare a service as a trait, implement it in one process, call it from another as
//! if it were local. The pipe is a Unix domain socket on Unix and a named pipe on
//! Windows (see [`pipe`]); both sides are generated from the one trait, so they cannot
//! drift apart, and a handshake refuses a peer built from a different version of it.
//!
//! ```
//! use rpc_core::{RpcError, Server};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, Serialize, Deserialize)]
//! pub struct QueueInfo { pub name: String, pub running: bool }
//!
//! #[derive(Debug, Serialize, Deserialize, thiserror::Error)]
//! pub enum QueueError {
//!     #[error("queue {0} exists")]
//!     Exists(String),
//!     // Lets the client return transport errors inside this type.
//!     #[error(transparent)]
//!     Rpc(#[from] RpcError),
//! }
//!
//! #[rpc_core::service]
//! pub trait WorkQueues {
//!     /// Creates a queue in the stopped state.
//!     async fn create(&self, name: String) -> Result<QueueInfo, QueueError>;
//!     async fn list(&self) -> Vec<QueueInfo>;
//! }
//!
//! #[derive(Default)]
//! struct Queues(std::sync::Mutex<Vec<QueueInfo>>);
//!
//! impl WorkQueues for Queues {
//!     async fn create(&self, name: String) -> Result<QueueInfo, QueueError> {
//!         let mut qs = self.0.lock().unwrap();
//!         if qs.iter().any(|q| q.name == name) { return Err(QueueError::Exists(name)); }
//!         let q = QueueInfo { name, running: false };
//!         qs.push(q.clone());
//!         Ok(q)
//!     }
//!     async fn list(&self) -> Vec<QueueInfo> { self.0.lock().unwrap().clone() }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let name = format!("rpc-core-doc-{}", std::process::id());
//! // Server (normally its own process):
//! let server = Server::new(WorkQueuesServer::new(Queues::default())).bind(name.as_str())?;
//! let shutdown = server.shutdown_handle();
//! let running = tokio::spawn(server.run());
//!
//! // Client:
//! let q = WorkQueuesClient::connect(name.as_str()).await?;
//! let info = q.create("jobs".into()).await?;          // Result<QueueInfo, QueueError>
//! assert!(!info.running);
//! assert!(matches!(q.create("jobs".into()).await, Err(QueueError::Exists(_))));
//! assert_eq!(q.list().await?.len(), 1);                // Result<Vec<QueueInfo>, RpcError>
//! # shutdown.shutdown();
//! # running.await??;
//! # Ok(())
//! # }
//! ```
//!
//! # What `#[service]` generates
//!
//! For `trait Foo`:
//!
//! | item | what it is |
//! |---|---|
//! | `trait Foo` | your trait, with each `async fn` turned into `fn .. -> impl Future + Send` so handlers can run on any runtime thread. Implement it with plain `async fn`s. `Foo: Send + Sync`. |
//! | `FooClient` | the client: `connect(name)`, `connect_with(name, ClientConfig)`, `connect_tcp(addr)`, `connect_tcp_with(addr, ClientConfig)` ([`tcp`]), `from_channel(Channel)`, `with_timeout(Duration)`, `with_options(CallOptions)`, `channel()`, and one `async` method per RPC. `Clone`; clones share one connection. |
//! | `FooBlockingClient` | the [blocking client](blocking), for code without an async runtime: `connect(name)`, `connect_with(name, ClientConfig)`, `with_timeout`, `with_options`, `channel()`, `as_async()`, `into_async()`, and one plain `fn` per RPC. It runs its connection on a background thread of its own; any number of threads may call it at once. Inside a tokio runtime it refuses with [`RpcError::BlockingInRuntime`]. |
//! | `FooServer<S>` | the server adapter: `FooServer::new(impl Foo + 'static)` gives a [`Service`] for [`Server::new`]. |
//! | `FooRequest`, `FooResponse` | the wire enums, one variant per method. |
//!
//! Each name can be chosen (`#[service(client = "..", blocking_client = "..", server = "..",
//! request = "..", response = "..")]`), and `#[service(derive(Clone, Debug))]` adds derives
//! to the wire enums; see [`service`](macro@service).
//!
//! # Client and server signature of each method shape
//!
//! | trait method | the handler returns | client method | blocking client method |
//! |---|---|---|---|
//! | `async fn f(&self, a: A) -> T` | `T` | `async fn f(&self, a: A) -> Result<T, RpcError>` | `fn f(&self, a: A) -> Result<T, RpcError>` |
//! | `async fn f(&self, a: A)` | `()` | `async fn f(&self, a: A) -> Result<(), RpcError>` | `fn f(&self, a: A) -> Result<(), RpcError>` |
//! | `async fn f(&self, a: A) -> Result<T, E>` | `Result<T, E>` | `async fn f(&self, a: A) -> Result<T, E>`; `E: From<RpcError>` is required and checked at compile time, so one `?` handles application and transport errors alike | `fn f(&self, a: A) -> Result<T, E>` |
//! | `async fn f(&self, a: A) -> Reply` with `type Reply = Result<T, E>` | `Reply` | `async fn f(&self, a: A) -> Result<Reply, RpcError>`: naming the result through an alias opts out of flattening, for error types that cannot absorb [`RpcError`] (such as `String`) | `fn f(&self, a: A) -> Result<Reply, RpcError>` |
//! | `#[idempotent] async fn f(&self, a: A) -> R` (a request-reply method; `A: Clone`) | `R` | as without it; with [`ClientConfig::reconnect`], a call whose connection broke under it is sent again over the next connection (within its deadline) instead of failing with [`TransportError::ConnectionLost`] | the same |
//! | `#[oneway] async fn f(&self, a: A)` | `()` (nothing is sent back) | `async fn f(&self, a: A) -> Result<(), RpcError>`: returns once the message is queued for the pipe ([`Channel::oneway`]) | `fn f(&self, a: A) -> Result<(), RpcError>`, once queued; dropping the last handle waits until they are written |
//! | `async fn f(&self, a: A) -> RpcStream<T>` | an [`RpcStream<T>`] it produces | `async fn f(&self, a: A) -> Result<RpcStream<T>, RpcError>`, read as a `Stream` of `Result<T, RpcError>` (or in batches: [`RpcStream::recv_many`]); dropping it cancels the call | `fn f(&self, a: A) -> Result<BlockingStream<T>, RpcError>`, an `Iterator` of `Result<T, RpcError>`; dropping it cancels the call |
//! | `async fn f(&self, a: A, s: RpcStream<U>) -> R` (any of the returns above but one-way) | `R`, reading `s` as a `Stream` of `Result<U, RpcError>` | `async fn f(&self, a: A, s: RpcStream<U>) -> ..` with an `RpcStream<U>` the client produces (from an iterator, a stream, a channel, or a `futures::Sink`: [`RpcStream::sink`]) | `fn f(&self, a: A, s: impl Upload<U>) -> ..`: any `IntoIterator<Item = U>` (pulled on a thread of its own, under flow control) or an `RpcStream<U>` |
//! | `async fn f(&self, a: A, c: Callback<EventsClient>) -> R` | `R`; it may call `c.method(..)` (an `EventsClient`) while the call is open | `async fn f(&self, a: A, c: impl Service<..>) -> ..`: pass `EventsServer::new(handler)`; see [`callback`] | `fn f(&self, a: A, c: impl Service<..>) -> ..`, the same object; its handler runs on the client's runtime |
//!
//! A method takes at most one `RpcStream` argument; streams in both directions make a
//! bidirectional exchange. See [`stream`] for how a stream ends, its flow control and its
//! deadline (none unless the client handle sets one).
//!
//! Arguments and results are any serde types (`Serialize + DeserializeOwned + Send +
//! 'static`). For bulk bytes use [`Blob`]: the sender writes a large one to the pipe from
//! its own memory instead of copying it into its frame (on the wire it is plain serde bytes,
//! like `serde_bytes::ByteBuf`, which is fine for small payloads). A plain `Vec<u8>` is
//! encoded element by element.
//!
//! # Errors
//!
//! [`RpcError`] splits by layer: [`RpcError::Transport`] ([`TransportError`]: server not
//! running, busy, disconnected, message too large, incompatible peer, protocol error),
//! call-level variants ([`RpcError::DeadlineExceeded`], [`RpcError::Cancelled`]) and
//! [`RpcError::Server`] (the server refused the call: malformed request, handler panic,
//! shutting down), and [`RpcError::Incompatible`] (a server built from another version of
//! the trait lacks the method or has it with other types; nothing was sent: see
//! [`evolution`]). The application's own error type stays the method's `E`.
//!
//! # Deadlines and cancellation
//!
//! Every call has a deadline ([`ClientConfig::default_timeout`], 10 s unless changed;
//! per call with `FooClient::with_timeout`). It travels to the server as a relative timeout,
//! and the server drops the handler when it passes. Dropping a call's future cancels the
//! call on the server too. A call made from inside a handler never outlives the call
//! being served ([`context::current`]).
//!
//! # Runtime
//!
//! Clients and servers run on tokio and need its I/O and time drivers (`#[tokio::main]`
//! and `#[tokio::test]` enable both; with `runtime::Builder`, call `enable_all()`). Either
//! runtime flavor works; each connection is one task on each side. Code without a runtime
//! uses the [blocking client](blocking), which brings a small one of its own.

#![warn(missing_docs)]

pub mod access;
pub mod blob;
pub mod blocking;
pub mod callback;
pub mod child;
pub mod client;
pub mod codec;
pub mod context;
mod deadlines;
mod engine;
pub mod error;
pub mod evolution;
mod handshake;
pub mod introspect;
pub mod reconnect;
pub mod server;
pub mod service;
pub mod spans;
pub mod stats;
pub mod stream;
pub mod tcp;
pub mod wire;

/// Porting a tarpc service to pipe-rpc: what changes, step by step, with tarpc's own
/// example ported (its pipe-rpc code runs as a doc test).
#[doc = include_str!("../../docs/PORTING-FROM-TARPC.md")]
pub mod porting {}

#[doc(hidden)]
pub mod __private;

pub use access::{AccessPolicy, PeerCredentials, ServerIdentity, Sid};
pub use blob::Blob;
pub use blocking::{BlockingStream, Upload};
pub use callback::{Callback, Client};
pub use client::{CallOptions, Channel, ClientConfig, PeerInfo};
pub use codec::{Codec, DecodeLimits};
pub use error::{Direction, RpcError, ServeError, ServerError, ServerErrorKind, TransportError};
pub use reconnect::Reconnect;
/// Turns a trait into a typed RPC service: client, server adapter and wire types.
/// See the [crate docs](crate) for what it generates.
pub use rpc_macros::service;
pub use server::{BoundServer, DEFAULT_STREAM_WINDOW, Listener, Server, ServerConfig, ShutdownHandle};
pub use service::{Service, ServiceId};
pub use stats::{CallStats, ClientStats, ErrorCounts, ServerStats, StatsHandle};
pub use stream::{RpcSink, RpcStream, SinkClosed};
/// The pipe layer: names, listener, connect options and their platform rules.
pub use transport_pipe as pipe;
pub use transport_pipe::{ConnectOptions, PipeName};

//! The `#[service]` attribute of pipe-rpc. Use it through `rpc_core::service`; see
//! [`macro@service`] for everything it accepts and generates.

use proc_macro::TokenStream;

mod attr;
mod describe;
mod expand;
mod fallback;
mod fingerprint;
mod model;
mod naming;
mod validate;

/// Turns a trait into a typed RPC service: the server adapter, the client and the wire
/// types, all generated from the one trait so the two sides cannot drift apart.
///
/// Use it as `#[rpc_core::service]`.
///
/// ```
/// use rpc_core::RpcError;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, Serialize, Deserialize)]
/// pub struct QueueInfo { pub name: String, pub running: bool }
///
/// #[derive(Debug, Serialize, Deserialize)]
/// pub enum QueueError { Exists(String), Rpc(RpcError) }
/// impl From<RpcError> for QueueError {
///     fn from(e: RpcError) -> Self { QueueError::Rpc(e) }
/// }
///
/// /// Docs on the trait stay on the trait.
/// #[rpc_core::service]
/// pub trait WorkQueues {
///     /// Creates a queue in the stopped state. (Also the docs of `WorkQueuesClient::create`.)
///     async fn create(&self, name: String) -> Result<QueueInfo, QueueError>;
///     async fn list(&self) -> Vec<QueueInfo>;
///     async fn clear(&self);
/// }
///
/// // The server side: implement the trait with plain `async fn`s.
/// struct Queues;
/// impl WorkQueues for Queues {
///     async fn create(&self, name: String) -> Result<QueueInfo, QueueError> {
///         Ok(QueueInfo { name, running: false })
///     }
///     async fn list(&self) -> Vec<QueueInfo> { Vec::new() }
///     async fn clear(&self) {}
/// }
/// let server = rpc_core::Server::new(WorkQueuesServer::new(Queues));
///
/// // The client side: one async method per RPC.
/// async fn client() -> Result<(), QueueError> {
///     let q = WorkQueuesClient::connect("work-queues").await?;
///     let info: QueueInfo = q.create("jobs".into()).await?;   // Result<QueueInfo, QueueError>
///     let all: Vec<QueueInfo> = q.list().await?;             // Result<Vec<QueueInfo>, RpcError>
///     q.clear().await?;                                      // Result<(), RpcError>
///     Ok(())
/// }
/// ```
///
/// # What it generates
///
/// For `trait Foo` (a raw name `r#Foo` gives `FooClient` etc.), next to the trait and
/// with the trait's visibility (each generated name can be chosen: see
/// [Arguments](#arguments)):
///
/// | item | what it is |
/// |---|---|
/// | `trait Foo` | the trait, with its docs and attributes, now `Foo: Send + Sync`; each `async fn m(&self, ..) -> R` becomes `fn m(&self, ..) -> impl Future<Output = R> + Send`. Implement it with plain `async fn`s; the compiler checks that their futures are `Send`. |
/// | `FooServer<S>` | the server adapter: `new(S)`, `from_arc(Arc<S>)`, `get_ref()` for `S: Foo + 'static` (the server shares the implementation with every connection, so it cannot borrow: `FooServer::new(&mut state)` is an error at that borrow), `Clone` (shares `S`; `S: Clone` not needed), `Debug`. Implements `rpc_core::Service`; hand it to `rpc_core::Server::new`. |
/// | `FooClient` | the client: `Clone` (clones share one connection) and `Debug`, with `const ID`, `connect(name)`, `connect_with(name, ClientConfig)`, `from_channel(Channel)`, `channel()`, `with_timeout(Duration)`, `with_options(CallOptions)`, and one `async` method per RPC. |
/// | `FooBlockingClient` | the blocking client, for code without an async runtime: `Clone`, `Debug`, `Send + Sync`, with `connect(name)`, `connect_with(name, ClientConfig)`, `channel()`, `with_timeout(Duration)`, `with_options(CallOptions)`, `as_async()`, `into_async()`, and one plain `fn` per RPC (see below and `rpc_core::blocking`). It runs its connection on a background thread; inside a tokio runtime every method returns `RpcError::BlockingInRuntime`. |
/// | `FooRequest`, `FooResponse` | the wire enums: per method, a variant named in CamelCase (`create_queue` → `CreateQueue`), holding the arguments as named fields (`CreateQueue { name: String }`) or the handler's result (`CreateQueue(Result<QueueInfo, QueueError>)`; `()` for methods without a return type). |
///
/// Docs on a method become the docs of its client method; a method without docs gets a
/// one-line doc there, so `missing_docs` stays quiet about generated items. All
/// attributes stay on the trait method. A `#[cfg(..)]` on a method is repeated on every
/// generated piece of it (variants, match arms, client method, type checks), so a
/// disabled method may mention types that do not exist; a `#[cfg(..)]` on the trait
/// (written below `#[service]`) is repeated on every generated item. `#[deprecated]` on
/// a method is repeated on its client method. Lint attributes (`#[allow]`, `#[expect]`,
/// `#[warn]`, `#[deny]`, `#[forbid]`, and `#[cfg_attr(.., allow(..))]` holding only
/// those) on a method are repeated on its variants, match arm and client method, and on
/// the trait on every generated item, so `#[allow(non_snake_case)] async fn GetX(..)` builds
/// under `#![deny(warnings)]`. `#[expect(..)]` is checked on your own item and repeated as
/// `#[allow(..)]` (a generated copy may not trip the lint); `#[forbid(..)]` is repeated as
/// `#[deny(..)]`, and the generated code's own allowances still apply inside its bodies.
///
/// # Client signature of each method shape
///
/// The rule is purely syntactic. A return type that is a path whose last segment is
/// `Result` with exactly two type arguments (`Result<T, E>`, `std::result::Result<T, E>`,
/// `core::result::Result<T, E>`, ...) is *fallible*; anything else is *plain*.
///
/// | trait method | client method |
/// |---|---|
/// | `async fn f(&self, a: A) -> T` | `async fn f(&self, a: A) -> Result<T, RpcError>` |
/// | `async fn f(&self, a: A)` or `-> ()` | `async fn f(&self, a: A) -> Result<(), RpcError>` |
/// | `async fn f(&self, a: A) -> Result<T, E>` | `async fn f(&self, a: A) -> Result<T, E>`: transport and call errors arrive as `E::from(RpcError)`, so `E: From<RpcError>` is required (checked at compile time, reported at `E`) |
/// | `async fn f(&self) -> Reply` with `type Reply = Result<T, E>` | `async fn f(&self) -> Result<Reply, RpcError>`: an alias opts out of flattening, for an `E` that cannot hold an `RpcError` (such as `String`) |
/// | `async fn f(&self) -> io::Result<T>` (one type argument) | `async fn f(&self) -> Result<io::Result<T>, RpcError>` |
/// | `#[oneway] async fn f(&self, a: A)` | `async fn f(&self, a: A) -> Result<(), RpcError>`: returns once the message is queued; no reply |
/// | `async fn f(&self, a: A) -> RpcStream<T>` | `async fn f(&self, a: A) -> Result<RpcStream<T>, RpcError>`: the handler's items as they come |
/// | `async fn f(&self, s: RpcStream<U>) -> R` | `async fn f(&self, s: RpcStream<U>) -> ..` as for `R`: the client's items reach the handler as a stream |
///
/// | `async fn f(&self, c: Callback<EventsClient>) -> R` | `async fn f(&self, c: impl Service<Request = EventsRequest, Response = EventsResponse>) -> ..`: pass `EventsServer::new(handler)`; the handler of `f` calls `c` back while the call is open |
///
/// The blocking client's method of each shape returns the same type as the async one,
/// without `async`, except that a method returning `RpcStream<T>` returns
/// `Result<BlockingStream<T>, RpcError>` (an `Iterator` of `Result<T, RpcError>`; dropping it
/// cancels the call) and an `RpcStream<U>` argument takes `impl Upload<U>`: any
/// `IntoIterator<Item = U> + Send + 'static`, or an `RpcStream<U>`.
///
/// `RpcStream` is recognised by its last path segment (`RpcStream<T>`, `rpc_core::RpcStream<T>`),
/// as a whole argument (at most one per method) or the whole return type; elsewhere it is an
/// error. A `#[oneway]` method returns nothing and takes no stream. The wire enums gain one
/// hidden `__{Variant}Item(U)` request variant per method that takes a stream, after all
/// the method variants.
///
/// A fallible method's `Result` is taken to be `core::result::Result` whatever path
/// spells it.
///
/// # Rules
///
/// Every violation is reported at the offending token, with what to write instead, and
/// all of them in one compile. On error the trait is still emitted as written, so code
/// implementing or using it reports nothing extra.
///
/// - Methods are `async fn` taking `&self`: the server shares one instance across
///   concurrent calls, so no `self`, `&mut self` or `self: Box<Self>` (keep mutable state
///   behind a `Mutex`, `RwLock` or atomics), and no associated functions.
/// - No generic or lifetime parameters, `where` clauses, default bodies, `const`,
///   `unsafe`, `extern` or variadic methods.
/// - Arguments are plain names (`name: Type`; raw names such as `r#in` are fine), not
///   patterns, `_` or `mut x`, without attributes, and unique.
/// - Argument and return types (and what an `RpcStream` carries) are owned wire types: no references (`&str` → `String`,
///   `&[T]` → `Vec<T>`), no lifetimes other than `'static`, no `impl Trait`, `_`, `!` or
///   `Self`. Each must be `Serialize + DeserializeOwned + Send + 'static`; that is
///   checked at compile time and reported at the type. For bulk bytes use
///   `serde_bytes::ByteBuf`.
/// - The trait has no generic parameters, `where` clause, associated types or consts,
///   or macro invocations. The only supertraits allowed are `Send`, `Sync` and
///   `'static`, which the generated trait has anyway.
/// - A method may not be named like an item of the generated clients: `connect`,
///   `connect_with`, `from_channel`, `channel`, `with_timeout`, `with_options`, `clone`
///   (it would hide `Clone::clone`), `ID`, `as_async`, `into_async`. Two methods may not map
///   to the same variant (`get_x` and `getX`).
/// - A generated item may not share its name with another item of the module: rustc
///   reports the duplicate at `#[service]` (E0428, and then that your item takes no type
///   parameter); choose another name for the generated one (`server = "HelloService"`).
/// - Every argument and return type is checked once, at the type: a type without its
///   serde derives gets one error there, and code that calls the service says which
///   bound it misses.
///
/// ```compile_fail
/// #[rpc_core::service]
/// pub trait Counter {
///     // error: take `&self`, not `&mut self`: the server shares one instance across
///     // concurrent calls; keep mutable state behind interior mutability (...)
///     async fn increment(&mut self) -> u64;
/// }
/// ```
///
/// ```compile_fail
/// #[rpc_core::service]
/// pub trait Greeter {
///     // error: a reference cannot cross the pipe: take `String` instead of `&str`
///     async fn greet(&self, name: &str) -> String;
/// }
/// ```
///
/// # Arguments
///
/// `#[rpc_core::service(crate = path, name = "..", client = "..", blocking_client = "..",
/// server = "..", request = "..", response = "..", derive(..))]`, all optional:
///
/// - `crate = path` (or `crate = "path"`): where the generated code finds rpc-core.
///   Default `::rpc_core`. Needed when rpc-core is renamed in `Cargo.toml` or reached
///   through a re-export: `#[my_sdk::rpc::service(crate = ::my_sdk::rpc)]`.
/// - `name = "work-queues.v1"`: the service name checked in the connection handshake.
///   Default: the trait's name.
/// - `client = "FooStub"`, `blocking_client = "FooSync"`, `server = "FooService"`,
///   `request = "FooCall"`, `response = "FooReply"` (a string or a plain identifier): the
///   names of the generated clients, server adapter and wire enums, when the defaults
///   (`FooClient`, `FooBlockingClient`, `FooServer`, `FooRequest`, `FooResponse`) are taken, for instance by a type of your own named
///   `FooServer` (as in tarpc's examples). The names do not reach the wire or the
///   fingerprint. Errors about a generated item (a clash) point at the name given here.
/// - `derive(Clone, PartialEq, Debug)`: derives added to the wire enums, next to serde's
///   (for logging requests, or comparing them in tests). Every argument and return type
///   must then implement them too.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// /// Your own type, named like the default server adapter.
/// pub struct HelloServer;
///
/// #[rpc_core::service(server = "HelloService", derive(Clone, Debug, PartialEq))]
/// pub trait Hello {
///     async fn hello(&self, name: String) -> String;
/// }
///
/// impl Hello for HelloServer {
///     async fn hello(&self, name: String) -> String { format!("hello, {name}") }
/// }
///
/// let server = rpc_core::Server::new(HelloService::new(HelloServer));
/// let call = HelloRequest::Hello { name: "you".into() };
/// assert_eq!(call.clone(), call);
/// ```
///
/// # Wire compatibility
///
/// The variant order, that is the method declaration order, is the wire format. A
/// client and a server agree when their `ServiceId`s (name and fingerprint) agree; the
/// handshake refuses a peer whose id differs. The fingerprint is FNV-1a 64 (offset basis
/// `0xcbf29ce484222325`, prime `0x100000001b3`) over the UTF-8 text
///
/// ```text
/// {service name}:{method}({arg type},{arg type})->{return type};{method}(..)->..;..
/// ```
///
/// with the methods in declaration order, method names without `r#`, argument names
/// left out, each type's tokens as written with all whitespace removed, `()` for a
/// missing return type and `oneway` as the return type of a `#[oneway]` method. For
/// `WorkQueues` above:
/// `WorkQueues:create(String)->Result<QueueInfo,QueueError>;list()->Vec<QueueInfo>;clear()->();`.
/// It is conservative: respelling a type (`String` as `std::string::String`) changes it
/// although the wire format does not change. A method under `#[cfg(..)]` counts only
/// when it is compiled in: each method's piece of the text is hashed in a `const` under
/// that method's `#[cfg]`s, so the fingerprint covers exactly the variants the wire enums
/// have. A client and a server built with different features that enable different
/// methods (and so number the later methods differently) refuse each other in the
/// handshake; a disabled method leaves the fingerprint as if it were not written. The
/// fingerprints of the callback traits of the compiled-in methods are then mixed in.
///
/// # Hygiene
///
/// Generated code names everything by absolute path (`::core::..` and
/// `{crate}::__private::..`) and uses hygienic names for its locals, so it compiles under
/// `#![no_implicit_prelude]`, beside user items named `Result` or `Box`, and with
/// arguments named `service` or `request`.
///
/// # Debugging
///
/// Set `RPC_MACROS_DEBUG=1` while building to print every expansion to stderr.
#[proc_macro_attribute]
pub fn service(args: TokenStream, item: TokenStream) -> TokenStream {
    let out = expand::service(args.into(), item.into());
    if std::env::var_os("RPC_MACROS_DEBUG").is_some() {
        eprintln!("{out}");
    }
    out.into()
}

//! Asking an endpoint what it is, without knowing its service in advance.
//!
//! [`probe`] connects to a pipe and sends a hello with the probe flag
//! ([`wire::HELLO_PROBE`](crate::wire::HELLO_PROBE)) instead of a service name: the server
//! answers with its identity (service name, fingerprint, protocol version, the codecs it
//! accepts, capabilities, limits, process id) and closes. No session starts, no handler
//! runs. The client side also reads the server's credentials from the operating system
//! ([`ServerDescription::server`]), as a connecting client does.
//!
//! A server with [introspection](crate::ServerConfig::introspection) on also lists its
//! methods ([`MethodInfo`]): name, wire variant, arguments and their Rust types as text,
//! return type, shape (call, one-way, streams, callback) and the first paragraph of the
//! method's documentation. `#[service]` generates that list (`Service::METHODS`); what it
//! says is what a JSON client needs to build a request of the generated request enum
//! (`{"Variant":{"arg":value,...}}`), which is how the `pipe-rpc` command-line tool calls
//! methods. Introspection is off by default because it hands the method list to every
//! client the access policy admits, which a server may not want to publish.
//!
//! A server that predates probing refuses the probe as a wrong service: that refusal names
//! the service, its fingerprint, its protocol version and its process id, so [`probe`]
//! still reports those, with [`ServerDescription::legacy`] set.
//!
//! ```
//! use rpc_core::{ClientConfig, Server, ServerConfig};
//!
//! #[rpc_core::service]
//! pub trait Greeter {
//!     /// Says hello to `name`.
//!     async fn greet(&self, name: String) -> String;
//! }
//! struct Hello;
//! impl Greeter for Hello {
//!     async fn greet(&self, name: String) -> String { format!("hello {name}") }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let name = format!("rpc-core-doc-probe-{}", std::process::id());
//! let config = ServerConfig::default().introspection(true);
//! let server = Server::new(GreeterServer::new(Hello)).config(config).bind(name.as_str())?;
//! # let shutdown = server.shutdown_handle();
//! # let running = tokio::spawn(server.run());
//! let about = rpc_core::introspect::probe(name.as_str(), ClientConfig::default()).await?;
//! assert_eq!(about.service, "Greeter");
//! assert_eq!(about.fingerprint, GreeterClient::ID.fingerprint);
//! assert_eq!(about.methods[0].name, "greet");
//! assert_eq!(about.methods[0].variant, "Greet");
//! assert_eq!(about.methods[0].args[0].ty, "String");
//! assert_eq!(about.methods[0].doc, "Says hello to `name`.");
//! # shutdown.shutdown();
//! # running.await??;
//! # Ok(())
//! # }
//! ```

use std::borrow::Cow;
use tokio::time::Instant;

use transport_pipe::{PeerCredentials, PipeName};

use crate::client::ClientConfig;
use crate::codec::Codec;
use crate::error::{RpcError, TransportError};

/// One argument of a method: its name and its Rust type as written in the trait.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ArgInfo {
    /// The argument's name: its field in the request variant.
    pub name: Cow<'static, str>,
    /// Its type as written (`Vec<u8>`, `Option<Record>`), for people; not checked.
    pub ty: Cow<'static, str>,
}

impl ArgInfo {
    /// An argument (generated code, and decoding a probe's answer).
    pub const fn new(name: Cow<'static, str>, ty: Cow<'static, str>) -> ArgInfo {
        ArgInfo { name, ty }
    }
}

/// How a method exchanges values, beyond its request and reply.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct MethodShape {
    /// `#[oneway]`: nothing comes back.
    pub oneway: bool,
    /// Returns `Result<T, E>`: an answer may be `{"Err": ...}`.
    pub fallible: bool,
    /// The argument that streams items from the caller (`RpcStream<T>`): its name and item
    /// type `T`. Its items travel as the request variant named in
    /// [`upload_variant`](Self::upload_variant).
    pub upload: Option<ArgInfo>,
    /// The request enum's variant that carries one item of the upload (`__{Variant}Item`).
    pub upload_variant: Option<Cow<'static, str>>,
    /// The item type of the stream the handler returns (`RpcStream<T>`).
    pub download: Option<Cow<'static, str>>,
    /// The argument that is a callback to the caller (`Callback<C>`): its name and `C`.
    pub callback: Option<ArgInfo>,
}

impl MethodShape {
    /// A plain call.
    pub const CALL: MethodShape = MethodShape {
        oneway: false,
        fallible: false,
        upload: None,
        upload_variant: None,
        download: None,
        callback: None,
    };

    /// A short name: `call`, `one-way`, `download`, `upload`, `upload+download`, each with
    /// `+callback` if the method takes one.
    pub fn describe(&self) -> String {
        let base = match (self.oneway, self.upload.is_some(), self.download.is_some()) {
            (true, ..) => "one-way",
            (_, true, true) => "upload+download",
            (_, true, false) => "upload",
            (_, false, true) => "download",
            _ => "call",
        };
        if self.callback.is_some() { format!("{base}+callback") } else { base.to_owned() }
    }
}

/// A method of a service, as `#[service]` describes it and an introspecting server tells a
/// probe (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct MethodInfo {
    /// The method's name in the trait (`create_queue`).
    pub name: Cow<'static, str>,
    /// Its variant in the request and response enums (`CreateQueue`): what a JSON request
    /// is keyed by.
    pub variant: Cow<'static, str>,
    /// The arguments the request carries, in order (a stream or callback argument is not
    /// among them: see [`shape`](Self::shape)).
    pub args: Cow<'static, [ArgInfo]>,
    /// What the handler returns, as written (`()` for nothing; `RpcStream<T>` for a
    /// download).
    pub returns: Cow<'static, str>,
    /// One-way, streams, callback, fallible.
    pub shape: MethodShape,
    /// The first paragraph of the method's documentation, lines joined by spaces (empty
    /// if undocumented).
    pub doc: Cow<'static, str>,
}

impl MethodInfo {
    /// The method as a signature: `name(arg: Type, ...) -> Returns`, stream and callback
    /// arguments included.
    pub fn signature(&self) -> String {
        let mut args: Vec<String> = self.args.iter().map(|a| format!("{}: {}", a.name, a.ty)).collect();
        if let Some(up) = &self.shape.upload {
            args.push(format!("{}: RpcStream<{}>", up.name, up.ty));
        }
        if let Some(cb) = &self.shape.callback {
            args.push(format!("{}: Callback<{}>", cb.name, cb.ty));
        }
        let returns = if self.returns == "()" { String::new() } else { format!(" -> {}", self.returns) };
        format!("{}({}){returns}", self.name, args.join(", "))
    }
}

/// What [`probe`] learned about an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerDescription {
    /// The service it serves.
    pub service: String,
    /// The service's fingerprint (see `FooClient::ID`).
    pub fingerprint: u64,
    /// The protocol version the server would speak with this build (the newest both speak;
    /// for a [`legacy`](Self::legacy) server, the newest it speaks).
    pub protocol_version: u16,
    /// The codecs it accepts (empty for a legacy server: it did not say).
    pub codecs: Vec<Codec>,
    /// Codec ids it accepts that this build does not know.
    pub unknown_codecs: Vec<u8>,
    /// The capability bits it announced that this build announces too ([`crate::wire::caps`]).
    pub capabilities: u32,
    /// Largest message it accepts.
    pub max_message: u32,
    /// Calls it admits at once on a connection.
    pub max_in_flight: u32,
    /// One-way calls it admits before granting more credit.
    pub max_oneway: u32,
    /// Bytes of a client stream it accepts before giving credit.
    pub stream_window: u32,
    /// The process id the server reported.
    pub server_pid: u32,
    /// The server's credentials as the operating system reports the pipe's peer: the
    /// process and user that really serve the pipe.
    pub server: Option<PeerCredentials>,
    /// Whether the server lists its methods ([`ServerConfig::introspection`](crate::ServerConfig::introspection)).
    pub introspection: bool,
    /// Its methods, when [`introspection`](Self::introspection) is on.
    pub methods: Vec<MethodInfo>,
    /// The server predates probing: it refused the probe as a wrong service, so only the
    /// service, fingerprint, version and process id are known.
    pub legacy: bool,
}

impl ServerDescription {
    /// The method called `name` (its trait name, or its wire variant).
    pub fn method(&self, name: &str) -> Option<&MethodInfo> {
        self.methods.iter().find(|m| m.name == name).or_else(|| self.methods.iter().find(|m| m.variant == name))
    }
}

/// Connects to `name`, asks the server to describe itself and returns what it said (see
/// the [module docs](self)).
///
/// `config` supplies the connect options (a busy server is retried within
/// `config.connect` like a normal connect; a name nobody serves fails at once with
/// [`TransportError::NotRunning`] unless `wait_for_server` is set), the handshake timeout
/// and the largest answer accepted. [`ClientConfig::expect_server`] is not applied: a probe
/// sends nothing but the probe flag and reports who serves the pipe
/// ([`ServerDescription::server`]) instead. The server's access policy still applies: a
/// client it does not admit gets [`TransportError::PermissionDenied`].
///
/// # Errors
///
/// What [`Channel::connect`](crate::Channel::connect) reports for the pipe; a peer that is
/// not a pipe-rpc endpoint, or answers something else than a description, is
/// [`TransportError::Protocol`].
pub async fn probe(name: impl Into<PipeName>, config: ClientConfig) -> Result<ServerDescription, RpcError> {
    let name = name.into();
    let started = Instant::now();
    let deadline = config.connect.deadline_from(started);
    let mut refusals: u32 = 0;
    loop {
        let stream = transport_pipe::connect_since(name.clone(), &config.connect, started).await?;
        let server = stream.peer_credentials().map_err(|e| TransportError::Disconnected {
            detail: format!("cannot read who serves `{}`: {e}", name.as_str()),
        })?;
        let max = config.max_message.clamp(1024, transport_pipe::MAX_FRAME_CEILING);
        let mut framed = transport_pipe::length_delimited(stream, max);
        let refused = match crate::handshake::probe(&mut framed, config.codec, max, config.handshake_timeout).await {
            Ok(mut description) => {
                description.server = Some(server);
                return Ok(description);
            }
            Err(e) => e,
        };
        // As `Channel::connect`: a server at its connection limits is retried over a new
        // pipe, within the connect timeout.
        let retry = match &refused {
            RpcError::Transport(TransportError::Busy { .. }) => true,
            RpcError::Transport(TransportError::NotRunning { .. }) => config.connect.wait_for_server,
            _ => false,
        };
        refusals += 1;
        let now = Instant::now();
        if !retry || now >= deadline {
            return Err(refused);
        }
        tokio::time::sleep_until((now + config.connect.backoff(refusals)).min(deadline)).await;
    }
}

//! Local pipes as message transports for pipe-rpc: Unix domain sockets on Unix, named pipes on
//! Windows, behind one API.
//!
//! - [`PipeName`] turns a plain name such as `"calc"` into the platform's address, or takes an
//!   explicit path.
//! - [`PipeListener`] binds a name (refusing to displace a live server, reclaiming a stale
//!   socket file of its own user) and accepts [`PipeStream`]s.
//! - [`connect`] connects, retrying with backoff while the server is busy, for at most
//!   [`ConnectOptions::timeout`]; a name nobody serves is reported at once, unless
//!   [`ConnectOptions::wait_for_server`] asks to wait for a server that is starting.
//! - [`ChildPipe`] and [`parent_pipe`] connect a parent and a child process it spawns over a
//!   pipe pair only the two hold (no name, nothing on the filesystem).
//! - [`length_delimited`] frames a stream into messages with a bounded size, and
//!   [`serde_transport`] turns the frames into a typed tarpc [`Transport`].
//!
//! All failures are an [`Error`] with an [`ErrorKind`] and a message that names the pipe, its
//! resolved address and any limit involved.
//!
//! # Example
//!
//! ```no_run
//! use futures::{SinkExt, StreamExt};
//! use transport_pipe::{ConnectOptions, DEFAULT_MAX_FRAME, PipeListener, connect, length_delimited};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // Server: echo every frame back.
//! let listener = PipeListener::bind("echo-demo")?;
//! tokio::spawn(async move {
//!     while let Ok(stream) = listener.accept().await {
//!         tokio::spawn(async move {
//!             let mut frames = length_delimited(stream, DEFAULT_MAX_FRAME);
//!             while let Some(Ok(frame)) = frames.next().await {
//!                 if frames.send(frame.freeze()).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         });
//!     }
//! });
//!
//! // Client.
//! let stream = connect("echo-demo", &ConnectOptions::default()).await?;
//! let mut frames = length_delimited(stream, DEFAULT_MAX_FRAME);
//! frames.send(bytes::Bytes::from_static(b"hello")).await?;
//! assert_eq!(&frames.next().await.unwrap()?[..], b"hello");
//! # Ok(())
//! # }
//! ```
//!
//! ## Platform-specific behavior
//!
//! ### Unix
//!
//! A plain name `NAME` is the filesystem socket `$XDG_RUNTIME_DIR/pipe-rpc/NAME.sock` if
//! `XDG_RUNTIME_DIR` names an existing directory, else `{temp_dir}/pipe-rpc-{uid}/NAME.sock`.
//! The Linux abstract namespace is never used: it has no permissions. The listener creates the
//! directory with mode `0700` and refuses one that is not private (a symlink, owned by another
//! user, or group/world-writable); clients refuse such a directory too. The socket file gets
//! mode `0600` ([`ListenOptions::mode`]). A socket path holds at most 107 bytes on Linux and 103
//! on macOS/BSD (`sun_path` is 108/104 bytes including the NUL); longer resolved paths are
//! rejected with [`ErrorKind::InvalidName`]. A stale socket file left by a crashed server is
//! detected (connection refused) and replaced if it belongs to the listener's effective user;
//! another user's stale socket is refused with [`ErrorKind::ForeignSocket`] (root included),
//! like a file or symlink in the way. The listener removes its own socket file on drop.
//!
//! ### Windows
//!
//! A plain name `NAME` is the local named pipe `\\.\pipe\pipe-rpc.NAME` (whole name at most
//! 256 characters, case-insensitive; the prefix keeps pipe-rpc's endpoints apart from other
//! programs' pipes). The listener uses interprocess's defaults: the first instance
//! is created with `FILE_FLAG_FIRST_PIPE_INSTANCE`, so a name another process serves is
//! reported as [`ErrorKind::NameInUse`], naming that process (its pid, from the pipe, and its
//! user SID where it can be read), and remote clients are rejected. The pipe gets an
//! owner-only security descriptor ([`ListenOptions::windows_sddl`], default
//! [`OWNER_ONLY_SDDL`]) owned by the server's user; [`ListenOptions::mode`] is ignored. Clients
//! open the pipe at identification level, so a server can learn who they are but cannot act
//! as them. Peer users are SIDs, read between any two users without privileges
//! ([`PipeStream::peer_credentials`]: the server reads its client's once it has read from the
//! pipe).
//! While one client waits to be accepted, others see `ERROR_PIPE_BUSY`, which [`connect`]
//! retries.
//!
//! See [`PipeName`], [`PipeListener`], [`PipeStream`] and [`connect`] for details.

mod child;
mod connect;
mod creds;
mod error;
mod frame;
mod framed;
mod list;
mod listen;
mod name;
mod platform;
mod stream;

pub use child::{ChildPipe, PARENT_PIPE_ENV, parent_pipe};
pub use connect::{ConnectOptions, connect, connect_since};
pub use creds::{ParseSidError, PeerCredentials, Sid};
pub use error::{Error, ErrorKind};
pub use frame::{
    DEFAULT_MAX_FRAME, LengthPrefixed, MAX_FRAME_CEILING, READ_AHEAD, Transport, effective_max_frame, length_delimited,
    length_delimited_codec, serde_transport,
};
pub use framed::{FramedPipe, ZERO_COPY_MIN};
pub use list::{LocalEndpoint, list_local};
pub use listen::{ListenOptions, OWNER_ONLY_SDDL, PipeListener};
pub use name::{NAME_MAX, PipeName};
pub use stream::PipeStream;

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync + 'static>(_: &T) {}
    fn send<T: Send>(_: &T) {}

    /// rpc-core moves listeners, streams and these futures into spawned tasks.
    #[test]
    fn public_types_and_futures_are_send() {
        fn types<L: Send + Sync, S: Send + Sync + Unpin, E: Send + Sync, N: Send + Sync, O: Send + Sync>() {}
        types::<PipeListener, PipeStream, Error, PipeName, ConnectOptions>();
        let opts = ConnectOptions::default();
        let fut = connect("send-check", &opts);
        send(&fut);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let listener = PipeListener::bind(format!("send-check-{}", std::process::id())).unwrap();
        send(&listener.accept());
        send_sync(&ListenOptions::default());
    }
}

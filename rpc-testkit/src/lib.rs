//! Test harness for pipe-rpc services: cross-process unit tests from a normal `#[test]` or
//! `#[tokio::test]`, and an in-memory pair for pure unit tests.
//!
//! Add it as a dev-dependency beside `rpc-core`. In a test file:
//!
//! ```no_run
//! # #[rpc_core::service] pub trait Echo { async fn echo(&self, s: String) -> String; }
//! # #[derive(Clone)] struct Me; impl Echo for Me { async fn echo(&self, s: String) -> String { s } }
//! use rpc_core::Server;
//! use rpc_testkit::{ServerCommand, serve_in_child, watchdog, TEST_WATCHDOG};
//!
//! // The server's entry: when this test binary is re-run as a server for another test, this
//! // "test" serves `EchoServer` on the pipe that test chose. In a normal run it does nothing.
//! #[test]
//! fn echo_server() {
//!     serve_in_child("echo_server", |child| Server::new(EchoServer::new(Me)).bind(child.name().clone()));
//! }
//!
//! #[tokio::test]
//! async fn echo_answers_across_processes() {
//!     watchdog(TEST_WATCHDOG, async {
//!         // A child process, a pipe name no other test uses, ready when this returns.
//!         let server = ServerCommand::this_binary("echo_server").spawn().await.unwrap();
//!         let client = EchoClient::connect(server.name().clone()).await.unwrap();
//!         assert_eq!(client.echo("hi".into()).await.unwrap(), "hi");
//!         // `server` dropped here (or while a failing assertion unwinds): the process is
//!         // killed and its socket and lock files are removed.
//!     })
//!     .await;
//! }
//!
//! #[tokio::test]
//! async fn echo_answers_in_memory() {
//!     let (client, _server) = rpc_testkit::pair::<EchoClient, _>(EchoServer::new(Me)).await;
//!     assert_eq!(client.echo("hi".into()).await.unwrap(), "hi");
//! }
//! ```
//!
//! # What it does for a test
//!
//! - **A server in a child process**: [`ServerCommand::this_binary`] re-runs the test binary
//!   itself for one `#[test]` that calls [`serve_in_child`] (libtest's own `--exact`
//!   selection; an environment variable tells that test it is the server), or
//!   [`ServerCommand::program`] runs another program (a `[[bin]]` of the package:
//!   `env!("CARGO_BIN_EXE_name")`). The parent waits for its ready line (20 s at most, then
//!   it is killed and the error carries its output).
//! - **A unique pipe name** per server: [`unique_name`], from the process id, a counter and
//!   the test's name.
//! - **A watchdog**: a server process is killed once it has lived 120 s
//!   ([`ServerCommand::watchdog`]); [`watchdog`] and [`blocking_watchdog`] fail a test that
//!   takes too long, dropping its servers first.
//! - **Teardown whatever happens**: dropping the [`TestServer`] (at the end of the test, or
//!   while a failing test unwinds) kills the process and removes its socket and lock files;
//!   a child of [`serve_in_child`] also shuts down by itself (gracefully, removing its files)
//!   when its stdin ends, which is how it sees the test process die, even by `SIGKILL`. A
//!   `TestServer` that cannot remove its files fails the test: a passing test leaves nothing
//!   behind. Before this crate, killed test servers left their `NAME.sock` and
//!   `NAME.sock.lock` in the per-user directory (`/tmp/pipe-rpc-UID/`) for good.
//! - **An in-memory pair**: [`pair`] connects a client and a server in this process over
//!   `tokio::io::duplex`, with the same handshake and engine as a pipe.
//!
//! ## Platform-specific behavior
//!
//! On Unix a server's pipe is a socket file (and a lock file beside it) in the per-user
//! directory, which the teardown removes if the server could not. On Windows it is a named
//! pipe, which vanishes with the last handle to it, so a killed server leaves nothing and
//! there are no files to remove; everything else works the same (tested under wine).

mod child;
mod name;
mod pair;
mod process;
mod watchdog;

pub use child::{ChildServer, READY, SHUTTING_DOWN, serve_in_child};
pub use name::unique_name;
pub use pair::{PairServer, pair, pair_with};
pub use process::{
    Crashed, DEFAULT_READY_TIMEOUT, DEFAULT_WATCHDOG, ServerCommand, ServerExit, SpawnError, TestServer,
};
pub use watchdog::{TEST_WATCHDOG, blocking_watchdog, watchdog};

//! The child's side: a `#[test]` of the test binary that, when the binary is re-run as a
//! server for another test ([`ServerCommand::this_binary`](crate::ServerCommand::this_binary)),
//! serves instead of testing.
//!
//! What the two processes agree on: the parent runs the binary with the libtest arguments
//! that select the entry test alone (`<entry> --exact --nocapture --test-threads=1`) and
//! these environment variables; the child prints [`READY`] on a line of its own once its pipe
//! is bound, and serves until a `shutdown` line or the end of its stdin (the parent went
//! away, however it went), then shuts down gracefully (which removes its socket) and exits 0.

use std::future::Future;
use std::io::{BufRead, Write};
use std::time::Duration;

use rpc_core::{BoundServer, PipeName, ServeError, Service};

/// The entry test the child is to run: set only in a child.
pub(crate) const ENTRY_VAR: &str = "RPC_TESTKIT_ENTRY";
/// The pipe name it serves.
pub(crate) const NAME_VAR: &str = "RPC_TESTKIT_NAME";
/// Its arguments, separated by [`ARG_SEP`].
pub(crate) const ARGS_VAR: &str = "RPC_TESTKIT_ARGS";
pub(crate) const ARG_SEP: char = '\u{1f}';
/// Milliseconds after which the child exits whatever it is doing.
pub(crate) const WATCHDOG_VAR: &str = "RPC_TESTKIT_WATCHDOG_MS";

/// The line a child server prints once its pipe is bound.
pub const READY: &str = "rpc-testkit:ready";
/// The line it prints once it has begun to shut down.
pub const SHUTTING_DOWN: &str = "rpc-testkit:shutting-down";

/// How a child server was asked to run: given to the closure of [`serve_in_child`].
#[derive(Debug)]
pub struct ChildServer {
    name: PipeName,
    args: Vec<String>,
}

impl ChildServer {
    /// `Some` if this process is the child that runs `entry` (a test binary re-run by
    /// [`ServerCommand::this_binary`](crate::ServerCommand::this_binary)); `None` in a
    /// normal test run, or in a child that runs another entry. For a server that is more
    /// than a [`BoundServer`]; [`serve_in_child`] is the usual way.
    pub fn current(entry: &str) -> Option<ChildServer> {
        if std::env::var(ENTRY_VAR).ok()? != entry {
            return None;
        }
        let name =
            std::env::var(NAME_VAR).unwrap_or_else(|_| panic!("rpc-testkit: {ENTRY_VAR} is set but {NAME_VAR} is not"));
        let name =
            if name.starts_with('/') || name.starts_with(r"\\") { PipeName::path(name) } else { PipeName::new(name) };
        let args = match std::env::var(ARGS_VAR) {
            Ok(a) if !a.is_empty() => a.split(ARG_SEP).map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        if let Some(ms) = std::env::var(WATCHDOG_VAR).ok().and_then(|v| v.parse::<u64>().ok()) {
            let limit = Duration::from_millis(ms);
            std::thread::spawn(move || {
                std::thread::sleep(limit);
                eprintln!("rpc-testkit: the child server ran past its watchdog ({limit:?}); exiting");
                std::process::exit(3);
            });
        }
        Some(ChildServer { name, args })
    }

    /// The pipe name to serve: unique to the test that started this child.
    pub fn name(&self) -> &PipeName {
        &self.name
    }

    /// The arguments the parent gave ([`ServerCommand::arg`](crate::ServerCommand::arg)).
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Tells the parent the server is ready (its pipe is bound): print this once, after
    /// binding, before serving.
    pub fn ready(&self) {
        // On a line of its own: libtest may have printed `test <entry> ... ` without a newline.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "\n{READY}");
        let _ = out.flush();
    }

    /// Resolves once the parent asks for a shutdown (a `shutdown` line) or goes away (the
    /// end of stdin), read on a thread of its own.
    pub fn shutdown_requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line {
                    Ok(l) if l.trim() == "shutdown" => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(());
        });
        async move {
            let _ = rx.await;
        }
    }
}

/// The entry of a server to run in a child process: call it from a `#[test]` of the test
/// binary. In a normal test run it returns at once (the test passes, having done nothing).
/// When the binary is re-run for this entry by
/// [`ServerCommand::this_binary`](crate::ServerCommand::this_binary), it builds a tokio
/// runtime (two workers), makes the server with `make` (inside the runtime, with the pipe
/// name and arguments the parent chose), tells the parent it is ready, serves until the
/// parent asks it to stop or goes away, shuts down gracefully and ends the process (exit
/// status 0; 2 if `make` failed, 1 if serving did).
///
/// ```no_run
/// # #[rpc_core::service] pub trait Echo { async fn echo(&self, s: String) -> String; }
/// # struct Me; impl Echo for Me { async fn echo(&self, s: String) -> String { s } }
/// use rpc_core::Server;
///
/// #[test]
/// fn echo_server() {
///     rpc_testkit::serve_in_child("echo_server", |child| Server::new(EchoServer::new(Me)).bind(child.name().clone()));
/// }
/// ```
pub fn serve_in_child<S, F>(entry: &str, make: F)
where
    S: Service,
    F: FnOnce(&ChildServer) -> Result<BoundServer<S>, ServeError>,
{
    let Some(child) = ChildServer::current(entry) else { return };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rpc-testkit: cannot build the child's runtime");
    let code = rt.block_on(async {
        let bound = match make(&child) {
            Ok(bound) => bound,
            Err(e) => {
                eprintln!("rpc-testkit: the child server `{entry}` could not start: {e}");
                return 2;
            }
        };
        let stop = child.shutdown_requested();
        child.ready();
        let served = bound
            .run_until(async move {
                stop.await;
                println!("{SHUTTING_DOWN}");
            })
            .await;
        match served {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("rpc-testkit: the child server `{entry}` failed: {e}");
                1
            }
        }
    });
    drop(rt);
    // Not back to libtest: this process was only ever this server.
    std::process::exit(code);
}

//! Serving [`MemoryQueues`] on a pipe until asked to stop, with a graceful shutdown.
//!
//! Shared by the `work-queue-server` binary and the server half of `demo`;
//! [`stop_requested`] also by the servers of `file-transfer` and `pubsub`.

use std::sync::Arc;

use rpc_core::{PipeName, ServeError, Server, ServerConfig};
use tokio::sync::oneshot;

use crate::{MemoryQueues, WorkQueuesServer};

/// What the server does when its standard input ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStdinEof {
    /// Keep serving: a server started with stdin at `/dev/null` (or `NUL`) must not stop
    /// at once.
    KeepServing,
    /// Shut down: stdin is a pipe from a parent process, and its end means the parent is
    /// gone, so the server does not outlive it.
    Shutdown,
}

/// Serves a fresh [`MemoryQueues`] on `name` until Ctrl-C or a `shutdown` line on stdin
/// (or, per `on_eof`, the end of stdin), then shuts down gracefully: stops accepting,
/// lets calls in flight finish, and returns.
///
/// Prints `listening on <name>` once the pipe is bound (callers may wait for that line
/// before connecting), `log: <line>` for each [`log`](crate::WorkQueues::log) line
/// received, and a line for each step of the shutdown.
///
/// # Errors
///
/// The name cannot be bound: another server uses it, it is invalid, or access is denied.
pub async fn serve(name: impl Into<PipeName>, on_eof: OnStdinEof) -> Result<(), ServeError> {
    // Keep a handle on the queues, to report what is left after the server is done.
    let queues = Arc::new(MemoryQueues::new().with_log_sink(|line| println!("log: {line}")));
    // Introspection on: a demo server whose methods `pipe-rpc methods/call` can show and
    // call (it lists them to every client the default same-user policy admits).
    let config = ServerConfig::default().introspection(true);
    let server = Server::new(WorkQueuesServer::from_arc(queues.clone())).config(config).bind(name)?;
    println!("listening on {}", server.name());

    let shutdown = server.shutdown_handle();
    tokio::spawn(async move {
        let why = stop_requested(on_eof).await;
        println!("{why}: shutting down (calls in flight may finish)");
        shutdown.shutdown();
    });
    server.run().await?;

    let (count, pending) = queues.totals();
    println!("stopped; {count} queue(s) with {pending} pending item(s) discarded");
    Ok(())
}

/// Completes when someone asks the server to stop: Ctrl-C, a `shutdown` line on stdin, or
/// (per `on_eof`) the end of stdin; says which.
pub async fn stop_requested(on_eof: OnStdinEof) -> &'static str {
    let stdin = watch_stdin(on_eof);
    tokio::select! {
        // Where Ctrl-C cannot be watched, only stdin can stop the server.
        Ok(()) = tokio::signal::ctrl_c() => "Ctrl-C",
        Ok(why) = stdin => why,
        else => std::future::pending().await,
    }
}

/// Reads stdin on a plain thread and reports the first stop request.
///
/// Not `tokio::io::stdin`: tokio reads stdin with a blocking read that cannot be
/// cancelled, so the runtime could not shut down until another line arrived. A detached
/// thread simply ends with the process.
fn watch_stdin(on_eof: OnStdinEof) -> oneshot::Receiver<&'static str> {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            match line.trim() {
                "shutdown" => {
                    let _ = tx.send("`shutdown` on stdin");
                    return;
                }
                "" => {}
                other => eprintln!("ignoring {other:?} on stdin: the only command is `shutdown`"),
            }
        }
        if on_eof == OnStdinEof::Shutdown {
            let _ = tx.send("stdin closed");
        }
    });
    rx
}

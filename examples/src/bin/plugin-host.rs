//! `plugin-host`: a host that runs a plugin as a child process and talks to it over a pipe
//! pair only the two of them hold (`rpc_core::child`): no pipe name, nothing on the
//! filesystem, and the plugin's exit reported as a typed error with its exit status. The
//! shape of an editor and its language servers, or a build tool and its workers.
//!
//! ```text
//! plugin-host                      run this program itself as the plugin, call it, show a crash
//! plugin-host --plugin-exe PATH    the same with another program as the plugin
//! plugin-host --plugin             (what the host runs) be the plugin: serve the parent
//! ```
//!
//! With cargo: `cargo run -p pipe-rpc-examples --bin plugin-host`.
//!
//! The host spawns the plugin, asks it who it is, transforms some text with it (one call
//! fails with the plugin's own error type), reads a stream of words from it, then asks it to
//! crash with exit code 3 and prints how that call failed: `TransportError::ChildExited`
//! with code 3. It exits 0 if everything went as described. The plugin serves until the host
//! closes its end of the pipe (or exits, even by crashing) and then exits 0 itself.

use std::process::ExitCode;

use futures::StreamExt;
use rpc_core::child::{self, ChildConnection};
use rpc_core::{RpcError, RpcStream, TransportError};
use serde::{Deserialize, Serialize};

const USAGE: &str = "\
usage: plugin-host [--plugin-exe PATH]   run a plugin (this program by default) and call it
       plugin-host --plugin              be the plugin: serve the parent over the inherited pipe";

/// What a plugin says about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Its process id.
    pub pid: u32,
}

/// A text transformation.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub enum Op {
    /// Upper case.
    Upper,
    /// Characters in reverse order.
    Reverse,
    /// The text as a number, doubled.
    Double,
}

/// The plugin's own error type; it absorbs transport errors, so the host's calls return
/// `Result<String, PluginError>` directly.
#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum PluginError {
    /// The text is not something the operation works on.
    #[error("{op:?} cannot take {text:?}: {why}")]
    Unsupported {
        /// The operation.
        op: Op,
        /// The text.
        text: String,
        /// Why.
        why: String,
    },
    /// The call failed below the plugin (it crashed, the pipe broke).
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// What a text plugin does.
#[rpc_core::service]
pub trait TextPlugin {
    /// Who the plugin is.
    async fn describe(&self) -> PluginInfo;
    /// `text`, transformed by `op`.
    async fn transform(&self, op: Op, text: String) -> Result<String, PluginError>;
    /// The words of `text`, one item each.
    async fn words(&self, text: String) -> RpcStream<String>;
    /// Exits the plugin's process with `code` at once, as a crashing plugin would.
    async fn crash(&self, code: i32);
}

struct Plugin;

impl TextPlugin for Plugin {
    async fn describe(&self) -> PluginInfo {
        PluginInfo { name: "text-tools".into(), version: env!("CARGO_PKG_VERSION").into(), pid: std::process::id() }
    }

    async fn transform(&self, op: Op, text: String) -> Result<String, PluginError> {
        match op {
            Op::Upper => Ok(text.to_uppercase()),
            Op::Reverse => Ok(text.chars().rev().collect()),
            Op::Double => match text.trim().parse::<i64>().ok().and_then(|n| n.checked_mul(2)) {
                Some(n) => Ok(n.to_string()),
                None => Err(PluginError::Unsupported { op, text, why: "not a number that doubles into an i64".into() }),
            },
        }
    }

    async fn words(&self, text: String) -> RpcStream<String> {
        let words: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
        RpcStream::iter(words)
    }

    async fn crash(&self, code: i32) {
        std::process::exit(code);
    }
}

/// The host's session with a plugin; `Err` says what did not go as described.
async fn host(plugin_exe: Option<String>) -> Result<(), String> {
    let mut command = match &plugin_exe {
        Some(exe) => tokio::process::Command::new(exe),
        None => {
            let me = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
            let mut c = tokio::process::Command::new(me);
            c.arg("--plugin");
            c
        }
    };
    // The plugin's diagnostics go to our stderr; stdout is ours alone.
    command.stdout(std::process::Stdio::null());
    let ChildConnection { client: plugin, process, .. } =
        child::spawn::<TextPluginClient>(command).await.map_err(|e| format!("cannot start the plugin: {e}"))?;
    println!("started the plugin as pid {}", process.id());

    let info = plugin.describe().await.map_err(|e| e.to_string())?;
    println!("plugin: {} {} (pid {})", info.name, info.version, info.pid);

    for (op, text) in [(Op::Upper, "hello, plugin"), (Op::Reverse, "stressed"), (Op::Double, "21"), (Op::Double, "x")] {
        match plugin.transform(op, text.into()).await {
            Ok(out) => println!("{op:?}({text:?}) = {out:?}"),
            Err(e @ PluginError::Unsupported { .. }) => println!("{op:?}({text:?}) failed in the plugin: {e}"),
            Err(e) => return Err(format!("transform failed below the plugin: {e}")),
        }
    }

    let mut words = plugin.words("one pipe two processes".into()).await.map_err(|e| e.to_string())?;
    let mut n = 0;
    while let Some(word) = words.next().await {
        n += 1;
        println!("word {n}: {}", word.map_err(|e| e.to_string())?);
    }

    println!("asking the plugin to crash with exit code 3");
    match plugin.crash(3).await {
        Err(RpcError::Transport(TransportError::ChildExited { code, detail, .. })) => {
            println!("the call failed: {detail} (exit code {code:?})");
            if code != Some(3) {
                return Err(format!("expected exit code 3, got {code:?}"));
            }
        }
        other => return Err(format!("expected the plugin's exit, got {other:?}")),
    }
    let status = process.wait().await.map_err(|e| e.to_string())?;
    println!("plugin process ended: {status}");
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["--plugin"] => match child::serve_parent(TextPluginServer::new(Plugin)).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("plugin-host --plugin: {e}");
                ExitCode::from(2)
            }
        },
        [] | ["--plugin-exe", _] => match host(args.get(1).cloned()).await {
            Ok(()) => {
                println!("done: one host, one plugin process, a private pipe between them");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("plugin-host: {e}");
                ExitCode::FAILURE
            }
        },
        ["--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(64)
        }
    }
}

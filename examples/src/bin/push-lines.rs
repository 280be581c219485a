//! `push-lines`: a server that sends each line typed on its console to its clients, as it
//! comes (seed article 002), over a server-to-client stream.
//!
//! ```text
//! push-lines --serve NAME     # terminal 1: type lines; end with Ctrl-D (Windows: Ctrl-Z, Enter)
//! push-lines --follow NAME    # terminals 2, 3, ...: print each line as it arrives
//! ```
//!
//! With cargo: `cargo run -p pipe-rpc-examples --bin push-lines -- --serve lines`, then
//! `cargo run -p pipe-rpc-examples --bin push-lines -- --follow lines` in other terminals.
//!
//! Each follower makes one call, `follow()`, whose reply is a stream: first a welcome (the
//! subscription is in place), then every line the server reads from then on, in order.
//! Any number of followers can follow at once; one that goes away (Ctrl-C, its process
//! dies) is dropped from the server's list as soon as the server notices, which is when its
//! stream's sender fails. A follower that stops reading holds the server's input back once
//! its buffer is full: no line is ever dropped (see
//! [`Fanout`]).
//!
//! When the server's input ends, it ends every follower's stream normally after its last
//! line, waits (up to 10 s) until they are delivered, and shuts down; each follower then
//! says so and exits with status 0. Ctrl-C on the server shuts it down at once (followers
//! are told the server is shutting down, also status 0); a server that dies makes its
//! followers exit with status 2.
//!
//! The server prints its own events (`listening on NAME`, `follower N joined`, `follower N
//! left`, ...) on stdout; a follower prints the lines on stdout and everything else on
//! stderr, so `push-lines --follow NAME > file` captures exactly the lines.

use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use pipe_rpc_examples::fanout::Fanout;
use rpc_core::{ClientConfig, RpcError, RpcStream, Server, ServerErrorKind};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

const USAGE: &str = "\
usage: push-lines --serve NAME     send each line of stdin to every follower
       push-lines --follow NAME    print the lines of the server on pipe NAME

The server shuts down when its stdin ends (Ctrl-D; on Windows Ctrl-Z, Enter),
after its followers got every line; followers then exit.";

/// Lines a follower's channel holds; beyond them, its stream's window (512 KiB by default).
const FOLLOWER_BUFFER: usize = 64;

/// How long a server whose input ended waits for its followers to get their last lines.
const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// What a follower receives.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Pushed {
    /// The first item: the subscription is in place; lines typed from now on will come.
    Welcome {
        /// This follower's number.
        follower: u64,
        /// Followers now, this one included.
        followers: usize,
    },
    /// A line of the server's input.
    Line {
        /// Its number in the server's input, from 1.
        number: u64,
        /// The line, without its end of line.
        text: String,
    },
}

/// The service: one method, whose reply is a stream.
#[rpc_core::service]
trait PushLines {
    /// Follows the server's input: [`Pushed::Welcome`], then each line from now on. Ends
    /// normally when the input ends.
    async fn follow(&self) -> RpcStream<Pushed>;
}

/// The server side: the followers of its input.
struct Lines {
    followers: Fanout<Pushed>,
}

impl PushLines for Lines {
    async fn follow(&self) -> RpcStream<Pushed> {
        let on_leave = Box::new(|id, left| println!("follower {id} left ({left} following)"));
        let welcome = |follower, followers| {
            println!("follower {follower} joined ({followers} following)");
            Pushed::Welcome { follower, followers }
        };
        // `None`: the input has ended; a stream that ends at once says so.
        self.followers.subscribe(welcome, on_leave).unwrap_or_else(|| RpcStream::iter([]))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (result, what) = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["--serve", name] => (serve(name).await, "push-lines --serve"),
        ["--follow", name] => return follow(name).await,
        ["-h" | "--help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(64);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let followers = Fanout::new(FOLLOWER_BUFFER);
    let server = Server::new(PushLinesServer::new(Lines { followers: followers.clone() })).bind(name)?;
    println!("listening on {}", server.name());
    let shutdown = server.shutdown_handle();

    // Ctrl-C stops the server at once; open streams end with `ShuttingDown`.
    let on_ctrl_c = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            println!("Ctrl-C: shutting down");
            on_ctrl_c.shutdown();
        }
    });
    let mut input = read_stdin();
    tokio::spawn(async move {
        let mut number = 0;
        while let Some(text) = input.recv().await {
            number += 1;
            followers.send(Pushed::Line { number, text }).await;
        }
        println!("input ended after {number} line(s): ending {} follower stream(s)", followers.len());
        match followers.close(DRAIN_GRACE).await {
            0 => println!("every follower has every line: shutting down"),
            n => println!("{n} follower(s) still reading after {DRAIN_GRACE:?}: shutting down anyway"),
        }
        shutdown.shutdown();
    });
    server.run().await?;
    println!("stopped");
    Ok(())
}

/// Reads stdin on a plain thread (a blocking read that tokio could not cancel) and hands
/// over each line; the channel closes when stdin ends. The channel is small, so a server
/// whose followers are slow stops reading its input until they catch up.
fn read_stdin() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut line = Vec::new();
        loop {
            line.clear();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.strip_suffix('\n').unwrap_or(&text);
            let text = text.strip_suffix('\r').unwrap_or(text);
            if tx.blocking_send(text.to_owned()).is_err() {
                return;
            }
        }
    });
    rx
}

async fn follow(name: &str) -> ExitCode {
    // Streams have no deadline; the connect timeout covers a server that is starting.
    let config = ClientConfig::default().connect_timeout(Duration::from_secs(10));
    let client = match PushLinesClient::connect_with(name, config).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("push-lines --follow: {e}");
            return ExitCode::from(2);
        }
    };
    let mut lines = match client.follow().await {
        Ok(stream) => stream,
        Err(e) => {
            eprintln!("push-lines --follow: {e}");
            return ExitCode::from(2);
        }
    };
    let (mut welcomed, mut received) = (false, 0u64);
    loop {
        match lines.next().await {
            Some(Ok(Pushed::Welcome { follower, followers })) => {
                welcomed = true;
                eprintln!("following {name} as follower {follower} ({followers} following)");
            }
            Some(Ok(Pushed::Line { text, .. })) => {
                received += 1;
                println!("{text}");
            }
            None if !welcomed => {
                eprintln!("the server's input had already ended; nothing to follow");
                return ExitCode::SUCCESS;
            }
            None => {
                eprintln!("the server's input ended; {received} line(s) received");
                return ExitCode::SUCCESS;
            }
            Some(Err(RpcError::Server(e))) if e.kind == ServerErrorKind::ShuttingDown => {
                eprintln!("the server is shutting down; {received} line(s) received");
                return ExitCode::SUCCESS;
            }
            Some(Err(e)) => {
                eprintln!("push-lines --follow: {e}; {received} line(s) received");
                return ExitCode::from(2);
            }
        }
    }
}

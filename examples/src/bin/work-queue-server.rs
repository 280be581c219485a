//! `work-queue-server [--pipe NAME]`: serves in-memory work queues on a local pipe.
//!
//! Prints `listening on <name> (<address>)`, then serves until Ctrl-C or a `shutdown`
//! line on stdin, and shuts down gracefully (exit status 0). Drive it with `wq`.

use std::process::ExitCode;

use pipe_rpc_examples::DEFAULT_PIPE;
use pipe_rpc_examples::server::{OnStdinEof, serve};

const USAGE: &str = "\
usage: work-queue-server [--pipe NAME]

Serves work queues on the local pipe NAME (default: work-queues) until Ctrl-C
or a `shutdown` line on stdin.";

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut pipe = DEFAULT_PIPE.to_owned();
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--pipe", Some(name)) => pipe = name,
            ("-h" | "--help", _) => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(64);
            }
        }
    }
    // Standalone, stdin may well be /dev/null: its end is no reason to stop.
    match serve(pipe, OnStdinEof::KeepServing).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("work-queue-server: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `work-queue-client [--pipe NAME]`: a scripted session against a running
//! `work-queue-server`, printing each call and its outcome.

use std::process::ExitCode;

use pipe_rpc_examples::{DEFAULT_PIPE, WorkQueuesClient, session};

const USAGE: &str = "\
usage: work-queue-client [--pipe NAME]

Runs a scripted session against the work-queue server on the local pipe NAME
(default: work-queues). Start one first with `work-queue-server`.";

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
    let client = match WorkQueuesClient::connect(pipe.as_str()).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("work-queue-client: {e}");
            return ExitCode::from(2);
        }
    };
    println!("{}\n", session::describe_peers(&client));
    match session::run(&client).await {
        Ok(()) => {
            println!("\nsession complete");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("work-queue-client: {e}");
            ExitCode::FAILURE
        }
    }
}

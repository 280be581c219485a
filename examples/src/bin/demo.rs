//! The README demo: `cargo run -p pipe-rpc-examples --bin demo`.
//!
//! Runs the work-queue service as two real processes talking over a local pipe. This one
//! binary plays both parts, so the one `cargo run` builds everything needed: `demo`
//! starts `demo --serve NAME` as a child process (the server), connects to it as the
//! client, runs the scripted session, then asks the server to shut down through its
//! stdin and reports how it exited.

use std::error::Error;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use pipe_rpc_examples::server::{OnStdinEof, serve};
use pipe_rpc_examples::{WorkQueuesClient, session};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long the server may take to come up, and to shut down.
const SERVER_TIMEOUT: Duration = Duration::from_secs(15);

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => match demo().await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("demo: {e}");
                ExitCode::FAILURE
            }
        },
        // The server half (hidden: `demo` starts it).
        [flag, name] if flag == "--serve" => match serve(name.as_str(), OnStdinEof::Shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo --serve: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: demo\n\nRuns a work-queue server and a client session as two processes.");
            ExitCode::from(64)
        }
    }
}

async fn demo() -> Result<ExitCode, Box<dyn Error>> {
    // Pid-based, so demos running at the same time never share a pipe.
    let pipe = format!("wq-demo-{}", std::process::id());
    let exe = std::env::current_exe()?;
    let exe_name = exe.file_name().unwrap_or_default().to_string_lossy().into_owned();
    println!("Lines marked [server] come from the server process; the rest from this one, the client.");
    println!("starting the server: {exe_name} --serve {pipe}");
    let mut server = Command::new(&exe)
        .args(["--serve", &pipe])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // If the demo fails half-way, do not leave the server behind.
        .kill_on_drop(true)
        .spawn()?;
    let mut output = BufReader::new(server.stdout.take().expect("stdout is piped")).lines();

    // Wait for the server to say it listens: connecting does not wait for a server that is
    // not up yet (unless asked to, `ClientConfig::wait_for_server`), and this way a server
    // that fails to start is reported with its own words.
    let first = tokio::time::timeout(SERVER_TIMEOUT, output.next_line()).await;
    match first {
        Ok(Ok(Some(line))) if line.starts_with("listening on") => println!("[server] {line}"),
        _ => return Err(format!("the server did not start: {}", stop(&mut server).await?).into()),
    }
    let forward = tokio::spawn(forward(output));

    let client = WorkQueuesClient::connect(pipe.as_str()).await?;
    println!("connected: {}", session::describe_peers(&client));
    if server.id() == Some(client.channel().peer().server_pid) {
        println!("(the pid from the handshake is the child process this demo started)");
    }
    println!();
    let outcome = session::run(&client).await;
    // Leave before the shutdown, so the server has no connection left to drain.
    client.channel().close();
    drop(client);

    println!("\nasking the server to shut down: writing `shutdown` to its stdin");
    let status = stop(&mut server).await?;
    // The server has exited, so its output is complete: print the rest before the verdict.
    forward.await?;
    println!("server process exited: {status}");

    match outcome {
        Ok(()) if status.success() => {
            println!("\ndemo complete: two processes, one pipe, typed calls and errors");
            Ok(ExitCode::SUCCESS)
        }
        Ok(()) => Ok(ExitCode::FAILURE),
        Err(e) => Err(format!("the session failed: {e}").into()),
    }
}

/// Asks the server to shut down and waits for it; kills it if it takes too long.
async fn stop(server: &mut Child) -> Result<std::process::ExitStatus, Box<dyn Error>> {
    if let Some(mut stdin) = server.stdin.take() {
        // It may have exited already (then the write fails): the wait below says how.
        let _ = stdin.write_all(b"shutdown\n").await;
        let _ = stdin.flush().await;
    }
    match tokio::time::timeout(SERVER_TIMEOUT, server.wait()).await {
        Ok(status) => Ok(status?),
        Err(_) => {
            server.kill().await?;
            Err("the server did not shut down in time; killed it".into())
        }
    }
}

/// Prints the server's output lines, marked, until it closes its stdout.
async fn forward(mut lines: Lines<BufReader<ChildStdout>>) {
    while let Ok(Some(line)) = lines.next_line().await {
        println!("[server] {line}");
    }
}

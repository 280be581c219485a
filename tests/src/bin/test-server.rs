//! The server process of the cross-process tests: serves `Probe` on a pipe.
//!
//! ```text
//! test-server NAME|--parent-pipe|--tcp ADDR [--allow-remote 1] [--max-message N] [--max-in-flight N] [--max-oneway N] [--max-connections N] [--shutdown-grace-ms N]
//!             [--max-deadline-ms N|max] [--max-per-user N] [--access anyone|same-user] [--allow-uid N]
//!             [--socket-mode OCTAL] [--introspection on|off] [--spans 1]
//! ```
//!
//! Prints `ready` on stdout once the pipe is bound (a test may connect from then on).
//! A `shutdown` line on stdin, or the end of stdin (the test process went away), starts a
//! graceful shutdown: it prints `shutting-down` once the server has been told (calls
//! arriving from then on are refused), then `drained` when every call in flight has been
//! answered, and exits 0. A `stats` line on stdin prints the server's counters
//! (`rpc_core::stats`) as one line, `stats key=value ...` (see [`stats_line`]). If the pipe
//! cannot be bound it prints the error on stderr and exits 2; bad arguments exit 64.
//!
//! `--spans 1` prints every `rpc_core` span on stdout as it closes, one line each
//! (`pipe_rpc_tests::span_lines`).
//!
//! `--tcp ADDR` instead of a name serves TCP (`Server::bind_tcp`; give `--access anyone`),
//! printing `tcp IP:PORT` (the address bound) before `ready`.
//!
//! `--parent-pipe` instead of a name: a child of `rpc_core::child::spawn`, serving its parent
//! over the inherited pipe (`Server::serve_parent`) until the parent leaves, then exiting 0
//! (2, with the error on stderr, if it has no parent pipe or the connection fails). It prints
//! nothing on stdout. An `exit N` line on stdin exits at once with status N (a child dying
//! mid-call); `--exit-before-handshake N` exits with status N before touching the pipe.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use pipe_rpc_tests::{ProbeImpl, ProbeServer};
use rpc_core::{AccessPolicy, BoundServer, Listener, ServeError, Server, ServerConfig};

/// Where to serve.
enum Endpoint {
    Pipe(String),
    /// `--tcp ADDR`.
    Tcp(String),
    /// `--parent-pipe`.
    Parent,
}

struct Args {
    endpoint: Endpoint,
    config: ServerConfig,
    exit_before_handshake: Option<i32>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let first = args.next().ok_or("missing the pipe name")?;
    let endpoint = match first.as_str() {
        "--parent-pipe" => Endpoint::Parent,
        "--tcp" => Endpoint::Tcp(args.next().ok_or("--tcp needs an address")?),
        _ => Endpoint::Pipe(first),
    };
    let mut config = ServerConfig::default();
    let mut exit_before_handshake = None;
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--allow-remote" => {
                config = config.allow_remote(value == "1");
                continue;
            }
            "--exit-before-handshake" => {
                exit_before_handshake = Some(value.parse().map_err(|e| format!("{flag} {value}: {e}"))?);
                continue;
            }
            "--access" => {
                config = config.access(match value.as_str() {
                    "anyone" => AccessPolicy::anyone(),
                    "same-user" => AccessPolicy::same_user(),
                    other => return Err(format!("--access {other}: anyone or same-user")),
                });
                continue;
            }
            // `Duration::MAX`: no cap of the server's own.
            "--max-deadline-ms" if value == "max" => {
                config = config.max_deadline(Duration::MAX);
                continue;
            }
            "--introspection" => {
                config = config.introspection(match value.as_str() {
                    "on" => true,
                    "off" => false,
                    other => return Err(format!("--introspection {other}: on or off")),
                });
                continue;
            }
            // Spans as lines on stdout (`pipe_rpc_tests::span_lines`).
            "--spans" if value == "1" => {
                pipe_rpc_tests::span_lines::install();
                continue;
            }
            "--socket-mode" => {
                config =
                    config.socket_mode(u32::from_str_radix(&value, 8).map_err(|e| format!("{flag} {value}: {e}"))?);
                continue;
            }
            _ => {}
        }
        let n: u64 = value.parse().map_err(|e| format!("{flag} {value}: {e}"))?;
        let size = usize::try_from(n).map_err(|e| format!("{flag} {value}: {e}"))?;
        config = match flag.as_str() {
            "--max-message" => config.max_message(size),
            "--max-in-flight" => config.max_in_flight_per_connection(size),
            "--max-oneway" => config.max_oneway_per_connection(size),
            "--max-connections" => config.max_connections(size),
            "--max-per-user" => config.max_connections_per_user(size),
            "--allow-uid" => config.access(AccessPolicy::allow([u32::try_from(n).map_err(|e| e.to_string())?], [])),
            "--shutdown-grace-ms" => config.shutdown_grace(Duration::from_millis(n)),
            "--max-deadline-ms" => {
                config.max_deadline = Duration::from_millis(n);
                config
            }
            "--frame-read-timeout-ms" => config.frame_read_timeout(Duration::from_millis(n)),
            "--write-stall-ms" => config.write_stall_timeout(Duration::from_millis(n)),
            "--handshake-timeout-ms" => config.handshake_timeout(Duration::from_millis(n)),
            "--max-handshaking" => config.max_handshaking(size),
            // Sets the public field directly, past the setter's clamp: the server must
            // still validate it where it uses it.
            "--max-in-flight-field" => {
                config.max_in_flight_per_connection = size;
                config
            }
            other => return Err(format!("unknown flag {other}")),
        };
    }
    Ok(Args { endpoint, config, exit_before_handshake })
}

/// The server's counters as one line: `stats`, then `key=value` pairs separated by spaces.
fn stats_line(s: &rpc_core::ServerStats) -> String {
    let (c, e) = (&s.calls, &s.calls.errors);
    let pairs = [
        ("connections_open", s.connections_open),
        ("connections_accepted", s.connections_accepted),
        ("connections_refused", s.connections_refused),
        ("started", c.started),
        ("finished", c.finished),
        ("in_flight", c.in_flight),
        ("oneway", c.oneway),
        ("streams_started", c.streams_started),
        ("streams_open", c.streams_open),
        ("ok", c.ok),
        ("bad_request", e.bad_request),
        ("handler_panicked", e.handler_panicked),
        ("shutting_down", e.shutting_down),
        ("overloaded", e.overloaded),
        ("too_large", e.too_large),
        ("deadline_exceeded", e.deadline_exceeded),
        ("internal", e.internal),
        ("cancelled", e.cancelled),
        ("disconnected", e.disconnected),
        ("other", e.other),
        ("items_in", s.items_in),
        ("items_out", s.items_out),
        ("bytes_in", s.bytes_in),
        ("bytes_out", s.bytes_out),
    ];
    let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("stats {}", pairs.join(" "))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("test-server: {e}");
            return ExitCode::from(64);
        }
    };
    let server = Server::new(ProbeServer::new(ProbeImpl::default())).config(args.config);
    match args.endpoint {
        Endpoint::Parent => serve_parent(server, args.exit_before_handshake).await,
        Endpoint::Pipe(name) => match server.bind(name.as_str()) {
            Ok(bound) => run(bound).await,
            Err(e) => bind_failed(&e),
        },
        Endpoint::Tcp(addr) => match server.bind_tcp(addr.as_str()) {
            Ok(bound) => {
                // Before `ready`: the harness reads the port the OS chose from it.
                println!("tcp {}", bound.local_addr());
                run(bound).await
            }
            Err(e) => bind_failed(&e),
        },
    }
}

fn bind_failed(e: &ServeError) -> ExitCode {
    let kind = match e {
        ServeError::Bind(inner) => format!("{:?}", inner.kind()),
        _ => "other".to_owned(),
    };
    eprintln!("test-server: {e} (kind: {kind})");
    ExitCode::from(2)
}

/// Prints `ready` and serves until `shutdown` (or the end of stdin).
async fn run<L: Listener>(bound: BoundServer<ProbeServer<ProbeImpl>, L>) -> ExitCode {
    let shutdown = bound.shutdown_handle();
    let stats = bound.stats_handle();
    // A plain thread, not a runtime task: a blocking stdin read must not keep the
    // runtime from shutting down.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            match line {
                Ok(l) if l.trim() == "shutdown" => break,
                Ok(l) if l.trim() == "stats" => println!("{}", stats_line(&stats.get())),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        // `shutdown` or the end of stdin. Holding the stdout lock across both steps puts
        // `shutting-down` before `drained` (which `main` prints once the server is done).
        let mut out = std::io::stdout().lock();
        shutdown.shutdown();
        let _ = writeln!(out, "shutting-down");
    });
    println!("ready");
    match bound.run().await {
        Ok(()) => {
            println!("drained");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("test-server: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--parent-pipe`: serves the parent that spawned this process until it leaves.
async fn serve_parent(server: Server<ProbeServer<ProbeImpl>>, exit_before_handshake: Option<i32>) -> ExitCode {
    if let Some(code) = exit_before_handshake {
        std::process::exit(code);
    }
    // A plain thread, as above: `exit N` on stdin ends the process at once, mid-call.
    std::thread::spawn(|| {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if let Some(code) = line.trim().strip_prefix("exit ").and_then(|c| c.parse().ok()) {
                std::process::exit(code);
            }
        }
    });
    match server.serve_parent().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("test-server: {e}");
            ExitCode::from(2)
        }
    }
}

//! `pipe-rpc`: the command-line tool for pipe-rpc endpoints, as `busctl` is for D-Bus.
//!
//! ```text
//! pipe-rpc list                        the current user's endpoints, live or stale
//! pipe-rpc probe NAME                  service, fingerprint, protocol version, codecs,
//!                                      capabilities, limits, server pid and user
//! pipe-rpc methods NAME                the methods of a server with introspection on
//! pipe-rpc call NAME METHOD [ARG...]   call METHOD, each ARG one JSON value
//! pipe-rpc call NAME METHOD '{"arg":value,...}'   the same, arguments by name
//! ```
//!
//! Options, anywhere on the line: `--json` (one JSON object per line, for scripts, instead
//! of a table), `--timeout DURATION` (`500ms`, `2s`, `1.5`: seconds; default 1 s per
//! endpoint for `list`, 5 s to connect otherwise, 10 s for a call, none for a stream),
//! `--live` (`list`: only endpoints whose server answered, no stale sockets), `--help`.
//! After `--`, every argument is a method argument, even one that starts with `--`.
//!
//! `probe` works on every pipe-rpc server. `methods` and `call` need a server that lists its
//! methods: [`ServerConfig::introspection`](rpc_core::ServerConfig::introspection), off by
//! default (it publishes the method list). `call` connects with the JSON codec and sends
//! `{"Method":{"arg":ARG,...}}`, the generated request enum's variant with its arguments by
//! name, in the order `methods` shows. The arguments may also be given by name, as one
//! JSON object whose keys are exactly the method's argument names (`'{"a":1,"b":"x"}'`;
//! `'{}'` for none): a lone object argument with exactly those keys is always read this
//! way, so a one-argument method `f(v: T)` whose value is itself an object `{"v":...}`
//! is called as `'{"v":{"v":...}}'`. It prints the result as JSON; for a method returning
//! `Result<T, E>` it prints `T`, or prints `E` and exits 1. A method returning a stream
//! prints one JSON value per line until the stream ends (or Ctrl-C, which cancels the call
//! on the server). A method taking a stream reads its items from standard input, one JSON
//! value per line, until end of input. A one-way method prints nothing. A method taking a
//! callback cannot be called from here.
//!
//! ```text
//! $ pipe-rpc call work-queues create '"jobs"'
//! {
//!   "name": "jobs",
//!   "pending": 0,
//!   "state": "Stopped",
//!   "taken": 0
//! }
//! $ pipe-rpc call probe-server count 3 2 0
//! 3
//! 4
//! ```
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the call failed: the method returned an error, the server refused or failed the call (bad request, handler panic, deadline), or the connection broke during it |
//! | 2 | usage: an unknown command or option, a missing or extra argument, an argument that is not JSON (or not of the method's type: the server refuses the request as a bad request), an unknown method, a method that cannot be called from here |
//! | 3 | the endpoint: nothing serves the name, it is busy, it refused us (permission, identity, version), or it is not a pipe-rpc endpoint |
//! | 4 | the server does not list its methods (introspection off, or a server older than introspection) |
//!
//! `list` exits 0 whatever state the endpoints are in; it exits 3 only if the list itself
//! cannot be read.

use std::process::ExitCode;

mod args;
mod call;
mod describe;
mod fail;
mod list;
mod out;

pub use fail::{CALL_FAILED, NO_INTROSPECTION, UNREACHABLE, USAGE};

/// The help text (`pipe-rpc --help`).
pub const HELP: &str = "\
usage: pipe-rpc [--json] [--timeout DURATION] COMMAND

commands:
  list                        the current user's endpoints, live or stale (--live: only those
                              that answered)
  probe NAME                  service, fingerprint, protocol version, codecs, capabilities,
                              limits, server pid and user
  methods NAME                the methods of NAME (the server must enable introspection)
  call NAME METHOD [ARG...]   call METHOD with each ARG as one JSON value ('\"text\"', 5,
                              '[1,2]', '{\"a\":1}'), or one object of them by name
                              ('{\"a\":1,\"b\":\"x\"}'); a stream result prints one JSON value per
                              line; a stream argument is read from stdin, one JSON value per line

options:
  --json              one JSON object per line instead of a table
  --timeout DURATION  500ms, 2s or 1.5 (seconds): per endpoint for list (default 1s),
                      to connect (default 5s), the call (default 10s; streams: none)
  --                  what follows is arguments, even if it starts with --
  -h, --help          this text

exit codes: 0 ok, 1 the call failed, 2 usage, 3 the endpoint (not running, busy, refused,
not pipe-rpc), 4 the server does not enable introspection
";

/// Runs the tool with the process's arguments, printing to its stdout and stderr.
pub fn main() -> ExitCode {
    let args: Result<Vec<String>, _> = std::env::args_os().skip(1).map(|a| a.into_string()).collect();
    let Ok(args) = args else {
        eprintln!("pipe-rpc: an argument is not valid UTF-8");
        return ExitCode::from(USAGE);
    };
    run(args)
}

/// Runs the tool with `args` (without the program name).
pub fn run(args: Vec<String>) -> ExitCode {
    let command = match args::parse(args) {
        Ok(command) => command,
        Err(why) => {
            eprintln!("pipe-rpc: {why}\nTry `pipe-rpc --help`.");
            return ExitCode::from(USAGE);
        }
    };
    let (command, opts) = match command {
        args::Parsed::Help => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        args::Parsed::Run(command, opts) => (command, opts),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pipe-rpc: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut printer = out::Printer::new(opts.json);
    let result = runtime.block_on(async {
        match command {
            args::Command::List => list::list(&opts, &mut printer).await,
            args::Command::Probe { name } => describe::probe(&name, &opts, &mut printer).await,
            args::Command::Methods { name } => describe::methods(&name, &opts, &mut printer).await,
            args::Command::Call { name, method, args } => call::call(&name, &method, &args, &opts, &mut printer).await,
        }
    });
    // A read of stdin still waiting (a stream argument whose call ended first) must not
    // keep the process alive.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}
